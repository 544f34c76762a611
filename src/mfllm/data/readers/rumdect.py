"""MF-LLM's rumdect Weibo JSON (Ma et al. 2016): one array per event, first item the source post."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfllm.data.readers.base import (
    WEIBO_DEFAULT_REPOST_TEXT, DatasetReader, RecordContext, build_record, detect_language, finish_event, read_json,
    register_reader, unknown_event,
)
from mfllm.data.schema import DataFormatError, Event, LoadReport, Post, Reaction, UserProfile


@register_reader
class RumdectReader(DatasetReader):
    """MF-LLM's rumdect Weibo JSON: one array per event file, first item the source post."""

    name = "rumdect"
    detect_order = 60

    @classmethod
    def detect(cls, path: Path) -> bool:
        files = [path] if path.is_file() else sorted(path.glob("*.json"))[:1]
        if not files or files[0].suffix != ".json":
            return False
        with files[0].open(encoding="utf-8") as handle:
            head = handle.read(4096)
        return head.lstrip().startswith("[") and '"uid"' in head and '"t"' in head

    @staticmethod
    def _files(path: Path) -> dict[str, Path]:
        files = [path] if path.is_file() else sorted(path.rglob("*.json"))
        return {f.stem: f for f in files}

    def list_events(self, path: Path) -> list[str]:
        return list(self._files(path))

    def _post(self, raw: Any, ctx: RecordContext, model: type, **extra: Any) -> Any:
        if not isinstance(raw, dict):
            ctx.reject("<record>", f"not an object: {type(raw).__name__}")
            return None
        post_id = ctx.optional_str(raw.get("mid", raw.get("id")), "mid")
        text = ctx.required_text(raw.get("text"), "text")
        timestamp = ctx.timestamp(raw.get("t"), "t")
        if post_id is None or text is None or timestamp is None:
            if post_id is None:
                ctx.reject("mid", "missing")
            return None
        user = UserProfile(
            user_id=ctx.optional_str(raw.get("uid"), "uid"), gender=ctx.gender(raw.get("gender")),
            location=ctx.optional_str(raw.get("user_location"), "user_location"),
            description=ctx.optional_str(raw.get("user_description"), "user_description"),
            followers_count=ctx.optional_int(raw.get("followers_count"), "followers_count"),
            friends_count=ctx.optional_int(raw.get("friends_count"), "friends_count"),
            bi_followers_count=ctx.optional_int(raw.get("bi_followers_count"), "bi_followers_count"),
            statuses_count=ctx.optional_int(raw.get("statuses_count"), "statuses_count"),
            verified=ctx.optional_bool(raw.get("verified"), "verified"),
            verified_type=ctx.optional_int(raw.get("verified_type"), "verified_type") if raw.get("verified_type", -1) != -1 else None,
            verified_reason=ctx.optional_str(raw.get("verified_reason"), "verified_reason"),
        )
        return build_record(
            model, ctx, post_id=post_id, text=text.strip() or WEIBO_DEFAULT_REPOST_TEXT, timestamp=timestamp, user=user,
            reposts_count=ctx.optional_int(raw.get("reposts_count"), "reposts_count"),
            comments_count=ctx.optional_int(raw.get("comments_count"), "comments_count"),
            likes_count=ctx.optional_int(raw.get("attitudes_count"), "attitudes_count"), **extra,
        )

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        file = self._files(path).get(event_id)
        if file is None:
            raise unknown_event(path, event_id)
        items = read_json(file)
        if not isinstance(items, list) or not items:
            raise DataFormatError(f"{file}: expected a non-empty JSON array (first item the source post)")
        report = LoadReport()
        source = self._post(items[0], RecordContext(report, file, "0 (source)"), Post)
        if source is None:
            raise DataFormatError(f"{file}: source post unusable: {report.rejected[-1]}")
        reactions = []
        for i, raw in enumerate(items[1:], start=1):
            ctx = RecordContext(report, file, str(i))
            parent = ctx.optional_str(raw.get("parent"), "parent") if isinstance(raw, dict) else None
            reaction = self._post(raw, ctx, Reaction, kind="repost", parent_id=parent or source.post_id)
            if reaction is not None:
                reactions.append(reaction)
        fields = dict(event_id=event_id, dataset=self.name, language=detect_language(source.text), source=source)
        return finish_event(fields, reactions, report, file), report
