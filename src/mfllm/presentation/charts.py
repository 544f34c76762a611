"""Chart specs for the pages: plain dicts a template embeds and ``static/charts.js`` draws with uPlot (line charts with
bands and marks: zoom, hover, series toggles), and interval plots the templates draw as SVG (means with CIs)."""

from __future__ import annotations

import math
from typing import Any, Sequence

from mfllm.presentation.render import clean

REAL = "#111111"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
NAMED = {"real": REAL, "factual": "#1f77b4", "counterfactual": "#d62728", "forecast": "#d62728", "control": "#7f7f7f",
         "simulated": "#d62728", "mf-stats": "#d62728", "mf-hybrid": "#8c564b", "mf-llm": "#e377c2", "state": "#1f77b4",
         "recent": "#2ca02c", "popular": "#ff7f0e", "sft": "#9467bd"}


def colour(name: str, index: int = 0) -> str:
    """The colour of a named line (real, an arm, a method), else the ``index``-th of the palette."""
    return NAMED.get(name, PALETTE[index % len(PALETTE)])


def series(label: str, values: Sequence[float | None], colour_of: str | None = None, low: Sequence[float | None] | None = None,
           high: Sequence[float | None] | None = None, width: float = 1.5, dash: bool = False, index: int = 0) -> dict[str, Any]:
    """One line of a chart, with an optional band from ``low`` to ``high``."""
    line: dict[str, Any] = {"label": label, "values": clean(list(values)), "colour": colour_of or colour(label.split(" ")[0], index),
                            "width": width, "dash": dash}
    if low is not None and high is not None:
        line.update(low=clean(list(low)), high=clean(list(high)))
    return line


def line_chart(title: str, x_label: str, x_values: Sequence[float], lines: Sequence[dict[str, Any]], y_label: str = "share of actions",
               percent: bool = True, marks: Sequence[tuple[float, str]] = (), integer_x: bool = False, unit: str = "", note: str = "",
               y_range: tuple[float | None, float | None] | None = None, chart_id: str = "") -> dict[str, Any]:
    """A line chart: x in meaningful units (``integer_x`` for steps; ``unit`` after each x value), y a share (0-1, shown
    as %) unless ``percent`` is False; ``marks`` are labelled vertical lines (interventions, a branch point)."""
    low, high = y_range if y_range is not None else ((0.0, 1.0) if percent else (None, None))
    return {"id": chart_id, "title": title, "note": note, "x": {"label": x_label, "values": clean(list(x_values)), "integer": integer_x,
                                                                "unit": unit},
            "y": {"label": y_label, "percent": percent, "min": low, "max": high}, "series": list(lines),
            "marks": [{"x": x, "label": text} for x, text in marks]}


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low or 1.0
    step = 10 ** math.floor(math.log10(span / count))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [round(first + k * step, 10) for k in range(int((high - first) / step + 1e-9) + 1)]


def interval_plot(title: str, rows: Sequence[dict[str, Any]], axis_label: str, percent: bool = False, note: str = "",
                  width: int = 760) -> dict[str, Any]:
    """A forest plot of means with CIs: ``rows`` of {label, mean, low, high[, group]}, drawn as SVG by the templates
    (hover a row for its figures). A zero line is drawn when zero is in range."""
    finite = [v for r in rows for v in (r["mean"], r.get("low"), r.get("high")) if v is not None and math.isfinite(v)]
    low, high = (min(finite + [0.0]), max(finite + [0.0])) if finite else (0.0, 1.0)
    pad = (high - low) * 0.05 or 0.05
    low, high = low - pad, high + pad
    left, right, row_height, top = 230, 30, 22, 8
    span = width - left - right

    def x(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else round(left + (value - low) / (high - low) * span, 1)

    drawn = [{**clean(dict(r)), "x": x(r["mean"]), "x_low": x(r.get("low")), "x_high": x(r.get("high")), "y": top + row_height * i + row_height / 2,
              "colour": r.get("colour") or colour(str(r.get("group", r["label"])), i)} for i, r in enumerate(rows)]
    height = top + row_height * len(rows) + 40
    ticks = [{"x": x(t), "text": f"{t:.0%}" if percent else f"{t:g}"} for t in _nice_ticks(low, high)]
    return {"title": title, "note": note, "axis_label": axis_label, "rows": drawn, "ticks": ticks, "width": width, "height": height,
            "left": left, "right": width - right, "bottom": top + row_height * len(rows), "zero": x(0.0) if low <= 0 <= high else None,
            "percent": percent}
