"""Readers that turn dataset files into :class:`~mfllm.data.schema.Event` objects.

Every reader lists event ids cheaply and loads one event with a :class:`LoadReport`. A file that
cannot be parsed at all raises :class:`DataFormatError` naming the file; a record with an unusable
required field (id, text, time) is rejected and reported; an invalid optional field is set to
unknown and reported. Reactions come back sorted by time (stable for ties).

Formats: ``weibo-covid19``, ``ced``, ``pheme``, ``rumoureval``, ``rumdect`` and the generic
``jsonl`` / ``csv`` format documented in ``docs/data-format.md``.
"""

from __future__ import annotations

import csv
import html
import json
import re
from abc import ABC, abstractmethod
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from mfllm.data.schema import DataFormatError, Event, LoadReport, Post, Reaction, UserProfile

CST = timezone(timedelta(hours=8))
WEIBO_DEFAULT_REPOST_TEXT = "转发微博"
_TAG = re.compile(r"<[^>]+>")
_IMG_ALT = re.compile(r"<img[^>]*alt=\"?(\[[^\]\"]*\])\"?[^>]*>")
_CJK = re.compile(r"[\u4e00-\u9fff]")


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


def _finish(event_fields: dict[str, Any], reactions: list[Reaction], report: LoadReport, path: Path | str) -> Event:
    report.loaded = len(reactions)
    try:
        event = Event(reactions=reactions, **event_fields)
    except ValidationError as exc:
        raise DataFormatError(f"{path}: invalid source post: {exc}") from exc
    return event.sorted_by_time()


