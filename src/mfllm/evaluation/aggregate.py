"""Aggregate run evaluations over seeds and events: means with bootstrap confidence intervals,
the method comparison table and the headline KL reduction of each mean field against the best baseline."""

from __future__ import annotations

import math
from typing import Any, Callable, Collection, Sequence

import numpy as np

from mfllm.evaluation.evaluate import RunEvaluation
from mfllm.evaluation.information_gain import GAIN_GROUPS
from mfllm.evaluation.realism import REALISM_COLUMNS, REALISM_METRICS, realism_value
from mfllm.simulation.methods import baseline_names, mean_field_names, resolve_method

METRICS = ("kl", "kl_floor", "js", "wasserstein", "dtw", "pooled_kl", "micro_f1", "macro_f1")
MIN_CI_EVENTS = 2
"""Events a headline needs before it gets a confidence interval and sits beside the paper's figure."""


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
    if sizes.sum() < 2:  # one value: nothing to resample
        return (point, math.nan, math.nan)
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


def mean_kl(evaluation: RunEvaluation, exclude: Collection[str] = ()) -> float | None:
    """KL averaged over the run's evaluated dimensions (less those in ``exclude``)."""
    values = [m.kl for name, m in evaluation.dimensions.items() if name not in exclude and not math.isnan(m.kl)]
    return float(np.mean(values)) if values else None


def mean_floor(evaluation: RunEvaluation, exclude: Collection[str] = ()) -> float | None:
    """The KL noise floor averaged over the same dimensions as :func:`mean_kl`."""
    values = [m.kl_floor for name, m in evaluation.dimensions.items() if name not in exclude and not math.isnan(m.kl)]
    return float(np.mean(values)) if values else None


def circular_by_event(evaluations: Sequence[RunEvaluation], methods: Collection[str]) -> dict[str, set[str]]:
    """Per event, the dimensions circular for any of ``methods`` in its runs on that event (decided per event:
    which labeller labels a dimension depends on the event's language)."""
    circular: dict[str, set[str]] = {}
    for e in evaluations:
        if e.method in methods:
            circular.setdefault(e.event_id, set()).update(e.circular)
    return circular


def _per_event(evaluations: Sequence[RunEvaluation], method: str, value: Callable[[RunEvaluation, Collection[str]], float | None],
               excluded: dict[str, set[str]]) -> dict[str, float]:
    """Per event, the mean over ``method``'s seeds of ``value`` (leaving out that event's ``excluded`` dimensions)."""
    runs = [e for e in evaluations if e.method == method]
    return {k: float(np.mean(v)) for k, v in _event_values(runs, lambda e: value(e, excluded.get(e.event_id, set()))).items()}


def _row(method: str, dimension: str, metric: str, by_event: dict[str, list[float]], resamples: int, **extra: Any) -> dict[str, Any]:
    mean, low, high = bootstrap_mean(by_event, resamples)
    return {"method": method, "dimension": dimension, "metric": metric, "mean": mean, "ci_low": low, "ci_high": high,
            "events": len(by_event), "runs": sum(len(v) for v in by_event.values()), **extra}


def method_table(evaluations: Sequence[RunEvaluation], resamples: int = 2000) -> list[dict[str, Any]]:
    """One row per (method, dimension, metric): mean, 95% CI, events and runs behind it. Each KL has its
    noise floor beside it (``kl_floor``). A cell is marked ``circular`` (with the events where it is) when
    the method's context is built from that dimension's labeller; the ``(mean)`` row leaves out, per event,
    every dimension circular for any method evaluated there, so its rows compare like with like. The
    ``(runs)`` row is the share of the method's actions whose generation failed."""
    rows = []
    methods = sorted({e.method for e in evaluations}, key=lambda m: (m not in mean_field_names(), m))
    dimensions = sorted({d for e in evaluations for d in e.dimensions})
    excluded = circular_by_event(evaluations, methods)
    for method in methods:
        runs = [e for e in evaluations if e.method == method]
        own = circular_by_event(runs, {method})
        for dimension in dimensions:
            circular_events = sorted(k for k, dims in own.items() if dimension in dims)
            for metric in METRICS:
                by_event = _event_values(runs, lambda e: getattr(e.dimensions[dimension], metric) if dimension in e.dimensions else None)
                rows.append(_row(method, dimension, metric, by_event, resamples, circular=bool(circular_events),
                                 circular_events=circular_events))
        left_out = sorted({d for dims in excluded.values() for d in dims})
        for metric, value in (("kl", mean_kl), ("kl_floor", mean_floor)):
            by_event = _event_values(runs, lambda e, v=value: v(e, excluded.get(e.event_id, set())))  # type: ignore[misc]
            rows.append(_row(method, "(mean)", metric, by_event, resamples, circular=False, excluded_dimensions=left_out))
        failed = _event_values(runs, lambda e: e.failed_actions / e.total_actions if e.total_actions else None)
        if failed:
            rows.append(_row(method, "(runs)", "failed_share", failed, resamples))
        policy_metrics: dict[str, Callable[[RunEvaluation], float | None]] = {"nll": lambda e: e.nll}
        for group in GAIN_GROUPS:
            policy_metrics[f"information_gain.{group}"] = lambda e, g=group: (e.information_gain or {}).get(g, {}).get("gain")
        for metric in REALISM_METRICS:
            by_event = _event_values(runs, lambda e, m=metric: e.realism.get(m))
            if by_event:
                rows.append(_row(method, "(realism)", metric, by_event, resamples))
        for metric, policy_value in policy_metrics.items():
            by_event = _event_values(runs, policy_value)
            if by_event:
                rows.append(_row(method, "(policy)", metric, by_event, resamples))
    return rows


