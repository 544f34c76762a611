"""The llama.cpp backend: prefix sharing, batches split to fit the context, prompts rendered like
transformers, LoRA adapters converted from PEFT (or an announced fallback), engine resolution."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from backend_samples import CONTINUATIONS, MEAN_FIELD, PERSONAS, PROMPTS, TOPIC, require_llama_cpp, smollm2_gguf

from mfllm.backends import FakeModel, ModelPool, parse_spec
from mfllm.backends.hf import LoadedCausalLM, ModelSource
from mfllm.backends.llamacpp import READ_AGAIN, LlamaCppModel, LlamaCppSettings, LoadedGGUF, RestrictedGGUF, _Entry
from mfllm.backends.lora_gguf import AdapterConversionError, convert_peft_lora
from mfllm.backends.vocabulary import UnsupportedVocabulary, keeps, reduced_gguf, token_text
from mfllm.interfaces import AgentAction, SamplingParams
from mfllm.prompts import ACTION_CHOICES, action_line, marker, mean_field_prompt, policy_prompt, render_context

GREEDY = SamplingParams(max_new_tokens=10, temperature=0.0, stop=())


@pytest.fixture(scope="module")
def vocabulary_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the reduced-vocabulary GGUFs these tests write (about 10 s each)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def smollm2() -> LoadedGGUF:
    require_llama_cpp()
    return LoadedGGUF(smollm2_gguf(), LlamaCppSettings(n_ctx=4096))


def test_shared_prefix_gives_the_same_output_and_scores(smollm2: LoadedGGUF) -> None:
    shared, separate = LlamaCppModel(smollm2, "shared"), LlamaCppModel(smollm2, "separate", prefix_cache=False)
    assert shared.generate(PROMPTS, GREEDY) == separate.generate(PROMPTS, GREEDY)
    assert shared.usage.prefix_cached_tokens > 16 * (len(PROMPTS) - 1) and separate.usage.prefix_cached_tokens == 0
    for a, b in zip(shared.score(PROMPTS, CONTINUATIONS), separate.score(PROMPTS, CONTINUATIONS)):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-3)


def test_rows_sharing_a_prompt_and_continuation_prefixes_score_as_each_row_alone(smollm2: LoadedGGUF) -> None:
    model = LlamaCppModel(smollm2, "tree")
    continuations = ["[reply] yes", "[share]", "[share with comment] no", "", "[share]"]
    prompts = [p for p in PROMPTS[:2] for _ in continuations]
    together = model.score(prompts, continuations * 2)
    decoded_before = model.usage.prompt_tokens
    for prompt, continuation, score in zip(prompts, continuations * 2, together):
        alone = model.score([prompt], [continuation])[0]
        assert len(score.token_logprobs) == len(alone.token_logprobs) == model.count_text_tokens(continuation)
        assert score.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-3)
    assert decoded_before > 0


def test_batches_with_more_prompts_than_sequences_run_in_groups_with_the_same_results(smollm2: LoadedGGUF) -> None:
    longest = max(LlamaCppModel(smollm2, "m").count_tokens(p) for p in PROMPTS)
    two = LoadedGGUF(smollm2.model_file, LlamaCppSettings(n_ctx=longest + GREEDY.max_new_tokens, max_sequences=2))
    assert LlamaCppModel(two, "two").generate(PROMPTS, GREEDY) == LlamaCppModel(smollm2, "big").generate(PROMPTS, GREEDY)
    tiny = LoadedGGUF(smollm2.model_file, LlamaCppSettings(n_ctx=32, max_sequences=2))
    with pytest.raises(ValueError, match="raise n_ctx"):
        LlamaCppModel(tiny, "tiny").generate(PROMPTS[:1], GREEDY)


def test_chat_prompts_get_the_same_token_ids_as_transformers(smollm2: LoadedGGUF, tiny_model_dir: Path) -> None:
    reference = LoadedCausalLM(ModelSource(str(tiny_model_dir)))  # SmolLM2's own tokenizer and chat template
    model = LlamaCppModel(smollm2, "m")
    assert smollm2.is_chat and reference.is_chat
    for prompt in PROMPTS:
        assert smollm2.render(prompt) == reference.render(prompt)
        assert smollm2.prompt_ids(prompt) == reference.tokenizer(reference.render(prompt), add_special_tokens=False).input_ids
        assert model.count_tokens(prompt) == len(smollm2.prompt_ids(prompt))
    for text in CONTINUATIONS:
        assert smollm2.tokenize(text, add_special=False) == reference.tokenizer(text, add_special_tokens=False).input_ids


def test_describe_records_the_engine_and_its_settings(smollm2: LoadedGGUF) -> None:
    description = LlamaCppModel(smollm2, "llamacpp:smollm2").describe()
    assert description["backend"] == "llamacpp" and description["model_file"] == str(smollm2.model_file)
    assert description["threads"] == smollm2.settings.resolved_threads >= 1
    assert (description["n_ctx"], description["n_batch"], description["max_sequences"]) == (4096, 512, 16)


def test_specs_and_engine_choice() -> None:
    require_llama_cpp()
    assert parse_spec("llamacpp:/models/x.gguf").kind == "llamacpp"
    assert str(parse_spec("llamacpp:smollm2-135m-instruct")) == "llamacpp:smollm2-135m-instruct"
    with pytest.raises(ValueError, match="llamacpp:NAME"):
        parse_spec("llamacpp:")
    assert ModelPool(device="cpu").embedded_engine() == "llamacpp"
    assert ModelPool(device="cpu", engine="transformers").embedded_engine() == "transformers"
    assert ModelPool(device="cuda").embedded_engine() == "transformers"


def _random_lora(tmp_path: Path, **lora_options: object) -> Path:
    """A PEFT LoRA adapter with random (non-zero) weights on SmolLM2's architecture, saved as training saves it."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch = pytest.importorskip("torch")
    config = transformers.AutoConfig.from_pretrained(str(smollm2_gguf().parent), gguf_file=smollm2_gguf().name)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **lora_options)
    adapter = peft.get_peft_model(model, lora)
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "lora_" in name:
                parameter.mul_(0.05)
    out = tmp_path / "adapter"
    adapter.save_pretrained(out)
    return out


