"""Evaluate many runs with one labeller chain and one model pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.dimensions import Dimension, resolve_dimensions
from mfllm.evaluation.evaluate import RunEvaluation, evaluate_run
from mfllm.evaluation.labellers import Labeller, LabellerChain, LLMJudgeLabeller, default_labellers
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import build_models
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


def evaluate_runs(runs: Sequence[str | Path], config: EvaluationConfig, pool: Any = None,
                  on_run: Callable[[RunEvaluation], None] | None = None) -> tuple[list[RunEvaluation], list[Dimension]]:
    """Label and compare every run (and score its real actions when ``config.nll``), sharing one pool."""
    from mfllm.backends import ModelPool

    dimensions = resolve_dimensions(config.dimensions, config.dimensions_file)
    pool = pool or ModelPool(config.device)
    labeller = build_labeller(config, pool)
    evaluations = []
    for run in runs:
        policy, mean_field_model = None, None
        if config.nll or config.information_gain:
            run_config = SimulationConfig(**RunStore(run).manifest()["config"])
            policy, mean_field_model = build_models(run_config, pool)
        evaluation = evaluate_run(run, labeller, dimensions, config.window, config.alpha, policy if config.nll else None,
                                  (policy, mean_field_model) if policy is not None and config.information_gain else None)
        evaluations.append(evaluation)
        if on_run is not None:
            on_run(evaluation)
    return evaluations, dimensions
