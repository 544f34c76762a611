"""A key-value cache kept in memory and, optionally, appended to a JSON-lines file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def digest(*parts: Any) -> str:
    """A stable SHA-256 key of JSON-serialisable parts."""
    raw = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class JsonlCache:
    """Values by key; with a ``path`` every new entry is appended, and reloaded next time.

    Several processes may share one file (e.g. workers on a shared path): a key missing here is looked
    up again among the lines other processes appended since this one last read the file."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._values: dict[str, Any] = {}
        self._read_to = 0
        self._refresh()

    def _refresh(self) -> None:
        """Take in the complete lines appended to the file since it was last read."""
        if not self.path or not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self._read_to)
            appended = handle.read()
        end = appended.rfind(b"\n") + 1  # a line still being written is read next time
        for line in appended[:end].decode("utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                self._values[entry["key"]] = entry["value"]
        self._read_to += end

    def __contains__(self, key: str) -> bool:
        if key not in self._values:
            self._refresh()
        return key in self._values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def put(self, key: str, value: Any) -> None:
        self._values[key] = value
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:  # one write per entry: appends from several processes stay whole lines
                handle.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