def test_a_converted_lora_adapter_changes_only_its_own_view(tmp_path: Path) -> None:
    require_llama_cpp()
    adapter = _random_lora(tmp_path)
    pool = ModelPool(device="cpu", n_ctx=4096)
    spec = f"llamacpp:{smollm2_gguf()}"
    base = pool.get(spec)
    before = base.score(PROMPTS, CONTINUATIONS)
    tuned = pool.get(spec, adapter=str(adapter), role="policy")
    assert len(pool.loaded) == 1 and tuned.describe()["adapter"] == str(adapter)
    after = tuned.score(PROMPTS, CONTINUATIONS)
    assert all(abs(a.logprob - b.logprob) > 1e-3 for a, b in zip(before, after))  # a small random adapter: small, real changes
    assert [s.token_logprobs for s in base.score(PROMPTS, CONTINUATIONS)] == [s.token_logprobs for s in before]


def test_an_adapter_generates_from_the_reduced_vocabulary_too(tmp_path: Path, vocabulary_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_llama_cpp()
    monkeypatch.setenv("MFLLM_CACHE_DIR", str(vocabulary_cache))
    adapter = _random_lora(tmp_path)
    pool = ModelPool(device="cpu", n_ctx=4096)
    tuned = pool.get(f"llamacpp:{smollm2_gguf()}", adapter=str(adapter), role="policy")
    assert isinstance(tuned, LlamaCppModel) and tuned.adapter is not None
    full = tuned.loaded
    restricted = full.for_generation("zh", tuned.adapter)
    assert isinstance(restricted, RestrictedGGUF) and restricted.adapters[tuned.adapter] == str(adapter)
    ids = full.prompt_ids(PROMPTS[0])
    logits = {}
    for name, model, active in (("full", full, tuned.adapter), ("restricted", restricted, tuned.adapter), ("base", restricted, None)):
        model.activate(active)
        model.begin(ids[:-1], 1)
        model.decode([_Entry(ids[-1], len(ids) - 1, 0, True)], lambda entry, index, model=model, name=name: logits.__setitem__(name, model.logits(index).copy()))
    kept = restricted.vocabulary.full_ids
    assert logits["restricted"] == pytest.approx(logits["full"][kept], abs=1e-4)
    assert np.abs(logits["base"] - logits["restricted"]).max() > 1e-2  # the adapter acts there


def test_an_adapter_llama_cpp_cannot_run_falls_back_to_transformers_with_a_notice(tmp_path: Path,
                                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    require_llama_cpp()
    adapter = tmp_path / "dora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "use_dora": True}))
    with pytest.raises(AdapterConversionError, match="use_dora"):
        convert_peft_lora(adapter, smollm2_gguf(), tmp_path / "out.gguf")
    pool = ModelPool(device="cpu")
    chosen: list[str] = []
    fallback = FakeModel("transformers stand-in")

    def transformers_model(spec: object, adapter_dir: str | None, role: str) -> FakeModel:
        chosen.append(str(adapter_dir))
        return fallback

    pool.transformers_model = transformers_model  # type: ignore[method-assign]  (no de-quantised copy in a unit test)
    assert pool.get("embedded:smollm2-135m-instruct", adapter=str(adapter), role="policy") is fallback
    assert chosen == [str(adapter)]
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "policy runs on transformers instead of llama.cpp" in notice[0] and "use_dora" in notice[0]


def test_seeds_are_per_prompt(smollm2: LoadedGGUF) -> None:
    model = LlamaCppModel(smollm2, "m")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, stop=(), seed=5)
    together = model.generate(PROMPTS, params)
    assert together[1:] == model.generate(PROMPTS[1:], dataclasses.replace(params, seed=6))


def test_output_vocabulary_rules() -> None:
    assert keeps("评论", "zh") and keeps(" 疫情。", "zh") and keeps("ok", "zh") and keeps("😀", "zh")
    assert not keeps("http", "zh") and not keeps("ありがとう", "zh")
    assert keeps(" café", "en") and keeps("2020!", "en") and not keeps("评论", "en")
    assert token_text("\u2581疫情", "llama") == " 疫情" and token_text("Ġyes", "gpt2") == " yes"
    assert token_text("ç", "gpt2") is None  # the first byte of a character split across tokens
    with pytest.raises(UnsupportedVocabulary, match="known: zh, en"):
        keeps("x", "fr")


def test_a_restricted_vocabulary_gives_the_full_models_logits_on_its_tokens(smollm2: LoadedGGUF, vocabulary_cache: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFLLM_CACHE_DIR", str(vocabulary_cache))
    vocabulary = reduced_gguf(smollm2.model_file, "zh", vocabulary_cache / "gguf" / "vocabulary")
    assert 0 < vocabulary.size < smollm2.n_vocab / 4 and list(vocabulary.full_ids) == sorted(set(vocabulary.full_ids))
    assert reduced_gguf(smollm2.model_file, "zh", vocabulary_cache / "gguf" / "vocabulary").gguf_file == vocabulary.gguf_file  # built once
    restricted = smollm2.for_generation("zh", None)
    assert isinstance(restricted, RestrictedGGUF) and smollm2.for_generation(None, None) is smollm2
    ids = smollm2.prompt_ids(PROMPTS[0])
    logits = {}
    for model in (smollm2, restricted):
        model.begin(ids[:-1], 1)
        model.decode([_Entry(ids[-1], len(ids) - 1, 0, True)], lambda entry, index, model=model: logits.__setitem__(model, model.logits(index).copy()))
    assert logits[restricted].shape == (vocabulary.size,)
    assert logits[restricted] == pytest.approx(logits[smollm2][vocabulary.full_ids], abs=1e-4)
    model, chinese = LlamaCppModel(smollm2, "restricted"), dataclasses.replace(GREEDY, vocabulary="zh")
    texts = model.generate(PROMPTS, chinese)
    assert texts == model.generate(PROMPTS, chinese) and texts != model.generate(PROMPTS, GREEDY)


def test_a_floor_holds_back_the_same_tokens_on_the_reduced_vocabulary(smollm2: LoadedGGUF, vocabulary_cache: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFLLM_CACHE_DIR", str(vocabulary_cache))
    restricted = smollm2.for_generation("en", None)
    assert isinstance(restricted, RestrictedGGUF)
    stops = ("\n", "[reply]")
    full = set(smollm2.ending_tokens(stops).tolist())
    assert {smollm2.tokenize("\n", add_special=False)[0], smollm2.tokenize("hi\n\n", add_special=False)[-1]} <= full
    assert any(smollm2.is_end_of_generation(token) for token in full) and not any(b"\n" in smollm2.piece(t) for t in range(300) if t not in full)
    kept = set(restricted.vocabulary.full_ids.tolist())
    assert set(restricted.vocabulary.full_ids[restricted.ending_tokens(stops)].tolist()) == full & kept
    model = LlamaCppModel(smollm2, "floor")
    greedy = dataclasses.replace(GREEDY, stop=("\n", " "), vocabulary="en")
    free = model.generate(PROMPTS, greedy)
    held = model.generate(PROMPTS, dataclasses.replace(greedy, min_new_tokens_each=(7, 0, 7)))
    assert held[1] == free[1] and all(held[i].startswith(free[i]) for i in (0, 2)) and any(len(held[i]) > len(free[i]) for i in (0, 2)), (free, held)


def test_a_kept_prefix_and_the_thread_count_do_not_change_results(smollm2: LoadedGGUF) -> None:
    model = LlamaCppModel(smollm2, "history")
    sampled = SamplingParams(max_new_tokens=8, temperature=0.9, seed=5, stop=())
    first_scores, first_texts = model.score(PROMPTS, CONTINUATIONS), model.generate(PROMPTS, sampled)
    assert smollm2._prefix  # the step's prefix stays on sequence 0 for the next call
    again_texts, again_scores = model.generate(PROMPTS, sampled), model.score(PROMPTS, CONTINUATIONS)
    one_thread = LlamaCppModel(LoadedGGUF(smollm2.model_file, LlamaCppSettings(n_ctx=4096, threads=1)), "one")
    assert again_texts == first_texts == one_thread.generate(PROMPTS, sampled)
    for a, b, c in zip(first_scores, again_scores, one_thread.score(PROMPTS, CONTINUATIONS)):
        assert a.token_logprobs == b.token_logprobs == c.token_logprobs


MARKERS = [marker(choice, "en") for choice in ACTION_CHOICES]


@pytest.fixture
def completion_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2 read in the completion layout, as the embedded base model is (its prompts then end where
    the kind marker and the text follow)."""
    monkeypatch.setattr(LoadedGGUF, "is_chat", property(lambda self: False))


def _restricted_reference(full: LoadedGGUF, restricted: RestrictedGGUF, prompt: list[int], option: list[int]) -> list[float]:
    """An option's log-probs from the full model's logits, normalised over the restricted model's tokens."""
    logits: dict[int, np.ndarray] = {}
    tokens = prompt + option[:-1]
    full.begin([], 1)
    full.decode([_Entry(t, k, 0, k >= len(prompt) - 1) for k, t in enumerate(tokens)],
                lambda entry, index: logits.__setitem__(entry, full.logits(index)[restricted.vocabulary.full_ids].astype(np.float64)))
    values = []
    for read, token in enumerate(option):
        kept = logits[len(prompt) - 1 + read]
        values.append(float(kept[restricted.own_id(token)] - np.log(np.exp(kept - kept.max()).sum()) - kept.max()))
    return values


def test_options_are_scored_over_the_tokens_generation_draws_from(smollm2: LoadedGGUF, vocabulary_cache: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFLLM_CACHE_DIR", str(vocabulary_cache))
    model = LlamaCppModel(smollm2, "options")
    options = ["[ok]", "[no]", "[go]", "[re]"]  # tokens SmolLM2 keeps for Chinese (a sixth of its vocabulary): four paths after "["
    prompts = [p for p in PROMPTS for _ in options]
    restricted = smollm2.for_generation("zh", None)
    assert isinstance(restricted, RestrictedGGUF)
    scores = model.score_options(prompts, options * len(PROMPTS), "zh")
    for prompt, option, score in zip(prompts, options * len(PROMPTS), scores):
        expected = _restricted_reference(smollm2, restricted, smollm2.prompt_ids(prompt), smollm2.tokenize(option, add_special=False))
        assert score.token_logprobs == pytest.approx(expected, abs=1e-6)
    whole = model.score(prompts, options * len(PROMPTS))
    assert [s.token_logprobs for s in model.score_options(prompts, options * len(PROMPTS), None)] == [s.token_logprobs for s in whole]
    assert all(a.logprob > b.logprob for a, b in zip(scores, whole))  # the kept tokens hold less than all the mass
    outside = model.score_options(PROMPTS[:1], MARKERS[:1], "zh")  # "reply" is not kept: scored on the whole vocabulary
    assert outside[0].token_logprobs == model.score(PROMPTS[:1], MARKERS[:1])[0].token_logprobs


def test_text_after_the_kind_choice_continues_the_prompts_the_choice_read(smollm2: LoadedGGUF, vocabulary_cache: Path,
                                                                           monkeypatch: pytest.MonkeyPatch, completion_layout: None) -> None:
    monkeypatch.setenv("MFLLM_CACHE_DIR", str(vocabulary_cache))
    context = render_context("What the replies say so far:", MEAN_FIELD)
    personas = [*PERSONAS, PERSONAS[0]]  # two agents with the same profile read the same prompt
    model = LlamaCppModel(smollm2, "choice")
    prompts = [policy_prompt(TOPIC, persona, "en", context) for persona in personas]
    model.score_options([p for p in prompts for _ in MARKERS], MARKERS * len(prompts), "en")
    choices = ["comment", "repost_with_text", "comment", "comment"]
    writing = [policy_prompt(TOPIC, persona, "en", context, choice) for persona, choice in zip(personas, choices)][1:]  # the first one reposts bare
    params = SamplingParams(max_new_tokens=12, temperature=0.9, seed=3, stop=("\n",), vocabulary="en")
    cached = model.usage.prefix_cached_tokens
    texts = model.generate(writing, params)
    assert model.usage.prefix_cached_tokens - cached >= sum(len(smollm2.prompt_ids(p)) - READ_AGAIN for p in prompts[1:])
    retry = dataclasses.replace(params, seed=11)
    again = model.generate(writing[1:2], retry)  # a rejected text asked again continues its prompt too
    fresh = LlamaCppModel(LoadedGGUF(smollm2.model_file, smollm2.settings), "fresh")
    assert texts == fresh.generate(writing, params) and again == fresh.generate(writing[1:2], retry)


def test_prefixes_and_fixed_headers_stored_between_calls_give_the_same_results(smollm2: LoadedGGUF, completion_layout: None) -> None:
    actions = [AgentAction("a user", text, "comment") for text in CONTINUATIONS]
    summary = mean_field_prompt(TOPIC, None, actions, "en")
    assert summary.header and summary.completion.startswith(summary.completion[:summary.header])
    params = SamplingParams(max_new_tokens=10, temperature=0.9, seed=2, stop=("\n",))
    loaded = LoadedGGUF(smollm2.model_file, smollm2.settings)
    model = LlamaCppModel(loaded, "stored")
    first = model.generate([summary], params)
    cached = model.usage.prefix_cached_tokens
    policy = model.generate(PROMPTS, params)  # another prefix in between
    assert model.generate([summary], params) == first and model.usage.prefix_cached_tokens - cached >= loaded.header_length(summary, loaded.prompt_ids(summary))
    assert model.generate(PROMPTS, params) == policy
    unstored = LlamaCppModel(LoadedGGUF(smollm2.model_file, dataclasses.replace(smollm2.settings, stored_prefixes=0)), "unstored")
    assert unstored.generate([summary], params) == first and unstored.generate(PROMPTS, params) == policy


@pytest.mark.parametrize("language,text", [("en", "I think so, who said it?"), ("zh", "我觉得是真的")])
def test_a_prompt_with_a_chosen_kind_reads_as_the_scored_continuation_begins(smollm2: LoadedGGUF, completion_layout: None,
                                                                              language: str, text: str) -> None:
    """Generation continues the very tokens scoring and training read (cue, then ``action_line``): the
    prompt ends at the marker, and the space before the text is the model's to write with the first word."""
    for choice, kind in (("comment", "comment"), ("repost_with_text", "repost")):
        cue = policy_prompt(TOPIC, PERSONAS[0], language)
        chosen = smollm2.prompt_ids(policy_prompt(TOPIC, PERSONAS[0], language, choice=choice))
        scored = smollm2.prompt_ids(cue) + smollm2.tokenize(action_line(kind, text, language), add_special=False)
        assert scored[:len(chosen)] == chosen, choice
        assert smollm2.piece(chosen[-1]).strip(), "the prompt ends in a lone space token"
