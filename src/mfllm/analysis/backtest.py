"""The backtest: the paper's main table on a set of real events.

Every method (each mean-field variant, state, recent, popular, and sft when an adapter is given) x seed
is simulated on every event, then evaluated (label distributions per window, NLL of the real actions,
information gain), and one report compares them: per-dimension distances with bootstrap CIs over events
and seeds, paired comparisons of each mean-field method with each baseline, and the relative KL
reduction against the best baseline, beside the same by horizon (:mod:`mfllm.evaluation.horizon`: the
thirds of each rollout and hours since the source post). ``whole_events`` replays every reaction after the
warm-up. Optional grids over warm-up, batch size and temperature repeat the whole table per grid point to
show how sensitive the result is. Completed runs and evaluations are reused, so an interrupted backtest
continues where it stopped; :func:`backtest_estimate` says what it will cost before it starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field

from mfllm.data.loaders import events_with_reactions, load_event
from mfllm.data.schema import Event
from mfllm.evaluation.aggregate import headlines, paired_comparisons, realism_headline
from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.dimensions import resolve_dimensions
from mfllm.evaluation.evaluate import RunEvaluation, run_realism
from mfllm.evaluation.horizon import horizon_summary, horizon_table, write_horizon
from mfllm.evaluation.labellers import shipped_models_digest
from mfllm.evaluation.metrics import CorrectedMetrics, DimensionMetrics
from mfllm.evaluation.pipeline import evaluate_runs
from mfllm.evaluation.realism import REALISM_METRICS
from mfllm.evaluation.report import write_report
from mfllm.executors import ExecutorConfig
from mfllm.manifest import package_versions
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import ProgressFactory, backend_of, estimate
from mfllm.simulation.methods import default_method_names, get_method, resolve_method
from mfllm.simulation.store import RunStore
from mfllm.simulation.sweep import simulate_many, sweep_configs, sweep_plan
from mfllm.simulation.throughput import measured_speed, pooled_throughput, wall_clock

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
    policy_adapter: str | None = Field(default=None, description="Policy adapter of every method but sft (`mfllm train policy`); "
                                                                 "the one shipped for an embedded model when omitted (see adapter).")
    adapter: bool = Field(default=True, description=SimulationConfig.model_fields["adapter"].description)
    num_agents: int = Field(default=32, ge=1, description="Agents simulated per run after warm-up (ignored with whole_events).")
    whole_events: bool = Field(default=False, description="Replay every reaction after the warm-up: each event's reaction count minus "
                                                          "the warm-up agents per run.")
    warmup: int = Field(default=16, ge=0, description="Real reactions fed to the context before simulation starts.")
    batch_size: int = Field(default=16, ge=1, description="Agents per step.")
    temperature: float = Field(default=1.0, ge=0.0, description="Sampling temperature of the policy (and of the mean field).")
    length_floor: float | None = Field(default=None, ge=0.0, le=1.0, description=SimulationConfig.model_fields["length_floor"].description)
    length_slack: float = Field(default=SimulationConfig.model_fields["length_slack"].default, ge=1.0,
                                description="An agent may write this many times a drawn real warm-up length "
                                                                  "(SimulationConfig.length_slack).")
    output_vocabulary: Literal["language", "full"] = Field(default="language", description="language: generate from the event "
                                                           "language's tokens where the backend can (faster on llama.cpp); full: "
                                                           "from the whole vocabulary (see SimulationConfig).")
    dimensions: list[str] = Field(default=["sentiment", "emotion", "behaviour"], description="Dimensions to evaluate.")
    window: str = Field(default="step", description="Comparison windows: step (the simulation batch), count:N (N agents each; "
                                                    "larger windows lower the KL noise floor) or time:SECONDS.")
    judge_model: str | None = Field(default=None, description="LLM judge for dimensions the offline labellers do not cover.")
    nll: bool = Field(default=True, description="Score the real actions under the policy given each run's simulated context (NLL; "
                                                "most of an evaluation's time on a CPU).")
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

    def point_name(self, point: dict[str, Any]) -> str:
        """The directory name of a grid point's runs and report (``base`` without grids)."""
        return "base" if len(self.grid()) == 1 else "_".join(f"{k}{v}" for k, v in point.items())

    def run_configs(self, point: dict[str, Any], events: Sequence[str]) -> list[SimulationConfig]:
        """Every (method, event, seed) run of a grid point."""
        base = SimulationConfig(data=self.data, data_format=self.data_format, policy_model=self.policy_model, mean_field_model=None,
                                num_agents=None if self.whole_events else self.num_agents, device=self.device, dtype=self.dtype,
                                output_vocabulary=self.output_vocabulary, length_floor=self.length_floor, length_slack=self.length_slack,
                                adapter=self.adapter, **point)
        configs = []
        for method in self.resolved_methods():
            update: dict[str, Any] = {"method": method}
            update["policy_adapter"] = self.sft_adapter if method == "sft" else self.policy_adapter
            if get_method(method).needs_mean_field_model:
                update["mean_field_model"] = self.mean_field_model
            configs += sweep_configs(SimulationConfig(**{**base.model_dump(), **update}), events, [None], self.seeds)
        return configs


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
                     pool_options: dict[str, Any] | None = None, progress: bool = False) -> tuple[list[RunEvaluation], Any]:
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
    fresh, dimensions = evaluate_runs(todo, config, pool, executor=executor, pool_options=pool_options, progress=progress) if todo \
        else ([], resolve_dimensions(config.dimensions, config.dimensions_file))
    for run, evaluation in zip(todo, fresh):
        (run / EVALUATION_FILE).write_text(json.dumps({"settings": keys[run], "evaluation": evaluation.to_json()}, ensure_ascii=False),
                                           encoding="utf-8")
        cached[run] = evaluation
    return [cached[run] for run in runs], dimensions


