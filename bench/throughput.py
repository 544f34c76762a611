"""Simulated actions per second: mfllm's loop vs a loop in the style of the original MF-LLM code.

Both run side by side in one process on the same model, event, prompts and schedule. The original
style: HF ``generate`` with batch 16, a fixed 50 new tokens per action (cut at the first newline
afterwards), 200-token mean-field updates, the stock top-p sampler. mfllm: stop at the end of the
line, a shared-prefix KV cache, top-k-then-top-p sampling. Prints medians over ``--repeats`` runs.

    python bench/throughput.py [--model embedded:gemma-3-270m] [--agents 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mfllm.backends import ModelPool
from mfllm.cli import demo_data_path
from mfllm.data import load_event, persona_text
from mfllm.interfaces import AgentAction
from mfllm.manifest import derive_seed
from mfllm.prompts import mean_field_prompt, policy_prompt
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.engine import schedule


def original_style(model, tokenizer, event, warmup: int, batch: int, agents: int, seed: int) -> tuple[float, float]:
    """Returns (actions/s, share of generated tokens thrown away)."""
    tokenizer.padding_side = "left"
    mean_field, generated, kept = None, 0, 0

    def sample(texts: list[str], new_tokens: int) -> list[str]:
        nonlocal generated, kept
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**encoded, max_new_tokens=new_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[:, encoded.input_ids.shape[1]:]
        generated += int(new.numel())
        results = []
        for row in tokenizer.batch_decode(new, skip_special_tokens=True):
            text = row.strip().split("\n")[0]
            kept += len(tokenizer(text, add_special_tokens=False).input_ids)
            results.append(text)
        return results

    torch.manual_seed(seed)
    start, done = time.perf_counter(), 0
    for step in schedule(len(event.reactions), warmup, batch, agents):
        reactions = [event.reactions[p] for p in step.positions]
        if step.phase == "rollout":
            prompts = [policy_prompt(event.source.text, persona_text(r.user, "zh"), "zh", "mf", mean_field).completion for r in reactions]
            texts = sample(prompts, 50)
            done += len(texts)
        else:
            texts = [r.text for r in reactions]
        actions = [AgentAction(persona_text(r.user, "zh", short=True), t, r.kind) for r, t in zip(reactions, texts)]
        mean_field = sample([mean_field_prompt(event.source.text, mean_field, actions, "zh", 120).completion], 200)[0] or mean_field
    return done / (time.perf_counter() - start), 1 - kept / max(generated, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:gemma-3-270m")
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    event, _ = load_event(demo_data_path())
    pool = ModelPool(device="cpu", dtype="fp32")
    backend = pool.get(args.model)
    model, tokenizer = backend.loaded.model, backend.loaded.tokenizer
    ours, theirs, waste_ours, waste_theirs = [], [], [], []
    for repeat in range(args.repeats):
        seed = derive_seed(0, "bench", repeat)
        rate, waste = original_style(model, tokenizer, event, args.warmup, args.batch, args.agents, seed)
        theirs.append(rate)
        waste_theirs.append(waste)
        config = SimulationConfig(data=str(demo_data_path()), policy_model=args.model, warmup=args.warmup, batch_size=args.batch,
                                  num_agents=args.agents, seed=seed, device="cpu", dtype="fp32")
        with tempfile.TemporaryDirectory() as tmp:  # same pool: same weights, fresh usage counters per run
            manifest = RunStore(simulate(config, Path(tmp) / "run", pool=pool)).manifest()
        ours.append(manifest["throughput"]["actions_per_second"])
        usage = manifest["usage"]["policy"]
        waste_ours.append(usage["discarded_tokens"] / max(usage["discarded_tokens"] + usage["generated_tokens"], 1))
        print(f"repeat {repeat}: original-style {theirs[-1]:.3f} actions/s, mfllm {ours[-1]:.3f} actions/s")
    print(f"model {args.model}, {args.agents} agents, batch {args.batch}, warm-up {args.warmup}, {args.repeats} repeats (medians)")
    print(f"original-style loop : {statistics.median(theirs):.3f} actions/s, {statistics.median(waste_theirs):.0%} of generated token slots discarded")
    print(f"mfllm               : {statistics.median(ours):.3f} actions/s, {statistics.median(waste_ours):.0%} of generated token slots discarded")
    print(f"speed-up            : {statistics.median(ours) / statistics.median(theirs):.2f}x")


if __name__ == "__main__":
    main()
