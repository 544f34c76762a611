"""The Ray executor: a set of Ray actors, each keeping its model pools, fed one task at a time.

An actor reserves ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs for its life, so a GPU worker loads
its model once and serves many runs (and later commands of the same process). Joins the cluster at ``ray_address`` (``ray start --head`` on one
machine, ``ray start --address HEAD:6379`` on the others), or starts a local Ray when none is given;
a Ray already started in this process (``ray.init``) is used as it is. Needs ``pip install 'mfllm[ray]'``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from mfllm.executors import ExecutorConfig, Task, TaskOutcome, WorkerPools, limit_threads, picklable


def require_ray() -> Any:
    """The ``ray`` module, or a one-line ImportError saying how to install it."""
    from mfllm.backends.hf import require

    return require("ray", "ray")


class RayWorker:
    """One Ray actor: caps its threads, then runs tasks with the model pools it keeps."""

    def __init__(self, threads: int):
        limit_threads(threads)
        self.pools = WorkerPools(threads)

    def run(self, task: Task) -> TaskOutcome:
        outcome = self.pools.run(task)
        outcome.exception = picklable(outcome.exception)
        return outcome


def ray_workers(ray: Any, config: ExecutorConfig, tasks: int) -> int:
    """How many actors to start: ``config.workers``, else as many as the cluster's CPUs and GPUs fit."""
    if config.workers:
        return max(1, min(config.workers, tasks))
    resources = ray.cluster_resources()
    fit = int(resources.get("CPU", 0) // config.cpus_per_task)
    if config.gpus_per_task:
        fit = min(fit, int(resources.get("GPU", 0) // config.gpus_per_task))
    if fit < 1:
        raise ValueError(f"the Ray cluster ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs) fits no worker of "
                         f"{config.cpus_per_task:g} CPUs and {config.gpus_per_task:g} GPUs (--cpus-per-task, --gpus-per-task)")
    return min(fit, tasks)


_ACTORS: dict[tuple[float, float, int], list[Any]] = {}
"""Actors kept while Ray runs in this process (of one shape: CPUs, GPUs and threads), so later commands in
it (the evaluation after a sweep) find their models loaded."""


def release_actors() -> None:
    """Stop the kept actors."""
    ray = require_ray()
    while _ACTORS:
        for actor in _ACTORS.popitem()[1]:
            ray.kill(actor)


def run_on_ray(tasks: Sequence[Task], config: ExecutorConfig, done: Callable[[int, TaskOutcome], None]) -> None:
    """Run ``tasks`` on Ray actors, calling ``done(index, outcome)`` as each ends. A task whose actor dies
    fails (with Ray's reason) and a fresh actor takes the dead one's place. A Ray this call starts stays up,
    with its actors, until this process ends (or :func:`mfllm.executors.release_workers`)."""
    ray = require_ray()
    if not ray.is_initialized():
        _ACTORS.clear()
        ray.init(address=config.ray_address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    actor_class = ray.remote(RayWorker).options(num_cpus=config.cpus_per_task, num_gpus=config.gpus_per_task)
    key = (config.cpus_per_task, config.gpus_per_task, config.worker_threads)
    if key not in _ACTORS:  # actors of other shapes hold resources the new ones may need
        release_actors()
    kept = _ACTORS.setdefault(key, [])
    wanted = ray_workers(ray, config, len(tasks))
    kept += [actor_class.remote(config.worker_threads) for _ in range(wanted - len(kept))]
    idle, queue = list(kept[:wanted]), list(enumerate(tasks))
    running: dict[Any, tuple[int, Any]] = {}
    try:
        while queue or running:
            while idle and queue:
                actor = idle.pop()
                index, task = queue.pop(0)
                running[actor.run.remote(task)] = (index, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                index, actor = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    outcome = TaskOutcome(tasks[index].name, error=f"Ray worker died: {' '.join(str(exc).split())[:300]}")
                    kept.remove(actor)
                    actor = actor_class.remote(config.worker_threads)
                    kept.append(actor)
                except ray.exceptions.RayTaskError as exc:  # the task could not even start (e.g. its arguments did not unpickle)
                    outcome = TaskOutcome(tasks[index].name, error=f"{type(exc.cause).__name__}: {exc.cause}")
                idle.append(actor)
                done(index, outcome)
    except KeyboardInterrupt:
        for _, actor in running.values():
            kept.remove(actor)
            ray.kill(actor)
        raise
