"""Repeated reactions: every reader keeps each reaction once (the earliest), reports what it removed, and
reports a repeat whose content differs as a conflict naming file, record and field."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from reader_layouts import FORMATS, T0

from mfllm.data import DataFormatError, Post, Reaction, UserProfile, get_reader
from mfllm.data.readers.base import REPOST_COMMENT_WINDOW_S, CollectedReactions, finish_event, remove_repeats
from mfllm.data.readers.pheme import read_json_objects
from mfllm.data.schema import LoadReport

ID_FIELD = {"weibo-covid19": "id", "ced": "mid", "pheme": "id_str", "rumdect": "mid", "generic": "post_id"}
# where a layout's first and fourth reaction records are read from: (file name, record)
FIRST_RECORD = {"weibo-covid19": ("comments.json", "0"), "ced": ("1_abc_2.json", "0"), "pheme": ("600.json", "0"),
                "rumdect": ("700.json", "1"), "generic": ("events.jsonl", "line 2")}
FOURTH_RECORD = {"weibo-covid19": ("comments.json", "3"), "ced": ("1_abc_2.json", "3"), "pheme": ("603.json", "0"),
                 "rumdect": ("700.json", "4"), "generic": ("events.jsonl", "line 5")}


def _load(name: str, root: Path, reactions: list[Any]) -> Any:
    layout = FORMATS[name]
    path, event_id = layout.write(root, layout.source(), reactions)
    return get_reader(path, name).load_event(path, event_id)


@pytest.mark.parametrize("name", list(ID_FIELD))
def test_a_record_repeated_with_the_same_id_is_loaded_once_and_reported(name: str, tmp_path: Path) -> None:
    layout = FORMATS[name]
    reactions = [layout.reaction(i) for i in range(3)]
    event, report = _load(name, tmp_path, [*reactions, layout.reaction(0)])
    assert [r.text for r in event.reactions] == [r.text for r in _load(name, tmp_path / "once", reactions)[0].reactions]
    assert report.loaded == 3 and not report.conflicts and not report.rejected
    (repeat,) = report.repeats
    assert (Path(repeat.file).name, repeat.record, repeat.field) == (*FOURTH_RECORD[name], "post_id")
    assert str(layout.reaction(0)[ID_FIELD[name]]) in repeat.reason
    assert "1 repeated reactions removed (0 with conflicting content)" in report.summary()


@pytest.mark.parametrize("name", list(ID_FIELD))
def test_a_repeated_id_with_other_content_keeps_the_earliest_and_reports_the_conflict(name: str, tmp_path: Path) -> None:
    layout = FORMATS[name]
    late = {**layout.reaction(5), ID_FIELD[name]: layout.reaction(0)[ID_FIELD[name]], "text": "later copy"}
    event, report = _load(name, tmp_path, [late, layout.reaction(1), layout.reaction(2), layout.reaction(0)])
    (earliest,) = _load(name, tmp_path / "alone", [layout.reaction(0)])[0].reactions
    assert len(event.reactions) == 3 and [r for r in event.reactions if r.post_id == earliest.post_id] == [earliest]
    (conflict,) = report.conflicts
    assert (Path(conflict.file).name, conflict.record) == FIRST_RECORD[name]
    assert {"text", "timestamp"} <= set(conflict.field.split(", "))
    assert "'later copy' here" in conflict.reason and "kept" in conflict.reason
    assert len(report.repeats) == 1 and "1 with conflicting content" in report.summary()


def test_weibo_nested_reply_under_two_comments_keeps_the_first_parent(tmp_path: Path) -> None:
    layout = FORMATS["weibo-covid19"]
    reply = {**layout.reaction(9), "id": 777}
    comments = [{**layout.reaction(0), "comments": [reply]}, {**layout.reaction(1), "comments": [reply]}]
    event, report = _load("weibo-covid19", tmp_path, comments)
    (kept,) = [r for r in event.reactions if r.post_id == "777"]
    assert kept.kind == "reply" and kept.parent_id == "1000" and report.loaded == 3
    (conflict,) = report.conflicts
    assert (conflict.record, conflict.field) == ("1.comments[0]", "parent_id")
    assert "'1001' here, '1000' there" in conflict.reason


def test_rumoureval_post_twice_in_the_reply_tree_is_reported_as_a_conflict(tmp_path: Path) -> None:
    split = tmp_path / "traindev"
    split.mkdir()
    posts = {"500": {"time": T0, "text": "Is it true?"}, "601": {"time": T0 + 60, "text": "no"}, "602": {"time": T0 + 120, "text": "yes"}}
    (split / "posts.json").write_text(json.dumps(posts), encoding="utf-8")
    (split / "structures.json").write_text(json.dumps({"500": {"500": {"601": [], "602": {"601": []}}}}), encoding="utf-8")
    event, report = get_reader(tmp_path, "rumoureval").load_event(tmp_path, "500")
    assert [(r.post_id, r.kind, r.parent_id) for r in event.reactions] == [("601", "comment", "500"), ("602", "comment", "500")]
    (conflict,) = report.conflicts
    assert conflict.file.endswith("posts.json") and conflict.record == "601" and conflict.field == "kind, parent_id"


def _without_id(user: str, text: str, seconds: float) -> Reaction:
    return Reaction(post_id="", text=text, timestamp=seconds, kind="comment", user=UserProfile(user_id=user))


def test_records_without_an_id_repeat_when_user_text_and_time_match() -> None:
    collected = CollectedReactions()
    for record, reaction in enumerate([_without_id("u1", "hi", T0), _without_id("u2", "hi", T0), _without_id("u1", "hi", T0 + 1),
                                       _without_id("u1", "hi", T0), _without_id("u1", "ho", T0)]):
        collected.add(reaction, "f.jsonl", str(record))
    report = LoadReport()
    kept = remove_repeats(collected, report)
    assert [(r.user.user_id, r.text, r.timestamp) for r in kept] == [("u1", "hi", T0), ("u2", "hi", T0), ("u1", "hi", T0 + 1),
                                                                      ("u1", "ho", T0)]
    (repeat,) = report.repeats
    assert (repeat.file, repeat.record, repeat.field) == ("f.jsonl", "3", "user_id, text, timestamp") and "record 0" in repeat.reason
    assert not report.conflicts


def _read(kind: str, user: str, text: str, seconds: float, post_id: str) -> Reaction:
    return Reaction(post_id=post_id, text=text, timestamp=seconds, kind=kind, user=UserProfile(user_id=user),  # type: ignore[arg-type]
                    parent_id="p" if kind == "repost" else None)


def test_a_repost_and_comment_is_kept_as_one_repost_at_the_earlier_time() -> None:
    collected = CollectedReactions()
    records = [_read("comment", "u1", "真的吗", T0, "c1"), _read("comment", "u2", "真的吗", T0, "c2"),  # u2 made no repost
               _read("repost", "u1", "真的吗", T0 + 1, "r1"), _read("repost", "u3", "假的", T0 + 5, "r3"),
               _read("comment", "u3", "假的", T0 + 5 + REPOST_COMMENT_WINDOW_S + 1, "c3"),  # too late: a second action
               _read("comment", "u1", "真的吗", T0 + 2, "c4")]  # its repost is taken: a second comment stays
    for record, reaction in enumerate(records):
        collected.add(reaction, "comments.json" if reaction.kind == "comment" else "reposts.json", str(record))
    report = LoadReport()
    event = finish_event({"event_id": "e", "dataset": "d", "language": "zh", "source": Post(post_id="s", text="源", timestamp=T0 - 9)},
                         collected, report, "here")
    assert [(r.post_id, r.kind, r.timestamp) for r in event.reactions] == [("c2", "comment", T0), ("r1", "repost", T0), ("c4", "comment", T0 + 2),
                                                                           ("r3", "repost", T0 + 5), ("c3", "comment", T0 + 66)]
    assert event.reactions[1].parent_id == "p" and report.loaded == 5 and not report.repeats
    (merged,) = report.repost_comments
    assert (merged.file, merged.record, merged.field) == ("comments.json", "0", "kind")
    assert "kept as the repost reposts.json: record 2 (same user and text, 1 s apart)" in merged.reason
    assert report.summary().endswith("1 repost-and-comment pairs kept as their repost")


# ---------------------------------------------------------------- all shared data

SHARED = {"weibo_covid19_rumor": "weibo-covid19", "ced_weibo": "ced", "pheme_rumour_scheme_subset": "pheme",
          "rumoureval2017_processed": "rumoureval"}


def _raw_records(name: str, path: Path, event_id: str) -> int:
    """How many reaction records an event's files hold, counted from the files without the readers."""
    if name == "weibo_covid19_rumor":
        folder = next(path.glob(f"final_dataset/*/{event_id}"))
        comments = json.loads((folder / "comments.json").read_text("utf-8")) if (folder / "comments.json").is_file() else []
        reposts = json.loads((folder / "reposts.json").read_text("utf-8")) if (folder / "reposts.json").is_file() else []
        return (sum(1 + (len(c["comments"]) if isinstance(c.get("comments"), list) else 0) for c in comments)
                + sum(str(r.get("id")) != event_id for r in reposts))
    if name == "ced_weibo":
        return len(json.loads(next(path.glob(f"CED_Dataset/*-repost/{event_id}.json")).read_text("utf-8")))
    if name == "pheme_rumour_scheme_subset":
        return sum(len(read_json_objects(f)) for f in path.glob(f"*/threads/*/*/{event_id}/reactions/*.json"))

    def count(tree: Any) -> int:
        return sum(1 + count(child) for child in tree.values()) if isinstance(tree, dict) else 0

    for structures in path.glob("*/*/structures.json"):
        trees = _json(structures)
        if event_id in trees:
            return count(trees[event_id][event_id])
    raise AssertionError(f"{event_id} not in {path}")


