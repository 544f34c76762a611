"""``mfllm train``: run one training task end to end, with checkpoints, resume, logs and evaluation.

Output directory:
  config.yaml, split.json             what was trained on (events by split; the config's test_events, used or not)
  train_log.jsonl                     one line per logged step (losses, rewards, gradient norms, validation loss)
  checkpoints/latest/                 the last checkpoint: adapter, optimizer, generators, data position
  checkpoints/best/                   policy/sft: the saved step with the lowest validation loss (best.json), exported as adapter/
  adapter/                            the final LoRA adapter + mfllm_adapter.json (base fingerprint, task, metrics)
  metrics.json                        NLL of real actions per split (train, validation, test) before and after training
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from mfllm.backends import ModelPool, local_source, parse_spec
from mfllm.backends.hf import ADAPTER_META, LoadedCausalLM, TransformersModel, require
from mfllm.configuration import read_yaml
from mfllm.manifest import base_manifest
from mfllm.simulation.methods import get_method
from mfllm.training.config import TrainConfig
from mfllm.training.data import load_training_events, policy_examples, split_record
from mfllm.training.ib_tune import MEAN_FIELD_ADAPTER, POLICY_ADAPTER, MeanFieldTrainer
from mfllm.training.policy import PolicyTrainer, tokenize_examples


RESUMABLE_CHANGES = {"max_steps", "max_minutes", "save_every", "log_every"}
"""Settings a resumed run may change: when to stop and how often to log and save, nothing that alters
the steps already taken or what is measured before and after."""


def _prepare_output(config: TrainConfig, resume: bool) -> Path:
    out = Path(config.output_dir)
    saved = out / "config.yaml"
    if saved.exists():
        if not resume:
            raise FileExistsError(f"{out} already holds a training run; pass --resume to continue it")
        previous = TrainConfig(**read_yaml(saved))
        changed = [k for k in config.model_dump() if getattr(previous, k) != getattr(config, k)]
        if set(changed) - RESUMABLE_CHANGES:
            raise ValueError(f"{out}: cannot resume with a different config (changed: {', '.join(changed)}; only "
                             f"{', '.join(sorted(RESUMABLE_CHANGES))} may change)")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return out


def _adapter_meta(config: TrainConfig, loaded: LoadedCausalLM, split: dict[str, list[str]], metrics: dict[str, Any]) -> dict[str, Any]:
    meta = base_manifest(f"train-{config.task}", config.model_dump(mode="json"))
    meta.update({"task": config.task, "base_model": config.base_model, "fingerprint": loaded.fingerprint(), "split": split,
                 "metrics": metrics})
    return meta


SCORED_PER_UPDATE = 64
"""Examples scored between two updates of the scoring progress bar."""


def examples_nll(view: TransformersModel, examples: list[Any], progress: str | None = None) -> float:
    """Token-weighted NLL of real actions (action tokens only) under ``view``; ``progress``: the description
    of a progress bar (none when omitted)."""
    from tqdm.auto import tqdm

    logprob, tokens = 0.0, 0
    with tqdm(total=len(examples), desc=progress, unit="example", disable=progress is None) as bar:
        for start in range(0, len(examples), SCORED_PER_UPDATE):
            chunk = examples[start:start + SCORED_PER_UPDATE]
            scores = view.score([e.prompt for e in chunk], [e.action for e in chunk])
            logprob, tokens = logprob + sum(s.logprob for s in scores), tokens + sum(s.num_tokens for s in scores)
            bar.update(len(chunk))
    return -logprob / max(tokens, 1)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train and save the adapter; returns the adapter directory."""
    out = _prepare_output(config, resume)
    events, split = load_training_events(config)
    (out / "split.json").write_text(json.dumps(split_record(config, split), indent=2), encoding="utf-8")
    if config.task == "mean-field":
        return _train_mean_field(config, out, events, split, resume, progress)
    return _train_policy(config, out, events, split, resume, progress)


def _progress_bar(total: int, initial: int, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="step")


def _train_mean_field(config: TrainConfig, out: Path, events: dict[str, list[Any]], split: dict[str, list[str]], resume: bool,
                      progress: bool) -> Path:
    loaded = LoadedCausalLM(local_source(parse_spec(config.base_model)), config.device, config.dtype)
    trainer = MeanFieldTrainer(config, loaded, events["train"])
    scored = _scored_splits(events, config.eval_events, config.test_events)
    metrics: dict[str, Any] = {}
    if resume and _has_checkpoint(out):
        state, metrics = _restore_checkpoint(out, loaded, MEAN_FIELD_ADAPTER)
        trainer.load_state_dict(state)
    else:
        (out / "train_log.jsonl").unlink(missing_ok=True)
        metrics.update(_mean_field_metrics(trainer, scored, None, "before", progress))

    bar = _progress_bar(config.max_steps, trainer.step_count, "IB-Tune mean field") if progress else None
    trainer.train(_logger(out), lambda: _save_checkpoint(out, loaded, MEAN_FIELD_ADAPTER, trainer.state_dict(), metrics), bar)
    if bar is not None:
        bar.close()
    metrics.update(_mean_field_metrics(trainer, scored, MEAN_FIELD_ADAPTER, "after", progress))
    adapter_dir = _export_adapter(out, loaded, MEAN_FIELD_ADAPTER)
    _finish(config, loaded, split, metrics, out, adapter_dir)
    return adapter_dir


