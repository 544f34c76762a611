"""Evaluate many runs, one executor task per run; each worker keeps one labeller chain and model pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from weakref import WeakKeyDictionary

from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.dimensions import Dimension, resolve_dimensions
from mfllm.evaluation.evaluate import RunEvaluation, evaluate_run
from mfllm.evaluation.labellers import Labeller, LabellerChain, LLMJudgeLabeller, default_labellers
from mfllm.executors import ExecutorConfig, Task, check_outcomes, on_values, run_tasks
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import adapter_mismatches, build_models
from mfllm.simulation.store import MANIFEST, RunStore


def build_labeller(config: EvaluationConfig, pool: Any = None) -> Labeller:
    """kind (behaviour) -> trained offline labellers -> lexicons -> optional LLM judge for the rest (first match wins)."""
    from mfllm.backends import ModelPool

    chain: list[Labeller] = [] if config.judge_only else list(default_labellers())
    if config.judge_model:
        pool = pool or ModelPool(config.device)
        cache = Path(config.labeller_cache) / "judge.jsonl" if config.labeller_cache else None
        chain.append(LLMJudgeLabeller(pool.get(config.judge_model), mode=config.judge_mode, cache_path=cache))
    return LabellerChain(chain)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories among ``paths`` and below them (a run directory holds a manifest)."""
    runs = [p.parent for path in paths for p in sorted(Path(path).rglob(MANIFEST))]
    if not runs:
        raise FileNotFoundError(f"no run directory ({MANIFEST}) in {', '.join(map(str, paths))}")
    return runs


_LABELLERS: WeakKeyDictionary[Any, dict[str, Labeller]] = WeakKeyDictionary()
"""Each worker's labellers, per model pool and evaluation config: built once, their label caches kept between runs."""


def evaluate_task(pool: Any, run: Path, config: EvaluationConfig) -> RunEvaluation:
    """Label and compare one run (and score it when ``config.nll``/``information_gain``): an executor task."""
    dimensions = resolve_dimensions(config.dimensions, config.dimensions_file)
    labellers = _LABELLERS.setdefault(pool, {})
    key = config.model_dump_json()
    if key not in labellers:
        labellers[key] = build_labeller(config, pool)
    policy, mean_field_model = None, None
    if config.nll or config.information_gain:
        manifest = RunStore(run).manifest()
        run_config = SimulationConfig.recorded(manifest["config"])
        if reasons := adapter_mismatches(manifest, run_config):
            raise ValueError(f"{run}: cannot score the run with the models it ran on: {'; '.join(reasons)}")
        policy, mean_field_model = build_models(run_config, pool)
    return evaluate_run(run, labellers[key], dimensions, config.window, config.alpha, policy if config.nll else None,
                        (policy, mean_field_model) if policy is not None and config.information_gain else None)


def realism_only(runs: Sequence[Path]) -> list[RunEvaluation]:
    """Every run's evaluation with its realism alone: no labels, no model (under a second a run)."""
    return [evaluate_run(run, LabellerChain([]), []) for run in runs]


def labelling_rounds(runs: Sequence[Path], config: EvaluationConfig, executor: ExecutorConfig) -> list[list[int]]:
    """Indices of ``runs`` in the order they are evaluated. Runs of one event share its real reactions, so
    with a judge on parallel workers one run per event goes first and fills the shared label cache
    (``labeller_cache``); the event's other runs then find those labels instead of asking the judge again."""
    if not (config.judge_model and executor.parallel):
        return [list(range(len(runs)))]
    first: dict[str, int] = {}
    for index, run in enumerate(runs):
        first.setdefault(RunStore(run).manifest()["event"]["event_id"], index)
    leading = sorted(first.values())
    return [leading, [i for i in range(len(runs)) if i not in set(leading)]]


def evaluate_runs(runs: Sequence[str | Path], config: EvaluationConfig, pool: Any = None,
                  on_run: Callable[[RunEvaluation], None] | None = None, executor: ExecutorConfig | None = None,
                  pool_options: Mapping[str, Any] | None = None,
                  progress: bool = False) -> tuple[list[RunEvaluation], list[Dimension]]:
    """Label and compare every run (and score its real actions when ``config.nll``), one task per run on
    ``executor`` (default: in this process, sharing ``pool``); each worker keeps its models and labellers."""
    dimensions = resolve_dimensions(config.dimensions, config.dimensions_file)
    executor = executor or ExecutorConfig()
    runs = [Path(run) for run in runs]
    options = dict(pool_options or {"device": config.device})
    tasks = [Task(str(run), evaluate_task, (run, config), options) for run in runs]
    outcomes: list[Any] = [None] * len(runs)
    for indices in labelling_rounds(runs, config, executor):
        done = run_tasks([tasks[i] for i in indices], executor, pool=pool, progress=progress, raise_failures=False,
                         on_result=on_values(on_run), description="evaluation")
        for i, outcome in zip(indices, done):
            outcomes[i] = outcome
    check_outcomes(outcomes)
    return [outcome.value for outcome in outcomes], dimensions
