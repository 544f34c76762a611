"""Aggregate run evaluations over seeds and events: means with bootstrap confidence intervals,
the method comparison table and the headline KL reduction of each mean field against the best baseline."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from mfllm.evaluation.evaluate import RunEvaluation
from mfllm.evaluation.realism import REALISM_METRICS
from mfllm.simulation.methods import baseline_names, mean_field_names, resolve_method

METRICS = ("kl", "js", "wasserstein", "dtw", "pooled_kl", "micro_f1", "macro_f1")
GAIN_GROUPS = ("comment", "repost", "all")


def _event_values(evaluations: Sequence[RunEvaluation], value) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    by_event: dict[str, list[float]] = {}
    for evaluation in evaluations:
        v = value(evaluation)
        if v is not None and not math.isnan(v):
            by_event.setdefault(evaluation.event_id, []).append(float(v))
    return by_event


def bootstrap_mean(by_event: dict[str, list[float]], resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean over events of the per-event mean over seeds, with a two-level percentile bootstrap CI:
    events are resampled with replacement, then seeds within each drawn event (vectorised over resamples)."""
    events = [np.asarray(v, dtype=float) for v in by_event.values()]
    if not events:
        return (math.nan, math.nan, math.nan)
    point = float(np.mean([v.mean() for v in events]))
    sizes = np.array([len(v) for v in events])
    table = np.zeros((len(events), sizes.max()))
    for i, values in enumerate(events):
        table[i, : len(values)] = values
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(events), (resamples, len(events)))  # events of each resample
    picks = np.floor(rng.random((resamples, len(events), sizes.max())) * sizes[drawn][..., None]).astype(int)  # seeds within them
    valid = np.arange(sizes.max()) < sizes[drawn][..., None]
    event_means = np.where(valid, table[drawn[..., None], picks], 0.0).sum(axis=2) / sizes[drawn]
    stats = event_means.mean(axis=1)
    tail = (1 - level) / 2
    return point, float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def mean_kl(evaluation: RunEvaluation, exclude: Sequence[str] = ()) -> float | None:
    """KL averaged over the run's evaluated dimensions (less those in ``exclude``)."""
    values = [m.kl for name, m in evaluation.dimensions.items() if name not in exclude and not math.isnan(m.kl)]
    return float(np.mean(values)) if values else None


def circular_for(evaluations: Sequence[RunEvaluation], method: str) -> list[str]:
    """The dimensions circular for ``method`` in any of its runs: left out of its comparisons for every method."""
    return sorted({d for e in evaluations if e.method == method for d in e.circular})


def method_table(evaluations: Sequence[RunEvaluation], resamples: int = 2000) -> list[dict[str, Any]]:
    """One row per (method, dimension, metric): mean, 95% CI, events and runs behind it."""
    rows = []
    methods = sorted({e.method for e in evaluations}, key=lambda m: (m not in mean_field_names(), m))
    dimensions = sorted({d for e in evaluations for d in e.dimensions})
    for method in methods:
        runs = [e for e in evaluations if e.method == method]
        for dimension in dimensions + ["(mean)"]:
            for metric in METRICS if dimension != "(mean)" else ("kl",):
                if dimension == "(mean)":
                    by_event = _event_values(runs, mean_kl)
                else:
                    by_event = _event_values(runs, lambda e: getattr(e.dimensions[dimension], metric) if dimension in e.dimensions else None)
                mean, low, high = bootstrap_mean(by_event, resamples)
                rows.append({"method": method, "dimension": dimension, "metric": metric, "mean": mean, "ci_low": low, "ci_high": high,
                             "events": len(by_event), "runs": sum(len(v) for v in by_event.values())})
        policy_metrics = {"nll": lambda e: e.nll}
        for group in GAIN_GROUPS:
            policy_metrics[f"information_gain.{group}"] = lambda e, g=group: (e.information_gain or {}).get(g, {}).get("gain")
        for metric in REALISM_METRICS:
            policy_metrics[f"realism.{metric}"] = lambda e, m=metric: e.realism.get(m)
        for metric, value in policy_metrics.items():
            by_event = _event_values(runs, value)
            if by_event:
                mean, low, high = bootstrap_mean(by_event, resamples)
                rows.append({"method": method, "dimension": "(realism)" if metric.startswith("realism.") else "(policy)",
                             "metric": metric.removeprefix("realism."), "mean": mean, "ci_low": low, "ci_high": high,
                             "events": len(by_event), "runs": sum(len(v) for v in by_event.values())})
    return rows


