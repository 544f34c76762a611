"""Metrics files and a self-contained HTML report (the ``report.html`` template: interactive charts, tables with CIs)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mfllm.evaluation.aggregate import bootstrap_mean, headlines, labeller_variants, method_table, realism_headline, realism_table
from mfllm.evaluation.dimensions import Dimension
from mfllm.evaluation.evaluate import RunEvaluation
from mfllm.evaluation.realism import REALISM_COLUMNS
from mfllm.simulation.engine import backend_of
from mfllm.simulation.methods import mean_field_names, resolve_method
from mfllm.simulation.store import RunStore
from mfllm.simulation.throughput import pooled_throughput

def _fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _percent(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.0%}"


def realism_rows(evaluations: Sequence[RunEvaluation]) -> list[dict[str, Any]]:
    """The realism table for a page: the real texts' row, then one per method, a cell per
    :data:`~mfllm.evaluation.realism.REALISM_COLUMNS` (mean with its 95% CI, or None)."""
    cells = {(r["method"], r["metric"]): r for r in realism_table(evaluations)}
    return [{"method": method, "cells": [{"mean": cells[method, c]["mean"], "low": cells[method, c]["ci_low"], "high": cells[method, c]["ci_high"]}
                                         if (method, c) in cells and not math.isnan(cells[method, c]["mean"]) else None for c in REALISM_COLUMNS]}
            for method in dict.fromkeys(m for m, _ in cells)]


def write_metrics(evaluations: Sequence[RunEvaluation], output: str | Path) -> dict[str, Path]:
    """``metrics.json`` (everything, per-window series and labels included), ``metrics.csv`` (one row per
    run), ``summary.csv`` (the method table with CIs), ``labels.csv`` (every label of every run) and
    ``realism.csv`` (the realism table: real texts, then each method, with CIs)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    table = method_table(evaluations)
    realism = realism_table(evaluations)
    data = {"runs": [e.to_json() for e in evaluations], "methods": table, "headlines": headlines(evaluations), "realism": realism,
            "realism_headline": realism_headline(evaluations), "labeller_variants": labeller_variants(evaluations)}
    (out / "metrics.json").write_text(json.dumps(data, indent=1, ensure_ascii=False, default=_json_number), encoding="utf-8")
    _write_csv(out / "metrics.csv", [e.summary() for e in evaluations])
    _write_csv(out / "summary.csv", table)
    _write_csv(out / "labels.csv", [{"run": e.run, "event_id": e.event_id, "method": e.method, "seed": e.seed, **row}
                                    for e in evaluations for row in e.labels])
    _write_csv(out / "realism.csv", realism)
    return {name: out / name for name in ("metrics.json", "metrics.csv", "summary.csv", "labels.csv", "realism.csv")}


