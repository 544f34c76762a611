"""What the watch page shows of a job while it runs, read from its run directories as they grow: progress,
actions/s, each step's mean field, label shares per step (simulated against the real reactions of the same
steps) on the action kind and on sentiment, and the latest real and simulated actions side by side.

Sentiment is labelled with the offline lexicon labeller the statistics mean field reads
(:func:`~mfllm.simulation.methods.mean_field_stats.lexicon_labeller`: snownlp for Chinese, VADER for English),
text by text, remembered across snapshots, so each update labels only the new actions. :class:`Watcher` keeps
what it has read of each file, so each update reads only new lines.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Sequence

from mfllm.presentation.charts import PALETTE, line_chart, series
from mfllm.presentation.jobs import Jobs, run_progress
from mfllm.simulation.store import ACTIONS, MEAN_FIELD, RunStore

SIDE_BY_SIDE = 12
"""Latest actions shown side by side."""
DIMENSIONS = {"kind": "Action kind", "sentiment": "Sentiment (offline lexicon)"}
"""The label dimensions the watch shows, with their titles."""


class Tail:
    """The complete JSON lines of a file that only grows (or is cut back by a resume: then it is read again)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.rows = path, 0, []
        self.resets = 0
        """How many times the file was cut back (rows already given may have changed)."""

    def read(self) -> list[dict[str, Any]]:
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < self.offset:
            self.offset, self.rows = 0, []
            self.resets += 1
        if size > self.offset:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(size - self.offset)
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offset += len(complete)
            self.rows.extend(json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip())
        return self.rows


@functools.lru_cache(maxsize=1)
def _lexicon() -> Any:
    from mfllm.simulation.methods.mean_field_stats import lexicon_labeller

    return lexicon_labeller()


@functools.lru_cache(maxsize=2**17)
def sentiment_label(text: str, language: str) -> str | None:
    """The lexicon labeller's sentiment of one text (None: empty text, or a language it has no lexicon for)."""
    from mfllm.evaluation.dimensions import BUILTIN_DIMENSIONS
    from mfllm.evaluation.labellers import LabelItem

    return _lexicon().label([LabelItem(text, "", language)], BUILTIN_DIMENSIONS["sentiment"]).labels[0]


def row_labels(row: dict[str, Any], language: str) -> dict[str, dict[str, str | None]]:
    """The real and the simulated action of an action row on each watched dimension (None where it has none: no real
    reaction in a forecast, no text to label, a failed generation's text)."""
    from mfllm.evaluation.evaluate import simulated_item

    simulated = simulated_item(row, "", language, None)
    real_text = row.get("real_text")
    return {"real": {"kind": row.get("real_kind"), "sentiment": sentiment_label(real_text, language) if real_text else None},
            "simulated": {"kind": simulated.kind, "sentiment": sentiment_label(simulated.text, language) if simulated.text.strip() else None}}


def _share(values: Sequence[str | None], label: str) -> float | None:
    labelled = [v for v in values if v is not None]
    return sum(v == label for v in labelled) / len(labelled) if labelled else None


def label_shares(rows: Sequence[dict[str, Any]], language: str) -> dict[str, Any]:
    """Per dimension: the labels seen, each step's share of each label (real and simulated, among the actions with a
    label), and the shares over every step so far."""
    labelled = [(row["step"], row_labels(row, language)) for row in rows]
    steps = sorted({step for step, _ in labelled})
    by_step: dict[int, list[dict[str, dict[str, str | None]]]] = {step: [] for step in steps}
    for step, labels in labelled:
        by_step[step].append(labels)
    shares: dict[str, Any] = {"steps": steps, "dimensions": {}}
    for dimension in DIMENSIONS:
        values = {side: [labels[side][dimension] for _, labels in labelled] for side in ("real", "simulated")}
        names = sorted({v for side in values.values() for v in side if v is not None})
        shares["dimensions"][dimension] = {
            "labels": names,
            "per_step": {side: {name: [_share([labels[side][dimension] for labels in by_step[step]], name) for step in steps]
                                for name in names} for side in values},
            "overall": {side: {name: _share(values[side], name) for name in names} for side in values},
            "counted": {side: sum(v is not None for v in values[side]) for side in values}}
    return shares


