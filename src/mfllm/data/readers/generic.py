"""The documented generic format (``docs/data-format.md``): JSONL or CSV, one post per record; reader and writer."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from mfllm.data.readers.base import (
    CollectedReactions, DatasetReader, RecordContext, build_record, detect_language, finish_event, json_type, lone_surrogate, read_text,
    register_reader, unknown_event,
)
from mfllm.data.schema import DataFormatError, Event, LoadReport, Post, Reaction, UserProfile

GENERIC_USER_FIELDS = tuple(UserProfile.model_fields)
_PROFILE_KEYS = {field: field for field in GENERIC_USER_FIELDS}


@register_reader
class GenericReader(DatasetReader):
    """The documented generic format: JSONL or CSV, one post per record, any number of events.

    Each record has ``event_id``, ``kind`` (``source``/``comment``/``repost``/``reply``),
    ``post_id``, ``text``, ``timestamp`` (unix seconds or ISO 8601) and optionally ``parent_id``,
    ``language`` (on the source), ``reposts_count``, ``comments_count``, ``likes_count``, the user
    either as a ``user`` object or as flat ``user_<field>`` columns, post annotations as a ``labels``
    object or ``label_<name>`` columns, and (on the source) event annotations as ``event_labels`` or
    ``event_label_<name>``. Each event needs exactly one ``source`` record.
    """

    name = "generic"
    detect_order = 50

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in {".jsonl", ".csv"}

    def _records(self, path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
        """(record name, record or None when unparseable, parse error)."""
        if path.suffix.lower() == ".csv":
            rows = csv.DictReader(io.StringIO(read_text(path).removeprefix("\ufeff"), newline=""))
            try:
                for i, row in enumerate(rows, start=2):
                    if None in row:
                        yield f"line {i}", None, "more cells than header columns"
                    else:
                        yield f"line {i}", dict(row), ""
            except csv.Error as exc:
                raise DataFormatError(f"{path}: line {rows.line_num + 1}: invalid CSV: {exc}") from exc
            return
        try:
            data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
        except OSError as exc:
            raise DataFormatError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
        for i, raw_line in enumerate(data.splitlines(), start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield f"line {i}", None, f"not UTF-8 text: {exc.reason} at byte {exc.start} of the line"
                continue
            if line.strip():
                yield (f"line {i}", *self._json_record(line))

    @staticmethod
    def _json_record(line: str) -> tuple[dict[str, Any] | None, str]:
        """(record or None, why not) for one JSONL line."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            return None, f"invalid JSON: {exc.msg}"
        except RecursionError:
            return None, "invalid JSON: nested too deeply"
        if not isinstance(record, dict):
            return None, "not a JSON object"
        problem = lone_surrogate(line, record)
        return (None, f"invalid JSON: {problem}") if problem else (record, "")

    def list_events(self, path: Path) -> list[str]:
        seen: dict[str, None] = {}
        for _, record, _ in self._records(path):
            if record and record.get("event_id") not in (None, ""):
                seen[str(record["event_id"])] = None
        return list(seen)

    @staticmethod
    def _labels(record: dict[str, Any], key: str, prefix: str) -> dict[str, str]:
        """Labels from a ``key`` object (JSONL) or from ``prefix<name>`` columns (CSV)."""
        if isinstance(record.get(key), dict):
            return {k: str(v) for k, v in record[key].items()}
        return {k[len(prefix):]: str(v) for k, v in record.items() if k.startswith(prefix) and v not in (None, "")}

    @staticmethod
    def _user(record: dict[str, Any], ctx: RecordContext) -> UserProfile:
        """The profile from a ``user`` object, else from flat ``user_<field>`` columns."""
        nested = record.get("user")
        if nested is not None and not isinstance(nested, dict):
            ctx.report.clear(ctx.file, ctx.record, "user", f"not an object: {json_type(nested)}")
        raw = nested if isinstance(nested, dict) else {f: record.get(f"user_{f}") for f in GENERIC_USER_FIELDS}
        return ctx.profile(raw, _PROFILE_KEYS, prefix="user_")

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        report = LoadReport()
        source: Post | None = None
        language: str | None = None
        labels: dict[str, str] = {}
        reactions = CollectedReactions()
        found = False
        for name, record, error in self._records(path):
            ctx = RecordContext(report, path, name)
            if record is None:
                ctx.reject("<record>", error)
                continue
            if record.get("event_id") in (None, ""):
                ctx.reject("event_id", "missing: the record belongs to no event")
                continue
            if str(record.get("event_id")) != event_id:
                continue
            found = True
            kind = record.get("kind")
            if kind not in ("source", "comment", "repost", "reply"):
                ctx.reject("kind", f"must be source/comment/repost/reply, got {kind!r}")
                continue
            required = ctx.post_fields(record, "post_id", "text", "timestamp")
            if required is None:
                continue
            post_id, text, timestamp = required
            post_labels = self._labels(record, "labels", "label_")
            common = dict(
                post_id=post_id, text=text, timestamp=timestamp, user=self._user(record, ctx), labels=post_labels,
                reposts_count=ctx.optional_int(record.get("reposts_count"), "reposts_count"),
                comments_count=ctx.optional_int(record.get("comments_count"), "comments_count"),
                likes_count=ctx.optional_int(record.get("likes_count"), "likes_count"),
            )
            if kind == "source":
                if source is not None:
                    ctx.reject("kind", f"second source record for event {event_id!r}")
                    continue
                source = build_record(Post, ctx, **common)
                language = ctx.optional_str(record.get("language"), "language")
                labels = self._labels(record, "event_labels", "event_label_")
            else:
                reaction = build_record(Reaction, ctx, kind=kind, parent_id=ctx.optional_str(record.get("parent_id"), "parent_id"), **common)
                reactions.add(reaction, path, name)
        if not found:
            raise unknown_event(path, event_id)
        if source is None:
            raise DataFormatError(f"{path}: event {event_id!r}: no usable record with kind 'source'")
        language = language or detect_language(source.text + "".join(r.text for r in reactions.reactions[:20]))
        if language not in ("zh", "en"):
            raise DataFormatError(f"{path}: event {event_id!r}: field 'language': must be zh or en, got {language!r}")
        fields = dict(event_id=event_id, dataset=self.name, language=language, source=source, labels=labels)
        return finish_event(fields, reactions, report, path), report


def write_generic(events: list[Event], path: str | Path) -> None:
    """Write events in the generic format (``.jsonl`` or ``.csv`` by suffix); lossless round trip."""
    path = Path(path)
    rows = []
    for event in events:
        rows.append(_generic_row(event, event.source, "source", language=event.language, labels=event.source.labels,
                                 event_labels=event.labels))
        rows.extend(_generic_row(event, r, r.kind, parent_id=r.parent_id, labels=r.labels) for r in event.reactions)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        flat = [_flatten(row) for row in rows]
        columns = list(dict.fromkeys(key for row in flat for key in row))
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(flat)
    else:
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _generic_row(event: Event, post: Post, kind: str, **extra: Any) -> dict[str, Any]:
    row = {"event_id": event.event_id, "kind": kind, **post.model_dump(mode="json", exclude={"labels"}), **extra}
    return {k: v for k, v in row.items() if v is not None}


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in row.items() if k not in ("user", "labels", "event_labels")}
    flat.update({f"user_{k}": v for k, v in row.get("user", {}).items() if v is not None})
    flat.update({f"label_{k}": v for k, v in row.get("labels", {}).items()})
    flat.update({f"event_label_{k}": v for k, v in row.get("event_labels", {}).items()})
    return flat
