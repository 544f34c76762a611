"""Simulate then evaluate: the unit of every comparison mfllm reports."""

from __future__ import annotations

from typing import Any, Sequence

from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.dimensions import Dimension
from mfllm.evaluation.evaluate import RunEvaluation
from mfllm.evaluation.pipeline import evaluate_runs
from mfllm.executors import ExecutorConfig
from mfllm.simulation.engine import ProgressFactory
from mfllm.simulation.sweep import RunPlan, simulate_many


def simulate_and_evaluate(plan: RunPlan, evaluation: EvaluationConfig, pool: Any = None, resume: bool = False,
                          progress: ProgressFactory | None = None, labels: Sequence[str] | None = None,
                          executor: ExecutorConfig | None = None) -> tuple[list[RunEvaluation], list[Dimension]]:
    """Simulate every (config, run directory) of ``plan``, then evaluate each run, on ``executor`` (default:
    in this process, one model pool serving both; each parallel worker keeps its own). ``labels``, one per
    run, replace the method name in the evaluations (e.g. ablation variants that share a method)."""
    if labels is not None and len(labels) != len(plan):
        raise ValueError(f"{len(labels)} labels for {len(plan)} runs")
    executor = executor or ExecutorConfig()
    options = plan[0][0].pool_options()
    if not executor.parallel:
        pool = pool or plan[0][0].model_pool()
    runs = simulate_many(plan, pool=pool, resume=resume, progress=progress, executor=executor, pool_options=options)
    evaluations, dimensions = evaluate_runs(runs, evaluation, pool, executor=executor, pool_options=options)
    for evaluation_of_run, label in zip(evaluations, labels or ()):
        evaluation_of_run.method = label
    return evaluations, dimensions