@functools.lru_cache(maxsize=4)
def _json(path: Path) -> Any:
    """A JSON file read once (RumourEval keeps every thread in one file)."""
    return json.loads(path.read_text("utf-8"))


@pytest.mark.parametrize("folder", list(SHARED))
def test_no_shared_event_keeps_a_repeated_reaction_and_every_removal_is_counted(shared_data: Path, folder: str) -> None:
    path = shared_data / folder
    reader = get_reader(path, SHARED[folder])
    repeats = merged = 0
    for event_id in reader.list_events(path):
        try:
            event, report = reader.load_event(path, event_id)
        except DataFormatError as exc:  # a broken source post (PHEME has one)
            assert str(path) in str(exc)
            continue
        assert len({r.post_id for r in event.reactions}) == len(event.reactions), event_id
        removed = len(report.repeats) + len(report.repost_comments)
        assert report.loaded + len(report.rejected) + removed == _raw_records(folder, path, event_id), event_id
        assert {(c.file, c.record) for c in report.conflicts} <= {(r.file, r.record) for r in report.repeats}
        repeats += len(report.repeats)
        merged += len(report.repost_comments)
    if folder in ("weibo_covid19_rumor", "ced_weibo"):  # both upstream sets repeat entries
        assert repeats > 0
    assert merged == (1380 if folder == "weibo_covid19_rumor" else 0)  # Weibo stores a repost and comment as both
