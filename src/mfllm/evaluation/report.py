"""Metrics files and a self-contained HTML report with PNG figures."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mfllm.evaluation.aggregate import bootstrap_mean, headlines, method_table
from mfllm.evaluation.dimensions import Dimension
from mfllm.evaluation.evaluate import RunEvaluation
from mfllm.simulation.methods import resolve_method
from mfllm.simulation.store import RunStore

COLOURS = {"real": "black", "mf-stats": "tab:red", "mf-hybrid": "tab:brown", "mf-llm": "tab:pink", "state": "tab:blue", "recent": "tab:green",
           "popular": "tab:orange", "sft": "tab:purple"}


REALISM_SHOWN = (("discriminator_accuracy", None), ("length_w1", None), ("median_length", "median_length"), ("degenerate", "degenerate"),
                 ("duplicate", "duplicate"), ("copied_sim", None), ("distinct2", "distinct2"), ("share_repost_with_text", "share_repost_with_text"),
                 ("share_repost", "share_repost"))
"""Realism columns: (measure, paired real-side measure or None)."""


def _realism_html(table: Sequence[dict[str, Any]]) -> list[str]:
    """The realism table: per method, each measure's mean with its 95% CI, the real texts' value beside it."""
    cells = {(r["method"], r["metric"]): r for r in table if r["dimension"] == "(realism)"}
    methods = sorted({method for method, _ in cells})
    if not methods:
        return []

    def shown(method: str, metric: str) -> str:
        row = cells.get((method, metric))
        if row is None or math.isnan(row["mean"]):
            return "–"
        return f"{row['mean']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}]" if row["events"] > 1 else f"{row['mean']:.3g}"

    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in REALISM_SHOWN)
    parts = ["<h2>Realism: do the simulated texts read like the real ones?</h2>",
             "<p>Discriminator accuracy 0.5 means indistinguishable; definitions in the README (Realism). The real row pools the "
             "real reactions of every method's runs.</p>", f"<table><tr><th>method</th>{head}</tr>"]
    for method in methods:
        row = "".join(f"<td>{shown(method, name if paired is None else f'{paired}_sim')}</td>" for name, paired in REALISM_SHOWN)
        parts.append(f"<tr><td class=t>{html.escape(method)}</td>{row}</tr>")
    real = "".join(f"<td>{'–' if paired is None else shown(methods[0], f'{paired}_real')}</td>" for name, paired in REALISM_SHOWN)
    parts.append(f"<tr><td class=t>real</td>{real}</tr></table>")
    return parts


def write_metrics(evaluations: Sequence[RunEvaluation], output: str | Path) -> dict[str, Path]:
    """``metrics.json`` (everything, per-window series and labels included), ``metrics.csv`` (one row per
    run), ``summary.csv`` (the method table with CIs) and ``labels.csv`` (every label of every run)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    table = method_table(evaluations)
    data = {"runs": [e.to_json() for e in evaluations], "methods": table, "headlines": headlines(evaluations)}
    (out / "metrics.json").write_text(json.dumps(data, indent=1, ensure_ascii=False, default=_json_number), encoding="utf-8")
    _write_csv(out / "metrics.csv", [e.summary() for e in evaluations])
    _write_csv(out / "summary.csv", table)
    _write_csv(out / "labels.csv", [{"run": e.run, "event_id": e.event_id, "method": e.method, "seed": e.seed, **row}
                                    for e in evaluations for row in e.labels])
    return {name: out / name for name in ("metrics.json", "metrics.csv", "summary.csv", "labels.csv")}


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


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("reports need matplotlib: pip install 'mfllm[report]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_band(series: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds and the half-width of a normal 95% interval (0 for a single seed)."""
    stacked = np.stack(series)
    mean = stacked.mean(0)
    half = 1.96 * stacked.std(0, ddof=1) / math.sqrt(len(series)) if len(series) > 1 else np.zeros_like(mean)
    return mean, half


def trajectory_figure(evaluations: Sequence[RunEvaluation], event_id: str, dimension: Dimension, path: Path) -> Path | None:
    """Real vs simulated proportion of each label per window, one panel per label, one line per method."""
    plt = _pyplot()
    runs = [e for e in evaluations if e.event_id == event_id and dimension.name in e.dimensions]
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(dimension.labels), figsize=(3.2 * len(dimension.labels), 3.0), sharey=True, squeeze=False)
    reference = runs[0].dimensions[dimension.name].real_proportions
    marks = intervention_marks(runs)
    for k, label in enumerate(dimension.labels):
        ax = axes[0][k]
        ax.plot(range(len(reference)), [p[k] for p in reference], color=COLOURS["real"], linewidth=2, label="real")
        for method in sorted({e.method for e in runs}):
            series = [np.array(e.dimensions[dimension.name].sim_proportions)[:, k] for e in runs
                      if e.method == method and len(e.dimensions[dimension.name].sim_proportions) == len(reference)]
            if not series:
                continue
            mean, half = _mean_band(series)
            x = np.arange(len(mean))
            ax.plot(x, mean, color=COLOURS.get(method, None), label=f"{method} (n={len(series)} seeds)")
            ax.fill_between(x, mean - half, mean + half, color=COLOURS.get(method, None), alpha=0.2)
        mark_steps(ax, marks)
        ax.set_title(label)
        ax.set_xlabel(f"window ({runs[0].window_scheme})")
    return save_share_panels(fig, axes, f"{dimension.name}: real vs simulated label shares over time, event {event_id} "
                                        "(bands: 95% CI over seeds)", path, dpi=110)


