"""Tiny datasets in each reader's native layout, for the bad-input and fuzz tests of the readers.

``FORMATS[name].write(root, source, reactions)`` writes one event whose source post and reactions
are given as native records (dicts shaped like the upstream files) and returns the dataset path to
load and the event id; ``source()`` and ``reaction(i)`` give valid native records to start from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

T0 = 1_577_836_800  # 2020-01-01 UTC


def _dump(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def _weibo_date(seconds: int) -> str:
    from datetime import datetime, timedelta, timezone

    return datetime.fromtimestamp(seconds, timezone(timedelta(hours=8))).strftime("%a %b %d %H:%M:%S %z %Y")


def _twitter_date(seconds: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%a %b %d %H:%M:%S %z %Y")


def _weibo(root: Path, source: Any, reactions: list[Any]) -> tuple[Path, str]:
    folder = root / "final_dataset" / "rumor" / "100"
    _dump(folder / "detail.json", source)
    _dump(folder / "comments.json", reactions)
    return root, "100"


def _ced(root: Path, source: Any, reactions: list[Any]) -> tuple[Path, str]:
    _dump(root / "CED_Dataset" / "original-microblog" / "1_abc_2.json", source)
    _dump(root / "CED_Dataset" / "rumor-repost" / "1_abc_2.json", reactions)
    return root, "1_abc_2"


def _pheme(root: Path, source: Any, reactions: list[Any]) -> tuple[Path, str]:
    thread = root / "threads" / "en" / "ebola" / "500"
    _dump(thread / "source-tweets" / "tweet.json", source)
    (thread / "reactions").mkdir(parents=True)
    for k, reaction in enumerate(reactions):
        _dump(thread / "reactions" / f"{600 + k}.json", reaction)
    _dump(thread / "annotation.json", {"is_rumour": "rumour", "category": "x", "misinformation": 0, "true": 1})
    return root, "500"


def _rumoureval(root: Path, source: Any, reactions: list[Any]) -> tuple[Path, str]:
    """``reactions`` are posts.json entries; each replies to the one before it (a chain), and every
    third one is absent from posts.json as a deleted tweet would be."""
    split = root / "traindev"
    posts = {"500": source} | {str(600 + k): r for k, r in enumerate(reactions) if k % 3 != 2}
    tree: dict[str, Any] = {}
    for k in reversed(range(len(reactions))):
        tree = {str(600 + k): tree or []}
    _dump(split / "posts.json", posts)
    _dump(split / "structures.json", {"500": {"500": tree}})
    ids = list(posts)
    (split / "post_id.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    (split / "post_label.txt").write_text("\n".join(str(k % 4) for k in range(len(ids))) + "\n", encoding="utf-8")
    (split / "thread_id.txt").write_text("500\n", encoding="utf-8")
    (split / "thread_label.txt").write_text("1\n", encoding="utf-8")
    return root, "500"


def _rumdect(root: Path, source: Any, reactions: list[Any]) -> tuple[Path, str]:
    _dump(root / "700.json", [source, *reactions])
    return root, "700"


def _generic(root: Path, source: Any, reactions: list[Any]) -> tuple[Path, str]:
    path = root / "events.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in [source, *reactions]), encoding="utf-8")
    return path, "e1"


@dataclass(frozen=True)
class Layout:
    write: Callable[[Path, Any, list[Any]], tuple[Path, str]]
    source: Callable[[], dict[str, Any]]
    reaction: Callable[[int], dict[str, Any]]


FORMATS: dict[str, Layout] = {
    "weibo-covid19": Layout(
        _weibo,
        lambda: {"created_at": _weibo_date(T0), "text": "源<br/>微博", "reposts_count": 3,
                 "user": {"id": 1, "gender": "f", "followers_count": 10, "follow_count": 2, "verified_type": -1}},
        lambda i: {"id": 1000 + i, "created_at": _weibo_date(T0 + 60 * i), "text": f"评论{i}", "like_count": i,
                   "user": {"id": 50 + i, "gender": "m", "statuses_count": i}, "comments": False},
    ),
    "ced": Layout(
        _ced,
        lambda: {"text": "源微博", "time": T0, "user": {"gender": "f", "followers": 10, "messages": 7, "verified": False}},
        lambda i: {"uid": str(i), "parent": "", "text": f"转发{i}", "mid": f"m{i}", "date": "2020-01-01 09:%02d:00" % (i % 60)},
    ),
    "pheme": Layout(
        _pheme,
        lambda: {"id_str": "500", "text": "Breaking &amp; news", "created_at": _twitter_date(T0),
                 "user": {"id_str": "9", "followers_count": 5, "verified": True}},
        lambda i: {"id_str": str(600 + i), "text": f"reply {i}", "created_at": _twitter_date(T0 + 60 * i),
                   "in_reply_to_status_id_str": "500", "user": {"id": 70 + i, "friends_count": i}},
    ),
    "rumoureval": Layout(
        _rumoureval,
        lambda: {"time": T0, "text": "Is it true?"},
        lambda i: {"time": T0 + 60 * i, "text": f"reply {i}"},
    ),
    "rumdect": Layout(
        _rumdect,
        lambda: {"t": T0, "text": "源", "uid": "u0", "mid": "m0", "gender": "f", "verified_type": -1},
        lambda i: {"t": T0 + 60 * i, "text": f"转发 {i}", "uid": f"u{i}", "mid": f"m{i}", "parent": "m0",
                   "followers_count": i, "verified": i % 2 == 0},
    ),
    "generic": Layout(
        _generic,
        lambda: {"event_id": "e1", "kind": "source", "post_id": "s", "text": "Big news", "timestamp": T0, "language": "en"},
        lambda i: {"event_id": "e1", "kind": "comment", "post_id": f"c{i}", "text": f"reply {i}", "timestamp": T0 + 60 * i,
                   "user": {"gender": "m", "followers_count": i}},
    ),
}

