"""Where many independent tasks (one per run) run: in this process, in a local process pool, or on Ray.

Every many-run command (``simulate`` over events x methods x seeds, ``backtest``, ``branch``, ``evaluate``)
turns its work into :class:`Task` objects and hands them to :func:`run_tasks` with an
:class:`ExecutorConfig`. A task is a module-level function called as ``function(pool, *args)`` with a
model pool; each worker (the process itself, a pool process or a Ray actor) keeps one
:class:`~mfllm.backends.ModelPool` per set of pool options for its whole life, so models load once per
worker, not once per task. A task that raises is reported with its name (its run) and error while the
others finish; then its exception is raised (:class:`TaskFailures`, naming each, when several failed).

Workers are kept for the life of the process (:func:`release_workers` stops them), so the evaluation
after a sweep finds its models loaded. A process-pool worker exits within a second of its parent dying
(even by ``kill -9``), so no worker is left holding its models. To distribute your own runs (e.g. forecast ensembles or plan
candidates), give each run a directory and let the sweep skip finished ones::

    from mfllm.executors import ExecutorConfig
    from mfllm.simulation.sweep import simulate_many
    runs = simulate_many([(config, directory), ...], resume=True, executor=ExecutorConfig(executor="ray"))

or, for runs with a scenario or a branch point, build the tasks yourself::

    from mfllm.executors import Task, run_tasks
    from mfllm.simulation.sweep import simulate_task
    tasks = [Task(str(directory), simulate_task, (config, directory, resume, None, None, scenario), config.pool_options())
             for config, directory, scenario in runs]
    outcomes = run_tasks(tasks, executor, progress=True)   # outcome.value: the run directory

``function`` and its ``args`` must pickle (a module-level function or ``functools.partial`` of one,
configs, paths): a ``scenario`` factory must be one too, not a lambda.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from pydantic import Field

from mfllm.configuration import YamlConfig
from mfllm.redaction import redact_secrets

if TYPE_CHECKING:
    from mfllm.backends import ModelPool

logger = logging.getLogger(__name__)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Environment variables that cap the math libraries' threads in a worker (read when they load)."""
PARENT_CHECK_S = 0.5
"""How often a process-pool worker checks that its parent is still alive."""


class ExecutorConfig(YamlConfig):
    """Where the runs of a many-run command execute, and what each task may use."""

    executor: Literal["sequential", "process", "ray"] = Field(default="sequential", description="sequential (in this process), "
                                                                                              "process (a local process pool) or ray.")
    workers: int | None = Field(default=None, ge=1, description="Parallel workers (default: process: available cores / cpus_per_task; "
                                                                "ray: what the cluster's CPUs and GPUs fit).")
    ray_address: str | None = Field(default=None, description="Ray cluster to join (e.g. 10.0.0.1:6379 or auto); "
                                                              "a local Ray when omitted.")
    cpus_per_task: float = Field(default=1.0, gt=0, description="CPUs each worker reserves (Ray) or is given (threads).")
    gpus_per_task: float = Field(default=0.0, ge=0, description="GPUs each Ray worker reserves (fractions share a GPU).")
    threads_per_worker: int | None = Field(default=None, ge=1, description="Math-library and llama.cpp threads per parallel worker "
                                                                           "(default: cpus_per_task, at least 1).")

    def executor_settings(self) -> ExecutorConfig:
        """Only the executor fields (for configs that mix them in)."""
        return ExecutorConfig(**{name: getattr(self, name) for name in ExecutorConfig.model_fields})

    @property
    def parallel(self) -> bool:
        return self.executor != "sequential"

    @property
    def worker_threads(self) -> int:
        return self.threads_per_worker or max(1, int(self.cpus_per_task))


@dataclass(frozen=True)
class Task:
    """One unit of work: ``function(pool, *args)`` with the worker's model pool built from ``pool_options``
    (ModelPool keyword arguments). ``name`` (usually the run directory) identifies it in reports. It runs
    in ``directory`` (the submitting process's working directory), so relative paths (run directories,
    data, intervention files) mean the same in every worker: on several machines, submit from a directory
    every node mounts at the same path."""

    name: str
    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    pool_options: Mapping[str, Any] = field(default_factory=dict)
    directory: str = field(default_factory=os.getcwd)


@dataclass
class TaskOutcome:
    """What became of a task: its ``value``, or its ``error`` (one line) and the exception; ``worker`` is host:pid."""

    name: str
    value: Any = None
    error: str | None = None
    exception: BaseException | None = None
    worker: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