def save_share_panels(fig: Any, axes: Any, title: str, path: Path, dpi: int) -> Path:
    """Finish a row of label-share panels (shared 0-1 axis, grid, legend on the last) and save it."""
    for ax in axes[0]:
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of actions")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


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


def mark_steps(ax: Any, marks: Sequence[tuple[int, str]]) -> None:
    """Dashed vertical lines at the given x positions, labelled (interventions, a branch point)."""
    for x, label in marks:
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=6, rotation=90, va="top", ha="right", color="dimgrey")


def metric_figure(table: list[dict[str, Any]], metric: str, path: Path) -> Path | None:
    """Bar chart of ``metric`` per dimension and method, with 95% bootstrap CIs."""
    plt = _pyplot()
    rows = [r for r in table if r["metric"] == metric and r["dimension"] not in ("(policy)", "(realism)") and not math.isnan(r["mean"])]
    if not rows:
        return None
    dimensions = list(dict.fromkeys(r["dimension"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(dimensions)), 3.4))
    for j, method in enumerate(methods):
        for i, dimension in enumerate(dimensions):
            match = [r for r in rows if r["method"] == method and r["dimension"] == dimension]
            if match:
                r = match[0]
                err = [[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]]
                ax.bar(i + j * width, r["mean"], width, yerr=err, color=COLOURS.get(method), capsize=2, label=method if i == 0 else None)
    ax.set_xticks(np.arange(len(dimensions)) + width * (len(methods) - 1) / 2, dimensions)
    ax.set_ylabel(f"{metric} (nats)" if metric in ("kl", "js", "pooled_kl") else metric)
    ax.set_title(f"{metric} between real and simulated label distributions (lower is closer; 95% bootstrap CI)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


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


def _validity_html(rows: list[dict[str, Any]]) -> list[str]:
    parts = ["<h2>Label validity</h2><p>How far each dimension's labels agree with human labels (figures on rows the labeller "
             "was not trained on), beside always answering the most common human label. Distances on a dimension whose labeller is "
             "no better than that baseline measure the labeller more than the population.</p>",
             "<table><tr><th>dimension</th><th>lang</th><th>labeller</th><th>human-labelled data</th><th>items</th><th>accuracy</th>"
             "<th>macro-F1</th><th>majority class: accuracy</th><th>macro-F1</th><th>warning</th></tr>"]
    for r in rows:
        style = " style='background:#fdd'" if r["warning"] else ""
        parts.append(f"<tr{style}><td class=t>{html.escape(r['dimension'])}</td><td class=t>{html.escape(r['language'])}</td>"
                     f"<td class=t>{html.escape(r['labeller'])}</td><td class=t>{html.escape(r['data'])}"
                     + (f"<br><small>{html.escape(r['protocol'])}</small>" if r.get("protocol") else "") + "</td>"
                     f"<td>{r.get('items', '–')}</td><td>{_fmt(r.get('accuracy'))}</td><td>{_fmt(r.get('macro_f1'))}</td>"
                     f"<td>{_fmt(r.get('majority_accuracy'))}</td><td>{_fmt(r.get('majority_macro_f1'))}</td>"
                     f"<td class=t>{html.escape(r['warning'])}</td></tr>")
    parts.append("</table>")
    return parts


def _corrected_html(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["<p>No dimension's labeller has a validation covering all its labels, so no KL is corrected for label errors.</p>"]
    parts = ["<h2>KL raw and corrected for labeller errors</h2><p>Corrected: each window's label shares, real and simulated, "
             "adjusted for the labeller's confusion on human labels (adjusted classify-and-count); the interval also resamples that "
             "confusion, so it includes the labeller's uncertainty.</p><table><tr><th>method</th><th>dimension</th><th>raw KL</th>"
             "<th>95% CI</th><th>corrected KL</th><th>95% CI (incl. labeller)</th><th>events</th><th>runs</th></tr>"]
    parts.extend(f"<tr><td class=t>{r['method']}</td><td class=t>{r['dimension']}</td><td>{_fmt(r['kl_raw'])}</td>"
                 f"<td>{_fmt(r['kl_raw_ci_low'])} – {_fmt(r['kl_raw_ci_high'])}</td><td>{_fmt(r['kl_corrected'])}</td>"
                 f"<td>{_fmt(r['kl_corrected_ci_low'])} – {_fmt(r['kl_corrected_ci_high'])}</td><td>{r['events']}</td><td>{r['runs']}</td></tr>"
                 for r in rows)
    parts.append("</table>")
    return parts


def headline_text(top: dict[str, Any]) -> str:
    """One line for a :func:`~mfllm.evaluation.aggregate.headline`."""
    excluded = f"; left out as circular: {', '.join(top['excluded_dimensions'])}" if top["excluded_dimensions"] else ""
    return (f"mean KL of {top['method']} {top['method_kl']:.3f} vs best baseline {top['best_baseline']} {top['baseline_kl']:.3f}: "
            f"relative KL reduction {top['relative_kl_reduction']:.0%} (95% CI {top['ci_low']:.0%} to {top['ci_high']:.0%}, "
            f"{top['events']} events{excluded})")


def write_report(evaluations: Sequence[RunEvaluation], dimensions: Sequence[Dimension], output: str | Path,
                 max_events: int = 4, samples: int = 8, sections: Sequence[str] = ()) -> Path:
    """Write metrics files, PNG figures and ``index.html`` (figures embedded, so the page stands alone).
    ``sections``: extra HTML placed after the metrics table (e.g. a backtest's paired comparisons)."""
    out = Path(output)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(evaluations, out)
    table = method_table(evaluations)
    tops = headlines(evaluations)
    figures = [f for f in (metric_figure(table, m, figures_dir / f"{m}_by_method.png") for m in ("kl", "js", "wasserstein", "dtw")) if f]
    events = list(dict.fromkeys(e.event_id for e in evaluations))
    for event_id in events[:max_events]:
        for dimension in dimensions:
            figure = trajectory_figure(evaluations, event_id, dimension, figures_dir / f"trajectory_{event_id}_{dimension.name}.png")
            if figure:
                figures.append(figure)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mfllm fidelity report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td.t{text-align:left}img{max-width:100%}"
        ".headline{background:#f4f4f4;padding:.8em;border-left:4px solid #c33}</style></head><body>",
        "<h1>Fidelity of the simulated population</h1>",
        f"<p>{len(evaluations)} runs, {len(events)} events, methods: {', '.join(sorted({e.method for e in evaluations}))}. "
        f"Labeller: {html.escape(evaluations[0].labeller)}; windows: {evaluations[0].window_scheme}; smoothing alpha {evaluations[0].alpha}. "
        "Distances compare real and simulated label distributions per window over the rollout (after warm-up); lower is closer. "
        "Intervals are 95% bootstrap CIs over events and seeds.</p>",
    ]
    for top in tops:
        parts.append(f"<p class='headline'><b>Headline:</b> {headline_text(top)} (the MF-LLM paper reports 47%).</p>")
    parts.extend(_realism_html(table))
    parts.extend(_validity_html(validity_rows(evaluations)))
    parts.extend(_corrected_html(corrected_rows(evaluations)))
    parts.append("<h2>Metrics by method</h2><table><tr><th>method</th><th>dimension</th><th>metric</th><th>mean</th>"
                 "<th>95% CI</th><th>events</th><th>runs</th></tr>")
    for r in table:
        parts.append(f"<tr><td class=t>{r['method']}</td><td class=t>{r['dimension']}</td><td class=t>{r['metric']}</td>"
                     f"<td>{_fmt(r['mean'])}</td><td>{_fmt(r['ci_low'])} – {_fmt(r['ci_high'])}</td><td>{r['events']}</td><td>{r['runs']}</td></tr>")
    parts.append("</table>")
    parts.extend(sections)
    parts.append("<h2>Figures</h2>")
    parts.extend(_img(f) for f in figures)
    parts.append("<h2>Unlabelled items</h2><ul>")
    for e in evaluations[:20]:
        gaps = {d: sum(v["reasons"].values()) for d, v in e.unlabelled.items() if v["reasons"]}
        if gaps:
            parts.append(f"<li>{html.escape(e.run)}: {html.escape(json.dumps(gaps))}</li>")
    parts.append("</ul><h2>Sample comments, real vs simulated</h2>")
    for e in [e for e in evaluations if e.event_id == events[0]][:5]:
        rows = RunStore(e.run).actions()[:samples]
        parts.append(f"<h3>{html.escape(e.event_id)} · {e.method} · seed {e.seed}</h3><table><tr><th>agent</th><th>real</th><th>simulated</th></tr>")
        parts.extend(f"<tr><td>{r['position']}</td><td class=t>{html.escape(r['real_text'] or '')}</td><td class=t>{html.escape(r['sim_text'])}</td></tr>"
                     for r in rows)
        parts.append("</table>")
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index
