"""Fidelity by horizon: whether a method holds up as a rollout goes on.

Each run's simulated actions are split two ways, every action into exactly one part of each:

- ``third``: the first, middle and last third of the rollout in simulated agent order (action ``i`` of
  ``n`` is in third ``floor(3 i / n)``);
- ``hours``: hours since the source post at which the real reaction the agent replays was made, in
  :data:`HOURS_BINS` (a reaction stamped before its post, a clock error, counts in the first bin).

On each part, per dimension, the label KL (window mean over the part's windows, weighted as the pooled
evaluation weights them), its noise floor and the pooled KL are computed from the run's saved labels by
:func:`~mfllm.evaluation.metrics.compare_streams`, exactly as the evaluation computes them on the whole
rollout; ``(mean)`` averages the dimensions left after the circular ones are removed per event (as the
method table's ``(mean)`` row). Realism where it has a meaning on a part of a run: the duplicate share
(texts equal to an earlier text of the same side of the whole run, so a late part is not credited for
forgetting the early ones), the common-opening share within the part (a template the part fell into), the
length distance with its medians, and the bare-repost share, real beside simulated. Each is aggregated per
method like the pooled table: mean over events of the mean over seeds, with the two-level bootstrap 95% CI.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy.stats import wasserstein_distance

from mfllm.data.loaders import load_event
from mfllm.evaluation.aggregate import bootstrap_mean, circular_by_event
from mfllm.evaluation.dimensions import Dimension
from mfllm.evaluation.evaluate import RunEvaluation, evaluated_rows
from mfllm.evaluation.metrics import compare_streams
from mfllm.evaluation.realism import duplicate_flags
from mfllm.prompts import action_choice, needs_text
from mfllm.simulation.methods import mean_field_names
from mfllm.simulation.store import RunStore
from mfllm.text import common_opening_share, tokens

THIRDS = ("first third", "middle third", "last third")
HOURS_BINS = ((0.0, 1.0), (1.0, 3.0), (3.0, 12.0), (12.0, 48.0), (48.0, math.inf))
"""Hours since the source post: [0, 1), [1, 3), [3, 12), [12, 48), 48 and more."""
HOURS_LABELS = ("0–1 h", "1–3 h", "3–12 h", "12–48 h", "> 48 h")
AXES = {"third": THIRDS, "hours": HOURS_LABELS}
"""Each horizon axis with its parts, in order."""
DIMENSION_METRICS = ("kl", "kl_floor", "pooled_kl")
REALISM_METRICS = ("duplicate_real", "duplicate_sim", "common_opening_real", "common_opening_sim", "length_w1", "median_length_real",
                   "median_length_sim", "share_repost_real", "share_repost_sim")


def third_of(index: int, count: int) -> str:
    """The third of a rollout of ``count`` actions that action ``index`` (0-based, in agent order) is in."""
    return THIRDS[3 * index // count]


def hours_bin(hours: float) -> str:
    """The :data:`HOURS_BINS` part of a reaction made ``hours`` after its source post (earlier: the first)."""
    return next(label for (_, high), label in zip(HOURS_BINS, HOURS_LABELS) if hours < high)


def horizon_parts(rows: Sequence[dict[str, Any]], source_time: float) -> dict[int, dict[str, str]]:
    """Per position, the part of each axis its action is in: the third (by position order among ``rows``, a
    run's simulated actions) and the hours bin (its ``timestamp``, the real reaction's, against ``source_time``)."""
    ordered = sorted(rows, key=lambda r: r["position"])
    return {row["position"]: {"third": third_of(i, len(ordered)), "hours": hours_bin((float(row["timestamp"]) - source_time) / 3600)}
            for i, row in enumerate(ordered)}


@functools.lru_cache(maxsize=64)
def _source_time(data: str, event_id: str, data_format: str | None) -> float:
    return load_event(data, event_id, data_format)[0].source.timestamp


def _choice(row: dict[str, Any], side: str) -> str:
    """What the ``side`` (real or sim) of a row did: comment, repost with words or bare repost (as realism reads it)."""
    if side == "sim":
        return row.get("sim_choice") or action_choice(row["sim_kind"], row["sim_text"])
    return action_choice(row["real_kind"], row["real_text"])


def _texts(rows: Sequence[dict[str, Any]], side: str) -> list[tuple[int, str]]:
    """(position, text) of the ``side``'s texts among ``rows``: comments and reposts with words that have words."""
    return [(r["position"], r[f"{side}_text"]) for r in rows if needs_text(_choice(r, side)) and r[f"{side}_text"].strip()]


