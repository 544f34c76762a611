"""What every reader shares: the reader base class and its registry, file parsing, field conversion,
and removing repeated reactions.

A record with an unusable required field (id, text, time) is rejected and reported; an invalid
optional field is set to unknown and reported; a reaction read more than once is kept once and each
removed copy reported; the two records of one "repost and comment" are kept as one repost and the
comment reported; a file that cannot be parsed at all raises :class:`DataFormatError` naming the file.
"""

from __future__ import annotations

import html
import json
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from pydantic import ValidationError

from mfllm.data.schema import MAX_COUNT, DataFormatError, Event, LoadReport, Post, Reaction, UserProfile

CST = timezone(timedelta(hours=8))
WEIBO_DEFAULT_REPOST_TEXT = "转发微博"
_TAG = re.compile(r"<[^>]+>")
_IMG_ALT = re.compile(r"<img[^>]*alt=\"?(\[[^\]\"]*\])\"?[^>]*>")
_CJK = re.compile(r"[\u4e00-\u9fff]")
# a surrogate pair escape (6 + 6 characters), or a lone \uD800-\uDFFF escape (6): a filter before checking parsed values
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
# times a datetime can hold in any time zone (years 1 to 9999, a day of margin each side)
_EARLIEST, _LATEST = (datetime(1, 1, 2, tzinfo=timezone.utc).timestamp(), datetime(9999, 12, 30, tzinfo=timezone.utc).timestamp())


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


def read_text(path: Path) -> str:
    """A UTF-8 text file, or :class:`DataFormatError` naming the file (and the line of a bad byte)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(f"{path}: not UTF-8 text: line {line}, byte {exc.start}: {exc.reason}") from exc


def parse_json(text: str, where: str) -> Any:
    """Parse one JSON value; :class:`DataFormatError` (one line, naming ``where``) when impossible."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (file looks truncated)" if exc.pos >= len(text.rstrip()) - 1 else ""
        raise DataFormatError(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}{hint}") from exc
    except RecursionError as exc:
        raise DataFormatError(f"{where}: invalid JSON: nested too deeply") from exc
    problem = lone_surrogate(text, value)
    if problem:
        raise DataFormatError(f"{where}: invalid JSON: {problem}")
    return value


def lone_surrogate(text: str, value: Any) -> str:
    """Why ``value`` (parsed from JSON ``text``) is not Unicode text, or "" when it is: a ``\\uD800``-style
    escape without its pair decodes to a string that cannot be written as UTF-8."""
    escape = next((m for m in _SURROGATE_ESCAPE.finditer(text) if len(m.group()) == 6), None)
    if escape is None:
        return ""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and _SURROGATE.search(item):
            line = text.count("\n", 0, escape.start()) + 1
            return f"unpaired surrogate escape {escape.group()} (not Unicode text), first near line {line}"
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return ""


def read_json(path: Path, expect: type | None = None) -> Any:
    """Parse a JSON file or raise :class:`DataFormatError` naming the file and position; with
    ``expect`` (``dict`` or ``list``) the top-level value must be of that type."""
    value = parse_json(read_text(path), str(path))
    return value if expect is None else expect_type(value, expect, str(path))


