"""CED (Chinese Early Detection) Weibo: source posts plus one reaction list per event."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from mfllm.data.readers.base import (
    CST, WEIBO_DEFAULT_REPOST_TEXT, CollectedReactions, DatasetReader, RecordContext, build_record, build_source, finish_event, json_type,
    read_json, register_reader, subfolder_or_self, unknown_event, unusable_source,
)
from mfllm.data.schema import Event, LoadReport, Reaction, UserProfile

# profile field -> key in the source author's user object ("empty" when unknown)
_PROFILE_KEYS = {
    "gender": "gender", "location": "location", "followers_count": "followers", "friends_count": "friends",
    "statuses_count": "messages", "verified": "verified",
}


@register_reader
class CEDReader(DatasetReader):
    """CED Weibo: ``original-microblog/<name>.json`` plus ``{rumor,non-rumor}-repost/<name>.json``."""

    name = "ced"
    detect_order = 20

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (subfolder_or_self(path, "CED_Dataset") / "original-microblog").is_dir()

    def _reaction_files(self, path: Path) -> dict[str, Path]:
        root = subfolder_or_self(path, "CED_Dataset")
        files = {}
        for label in ("rumor-repost", "non-rumor-repost"):
            if (root / label).is_dir():
                for file in sorted((root / label).glob("*.json")):
                    files[file.stem] = file
        return files

    def list_events(self, path: Path) -> list[str]:
        return list(self._reaction_files(path))

    @staticmethod
    def _date(value: Any, source_year: int, ctx: RecordContext) -> float | None:
        """A reaction's time; ``MM月DD日 HH:MM`` carries no year, so the source post's is used."""
        if isinstance(value, str) and "月" in value:
            try:
                value = datetime.strptime(f"{source_year}年{value}", "%Y年%m月%d日 %H:%M").strftime("%Y-%m-%d %H:%M:%S")
            except ValueError:
                ctx.reject("date", f"unparseable time: {value!r}")
                return None
        return ctx.timestamp(value, "date", tz=CST)

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        reaction_file = self._reaction_files(path).get(event_id)
        if reaction_file is None:
            raise unknown_event(path, event_id)
        source_file = subfolder_or_self(path, "CED_Dataset") / "original-microblog" / f"{event_id}.json"
        report = LoadReport()
        raw_source = read_json(source_file, dict)
        ctx = RecordContext(report, source_file, "source")
        source_time = ctx.timestamp(raw_source.get("time"), "time")
        if source_time is None:
            raise unusable_source(source_file, report)
        raw_user = raw_source.get("user")
        source = build_source(
            source_file, post_id=event_id.split("_")[1] if event_id.count("_") >= 2 else event_id,
            text=raw_source.get("text") or "", timestamp=source_time,
            user=ctx.profile(None if raw_user == "empty" else raw_user, _PROFILE_KEYS, prefix="user."),
            reposts_count=ctx.optional_int(raw_source.get("reposts"), "reposts"),
            comments_count=ctx.optional_int(raw_source.get("comments"), "comments"),
            likes_count=ctx.optional_int(raw_source.get("likes"), "likes"),
        )
        source_year = datetime.fromtimestamp(source_time, CST).year
        reactions = CollectedReactions()
        for i, raw in enumerate(read_json(reaction_file, list)):
            ctx = RecordContext(report, reaction_file, str(i))
            if not isinstance(raw, dict):
                ctx.reject("<record>", f"not an object: {json_type(raw)}")
                continue
            mid = ctx.required_id(raw.get("mid"), "mid")
            if mid is None:
                continue
            ctx.record = f"{i} (mid {mid})"
            timestamp = self._date(raw.get("date"), source_year, ctx)
            text = ctx.required_text(raw.get("text"), "text")
            if timestamp is None or text is None:
                continue
            reaction = build_record(
                Reaction, ctx, post_id=mid, text=text.strip() or WEIBO_DEFAULT_REPOST_TEXT, timestamp=timestamp,
                kind="repost", parent_id=ctx.optional_str(raw.get("parent"), "parent") or source.post_id,
                user=UserProfile(user_id=ctx.optional_str(raw.get("uid"), "uid")),
            )
            reactions.add(reaction, reaction_file, str(i))
        label = "rumor" if reaction_file.parent.name.startswith("rumor") else "non-rumor"
        fields = dict(event_id=event_id, dataset=self.name, language="zh", source=source, labels={"veracity": label})
        return finish_event(fields, reactions, report, reaction_file), report
