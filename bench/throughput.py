"""Simulated actions per second: a loop in the style of the original MF-LLM code vs mfllm on
transformers vs mfllm on llama.cpp, side by side in one process, on the same event, model and schedule.

mfllm on llama.cpp runs twice: generating from the event language's tokens (the default) and from
the whole vocabulary, so the restricted output layer's share of the speed-up shows side by side.
The original style: HF ``generate`` on the de-quantised fp32 model with batch 16, a fixed 50 new
tokens per action (cut at the first newline afterwards), 200-token mean-field updates, the stock
top-p sampler. mfllm (both engines, the LLM mean field ``mf-llm``): stop at the end of the line, the
step's shared prompt prefix computed once, top-k-then-top-p sampling, and the kind of every action
chosen from the policy's marker probabilities (a scoring pass the original loop does not make); on
llama.cpp the model runs from its quantised GGUF file and, generating from the language's tokens, scores
the markers with the model that writes the text, continuing each prompt's cache into its text.
Prints medians over ``--repeats`` runs and the ratios, then the policy prompt tokens per action for
64, 256 and 1024 agents (the mean field keeps them flat; a prompt with the full history grows).

    python bench/throughput.py [--model gemma-3-270m] [--agents 32] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mfllm.backends.llamacpp import llama_cpp_module

llama_cpp_module()  # llama.cpp loads the OpenMP runtime first, waiting passively (torch then shares it)

import torch  # noqa: E402

from mfllm.backends import ModelPool  # noqa: E402
from mfllm.cli import demo_data_path  # noqa: E402
from mfllm.data import load_event, persona_text  # noqa: E402
from mfllm.data.schema import Event  # noqa: E402
from mfllm.interfaces import AgentAction  # noqa: E402
from mfllm.manifest import derive_seed  # noqa: E402
from mfllm.prompts import mean_field_prompt, policy_prompt, render_context  # noqa: E402
from mfllm.simulation import RunStore, SimulationConfig, estimate, schedule, simulate  # noqa: E402
from mfllm.simulation.methods.mean_field import MeanField  # noqa: E402

AGENT_COUNTS = (64, 256, 1024)


SAMPLING = {name: SimulationConfig.model_fields[name].default for name in ("temperature", "top_p")}
"""The original-style loop samples as mfllm runs do by default."""


def original_style(model: Any, tokenizer: Any, event: Event, warmup: int, batch: int, agents: int, seed: int) -> tuple[float, float]:
    """Returns (actions/s, share of generated tokens thrown away)."""
    tokenizer.padding_side = "left"
    mean_field, generated, kept = None, 0, 0

    def sample(texts: list[str], new_tokens: int) -> list[str]:
        nonlocal generated, kept
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**encoded, max_new_tokens=new_tokens, do_sample=True, temperature=SAMPLING["temperature"], top_p=SAMPLING["top_p"],
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
            context = render_context(MeanField.headers["zh"], mean_field)
            prompts = [policy_prompt(event.source.text, persona_text(r.user, "zh"), "zh", context).completion for r in reactions]
            texts = sample(prompts, 50)
            done += len(texts)
        else:
            texts = [r.text for r in reactions]
        actions = [AgentAction(persona_text(r.user, "zh", short=True), t, r.kind) for r, t in zip(reactions, texts)]
        mean_field = sample([mean_field_prompt(event.source.text, mean_field, actions, "zh").completion], 200)[0] or mean_field
    return done / (time.perf_counter() - start), 1 - kept / max(generated, 1)


def mfllm_run(config: SimulationConfig, pool: ModelPool) -> tuple[float, float, dict[str, Any]]:
    """One mfllm simulation: (actions/s, share of generated token slots discarded, policy model description)."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = RunStore(simulate(config, Path(tmp) / "run", pool=pool)).manifest()
    usage = manifest["usage"]["policy"]
    waste = usage["discarded_tokens"] / max(usage["discarded_tokens"] + usage["generated_tokens"], 1)
    return manifest["throughput"]["actions_per_second"], waste, manifest["models"]["policy"]


