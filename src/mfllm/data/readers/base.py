"""What every reader shares: the reader base class and its registry, file parsing, field conversion.

A record with an unusable required field (id, text, time) is rejected and reported; an invalid
optional field is set to unknown and reported; a file that cannot be parsed at all raises
:class:`DataFormatError` naming the file.
"""

from __future__ import annotations

import html
import json
import re
from abc import ABC, abstractmethod
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from mfllm.data.schema import DataFormatError, Event, LoadReport, Reaction

CST = timezone(timedelta(hours=8))
WEIBO_DEFAULT_REPOST_TEXT = "转发微博"
_TAG = re.compile(r"<[^>]+>")
_IMG_ALT = re.compile(r"<img[^>]*alt=\"?(\[[^\]\"]*\])\"?[^>]*>")
_CJK = re.compile(r"[\u4e00-\u9fff]")


def subfolder_or_self(path: Path, folder: str) -> Path:
    """``path/folder`` when that folder exists (the dataset's upstream top folder), else ``path``."""
    return path / folder if (path / folder).is_dir() else path


def clean_html(text: str) -> str:
    """Weibo HTML to plain text: emoticon images become their ``[alt]`` text, tags are removed."""
    text = _IMG_ALT.sub(r"\1", text)
    text = re.sub(r"<br\s*/?>", " ", text)
    text = html.unescape(_TAG.sub("", text))
    return re.sub(r"\s+", " ", text).strip()


def detect_language(text: str) -> str:
    """``zh`` when at least 10% of the characters are CJK ideographs, else ``en``."""
    if not text:
        return "en"
    return "zh" if len(_CJK.findall(text)) >= 0.1 * len(text) else "en"


def read_json(path: Path) -> Any:
    """Parse a JSON file or raise :class:`DataFormatError` naming the file and position."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read file: {exc}") from exc
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        hint = " (file looks truncated)" if exc.pos >= len(raw.rstrip()) - 1 else ""
        raise DataFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}{hint}") from exc


class RecordContext:
    """Converts one raw record's fields, reporting problems against (file, record, field)."""

    def __init__(self, report: LoadReport, file: Path | str, record: str):
        self.report, self.file, self.record = report, str(file), record

    def reject(self, field_name: str, reason: str) -> None:
        self.report.reject(self.file, self.record, field_name, reason)

    def optional_int(self, value: Any, field_name: str) -> int | None:
        if value is None or value == "":
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.report.clear(self.file, self.record, field_name, f"not an integer: {value!r}")
            return None
        if number < 0:
            self.report.clear(self.file, self.record, field_name, f"negative: {number}")
            return None
        return number

    def optional_bool(self, value: Any, field_name: str) -> bool | None:
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in {"true", "1", "yes"}:
            return True
        if str(value).strip().lower() in {"false", "0", "no"}:
            return False
        self.report.clear(self.file, self.record, field_name, f"not a boolean: {value!r}")
        return None

    def optional_str(self, value: Any, field_name: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, (str, int, float)):
            self.report.clear(self.file, self.record, field_name, f"not text: {type(value).__name__}")
            return None
        text = str(value).strip()
        return text or None

    def gender(self, value: Any, field_name: str = "gender") -> str | None:
        if value is None or value == "":
            return None
        mapping = {"m": "male", "male": "male", "f": "female", "female": "female", "男": "male", "女": "female"}
        gender = mapping.get(str(value).strip().lower())
        if gender is None:
            self.report.clear(self.file, self.record, field_name, f"unknown gender code: {value!r}")
        return gender

    def required_text(self, value: Any, field_name: str) -> str | None:
        if not isinstance(value, str):
            self.reject(field_name, "missing" if value is None else f"not text: {type(value).__name__}")
            return None
        return value

    def timestamp(self, value: Any, field_name: str, fmt: str | None = None, tz: timezone = timezone.utc) -> float | None:
        """Parse unix seconds, ISO 8601, or ``fmt``; report and return None when impossible."""
        if value is None or value == "":
            self.reject(field_name, "missing")
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        formats = [fmt] if fmt else []
        formats += ["%a %b %d %H:%M:%S %z %Y", "%Y-%m-%d %H:%M:%S"]
        for candidate in formats:
            try:
                parsed = datetime.strptime(text, candidate)
            except ValueError:
                continue
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)).timestamp()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.reject(field_name, f"unparseable time: {text!r}")
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)).timestamp()


def finish_event(event_fields: dict[str, Any], reactions: list[Reaction], report: LoadReport, path: Path | str) -> Event:
    """The event with its reactions sorted by time; an invalid source post raises naming ``path``."""
    report.loaded = len(reactions)
    try:
        event = Event(reactions=reactions, **event_fields)
    except ValidationError as exc:
        raise DataFormatError(f"{path}: invalid source post: {exc}") from exc
    return event.sorted_by_time()


def build_record(model: type, ctx: RecordContext, **fields: Any) -> Any:
    """Validate a Post/Reaction; a schema violation rejects the record, naming the field."""
    try:
        return model(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx.reject(".".join(str(p) for p in err["loc"]), err["msg"])
        return None


class DatasetReader(ABC):
    """Lists and loads the events of one dataset layout.

    ``name`` is the format name users pass; ``detect_order`` ranks readers when the format is
    detected (lower is tried first, so a stricter layout check goes before a looser one).
    """

    name: str
    detect_order: int

    @classmethod
    @abstractmethod
    def detect(cls, path: Path) -> bool:
        """Whether ``path`` looks like this format."""

    @abstractmethod
    def list_events(self, path: Path) -> list[str]:
        """Event ids available under ``path``, in a stable order."""

    @abstractmethod
    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        """One event with a report of rejected records."""

    def iter_events(self, path: Path) -> Iterator[tuple[Event, LoadReport]]:
        for event_id in self.list_events(path):
            yield self.load_event(path, event_id)


def unknown_event(path: Path, event_id: str) -> KeyError:
    """The error for an event id that ``path`` does not hold."""
    return KeyError(f"{path}: no event with id {event_id!r}")


READER_REGISTRY: dict[str, type[DatasetReader]] = {}


def register_reader(reader: type[DatasetReader]) -> type[DatasetReader]:
    """Class decorator: make ``reader`` available under its format name."""
    if reader.name in READER_REGISTRY:
        raise ValueError(f"two readers named {reader.name!r}: {READER_REGISTRY[reader.name].__qualname__} and {reader.__qualname__}")
    READER_REGISTRY[reader.name] = reader
    return reader