def realism_rows(evaluations: Sequence[RunEvaluation], side: str = "sim", resamples: int = 2000) -> list[dict[str, Any]]:
    """One row per (method, realism metric) of the ``side`` (``sim``: each method's simulated texts;
    ``real``: one row ``real`` for the real texts beside all runs): mean over events of the mean over
    runs, with the two-level bootstrap 95% CI."""
    groups = {"real": list(evaluations)} if side == "real" else \
        {m: [e for e in evaluations if e.method == m] for m in sorted({e.method for e in evaluations},
                                                                      key=lambda m: (m not in mean_field_names(), m))}
    rows = []
    for name, runs in groups.items():
        for column in REALISM_COLUMNS:
            by_event = _event_values(runs, lambda e, c=column: realism_value(e.realism, c, side))
            if by_event:
                mean, low, high = bootstrap_mean(by_event, resamples)
                rows.append({"method": name, "metric": column, "mean": mean, "ci_low": low, "ci_high": high, "events": len(by_event),
                             "runs": sum(len(v) for v in by_event.values())})
    return rows


def realism_table(evaluations: Sequence[RunEvaluation], resamples: int = 2000) -> list[dict[str, Any]]:
    """The realism table: the real texts' row first, then each method's simulated texts (long format)."""
    return realism_rows(evaluations, "real", resamples) + realism_rows(evaluations, "sim", resamples)


def realism_headline(evaluations: Sequence[RunEvaluation], resamples: int = 2000) -> dict[str, Any] | None:
    """Realism of the default mean field (else the first mean-field method present) beside the real texts:
    {"method", "sim": {metric: row}, "real": {metric: row}}; None without a mean-field run with realism."""
    present = {e.method for e in evaluations if e.realism}
    method = next((m for m in [resolve_method("mf"), *mean_field_names()] if m in present), None)
    if method is None:
        return None
    runs = [e for e in evaluations if e.method == method]
    return {"method": method, "sim": {r["metric"]: r for r in realism_rows(runs, "sim", resamples)},
            "real": {r["metric"]: r for r in realism_rows(runs, "real", resamples)}}


