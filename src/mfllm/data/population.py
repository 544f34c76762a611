"""Persona populations: who may act in a forecast past the data.

Either the reactors of an event seen before a cut-off (never later ones), or a persona file the user
gives: JSON lines (or a JSON/YAML list) of :class:`~mfllm.data.schema.UserProfile` mappings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mfllm.data.schema import Event, UserProfile


def prefix_population(event: Event, before: int) -> list[UserProfile]:
    """The distinct users of the first ``before`` reactions of ``event``, in order of first appearance
    (a user is known by id, or by the whole profile when it has none)."""
    seen: dict[str, UserProfile] = {}
    for reaction in event.reactions[:before]:
        key = reaction.user.user_id or reaction.user.model_dump_json()
        seen.setdefault(key, reaction.user)
    return list(seen.values())


def _records(path: Path) -> list[tuple[str, Any]]:
    """(where, record) of each persona in the file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {number}: not JSON ({exc.msg})") from None
        return records
    try:
        loaded = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid JSON or YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(loaded, list):
        raise ValueError(f"{path}: expected a list of personas (user profile mappings)")
    return [(f"record {index}", record) for index, record in enumerate(loaded)]


def load_personas(path: str | Path) -> list[UserProfile]:
    """The personas of a file (``.jsonl``: one profile per line; else a JSON or YAML list); a bad record is a
    one-line error naming the file, the record and the field."""
    path = Path(path)
    personas = []
    for where, record in _records(path):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: {where}: expected a mapping of user profile fields")
        try:
            personas.append(UserProfile.model_validate(record))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(map(str, first["loc"])) or "profile"
            raise ValueError(f"{path}: {where}: field '{field}': {first['msg']}") from None
    if not personas:
        raise ValueError(f"{path}: no persona in the file")
    return personas
