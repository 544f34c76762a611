"""The run directory: manifest, actions, mean-field history, and a step journal for resume.

Each completed step is written in order: its action rows, its mean-field entry, then one line in
``steps.jsonl`` that commits it (with the context state needed to continue). A run killed at any
point resumes from the last committed step: rows of uncommitted steps are discarded, a torn last
line is ignored, so nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST, STEPS, ACTIONS, MEAN_FIELD = "manifest.json", "steps.jsonl", "actions.jsonl", "mean_field.jsonl"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path``; a torn final line (crash mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number >= len(lines) - 1:  # only the last line may be torn
                break
            raise ValueError(f"{path}: line {number} is corrupt: {exc.msg}") from exc
    return records


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def exists(self) -> bool:
        return (self.root / MANIFEST).is_file()

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{self.root}: not a run directory (no {MANIFEST})")
        return json.loads(path.read_text(encoding="utf-8"))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        os.replace(tmp, self.root / MANIFEST)

    def update_manifest(self, **fields: Any) -> None:
        manifest = self.manifest()
        manifest.update(fields)
        self.write_manifest(manifest)

    def committed_steps(self) -> list[dict[str, Any]]:
        steps = _read_jsonl(self.root / STEPS)
        for expected, step in enumerate(steps):
            if step["step"] != expected:
                raise ValueError(f"{self.root / STEPS}: step {step['step']} found where step {expected} was expected")
        return steps

    def rollback_to_committed(self) -> list[dict[str, Any]]:
        """Drop rows of uncommitted steps and repair torn lines; return the committed steps."""
        steps = self.committed_steps()
        done = len(steps)
        _write_jsonl(self.root / STEPS, steps)
        for name in (ACTIONS, MEAN_FIELD):
            _write_jsonl(self.root / name, [r for r in _read_jsonl(self.root / name) if r["step"] < done])
        return steps

    def commit(self, step: dict[str, Any], rows: list[dict[str, Any]], mean_field: dict[str, Any] | None) -> None:
        if rows:
            _append_jsonl(self.root / ACTIONS, rows)
        if mean_field is not None:
            _append_jsonl(self.root / MEAN_FIELD, [mean_field])
        _append_jsonl(self.root / STEPS, [step])

    def actions(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.root / ACTIONS)

    def mean_field_history(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.root / MEAN_FIELD)


def export_actions(run_dir: str | Path, path: str | Path) -> Path:
    """Write a run's aligned real/simulated actions as CSV, Parquet or JSONL (by suffix)."""
    import pandas as pd

    store = RunStore(run_dir)
    manifest = store.manifest()
    frame = pd.DataFrame(store.actions())
    frame.insert(0, "event_id", manifest["event"]["event_id"])
    frame.insert(1, "method", manifest["config"]["method"])
    frame.insert(2, "seed", manifest["config"]["seed"])
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        try:
            frame.to_parquet(path, index=False)
        except ImportError as exc:
            raise ImportError("Parquet export needs pyarrow: pip install 'mfllm[parquet]'") from exc
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        raise ValueError(f"{path}: export format must be .csv, .parquet or .jsonl")
    return path
