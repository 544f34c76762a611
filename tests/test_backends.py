"""Backends on a tiny random model with a real tokenizer; wrappers; the HTTP backend on a mock transport."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfllm.backends import CachingModel, FakeModel, ModelPool, RateLimitedModel, RetryingModel, TransientBackendError, parse_spec
from mfllm.backends.hf import (LoadedCausalLM, ModelSource, TransformersModel, clean_output, continuation_logprobs, padding_fits_window,
                               prefix_to_share, shared_prefix_length, stop_position)
from mfllm.interfaces import ContinuationScore, Prompt, SamplingParams
from mfllm.prompts import policy_prompt

torch = pytest.importorskip("torch")


def _prompts(n: int = 4, language: str = "en") -> list[Prompt]:
    topic = "A hospital ship arrived in the harbour today with a thousand beds for patients."
    return [policy_prompt(topic, f"gender: male; followers: {i}00", language, "Summary:\nMost people doubt it.") for i in range(n)]


@pytest.fixture(scope="module")
def tiny_base(tiny_base_model_dir: Path) -> TransformersModel:
    return TransformersModel(LoadedCausalLM(ModelSource(str(tiny_base_model_dir)), "cpu", "fp32"), "tiny")


def test_generate_is_seeded_and_stops_at_end_of_line(tiny_base: TransformersModel) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7)
    first = tiny_base.generate(_prompts(), params)
    assert first == tiny_base.generate(_prompts(), params)
    assert first != tiny_base.generate(_prompts(), SamplingParams(max_new_tokens=12, temperature=1.0, seed=8))
    assert all("\n" not in text for text in first)
    assert tiny_base.usage.generated_tokens > 0 and tiny_base.usage.prompt_tokens > 0


def test_prefix_cache_gives_the_same_greedy_output(tiny_base: TransformersModel) -> None:
    prompts = _prompts(5)
    ids = [tiny_base.loaded.tokenizer(tiny_base.loaded.render(p)).input_ids for p in prompts]
    assert shared_prefix_length(ids) >= 16
    params = SamplingParams(max_new_tokens=10, temperature=0.0, stop=())
    tiny_base.prefix_cache = False
    plain = tiny_base.generate(prompts, params)
    tiny_base.prefix_cache = True
    before = tiny_base.usage.prefix_cached_tokens
    cached = tiny_base.generate(prompts, params)
    assert cached == plain
    assert tiny_base.usage.prefix_cached_tokens > before


def test_stop_position_skips_leading_newlines_and_opening_quotes() -> None:
    assert stop_position("\n\nhello\nworld", ("\n",)) == 7
    assert stop_position("  ", ("\n",)) is None
    assert stop_position("abc", ("\n", "c")) == 2
    assert clean_output('  "Not true" she said\nmore', ("\n", '"')) == "Not true"
    assert clean_output("真的假的”后面", ("\n", "”")) == "真的假的"


def test_score_masks_exactly_the_continuation(tiny_base: TransformersModel) -> None:
    prompts = _prompts(3)
    continuations = ["yes", "I do not believe this at all", ""]
    scores = tiny_base.score(prompts, continuations)
    tokenizer, model = tiny_base.loaded.tokenizer, tiny_base.loaded.model
    for prompt, continuation, score in zip(prompts, continuations, scores):
        prompt_ids = tokenizer(prompt.completion).input_ids
        cont_ids = tokenizer(continuation, add_special_tokens=False).input_ids
        assert score.num_tokens == len(cont_ids)
        with torch.no_grad():  # reference: one unpadded sequence
            logits = model(torch.tensor([prompt_ids + cont_ids])).logits[0]
        logprobs = torch.log_softmax(logits, -1)
        expected = [float(logprobs[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(cont_ids)]
        assert score.token_logprobs == pytest.approx(expected, abs=1e-4)


def _scored_ids(tokenizer: object, n: int) -> tuple[list[list[int]], list[list[int]]]:
    topic = "A hospital ship arrived in the harbour today with a thousand beds for patients."
    personas = ["gender: female", "gender: male; followers: 120; location: Boston", "verified news account"][:n]
    prompts = [tokenizer(policy_prompt(topic, s, "en", "Summary:\nMost doubt it.").completion).input_ids for s in personas]  # type: ignore[operator]
    continuations = [tokenizer(c, add_special_tokens=False).input_ids for c in ["no", "it is a rumour", "well said"][:n]]  # type: ignore[operator]
    return prompts, continuations


def test_shared_prefix_scoring_matches_separate_scoring_with_gradients(tiny_base: TransformersModel) -> None:
    model, tokenizer = tiny_base.loaded.model, tiny_base.loaded.tokenizer
    prompts, continuations = _scored_ids(tokenizer, 3)
    assert prefix_to_share(prompts) >= 16 and len({len(p) for p in prompts}) > 1
    results = []
    for share in (False, True):
        model.zero_grad()
        logprobs = continuation_logprobs(model, tokenizer, prompts, continuations, "cpu", share_prefix=share)
        torch.stack([t.sum() for t in logprobs]).sum().backward()
        results.append(([t.detach() for t in logprobs], [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    model.zero_grad()
    (plain, plain_grads), (shared, shared_grads) = results
    for a, b in zip(plain, shared):
        assert torch.allclose(a, b, atol=1e-5)
    assert len(plain_grads) == len(shared_grads) > 0
    for a, b in zip(plain_grads, shared_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_shared_prefix_scoring_is_exact_on_sliding_window_models(tiny_base_model_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_base_model_dir)
    config = transformers.Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=24,
                                           layer_types=["sliding_attention", "full_attention"], pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config).eval()
    prompts, continuations = _scored_ids(tokenizer, 3)
    longest = max(len(p) + len(c) for p, c in zip(prompts, continuations))
    assert longest > 24 and len({len(p) for p in prompts}) > 1
    assert not padding_fits_window(model, [len(p) + len(c) for p, c in zip(prompts, continuations)])  # right padding is used
    assert padding_fits_window(model, [longest] * 3) and padding_fits_window(model, [20, 24])
    for batch in (prompts, [prompts[0]] * 3):  # different prompts; K samples scored on one context
        with torch.no_grad():
            separate = continuation_logprobs(model, tokenizer, batch, continuations, "cpu", share_prefix=False)
            shared = continuation_logprobs(model, tokenizer, batch, continuations, "cpu")
        for a, b in zip(separate, shared):
            assert torch.allclose(a, b, atol=1e-5)


def test_chat_models_get_chat_messages(tiny_model_dir: Path) -> None:
    chat = LoadedCausalLM(ModelSource(str(tiny_model_dir)), "cpu", "fp32")
    assert chat.is_chat
    rendered = chat.render(_prompts(1)[0])
    assert "<|im_start|>system" in rendered and "then the text on the same line" in rendered
    assert rendered.rstrip().endswith("<|im_start|>assistant")


def test_pool_shares_weights_between_roles(tiny_base_model_dir: Path) -> None:
    pool = ModelPool(device="cpu")
    a = pool.get(f"hf:{tiny_base_model_dir}", role="policy")
    b = pool.get(f"hf:{tiny_base_model_dir}", role="mean_field")
    assert a is not b and a.loaded is b.loaded


def test_parse_spec() -> None:
    assert parse_spec("embedded:gemma-3-270m").kind == "embedded"
    assert parse_spec("hf:/m#w.gguf").gguf_file == "w.gguf"
    spec = parse_spec("openai:qwen@http://localhost:8000/v1")
    assert (spec.name, spec.base_url) == ("qwen", "http://localhost:8000/v1")
    with pytest.raises(ValueError, match="bad model spec"):
        parse_spec("gpt4")


class _Flaky(FakeModel):
    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    def generate(self, prompts, params):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise TransientBackendError("overloaded")
        return super().generate(prompts, params)


def test_retry_then_give_up() -> None:
    waits: list[float] = []
    model = RetryingModel(_Flaky(2), attempts=3, backoff_s=0.5, sleep=waits.append)
    assert model.generate(_prompts(1), SamplingParams(seed=1))
    assert waits == [0.5, 1.0]
    with pytest.raises(RuntimeError, match="gave up after 2 attempts: overloaded"):
        RetryingModel(_Flaky(5), attempts=2, sleep=lambda _: None).generate(_prompts(1), SamplingParams(seed=1))


def test_rate_limit_spaces_calls() -> None:
    waits: list[float] = []
    model = RateLimitedModel(FakeModel(), calls_per_second=4, clock=lambda: 10.0, sleep=waits.append)
    for _ in range(3):
        model.generate(_prompts(1), SamplingParams(seed=1))
    assert waits == [0.25, 0.5]


def test_cache_sends_only_misses_and_persists(tmp_path: Path) -> None:
    inner = FakeModel()
    cached = CachingModel(inner, tmp_path / "cache.jsonl")
    prompts = _prompts(3)
    first = cached.score(prompts, ["a b", "c", "d e f"])
    calls = inner.usage.score_calls
    again = CachingModel(FakeModel(), tmp_path / "cache.jsonl").score(prompts, ["a b", "c", "d e f"])
    assert [s.token_logprobs for s in again] == [s.token_logprobs for s in first]
    cached.score(prompts, ["a b", "new", "d e f"])
    assert inner.usage.score_calls == calls + 1


def test_openai_backend_chat_retries_and_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    httpx = pytest.importorskip("httpx")
    from mfllm.backends.openai_http import OpenAICompatibleModel

    seen: list[dict] = []
    failures = {"left": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append({"path": request.url.path, "auth": request.headers.get("authorization"), "body": body})
        if request.url.path.endswith("/chat/completions"):
            if failures["left"]:
                failures["left"] -= 1
                return httpx.Response(503, text="busy")
            return httpx.Response(200, json={"choices": [{"message": {"content": "\nNot true at all\nextra"}}],
                                             "usage": {"prompt_tokens": 10, "completion_tokens": 4}})
        prompt = body["prompt"]
        cut = len(prompt) - 3
        return httpx.Response(200, json={"choices": [{"logprobs": {"text_offset": [0, cut, cut + 1, cut + 2],
                                                                   "token_logprobs": [None, -1.0, -2.0, -0.5]}}]})

    monkeypatch.setenv("MY_KEY", "secret")
    model = OpenAICompatibleModel("m", "http://server/v1", api_key_env="MY_KEY", backoff_s=0.0, transport=httpx.MockTransport(handler))
    assert model.generate(_prompts(1), SamplingParams(seed=3)) == ["Not true at all"]
    assert [s["path"] for s in seen] == ["/v1/chat/completions"] * 2
    assert seen[0]["auth"] == "Bearer secret" and seen[0]["body"]["messages"][0]["role"] == "system"
    prompt = _prompts(1)[0]
    [score] = model.score([prompt], ["abc"])
    assert score.token_logprobs == (-1.0, -2.0, -0.5)
    assert seen[-1]["body"]["echo"] is True and seen[-1]["body"]["prompt"] == prompt.completion + "abc"


def test_a_floor_reaches_the_server_as_min_tokens_and_only_where_set() -> None:
    httpx = pytest.importorskip("httpx")
    from mfllm.backends.openai_http import OpenAICompatibleModel

    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"text": "fine"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

    model = OpenAICompatibleModel("m", "http://server/v1", chat=False, transport=httpx.MockTransport(handler), max_concurrency=1)
    model.generate(_prompts(2), SamplingParams(seed=1, max_new_tokens_each=(9, 9), min_new_tokens_each=(4, 0)))
    assert sorted((b.get("min_tokens", 0), b["max_tokens"]) for b in bodies) == [(0, 9), (4, 9)] and sum("min_tokens" in b for b in bodies) == 1


def test_the_cache_tells_floored_calls_apart_and_slices_floors_on_a_partial_hit(tmp_path: Path) -> None:
    inner = FakeModel()
    cached = CachingModel(inner, tmp_path / "cache.jsonl")
    prompts = _prompts(3)
    free = cached.generate(prompts[:2], SamplingParams(seed=2, max_new_tokens=30))
    floored = SamplingParams(seed=2, max_new_tokens=30, min_new_tokens_each=(0, 12, 15))
    held = cached.generate(prompts, floored)
    assert held[0] == free[0] and held[1] != free[1]  # the unfloored prompt is a hit, the floored one is not
    assert [inner.count_text_tokens(text) >= floor for text, floor in zip(held, (0, 12, 15))] == [True] * 3  # each miss had its own floor
    assert cached.generate(prompts, floored) == held and inner.usage.generate_calls == 2


def test_openai_backend_fails_fast_on_client_errors() -> None:
    httpx = pytest.importorskip("httpx")
    from mfllm.backends.openai_http import OpenAICompatibleModel

    model = OpenAICompatibleModel("m", "http://server/v1", transport=httpx.MockTransport(lambda r: httpx.Response(401, text="no key")))
    with pytest.raises(RuntimeError, match="HTTP 401"):
        model.generate(_prompts(1), SamplingParams())


def test_continuation_score_properties() -> None:
    score = ContinuationScore((-1.0, -3.0))
    assert (score.logprob, score.num_tokens, score.mean_nll) == (-4.0, 2, 2.0)


def test_the_transformers_penalties_follow_llama_cpps_formula() -> None:
    import torch

    from mfllm.backends.hf import penalise

    values = torch.tensor([[4.0, -2.0, 1.0, 3.0]])
    indices = torch.tensor([[10, 11, 12, 13]])
    generated = torch.tensor([[10, 10, 11, 99, 12]])  # token 10 twice, 11 and 12 once, 13 never
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25, penalty_window=4)
    # the window holds the last 4 generated tokens: 10, 11, 99, 12
    expected = [4.0 / 2 - 0.5 - 0.25, -2.0 * 2 - 0.5 - 0.25, 1.0 / 2 - 0.5 - 0.25, 3.0]
    assert penalise(values, indices, generated, params).tolist() == [pytest.approx(expected)]


def test_local_models_load_without_hub_kernels(tiny_base_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers 5 swaps layers for kernels fetched from the Hugging Face hub by default (on CUDA at the
    first training step, which fails offline); mfllm loads every local model with that switched off."""
    monkeypatch.setenv("USE_HUB_KERNELS", "YES")
    loaded = LoadedCausalLM(ModelSource(str(tiny_base_model_dir)), "cpu", "fp32")
    assert loaded.model.use_kernels is False
