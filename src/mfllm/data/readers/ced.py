"""CED (Chinese Early Detection) Weibo: source posts plus one reaction list per event."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from mfllm.data.readers.base import (
    CST, WEIBO_DEFAULT_REPOST_TEXT, DatasetReader, RecordContext, build_record, finish_event, read_json, register_reader,
    subfolder_or_self, unknown_event,
)
from mfllm.data.schema import DataFormatError, Event, LoadReport, Post, Reaction, UserProfile


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

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        reaction_file = self._reaction_files(path).get(event_id)
        if reaction_file is None:
            raise unknown_event(path, event_id)
        source_file = subfolder_or_self(path, "CED_Dataset") / "original-microblog" / f"{event_id}.json"
        report = LoadReport()
        raw_source = read_json(source_file)
        if not isinstance(raw_source, dict):
            raise DataFormatError(f"{source_file}: expected a JSON object")
        ctx = RecordContext(report, source_file, "source")
        source_time = ctx.timestamp(raw_source.get("time"), "time")
        if source_time is None:
            raise DataFormatError(f"{source_file}: source post: field 'time': {report.rejected[-1].reason}")
        raw_user = raw_source.get("user") if isinstance(raw_source.get("user"), dict) else {}
        source = Post(
            post_id=event_id.split("_")[1] if event_id.count("_") >= 2 else event_id,
            text=raw_source.get("text") or "", timestamp=source_time,
            user=UserProfile(
                gender=ctx.gender(raw_user.get("gender")), location=ctx.optional_str(raw_user.get("location"), "user.location"),
                followers_count=ctx.optional_int(raw_user.get("followers"), "user.followers"),
                friends_count=ctx.optional_int(raw_user.get("friends"), "user.friends"),
                statuses_count=ctx.optional_int(raw_user.get("messages"), "user.messages"),
                verified=ctx.optional_bool(raw_user.get("verified"), "user.verified"),
            ),
            reposts_count=ctx.optional_int(raw_source.get("reposts"), "reposts"),
            comments_count=ctx.optional_int(raw_source.get("comments"), "comments"),
            likes_count=ctx.optional_int(raw_source.get("likes"), "likes"),
        )
        source_year = datetime.fromtimestamp(source_time, CST).year
        items = read_json(reaction_file)
        if not isinstance(items, list):
            raise DataFormatError(f"{reaction_file}: expected a JSON array")
        reactions = []
        for i, raw in enumerate(items):
            ctx = RecordContext(report, reaction_file, str(i))
            if not isinstance(raw, dict):
                ctx.reject("<record>", "not an object")
                continue
            mid = ctx.optional_str(raw.get("mid"), "mid")
            if mid is None:
                ctx.reject("mid", "missing")
                continue
            ctx.record = f"{i} (mid {mid})"
            date = raw.get("date")
            if isinstance(date, str) and "月" in date:  # "MM月DD日 HH:MM" carries no year: use the source's
                date = datetime.strptime(f"{source_year}年{date}", "%Y年%m月%d日 %H:%M").strftime("%Y-%m-%d %H:%M:%S")
            timestamp = ctx.timestamp(date, "date", tz=CST)
            text = ctx.required_text(raw.get("text"), "text")
            if timestamp is None or text is None:
                continue
            reaction = build_record(
                Reaction, ctx, post_id=mid, text=text.strip() or WEIBO_DEFAULT_REPOST_TEXT, timestamp=timestamp,
                kind="repost", parent_id=ctx.optional_str(raw.get("parent"), "parent") or source.post_id,
                user=UserProfile(user_id=ctx.optional_str(raw.get("uid"), "uid")),
            )
            if reaction is not None:
                reactions.append(reaction)
        label = "rumor" if reaction_file.parent.name.startswith("rumor") else "non-rumor"
        fields = dict(event_id=event_id, dataset=self.name, language="zh", source=source, labels={"veracity": label})
        return finish_event(fields, reactions, report, reaction_file), report