def _part_realism(rows: Sequence[dict[str, Any]], duplicates: dict[tuple[str, int], bool], language: str) -> dict[str, float | None]:
    """The horizon realism measures of ``rows`` (generated, paired), duplicates flagged over the whole run."""
    out: dict[str, float | None] = {}
    lengths: dict[str, list[int]] = {}
    for side in ("real", "sim"):
        texts = _texts(rows, side)
        lengths[side] = [len(tokens(text, language)) for _, text in texts]
        out[f"duplicate_{side}"] = float(np.mean([duplicates[side, p] for p, _ in texts])) if texts else None
        out[f"common_opening_{side}"] = common_opening_share([text for _, text in texts], language)
        out[f"median_length_{side}"] = float(np.median(lengths[side])) if texts else None
        out[f"share_repost_{side}"] = float(np.mean([_choice(r, side) == "repost" for r in rows])) if rows else None
    out["length_w1"] = float(wasserstein_distance(np.log1p(lengths["real"]), np.log1p(lengths["sim"]))) \
        if lengths["real"] and lengths["sim"] else None
    return out


def _duplicates(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], bool]:
    """(side, position) -> whether that side's text repeats an earlier one of the run (texts as realism counts them)."""
    flags: dict[tuple[str, int], bool] = {}
    for side in ("real", "sim"):
        texts = _texts(rows, side)
        flags.update({(side, position): flag for (position, _), flag in zip(texts, duplicate_flags([text for _, text in texts]))})
    return flags


def run_horizon(evaluation: RunEvaluation, dimensions: Sequence[Dimension]) -> list[dict[str, Any]]:
    """One record per (axis, part) of the run's horizon parts: ``agents`` (simulated actions in it), and per
    dimension ``<dimension>.<metric>`` for :data:`DIMENSION_METRICS`, and the :data:`REALISM_METRICS`."""
    store = RunStore(evaluation.run)
    manifest = store.manifest()
    config = manifest["config"]
    all_rows = store.actions()
    parts = horizon_parts(all_rows, _source_time(config["data"], config["event_id"], config["data_format"]))
    generated = evaluated_rows(all_rows)
    duplicates = _duplicates(generated)
    language = manifest["event"]["language"]
    by_name = {d.name: d for d in dimensions}
    records = []
    for axis, labels in AXES.items():
        for index, part in enumerate(labels):
            members = {p for p, where in parts.items() if where[axis] == part}
            if not members:
                continue
            record: dict[str, Any] = {"axis": axis, "part": part, "part_index": index, "agents": len(members)}
            labelled = [row for row in evaluation.labels if row["position"] in members]
            for name in evaluation.dimensions:
                real, sim = [row[f"{name}.real"] for row in labelled], [row[f"{name}.sim"] for row in labelled]
                if any(label is not None for label in real) and any(label is not None for label in sim):
                    metrics = compare_streams(real, sim, [row["window"] for row in labelled], by_name[name], evaluation.alpha)
                    record.update({f"{name}.{metric}": getattr(metrics, metric) for metric in DIMENSION_METRICS})
            record.update(_part_realism([r for r in generated if r["position"] in members], duplicates, language))
            records.append(record)
    return records


def _mean_over_dimensions(record: dict[str, Any], dimensions: Sequence[str], metric: str, excluded: set[str]) -> float | None:
    values = [record[f"{d}.{metric}"] for d in dimensions if d not in excluded and f"{d}.{metric}" in record
              and not math.isnan(record[f"{d}.{metric}"])]
    return float(np.mean(values)) if values else None