def _build(model: type, ctx: RecordContext, **fields: Any) -> Any:
    """Validate a Post/Reaction; a schema violation rejects the record, naming the field."""
    try:
        return model(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx.reject(".".join(str(p) for p in err["loc"]), err["msg"])
        return None


class DatasetReader(ABC):
    """Lists and loads the events of one dataset layout."""

    name: str

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


def _unknown_event(path: Path, event_id: str) -> KeyError:
    return KeyError(f"{path}: no event with id {event_id!r}")


class WeiboCovid19Reader(DatasetReader):
    """``weibo_covid19_rumor/final_dataset/{rumor,non-rumor}/<mid>/`` with full user profiles."""

    name = "weibo-covid19"

    @classmethod
    def detect(cls, path: Path) -> bool:
        root = cls._root(path)
        return (root / "rumor").is_dir() or (root / "non-rumor").is_dir()

    @staticmethod
    def _root(path: Path) -> Path:
        return path / "final_dataset" if (path / "final_dataset").is_dir() else path

    def _folders(self, path: Path) -> dict[str, Path]:
        root = self._root(path)
        folders = {}
        for label in ("rumor", "non-rumor"):
            if (root / label).is_dir():
                for folder in sorted((root / label).iterdir()):
                    if (folder / "detail.json").is_file():
                        folders[folder.name] = folder
        return folders

    def list_events(self, path: Path) -> list[str]:
        return list(self._folders(path))

    def _profile(self, raw: Any, ctx: RecordContext) -> UserProfile:
        if not isinstance(raw, dict):
            ctx.report.clear(ctx.file, ctx.record, "user", "missing user profile")
            return UserProfile()
        return UserProfile(
            user_id=ctx.optional_str(raw.get("id"), "user.id"),
            gender=ctx.gender(raw.get("gender"), "user.gender"),
            location=ctx.optional_str(raw.get("location"), "user.location"),
            description=ctx.optional_str(raw.get("description"), "user.description"),
            followers_count=ctx.optional_int(raw.get("followers_count"), "user.followers_count"),
            friends_count=ctx.optional_int(raw.get("follow_count", raw.get("friends_count")), "user.follow_count"),
            statuses_count=ctx.optional_int(raw.get("statuses_count"), "user.statuses_count"),
            verified=ctx.optional_bool(raw.get("verified"), "user.verified"),
            verified_type=ctx.optional_int(raw.get("verified_type"), "user.verified_type") if raw.get("verified_type", -1) != -1 else None,
            verified_reason=ctx.optional_str(raw.get("verified_reason"), "user.verified_reason"),
        )

    def _reaction(self, raw: Any, file: Path, index: str, kind: str, report: LoadReport, parent: str | None) -> Reaction | None:
        ctx = RecordContext(report, file, index)
        if not isinstance(raw, dict):
            ctx.reject("<record>", f"not an object: {type(raw).__name__}")
            return None
        post_id = ctx.optional_str(raw.get("id"), "id")
        if post_id is None:
            ctx.reject("id", "missing")
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
        return _build(
            Reaction, ctx, post_id=post_id, text=text, timestamp=timestamp, kind=kind, parent_id=parent,
            user=self._profile(raw.get("user"), ctx),
            reposts_count=ctx.optional_int(raw.get("reposts_count"), "reposts_count"),
            comments_count=ctx.optional_int(raw.get("comments_count"), "comments_count"),
            likes_count=ctx.optional_int(raw.get("like_count", raw.get("attitudes_count")), "like_count"),
        )

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        folder = self._folders(path).get(event_id)
        if folder is None:
            raise _unknown_event(path, event_id)
        report = LoadReport()
        detail_file = folder / "detail.json"
        detail = read_json(detail_file)
        if not isinstance(detail, dict):
            raise DataFormatError(f"{detail_file}: expected a JSON object, got {type(detail).__name__}")
        ctx = RecordContext(report, detail_file, "source")
        source_text = detail.get("raw_text") or clean_html(detail.get("text") or "")
        source_time = ctx.timestamp(detail.get("created_at"), "created_at")
        if source_time is None:
            raise DataFormatError(f"{detail_file}: source post: field 'created_at': {report.rejected[-1].reason}")
        source = Post(
            post_id=event_id, text=source_text, timestamp=source_time, user=self._profile(detail.get("user"), ctx),
            reposts_count=ctx.optional_int(detail.get("reposts_count"), "reposts_count"),
            comments_count=ctx.optional_int(detail.get("comments_count"), "comments_count"),
            likes_count=ctx.optional_int(detail.get("attitudes_count"), "attitudes_count"),
        )
        reactions: list[Reaction] = []
        for name, kind in (("comments.json", "comment"), ("reposts.json", "repost")):
            file = folder / name
            if not file.is_file():
                continue
            items = read_json(file)
            if not isinstance(items, list):
                raise DataFormatError(f"{file}: expected a JSON array, got {type(items).__name__}")
            for i, raw in enumerate(items):
                if kind == "repost" and isinstance(raw, dict) and str(raw.get("id")) == event_id:
                    continue  # the repost list starts with the source post itself
                reaction = self._reaction(raw, file, str(i), kind, report, event_id)
                if reaction is not None:
                    reactions.append(reaction)
                nested = raw.get("comments") if isinstance(raw, dict) else None
                for j, sub in enumerate(nested or []):
                    reply = self._reaction(sub, file, f"{i}.comments[{j}]", "reply", report, reaction.post_id if reaction else None)
                    if reply is not None:
                        reactions.append(reply)
        label = folder.parent.name
        fields = dict(event_id=event_id, dataset=self.name, language="zh", source=source, labels={"veracity": label})
        return _finish(fields, reactions, report, folder), report


class CEDReader(DatasetReader):
    """CED Weibo: ``original-microblog/<name>.json`` plus ``{rumor,non-rumor}-repost/<name>.json``."""

    name = "ced"

    @staticmethod
    def _root(path: Path) -> Path:
        return path / "CED_Dataset" if (path / "CED_Dataset").is_dir() else path

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (cls._root(path) / "original-microblog").is_dir()

    def _reaction_files(self, path: Path) -> dict[str, Path]:
        root = self._root(path)
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
            raise _unknown_event(path, event_id)
        source_file = self._root(path) / "original-microblog" / f"{event_id}.json"
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
            reaction = _build(
                Reaction, ctx, post_id=mid, text=text.strip() or WEIBO_DEFAULT_REPOST_TEXT, timestamp=timestamp,
                kind="repost", parent_id=ctx.optional_str(raw.get("parent"), "parent") or source.post_id,
                user=UserProfile(user_id=ctx.optional_str(raw.get("uid"), "uid")),
            )
            if reaction is not None:
                reactions.append(reaction)
        label = "rumor" if reaction_file.parent.name.startswith("rumor") else "non-rumor"
        fields = dict(event_id=event_id, dataset=self.name, language="zh", source=source, labels={"veracity": label})
        return _finish(fields, reactions, report, reaction_file), report


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


class PhemeReader(DatasetReader):
    """PHEME rumour-scheme threads: ``threads/en/<event>/<thread>/{source-tweets,reactions}``."""

    name = "pheme"

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
        return _build(
            model, ctx, post_id=post_id, text=html.unescape(text), timestamp=timestamp, user=_twitter_profile(raw.get("user"), ctx),
            reposts_count=ctx.optional_int(raw.get("retweet_count"), "retweet_count"),
            likes_count=ctx.optional_int(raw.get("favorite_count"), "favorite_count"), **extra,
        )

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        folder = self._threads(path).get(event_id)
        if folder is None:
            raise _unknown_event(path, event_id)
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
        return _finish(fields, reactions, report, folder), report


class RumourEvalReader(DatasetReader):
    """RumourEval 2017 processed: ``{traindev,test}/{posts.json,structures.json,post_id.txt,...}``."""

    name = "rumoureval"
    STANCES = ("support", "query", "deny", "comment")
    VERACITY = ("true", "false", "unverified")

    @staticmethod
    def _splits(path: Path) -> list[Path]:
        root = path / "semeval2017-task8" if (path / "semeval2017-task8").is_dir() else path
        candidates = [root / "traindev", root / "test", root]
        return [c for c in candidates if (c / "posts.json").is_file() and (c / "structures.json").is_file()]

    @classmethod
    def detect(cls, path: Path) -> bool:
        return bool(cls._splits(path))

    def list_events(self, path: Path) -> list[str]:
        ids: list[str] = []
        for split in self._splits(path):
            ids.extend(read_json(split / "structures.json").keys())
        return ids

    @staticmethod
    def _aligned_labels(split: Path, ids_name: str, labels_name: str, names: tuple[str, ...]) -> dict[str, str]:
        ids_file, labels_file = split / ids_name, split / labels_name
        if not ids_file.is_file() or not labels_file.is_file():
            return {}
        ids = ids_file.read_text().split()
        labels = labels_file.read_text().split()
        if len(ids) != len(labels):
            raise DataFormatError(f"{labels_file}: {len(labels)} labels for {len(ids)} ids in {ids_file}")
        return {i: names[int(label)] for i, label in zip(ids, labels)}

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        for split in self._splits(path):
            structures = read_json(split / "structures.json")
            if event_id in structures:
                break
        else:
            raise _unknown_event(path, event_id)
        posts = read_json(split / "posts.json")
        stance = self._aligned_labels(split, "post_id.txt", "post_label.txt", self.STANCES)
        veracity = self._aligned_labels(split, "thread_id.txt", "thread_label.txt", self.VERACITY)
        report = LoadReport()
        posts_file = split / "posts.json"

        def make(post_id: str, model: type, ctx: RecordContext, **extra: Any) -> Any:
            raw = posts.get(post_id)
            if not isinstance(raw, dict):
                ctx.reject("<record>", "not in posts.json (deleted tweet)")
                return None
            text, timestamp = ctx.required_text(raw.get("text"), "text"), ctx.timestamp(raw.get("time"), "time")
            if text is None or timestamp is None:
                return None
            labels = {"stance": stance[post_id]} if post_id in stance else {}
            return _build(model, ctx, post_id=post_id, text=text, timestamp=timestamp, labels=labels, **extra)

        source = make(event_id, Post, RecordContext(report, posts_file, event_id))
        if source is None:
            raise DataFormatError(f"{posts_file}: thread {event_id}: source post unusable: {report.rejected[-1]}")
        reactions = []

        def walk(tree: Any, parent: str) -> None:
            if not isinstance(tree, dict):
                return
            for child, subtree in tree.items():
                reaction = make(child, Reaction, RecordContext(report, posts_file, child),
                                kind="comment" if parent == event_id else "reply", parent_id=parent)
                if reaction is not None:
                    reactions.append(reaction)
                walk(subtree, child)

        walk(structures[event_id].get(event_id, {}), event_id)
        labels = {"veracity": veracity[event_id]} if event_id in veracity else {}
        fields = dict(event_id=event_id, dataset=self.name, language="en", source=source, labels={**labels, "split": split.name})
        return _finish(fields, reactions, report, split), report


class RumdectReader(DatasetReader):
    """MF-LLM's rumdect Weibo JSON: one array per event file, first item the source post."""

    name = "rumdect"

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
        return _build(
            model, ctx, post_id=post_id, text=text.strip() or WEIBO_DEFAULT_REPOST_TEXT, timestamp=timestamp, user=user,
            reposts_count=ctx.optional_int(raw.get("reposts_count"), "reposts_count"),
            comments_count=ctx.optional_int(raw.get("comments_count"), "comments_count"),
            likes_count=ctx.optional_int(raw.get("attitudes_count"), "attitudes_count"), **extra,
        )

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        file = self._files(path).get(event_id)
        if file is None:
            raise _unknown_event(path, event_id)
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
        return _finish(fields, reactions, report, file), report


GENERIC_USER_FIELDS = tuple(UserProfile.model_fields)


class GenericReader(DatasetReader):
    """The documented generic format: JSONL or CSV, one post per record, any number of events.

    Each record has ``event_id``, ``kind`` (``source``/``comment``/``repost``/``reply``),
    ``post_id``, ``text``, ``timestamp`` (unix seconds or ISO 8601) and optionally ``parent_id``,
    ``language`` (on the source), ``reposts_count``, ``comments_count``, ``likes_count``, the user
    either as a ``user`` object or as flat ``user_<field>`` columns, post annotations as a ``labels``
    object or ``label_<name>`` columns, and (on the source) event annotations as ``event_labels`` or
    ``event_label_<name>``. Each event needs exactly one ``source`` record.
    """

    name = "generic"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in {".jsonl", ".csv"}

    def _records(self, path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
        """(record name, record or None when unparseable, parse error)."""
        if path.suffix.lower() == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                for i, row in enumerate(csv.DictReader(handle), start=2):
                    if None in row:
                        yield f"line {i}", None, "more cells than header columns"
                    else:
                        yield f"line {i}", dict(row), ""
            return
        with path.open(encoding="utf-8") as handle:
            for i, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"line {i}", None, f"invalid JSON: {exc.msg}"
                    continue
                yield (f"line {i}", record, "") if isinstance(record, dict) else (f"line {i}", None, "not a JSON object")

    def list_events(self, path: Path) -> list[str]:
        seen: dict[str, None] = {}
        for _, record, _ in self._records(path):
            if record and record.get("event_id") not in (None, ""):
                seen[str(record["event_id"])] = None
        return list(seen)

    @staticmethod
    def _labels(record: dict[str, Any], key: str, prefix: str) -> dict[str, str]:
        """Labels from a ``key`` object (JSONL) or from ``prefix<name>`` columns (CSV)."""
        if isinstance(record.get(key), dict):
            return {k: str(v) for k, v in record[key].items()}
        return {k[len(prefix):]: str(v) for k, v in record.items() if k.startswith(prefix) and v not in (None, "")}

    def _user(self, record: dict[str, Any], ctx: RecordContext) -> UserProfile:
        raw = record.get("user") if isinstance(record.get("user"), dict) else {
            f: record.get(f"user_{f}") for f in GENERIC_USER_FIELDS
        }
        return UserProfile(
            user_id=ctx.optional_str(raw.get("user_id"), "user_id"), gender=ctx.gender(raw.get("gender"), "user_gender"),
            location=ctx.optional_str(raw.get("location"), "user_location"),
            description=ctx.optional_str(raw.get("description"), "user_description"),
            followers_count=ctx.optional_int(raw.get("followers_count"), "user_followers_count"),
            friends_count=ctx.optional_int(raw.get("friends_count"), "user_friends_count"),
            bi_followers_count=ctx.optional_int(raw.get("bi_followers_count"), "user_bi_followers_count"),
            statuses_count=ctx.optional_int(raw.get("statuses_count"), "user_statuses_count"),
            verified=ctx.optional_bool(raw.get("verified"), "user_verified"),
            verified_type=ctx.optional_int(raw.get("verified_type"), "user_verified_type"),
            verified_reason=ctx.optional_str(raw.get("verified_reason"), "user_verified_reason"),
        )

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        report = LoadReport()
        source: Post | None = None
        language: str | None = None
        labels: dict[str, str] = {}
        reactions: list[Reaction] = []
        found = False
        for name, record, error in self._records(path):
            ctx = RecordContext(report, path, name)
            if record is None:
                ctx.reject("<record>", error)
                continue
            if str(record.get("event_id")) != event_id:
                continue
            found = True
            kind = record.get("kind")
            if kind not in ("source", "comment", "repost", "reply"):
                ctx.reject("kind", f"must be source/comment/repost/reply, got {kind!r}")
                continue
            post_id = ctx.optional_str(record.get("post_id"), "post_id")
            text = ctx.required_text(record.get("text"), "text")
            timestamp = ctx.timestamp(record.get("timestamp"), "timestamp")
            if post_id is None:
                ctx.reject("post_id", "missing")
            if post_id is None or text is None or timestamp is None:
                continue
            post_labels = self._labels(record, "labels", "label_")
            common = dict(
                post_id=post_id, text=text, timestamp=timestamp, user=self._user(record, ctx), labels=post_labels,
                reposts_count=ctx.optional_int(record.get("reposts_count"), "reposts_count"),
                comments_count=ctx.optional_int(record.get("comments_count"), "comments_count"),
                likes_count=ctx.optional_int(record.get("likes_count"), "likes_count"),
            )
            if kind == "source":
                if source is not None:
                    ctx.reject("kind", f"second source record for event {event_id!r}")
                    continue
                source = _build(Post, ctx, **common)
                language = ctx.optional_str(record.get("language"), "language")
                labels = self._labels(record, "event_labels", "event_label_")
            else:
                reaction = _build(Reaction, ctx, kind=kind, parent_id=ctx.optional_str(record.get("parent_id"), "parent_id"), **common)
                if reaction is not None:
                    reactions.append(reaction)
        if not found:
            raise _unknown_event(path, event_id)
        if source is None:
            raise DataFormatError(f"{path}: event {event_id!r}: no usable record with kind 'source'")
        language = language or detect_language(source.text + "".join(r.text for r in reactions[:20]))
        if language not in ("zh", "en"):
            raise DataFormatError(f"{path}: event {event_id!r}: field 'language': must be zh or en, got {language!r}")
        fields = dict(event_id=event_id, dataset=self.name, language=language, source=source, labels=labels)
        return _finish(fields, reactions, report, path), report


READERS: dict[str, type[DatasetReader]] = {
    reader.name: reader
    for reader in (WeiboCovid19Reader, CEDReader, PhemeReader, RumourEvalReader, GenericReader, RumdectReader)
}


def get_reader(path: str | Path, data_format: str | None = None) -> DatasetReader:
    """The reader for ``path``: by name when ``data_format`` is given, else by detection."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if data_format is not None:
        if data_format not in READERS:
            raise ValueError(f"unknown data format {data_format!r}; choose from {', '.join(READERS)}")
        return READERS[data_format]()
    for reader in READERS.values():
        if reader.detect(path):
            return reader()
    raise DataFormatError(f"{path}: cannot tell the data format; pass one of {', '.join(READERS)} explicitly")


def load_event(path: str | Path, event_id: str | None = None, data_format: str | None = None) -> tuple[Event, LoadReport]:
    """Load one event (the first one when ``event_id`` is None) with its load report."""
    reader = get_reader(path, data_format)
    if event_id is None:
        ids = reader.list_events(Path(path))
        if not ids:
            raise DataFormatError(f"{path}: no events found")
        event_id = ids[0]
    return reader.load_event(Path(path), event_id)


def write_generic(events: list[Event], path: str | Path) -> None:
    """Write events in the generic format (``.jsonl`` or ``.csv`` by suffix); lossless round trip."""
    path = Path(path)
    rows = []
    for event in events:
        rows.append(_generic_row(event, event.source, "source", language=event.language, labels=event.source.labels,
                                 event_labels=event.labels))
        rows.extend(_generic_row(event, r, r.kind, parent_id=r.parent_id, labels=r.labels) for r in event.reactions)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        flat = [_flatten(row) for row in rows]
        columns = list(dict.fromkeys(key for row in flat for key in row))
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(flat)
    else:
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _generic_row(event: Event, post: Post, kind: str, **extra: Any) -> dict[str, Any]:
    row = {"event_id": event.event_id, "kind": kind, **post.model_dump(mode="json", exclude={"labels"}), **extra}
    return {k: v for k, v in row.items() if v is not None}


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in row.items() if k not in ("user", "labels", "event_labels")}
    flat.update({f"user_{k}": v for k, v in row.get("user", {}).items() if v is not None})
    flat.update({f"label_{k}": v for k, v in row.get("labels", {}).items()})
    flat.update({f"event_label_{k}": v for k, v in row.get("event_labels", {}).items()})
    return flat
