"""What the watch page shows of a job while it runs, read from its run directories as they grow: progress,
actions/s, each step's mean field, label shares (simulated against real) per step, and the latest real and
simulated actions side by side. :class:`Watcher` keeps what it has read, so each update reads only new lines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mfllm.presentation.charts import line_chart, series
from mfllm.presentation.jobs import Jobs, run_progress
from mfllm.simulation.store import ACTIONS, MEAN_FIELD

SIDE_BY_SIDE = 12
"""Latest actions shown side by side."""


class Tail:
    """The complete JSON lines of a file that only grows (or is cut back by a resume: then it is read again)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.rows = path, 0, []

    def read(self) -> list[dict[str, Any]]:
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < self.offset:
            self.offset, self.rows = 0, []
        if size > self.offset:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(size - self.offset)
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offset += len(complete)
            self.rows.extend(json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip())
        return self.rows


def _kind_shares(rows: list[dict[str, Any]], key: str, steps: list[int], kinds: list[str]) -> dict[str, list[float | None]]:
    shares: dict[str, list[float | None]] = {kind: [] for kind in kinds}
    for step in steps:
        values = [r[key] for r in rows if r["step"] == step and r.get(key)]
        for kind in kinds:
            shares[kind].append(sum(v == kind for v in values) / len(values) if values else None)
    return shares


class Watcher:
    """Snapshots of one job for the watch page (one per connection)."""

    def __init__(self, jobs: Jobs, job_id: str):
        self.jobs, self.job_id = jobs, job_id
        self.tails: dict[Path, Tail] = {}
        self.last: tuple[float, int] | None = None
        self.rate: float | None = None

    def _tail(self, path: Path) -> list[dict[str, Any]]:
        return self.tails.setdefault(path, Tail(path)).read()

    def snapshot(self) -> dict[str, Any]:
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
                                                 if Path(r["path"], ACTIONS).exists() else 0)["path"])))
        return snapshot

    def _focus(self, run: Path) -> dict[str, Any]:
        """The run being written: its mean field per step, its kind shares against the real ones, the latest actions."""
        rows = self._tail(run / ACTIONS)
        mean_field = self._tail(run / MEAN_FIELD)
        steps = sorted({r["step"] for r in rows})
        kinds = sorted({r[k] for r in rows for k in ("real_kind", "sim_kind") if r.get(k)})
        simulated, real = _kind_shares(rows, "sim_kind", steps, kinds), _kind_shares(rows, "real_kind", steps, kinds)
        charts = [line_chart(f"{kind}: share per step", "step", steps,
                             [series("real", real[kind], width=2.5), series("simulated", simulated[kind])], integer_x=True,
                             chart_id=f"live-{kind}") for kind in kinds]
        return {"focus": str(run), "shares": charts,
                "mean_field": [{"step": m["step"], "phase": m.get("phase"), "text": m["text"]} for m in mean_field[-4:]][::-1],
                "side_by_side": [{"step": r["step"], "real_kind": r.get("real_kind"), "real_text": r.get("real_text"),
                                  "sim_kind": r.get("sim_kind"), "sim_text": r.get("sim_text")} for r in rows[-SIDE_BY_SIDE:]][::-1]}
