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
    """Values by key; with a ``path`` every new entry is appended, and reloaded next time."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._values: dict[str, Any] = {}
        if self.path and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self._values[entry["key"]] = entry["value"]

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def put(self, key: str, value: Any) -> None:
        self._values[key] = value
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
