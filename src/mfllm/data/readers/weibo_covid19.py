"""The COVID-19 Weibo rumour dataset: one folder per microblog with comments, reposts and full user profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mfllm.data.readers.base import (
    WEIBO_DEFAULT_REPOST_TEXT, CollectedReactions, DatasetReader, RecordContext, build_record, build_source, clean_html, finish_event,
    json_type, read_json, register_reader, subfolder_or_self, unknown_event, unusable_source,
)
from mfllm.data.schema import Event, LoadReport, Reaction, UserProfile

# profile field -> key in Weibo's user object
_PROFILE_KEYS = {
    "user_id": "id", "gender": "gender", "location": "location", "description": "description",
    "followers_count": "followers_count", "friends_count": "follow_count", "statuses_count": "statuses_count",
    "verified": "verified", "verified_type": "verified_type", "verified_reason": "verified_reason",
}


@register_reader
class WeiboCovid19Reader(DatasetReader):
    """``weibo_covid19_rumor/final_dataset/{rumor,non-rumor}/<mid>/`` with full user profiles."""

    name = "weibo-covid19"
    detect_order = 10

    @classmethod
    def detect(cls, path: Path) -> bool:
        root = subfolder_or_self(path, "final_dataset")
        return (root / "rumor").is_dir() or (root / "non-rumor").is_dir()

    def _folders(self, path: Path) -> dict[str, Path]:
        root = subfolder_or_self(path, "final_dataset")
        folders = {}
        for label in ("rumor", "non-rumor"):
            if (root / label).is_dir():
                for folder in sorted((root / label).iterdir()):
                    if (folder / "detail.json").is_file():
                        folders[folder.name] = folder
        return folders

    def list_events(self, path: Path) -> list[str]:
        return list(self._folders(path))

    def event_groups(self, path: Path) -> dict[str, str]:
        """Rumour microblogs about one story (``final_dataset/same_event.txt``, a JSON list of lists of ids)
        share a group, named by its first id; every other microblog is its own group."""
        groups = {event_id: event_id for event_id in self.list_events(path)}
        listing = subfolder_or_self(path, "final_dataset") / "same_event.txt"
        if listing.is_file():
            same = json.loads(listing.read_text(encoding="utf-8"))
            if not isinstance(same, list) or not all(isinstance(group, list) and group for group in same):
                raise ValueError(f"{listing}: expected a JSON list of non-empty lists of microblog ids")
            for group in same:
                for member in group:
                    if str(member) in groups:
                        groups[str(member)] = str(group[0])
        return groups

    @staticmethod
    def _profile(raw: Any, ctx: RecordContext) -> UserProfile:
        if raw is None:
            ctx.report.clear(ctx.file, ctx.record, "user", "missing user profile")
            return UserProfile()
        if isinstance(raw, dict) and "follow_count" not in raw:  # older objects name the count friends_count
            raw = {**raw, "follow_count": raw.get("friends_count")}
        return ctx.profile(raw, _PROFILE_KEYS, prefix="user.", unverified_type=-1)

    def _reaction(self, raw: Any, file: Path, index: str, kind: str, report: LoadReport, parent: str | None) -> Reaction | None:
        ctx = RecordContext(report, file, index)
        if not isinstance(raw, dict):
            ctx.reject("<record>", f"not an object: {json_type(raw)}")
            return None
        post_id = ctx.required_id(raw.get("id"), "id")
        if post_id is None:
            return None
        ctx.record = f"{index} (id {post_id})"
        field_name = "raw_text" if kind == "repost" and "raw_text" in raw else "text"
        text = ctx.required_text(raw.get(field_name), field_name)
        if text is not None:  # keep the user's own words, not the quoted "//@other: ..." repost chain
            full = clean_html(text)
            own = full.split("//@")[0].strip()
            text = own or (WEIBO_DEFAULT_REPOST_TEXT if kind == "repost" else full)
        if kind == "repost":
            parent = ctx.optional_str(raw.get("pid"), "pid") or parent
        timestamp = ctx.timestamp(raw.get("created_at"), "created_at")
        if text is None or timestamp is None:
            return None
        return build_record(
            Reaction, ctx, post_id=post_id, text=text, timestamp=timestamp, kind=kind, parent_id=parent,
            user=self._profile(raw.get("user"), ctx),
            reposts_count=ctx.optional_int(raw.get("reposts_count"), "reposts_count"),
            comments_count=ctx.optional_int(raw.get("comments_count"), "comments_count"),
            likes_count=ctx.optional_int(raw.get("like_count", raw.get("attitudes_count")), "like_count"),
        )

    @staticmethod
    def _replies(raw: Any, ctx: RecordContext) -> list[Any]:
        """A comment's nested replies (``false`` when there are none)."""
        nested = raw.get("comments") if isinstance(raw, dict) else None
        if isinstance(nested, list):
            return nested
        if nested is not None and nested is not False:
            ctx.reject("comments", f"expected a list of replies, got {json_type(nested)}")
        return []

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        folder = self._folders(path).get(event_id)
        if folder is None:
            raise unknown_event(path, event_id)
        report = LoadReport()
        detail_file = folder / "detail.json"
        detail = read_json(detail_file, dict)
        ctx = RecordContext(report, detail_file, "source")
        html_text = detail.get("text")
        source_text = detail.get("raw_text") or (clean_html(html_text) if isinstance(html_text, str) else html_text or "")
        source_time = ctx.timestamp(detail.get("created_at"), "created_at")
        if source_time is None:
            raise unusable_source(detail_file, report)
        source = build_source(
            detail_file, post_id=event_id, text=source_text, timestamp=source_time, user=self._profile(detail.get("user"), ctx),
            reposts_count=ctx.optional_int(detail.get("reposts_count"), "reposts_count"),
            comments_count=ctx.optional_int(detail.get("comments_count"), "comments_count"),
            likes_count=ctx.optional_int(detail.get("attitudes_count"), "attitudes_count"),
        )
        reactions = CollectedReactions()
        for name, kind in (("comments.json", "comment"), ("reposts.json", "repost")):
            file = folder / name
            if not file.is_file():
                continue
            for i, raw in enumerate(read_json(file, list)):
                if kind == "repost" and isinstance(raw, dict) and str(raw.get("id")) == event_id:
                    continue  # the repost list starts with the source post itself
                reaction = self._reaction(raw, file, str(i), kind, report, event_id)
                reactions.add(reaction, file, str(i))
                for j, sub in enumerate(self._replies(raw, RecordContext(report, file, str(i)))):
                    reply = self._reaction(sub, file, f"{i}.comments[{j}]", "reply", report, reaction.post_id if reaction else None)
                    reactions.add(reply, file, f"{i}.comments[{j}]")
        label = folder.parent.name
        fields = dict(event_id=event_id, dataset=self.name, language="zh", source=source, labels={"veracity": label})
        return finish_event(fields, reactions, report, folder), report