def _json_number(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _window_steps(evaluation: RunEvaluation) -> list[int]:
    """The step of each evaluated window (its first row's), so trajectories are drawn against steps, not window indices."""
    first: dict[int, int] = {}
    for row in evaluation.labels:
        first[row["window"]] = min(first.get(row["window"], row["step"]), row["step"])
    return [first[w] for w in sorted(first)]


def _mean_band(series: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds and the half-width of a normal 95% interval (0 for a single seed)."""
    stacked = np.stack(series)
    mean = stacked.mean(0)
    half = 1.96 * stacked.std(0, ddof=1) / math.sqrt(len(series)) if len(series) > 1 else np.zeros_like(mean)
    return mean, half


def trajectory_charts(evaluations: Sequence[RunEvaluation], event_id: str, dimension: Dimension) -> list[dict[str, Any]]:
    """Real vs simulated share of each label per window (at its step), one chart per label, one line per method (mean over
    seeds with a 95% CI band); interventions marked."""
    from mfllm.presentation.charts import line_chart, series

    runs = [e for e in evaluations if e.event_id == event_id and dimension.name in e.dimensions]
    if not runs:
        return []
    reference = runs[0].dimensions[dimension.name].real_proportions
    steps = _window_steps(runs[0])
    if len(steps) != len(reference):
        steps = list(range(len(reference)))
    marks = [(steps[x], name) for x, name in intervention_marks(runs) if x < len(steps)]
    methods = sorted({e.method for e in runs})
    charts = []
    for k, label in enumerate(dimension.labels):
        lines = [series("real", [p[k] for p in reference], width=2.5)]
        for index, method in enumerate(methods):
            shares = [np.array(e.dimensions[dimension.name].sim_proportions)[:, k] for e in runs
                      if e.method == method and len(e.dimensions[dimension.name].sim_proportions) == len(reference)]
            if shares:
                mean, half = _mean_band(shares)
                lines.append(series(f"{method} (n={len(shares)} seeds)", mean, low=mean - half, high=mean + half, index=index))
        charts.append(line_chart(f"{dimension.name}: {label}", f"step ({runs[0].window_scheme} windows)" if runs[0].window_scheme != "step"
                                 else "step", steps, lines, marks=marks, integer_x=True, note="bands: 95% CI over seeds"))
    return charts


def intervention_marks(runs: Sequence[RunEvaluation]) -> list[tuple[int, str]]:
    """(x, id) of every intervention of ``runs`` on a trajectory's window axis: the window of the first
    evaluated action at or after the step the intervention starts."""
    marks: dict[str, int] = {}
    for e in runs:
        scheduled = RunStore(e.run).manifest().get("interventions", {}).get("scheduled", [])
        windows = sorted({row["window"] for row in e.labels})
        for item in scheduled:
            later = [row["window"] for row in e.labels if row["step"] >= item["start_step"]]
            if later and item["id"] not in marks:
                marks[item["id"]] = windows.index(later[0])
    return sorted(((x, name) for name, x in marks.items()), key=lambda mark: mark[0])


def metric_plot(table: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """``metric`` per dimension and method with 95% bootstrap CIs, as an interval plot."""
    from mfllm.presentation.charts import interval_plot

    rows = [r for r in table if r["metric"] == metric and r["dimension"] not in ("(policy)", "(realism)") and not math.isnan(r["mean"])]
    if not rows:
        return None
    unit = " (nats)" if metric in ("kl", "js", "pooled_kl") else ""
    return interval_plot(f"{metric} between real and simulated label distributions (lower is closer; 95% bootstrap CI)",
                         [{"label": f"{r['dimension']}: {r['method']}", "mean": r["mean"], "low": r["ci_low"], "high": r["ci_high"],
                           "group": r["method"]} for r in rows], f"{metric}{unit}")


def validity_rows(evaluations: Sequence[RunEvaluation]) -> list[dict[str, Any]]:
    """One row per (dimension, language, labeller, gold set) behind the evaluated labels, with a warning where
    the labeller is no better than always answering the majority class, or was never checked against people."""
    rows: dict[tuple, dict[str, Any]] = {}
    for e in evaluations:
        for dimension, validity in e.validity.items():
            base = {"dimension": dimension, "language": validity["language"], "labeller": validity["labeller"] or "(none)"}
            if not validity["validations"]:
                warning = "" if validity["note"] else "not validated against human labels: agreement unknown"
                rows.setdefault((dimension, validity["language"], base["labeller"], ""), {**base, "data": validity["note"] or "–",
                                                                                         "warning": warning})
            for record in validity["validations"]:
                below = []
                if record["accuracy"] <= record["majority_accuracy"]:
                    below.append("accuracy")
                if record["macro_f1"] <= record["majority_macro_f1"]:
                    below.append("macro-F1")
                warning = f"{' and '.join(below)} at or below the majority class" if below else ""
                rows.setdefault((dimension, validity["language"], base["labeller"], record["data"]), {
                    **base, "data": record["data"], "protocol": record["protocol"], "items": record["items"],
                    "accuracy": record["accuracy"], "macro_f1": record["macro_f1"], "majority_label": record["majority_label"],
                    "majority_accuracy": record["majority_accuracy"], "majority_macro_f1": record["majority_macro_f1"],
                    "warning": warning})
    return list(rows.values())


def corrected_rows(evaluations: Sequence[RunEvaluation], resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per method and dimension: raw KL and KL corrected for the labeller's confusion, means over events.
    The corrected interval resamples events and seeds and, with each, one draw of the labeller's confusion."""
    rows = []
    rng = np.random.default_rng(seed)
    for method in sorted({e.method for e in evaluations}, key=lambda m: (m != resolve_method("mf"), m)):
        runs = [e for e in evaluations if e.method == method]
        for dimension in sorted({d for e in runs for d in e.corrected}):
            by_event: dict[str, list[Any]] = {}
            for e in runs:
                if dimension in e.corrected:
                    by_event.setdefault(e.event_id, []).append(e.corrected[dimension])
            raw, raw_low, raw_high = bootstrap_mean({k: [c.kl_raw for c in v] for k, v in by_event.items()}, resamples)
            point = float(np.mean([np.mean([c.kl_corrected for c in v]) for v in by_event.values()]))
            events = list(by_event.values())
            stats = []
            for b in range(resamples):
                drawn = [events[i] for i in rng.integers(0, len(events), len(events))]
                stats.append(np.mean([np.mean([c.kl_corrected_draws[b % len(c.kl_corrected_draws)] for c in
                                               (v[j] for j in rng.integers(0, len(v), len(v)))]) for v in drawn]))
            rows.append({"method": method, "dimension": dimension, "kl_raw": raw, "kl_raw_ci_low": raw_low, "kl_raw_ci_high": raw_high,
                         "kl_corrected": point, "kl_corrected_ci_low": float(np.quantile(stats, 0.025)),
                         "kl_corrected_ci_high": float(np.quantile(stats, 0.975)), "events": len(by_event),
                         "runs": sum(len(v) for v in events)})
    return rows


def headline_text(top: dict[str, Any]) -> str:
    """One line for a :func:`~mfllm.evaluation.aggregate.headline`: raw, against the noise floor, and beside
    the paper's 47% only when it has a CI (enough events)."""
    excluded = f"; left out as circular: {', '.join(top['excluded_dimensions'])}" if top["excluded_dimensions"] else ""
    if top["ci_note"]:
        interval, above = top["ci_note"], top["ci_note"]
    else:
        interval = f"95% CI {_percent(top['ci_low'])} to {_percent(top['ci_high'])}"
        above = f"95% CI {_percent(top['ci_above_floor_low'])} to {_percent(top['ci_above_floor_high'])}"
        choice = ", ".join(f"{b} {share:.0%}" for b, share in sorted(top["baseline_choice"].items(), key=lambda kv: -kv[1]) if share)
        interval += f", best baseline re-chosen per resample: {choice}"
    paper = "; the MF-LLM paper reports 47%" if top["comparable_to_paper"] else ""
    return (f"mean KL of {top['method']} {top['method_kl']:.3f} vs best baseline {top['best_baseline']} {top['baseline_kl']:.3f} "
            f"(noise floor {top['method_floor']:.3f} and {top['baseline_floor']:.3f}; {_percent(top['method_share_above_floor'])} of "
            f"{top['method']}'s KL is above its floor): relative KL reduction {_percent(top['relative_kl_reduction'])} ({interval}), "
            f"above the floor {_percent(top['relative_reduction_above_floor'])} ({above}); {top['events']} events{excluded}{paper}")


REALISM_HEADERS = {"discriminator_accuracy": "discriminator accuracy", "length_w1": "length W1 (log)", "median_length": "median length",
                   "degenerate": "degenerate", "duplicate": "duplicates", "copied": "copied from prompt", "common_opening": "common opening",
                   "distinct1": "distinct-1", "distinct2": "distinct-2", "share_comment": "comments", "share_repost_with_text": "reposts with words",
                   "share_repost": "bare reposts"}
REALISM_HEADLINE = ("discriminator_accuracy", "duplicate", "degenerate", "copied", "median_length", "share_repost")
"""The realism measures the headline line shows."""


def realism_headline_text(top: dict[str, Any]) -> str:
    """One line for a :func:`~mfllm.evaluation.aggregate.realism_headline`: the method's value, its 95% CI,
    and the real texts' value beside it."""
    parts = []
    for metric in REALISM_HEADLINE:
        sim, real = top["sim"].get(metric), top["real"].get(metric)
        if sim is None or math.isnan(sim["mean"]):
            continue
        share = metric not in ("discriminator_accuracy", "median_length")
        value = (lambda v: f"{v:.0%}") if share else (lambda v: f"{v:.3g}")
        beside = f", real {value(real['mean'])}" if real is not None else " (0.5: indistinguishable)"
        parts.append(f"{REALISM_HEADERS[metric]} {value(sim['mean'])} [{value(sim['ci_low'])}–{value(sim['ci_high'])}]{beside}")
    return f"realism of {top['method']}: " + "; ".join(parts)


def realism_summary(measures: dict[str, Any]) -> str:
    """One run's realism in one line (simulated / real), for the console."""
    if not measures:
        return ""
    pairs = ", ".join(f"{REALISM_HEADERS[m]} {_fmt(measures.get(f'{m}_sim'))}/{_fmt(measures.get(f'{m}_real'))}"
                      for m in ("median_length", "duplicate", "degenerate", "share_repost"))
    return (f"realism (sim/real): discriminator {_fmt(measures.get('discriminator_accuracy'))}, {pairs}, "
            f"copied from prompt {_fmt(measures.get('copied_sim'))}")


def realism_console_table(evaluations: Sequence[RunEvaluation]) -> str:
    """The realism table as text: a row for the real texts and one per method, means with 95% CIs."""
    cells = {(r["method"], r["metric"]): r for r in realism_table(evaluations)}
    if not cells:
        return "no realism measured (no run has texts to compare)"
    rows = [[method] + [f"{_fmt(cells[method, c]['mean'])} [{_fmt(cells[method, c]['ci_low'])}, {_fmt(cells[method, c]['ci_high'])}]"
                        if (method, c) in cells else "–" for c in REALISM_COLUMNS]
            for method in dict.fromkeys(m for m, _ in cells)]
    columns = [[name] + [row[i + 1] for row in rows] for i, name in enumerate(REALISM_HEADERS[c] for c in REALISM_COLUMNS)]
    widths = [max(len(row[0]) for row in rows)] + [max(map(len, column)) for column in columns]
    lines = ["  ".join(text.ljust(width) for text, width in zip(["texts"] + [c[0] for c in columns], widths))]
    lines += ["  ".join(text.ljust(width) for text, width in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def throughput_rows(evaluations: Sequence[RunEvaluation]) -> list[dict[str, Any]]:
    """Per method, the throughput its runs' manifests record, pooled (:func:`~mfllm.simulation.throughput.pooled_throughput`),
    with the policy model and backends they ran on; methods whose runs recorded none are left out."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for e in evaluations:
        by_method.setdefault(e.method, []).append(RunStore(e.run).manifest())
    rows = []
    for method, manifests in by_method.items():
        pooled = pooled_throughput(m.get("throughput") for m in manifests)
        if pooled is not None:
            backends = sorted({str(backend_of(m["models"].get(role))) for m in manifests for role in ("policy", "mean_field")
                               if m.get("models", {}).get(role)})
            rows.append({"method": method, "model": ", ".join(sorted({_policy_label(m) for m in manifests})),
                         "backend": ", ".join(backends), **pooled})
    return rows


def _policy_label(manifest: dict[str, Any]) -> str:
    """The run's policy model, with the last two parts of its LoRA adapter's directory where it had one."""
    adapter = (manifest.get("models", {}).get("policy") or {}).get("adapter")
    model = manifest["config"]["policy_model"]
    return f"{model} + LoRA {Path(adapter).parent.name}/{Path(adapter).name}" if adapter else model


HORIZON_CELLS = (("(mean)", "kl"), ("(mean)", "kl_floor"), ("(realism)", "duplicate_sim"), ("(realism)", "duplicate_real"),
                 ("(realism)", "length_w1"), ("(realism)", "share_repost_sim"), ("(realism)", "share_repost_real"))
"""The horizon table's columns on the page: mean KL and its floor, then realism (simulated beside real)."""


def horizon_rows(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The horizon table for a page: per axis, method and part, the :data:`HORIZON_CELLS` (mean with its 95% CI, or None)."""
    cells = {(r["axis"], r["method"], r["part"], r["dimension"], r["metric"]): r for r in table}
    agents = {(r["axis"], r["method"], r["part"]): r["agents"] for r in table}
    keys = sorted({(r["axis"], r["method"], r["part_index"], r["part"]) for r in table},
                  key=lambda k: (k[0] != "third", k[1] not in mean_field_names(), k[1], k[2]))
    return [{"axis": axis, "method": method, "part": part, "agents": agents[axis, method, part],
             "cells": [{"mean": c["mean"], "low": c["ci_low"], "high": c["ci_high"]} if (c := cells.get((axis, method, part, d, m))) else None
                       for d, m in HORIZON_CELLS]}
            for axis, method, _, part in keys]


def write_report(evaluations: Sequence[RunEvaluation], dimensions: Sequence[Dimension], output: str | Path,
                 max_events: int = 4, samples: int = 8, paired: Sequence[dict[str, Any]] = (),
                 horizon: Sequence[dict[str, Any]] = ()) -> Path:
    """Write the metrics files and the page ``index.html`` (``report.html``; charts, scripts and font inlined, so it stands
    alone). ``paired``: a backtest's paired comparisons (:func:`~mfllm.evaluation.aggregate.paired_comparisons`);
    ``horizon``: its results by horizon (:func:`~mfllm.evaluation.horizon.horizon_table`; the figure ``horizon_kl.png``
    beside the page is linked when it is there)."""
    from mfllm.evaluation.horizon import horizon_charts
    from mfllm.presentation.render import write_page

    out = Path(output)
    write_metrics(evaluations, out)
    table = method_table(evaluations)
    events = list(dict.fromkeys(e.event_id for e in evaluations))
    trajectories = [{"event": event_id, "dimension": dimension.name, "charts": charts} for event_id in events[:max_events]
                    for dimension in dimensions if (charts := trajectory_charts(evaluations, event_id, dimension))]
    unlabelled = [{"run": e.run, "gaps": gaps} for e in evaluations[:20]
                  if (gaps := {d: sum(v["reasons"].values()) for d, v in e.unlabelled.items() if v["reasons"]})]
    sample_runs = [{"title": f"{e.event_id} · {e.method} · seed {e.seed}",
                    "rows": [{"position": r["position"], "real": r["real_text"] or "", "simulated": r["sim_text"]}
                             for r in RunStore(e.run).actions()[:samples]]}
                   for e in [e for e in evaluations if e.event_id == events[0]][:5]]
    context = {"title": "mfllm fidelity report", "runs": len(evaluations), "events": len(events),
               "methods": sorted({e.method for e in evaluations}), "labeller": evaluations[0].labeller,
               "window_scheme": evaluations[0].window_scheme, "alpha": evaluations[0].alpha,
               "headlines": [headline_text(top) for top in headlines(evaluations)],
               "realism_columns": [REALISM_HEADERS[c] for c in REALISM_COLUMNS], "realism": realism_rows(evaluations),
               "realism_headline": realism_headline_text(top) if (top := realism_headline(evaluations)) else None,
               "variants": labeller_variants(evaluations),
               "validity": validity_rows(evaluations), "corrected": corrected_rows(evaluations),
               "metric_plots": [plot for plot in (metric_plot(table, m) for m in ("kl", "js", "wasserstein", "dtw")) if plot],
               "trajectories": trajectories, "table": table, "paired": list(paired), "unlabelled": unlabelled, "samples": sample_runs,
               "throughput": throughput_rows(evaluations), "horizon": horizon_rows(horizon), "horizon_charts": horizon_charts(horizon),
               "horizon_figure": "horizon_kl.png" if (out / "horizon_kl.png").exists() and horizon else None}
    return write_page(out, "report.html", context)