def share_charts(shares: dict[str, Any]) -> list[dict[str, Any]]:
    """One chart per dimension: each label's share per step, real (solid) and simulated (dashed) in the label's colour."""
    charts = []
    for dimension, title in DIMENSIONS.items():
        entry = shares["dimensions"][dimension]
        lines = []
        for index, name in enumerate(entry["labels"]):
            colour = PALETTE[index % len(PALETTE)]
            lines += [series(f"{name} real", entry["per_step"]["real"][name], colour, width=2.5),
                      series(f"{name} simulated", entry["per_step"]["simulated"][name], colour, dash=True)]
        charts.append(line_chart(f"{title}: share per step, real (solid) vs simulated (dashed)", "step", shares["steps"], lines,
                                 integer_x=True, chart_id=f"live-{dimension}"))
    return charts


class Watcher:
    """Snapshots of one job for the watch page (one per connection)."""

    def __init__(self, jobs: Jobs, job_id: str):
        self.jobs, self.job_id = jobs, job_id
        self.tails: dict[Path, Tail] = {}
        self.last: tuple[float, int] | None = None
        self.rate: float | None = None
        self.sent: dict[Path, tuple[int, int]] = {}
        """Per run: (its mean-field file's resets, mean fields streamed since)."""

    def _tail(self, path: Path) -> list[dict[str, Any]]:
        return self.tails.setdefault(path, Tail(path)).read()

    def snapshot(self, stream: bool = False) -> dict[str, Any]:
        """The job now, with every step's mean field of the focused run; ``stream``: only those this watcher has not
        given before (each update of a stream carries the new steps; the page keeps them all)."""
        job = self.jobs.state(self.job_id)
        runs = [run_progress(run) for run in self.jobs.runs(self.job_id)]
        done, total = sum(r["done"] for r in runs), sum(r["total"] for r in runs)
        now = time.monotonic()
        if self.last is not None and now > self.last[0] and done >= self.last[1]:
            recent = (done - self.last[1]) / (now - self.last[0])
            self.rate = recent if self.rate is None else 0.5 * self.rate + 0.5 * recent
        self.last = (now, done)
        snapshot: dict[str, Any] = {"job": job, "runs": runs, "done": done, "total": total,
                                    "actions_per_second": self.rate if job["state"] == "running" else None}
        active = [r for r in runs if r["status"] != "completed"] or runs
        if active:
            snapshot.update(self._focus(Path(max(active, key=lambda r: Path(r["path"], ACTIONS).stat().st_mtime
                                                 if Path(r["path"], ACTIONS).exists() else 0)["path"]), stream))
        return snapshot

    def _focus(self, run: Path, stream: bool) -> dict[str, Any]:
        """The run being written: its label shares per step against the real ones, its mean fields, the latest actions."""
        rows = self._tail(run / ACTIONS)
        mean_field = self._tail(run / MEAN_FIELD)
        resets = self.tails[run / MEAN_FIELD].resets
        language = RunStore(run).manifest()["event"].get("language", "zh")
        shares = label_shares(rows, language)
        overall = [{"dimension": dimension, "label": name, "real": entry["overall"]["real"][name],
                    "simulated": entry["overall"]["simulated"][name]}
                   for dimension, entry in shares["dimensions"].items() for name in entry["labels"]]
        before, sent = self.sent.get(run, (resets, 0))
        shown = mean_field[sent:] if stream and before == resets else mean_field
        if stream:
            self.sent[run] = (resets, len(mean_field))
        return {"focus": str(run), "language": language, "shares": share_charts(shares), "overall": overall,
                "mean_field": [{"step": m["step"], "phase": m.get("phase"), "text": m["text"]} for m in shown][::-1],
                "side_by_side": [{"step": r["step"], "real_kind": r.get("real_kind"), "real_text": r.get("real_text"),
                                  "sim_kind": r.get("sim_kind"), "sim_text": r.get("sim_text")} for r in rows[-SIDE_BY_SIDE:]][::-1]}