def expect_type(value: Any, expect: type, where: str) -> Any:
    """``value`` when it is an ``expect`` (``dict`` or ``list``), else :class:`DataFormatError` naming ``where``."""
    if not isinstance(value, expect):
        wanted = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise DataFormatError(f"{where}: expected {wanted}, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def first_problem(exc: ValidationError) -> tuple[str, str]:
    """(dotted field, one-line message) of a pydantic error's first problem."""
    first = exc.errors()[0]
    return ".".join(str(p) for p in first["loc"]), " ".join(first["msg"].split())


def validation_message(exc: ValidationError) -> str:
    """A pydantic error on one line: the first problem's field and message, and how many more."""
    field_name, message = first_problem(exc)
    more = exc.error_count() - 1
    return f"field '{field_name}': {message}" + (f" (and {more} more)" if more else "")


class RecordContext:
    """Converts one raw record's fields, reporting problems against (file, record, field)."""

    def __init__(self, report: LoadReport, file: Path | str, record: str):
        self.report, self.file, self.record = report, str(file), record

    def reject(self, field_name: str, reason: str) -> None:
        self.report.reject(self.file, self.record, field_name, reason)

    def optional_int(self, value: Any, field_name: str) -> int | None:
        if value is None or value == "":
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.report.clear(self.file, self.record, field_name, f"not a finite number: {value!r}")
            return None
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            self.report.clear(self.file, self.record, field_name, f"not an integer: {_short(value)}")
            return None
        if number < 0:
            self.report.clear(self.file, self.record, field_name, f"negative: {number}")
            return None
        if number > MAX_COUNT:
            self.report.clear(self.file, self.record, field_name, f"out of range (above 10^12): {_short(value)}")
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
        self.report.clear(self.file, self.record, field_name, f"not a boolean: {_short(value)}")
        return None

    def optional_str(self, value: Any, field_name: str) -> str | None:
        problem = _text_problem(value)
        if problem:
            self.report.clear(self.file, self.record, field_name, problem)
            return None
        text = str(value).strip() if value is not None else ""
        return text or None

    def required_id(self, value: Any, field_name: str) -> str | None:
        """An id (text or a number); a record without a usable one is rejected, saying whether it is missing or of the wrong type."""
        problem = _text_problem(value)
        text = None if problem or value is None else str(value).strip()
        if not text:
            self.reject(field_name, f"wrong type: {problem}" if problem else "missing")
        return text or None

    def gender(self, value: Any, field_name: str = "gender") -> str | None:
        if value is None or value == "":
            return None
        mapping = {"m": "male", "male": "male", "f": "female", "female": "female", "男": "male", "女": "female"}
        gender = mapping.get(str(value).strip().lower())
        if gender is None:
            self.report.clear(self.file, self.record, field_name, f"unknown gender code: {_short(value)}")
        return gender

    def required_text(self, value: Any, field_name: str) -> str | None:
        if not isinstance(value, str):
            self.reject(field_name, "missing" if value is None else f"not text: {json_type(value)}")
            return None
        return value

    def timestamp(self, value: Any, field_name: str, tz: timezone = timezone.utc) -> float | None:
        """Unix seconds from a number, a numeric string, a Twitter/Weibo date, ``YYYY-MM-DD HH:MM:SS``
        or ISO 8601 (naive times are in ``tz``); reject the record and return None when impossible or
        when the time is not finite or beyond years 1 to 9999."""
        if value is None or value == "":
            self.reject(field_name, "missing")
            return None
        seconds = _seconds(value, tz)
        if seconds is None:
            self.reject(field_name, f"unparseable time: {_short(value.strip() if isinstance(value, str) else value)}")
        elif not math.isfinite(seconds):
            self.reject(field_name, f"not a finite number: {_short(value)}")
        elif not _EARLIEST <= seconds <= _LATEST:
            self.reject(field_name, f"out of range (years 1 to 9999): {_short(value)}")
        else:
            return seconds
        return None

    def profile(self, raw: Any, keys: Mapping[str, str], prefix: str = "", unverified_type: int | None = None) -> UserProfile:
        """A user profile from ``raw[keys[field]]`` for each profile field named in ``keys``; an
        invalid value is reported under ``prefix + key`` and left unknown. ``raw`` that is present
        but not an object is reported and gives an empty profile. A ``verified_type`` equal to
        ``unverified_type`` (Weibo's -1) means none."""
        if raw is None:
            return UserProfile()
        if not isinstance(raw, dict):
            self.report.clear(self.file, self.record, prefix.rstrip("._") or "user", f"not an object: {json_type(raw)}")
            return UserProfile()
        fields = {}
        for field_name, key in keys.items():
            value = raw.get(key)
            if field_name == "verified_type" and unverified_type is not None and value == unverified_type:
                value = None
            fields[field_name] = _PROFILE_CONVERTERS[field_name](self, value, prefix + key)
        return UserProfile(**fields)

    def post_fields(self, raw: Mapping[str, Any], id_key: str, text_key: str, time_key: str,
                    tz: timezone = timezone.utc) -> tuple[str, str, float] | None:
        """The required (id, text, time) of a post, reported under the given keys; None (with every
        problem reported) when any is unusable."""
        post_id = self.required_id(raw.get(id_key), id_key)
        text = self.required_text(raw.get(text_key), text_key)
        timestamp = self.timestamp(raw.get(time_key), time_key, tz=tz)
        if post_id is None or text is None or timestamp is None:
            return None
        return post_id, text, timestamp


_PROFILE_CONVERTERS: dict[str, Callable[[RecordContext, Any, str], Any]] = {
    "user_id": RecordContext.optional_str, "gender": RecordContext.gender, "location": RecordContext.optional_str,
    "description": RecordContext.optional_str, "followers_count": RecordContext.optional_int,
    "friends_count": RecordContext.optional_int, "bi_followers_count": RecordContext.optional_int,
    "statuses_count": RecordContext.optional_int, "verified": RecordContext.optional_bool,
    "verified_type": RecordContext.optional_int, "verified_reason": RecordContext.optional_str,
}
_TIME_FORMATS = ("%a %b %d %H:%M:%S %z %Y", "%Y-%m-%d %H:%M:%S")


def _seconds(value: Any, tz: timezone) -> float | None:
    """Unix seconds of a time value, or None when it is not a time (the value may be non-finite)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):  # an integer too big for a float is clamped: it reads as out of range
        return float(value) if isinstance(value, float) else float(max(-(2**62), min(value, 2**62)))
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    for candidate in _TIME_FORMATS:
        try:
            parsed = datetime.strptime(text, candidate)
        except ValueError:
            continue
        return _epoch(parsed, tz)
    try:
        return _epoch(datetime.fromisoformat(text.replace("Z", "+00:00")), tz)
    except ValueError:
        return None


def _epoch(moment: datetime, tz: timezone) -> float | None:
    """Unix seconds of ``moment`` (naive means ``tz``); None when it falls outside what datetime can hold."""
    try:
        return (moment if moment.tzinfo else moment.replace(tzinfo=tz)).timestamp()
    except (OverflowError, ValueError):
        return None


def _text_problem(value: Any) -> str:
    """Why ``value`` cannot stand for a text field (an id, a name), or "" when it can (None is absent, not a problem)."""
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return ""
    if isinstance(value, float):
        return "" if math.isfinite(value) else f"not a finite number: {value!r}"
    return f"not text: {json_type(value)}"


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages."""
    text = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else json_type(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ReadReaction:
    """A reaction as read, with the file and record it came from."""

    reaction: Reaction
    file: str
    record: str


class CollectedReactions:
    """The reactions a reader read from an event's files, in file order, each with where it came from."""

    def __init__(self) -> None:
        self.items: list[ReadReaction] = []

    def add(self, reaction: Reaction | None, file: Path | str, record: str) -> None:
        """Keep ``reaction`` read from ``record`` of ``file``; None (a rejected record) is skipped."""
        if reaction is not None:
            self.items.append(ReadReaction(reaction, str(file), record))

    @property
    def reactions(self) -> list[Reaction]:
        return [item.reaction for item in self.items]


def repeat_key(reaction: Reaction) -> tuple[str, ...]:
    """What makes two records the same reaction: the id, or for a record without one the user, text and time."""
    if reaction.post_id:
        return ("post_id", reaction.post_id)
    return ("user_id, text, timestamp", reaction.user.user_id or "", reaction.text, repr(reaction.timestamp))


def differing_fields(kept: Reaction, other: Reaction) -> dict[str, tuple[Any, Any]]:
    """Field (``user.<field>`` inside the profile) -> (kept value, other value), for every field that differs."""
    first, second = kept.model_dump(), other.model_dump()
    differences = {}
    for name, value in first.items():
        if name == "user":
            differences.update({f"user.{k}": (v, second["user"][k]) for k, v in value.items() if v != second["user"][k]})
        elif value != second[name]:
            differences[name] = (value, second[name])
    return differences


def remove_repeats(collected: CollectedReactions, report: LoadReport) -> list[Reaction]:
    """The reactions with repeated records removed, in file order. Of the records sharing a
    :func:`repeat_key`, the earliest (by timestamp, then file order) is kept; every other one is
    reported in ``report.repeats``, and in ``report.conflicts`` too when its content differs."""
    return [item.reaction for item in _without_repeats(collected, report)]


REPOST_COMMENT_WINDOW_S = 60.0
"""A repost and a comment of one user with the same words at most this far apart are one "repost and
comment" (Weibo stores both halves, mostly with the same second)."""


def merge_repost_comments(items: list[ReadReaction], report: LoadReport) -> list[ReadReaction]:
    """The reactions with each "repost and comment" kept once: a comment with the same user and text as a
    repost at most :data:`REPOST_COMMENT_WINDOW_S` away is left out (reported in ``report.repost_comments``)
    and its repost kept, at the earlier of the two times, so the action enters no context twice or late.
    Each repost pairs with at most one comment (the nearest in time)."""
    reposts: dict[tuple[str, str], list[int]] = {}
    for index, item in enumerate(items):
        if item.reaction.kind == "repost" and item.reaction.user.user_id:
            reposts.setdefault((item.reaction.user.user_id, item.reaction.text), []).append(index)
    kept: list[ReadReaction | None] = list(items)
    for index, item in enumerate(items):
        comment = item.reaction
        if comment.kind != "comment" or not comment.user.user_id:
            continue
        gap = {i: abs(items[i].reaction.timestamp - comment.timestamp) for i in reposts.get((comment.user.user_id, comment.text), [])}
        candidates = [i for i, seconds in gap.items() if seconds <= REPOST_COMMENT_WINDOW_S and kept[i] is items[i]]
        if not candidates:
            continue
        chosen = min(candidates, key=lambda i: (gap[i], i))
        repost = items[chosen]
        earlier = min(repost.reaction.timestamp, comment.timestamp)
        kept[chosen] = ReadReaction(repost.reaction.model_copy(update={"timestamp": earlier}), repost.file, repost.record)
        kept[index] = None
        where = f"record {repost.record}" if repost.file == item.file else f"{repost.file}: record {repost.record}"
        report.repost_comment(item.file, item.record, "kind", f"the comment half of a repost and comment, kept as the repost {where} "
                                                              f"(same user and text, {gap[chosen]:.0f} s apart)")
    return [item for item in kept if item is not None]


def _without_repeats(collected: CollectedReactions, report: LoadReport) -> list[ReadReaction]:
    """:func:`remove_repeats`, keeping where each reaction was read."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, item in enumerate(collected.items):
        groups.setdefault(repeat_key(item.reaction), []).append(index)
    kept_indices = []
    for key, indices in groups.items():
        kept_index = min(indices, key=lambda i: (collected.items[i].reaction.timestamp, i))
        kept_indices.append(kept_index)
        kept = collected.items[kept_index]
        for index in indices:
            if index == kept_index:
                continue
            item = collected.items[index]
            kept_at = f"record {kept.record}" if kept.file == item.file else f"{kept.file}: record {kept.record}"
            same = f"{key[0]} {', '.join(map(repr, key[1:]))}"
            report.repeat(item.file, item.record, key[0], f"removed: repeats {kept_at} ({same})")
            differences = differing_fields(kept.reaction, item.reaction)
            if differences:
                name, (kept_value, other_value) = next(iter(differences.items()))
                more = f"; {', '.join(list(differences)[1:])} differ too" if len(differences) > 1 else ""
                report.conflict(item.file, item.record, ", ".join(differences),
                                f"same {same} as {kept_at}, which was kept (earlier), but {name} is {_short(other_value)} here,"
                                f" {_short(kept_value)} there{more}")
    return [collected.items[i] for i in sorted(kept_indices)]


def finish_event(event_fields: dict[str, Any], collected: CollectedReactions, report: LoadReport, path: Path | str) -> Event:
    """The event with repeated reactions removed (:func:`remove_repeats`), each repost and comment kept as
    its repost (:func:`merge_repost_comments`), and the rest sorted by time; an invalid source post raises
    naming ``path``."""
    reactions = [item.reaction for item in merge_repost_comments(_without_repeats(collected, report), report)]
    report.loaded = len(reactions)
    try:
        event = Event(reactions=reactions, **event_fields)
    except ValidationError as exc:
        raise DataFormatError(f"{path}: invalid event: {validation_message(exc)}") from exc
    return event.sorted_by_time()


def unusable_source(where: Path | str, report: LoadReport) -> DataFormatError:
    """The error for a source post whose required field was just rejected into ``report``."""
    last = report.rejected[-1]
    return DataFormatError(f"{where}: source post: field '{last.field}': {last.reason}")


def build_source(path: Path | str, **fields: Any) -> Post:
    """The source post; a schema violation raises :class:`DataFormatError` naming ``path``."""
    try:
        return Post(**fields)
    except ValidationError as exc:
        raise DataFormatError(f"{path}: source post: {validation_message(exc)}") from exc


def build_record(model: type, ctx: RecordContext, **fields: Any) -> Any:
    """Validate a Post/Reaction; a schema violation rejects the record, naming the field."""
    try:
        return model(**fields)
    except ValidationError as exc:
        ctx.reject(*first_problem(exc))
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

    def event_groups(self, path: Path) -> dict[str, str]:
        """The group of each event id: events that are posts about one story, which a split by event
        keeps on one side. By default every event is its own group."""
        return {event_id: event_id for event_id in self.list_events(path)}


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
