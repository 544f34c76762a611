"""IB-Tune estimator, training runs on a tiny model, adapters in the simulator, config checks."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import pytest

from mfllm.backends import ModelPool
from mfllm.backends.fake import FakeModel
from mfllm.backends.hf import LoadedCausalLM, ModelSource, adapter_generation, continuation_logprobs
from mfllm.interfaces import ContinuationScore, Prompt
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.methods import resolve_method
from mfllm.training import TrainConfig, parse_overrides, train
from mfllm.training.data import split_events
from mfllm.training.ib_tune import rloo_advantages, score_function_loss
from mfllm.training.policy import TokenizedExample, collate, fit_prompt, length_batches, target_logprobs

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")


def test_rloo_advantages() -> None:
    rewards = torch.tensor([1.0, 2.0, 6.0])
    assert rloo_advantages(rewards).tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5])
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([1.0]))


def test_estimator_moves_probability_toward_the_higher_reward_summary(tiny_base_model_dir: Path) -> None:
    torch.manual_seed(0)
    loaded = LoadedCausalLM(ModelSource(str(tiny_base_model_dir)), "cpu", "fp32")
    model = peft.get_peft_model(loaded.model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    tokenizer = loaded.tokenizer
    prompt = tokenizer("Summarise the replies so far:").input_ids
    good, bad = (tokenizer(t, add_special_tokens=False).input_ids for t in ("most people doubt it", "everyone is happy today"))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)  # small steps (advantages are ±40): first order holds

    def log_q() -> torch.Tensor:
        return torch.stack([t.sum() for t in continuation_logprobs(model, tokenizer, [prompt, prompt], [good, bad], "cpu")])

    gaps = []
    for _ in range(5):
        current = log_q()
        gaps.append(float(current[0] - current[1]))
        loss = score_function_loss(current, torch.tensor([-10.0, -50.0]))  # the first summary predicts the next actions better
        optimizer.zero_grad()
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
        optimizer.step()
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:]))  # log q(good) - log q(bad) rises at every step


def test_split_is_by_event_and_deterministic() -> None:
    ids = [f"e{i}" for i in range(10)]
    split = split_events(ids, (0.6, 0.2, 0.2), seed=3)
    assert sorted(split["train"] + split["validation"] + split["test"]) == sorted(ids)
    assert (len(split["train"]), len(split["validation"]), len(split["test"])) == (6, 2, 2)
    assert split == split_events(list(reversed(ids)), (0.6, 0.2, 0.2), seed=3)


def _config(shared_data: Path, model_dir: Path, out: Path, task: str, **extra: object) -> TrainConfig:
    values = dict(task=task, data=str(shared_data / "weibo_covid19_rumor"), max_events=4, base_model=f"hf:{model_dir}", output_dir=str(out),
                  batch_size=4, max_steps_per_event=3, max_mean_field_tokens=10, max_action_tokens=16, num_samples=2, max_steps=4,
                  save_every=2, eval_events=1, device="cpu", dtype="fp32", max_length=384)
    return TrainConfig(**{**values, **extra})


@pytest.fixture(scope="module")
def trained(shared_data: Path, tiny_base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training")
    mean_field = train(_config(shared_data, tiny_base_model_dir, root / "mf", "mean-field"), progress=False)
    policy = train(_config(shared_data, tiny_base_model_dir, root / "policy", "policy", method="mf-hybrid", mean_field_adapter=str(mean_field),
                           max_steps=2), progress=False)
    sft = train(_config(shared_data, tiny_base_model_dir, root / "sft", "sft", max_steps=2), progress=False)
    return {"root": root, "mean_field": mean_field, "policy": policy, "sft": sft}


def test_mean_field_training_logs_gradients_and_saves_an_adapter(trained: dict[str, Path]) -> None:
    out = trained["mean_field"].parent
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert all(entry["grad_norm"] > 0 for entry in log)
    assert all(entry["reward_std"] > 0 for entry in log)  # K samples differ, so the estimator has signal
    meta = json.loads((trained["mean_field"] / "mfllm_adapter.json").read_text())
    assert meta["task"] == "mean-field" and meta["fingerprint"]["hidden_size"] == 32
    assert set(meta["split"]) == {"train", "validation", "test"} and not set(meta["split"]["train"]) & set(meta["split"]["test"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_nll_before", "test_nll_after", "train_nll_before", "train_nll_after", "train_reward_before", "train_reward_after"} <= set(metrics)
    assert "test_reward_before" not in metrics  # the expected reward is measured on the training events only


def test_mean_field_resume_equals_an_uninterrupted_run(shared_data: Path, tiny_base_model_dir: Path, trained: dict[str, Path]) -> None:
    out = trained["root"] / "mf-resumed"
    config = _config(shared_data, tiny_base_model_dir, out, "mean-field")
    train(config.model_copy(update={"max_steps": 2}), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, progress=False)
    with pytest.raises(ValueError, match=r"changed: .*beta"):
        train(config.model_copy(update={"beta": 0.5}), resume=True, progress=False)
    train(config, resume=True, progress=False)  # continuing to more steps is allowed
    reference = [json.loads(x) for x in (trained["mean_field"].parent / "train_log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["reward_mean"] for r in resumed] == pytest.approx([r["reward_mean"] for r in reference], rel=1e-4)
    from safetensors.torch import load_file

    a, b = load_file(str(trained["mean_field"] / "adapter_model.safetensors")), load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_policy_and_sft_adapters_record_heldout_nll(trained: dict[str, Path]) -> None:
    for name in ("policy", "sft"):
        metrics = json.loads((trained[name].parent / "metrics.json").read_text())
        assert metrics["train_examples"] > 0 and metrics["test_scored_examples"] > 0
        assert metrics["test_nll_after"] != metrics["test_nll_before"]
        assert metrics["train_nll_after"] < metrics["train_nll_before"]  # the tuned policy fits its training events better
        assert (trained[name] / "adapter_model.safetensors").is_file()
    meta = json.loads((trained["policy"] / "mfllm_adapter.json").read_text())
    assert meta["config"]["mean_field_adapter"] == str(trained["mean_field"])


def test_simulator_runs_mf_with_both_adapters_on_one_base(trained: dict[str, Path], tiny_base_model_dir: Path, demo_event_path: Path,
                                                          tmp_path: Path) -> None:
    base = dict(data=str(demo_event_path), method="mf-hybrid", policy_model=f"hf:{tiny_base_model_dir}", warmup=4, batch_size=4,
                num_agents=4, max_action_tokens=6, max_mean_field_tokens=8, device="cpu")
    plain = simulate(SimulationConfig(**base), tmp_path / "plain")
    tuned = simulate(SimulationConfig(**base, policy_adapter=str(trained["policy"]), mean_field_adapter=str(trained["mean_field"])),
                     tmp_path / "tuned")
    models = RunStore(tuned).manifest()["models"]
    assert models["policy"]["adapter"] == str(trained["policy"]) and models["mean_field"]["adapter"] == str(trained["mean_field"])
    assert len(RunStore(tuned).actions()) == len(RunStore(plain).actions()) == 4
    pool = ModelPool(device="cpu")  # the same adapters again on a shared pool: attached once, reused
    config = SimulationConfig(**base, policy_adapter=str(trained["policy"]), mean_field_adapter=str(trained["mean_field"]))
    first = simulate(config, tmp_path / "again1", pool=pool)
    second = simulate(config, tmp_path / "again2", pool=pool)
    assert RunStore(first).actions() == RunStore(second).actions() == RunStore(tuned).actions()
    [loaded] = pool.loaded
    assert len(loaded.adapters) == 2


def test_inconsistent_configs_are_refused(trained: dict[str, Path], tiny_model_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, AutoTokenizer

    other = tmp_path / "other-base"
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1)).save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    with pytest.raises(ValueError, match="does not match"):
        train(_config(shared_data, other, tmp_path / "p", "policy", method="mf-hybrid", mean_field_adapter=str(trained["mean_field"])))
    with pytest.raises(ValueError, match="only used by the policy task"):
        _config(shared_data, other, tmp_path / "x", "sft", mean_field_adapter="a")
    with pytest.raises(ValueError, match="needs local weights"):
        TrainConfig(task="sft", data="d", base_model="fake", output_dir="o")
    with pytest.raises(ValueError, match="split"):
        TrainConfig(task="sft", data="d", output_dir="o", split=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="mf-stats.* has no language-model part .*choose mf-llm or mf-hybrid"):
        TrainConfig(task="mean-field", data="d", output_dir="o", method="mf-stats")
    assert TrainConfig(task="mean-field", data="d", output_dir="o").method == "mf-hybrid"  # the default has a model part
    assert resolve_method("mf") == "mf-stats"
    assert TrainConfig(task="policy", data="d", output_dir="o").method == "mf-stats"  # the simulator's default mean field
    assert TrainConfig(task="policy", data="d", output_dir="o", method="mf").method == "mf-stats"
    assert TrainConfig(task="sft", data="d", output_dir="o").method == "sft"
    with pytest.raises(ValueError, match="'recent' is not one; choose from .*mf-stats"):
        TrainConfig(task="policy", data="d", output_dir="o", method="recent")
    with pytest.raises(ValueError, match="no-context baseline: method 'mf-llm' is not used"):
        TrainConfig(task="sft", data="d", output_dir="o", method="mf-llm")
    with pytest.raises(ValueError, match="mean_field_adapter is not used: method 'mf-stats'"):
        TrainConfig(task="policy", data="d", output_dir="o", mean_field_adapter="a")
    assert parse_overrides(["beta=0.1", "target_modules=[q_proj, v_proj]"]) == {"beta": 0.1, "target_modules": ["q_proj", "v_proj"]}


def test_ablate_reports_every_variant_in_one_table(trained: dict[str, Path], tiny_base_model_dir: Path, demo_event_path: Path,
                                                   tmp_path: Path) -> None:
    from mfllm.cli import main

    assert main(["ablate", "--data", str(demo_event_path), "--event", "4484800548711562", "--base-model", f"hf:{tiny_base_model_dir}",
                 "--policy-adapter", str(trained["policy"]), "--mean-field-adapter", str(trained["mean_field"]),
                 "--sft-adapter", str(trained["sft"]), "--agents", "4", "--warmup", "4", "--batch", "4", "--device", "cpu",
                 "--dimension", "sentiment", "--output", str(tmp_path)]) == 0
    summary = (tmp_path / "report" / "summary.csv").read_text()
    for variant in ("mf-hybrid (untuned)", "mf-hybrid + tuned policy", "mf-hybrid + tuned mean field", "mf-hybrid + both tuned", "sft", "state"):
        assert f"{variant},sentiment,kl" in summary
    assert "(policy),nll" in summary


def test_mean_field_training_raises_the_expected_reward_on_its_context(tiny_base_model_dir: Path, demo_event_path: Path,
                                                                        tmp_path: Path) -> None:
    from mfllm.data.loaders import get_reader
    from mfllm.training.ib_tune import MEAN_FIELD_ADAPTER, MeanFieldTrainer

    reader = get_reader(str(demo_event_path))
    event, _ = reader.load_event(demo_event_path, reader.list_events(demo_event_path)[0])
    config = TrainConfig(task="mean-field", data=str(demo_event_path), base_model=f"hf:{tiny_base_model_dir}", output_dir=str(tmp_path),
                         batch_size=4, max_steps_per_event=2, max_mean_field_tokens=8, max_action_tokens=16, num_samples=4,
                         learning_rate=1e-2, beta=0.0, device="cpu", dtype="fp32", max_length=384)
    trainer = MeanFieldTrainer(config, LoadedCausalLM(ModelSource(str(tiny_base_model_dir)), "cpu", "fp32"), [event])
    before = trainer.evaluate([event], MEAN_FIELD_ADAPTER, samples=16, max_steps=1)
    assert trainer.evaluate([event], None, samples=16, max_steps=1) == before  # a fresh LoRA is the base model; seeds are fixed
    trainer.train(log=lambda stats: None, save=lambda: None)
    after = trainer.evaluate([event], MEAN_FIELD_ADAPTER, samples=16, max_steps=1)
    assert after["reward"] > before["reward"]


def test_long_prompts_lose_their_start_not_the_action() -> None:
    assert fit_prompt([1, 2, 3], [7, 8], 8, keep_first=True) == ((1, 2, 3), False)
    assert fit_prompt([1, 2, 3, 4, 5, 6], [7, 8], 6, keep_first=True) == ((1, 4, 5, 6), True)  # the BOS stays, the action is whole
    assert fit_prompt([1, 2, 3, 4, 5, 6], [7, 8], 6, keep_first=False) == ((3, 4, 5, 6), True)
    with pytest.raises(ValueError, match="raise max_length"):
        fit_prompt([1, 2], [7, 8, 9], 3, keep_first=True)


def test_length_batches_group_similar_lengths_and_cover_every_example() -> None:
    lengths = [random.Random(i).randrange(10, 500) for i in range(37)]
    batches = length_batches(lengths, 8, random.Random(0))
    assert sorted(i for batch in batches for i in batch) == list(range(37))
    assert sorted(len(b) for b in batches) == [5, 8, 8, 8, 8]
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(high <= low_next for (_, high), (low_next, _) in zip(spans, spans[1:]))  # batches do not overlap in length
    assert batches == length_batches(lengths, 8, random.Random(0)) and batches != length_batches(lengths, 8, random.Random(1))


def _tiny_gemma3(tmp_path: Path) -> Path:
    """A random 1-layer Gemma-3 text model with final-logit soft-capping, sharing the tiny model's tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=16, final_logit_softcapping=30.0, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_loss_on_targets_equals_the_whole_sequence_loss_there(architecture: str, tiny_base_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    path = tiny_base_model_dir if architecture == "llama" else _tiny_gemma3(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if architecture == "gemma3":
        assert model.config.final_logit_softcapping == 30.0
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():  # a trained adapter, not the identity of a fresh one
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    rng = random.Random(0)
    examples = [TokenizedExample(tuple(rng.randrange(1, 1000) for _ in range(p)), tuple(rng.randrange(1, 1000) for _ in range(t)))
                for p, t in ((12, 3), (5, 7), (20, 1))]
    batch = collate(examples, pad_id=0, device="cpu")
    head_rows = []
    handle = model.get_base_model().get_output_embeddings().register_forward_hook(lambda m, i, o: head_rows.append(i[0].shape[0]))
    ours = target_logprobs(model, batch)
    handle.remove()
    assert head_rows == [3 + 7 + 1]  # the LM head ran on the target positions only
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().log_softmax(-1)
    expected = torch.cat([full[row, len(e.prompt) - 1:len(e) - 1].gather(-1, torch.tensor(e.target).unsqueeze(-1)).squeeze(-1)
                          for row, e in enumerate(examples)])
    assert ours.shape == expected.shape
    assert torch.allclose(ours.detach(), expected, atol=1e-5)
    assert float(-ours.mean()) == pytest.approx(float(-expected.mean()), abs=1e-5)
    ours.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n)