def headline(evaluations: Sequence[RunEvaluation], method: str = "mf", resamples: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """Relative KL reduction of the mean field ``method`` (``mf``: the default one) against the best
    non-mean-field baseline (the paper reports 47%).

    KL is averaged over dimensions, then over seeds per event, leaving out the dimensions that are
    circular for ``method`` (labelled by a labeller its context is built from) for every method alike.
    The best baseline is the one with the lowest mean KL over the events it shares with ``method``; the
    CI resamples those events (paired).
    """
    method = resolve_method(method)
    runs = [e for e in evaluations if e.method == method]
    excluded = circular_for(evaluations, method)
    challenger = {k: float(np.mean(v)) for k, v in _event_values(runs, lambda e: mean_kl(e, excluded)).items()}
    candidates = {}
    for baseline in baseline_names():
        values = {k: float(np.mean(v)) for k, v in _event_values([e for e in evaluations if e.method == baseline],
                                                                 lambda e: mean_kl(e, excluded)).items()}
        shared = sorted(set(values) & set(challenger))
        if shared:
            candidates[baseline] = (np.mean([values[k] for k in shared]), values, shared)
    if not challenger or not candidates:
        return None
    best = min(candidates, key=lambda m: candidates[m][0])
    _, baseline_values, shared = candidates[best]
    method_values, base_values = np.array([challenger[k] for k in shared]), np.array([baseline_values[k] for k in shared])
    reduction = 1 - method_values.mean() / base_values.mean() if base_values.mean() > 0 else math.nan
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, len(shared), len(shared))
        if base_values[idx].mean() > 0:
            draws.append(1 - method_values[idx].mean() / base_values[idx].mean())
    low, high = (float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))) if draws else (math.nan, math.nan)
    return {"method": method, "best_baseline": best, "method_kl": float(method_values.mean()), "baseline_kl": float(base_values.mean()),
            "relative_kl_reduction": float(reduction), "ci_low": low, "ci_high": high, "events": len(shared),
            "excluded_dimensions": excluded, "all_baselines": {m: float(c[0]) for m, c in candidates.items()}}


def headlines(evaluations: Sequence[RunEvaluation], resamples: int = 2000) -> list[dict[str, Any]]:
    """The :func:`headline` of every mean-field method among ``evaluations`` (the default one first)."""
    default = resolve_method("mf")
    present = sorted({e.method for e in evaluations} & set(mean_field_names()), key=lambda m: (m != default, m))
    return [top for top in (headline(evaluations, m, resamples) for m in present) if top is not None]


def paired_comparisons(evaluations: Sequence[RunEvaluation], resamples: int = 2000) -> list[dict[str, Any]]:
    """Each mean-field method against each baseline, paired by (event, seed): the mean difference
    (method minus baseline) of mean KL (over the dimensions not circular for the method), NLL and
    information gain over all actions, with a two-level bootstrap 95% CI (events, then seeds within
    them). Negative KL/NLL differences favour the method."""
    by_key = {(e.method, e.event_id, e.seed): e for e in evaluations}
    present = sorted({e.method for e in evaluations})
    challengers = [m for m in present if m in mean_field_names()]
    baselines = [m for m in present if m in baseline_names()]
    rows = []
    for method in challengers:
        excluded = circular_for(evaluations, method)  # as in the headline
        metrics = {"mean_kl": lambda e: mean_kl(e, excluded), "nll": lambda e: e.nll,
                   "information_gain.all": lambda e: (e.information_gain or {}).get("all", {}).get("gain")}
        for baseline in baselines:
            pairs = [(by_key[k], by_key[(baseline, k[1], k[2])]) for k in by_key if k[0] == method and (baseline, k[1], k[2]) in by_key]
            for metric, value in metrics.items():
                by_event: dict[str, list[float]] = {}
                for ours, theirs in pairs:
                    a, b = value(ours), value(theirs)
                    if a is not None and b is not None and not (math.isnan(a) or math.isnan(b)):
                        by_event.setdefault(ours.event_id, []).append(float(a) - float(b))
                if by_event:
                    mean, low, high = bootstrap_mean(by_event, resamples)
                    rows.append({"method": method, "baseline": baseline, "metric": metric, "difference": mean, "ci_low": low,
                                 "ci_high": high, "events": len(by_event), "pairs": sum(len(v) for v in by_event.values())})
    return rows
