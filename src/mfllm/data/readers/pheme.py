"""PHEME rumour-scheme threads: full Twitter statuses for the source tweet and every reply."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from mfllm.data.readers.base import (
    DatasetReader, RecordContext, build_record, finish_event, read_json, register_reader, unknown_event,
)
from mfllm.data.schema import DataFormatError, Event, LoadReport, Post, Reaction, UserProfile

def read_json_objects(path: Path) -> list[Any]:
    """Parse a file holding one or more concatenated JSON values (a PHEME quirk)."""
    raw = path.read_text(encoding="utf-8").strip()
    decoder, values, pos = json.JSONDecoder(), [], 0
    while pos < len(raw):
        try:
            value, pos = decoder.raw_decode(raw, pos)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
        values.append(value)
        while pos < len(raw) and raw[pos].isspace():
            pos += 1
    return values


def read_json_objects_lenient(path: Path) -> list[dict[str, Any]]:
    """Every top-level JSON object in a file, whatever separates them (PHEME's annotation files
    hold comment lines and objects separated by commas or nothing)."""
    raw = path.read_text(encoding="utf-8")
    decoder, records, pos = json.JSONDecoder(), [], raw.find("{")
    while pos >= 0:
        try:
            value, end = decoder.raw_decode(raw, pos)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
        if isinstance(value, dict):
            records.append(value)
        pos = raw.find("{", end)
    return records


def _twitter_profile(raw: Any, ctx: RecordContext) -> UserProfile:
    if not isinstance(raw, dict):
        return UserProfile()
    return UserProfile(
        user_id=ctx.optional_str(raw.get("id_str", raw.get("id")), "user.id"),
        location=ctx.optional_str(raw.get("location"), "user.location"),
        description=ctx.optional_str(raw.get("description"), "user.description"),
        followers_count=ctx.optional_int(raw.get("followers_count"), "user.followers_count"),
        friends_count=ctx.optional_int(raw.get("friends_count"), "user.friends_count"),
        statuses_count=ctx.optional_int(raw.get("statuses_count"), "user.statuses_count"),
        verified=ctx.optional_bool(raw.get("verified"), "user.verified"),
    )


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
        post_id = ctx.optional_str(raw.get("id_str", raw.get("id")), "id")
        text = ctx.required_text(raw.get("text"), "text")
        timestamp = ctx.timestamp(raw.get("created_at"), "created_at")
        if post_id is None or text is None or timestamp is None:
            if post_id is None:
                ctx.reject("id", "missing")
            return None
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
        if not source_file.is_file() or not source_file.read_text(encoding="utf-8").strip():
            raise DataFormatError(f"{source_file}: source tweet missing or empty")
        raw_source = read_json(source_file)
        source = self._tweet(raw_source, RecordContext(report, source_file, "source"), Post)
        if source is None:
            raise DataFormatError(f"{source_file}: invalid source tweet: {report.rejected[-1]}")
        reactions = []
        annotations = self._annotations(path)
        for file in sorted((folder / "reactions").glob("*.json")):
            for k, raw in enumerate(read_json_objects(file)):
                ctx = RecordContext(report, file, str(k))
                if not isinstance(raw, dict):
                    ctx.reject("<record>", "not an object")
                    continue
                parent = ctx.optional_str(raw.get("in_reply_to_status_id_str", raw.get("in_reply_to_status_id")), "in_reply_to_status_id")
                kind = "comment" if parent in (None, source.post_id) else "reply"
                annotation = annotations.get(str(raw.get("id_str", raw.get("id"))), {})
                reaction = self._tweet(raw, ctx, Reaction, kind=kind, parent_id=parent or source.post_id, labels=annotation)
                if reaction is not None:
                    reactions.append(reaction)
        labels = {}
        if (folder / "annotation.json").is_file():
            annotation = read_json(folder / "annotation.json")
            labels = {k: str(v) for k, v in annotation.items() if k in ("is_rumour", "category", "misinformation", "true")}
        labels["event"] = folder.parent.name
        fields = dict(event_id=event_id, dataset=self.name, language="en", source=source, labels=labels)
        return finish_event(fields, reactions, report, folder), report