class TaskFailures(RuntimeError):
    """Some tasks failed (each named with its error); the others finished."""

    def __init__(self, failed: Sequence[TaskOutcome], total: int):
        self.failed, self.total = list(failed), total
        details = "; ".join(f"{outcome.name}: {outcome.error}" for outcome in self.failed)
        super().__init__(f"{len(self.failed)} of {total} tasks failed: {details}")


def _pool_key(options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items()))


def build_pool(options: Mapping[str, Any]) -> ModelPool:
    from mfllm.backends import ModelPool

    return ModelPool(**options)


class WorkerPools:
    """The model pools of one worker, one per set of pool options, kept between tasks. ``threads`` (a
    parallel worker's share of the cores) fills in llama.cpp's thread count when the options leave it open."""

    def __init__(self, threads: int | None = None, pool: ModelPool | None = None):
        self.threads, self.given = threads, pool
        self.pools: dict[tuple[tuple[str, Any], ...], ModelPool] = {}

    def get(self, options: Mapping[str, Any]) -> ModelPool:
        if self.given is not None:
            return self.given
        if self.threads and options.get("threads") is None:
            options = {**options, "threads": self.threads}
        key = _pool_key(options)
        if key not in self.pools:
            self.pools[key] = build_pool(options)
        return self.pools[key]

    def run(self, task: Task) -> TaskOutcome:
        """Run ``task``. Any exception it raises is the task's failure: reported with the task's name, not
        raised here, so one failed run does not stop the others."""
        worker = f"{socket.gethostname()}:{os.getpid()}"
        try:
            if os.getcwd() != task.directory:
                os.chdir(task.directory)
            value = task.function(self.get(task.pool_options), *task.args)
        except Exception as exc:  # noqa: BLE001 - the task boundary: every failure is reported by run_tasks
            logger.debug("task %s failed:\n%s", task.name, traceback.format_exc())
            return TaskOutcome(task.name, error=f"{type(exc).__name__}: {' '.join(str(exc).split())}", exception=exc, worker=worker)
        return TaskOutcome(task.name, value=value, worker=worker)


def limit_threads(threads: int) -> None:
    """Cap the math libraries' threads of this (fresh) worker process, before they load."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


# ---------------------------------------------------------------- process pool workers

_PROCESS_POOLS: WorkerPools | None = None


def _start_process_worker(threads: int, parent: int) -> None:
    global _PROCESS_POOLS
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: an idle worker leaves it to the parent
    exit_with_parent(parent)
    limit_threads(threads)
    _PROCESS_POOLS = WorkerPools(threads)


def exit_with_parent(parent: int, interval_s: float = PARENT_CHECK_S) -> None:
    """End this process as soon as ``parent`` (the process that started it) is gone: a daemon thread
    checks every ``interval_s`` whether this process was handed to another parent. A thread, not
    ``PR_SET_PDEATHSIG``: that signal fires when the starting *thread* ends, which a live parent may do."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)  # the parent is gone: nobody will read our results, and our models hold memory

    threading.Thread(target=watch, name="mfllm-parent-watch", daemon=True).start()


def _run_in_process_worker(task: Task) -> TaskOutcome:
    if _PROCESS_POOLS is None:
        raise RuntimeError("process worker not started")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops the task's run, which records it
    try:
        outcome = _PROCESS_POOLS.run(task)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    outcome.exception = picklable(outcome.exception)
    return outcome


def picklable(exc: BaseException | None) -> BaseException | None:
    """The exception itself when it survives pickling back to the caller; else None (its text is kept)."""
    import pickle

    if exc is None:
        return None
    try:
        pickle.loads(pickle.dumps(exc))
    except (pickle.PicklingError, TypeError, AttributeError):
        return None
    return exc


# ---------------------------------------------------------------- running


class _Tracker:
    """Collects outcomes in task order, reports failures as they happen and drives the one progress bar."""

    def __init__(self, tasks: Sequence[Task], progress: bool, on_result: Callable[[TaskOutcome], None] | None, description: str = "runs"):
        from tqdm.auto import tqdm

        self.outcomes: list[TaskOutcome | None] = [None] * len(tasks)
        self.bar = tqdm(total=len(tasks), desc=description, unit="run", file=sys.stderr) if progress and len(tasks) > 1 else None
        self.on_result = on_result

    def done(self, index: int, outcome: TaskOutcome) -> None:
        self.outcomes[index] = outcome
        if not outcome.ok and len(self.outcomes) > 1:  # a lone task's failure is the command's own error, raised as it is
            message = redact_secrets(f"mfllm: {outcome.name} failed: {outcome.error}")
            if self.bar is not None:
                self.bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr)
        if self.on_result is not None:
            self.on_result(outcome)
        if self.bar is not None:
            self.bar.update(1)

    def finish(self) -> list[TaskOutcome]:
        if self.bar is not None:
            self.bar.close()
        return [outcome for outcome in self.outcomes if outcome is not None]


