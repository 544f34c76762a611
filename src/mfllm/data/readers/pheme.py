"""PHEME rumour-scheme threads: full Twitter statuses for the source tweet and every reply."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from mfllm.data.readers.base import (
    CollectedReactions, DatasetReader, RecordContext, build_record, expect_type, finish_event, json_type, lone_surrogate, parse_json, read_json,
    read_text, register_reader, unknown_event, unusable_source,
)
from mfllm.data.schema import DataFormatError, Event, LoadReport, Post, Reaction, UserProfile

# profile field -> key in a Twitter v1.1 user object ("id" holds id_str when present)
_PROFILE_KEYS = {
    "user_id": "id", "location": "location", "description": "description", "followers_count": "followers_count",
    "friends_count": "friends_count", "statuses_count": "statuses_count", "verified": "verified",
}


def _decode_at(decoder: json.JSONDecoder, raw: str, pos: int, path: Path) -> tuple[Any, int]:
    """The JSON value starting at ``pos`` and where it ends; :class:`DataFormatError` naming ``path``."""
    try:
        value, end = decoder.raw_decode(raw, pos)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:
        raise DataFormatError(f"{path}: invalid JSON: nested too deeply") from exc
    problem = lone_surrogate(raw[pos:end], value)
    if problem:
        raise DataFormatError(f"{path}: invalid JSON: {problem}")
    return value, end


def read_json_objects(path: Path) -> list[Any]:
    """Parse a file holding one or more concatenated JSON values (a PHEME quirk)."""
    raw = read_text(path).strip()
    decoder, values, pos = json.JSONDecoder(), [], 0
    while pos < len(raw):
        value, pos = _decode_at(decoder, raw, pos, path)
        values.append(value)
        while pos < len(raw) and raw[pos].isspace():
            pos += 1
    return values


def read_json_objects_lenient(path: Path) -> list[dict[str, Any]]:
    """Every top-level JSON object in a file, whatever separates them (PHEME's annotation files
    hold comment lines and objects separated by commas or nothing)."""
    raw = read_text(path)
    decoder, records, pos = json.JSONDecoder(), [], raw.find("{")
    while pos >= 0:
        value, end = _decode_at(decoder, raw, pos, path)
        if isinstance(value, dict):
            records.append(value)
        pos = raw.find("{", end)
    return records


def _with_id(raw: Any) -> Any:
    """A Twitter object with ``id`` holding ``id_str`` when present (exact beyond 2**53)."""
    return {**raw, "id": raw.get("id_str", raw.get("id"))} if isinstance(raw, dict) else raw


def _twitter_profile(raw: Any, ctx: RecordContext) -> UserProfile:
    return ctx.profile(_with_id(raw), _PROFILE_KEYS, prefix="user.")


@register_reader
class PhemeReader(DatasetReader):
    """PHEME rumour-scheme threads: ``threads/en/<event>/<thread>/{source-tweets,reactions}``."""

    name = "pheme"
    detect_order = 30

    @staticmethod
    def _threads_root(path: Path) -> Path:
        for candidate in (path / "pheme-rumour-scheme-dataset" / "threads", path / "threads", path):
            if candidate.is_dir() and any(p.is_dir() for p in candidate.glob("*/*/*/source-tweets")):
                return candidate
        return path / "threads"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return cls._threads_root(path).is_dir()

    def _threads(self, path: Path) -> dict[str, Path]:
        return {p.parent.name: p.parent for p in sorted(self._threads_root(path).glob("*/*/*/source-tweets"))}

    # reply annotation "responsetype-vs-source" onto RumourEval's SDQC stance
    RESPONSE_TO_STANCE = {"agreed": "support", "disagreed": "deny", "appeal-for-more-information": "query", "comment": "comment"}

    def _annotations(self, path: Path) -> dict[str, dict[str, str]]:
        """Tweet-level annotations (``annotations/en-scheme-annotations.json``), keyed by tweet id."""
        file = self._threads_root(path).parent / "annotations" / "en-scheme-annotations.json"
        if not file.is_file():
            return {}
        cache = self.__dict__.setdefault("_annotation_cache", {})
        if file in cache:
            return cache[file]
        labels = cache[file] = {}
        for record in read_json_objects_lenient(file):
            tweet = str(record.get("tweetid"))
            entry = {}
            if record.get("responsetype-vs-source") in self.RESPONSE_TO_STANCE:
                entry["stance"] = self.RESPONSE_TO_STANCE[record["responsetype-vs-source"]]
            for key in ("support", "certainty", "evidentiality"):
                if isinstance(record.get(key), str):
                    entry[key] = record[key]
            labels[tweet] = entry
        return labels

    def list_events(self, path: Path) -> list[str]:
        return list(self._threads(path))

    def _tweet(self, raw: dict, ctx: RecordContext, model: type, **extra: Any) -> Any:
        required = ctx.post_fields(_with_id(raw), "id", "text", "created_at")
        if required is None:
            return None
        post_id, text, timestamp = required
        return build_record(
            model, ctx, post_id=post_id, text=html.unescape(text), timestamp=timestamp, user=_twitter_profile(raw.get("user"), ctx),
            reposts_count=ctx.optional_int(raw.get("retweet_count"), "retweet_count"),
            likes_count=ctx.optional_int(raw.get("favorite_count"), "favorite_count"), **extra,
        )

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        folder = self._threads(path).get(event_id)
        if folder is None:
            raise unknown_event(path, event_id)
        report = LoadReport()
        source_file = folder / "source-tweets" / "tweet.json"
        source_text = read_text(source_file) if source_file.is_file() else ""
        if not source_text.strip():
            raise DataFormatError(f"{source_file}: source tweet missing or empty")
        raw_source = expect_type(parse_json(source_text, str(source_file)), dict, str(source_file))
        source = self._tweet(raw_source, RecordContext(report, source_file, "source"), Post)
        if source is None:
            raise unusable_source(source_file, report)
        reactions = CollectedReactions()
        annotations = self._annotations(path)
        for file in sorted((folder / "reactions").glob("*.json")):
            records = read_json_objects(file)
            if not records:
                report.reject(str(file), "0", "<record>", "empty file: no reply tweet")
            for k, raw in enumerate(records):
                ctx = RecordContext(report, file, str(k))
                if not isinstance(raw, dict):
                    ctx.reject("<record>", f"not an object: {json_type(raw)}")
                    continue
                parent = ctx.optional_str(raw.get("in_reply_to_status_id_str", raw.get("in_reply_to_status_id")), "in_reply_to_status_id")
                kind = "comment" if parent in (None, source.post_id) else "reply"
                annotation = annotations.get(str(raw.get("id_str", raw.get("id"))), {})
                reaction = self._tweet(raw, ctx, Reaction, kind=kind, parent_id=parent or source.post_id, labels=annotation)
                reactions.add(reaction, file, str(k))
        labels = {}
        if (folder / "annotation.json").is_file():
            annotation = read_json(folder / "annotation.json", dict)
            labels = {k: str(v) for k, v in annotation.items() if k in ("is_rumour", "category", "misinformation", "true")}
        labels["event"] = folder.parent.name
        fields = dict(event_id=event_id, dataset=self.name, language="en", source=source, labels=labels)
        return finish_event(fields, reactions, report, folder), report