def _comparable_baselines(challenger: dict[str, float], candidates: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The baselines compared with the challenger on one common set of events: those sharing an event with it,
    dropping the one that covers fewest of its events until the set is not empty."""
    compared = {b: v for b, v in candidates.items() if set(v) & set(challenger)}
    while compared and not set(challenger).intersection(*(set(v) for v in compared.values())):
        del compared[min(compared, key=lambda b: (len(set(compared[b]) & set(challenger)), b))]
    return compared


def headline(evaluations: Sequence[RunEvaluation], method: str = "mf", resamples: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """Relative KL reduction of the mean field ``method`` (``mf``: the default one) against the best
    non-mean-field baseline (the paper reports 47%), raw and above the noise floor.

    KL is averaged over dimensions, then over seeds per event; on each event the dimensions circular for
    ``method`` there (labelled by a labeller its context is built from) are left out for every method alike.
    Baselines are compared on the events they all share with ``method``; the best is the one with the lowest
    mean KL. The CI resamples events (paired) and chooses the best baseline again in every resample
    (``baseline_choice``: how often each was chosen), so it carries that choice. Above the floor:
    1 - (KL - floor of method) / (KL - floor of baseline), the part of the removable distance removed.
    With fewer than ``MIN_CI_EVENTS`` events there is no CI (``ci_note`` says why) and nothing to set
    beside the paper (``comparable_to_paper`` is false).
    """
    method = resolve_method(method)
    excluded = circular_by_event(evaluations, {method})
    challenger = _per_event(evaluations, method, mean_kl, excluded)
    compared = _comparable_baselines(challenger, {b: _per_event(evaluations, b, mean_kl, excluded) for b in baseline_names()})
    if not challenger or not compared:
        return None
    shared = sorted(set(challenger).intersection(*(set(v) for v in compared.values())))
    names = sorted(compared)
    kl = np.array([[challenger[k] for k in shared]] + [[compared[b][k] for k in shared] for b in names])
    floors = [_per_event(evaluations, m, mean_floor, excluded) for m in [method, *names]]
    floor = np.array([[f.get(k, math.nan) for k in shared] for f in floors])
    best = int(np.argmin(kl[1:].mean(axis=1))) + 1
    out: dict[str, Any] = {
        "method": method, "best_baseline": names[best - 1], "method_kl": float(kl[0].mean()), "baseline_kl": float(kl[best].mean()),
        "method_floor": float(floor[0].mean()), "baseline_floor": float(floor[best].mean()),
        "relative_kl_reduction": _reduction(kl[0], kl[best]),
        "relative_reduction_above_floor": _reduction(kl[0] - floor[0], kl[best] - floor[best]),
        "method_share_above_floor": float(1 - floor[0].mean() / kl[0].mean()) if kl[0].mean() > 0 else math.nan,
        "events": len(shared), "excluded_dimensions": sorted({d for k in shared for d in excluded.get(k, ())}),
        "excluded_by_event": {k: sorted(excluded[k]) for k in shared if excluded.get(k)},
        "all_baselines": {b: float(kl[j + 1].mean()) for j, b in enumerate(names)},
        "ci_low": None, "ci_high": None, "ci_above_floor_low": None, "ci_above_floor_high": None, "baseline_choice": {},
        "comparable_to_paper": len(shared) >= MIN_CI_EVENTS,
        "ci_note": "" if len(shared) >= MIN_CI_EVENTS else f"no CI: {len(shared)} event",
    }
    if len(shared) >= MIN_CI_EVENTS:
        idx = np.random.default_rng(seed).integers(0, len(shared), (resamples, len(shared)))
        means, floor_means = kl[:, idx].mean(axis=2), floor[:, idx].mean(axis=2)  # (methods, resamples)
        chosen = np.argmin(means[1:], axis=0) + 1
        columns = np.arange(resamples)
        draws = 1 - means[0] / means[chosen, columns]
        above = 1 - (means[0] - floor_means[0]) / (means[chosen, columns] - floor_means[chosen, columns])
        out["ci_low"], out["ci_high"] = _interval(draws[means[chosen, columns] > 0])
        out["ci_above_floor_low"], out["ci_above_floor_high"] = _interval(above[(means - floor_means)[chosen, columns] > 0])
        out["baseline_choice"] = {b: float(np.mean(chosen == j + 1)) for j, b in enumerate(names)}
    return out


def _reduction(method_values: np.ndarray, baseline_values: np.ndarray) -> float:
    return float(1 - method_values.mean() / baseline_values.mean()) if baseline_values.mean() > 0 else math.nan


def _interval(draws: np.ndarray) -> tuple[float | None, float | None]:
    return (float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))) if len(draws) else (None, None)


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
        excluded = circular_by_event(evaluations, {method})  # as in the headline, per event
        metrics = {"mean_kl": lambda e: mean_kl(e, excluded.get(e.event_id, set())), "nll": lambda e: e.nll,
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


def labeller_variants(evaluations: Sequence[RunEvaluation]) -> list[dict[str, Any]]:
    """Per (event, dimension): the labeller variant that labelled it and whether that variant was trained on
    the event's thread (``saw_event``: None where the labeller records no training threads)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for e in evaluations:
        for dimension, validity in e.validity.items():
            if validity.get("variant"):
                rows.setdefault((e.event_id, dimension), {"event_id": e.event_id, "dimension": dimension, "variant": validity["variant"],
                                                          "saw_event": validity.get("saw_event")})
    return list(rows.values())
