"""Forecasting past the data: ensembles of runs from a real prefix, and their scores against what really happened.

A forecast starts at an origin: the first ``W`` reactions of a real event are replayed (warm-up), then agents act
past them. Who acts is drawn (uniformly, with replacement) from a persona population: the distinct reactors of the
prefix (never a later one) or a persona file. When they act comes from an arrival model fitted on the prefix's
timestamps (:mod:`mfllm.simulation.arrivals`): the horizon is a number of agents (their times drawn from the
model) or a duration (as many agents as the model draws in it). What they do (text and action kind) comes from the
policy, as in replay. Each seed of the ensemble draws its own agents, times and model calls; every run is a normal
run directory (manifest, journal, resume) under ``<output>/runs/<event>/origin<W>/seed<s>``.

The ensemble is summarised in time windows after the origin (``window``; default: an eighth of the horizon):
per dimension, each label's share per window (pooled over seeds, with the ``band`` quantile range of the seeds'
shares) and the volume (agents per window, with its band); as CSV and an HTML report.

Scored forecasts (``score``) start at origins inside real events (fractions of their reactions) and are compared
with the real continuation in the windows the data fully covers, next to two naive forecasts: the last window's
label distribution carried forward, and the prefix's overall distribution (for volume: the last window's count,
and the prefix's mean rate). Per dimension and window: KL(real || forecast) and W1 (total variation for nominal
dimensions) of smoothed distributions; per forecast: DTW between the real and forecast share series; the share
of (window, label) cells, and of windows' volumes, inside the ensemble's band (coverage); volume's absolute error.
Skill against a naive forecast is ``1 - mean(forecast score) / mean(naive score)`` over forecasts (positive:
better than the naive one), with a percentile bootstrap CI that resamples events (forecasts from one event are
resampled together; with a single event, its origins are resampled).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from mfllm.configuration import YamlConfig
from mfllm.data.loaders import events_with_reactions, get_reader, load_event
from mfllm.data.population import load_personas, prefix_population
from mfllm.data.schema import Event, UserProfile
from mfllm.evaluation.dimensions import Dimension, resolve_dimensions
from mfllm.evaluation.labellers import LabelItem, Labeller
from mfllm.evaluation.metrics import DEFAULT_ALPHA, counts, dtw_distance, kl_divergence, smoothed, wasserstein_or_tv
from mfllm.executors import ExecutorConfig, Task, run_tasks
from mfllm.manifest import derive_seed
from mfllm.redaction import redacted
from mfllm.simulation.arrivals import fit_arrivals
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import ProgressFactory
from mfllm.simulation.interventions import _seconds as duration_seconds
from mfllm.simulation.methods import get_method
from mfllm.simulation.scenario import Forecast
from mfllm.simulation.store import RunStore
from mfllm.simulation.sweep import simulate_task

SUMMARY_FILE = "forecast.json"
NAIVE = ("last_window", "prefix")
"""The naive forecasts every forecast is scored next to."""


class HorizonSettings(YamlConfig):
    """What a run past a prefix needs: the horizon, who acts and when, and the models (shared by forecast and plan)."""

    data: str = Field(description="Dataset directory or file.")
    data_format: str | None = Field(default=None, description="Reader name; detected from the path when omitted.")
    horizon_agents: int | None = Field(default=None, ge=1, description="Horizon as a number of agents after the origin (their times "
                                                                       "drawn from the arrival model).")
    horizon_time: str | None = Field(default=None, description="Horizon as a duration after the origin (6h, 90m, 2d, seconds): as many "
                                                               "agents act as the arrival model draws in it.")
    arrival: Literal["hawkes", "decay"] = Field(default="hawkes", description="Arrival model fitted on the prefix's timestamps: "
                                                                              "hawkes (self-exciting) or decay (exponentially decaying rate).")
    personas: str | None = Field(default=None, description="Persona file (JSONL or a JSON/YAML list of user profiles); default: the "
                                                           "distinct reactors before the origin.")
    max_agents: int = Field(default=2000, ge=1, description="Most agents one run simulates (a duration horizon is cut there, and the "
                                                            "report says so).")
    method: str = Field(default="mf", description="What agents see of the population (`mfllm methods`).")
    policy_model: str = Field(default="embedded:gemma-3-270m", description="Policy model spec (embedded:NAME, hf:PATH, openai:MODEL@URL, fake).")
    mean_field_model: str | None = Field(default=None, description="Mean-field model spec; the policy model when omitted.")
    adapter: bool = Field(default=True, description=SimulationConfig.model_fields["adapter"].description)
    batch_size: int = Field(default=16, ge=1, description="Agents per step.")
    temperature: float = Field(default=1.0, ge=0.0, description="Sampling temperature.")
    max_action_tokens: int = Field(default=48, ge=1, description="Upper bound on an action (tokens).")
    judge_model: str | None = Field(default=None, description="LLM judge for dimensions the offline labellers do not cover.")
    bootstrap: int = Field(default=2000, ge=100, description="Bootstrap resamples of each CI.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="Confidence level of the intervals.")
    device: str = Field(default="auto", description="auto, cpu, cuda, ...")
    dtype: str = Field(default="auto", description="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16.")
    engine: Literal["auto", "llamacpp", "transformers"] = Field(default="auto", description="What runs embedded: models.")

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        get_method(method)
        return method

    @field_validator("horizon_time")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and not duration_seconds(value):
            raise ValueError(f"{value!r} is not a positive duration (e.g. 6h, 90m, 2d, or seconds)")
        return value

    @model_validator(mode="after")
    def _one_horizon(self) -> HorizonSettings:
        if (self.horizon_agents is None) == (self.horizon_time is None):
            raise ValueError("give the horizon as horizon_agents or horizon_time (exactly one)")
        return self

    @property
    def horizon_seconds(self) -> float | None:
        return duration_seconds(self.horizon_time) if self.horizon_time is not None else None

    def simulation_config(self, event_id: str, warmup: int, seed: int, interventions: Sequence[str] = ()) -> SimulationConfig:
        """The run config of one member of the ensemble (its agents come from :func:`forecast_scenario`)."""
        mean_field = self.mean_field_model if get_method(self.method).needs_mean_field_model else None
        return SimulationConfig(data=self.data, data_format=self.data_format, event_id=event_id, method=self.method,
                                policy_model=self.policy_model, mean_field_model=mean_field, warmup=warmup, batch_size=self.batch_size,
                                seed=seed, temperature=self.temperature, max_action_tokens=self.max_action_tokens,
                                interventions=list(interventions), device=self.device, dtype=self.dtype, engine=self.engine,
                                adapter=self.adapter)

    def model_pool(self) -> Any:
        from mfllm.backends import ModelPool

        return ModelPool(self.device, self.dtype, engine=self.engine)


class ForecastConfig(HorizonSettings, ExecutorConfig):
    """A forecast ensemble past a real prefix, or (``score``) scored forecasts from origins inside real events."""

    events: list[str] | None = Field(default=None, description="Event ids (default: the first event; with score, the first max_events "
                                                               "with at least min_reactions reactions).")
    max_events: int = Field(default=4, ge=1, description="With score: events taken when none are listed.")
    min_reactions: int = Field(default=64, ge=4, description="With score: events with fewer reactions are skipped when none are listed.")
    warmup: int | None = Field(default=None, ge=2, description="Forecast origin: after the first W real reactions (default: all of them, "
                                                               "a forecast past the end of the data).")
    origins: list[float] = Field(default=[0.25, 0.5, 0.75], description="With score: rolling origins, as fractions of each event's reactions.")
    window: str | None = Field(default=None, description="Time window of the trajectories (duration; default: an eighth of the horizon).")
    seeds: list[int] = Field(default=[0, 1, 2, 3, 4], min_length=1, description="Run seeds of the ensemble, one run each.")
    dimensions: list[str] = Field(default=["sentiment", "emotion", "behaviour"], description="Dimensions of the label-share trajectories.")
    band: float = Field(default=0.9, gt=0.0, lt=1.0, description="Central quantile range of the ensemble shown as its band (and scored "
                                                                 "for coverage).")
    score: bool = Field(default=False, description="Forecast from origins inside real events and score against the real continuation.")
    output: str = Field(default="forecast", description="Root of the runs, the CSV files and the report.")

    @field_validator("origins")
    @classmethod
    def _fractions(cls, origins: list[float]) -> list[float]:
        if not origins or any(not 0 < f < 1 for f in origins):
            raise ValueError("origins are fractions of an event's reactions, each strictly between 0 and 1")
        return origins

    @field_validator("window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None and not duration_seconds(value):
            raise ValueError(f"{value!r} is not a positive duration (e.g. 1h, 30m, or seconds)")
        return value

    @model_validator(mode="after")
    def _scored_in_time(self) -> ForecastConfig:
        if self.score and self.horizon_time is None:
            raise ValueError("a scored forecast needs its horizon in time (horizon_time), to compare with the real continuation")
        if self.score and self.warmup is not None:
            raise ValueError("a scored forecast starts at its origins (fractions of each event); drop warmup")
        if self.window is not None and self.horizon_seconds is not None:
            ratio = self.horizon_seconds / float(duration_seconds(self.window) or 1.0)
            if abs(ratio - round(ratio)) > 1e-9:
                raise ValueError(f"the window ({self.window}) must divide the horizon ({self.horizon_time}) into whole windows")
        return self

    def resolved_events(self) -> list[str]:
        if self.events:
            return self.events
        reader = get_reader(self.data, self.data_format)
        listed = reader.list_events(Path(self.data))
        if not listed:
            raise ValueError(f"{self.data}: no event found")
        if not self.score:
            return listed[:1]
        return events_with_reactions(self.data, self.data_format, self.min_reactions, self.max_events)

    def origins_of(self, event: Event) -> list[int]:
        """The warm-up lengths (forecast origins) on ``event``."""
        n = len(event.reactions)
        if not self.score:
            warmup = n if self.warmup is None else self.warmup
            if warmup > n:
                raise ValueError(f"event {event.event_id}: warm-up {warmup} is past its {n} reactions")
            return [warmup]
        return sorted({min(max(2, round(f * n)), n - 1) for f in self.origins})


# ---------------------------------------------------------------- the runs


def _reference_time(event: Event) -> float:
    """Time zero of the arrival model: the source post, or the first reaction if one is stamped before it."""
    first = event.reactions[0].timestamp if event.reactions else event.source.timestamp
    return min(event.source.timestamp, first)


def forecast_scenario(event: Event, settings: HorizonSettings, warmup: int, seed: int,
                      personas: Sequence[UserProfile] | None = None) -> Forecast:
    """The agents of one ensemble member: the arrival model fitted on the first ``warmup`` reactions, simulated from the
    origin under a seed derived from ``seed``; each arrival a persona drawn from ``personas`` (default: the prefix's reactors)."""
    if warmup < 2:
        raise ValueError(f"event {event.event_id}: a forecast needs at least 2 reactions before its origin to fit arrivals")
    reference = _reference_time(event)
    prefix = event.reactions[:warmup]
    origin = prefix[-1].timestamp - reference
    model = fit_arrivals(settings.arrival, [r.timestamp - reference for r in prefix], origin)
    rng = np.random.default_rng(derive_seed(seed, "forecast", event.event_id, warmup))
    times = model.simulate(origin, rng, horizon=settings.horizon_seconds, count=settings.horizon_agents, limit=settings.max_agents)
    population = list(personas) if personas is not None else prefix_population(event, warmup)
    users = [population[i] for i in rng.integers(0, len(population), len(times))]
    details = {"origin_time": prefix[-1].timestamp, "horizon_agents": settings.horizon_agents, "horizon_seconds": settings.horizon_seconds,
               "arrivals": model.describe(), "population": "personas file" if personas is not None else "reactors before the origin",
               "population_size": len(population), "capped": settings.horizon_seconds is not None and len(times) >= settings.max_agents}
    return Forecast(event, warmup, settings.batch_size, users, [reference + t for t in times], details)


@dataclass
class ForecastUnit:
    """One forecast: an event, its origin (warm-up length) and the ensemble's runs by seed."""

    event: Event
    warmup: int
    runs: dict[int, Path]
    scenarios: dict[int, Forecast]

    @property
    def origin_time(self) -> float:
        return self.event.reactions[self.warmup - 1].timestamp


def run_path(output: str | Path, event_id: str, warmup: int, seed: int) -> Path:
    return Path(output) / "runs" / str(event_id) / f"origin{warmup}" / f"seed{seed}"


def _check_scenario(directory: Path, scenario: Forecast) -> None:
    """A resumed run must have drawn the same agents (same arrival model, population and horizon)."""
    recorded = RunStore(directory).manifest().get("scenario")
    if recorded != json.loads(json.dumps(scenario.describe())):
        raise ValueError(f"{directory}: the run's forecast scenario differs from this one (arrival model, personas or horizon changed); "
                         "cannot resume (use another --output)")


def fixed_scenario(scenario: Forecast, event: Event) -> Forecast:
    """The scenario a forecast run was drawn with, whatever the event it is asked for (a picklable factory
    for executor workers, through :func:`functools.partial`)."""
    return scenario


def run_forecasts(config: ForecastConfig, pool: Any = None, resume: bool = False, progress: ProgressFactory | None = None) -> list[ForecastUnit]:
    """Simulate (or continue) every run of every forecast: one executor task per run (sequential by default,
    sharing one model pool; ``--executor process|ray`` spreads the ensembles over workers)."""
    personas = load_personas(config.personas) if config.personas else None
    executor = config.executor_settings()
    units, tasks = [], []
    for event_id in config.resolved_events():
        event, _ = load_event(config.data, event_id, config.data_format)
        for warmup in config.origins_of(event):
            unit = ForecastUnit(event, warmup, {}, {})
            for seed in config.seeds:
                scenario = forecast_scenario(event, config, warmup, seed, personas)
                directory = run_path(config.output, event.event_id, warmup, seed)
                if RunStore(directory).exists():
                    if not resume:  # before any run starts, not once per run from the workers
                        raise FileExistsError(f"{directory} already holds a run; pass resume=True (--resume) to continue it")
                    _check_scenario(directory, scenario)
                run_config = config.simulation_config(event.event_id, warmup, seed)
                label = f"origin{warmup} seed{seed}"
                bar = (lambda total, text, label=label: progress(total, f"{text} {label}")) if progress and not executor.parallel else None
                tasks.append(Task(str(directory), simulate_task, (run_config, directory, resume, bar, None, partial(fixed_scenario, scenario)),
                                  run_config.pool_options()))
                unit.runs[seed], unit.scenarios[seed] = directory, scenario
            units.append(unit)
    run_tasks(tasks, executor, pool=pool if executor.parallel else (pool or config.model_pool()), progress=progress is not None)
    return units


# ---------------------------------------------------------------- the ensembles


@dataclass
class Ensemble:
    """A forecast's ensemble in time windows after its origin, with the real data around it where there is some."""

    event_id: str
    warmup: int
    origin_time: float
    window: float
    windows: int
    seeds: list[int]
    agents: dict[int, int]
    capped: list[int]
    volume: np.ndarray
    """(seeds x windows) agents acting in each window."""
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    """dimension -> (seeds x windows x labels) labelled actions."""
    labels: dict[str, list[str]] = field(default_factory=dict)
    observed: int = 0
    """Windows the real data fully covers (0: a forecast past the end of the data)."""
    real_volume: np.ndarray | None = None
    real_counts: dict[str, np.ndarray] = field(default_factory=dict)
    prefix_counts: dict[str, np.ndarray] = field(default_factory=dict)
    last_counts: dict[str, np.ndarray] = field(default_factory=dict)
    last_volume: float = math.nan
    rate_volume: float = math.nan

    def shares(self, dimension: str) -> np.ndarray:
        """(seeds x windows x labels) shares of each seed's labelled actions (NaN where a window has none)."""
        c = self.counts[dimension]
        totals = c.sum(axis=2, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, c / np.where(totals > 0, totals, 1), np.nan)

    def pooled(self, dimension: str) -> np.ndarray:
        """(windows x labels) shares of the ensemble's actions pooled over seeds (NaN where none)."""
        c = self.counts[dimension].sum(axis=0)
        totals = c.sum(axis=1, keepdims=True)
        return np.where(totals > 0, c / np.where(totals > 0, totals, 1), np.nan)


def _quantiles(values: np.ndarray, band: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, median, high) of the central ``band`` range along ``axis``, ignoring NaN (NaN where all are NaN)."""
    tail = (1 - band) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice gives NaN, as wanted
        low, median, high = (np.nanquantile(values, q, axis=axis) for q in (tail, 0.5, 1 - tail))
    return low, median, high


def _label(labeller: Labeller, items: list[LabelItem], dimension: Dimension) -> list[str | None]:
    return labeller.label(items, dimension).labels if items else []


def build_ensemble(unit: ForecastUnit, labeller: Labeller, dimensions: Sequence[Dimension], window: float | None,
                   horizon: float | None, batch_size: int) -> Ensemble:
    """Label every run of ``unit`` and count actions per window; with real reactions after the origin, count those too."""
    event, origin = unit.event, unit.origin_time
    seeds = sorted(unit.runs)
    rows = {seed: RunStore(unit.runs[seed]).actions() for seed in seeds}
    latest = max((float(r["timestamp"]) for runs in rows.values() for r in runs), default=origin) - origin
    span = horizon if horizon is not None else max(latest, 1.0)
    width = window or span / 8
    windows = max(1, math.ceil(span / width))

    def window_of(timestamp: float) -> int | None:
        """Window k holds (origin + k * width, origin + (k + 1) * width]; a reaction stamped at the origin's second is in the first."""
        k = max(0, math.ceil((timestamp - origin) / width) - 1)
        return k if k < windows else None

    ensemble = Ensemble(event.event_id, unit.warmup, origin, width, windows, seeds, {s: len(rows[s]) for s in seeds},
                        [s for s in seeds if unit.scenarios[s].details.get("capped")], np.zeros((len(seeds), windows)))
    for i, seed in enumerate(seeds):
        for r in rows[seed]:
            if (k := window_of(float(r["timestamp"]))) is not None:
                ensemble.volume[i, k] += 1
        cut = window_of(float(rows[seed][-1]["timestamp"])) if seed in ensemble.capped and rows[seed] else None
        if cut is not None:  # cut at max_agents: no volume forecast from its last agent's window on
            ensemble.volume[i, cut:] = np.nan
    prefix = event.reactions[:unit.warmup]
    continuation = event.reactions[unit.warmup:]
    last_real = event.reactions[-1].timestamp
    ensemble.observed = min(windows, int((last_real - origin) // width)) if continuation else 0
    in_last_window = [r for r in prefix if r.timestamp > origin - width]
    ensemble.last_volume = float(len(in_last_window))
    start = _reference_time(event)
    ensemble.rate_volume = len(prefix) / (origin - start) * width if origin > start else math.nan
    last = in_last_window if len(in_last_window) >= batch_size else prefix[-batch_size:]
    observed = [(r, window_of(r.timestamp)) for r in continuation]
    observed = [(r, k) for r, k in observed if k is not None and k < ensemble.observed]
    if ensemble.observed:
        ensemble.real_volume = np.zeros(ensemble.observed)
        for _, k in observed:
            ensemble.real_volume[k] += 1
    topic, language = event.source.text, event.language
    sim = [(i, k, r) for i, seed in enumerate(seeds) for r in rows[seed]
           if "failure" not in r and "moderated" not in r and (k := window_of(float(r["timestamp"]))) is not None]
    for dimension in dimensions:
        real = [*prefix, *(r for r, _ in observed)]
        labels = _label(labeller, [LabelItem(r["sim_text"], topic, language, r["sim_kind"]) for _, _, r in sim]
                        + [LabelItem(r.text, topic, language, r.kind) for r in real], dimension)
        sim_labels, real_labels = labels[:len(sim)], labels[len(sim):]
        if not any(label is not None for label in labels):  # no labeller covers this dimension here
            continue
        table = np.zeros((len(seeds), windows, len(dimension.labels)))
        for (i, k, _), label in zip(sim, sim_labels):
            if label is not None:
                table[i, k, dimension.index(label)] += 1
        ensemble.counts[dimension.name], ensemble.labels[dimension.name] = table, list(dimension.labels)
        prefix_labels = real_labels[:len(prefix)]
        ensemble.prefix_counts[dimension.name] = counts(prefix_labels, dimension)
        ensemble.last_counts[dimension.name] = counts(prefix_labels[len(prefix) - len(last):], dimension)
        if ensemble.observed:
            real_table = np.zeros((ensemble.observed, len(dimension.labels)))
            for (_, k), label in zip(observed, real_labels[len(prefix):]):
                if label is not None:
                    real_table[k, dimension.index(label)] += 1
            ensemble.real_counts[dimension.name] = real_table
    return ensemble


# ---------------------------------------------------------------- scores


@dataclass
class UnitScore:
    """The scores of one forecast (event, origin): per dimension and metric, the forecast's and each naive forecast's."""

    event_id: str
    warmup: int
    values: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    """(dimension or 'volume', metric) -> {forecast, last_window, prefix}."""
    per_window: list[dict[str, Any]] = field(default_factory=list)
    coverage: dict[str, tuple[int, int]] = field(default_factory=dict)
    """dimension or 'volume' -> (cells inside the band, cells)."""


def _share_distances(real: np.ndarray, forecast: np.ndarray, ordinal: bool, alpha: float) -> tuple[float, float]:
    p, q = smoothed(real, alpha), smoothed(forecast, alpha)
    return kl_divergence(p, q), wasserstein_or_tv(p, q, ordinal)


def score_ensemble(ensemble: Ensemble, dimensions: Sequence[Dimension], band: float, alpha: float = DEFAULT_ALPHA) -> UnitScore | None:
    """Scores of a forecast against the real continuation in the windows the data fully covers (None: no such window)."""
    if not ensemble.observed or ensemble.real_volume is None:
        return None
    score = UnitScore(ensemble.event_id, ensemble.warmup)
    by_name = {d.name: d for d in dimensions}
    for name, table in ensemble.counts.items():
        dimension = by_name[name]
        real_table = ensemble.real_counts[name]
        pooled = table.sum(axis=0)
        naive = {"last_window": ensemble.last_counts[name], "prefix": ensemble.prefix_counts[name]}
        kls: dict[str, list[float]] = {k: [] for k in ("forecast", *NAIVE)}
        w1s: dict[str, list[float]] = {k: [] for k in ("forecast", *NAIVE)}
        real_series, forecast_series = [], []
        inside, cells = 0, 0
        low, _, high = _quantiles(ensemble.shares(name)[:, :ensemble.observed], band)
        for k in range(ensemble.observed):
            if not real_table[k].sum():
                continue
            row = {"event": ensemble.event_id, "origin": ensemble.warmup, "dimension": name, "window": k}
            for source, predicted in (("forecast", pooled[k]), *naive.items()):
                kl, w1 = _share_distances(real_table[k], predicted, dimension.ordinal, alpha)
                kls[source].append(kl)
                w1s[source].append(w1)
                row[f"kl_{source}"], row[f"w1_{source}"] = kl, w1
            score.per_window.append(row)
            real_shares = real_table[k] / real_table[k].sum()
            real_series.append(real_shares)
            if pooled[k].sum():
                forecast_series.append(pooled[k] / pooled[k].sum())
            finite = np.isfinite(low[k]) & np.isfinite(high[k])
            inside += int(((real_shares >= low[k] - 1e-12) & (real_shares <= high[k] + 1e-12) & finite).sum())
            cells += int(finite.sum())
        if not real_series:
            continue
        score.values[(name, "kl")] = {source: float(np.mean(v)) for source, v in kls.items()}
        score.values[(name, "w1")] = {source: float(np.mean(v)) for source, v in w1s.items()}
        real_array = np.array(real_series)
        dtw = {"forecast": dtw_distance(real_array, np.array(forecast_series)) if forecast_series else math.nan}
        for source, counted in naive.items():
            if counted.sum():
                dtw[source] = dtw_distance(real_array, np.tile(counted / counted.sum(), (len(real_series), 1)))
            else:
                dtw[source] = math.nan
        score.values[(name, "dtw")] = dtw
        score.coverage[name] = (inside, cells)
    low, median, high = _quantiles(ensemble.volume[:, :ensemble.observed], band)
    forecast_windows = np.flatnonzero(np.isfinite(median))  # windows some uncut seed forecasts
    if not len(forecast_windows):
        return score
    real_volume = ensemble.real_volume[forecast_windows]
    errors = {"forecast": np.abs(real_volume - median[forecast_windows]), "last_window": np.abs(real_volume - ensemble.last_volume),
              "prefix": np.abs(real_volume - ensemble.rate_volume)}
    score.values[("volume", "mae")] = {source: float(np.mean(e)) for source, e in errors.items()}
    for j, k in enumerate(forecast_windows):
        score.per_window.append({"event": ensemble.event_id, "origin": ensemble.warmup, "dimension": "volume", "window": int(k),
                                 "real": float(real_volume[j]), **{f"ae_{source}": float(e[j]) for source, e in errors.items()}})
    inside = (real_volume >= low[forecast_windows]) & (real_volume <= high[forecast_windows])
    score.coverage["volume"] = (int(inside.sum()), len(forecast_windows))
    return score


def skill_interval(forecast: Sequence[float], reference: Sequence[float], clusters: Sequence[str], resamples: int, confidence: float,
                   seed: int = 0) -> tuple[float, float, float]:
    """Skill ``1 - sum(forecast) / sum(reference)`` over forecasts, with a percentile bootstrap CI resampling ``clusters``
    (all forecasts of a cluster together); NaN bounds with a single forecast."""
    f, r = np.asarray(forecast, dtype=float), np.asarray(reference, dtype=float)
    keep = np.isfinite(f) & np.isfinite(r)
    f, r, groups = f[keep], r[keep], [c for c, k in zip(clusters, keep) if k]
    if not len(f) or r.sum() <= 0:
        return math.nan, math.nan, math.nan
    point = 1 - f.sum() / r.sum()
    names = sorted(set(groups))
    if len(names) < 2:  # one cluster: resample its forecasts
        names, groups = [str(i) for i in range(len(f))], [str(i) for i in range(len(f))]
    if len(names) < 2:
        return float(point), math.nan, math.nan
    index = {name: i for i, name in enumerate(names)}
    f_sums, r_sums = np.zeros(len(names)), np.zeros(len(names))
    for value, ref, group in zip(f, r, groups):
        f_sums[index[group]] += value
        r_sums[index[group]] += ref
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(names), (resamples, len(names)))
    denominators = r_sums[drawn].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = 1 - f_sums[drawn].sum(axis=1) / denominators
    stats = stats[np.isfinite(stats)]
    tail = (1 - confidence) / 2
    return float(point), float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def skill_table(scores: Sequence[UnitScore], config: ForecastConfig) -> list[dict[str, Any]]:
    """Per (dimension or volume, metric): mean scores, skill against each naive forecast with its CI, band coverage."""
    rows = []
    keys = list(dict.fromkeys(key for s in scores for key in s.values))
    for dimension, metric in keys:
        units = [s for s in scores if (dimension, metric) in s.values]
        clusters = [s.event_id for s in units]
        values = {source: [s.values[(dimension, metric)][source] for s in units] for source in ("forecast", *NAIVE)}
        inside = sum(s.coverage.get(dimension, (0, 0))[0] for s in units)
        cells = sum(s.coverage.get(dimension, (0, 0))[1] for s in units)
        row: dict[str, Any] = {"dimension": dimension, "metric": metric, "forecasts": len(units), "events": len(set(clusters)),
                               **{f"mean_{source}": float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for source, v in values.items()},
                               "coverage": inside / cells if cells else math.nan, "coverage_cells": cells, "band": config.band}
        for naive in NAIVE:
            skill, low, high = skill_interval(values["forecast"], values[naive], clusters, config.bootstrap, config.confidence)
            row.update({f"skill_vs_{naive}": skill, f"skill_vs_{naive}_low": low, f"skill_vs_{naive}_high": high})
        rows.append(row)
    return rows


# ---------------------------------------------------------------- output


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["empty"]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def trajectory_rows(ensemble: Ensemble, band: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(share rows, volume rows) of an ensemble: per window the pooled share / mean volume, the median and the band, and the real value."""
    base = {"event": ensemble.event_id, "origin": ensemble.warmup, "origin_time": ensemble.origin_time}

    def window(k: int) -> dict[str, Any]:
        return {"window": k, "start_s": k * ensemble.window, "end_s": (k + 1) * ensemble.window}

    shares = []
    for name, labels in ensemble.labels.items():
        pooled, (low, median, high) = ensemble.pooled(name), _quantiles(ensemble.shares(name), band)
        real = ensemble.real_counts.get(name)
        for k in range(ensemble.windows):
            for j, label in enumerate(labels):
                observed = real is not None and k < len(real) and real[k].sum() > 0
                shares.append({**base, "dimension": name, "label": label, **window(k), "share": pooled[k, j], "median": median[k, j],
                               "band_low": low[k, j], "band_high": high[k, j],
                               "real": real[k, j] / real[k].sum() if observed else None})
    low, median, high = _quantiles(ensemble.volume, band)
    volume = [{**base, **window(k), "mean": _nanmean(ensemble.volume[:, k]), "median": median[k], "band_low": low[k], "band_high": high[k],
               "real": float(ensemble.real_volume[k]) if ensemble.real_volume is not None and k < len(ensemble.real_volume) else None}
              for k in range(ensemble.windows)]
    return shares, volume


def _nanmean(values: np.ndarray) -> float:
    """The mean of the finite values (NaN when none)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def _hours(ensemble: Ensemble) -> np.ndarray:
    return (np.arange(ensemble.windows) + 0.5) * ensemble.window / 3600


def _real_shares(ensemble: Ensemble, dimension: str) -> np.ndarray | None:
    real = ensemble.real_counts.get(dimension)
    if real is None:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(real.sum(1, keepdims=True) > 0, real / np.maximum(real.sum(1, keepdims=True), 1), np.nan)


def ensemble_charts(ensemble: Ensemble, band: float) -> dict[str, Any]:
    """The charts of one ensemble: its volume (median and band, and the real volume) and, per dimension and label, the
    pooled share with the seeds' band and the real share, per window in hours after the origin."""
    from mfllm.presentation.charts import line_chart, series

    x = _hours(ensemble)
    n = len(ensemble.seeds)
    note = f"band: central {band:.0%} of the {n} seeds"
    low, median, high = _quantiles(ensemble.volume, band)
    lines = [series(f"forecast median (n={n} seeds)", median, low=low, high=high)]
    if ensemble.real_volume is not None:
        lines.append(series("real", ensemble.real_volume, width=2.5))
    volume = line_chart("Volume", "hours after the origin", x, lines, y_label=f"agents per {ensemble.window / 3600:.3g} h", percent=False,
                        unit=" h", note=note)
    shares = {}
    for name, labels in ensemble.labels.items():
        pooled, (low, _, high) = ensemble.pooled(name), _quantiles(ensemble.shares(name), band)
        real = _real_shares(ensemble, name)
        shares[name] = [line_chart(f"{name}: {label}", "hours after the origin", x,
                                   [series(f"forecast (n={n} seeds)", pooled[:, j], low=low[:, j], high=high[:, j])]
                                   + ([series("real", real[:, j], width=2.5)] if real is not None else []), unit=" h", note=note)
                        for j, label in enumerate(labels)]
    return {"volume": volume, "shares": shares}


def page_context(config: ForecastConfig, ensembles: Sequence[Ensemble], skills: list[dict[str, Any]],
                 horizon_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the forecast page (``forecast.html``) shows: the settings, the skill table with its CIs (scored forecasts), the
    scores by horizon, and each ensemble's charts."""
    from mfllm.presentation.charts import interval_plot

    level = f"{config.confidence:.0%}"
    skill_plot = interval_plot(f"Skill against the naive forecasts ({level} CI; positive: closer to what happened)",
                               [{"label": f"{r['dimension']} {r['metric']} vs {naive.replace('_', ' ')}", "mean": r[f"skill_vs_{naive}"],
                                 "low": r[f"skill_vs_{naive}_low"], "high": r[f"skill_vs_{naive}_high"], "group": naive}
                                for r in skills for naive in NAIVE], "skill") if skills else None
    return {"title": "mfllm forecast", "score": config.score, "level": level, "method": config.method, "policy_model": config.policy_model,
            "arrival": config.arrival, "horizon": config.horizon_time or f"{config.horizon_agents} agents", "seeds": config.seeds,
            "personas": config.personas or "the reactors before each origin", "band": config.band, "skills": skills,
            "skill_plot": skill_plot, "horizon_rows": horizon_rows,
            "ensembles": [{"event": e.event_id, "origin": e.warmup, "agents": e.agents, "window_hours": e.window / 3600,
                           "observed": e.observed, "capped": e.capped, **ensemble_charts(e, config.band)} for e in ensembles]}


def _horizon_rows(scores: Sequence[UnitScore]) -> list[dict[str, Any]]:
    """Mean KL (per dimension) and volume error of each source per window index after the origin."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for s in scores:
        for row in s.per_window:
            grouped.setdefault((row["dimension"], row["window"]), []).append(row)
    rows = []
    for (dimension, k), members in sorted(grouped.items(), key=lambda item: (item[0][0] == "volume", item[0])):
        def mean(key: str) -> float:
            values = [m[key] for m in members if key in m]
            return float(np.mean(values)) if values else math.nan

        rows.append({"dimension": dimension, "window": k, "forecasts": len(members),
                     **{f"kl_{source}": mean(f"kl_{source}") for source in ("forecast", *NAIVE)},
                     **{f"ae_{source}": mean(f"ae_{source}") for source in ("forecast", *NAIVE)}})
    return rows


@dataclass
class ForecastResult:
    report: Path
    ensembles: list[Ensemble]
    scores: list[UnitScore]
    skills: list[dict[str, Any]]
    files: dict[str, Path]


def _settings_digest(config: ForecastConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def forecast(config: ForecastConfig, pool: Any = None, resume: bool = False, progress: ProgressFactory | None = None,
             labeller: Labeller | None = None) -> ForecastResult:
    """Run (or continue) the forecasts of ``config``, summarise their ensembles (and score them with ``config.score``), and
    write ``shares.csv``, ``volume.csv`` (and ``scores.csv``, ``skill.csv``), ``forecast.json`` and ``report/index.html``."""
    from mfllm.evaluation.config import EvaluationConfig
    from mfllm.evaluation.pipeline import build_labeller
    from mfllm.presentation.render import write_page

    out = Path(config.output)
    units = run_forecasts(config, pool, resume, progress)
    evaluation = EvaluationConfig(dimensions=config.dimensions, judge_model=config.judge_model, device=config.device)
    labeller = labeller or build_labeller(evaluation, pool)
    dimensions = resolve_dimensions(config.dimensions)
    window = duration_seconds(config.window) if config.window else None
    ensembles = [build_ensemble(u, labeller, dimensions, window, config.horizon_seconds, config.batch_size) for u in units]
    share_rows, volume_rows = [], []
    for e in ensembles:
        shares, volume = trajectory_rows(e, config.band)
        share_rows += shares
        volume_rows += volume
    files = {"shares.csv": out / "shares.csv", "volume.csv": out / "volume.csv"}
    _write_csv(files["shares.csv"], share_rows)
    _write_csv(files["volume.csv"], volume_rows)
    scores: list[UnitScore] = []
    skills: list[dict[str, Any]] = []
    horizon_rows: list[dict[str, Any]] = []
    if config.score:
        scores = [s for s in (score_ensemble(e, dimensions, config.band) for e in ensembles) if s is not None]
        if not scores:
            raise ValueError("no forecast has a real continuation fully inside a window to score against (shorten the window or the "
                             "horizon, or choose earlier origins)")
        skills = skill_table(scores, config)
        horizon_rows = _horizon_rows(scores)
        files["scores.csv"], files["skill.csv"] = out / "scores.csv", out / "skill.csv"
        _write_csv(files["scores.csv"], [row for s in scores for row in s.per_window])
        _write_csv(files["skill.csv"], skills)
    report = write_page(out / "report", "forecast.html", page_context(config, ensembles, skills, horizon_rows))
    summary = {"settings": redacted(config.model_dump()), "settings_digest": _settings_digest(config),
               "forecasts": [{"event": e.event_id, "origin": e.warmup, "origin_time": e.origin_time, "window_s": e.window,
                              "windows": e.windows, "observed_windows": e.observed, "agents": e.agents, "capped_seeds": e.capped,
                              "runs": [str(p) for p in u.runs.values()]} for e, u in zip(ensembles, units)],
               "skill": skills, "report": str(report)}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, ensure_ascii=False, default=float), encoding="utf-8")
    return ForecastResult(report, ensembles, scores, skills, files)


__all__ = ["Ensemble", "ForecastConfig", "ForecastResult", "ForecastUnit", "HorizonSettings", "UnitScore", "build_ensemble", "forecast",
           "forecast_scenario", "run_forecasts", "score_ensemble", "skill_interval", "skill_table"]
