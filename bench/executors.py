"""Many runs, side by side: in this process (sequential) vs a local process pool vs Ray, same sweep.

The sweep is ``--runs`` seeds of the mean-field method on the demo event. Sequential runs one model with
every core; the process pool and Ray run ``--workers`` workers with ``cores / workers`` threads each
(math libraries and llama.cpp), so the workers never ask for more threads than there are cores. Each
figure is one wall-clock measure that includes starting the workers and loading their models (Ray:
also starting a local Ray, unless ``--ray-address`` joins a running one). Says whether every executor
wrote the same runs, then prints seconds, runs per second and the speed-up over sequential.

    python bench/executors.py [--model embedded:gemma-3-270m] [--runs 4] [--agents 16] [--workers 2]
                              [--executors sequential process ray] [--ray-address ADDRESS]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mfllm.cli import demo_data_path
from mfllm.executors import ExecutorConfig, available_cores
from mfllm.simulation import SimulationConfig
from mfllm.simulation.store import MANIFEST
from mfllm.simulation.sweep import simulate_many, sweep_configs, sweep_plan

TIMING_FIELDS = ("created", "throughput", "models")
"""Manifest fields allowed to differ between executors (when runs happen; the models record their threads)."""


def run_contents(root: Path) -> dict[str, Any]:
    """Every file under ``root``, the manifests less their timing fields."""
    out: dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = str(path.relative_to(root))
        if path.name == MANIFEST:
            out[key] = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k not in TIMING_FIELDS}
        else:
            out[key] = path.read_bytes()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:gemma-3-270m", help="policy and mean-field model spec (fake: no model)")
    parser.add_argument("--runs", type=int, default=4, help="runs in the sweep (seeds 0..runs-1)")
    parser.add_argument("--agents", type=int, default=16, help="simulated agents per run")
    parser.add_argument("--warmup", type=int, default=16, help="real reactions before simulation")
    parser.add_argument("--batch", type=int, default=16, help="agents per step")
    parser.add_argument("--workers", type=int, default=2, help="parallel workers of the process pool and of Ray")
    parser.add_argument("--executors", nargs="+", default=["sequential", "process", "ray"], choices=["sequential", "process", "ray"])
    parser.add_argument("--ray-address", help="join this Ray cluster instead of starting a local Ray")
    parser.add_argument("--output", help="where the runs go (default: a temporary directory)")
    args = parser.parse_args()

    cores = available_cores()
    threads = max(1, cores // args.workers)
    root = Path(args.output or tempfile.mkdtemp(prefix="mfllm-bench-executors-"))
    base = SimulationConfig(data=str(demo_data_path()), policy_model=args.model, warmup=args.warmup, num_agents=args.agents,
                            batch_size=args.batch, device="cpu")
    configs = sweep_configs(base, [None], ["mf"], list(range(args.runs)))
    print(f"{args.runs} runs of {args.agents} agents, {args.model}, {cores} cores; parallel: {args.workers} workers x {threads} threads")
    seconds: dict[str, float] = {}
    contents: dict[str, Any] = {}
    for name in args.executors:
        executor = ExecutorConfig(executor=name, workers=args.workers, threads_per_worker=threads, cpus_per_task=cores / args.workers,
                                  ray_address=args.ray_address)
        started = time.perf_counter()
        simulate_many(sweep_plan(configs, root / name), executor=executor)
        seconds[name] = time.perf_counter() - started
        contents[name] = run_contents(root / name)
    reference = args.executors[0]
    same = all(contents[name] == contents[reference] for name in args.executors)
    print(f"same runs from every executor: {'yes' if same else 'no (a model may round differently with other thread counts)'}")
    print("executor\tseconds\truns/s\tspeed-up")
    for name in args.executors:
        speed_up = f"{seconds['sequential'] / seconds[name]:.2f}x" if "sequential" in seconds else "-"
        print(f"{name}\t{seconds[name]:.1f}\t{args.runs / seconds[name]:.3f}\t{speed_up}")


if __name__ == "__main__":
    main()