def backtest(config: BacktestConfig, pool: Any = None, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Run (or continue) the backtest; returns {"report": index page, "points": per grid point, the
    headline and the paired comparisons}. Results are also in ``<output>/backtest.json``."""
    from mfllm.backends import ModelPool

    executor, pool_options = config.executor_settings(), {"device": config.device, "dtype": config.dtype}
    if not executor.parallel:
        pool = pool or ModelPool(**pool_options)
    events, methods = config.resolved_events(), config.resolved_methods()
    evaluation = EvaluationConfig(dimensions=config.dimensions, window=config.window, judge_model=config.judge_model, nll=config.nll,
                                  information_gain=config.information_gain, device=config.device)
    points: list[dict[str, Any]] = []
    grid = config.grid()
    for point in grid:
        name = config.point_name(point)
        runs = simulate_many(sweep_plan(config.run_configs(point, events), Path(config.output) / "runs" / name), pool=pool, resume=True,
                             progress=progress, executor=executor, pool_options=pool_options)
        evaluations, dimensions = _evaluate_cached(runs, evaluation, pool, executor, pool_options, progress=progress is not None)
        folder = Path(config.output) / "report" / name if len(grid) > 1 else Path(config.output) / "report"
        horizon = horizon_table(evaluations, dimensions, progress=progress is not None)
        write_horizon(horizon, folder)
        paired = paired_comparisons(evaluations)
        report = write_report(evaluations, dimensions, folder, paired=paired, horizon=horizon)
        points.append({"point": point, "name": name, "report": str(report), "headlines": headlines(evaluations),
                       "realism_headline": realism_headline(evaluations), "paired": paired,
                       "throughput": pooled_throughput(RunStore(run).manifest().get("throughput") for run in runs),
                       "horizon": str(folder / "horizon.csv"), "horizon_kl": horizon_summary(horizon)})
    if len(grid) > 1:
        from mfllm.presentation.render import write_page

        index = write_page(Path(config.output) / "report", "sensitivity.html", {"title": "mfllm backtest: sensitivity", "points": [
            {"name": p["name"], "point": json.dumps(p["point"]), "headlines": p["headlines"]} for p in points]})
    else:
        index = Path(points[0]["report"])
    summary = {"report": str(index), "events": events, "methods": methods, "seeds": config.seeds, "points": points}
    (Path(config.output) / "backtest.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    return summary


def backtest_plans(config: BacktestConfig, pool: Any = None) -> list[tuple[dict[str, Any], list[SimulationConfig], dict[str, Any]]]:
    """The backtest's runs (completed ones included) in groups that cost the same, generating nothing: a
    run's cost does not depend on its seed, so each group is one grid point's method on one event, with
    the engine's :func:`~mfllm.simulation.engine.estimate` of one of its runs: (grid point, runs, estimate)."""
    from mfllm.backends import ModelPool

    return _plans(config, pool or ModelPool(device=config.device, dtype=config.dtype), _load_events(config))


def _load_events(config: BacktestConfig) -> dict[str, Event]:
    return {event_id: load_event(config.data, event_id, config.data_format)[0] for event_id in config.resolved_events()}


def _plans(config: BacktestConfig, pool: Any, loaded: dict[str, Event]) -> list[tuple[dict[str, Any], list[SimulationConfig], dict[str, Any]]]:
    plans = []
    for point in config.grid():
        alike: dict[str, list[SimulationConfig]] = {}
        for run in config.run_configs(point, list(loaded)):
            alike.setdefault(run.model_copy(update={"seed": 0}).model_dump_json(), []).append(run)
        for runs in alike.values():
            plans.append((point, runs, estimate(runs[0], loaded[runs[0].event_id], pool.get(runs[0].policy_model))))
    return plans


def backtest_estimate(config: BacktestConfig, pool: Any = None) -> dict[str, Any]:
    """What the whole backtest will cost, before it starts (completed runs included), generating nothing:
    per method, its runs, simulated actions, model calls and prompt tokens (:func:`backtest_plans`), the
    bound on generated tokens, and the wall-clock time at the speed measured by earlier runs under
    ``config.output`` (else a reference figure for the model and backend, else unknown; ``speed_source``
    says which). The total time is unknown when any method's is."""
    from mfllm.backends import ModelPool

    pool = pool or ModelPool(device=config.device, dtype=config.dtype)
    loaded = _load_events(config)
    methods: dict[str, dict[str, Any]] = {}
    for _, runs, plan in _plans(config, pool, loaded):
        method = runs[0].method
        if method not in methods:
            methods[method] = {"method": method, "runs": 0, "simulated_actions": 0, "policy_calls": 0, "mean_field_calls": 0,
                               "policy_prompt_tokens": 0, "mean_field_prompt_tokens": 0, "max_generated_tokens": 0,
                               "backend": backend_of(pool.get(runs[0].policy_model).describe())}
        totals = methods[method]
        totals["runs"] += len(runs)
        totals["simulated_actions"] += len(runs) * plan["agents"]
        totals["max_generated_tokens"] += len(runs) * plan["agents"] * plan["max_new_tokens_per_action"]
        for key in ("policy_calls", "mean_field_calls", "policy_prompt_tokens", "mean_field_prompt_tokens"):
            totals[key] += len(runs) * plan[key]
    for totals in methods.values():
        speed = measured_speed(config.output, config.policy_model, totals["backend"], totals["method"])
        totals.update(actions_per_second=speed.actions_per_second, speed_source=speed.source,
                      wall_clock_s=wall_clock(totals["simulated_actions"], speed))
    times = [m["wall_clock_s"] for m in methods.values()]
    return {"events": {event_id: len(event.reactions) for event_id, event in loaded.items()}, "methods": list(methods.values()), "runs": sum(m["runs"] for m in methods.values()),
            "simulated_actions": sum(m["simulated_actions"] for m in methods.values()), "wall_clock_s": None if None in times else sum(times)}


__all__ = ["BacktestConfig", "backtest", "backtest_estimate", "backtest_plans"]
