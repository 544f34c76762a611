"""llama.cpp vs transformers on the embedded models: decode speed, and how far their scores differ.

For each embedded model: tokens/s of one greedy sequence (batch 1, the mean-field update's shape)
and of a batch of 16 policy prompts sharing the step's prefix; then the log-probs both engines give
the demo event's real reactions after their policy prompts (llama.cpp computes on the quantised GGUF
weights, transformers on a de-quantised fp32 copy): the largest and the median difference per token
and per continuation. The conformance tests' tolerance comes from these figures.

    python bench/engines.py [--models gemma-3-270m smollm2-135m-instruct] [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from mfllm.backends.llamacpp import llama_cpp_module

llama_cpp_module()  # llama.cpp loads the OpenMP runtime first, waiting passively (torch then shares it)

from mfllm.backends import ModelPool  # noqa: E402
from mfllm.cli import demo_data_path  # noqa: E402
from mfllm.data import load_event, persona_text  # noqa: E402
from mfllm.interfaces import LanguageModel, Prompt, SamplingParams  # noqa: E402
from mfllm.prompts import policy_prompt  # noqa: E402


def decode_rate(model: LanguageModel, prompts: list[Prompt], tokens: int, repeats: int) -> float:
    """Median generated tokens per second (no stop strings, so every row decodes ``tokens`` tokens)."""
    params = SamplingParams(max_new_tokens=tokens, temperature=0.8, stop=(), seed=0)
    model.generate(prompts[:1], SamplingParams(max_new_tokens=2, stop=(), seed=0))  # load weights outside the timing
    rates = []
    for _ in range(repeats):
        before = model.usage.generated_tokens + model.usage.discarded_tokens
        start = time.perf_counter()
        model.generate(prompts, params)
        rates.append((model.usage.generated_tokens + model.usage.discarded_tokens - before) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gemma-3-270m", "smollm2-135m-instruct"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--score-rows", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    event, _ = load_event(demo_data_path())
    pools = {"transformers": ModelPool(device="cpu", dtype="fp32", engine="transformers"),
             "llama.cpp": ModelPool(device="cpu", engine="llamacpp", threads=args.threads)}
    for name in args.models:
        language = "zh" if name.startswith("gemma") else "en"
        topic = event.source.text if language == "zh" else "The city will close all schools tomorrow because of the storm."
        reactions = event.reactions[:args.score_rows]
        prompts = [policy_prompt(topic, persona_text(r.user, language), language) for r in reactions]
        models = {engine: pool.get(f"embedded:{name}") for engine, pool in pools.items()}
        for engine, model in models.items():
            single = decode_rate(model, prompts[:1], args.tokens, args.repeats)
            batch = decode_rate(model, prompts[:16], args.tokens // 2, args.repeats)
            print(f"{name:<22} {engine:<12} batch 1: {single:6.1f} tokens/s   batch 16 (shared prefix): {batch:6.1f} tokens/s", flush=True)
        texts = [r.text for r in reactions]
        scores = {engine: model.score(prompts, texts) for engine, model in models.items()}
        per_token, per_text = [], []
        for a, b in zip(scores["llama.cpp"], scores["transformers"]):
            if a.num_tokens != b.num_tokens:
                raise ValueError(f"{name}: the engines tokenise a continuation differently ({a.num_tokens} vs {b.num_tokens} tokens)")
            per_token += [abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs)]
            per_text.append(abs(a.mean_nll - b.mean_nll))
        print(f"{name:<22} score difference over {len(texts)} real reactions ({len(per_token)} tokens): per token max "
              f"{max(per_token):.3f} median {statistics.median(per_token):.3f} nats; mean NLL per continuation max "
              f"{max(per_text):.3f} median {statistics.median(per_text):.3f} nats", flush=True)


if __name__ == "__main__":
    main()