def horizon_table(evaluations: Sequence[RunEvaluation], dimensions: Sequence[Dimension], resamples: int = 2000,
                  progress: bool = False) -> list[dict[str, Any]]:
    """Per (axis, part, method, dimension, metric): the mean over events of the mean over seeds of the runs'
    part values with the two-level bootstrap 95% CI, the events, runs and simulated actions behind it.
    ``dimension`` is a dimension's name, ``(mean)`` (KL and floor over the dimensions not circular on the
    event) or ``(realism)``. ``progress`` draws a bar over the runs (tqdm, on stderr)."""
    from tqdm.auto import tqdm

    per_run = [(e, {(r["axis"], r["part"]): r for r in run_horizon(e, dimensions)})
               for e in tqdm(evaluations, desc="horizon", unit="run", file=sys.stderr, disable=not progress or len(evaluations) < 2)]
    methods = sorted({e.method for e in evaluations}, key=lambda m: (m not in mean_field_names(), m))
    names = sorted({d for e in evaluations for d in e.dimensions})
    excluded = circular_by_event(evaluations, methods)
    cells: list[tuple[str, str, Callable[[RunEvaluation, dict[str, Any]], float | None]]] = []
    for name in names:
        cells += [(name, metric, lambda e, r, key=f"{name}.{metric}": r.get(key)) for metric in DIMENSION_METRICS]
    cells += [("(mean)", metric, lambda e, r, m=metric: _mean_over_dimensions(r, names, m, excluded.get(e.event_id, set())))
              for metric in ("kl", "kl_floor")]
    cells += [("(realism)", metric, lambda e, r, m=metric: r.get(m)) for metric in REALISM_METRICS]
    rows = []
    for axis, labels in AXES.items():
        for index, part in enumerate(labels):
            for method in methods:
                runs = [(e, parts[axis, part]) for e, parts in per_run if e.method == method and (axis, part) in parts]
                for dimension, metric, value in cells:
                    by_event: dict[str, list[float]] = {}
                    for e, record in runs:
                        v = value(e, record)
                        if v is not None and not math.isnan(v):
                            by_event.setdefault(e.event_id, []).append(float(v))
                    if by_event:
                        mean, low, high = bootstrap_mean(by_event, resamples)
                        rows.append({"axis": axis, "part": part, "part_index": index, "method": method, "dimension": dimension,
                                     "metric": metric, "mean": mean, "ci_low": low, "ci_high": high, "events": len(by_event),
                                     "runs": sum(len(v) for v in by_event.values()), "agents": sum(r["agents"] for _, r in runs)})
    return rows


def kl_by_horizon(table: Sequence[dict[str, Any]], axis: str) -> dict[str, list[dict[str, Any] | None]]:
    """Per method, the ``(mean)`` KL row of each part of ``axis`` in order (None for a part without actions)."""
    rows = {(r["method"], r["part"]): r for r in table if r["axis"] == axis and r["dimension"] == "(mean)" and r["metric"] == "kl"}
    floors = {(r["method"], r["part"]): r["mean"] for r in table if r["axis"] == axis and r["dimension"] == "(mean)" and r["metric"] == "kl_floor"}
    methods = list(dict.fromkeys(m for m, _ in rows))
    return {m: [{**rows[m, part], "floor": floors.get((m, part))} if (m, part) in rows else None for part in AXES[axis]] for m in methods}