def test_an_interrupted_policy_run_resumes_to_the_uninterrupted_result(shared_data: Path, tiny_base_model_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    from mfllm.training.policy import PolicyTrainer

    def run(out: Path, **extra: object) -> TrainConfig:
        return _config(shared_data, tiny_base_model_dir, out, "policy", max_steps=5, save_every=2, train_batch_size=6, lora_dropout=0.1,
                       learning_rate=1e-2, **extra)

    reference = train(run(tmp_path / "whole"), progress=False)
    assert json.loads((reference.parent / "metrics.json").read_text())["train_examples"] == 24  # 4 batches an epoch: step 5 starts epoch 2
    step = PolicyTrainer.step
    calls = []

    def crash_on_the_fourth_step(self: PolicyTrainer, examples: object) -> dict[str, object]:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step(self, examples)

    monkeypatch.setattr(PolicyTrainer, "step", crash_on_the_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        train(run(tmp_path / "interrupted"), progress=False)
    monkeypatch.setattr(PolicyTrainer, "step", step)
    resumed = train(run(tmp_path / "interrupted"), resume=True, progress=False)  # from the checkpoint of step 2: step 3 runs again
    whole_log, resumed_log = ((path.parent / "train_log.jsonl").read_text().splitlines() for path in (reference, resumed))
    assert [json.loads(x)["step"] for x in resumed_log] == [1, 2, 2, 3, 4, 4, 5, 5]  # step, then validation loss at each save
    for a, b in zip(map(json.loads, whole_log), map(json.loads, resumed_log)):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)
    a, b = load_file(str(reference / "adapter_model.safetensors")), load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    metrics = json.loads((resumed.parent / "metrics.json").read_text())
    assert metrics == pytest.approx(json.loads((reference.parent / "metrics.json").read_text()), rel=1e-5)


def test_a_policy_run_out_of_time_stops_with_a_checkpoint_and_resumes_to_the_uninterrupted_result(
        shared_data: Path, tiny_base_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from itertools import count

    from safetensors.torch import load_file

    import mfllm.training.loop as loop

    def run(out: Path, **extra: object) -> TrainConfig:
        return _config(shared_data, tiny_base_model_dir, out, "policy", max_steps=5, save_every=4, train_batch_size=6, learning_rate=1e-2,
                       **extra)

    reference = train(run(tmp_path / "whole"), progress=False)
    clock = count(0, 50)  # each reading of the clock is 50 s after the last
    monkeypatch.setattr(loop.time, "monotonic", lambda: float(next(clock)))
    train(run(tmp_path / "budget", max_minutes=2.0), progress=False)  # the deadline (120 s) has passed after the 3rd step
    log = [json.loads(x) for x in (tmp_path / "budget" / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 3]  # steps, then the validation loss of the checkpoint at the last one
    monkeypatch.undo()
    resumed = train(run(tmp_path / "budget"), resume=True, progress=False)
    assert [json.loads(x)["step"] for x in (resumed.parent / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 3, 4, 4, 5, 5]
    a, b = load_file(str(reference / "adapter_model.safetensors")), load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_test_events_never_reach_training_and_the_best_validation_step_is_exported(shared_data: Path, tiny_base_model_dir: Path,
                                                                                   tmp_path: Path) -> None:
    from safetensors.torch import load_file

    kept = "4465002524434627"  # an event with 1,293 reactions
    config = _config(shared_data, tiny_base_model_dir, tmp_path / "run", "policy", max_steps=6, save_every=2, learning_rate=3e-2,
                     test_events=[kept, "no-such-event"])
    adapter = train(config, progress=False)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert kept in split["test"] and kept not in split["train"] + split["validation"]
    assert split["test_events"] == [kept] and split["test_events_unused"] == ["no-such-event"]
    assert len(split["train"] + split["validation"] + split["test"]) == 5  # max_events=4 others, plus the test event
    meta = json.loads((adapter / "mfllm_adapter.json").read_text())
    assert kept in meta["split"]["test"] and meta["config"]["test_events"] == [kept, "no-such-event"]
    validation = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines() if "validation_loss" in x]
    assert [v["step"] for v in validation] == [2, 4, 6]
    best = min(validation, key=lambda v: v["validation_loss"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["selected_step"] == best["step"] and metrics["selected_validation_loss"] == pytest.approx(best["validation_loss"])
    exported, chosen = load_file(str(adapter / "adapter_model.safetensors")), load_file(
        str(tmp_path / "run" / "checkpoints" / "best" / "policy" / "adapter_model.safetensors"))
    assert exported.keys() == chosen.keys() and all(torch.equal(exported[k], chosen[k]) for k in exported)


def test_split_keeps_test_events_out_of_training() -> None:
    ids = [f"e{i}" for i in range(10)]
    split = split_events(ids, (0.8, 0.2, 0.0), seed=3, test_events=["e1", "e7"])
    assert split["test"] == ["e1", "e7"] and len(split["train"]) + len(split["validation"]) == 8
    assert not {"e1", "e7"} & set(split["train"] + split["validation"])
    with pytest.raises(ValueError, match="every event is a test event"):
        split_events(["e1"], (0.8, 0.2, 0.0), seed=3, test_events=["e1"])
    with pytest.raises(ValueError, match="distinct"):
        TrainConfig(task="sft", data="d", output_dir="o", test_events=["e1", "e1"])


def test_split_keeps_posts_about_one_story_on_one_side(shared_data: Path) -> None:
    from mfllm.data.loaders import get_reader

    groups = {f"e{i}": f"g{i // 3}" for i in range(12)}  # four stories of three posts each
    for seed in range(5):
        split = split_events(list(groups), (0.5, 0.25, 0.25), seed, test_events=["e4"], groups=groups)
        side = {event_id: name for name, members in split.items() for event_id in members}
        assert sorted(side) == sorted(groups) and all(len({side[e] for e in groups if groups[e] == g}) == 1 for g in set(groups.values()))
        assert split["test"][-1] == "e4" and {"e3", "e5"} <= set(split["test"])
    path = shared_data / "weibo_covid19_rumor"
    weibo = get_reader(str(path)).event_groups(path)
    assert weibo["4465002524434627"] == weibo["4465013860959767"] != weibo["4464157032449950"]  # same_event.txt: one story


def test_every_named_test_event_is_scored() -> None:
    from types import SimpleNamespace

    from mfllm.training.runner import _scored_splits

    events = {name: [SimpleNamespace(event_id=f"{name}{i}") for i in range(5)] for name in ("train", "validation", "test")}
    scored = _scored_splits(events, 2, ["test3", "test4"])
    assert {name: [e.event_id for e in group] for name, group in scored.items()} == {
        "train": ["train0", "train1"], "validation": ["validation0", "validation1"], "test": ["test0", "test1", "test3", "test4"]}


class _Recording(FakeModel):
    """The fake model, keeping every prompt it scores."""

    def __init__(self) -> None:
        super().__init__()
        self.scored: list[str] = []

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        self.scored += [p.completion for p in prompts]
        return super().score(prompts, continuations)


@pytest.mark.parametrize("method", ["mf-stats", "mf-hybrid"])
def test_policy_training_prompts_are_the_prompts_simulation_shows(method: str, demo_event_path: Path, tmp_path: Path) -> None:
    from mfllm.data.loaders import get_reader
    from mfllm.simulation.engine import Simulator
    from mfllm.training.data import policy_examples

    reader = get_reader(str(demo_event_path))
    event, _ = reader.load_event(demo_event_path, reader.list_events(demo_event_path)[0])
    config = TrainConfig(task="policy", data=str(demo_event_path), output_dir=str(tmp_path), method=method, batch_size=4, max_steps_per_event=5,
                         seed=3)
    mean_field_model = FakeModel() if method != "mf-stats" else None
    examples = policy_examples([event], config, mean_field_model)
    for t in range(1, 5):
        policy = _Recording()
        # without the kind-choice calibration, whose warm-up scoring would add the warm-up's prompts to those recorded
        simulation = SimulationConfig(**{**config.simulation_config().model_dump(), "policy_model": "fake", "warmup": 4 * t, "num_agents": 4,
                                         "calibrate_choices": False})
        simulator = Simulator(simulation, event, policy, mean_field_model)
        for step in simulator.steps:
            simulator.run_step(step)
        shown = policy.scored[::3]  # each prompt is scored once per action choice (comment, repost with words, bare repost)
        trained_on = [e.prompt.completion for e in examples if 4 * t <= e.position < 4 * (t + 1)]
        assert len(shown) == 4 and shown == trained_on
    if method == "mf-stats":
        assert "评论区概况" in examples[-1].prompt.completion and len(examples) == 20  # the statistics context; every batch is used
    else:
        assert len(examples) == 16  # no mean field before the first batch


def test_wrapping_and_loading_adapters_prints_no_library_warnings(trained: dict[str, Path], tiny_base_model_dir: Path) -> None:
    import warnings

    from mfllm.backends.registry import local_source, parse_spec
    from mfllm.training.ib_tune import lora_config

    loaded = LoadedCausalLM(local_source(parse_spec(f"hf:{tiny_base_model_dir}")), "cpu", "fp32")
    config = _config(Path("."), tiny_base_model_dir, Path("."), "policy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded.add_trainable_adapter(lora_config(config), "trainable")
        loaded.add_adapter(str(trained["policy"]), "policy")
    assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))] == []
    assert set(loaded.model.peft_config) == {"trainable", "policy"}


def test_a_shipped_copy_of_an_adapter_loads_to_the_same_model_in_half_the_bytes(trained: dict[str, Path], tiny_base_model_dir: Path,
                                                                                tmp_path: Path) -> None:
    import importlib.util

    torch = pytest.importorskip("torch")
    from mfllm.backends.registry import local_source, parse_spec

    spec = importlib.util.spec_from_file_location("ship_adapter", Path(__file__).resolve().parents[1] / "scripts" / "ship_adapter.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    with pytest.raises(SystemExit, match="not a policy adapter of embedded:gemma-3-270m"):
        script.check_trained(trained["policy"], "policy", "gemma-3-270m")  # trained on the tiny model
    shipped = script.ship(trained["policy"], tmp_path / "policy", "tiny", generation={"length_floor": 0.25})
    size = (trained["policy"] / "adapter_model.safetensors").stat().st_size
    assert (shipped / "adapter_model.safetensors").stat().st_size < 0.6 * size and (shipped / "mfllm_adapter.json").is_file()
    assert adapter_generation(shipped) == {"length_floor": 0.25} and adapter_generation(trained["policy"]) == {}
    assert json.loads((shipped / "mfllm_adapter.json").read_text(encoding="utf-8"))["split"] == \
        json.loads((trained["policy"] / "mfllm_adapter.json").read_text(encoding="utf-8"))["split"]
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    logits = {}
    for name, directory in (("original", trained["policy"]), ("shipped", shipped)):
        loaded = LoadedCausalLM(local_source(parse_spec(f"hf:{tiny_base_model_dir}")), "cpu", "fp32")
        loaded.add_adapter(str(directory), "policy")
        with torch.inference_mode():
            logits[name] = loaded.model(input_ids=ids).logits
    assert torch.allclose(logits["original"], logits["shipped"], atol=1e-3)
    assert not torch.allclose(logits["original"], LoadedCausalLM(local_source(parse_spec(f"hf:{tiny_base_model_dir}")), "cpu", "fp32")
                              .model(input_ids=ids).logits, atol=1e-3)  # the adapter changes the model
