"""The backtest: the paper's main table on a set of real events.

Every method (each mean-field variant, state, recent, popular, and sft when an adapter is given) x seed
is simulated on every event, then evaluated (label distributions per window, NLL of the real actions,
information gain), and one report compares them: per-dimension distances with bootstrap CIs over events
and seeds, paired comparisons of each mean-field method with each baseline, and the relative KL
reduction against the best baseline. Optional grids over warm-up, batch size and temperature repeat the
whole table per grid point to show how sensitive the result is. Completed runs and evaluations are
reused, so an interrupted backtest continues where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import Field

from mfllm.data.loaders import events_with_reactions
from mfllm.evaluation.aggregate import headlines, paired_comparisons, realism_headline
from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.dimensions import resolve_dimensions
from mfllm.evaluation.evaluate import RunEvaluation, run_realism
from mfllm.evaluation.labellers import shipped_models_digest
from mfllm.evaluation.metrics import CorrectedMetrics, DimensionMetrics
from mfllm.evaluation.pipeline import evaluate_runs
from mfllm.evaluation.realism import REALISM_METRICS
from mfllm.evaluation.report import write_report
from mfllm.executors import ExecutorConfig
from mfllm.manifest import package_versions
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import ProgressFactory
from mfllm.simulation.methods import default_method_names, get_method, resolve_method
from mfllm.simulation.store import RunStore
from mfllm.simulation.sweep import simulate_many, sweep_configs, sweep_plan

EVALUATION_FILE = "evaluation.json"


class BacktestConfig(ExecutorConfig):
    """Events, methods, seeds, models and schedule of a backtest, and the executor its runs go to."""

    data: str = Field(description="Dataset directory or file.")
    data_format: str | None = Field(default=None, description="Reader name; detected from the path when omitted.")
    events: list[str] | None = Field(default=None, description="Event ids; else the first max_events events with enough reactions.")
    max_events: int = Field(default=8, ge=1, description="Events taken when none are listed.")
    min_reactions: int = Field(default=64, ge=2, description="Events with fewer reactions are skipped when none are listed.")
    methods: list[str] | None = Field(default=None, description="Methods to compare (default: every registered method; sft only "
                                                                "with sft_adapter).")
    seeds: list[int] = Field(default=[0, 1, 2], description="One run per seed.")
    policy_model: str = Field(default="embedded:gemma-3-270m", description="Policy model spec (also the mean-field model).")
    mean_field_model: str | None = Field(default=None, description="Mean-field model spec; the policy model when omitted.")
    sft_adapter: str | None = Field(default=None, description="Policy adapter of the sft baseline (`mfllm train sft`).")
    num_agents: int = Field(default=32, ge=1, description="Agents simulated per run after warm-up.")
    warmup: int = Field(default=16, ge=0, description="Real reactions fed to the context before simulation starts.")
    batch_size: int = Field(default=16, ge=1, description="Agents per step.")
    temperature: float = Field(default=0.8, ge=0.0, description="Sampling temperature of the policy (and of the mean field).")
    dimensions: list[str] = Field(default=["sentiment", "emotion", "behaviour"], description="Dimensions to evaluate.")
    window: str = Field(default="step", description="Comparison windows: step (the simulation batch), count:N (N agents each; "
                                                    "larger windows lower the KL noise floor) or time:SECONDS.")
    judge_model: str | None = Field(default=None, description="LLM judge for dimensions the offline labellers do not cover.")
    information_gain: bool = Field(default=True, description="Measure each run's information gain (loads the mean-field model).")
    grid_warmup: list[int] | None = Field(default=None, description="Sensitivity: repeat the backtest for each of these warm-ups.")
    grid_batch_size: list[int] | None = Field(default=None, description="Sensitivity: ... for each of these batch sizes.")
    grid_temperature: list[float] | None = Field(default=None, description="Sensitivity: ... for each of these temperatures.")
    device: str = Field(default="auto", description="auto, cpu, cuda, ...")
    dtype: str = Field(default="auto", description="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16.")
    output: str = Field(default="backtest", description="Root of the runs, evaluations and the report.")

    def resolved_methods(self) -> list[str]:
        """The methods compared, aliases resolved (``mf`` is the default mean field), each once."""
        return list(dict.fromkeys(resolve_method(m) for m in self.methods)) if self.methods else \
            [m for m in default_method_names() if m != "sft" or self.sft_adapter]

    def resolved_events(self) -> list[str]:
        if self.events:
            return self.events
        return events_with_reactions(self.data, self.data_format, max(self.min_reactions, self.warmup + 1), self.max_events)

    def grid(self) -> list[dict[str, Any]]:
        """The grid points (one, the base schedule, without grids)."""
        axes = {"warmup": self.grid_warmup or [self.warmup], "batch_size": self.grid_batch_size or [self.batch_size],
                "temperature": self.grid_temperature or [self.temperature]}
        return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _evaluation_from_json(data: dict[str, Any]) -> RunEvaluation:
    data = dict(data)
    data["dimensions"] = {k: DimensionMetrics(**v) for k, v in data["dimensions"].items()}
    data["corrected"] = {k: CorrectedMetrics(**v) for k, v in data.get("corrected", {}).items()}
    return RunEvaluation(**data)


def _with_realism(run: Path, evaluation: RunEvaluation) -> RunEvaluation:
    """A saved evaluation with the run's realism measured again (a fraction of a second, no model), so a
    reused evaluation follows the current realism definitions."""
    evaluation.realism = run_realism(RunStore(run))
    return evaluation


def _evaluate_cached(runs: list[Path], config: EvaluationConfig, pool: Any, executor: ExecutorConfig | None = None,
                     pool_options: dict[str, Any] | None = None) -> tuple[list[RunEvaluation], Any]:
    """Evaluate runs, reusing each run's saved evaluation when it was made with the same settings, by the
    same mfllm version and labeller models, of the same data, with the same realism measures; any other is
    evaluated again (and replaced)."""
    settings = [config.model_dump_json(), package_versions().get("mfllm"), shipped_models_digest(), list(REALISM_METRICS)]
    keys = {run: hashlib.sha256(json.dumps([*settings, RunStore(run).manifest().get("data_hash")]).encode()).hexdigest()[:16]
            for run in runs}
    cached: dict[Path, RunEvaluation] = {}
    for run in runs:
        path = run / EVALUATION_FILE
        if path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("settings") == keys[run]:
                cached[run] = _with_realism(run, _evaluation_from_json(saved["evaluation"]))
    todo = [run for run in runs if run not in cached]
    fresh, dimensions = evaluate_runs(todo, config, pool, executor=executor, pool_options=pool_options) if todo \
        else ([], resolve_dimensions(config.dimensions, config.dimensions_file))
    for run, evaluation in zip(todo, fresh):
        (run / EVALUATION_FILE).write_text(json.dumps({"settings": keys[run], "evaluation": evaluation.to_json()}, ensure_ascii=False),
                                           encoding="utf-8")
        cached[run] = evaluation
    return [cached[run] for run in runs], dimensions


def run_configs(config: BacktestConfig, events: list[str], methods: list[str]) -> list[tuple[str, list[SimulationConfig]]]:
    """The run configs of every grid point (its name first): each method x event x seed."""
    grid = config.grid()
    points = []
    for point in grid:
        name = "base" if len(grid) == 1 else "_".join(f"{k}{v}" for k, v in point.items())
        base = SimulationConfig(data=config.data, data_format=config.data_format, policy_model=config.policy_model,
                                mean_field_model=None, num_agents=config.num_agents, device=config.device, dtype=config.dtype, **point)
        configs = []
        for method in methods:
            update: dict[str, Any] = {"method": method}
            if method == "sft":
                update["policy_adapter"] = config.sft_adapter
            if get_method(method).needs_mean_field_model:
                update["mean_field_model"] = config.mean_field_model
            configs += sweep_configs(SimulationConfig(**{**base.model_dump(), **update}), events, [None], config.seeds)
        points.append((name, configs))
    return points


def backtest(config: BacktestConfig, pool: Any = None, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Run (or continue) the backtest; returns {"report": index page, "points": per grid point, the
    headline and the paired comparisons}. Results are also in ``<output>/backtest.json``."""
    from mfllm.backends import ModelPool

    executor, pool_options = config.executor_settings(), {"device": config.device, "dtype": config.dtype}
    if not executor.parallel:
        pool = pool or ModelPool(**pool_options)
    events, methods = config.resolved_events(), config.resolved_methods()
    evaluation = EvaluationConfig(dimensions=config.dimensions, window=config.window, judge_model=config.judge_model, nll=True,
                                  information_gain=config.information_gain, device=config.device)
    points: list[dict[str, Any]] = []
    grid = config.grid()
    for point, (name, configs) in zip(grid, run_configs(config, events, methods)):
        runs = simulate_many(sweep_plan(configs, Path(config.output) / "runs" / name), pool=pool, resume=True, progress=progress,
                             executor=executor, pool_options=pool_options)
        evaluations, dimensions = _evaluate_cached(runs, evaluation, pool, executor, pool_options)
        report = write_report(evaluations, dimensions, Path(config.output) / "report" / name if len(grid) > 1 else Path(config.output) / "report",
                              paired=paired_comparisons(evaluations))
        points.append({"point": point, "name": name, "report": str(report), "headlines": headlines(evaluations),
                       "realism_headline": realism_headline(evaluations), "paired": paired_comparisons(evaluations)})
    if len(grid) > 1:
        from mfllm.presentation.render import write_page

        index = write_page(Path(config.output) / "report", "sensitivity.html", {"title": "mfllm backtest: sensitivity", "points": [
            {"name": p["name"], "point": json.dumps(p["point"]), "headlines": p["headlines"]} for p in points]})
    else:
        index = Path(points[0]["report"])
    summary = {"report": str(index), "events": events, "methods": methods, "seeds": config.seeds, "points": points}
    (Path(config.output) / "backtest.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    return summary


__all__ = ["BacktestConfig", "backtest", "run_configs"]
