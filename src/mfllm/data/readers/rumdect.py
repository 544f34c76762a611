"""MF-LLM's rumdect Weibo JSON (Ma et al. 2016): one array per event, first item the source post."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfllm.data.readers.base import (
    WEIBO_DEFAULT_REPOST_TEXT, CollectedReactions, DatasetReader, RecordContext, build_record, detect_language, finish_event, json_type,
    read_json, register_reader, unknown_event, unusable_source,
)
from mfllm.data.schema import DataFormatError, Event, LoadReport, Post, Reaction

# profile field -> key in a rumdect post (user fields are flat on the post)
_PROFILE_KEYS = {
    "user_id": "uid", "gender": "gender", "location": "user_location", "description": "user_description",
    "followers_count": "followers_count", "friends_count": "friends_count", "bi_followers_count": "bi_followers_count",
    "statuses_count": "statuses_count", "verified": "verified", "verified_type": "verified_type",
    "verified_reason": "verified_reason",
}


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
        try:
            with files[0].open(encoding="utf-8") as handle:
                head = handle.read(4096)
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"{files[0]}: not UTF-8 text: {exc.reason} in its first 4096 characters") from exc
        except OSError as exc:
            raise DataFormatError(f"{files[0]}: cannot read file: {exc.strerror or exc}") from exc
        return head.lstrip().startswith("[") and '"uid"' in head and '"t"' in head

    @staticmethod
    def _files(path: Path) -> dict[str, Path]:
        files = [path] if path.is_file() else sorted(path.rglob("*.json"))
        return {f.stem: f for f in files}

    def list_events(self, path: Path) -> list[str]:
        return list(self._files(path))

    def _post(self, raw: Any, ctx: RecordContext, model: type, **extra: Any) -> Any:
        if not isinstance(raw, dict):
            ctx.reject("<record>", f"not an object: {json_type(raw)}")
            return None
        required = ctx.post_fields({**raw, "mid": raw.get("mid", raw.get("id"))}, "mid", "text", "t")
        if required is None:
            return None
        post_id, text, timestamp = required
        user = ctx.profile(raw, _PROFILE_KEYS, unverified_type=-1)
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
            raise unusable_source(file, report)
        reactions = CollectedReactions()
        for i, raw in enumerate(items[1:], start=1):
            ctx = RecordContext(report, file, str(i))
            parent = ctx.optional_str(raw.get("parent"), "parent") if isinstance(raw, dict) else None
            reaction = self._post(raw, ctx, Reaction, kind="repost", parent_id=parent or source.post_id)
            reactions.add(reaction, file, str(i))
        fields = dict(event_id=event_id, dataset=self.name, language=detect_language(source.text), source=source)
        return finish_event(fields, reactions, report, file), report