def run_tasks(tasks: Sequence[Task], config: ExecutorConfig | None = None, pool: ModelPool | None = None,
              progress: bool = False, on_result: Callable[[TaskOutcome], None] | None = None,
              raise_failures: bool = True, description: str = "runs") -> list[TaskOutcome]:
    """Run every task on the configured executor; returns their outcomes in task order.

    ``pool`` (sequential only) serves every task instead of pools built from their options. ``progress``
    draws one bar over all tasks (tqdm, on stderr, labelled ``description``); ``on_result`` sees each outcome as it arrives. Failed tasks are reported
    as they fail; with ``raise_failures`` the only failed task's exception, or :class:`TaskFailures` naming
    every failed task, is raised once all tasks have ended.
    """
    config = config or ExecutorConfig()
    if pool is not None and config.parallel:
        raise ValueError(f"a model pool lives in one process; the {config.executor} executor builds one per worker "
                         "(pass pool options in the tasks instead)")
    tracker = _Tracker(tasks, progress, on_result, description)
    try:
        if config.executor == "sequential":
            pools = WorkerPools(pool=pool)
            for index, task in enumerate(tasks):
                tracker.done(index, pools.run(task))
        elif config.executor == "process" and tasks:
            _run_on_processes(tasks, config, tracker)
        elif tasks:
            from mfllm.ray_executor import run_on_ray

            run_on_ray(tasks, config, tracker.done)
    finally:
        outcomes = tracker.finish()
    if raise_failures:
        check_outcomes(outcomes)
    return outcomes


def on_values(callback: Callable[[Any], None] | None) -> Callable[[TaskOutcome], None] | None:
    """An ``on_result`` for :func:`run_tasks` that hands ``callback`` the value of each task that succeeded."""
    if callback is None:
        return None
    return lambda outcome: callback(outcome.value) if outcome.ok else None


def check_outcomes(outcomes: Sequence[TaskOutcome]) -> None:
    """Raise for failed tasks: the exception of the only failed task (as running it alone would), else
    :class:`TaskFailures` naming each failed task."""
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if not failed:
        return
    if len(failed) == 1 and failed[0].exception is not None:
        raise failed[0].exception
    raise TaskFailures(failed, len(outcomes))


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_PROCESS_EXECUTORS: dict[tuple[int, int], ProcessPoolExecutor] = {}
"""The process pool kept for the life of this process (by worker count and threads), so later commands in
it (the evaluation after a sweep, a second round) find their workers' models loaded."""


def _process_executor(config: ExecutorConfig) -> tuple[tuple[int, int], ProcessPoolExecutor]:
    """Spawned processes (no fork: loaded models and their threads do not survive one)."""
    key = (config.workers or max(1, int(available_cores() // config.cpus_per_task)), config.worker_threads)
    if key not in _PROCESS_EXECUTORS:
        release_workers()  # one set of workers at a time: two would hold two copies of the models
        _PROCESS_EXECUTORS[key] = ProcessPoolExecutor(key[0], mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_start_process_worker, initargs=(key[1], os.getpid()))
    return key, _PROCESS_EXECUTORS[key]


def release_workers() -> None:
    """Stop the workers this process keeps (process pools, Ray actors), freeing their models."""
    while _PROCESS_EXECUTORS:
        _PROCESS_EXECUTORS.popitem()[1].shutdown(wait=True, cancel_futures=True)
    if "mfllm.ray_executor" in sys.modules:
        sys.modules["mfllm.ray_executor"].release_actors()


def _run_on_processes(tasks: Sequence[Task], config: ExecutorConfig, tracker: _Tracker) -> None:
    """Hand the tasks to the kept process pool, each worker keeping its model pools; a pool whose worker
    died fails its unfinished tasks and is replaced next time."""
    key, executor = _process_executor(config)
    futures: dict[Future[TaskOutcome], int] = {executor.submit(_run_in_process_worker, task): i for i, task in enumerate(tasks)}
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                index = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool as exc:  # a worker died (killed, out of memory): its tasks fail
                    _PROCESS_EXECUTORS.pop(key, None)
                    outcome = TaskOutcome(tasks[index].name, error=f"worker process died: {exc}")
                tracker.done(index, outcome)
    except KeyboardInterrupt:
        _PROCESS_EXECUTORS.pop(key, None)
        executor.shutdown(wait=False, cancel_futures=True)
        raise