def prompt_tokens_per_action(event: Event, policy: Any, warmup: int, batch: int) -> list[tuple[int, float, float]]:
    """(agents, mean-field policy prompt tokens per action, full-history tokens per action) for each N
    in AGENT_COUNTS; the demo event's reactions are repeated in order where it has fewer than N."""
    rows = []
    for agents in AGENT_COUNTS:
        needed = warmup + agents
        repeats = -(-needed // len(event.reactions))
        long_event = event.model_copy(update={"reactions": (event.reactions * repeats)[:needed]})
        config = SimulationConfig(data=str(demo_data_path()), method="mf-llm", warmup=warmup, batch_size=batch, num_agents=agents)
        figures = estimate(config, long_event, policy)
        steps = figures["per_step"]
        per_action = sum(s["policy_prompt_tokens"] * s["agents"] for s in steps) / agents
        full = sum(s["full_history_tokens"] * s["agents"] for s in steps) / agents
        rows.append((agents, per_action, full))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m", help="embedded model name")
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: every available core)")
    args = parser.parse_args()
    event, _ = load_event(demo_data_path())
    spec = f"embedded:{args.model}"
    engines = {"transformers": ModelPool(device="cpu", dtype="fp32", engine="transformers"),
               "llama.cpp": ModelPool(device="cpu", engine="llamacpp", threads=args.threads)}
    reference = engines["transformers"].get(spec)
    model, tokenizer = reference.loaded.model, reference.loaded.tokenizer
    variants = {**{f"mfllm on {name}": (name, "language") for name in engines}, "mfllm on llama.cpp, whole vocabulary": ("llama.cpp", "full")}
    rates: dict[str, list[float]] = {"original-style loop": [], **{name: [] for name in variants}}
    waste: dict[str, list[float]] = {name: [] for name in rates}
    described: dict[str, Any] = {}
    for repeat in range(args.repeats):
        seed = derive_seed(0, "bench", repeat)
        rate, discarded = original_style(model, tokenizer, event, args.warmup, args.batch, args.agents, seed)
        rates["original-style loop"].append(rate)
        waste["original-style loop"].append(discarded)
        for name, (engine, vocabulary) in variants.items():  # one pool per engine: weights load once, usage counted per run
            config = SimulationConfig(data=str(demo_data_path()), method="mf-llm", policy_model=spec, warmup=args.warmup,
                                      batch_size=args.batch, num_agents=args.agents, seed=seed, device="cpu", dtype="fp32",
                                      output_vocabulary=vocabulary)
            rate, discarded, described[engine] = mfllm_run(config, engines[engine])
            rates[name].append(rate)
            waste[name].append(discarded)
        print(f"repeat {repeat}: " + ", ".join(f"{name} {values[-1]:.3f}" for name, values in rates.items()) + " actions/s", flush=True)
    llama = described["llama.cpp"]
    print(f"\n{spec}, {args.agents} agents, batch {args.batch}, warm-up {args.warmup}, medians of {args.repeats} repeats; "
          f"llama.cpp: {llama['threads']} threads, n_ctx {llama['n_ctx']}, n_batch {llama['n_batch']}")
    baseline = statistics.median(rates["original-style loop"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<38} {median:7.3f} actions/s  {median / baseline:5.2f}x the original-style loop  "
              f"{statistics.median(waste[name]):4.0%} of generated token slots discarded")
    print(f"llama.cpp vs transformers: {statistics.median(rates['mfllm on llama.cpp']) / statistics.median(rates['mfllm on transformers']):.2f}x")
    print("\npolicy prompt tokens per action (mean field vs a prompt holding the full history):")
    for agents, per_action, full in prompt_tokens_per_action(event, engines["llama.cpp"].get(spec), args.warmup, args.batch):
        print(f"  N = {agents:>4}: {per_action:6.1f} with the mean field, {full:9.1f} with the full history")


if __name__ == "__main__":
    main()