def _mean_field_metrics(trainer: MeanFieldTrainer, scored: dict[str, list[Any]], adapter: str | None, when: str,
                        progress: bool) -> dict[str, float]:
    """Next-batch NLL given the mean field on every scored split; the expected reward on the training events."""
    metrics = {}
    for name, group in scored.items():
        result = trainer.evaluate(group, adapter, samples=trainer.config.eval_samples if name == "train" else 0,
                                  progress=f"evaluate {name} ({when})" if progress else None)
        metrics.update({f"{name}_{key}_{when}": value for key, value in result.items()})
    return metrics


def _scored_splits(events: dict[str, list[Any]], per_split: int, test_events: Sequence[str] = ()) -> dict[str, list[Any]]:
    """The events whose NLL is measured before and after training: up to ``per_split`` of each split
    (train shows fit, validation and test show generalisation to unseen events), and on the test split
    also every one of ``test_events`` (events kept for testing by name are always measured)."""
    named = set(test_events)
    scored = {name: group[:per_split] for name, group in events.items() if group}
    if named and events.get("test"):
        scored["test"] = [e for e in events["test"] if e.event_id not in named][:per_split] + [e for e in events["test"] if e.event_id in named]
    return scored


def _logger(out: Path) -> Callable[[dict[str, Any]], None]:
    """Appends one JSON line per logged step to ``train_log.jsonl``."""
    def log(stats: dict[str, Any]) -> None:
        with (out / "train_log.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(stats, ensure_ascii=False) + "\n")
    return log


def _save_checkpoint(out: Path, loaded: LoadedCausalLM, adapter: str, state: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write ``checkpoints/latest``: the adapter's weights, the trainer's ``state`` and the metrics so far
    (written beside it first, then moved into place)."""
    torch = require("torch", "hf")
    checkpoints = out / "checkpoints"
    tmp, latest = checkpoints / "tmp", checkpoints / "latest"
    shutil.rmtree(tmp, ignore_errors=True)
    loaded.model.save_pretrained(tmp, selected_adapters=[adapter])
    torch.save(state, tmp / "trainer_state.pt")
    (tmp / "metrics.json").write_text(json.dumps(metrics))
    shutil.rmtree(latest, ignore_errors=True)
    tmp.rename(latest)


def _has_checkpoint(out: Path) -> bool:
    return (out / "checkpoints" / "latest").is_dir()


def _restore_checkpoint(out: Path, loaded: LoadedCausalLM, adapter: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``checkpoints/latest`` into the model's ``adapter``; returns the trainer state and the metrics
    saved with it. Log lines of steps after the checkpoint (an
    interrupted run got further) are dropped: the resumed run writes them again."""
    torch = require("torch", "hf")
    latest = out / "checkpoints" / "latest"
    _load_adapter_weights(loaded, latest, adapter)
    state = torch.load(latest / "trainer_state.pt", weights_only=False)
    log = out / "train_log.jsonl"
    if log.is_file():
        kept = [line for line in log.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= state["step"]]
        log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return state, json.loads((latest / "metrics.json").read_text())


BEST = "best.json"


def _best_checkpoint(out: Path) -> dict[str, Any] | None:
    """Step and validation loss of ``checkpoints/best`` (the saved step with the lowest validation loss), if any."""
    record = out / "checkpoints" / "best" / BEST
    return json.loads(record.read_text()) if record.is_file() else None


def _save_best(out: Path, loaded: LoadedCausalLM, adapter: str, step: int, validation_loss: float) -> None:
    """Write the current ``adapter`` weights as ``checkpoints/best`` (beside it first, then moved into place)."""
    checkpoints = out / "checkpoints"
    tmp, best = checkpoints / "best_tmp", checkpoints / "best"
    shutil.rmtree(tmp, ignore_errors=True)
    loaded.model.save_pretrained(tmp, selected_adapters=[adapter])
    (tmp / BEST).write_text(json.dumps({"step": step, "validation_loss": validation_loss}))
    shutil.rmtree(best, ignore_errors=True)
    tmp.rename(best)


def _load_adapter_weights(loaded: LoadedCausalLM, directory: Path, adapter: str) -> None:
    """Set the model's ``adapter`` to the weights saved under ``directory/adapter``."""
    from safetensors.torch import load_file

    peft = require("peft", "train")
    peft.set_peft_model_state_dict(loaded.model, load_file(str(directory / adapter / "adapter_model.safetensors")), adapter_name=adapter)


def _export_adapter(out: Path, loaded: LoadedCausalLM, adapter: str) -> Path:
    """Save the trained ``adapter`` alone as ``out/adapter``."""
    adapter_dir, tmp = out / "adapter", out / "adapter_tmp"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    loaded.model.save_pretrained(tmp, selected_adapters=[adapter])
    (tmp / adapter).rename(adapter_dir)
    shutil.rmtree(tmp)
    return adapter_dir


def _finish(config: TrainConfig, loaded: LoadedCausalLM, split: dict[str, list[str]], metrics: dict[str, Any], out: Path,
            adapter_dir: Path) -> None:
    meta = _adapter_meta(config, loaded, split, metrics)
    (adapter_dir / ADAPTER_META).write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")


def _policy_examples_by_split(config: TrainConfig, events: dict[str, list[Any]], progress: bool) -> dict[str, list[Any]]:
    """Each split's (prompt, real action) examples; a mean-field model that writes their mean fields (where
    the method has one) is loaded here and released on return, before the model to train is loaded."""
    mean_field_model = None
    if get_method(config.method).needs_mean_field_model:
        pool = ModelPool(config.device, config.dtype)
        mean_field_model = pool.get(config.base_model, adapter=config.mean_field_adapter, role="mean_field")
    return {name: policy_examples(group, config, mean_field_model, progress=f"examples of {name} events" if progress else None)
            for name, group in events.items()}


def _train_policy(config: TrainConfig, out: Path, events: dict[str, list[Any]], split: dict[str, list[str]], resume: bool,
                  progress: bool) -> Path:
    """Policy (given the mean field's contexts) or SFT (no context), with :class:`PolicyTrainer`."""
    examples = _policy_examples_by_split(config, events, progress)
    scored = {}
    for name, group in _scored_splits(events, config.eval_events, config.test_events).items():
        ids = {event.event_id for event in group}
        scored[name] = [e for e in examples[name] if e.event_id in ids]
    loaded = LoadedCausalLM(local_source(parse_spec(config.base_model)), config.device, config.dtype)
    train_set, cut = tokenize_examples(loaded, examples["train"], config.max_length)
    validation, _ = tokenize_examples(loaded, scored.get("validation", []), config.max_length)
    metrics: dict[str, Any] = {"train_examples": len(train_set), "prompts_cut_from_left": cut,
                               **{f"{name}_scored_examples": len(e) for name, e in scored.items()}}
    resuming = resume and _has_checkpoint(out)
    if not resuming:
        (out / "train_log.jsonl").unlink(missing_ok=True)
        shutil.rmtree(out / "checkpoints" / "best", ignore_errors=True)
        base_view = TransformersModel(loaded, config.base_model)
        metrics.update({f"{name}_nll_before": examples_nll(base_view, e, f"score {name} (before)" if progress else None)
                        for name, e in scored.items() if e})
    trainer = PolicyTrainer(config, loaded, train_set)
    if resuming:
        state, metrics = _restore_checkpoint(out, loaded, POLICY_ADAPTER)
        trainer.load_state_dict(state)
    log = _logger(out)

    def save() -> None:
        if validation:
            loss = trainer.evaluate(validation)
            log({"step": trainer.step_count, "validation_loss": loss})
            best = _best_checkpoint(out)
            if best is None or loss < best["validation_loss"]:
                _save_best(out, loaded, POLICY_ADAPTER, trainer.step_count, loss)
        _save_checkpoint(out, loaded, POLICY_ADAPTER, trainer.state_dict(), metrics)

    bar = _progress_bar(config.max_steps, trainer.step_count, f"{config.task} ({config.method})") if progress else None
    trainer.train(log, save, bar)
    if bar is not None:
        bar.close()
    best = _best_checkpoint(out)
    if best is not None:
        _load_adapter_weights(loaded, out / "checkpoints" / "best", POLICY_ADAPTER)
        metrics.update({"selected_step": best["step"], "selected_validation_loss": best["validation_loss"]})
    adapter_dir = _export_adapter(out, loaded, POLICY_ADAPTER)
    tuned_view = TransformersModel(loaded, config.base_model, adapter=POLICY_ADAPTER)
    metrics.update({f"{name}_nll_after": examples_nll(tuned_view, e, f"score {name} (after)" if progress else None)
                    for name, e in scored.items() if e})
    _finish(config, loaded, split, metrics, out, adapter_dir)
    return adapter_dir