def horizon_charts(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Line charts (the report's chart helper) of each method's mean KL with its 95% CI band against each horizon axis."""
    from mfllm.presentation.charts import line_chart, series

    charts = []
    for axis, title in (("third", "rollout third"), ("hours", "hours since the source post")):
        curves = kl_by_horizon(table, axis)
        if not curves:
            continue
        lines = [series(method, [r["mean"] if r else None for r in points], low=[r["ci_low"] if r else None for r in points],
                        high=[r["ci_high"] if r else None for r in points], index=i) for i, (method, points) in enumerate(curves.items())]
        parts = ", ".join(f"{i + 1} = {part}" for i, part in enumerate(AXES[axis]))
        charts.append(line_chart(f"mean KL by {title}", f"{title} ({parts})", list(range(1, len(AXES[axis]) + 1)), lines,
                                 y_label="mean KL (nats)", percent=False, integer_x=True, note="bands: 95% CI over events and seeds"))
    return charts


def horizon_figure(table: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """A PNG of each method's mean KL (95% CI bars; its noise floor dotted) against each horizon axis; None without KL rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mfllm.presentation.charts import colour

    axes_curves = [(axis, kl_by_horizon(table, axis)) for axis in AXES]
    if not any(curves for _, curves in axes_curves):
        return None
    figure, panels = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for panel, (axis, curves) in zip(panels, axes_curves):
        for i, (method, points) in enumerate(curves.items()):
            xs = [x for x, r in enumerate(points) if r]
            kept = [r for r in points if r]
            means = np.array([r["mean"] for r in kept])
            low = np.array([r["ci_low"] if r["ci_low"] is not None and not math.isnan(r["ci_low"]) else r["mean"] for r in kept])
            high = np.array([r["ci_high"] if r["ci_high"] is not None and not math.isnan(r["ci_high"]) else r["mean"] for r in kept])
            shade = colour(method, i)
            panel.errorbar(xs, means, yerr=[means - low, high - means], marker="o", capsize=3, color=shade, label=method)
            panel.plot(xs, [r["floor"] for r in kept], linestyle=":", color=shade)
        panel.set_xticks(range(len(AXES[axis])), AXES[axis])
        panel.set_xlabel("rollout third (simulated agent order)" if axis == "third" else "hours since the source post")
        panel.set_ylabel("mean KL(real‖sim), nats")
        panel.grid(alpha=0.3)
    panels[0].legend(fontsize=8, title="method (dotted: noise floor)", title_fontsize=8)
    figure.suptitle("Label KL by horizon (95% CI over events and seeds)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def write_horizon(table: Sequence[dict[str, Any]], output: str | Path) -> dict[str, Path]:
    """``horizon.csv`` and ``horizon.json`` (the :func:`horizon_table`, with the bins' definition) and
    ``horizon_kl.png`` (:func:`horizon_figure`, when there is KL to draw) in ``output``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "horizon.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["axis", "part", "part_index", "method", "dimension", "metric", "mean", "ci_low", "ci_high",
                                                    "events", "runs", "agents"])
        writer.writeheader()
        writer.writerows(table)
    bins = {"third": "floor(3 i / n) of action i of a run's n simulated actions in agent order",
            "hours": [{"label": label, "from_hours": low, "to_hours": None if math.isinf(high) else high}
                      for (low, high), label in zip(HOURS_BINS, HOURS_LABELS)]}
    rows = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in table]
    (out / "horizon.json").write_text(json.dumps({"parts": bins, "rows": rows}, indent=1, ensure_ascii=False), encoding="utf-8")
    written = {"horizon.csv": out / "horizon.csv", "horizon.json": out / "horizon.json"}
    figure = horizon_figure(table, out / "horizon_kl.png")
    if figure is not None:
        written["horizon_kl.png"] = figure
    return written


def horizon_summary(table: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float | None]]]:
    """Per axis and method, its mean KL part by part (None for a part without actions)."""
    return {axis: {method: [None if r is None else r["mean"] for r in points] for method, points in kl_by_horizon(table, axis).items()}
            for axis in AXES}


def horizon_lines(summary: dict[str, dict[str, list[float | None]]]) -> list[str]:
    """One console line per axis and method of a :func:`horizon_summary` (a dash for a part without actions)."""
    lines = []
    for axis, title in (("third", "by third"), ("hours", "by hours since the post")):
        for method, means in summary.get(axis, {}).items():
            values = " | ".join(f"{part} {'–' if v is None else f'{v:.3f}'}" for part, v in zip(AXES[axis], means))
            lines.append(f"{method} mean KL {title}: {values}")
    return lines
