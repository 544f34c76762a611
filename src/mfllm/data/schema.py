"""The event schema every loader produces and every other layer consumes.

An :class:`Event` is a source post (the topic) plus its reactions sorted by time. Each
:class:`Reaction` carries the reacting user's profile (the agent's private state), the
action text, its kind, its parent and its engagement counts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_COUNT = 10**12
"""The largest follower, post or engagement count taken as real (more than any platform has users or posts)."""
ReactionKind = Literal["comment", "repost", "reply"]
Language = Literal["zh", "en"]


class UserProfile(BaseModel):
    """Public profile of the user who wrote a post. ``None`` means the field is truly absent."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None
    gender: Literal["male", "female"] | None = None
    location: str | None = None
    description: str | None = None
    followers_count: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    friends_count: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    bi_followers_count: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    statuses_count: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    verified: bool | None = None
    verified_type: int | None = None
    verified_reason: str | None = None


class Post(BaseModel):
    """A source post or a reaction."""

    model_config = ConfigDict(extra="forbid")

    post_id: str
    text: str
    timestamp: float = Field(description="Unix seconds (UTC).", allow_inf_nan=False)
    user: UserProfile = Field(default_factory=UserProfile)
    reposts_count: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    comments_count: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    likes_count: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    labels: dict[str, str] = Field(default_factory=dict, description="Gold annotations, e.g. stance.")

    @property
    def engagement(self) -> int:
        """Reposts + comments + likes the post received (absent counts as 0)."""
        return sum(c or 0 for c in (self.reposts_count, self.comments_count, self.likes_count))


class Reaction(Post):
    """One user's action on the event: a comment, a repost or a reply to another reaction."""

    kind: ReactionKind
    parent_id: str | None = None


class Event(BaseModel):
    """A source post and its time-ordered reactions."""

    model_config = ConfigDict(extra="forbid")

    event_id: str
    dataset: str
    language: Language
    source: Post
    reactions: list[Reaction]
    labels: dict[str, str] = Field(default_factory=dict, description="Event-level labels, e.g. veracity.")

    def sorted_by_time(self) -> Event:
        """A copy with reactions sorted by timestamp; ties keep their original order (stable)."""
        ordered = sorted(self.reactions, key=lambda r: r.timestamp)
        return self.model_copy(update={"reactions": ordered})

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of the event, recorded in run manifests."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RejectedRecord:
    """A record a loader could not use, with where it came from and why."""

    file: str
    record: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: record {self.record}: field '{self.field}': {self.reason}"


@dataclass
class LoadReport:
    """What a loader kept and what it rejected. Nothing is dropped without a line here.

    ``rejected`` records were left out (a required field was unusable); ``cleared`` records were
    kept with one optional field set to unknown because its value was invalid; ``repeats`` records
    were left out because they repeat a kept reaction (same id); ``conflicts`` are the repeats
    whose content differs from the kept reaction (one line each, naming the differing fields);
    ``repost_comments`` are comments left out because they are the comment half of a "repost and
    comment" (Weibo records one action as both: the repost is kept).
    """

    loaded: int = 0
    rejected: list[RejectedRecord] = field(default_factory=list)
    cleared: list[RejectedRecord] = field(default_factory=list)
    repeats: list[RejectedRecord] = field(default_factory=list)
    conflicts: list[RejectedRecord] = field(default_factory=list)
    repost_comments: list[RejectedRecord] = field(default_factory=list)

    def reject(self, file: str, record: str, field_name: str, reason: str) -> None:
        self.rejected.append(RejectedRecord(file, record, field_name, reason))

    def clear(self, file: str, record: str, field_name: str, reason: str) -> None:
        self.cleared.append(RejectedRecord(file, record, field_name, reason))

    def repeat(self, file: str, record: str, field_name: str, reason: str) -> None:
        self.repeats.append(RejectedRecord(file, record, field_name, reason))

    def conflict(self, file: str, record: str, field_name: str, reason: str) -> None:
        self.conflicts.append(RejectedRecord(file, record, field_name, reason))

    def repost_comment(self, file: str, record: str, field_name: str, reason: str) -> None:
        self.repost_comments.append(RejectedRecord(file, record, field_name, reason))

    def merge(self, other: LoadReport) -> None:
        self.loaded += other.loaded
        self.rejected.extend(other.rejected)
        self.cleared.extend(other.cleared)
        self.repeats.extend(other.repeats)
        self.conflicts.extend(other.conflicts)
        self.repost_comments.extend(other.repost_comments)

    def reasons(self) -> dict[str, int]:
        """Counts of rejected records per (field, reason)."""
        counts: dict[str, int] = {}
        for rec in self.rejected:
            key = f"{rec.field}: {rec.reason}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def summary(self) -> str:
        text = f"{self.loaded} reactions loaded, {len(self.rejected)} rejected"
        if self.rejected:
            text += " (" + ", ".join(f"{n} × {why}" for why, n in sorted(self.reasons().items())) + ")"
        if self.cleared:
            text += f", {len(self.cleared)} invalid optional fields set to unknown"
        if self.repeats:
            text += f", {len(self.repeats)} repeated reactions removed ({len(self.conflicts)} with conflicting content)"
        if self.repost_comments:
            text += f", {len(self.repost_comments)} repost-and-comment pairs kept as their repost"
        return text


class DataFormatError(ValueError):
    """A file cannot be read at all (corrupt, truncated, wrong format)."""
