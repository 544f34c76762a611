"""Simulate then evaluate: the unit of every comparison mfllm reports."""

from __future__ import annotations

from typing import Any, Sequence

from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.dimensions import Dimension
from mfllm.evaluation.evaluate import RunEvaluation
from mfllm.evaluation.pipeline import evaluate_runs
from mfllm.simulation.engine import ProgressFactory
from mfllm.simulation.sweep import RunPlan, simulate_many


def simulate_and_evaluate(plan: RunPlan, evaluation: EvaluationConfig, pool: Any = None, resume: bool = False,
                          progress: ProgressFactory | None = None,
                          labels: Sequence[str] | None = None) -> tuple[list[RunEvaluation], list[Dimension]]:
    """Simulate every (config, run directory) of ``plan``, then evaluate each run; one model pool serves
    both. ``labels``, one per run, replace the method name in the evaluations (e.g. ablation variants
    that share a method)."""
    if labels is not None and len(labels) != len(plan):
        raise ValueError(f"{len(labels)} labels for {len(plan)} runs")
    pool = pool or plan[0][0].model_pool()
    runs = simulate_many(plan, pool=pool, resume=resume, progress=progress)
    evaluations, dimensions = evaluate_runs(runs, evaluation, pool)
    for evaluation_of_run, label in zip(evaluations, labels or ()):
        evaluation_of_run.method = label
    return evaluations, dimensions
