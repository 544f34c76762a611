"""Scoring with a shared prompt prefix computed once vs every prompt scored on its own.

Two workloads of IB-Tune and evaluation, on the demo event and the same model, side by side in one
process: (1) the policy's log-likelihood of one step's real actions given the topic and a mean field
(prompts differ only in the persona), and (2) log q of K sampled summaries on one mean-field context,
forward and backward (what every IB-Tune step does). Prints medians over ``--repeats`` runs and the
largest difference between the two ways (they must agree).

    python bench/scoring.py [--model embedded:gemma-3-270m] [--batch 8] [--samples 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

from mfllm.backends import ModelPool
from mfllm.backends.hf import continuation_logprobs
from mfllm.cli import demo_data_path
from mfllm.data import load_event
from mfllm.simulation import SimulationConfig, StepContext
from mfllm.simulation.engine import make_context
from mfllm.simulation.step import real_batches


def timed(run: Callable[[], list[Any]], repeats: int) -> tuple[float, list[Any]]:
    times, result = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:gemma-3-270m")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    event, _ = load_event(demo_data_path())
    backend = ModelPool(device="cpu", dtype=args.dtype).get(args.model)
    model, tokenizer = backend.loaded.model, backend.loaded.tokenizer
    encode = lambda text, special=True: tokenizer(text, add_special_tokens=special).input_ids  # noqa: E731
    history, following = real_batches(event, args.batch, 2)
    step = StepContext(event, make_context(SimulationConfig(data=str(demo_data_path())), event, None))
    context = encode(step.provider.update_prompt(step.real_actions(history)).completion)  # type: ignore[attr-defined]
    step.provider.accept("多数网友质疑消息来源，少数转发提醒注意防护，情绪以担忧和愤怒为主。")  # type: ignore[attr-defined]
    policy_prompts = [encode(prompt.completion) for prompt in step.prompts(following)]
    actions = [encode(a.real.text, False)[:48] for a in following]
    summaries = [encode(r.text, False)[:64] for r in event.reactions[2 * args.batch:2 * args.batch + args.samples]]

    def policy_nll(share: bool) -> Callable[[], list[Any]]:
        def run() -> list[Any]:
            with torch.no_grad():
                return continuation_logprobs(model, tokenizer, policy_prompts, actions, "cpu", share_prefix=share)
        return run

    def log_q_backward(share: bool) -> Callable[[], list[Any]]:
        def run() -> list[Any]:
            model.zero_grad()
            logprobs = continuation_logprobs(model, tokenizer, [context] * len(summaries), summaries, "cpu", share_prefix=share)
            torch.stack([t.sum() for t in logprobs]).sum().backward()
            return [t.detach() for t in logprobs]
        return run

    print(f"model {args.model} ({args.dtype}), {args.repeats} repeats (medians)")
    for name, make, size in (("policy NLL of one step", policy_nll, f"{args.batch} agents, prompts ~{len(policy_prompts[0])} tokens"),
                             ("log q + backward", log_q_backward, f"{args.samples} summaries, context {len(context)} tokens")):
        separate, reference = timed(make(False), args.repeats)
        shared, result = timed(make(True), args.repeats)
        gap = max(float((a - b).abs().max()) for a, b in zip(reference, result) if a.numel())
        print(f"{name} ({size}): separate {separate:.2f} s, shared prefix {shared:.2f} s, "
              f"speed-up {separate / shared:.2f}x, largest log-prob difference {gap:.1e}")


if __name__ == "__main__":
    main()
