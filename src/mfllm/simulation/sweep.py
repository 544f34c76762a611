"""Many runs: every event x method x seed, into ``root/<event>/<method>/seed<k>``, with one model pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from mfllm.data.loaders import get_reader, load_event
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import ProgressFactory, estimate, simulate


def sweep_configs(base: SimulationConfig, events: Sequence[str | None] = (None,), methods: Sequence[str | None] = (None,),
                  seeds: Sequence[int | None] = (None,)) -> list[SimulationConfig]:
    """One config per (event, method, seed); None keeps the base's value. An event id left unset is the
    dataset's first event, so every run directory names its event."""
    configs = []
    for event_id in events:
        for method in methods:
            for seed in seeds:
                update = {k: v for k, v in (("event_id", event_id), ("method", method), ("seed", seed)) if v is not None}
                config = SimulationConfig(**{**base.model_dump(), **update})
                if config.event_id is None:
                    first = get_reader(config.data, config.data_format).list_events(Path(config.data))[:1]
                    if not first:
                        raise ValueError(f"{config.data}: no event found")
                    config = config.model_copy(update={"event_id": first[0]})
                configs.append(config)
    return configs


RunPlan = Sequence[tuple[SimulationConfig, Path]]
"""Runs to make: each config with its run directory."""


def run_directory(root: str | Path, config: SimulationConfig) -> Path:
    """Where a sweep writes the run of ``config``: ``root/<event>/<method>/seed<k>``."""
    return Path(root) / str(config.event_id) / config.method / f"seed{config.seed}"


def sweep_plan(configs: Sequence[SimulationConfig], root: str | Path) -> list[tuple[SimulationConfig, Path]]:
    """Each config with its :func:`run_directory` under ``root``."""
    plan = [(config, run_directory(root, config)) for config in configs]
    if len({directory for _, directory in plan}) != len(plan):
        raise ValueError("two runs of the sweep would share a run directory")
    return plan


def simulate_many(plan: RunPlan, pool: Any = None, resume: bool = False, progress: ProgressFactory | None = None,
                  on_run: Callable[[Path], None] | None = None) -> list[Path]:
    """Simulate every (config, run directory) of ``plan``, sharing one model pool; returns the run directories."""
    runs = []
    for config, directory in plan:
        pool = pool or config.model_pool()
        run = simulate(config, directory, pool=pool, resume=resume, progress=progress)
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return runs


def estimate_many(configs: Sequence[SimulationConfig], pool: Any = None) -> list[dict[str, Any]]:
    """Dry-run estimates (model calls, prompt tokens per step) of every config, generating nothing."""
    plans = []
    for config in configs:
        pool = pool or config.model_pool()
        event, _ = load_event(config.data, config.event_id, config.data_format)
        plans.append(estimate(config, event, pool.get(config.policy_model)))
    return plans
