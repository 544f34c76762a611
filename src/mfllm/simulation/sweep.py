"""Many runs: every event x method x seed, into ``root/<event>/<method>/seed<k>``, on an executor (:mod:`mfllm.executors`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mfllm.data.loaders import get_reader, load_event
from mfllm.data.schema import Event
from mfllm.executors import ExecutorConfig, Task, on_values, run_tasks
from mfllm.manifest import package_versions
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import BranchPoint, ProgressFactory, adapter_mismatches, backend_of, comparable_config, estimate, simulate
from mfllm.simulation.scenario import Scenario
from mfllm.simulation.store import RunStore
from mfllm.simulation.throughput import measured_speed, wall_clock


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
    """Each config with its :func:`run_directory` under ``root``; refused before anything runs when two
    runs would share a directory (an event, method or seed listed twice, or under two names)."""
    plan = [(config, run_directory(root, config)) for config in configs]
    first: dict[Path, int] = {}
    for index, (config, directory) in enumerate(plan):
        if directory in first:
            raise ValueError(f"{directory}: runs {first[directory] + 1} and {index + 1} of the sweep would both write here "
                             f"(event {config.event_id}, method {config.method}, seed {config.seed}); list each event, method "
                             "and seed once")
        first[directory] = index
    return plan


def completed_run(directory: str | Path, config: SimulationConfig, branch: BranchPoint | None = None,
                  data_hash: str | None = None) -> bool:
    """Whether ``directory`` already holds the finished run of ``config`` (same settings, same branch point):
    a re-submitted sweep skips it instead of opening it again. A run made by another mfllm version or on
    other event data than ``data_hash`` (the event's content hash; loaded when not given) is refused
    (:class:`StaleRunError`), finished or not: its rows must not be mixed with new ones."""
    store = RunStore(directory)
    if not store.exists():
        return False
    manifest = store.manifest()
    check_fresh(directory, manifest, data_hash or load_event(config.data, config.event_id, config.data_format)[0].content_hash(), config)
    return (manifest.get("status") == "completed" and manifest.get("branch") == (branch.describe() if branch else None)
            and comparable_config(manifest["config"]) == comparable_config(config.model_dump()))


class StaleRunError(ValueError):
    """A run directory holds a run made by another mfllm version or on other data."""


def check_fresh(directory: str | Path, manifest: dict[str, Any], data_hash: str, config: SimulationConfig) -> None:
    """Refuse a run (:class:`StaleRunError`, one line saying why) that this mfllm on this data, with the adapters
    ``config`` loads, would not make."""
    made, now = manifest.get("versions", {}).get("mfllm"), package_versions().get("mfllm")
    reasons = [f"it was made by mfllm {made}, this is {now}"] if made != now else []
    if manifest.get("data_hash") != data_hash:
        reasons.append("the event data changed since it ran")
    reasons += adapter_mismatches(manifest, config)
    if reasons:
        raise StaleRunError(f"{directory}: cannot reuse or resume this run: {'; '.join(reasons)}; write to a fresh output folder "
                            "(or move the run away) so old and new results are not mixed")


def simulate_task(pool: Any, config: SimulationConfig, directory: Path, resume: bool, progress: ProgressFactory | None = None,
                  branch: BranchPoint | None = None, scenario: Callable[[Event], Scenario] | None = None) -> Path:
    """One run as an executor task (see :mod:`mfllm.executors`): :func:`simulate` with the worker's pool."""
    return simulate(config, directory, pool=pool, resume=resume, progress=progress, scenario=scenario, branch=branch)


def simulation_tasks(plan: RunPlan, resume: bool = False, progress: ProgressFactory | None = None,
                     pool_options: Mapping[str, Any] | None = None,
                     branches: Sequence[BranchPoint | None] | None = None) -> tuple[list[Task], list[Path]]:
    """Executor tasks of the runs of ``plan`` still to make, and the run directories already complete
    (skipped when ``resume``). ``pool_options`` overrides each config's :meth:`~SimulationConfig.pool_options`."""
    tasks, done = [], []
    hashes: dict[tuple[str, str | None, str | None], str] = {}
    for (config, directory), point in zip(plan, branches or [None] * len(plan)):
        source = (config.data, config.event_id, config.data_format)
        if resume and RunStore(directory).exists() and source not in hashes:
            hashes[source] = load_event(*source)[0].content_hash()
        if resume and completed_run(directory, config, point, hashes.get(source)):
            done.append(Path(directory))
            continue
        args = (config, Path(directory), resume, progress, point)
        tasks.append(Task(str(directory), simulate_task, args, dict(pool_options or config.pool_options())))
    return tasks, done


def simulate_many(plan: RunPlan, pool: Any = None, resume: bool = False, progress: ProgressFactory | None = None,
                  on_run: Callable[[Path], None] | None = None, executor: ExecutorConfig | None = None,
                  pool_options: Mapping[str, Any] | None = None) -> list[Path]:
    """Simulate every (config, run directory) of ``plan`` on ``executor`` (default: one after another in
    this process, sharing ``pool``); returns the run directories in plan order. With ``resume``, finished
    runs are skipped and partial ones continue. A failed run is reported and the others finish; then its
    error is raised (:class:`~mfllm.executors.TaskFailures`, naming each, when several failed). ``progress`` draws one bar over the runs
    (and, in this process, one per run over its agents)."""
    executor = executor or ExecutorConfig()
    tasks, done = simulation_tasks(plan, resume, None if executor.parallel else progress, pool_options)
    for run in done:
        if on_run is not None:
            on_run(run)
    run_tasks(tasks, executor, pool=pool, progress=progress is not None, on_result=on_values(on_run))
    return [Path(directory) for _, directory in plan]


def estimate_many(configs: Sequence[SimulationConfig], pool: Any = None, root: str | Path | None = None) -> list[dict[str, Any]]:
    """Dry-run estimates (model calls, prompt tokens per step) of every config, generating nothing. With
    ``root`` (where the runs would go), each also gets its wall-clock time at the speed measured by earlier
    runs there, else a reference figure, else unknown (:func:`~mfllm.simulation.throughput.measured_speed`):
    ``actions_per_second``, ``speed_source`` and ``wall_clock_s``."""
    plans = []
    for config in configs:
        pool = pool or config.model_pool()
        event, _ = load_event(config.data, config.event_id, config.data_format)
        policy = pool.get(config.policy_model)
        plan = estimate(config, event, policy)
        if root is not None:
            speed = measured_speed(root, config.policy_model, backend_of(policy.describe()), config.method)
            plan.update(actions_per_second=speed.actions_per_second, speed_source=speed.source, wall_clock_s=wall_clock(plan["agents"], speed))
        plans.append(plan)
    return plans
