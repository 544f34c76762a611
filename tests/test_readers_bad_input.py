"""Readers on bad input: a bad record is rejected alone and reported, a bad file is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from reader_layouts import FORMATS, T0

from mfllm.data import DataFormatError, get_reader, load_event


def _load(name: str, root: Path, source: Any = None, reactions: list[Any] | None = None,
          tweak: Callable[[Path], None] | None = None) -> Any:
    layout = FORMATS[name]
    path, event_id = layout.write(root, layout.source() if source is None else source,
                                  [layout.reaction(i) for i in range(3)] if reactions is None else reactions)
    if tweak is not None:
        tweak(root)
    return get_reader(path, name).load_event(path, event_id)


def _with(name: str, index: int, **fields: Any) -> list[dict[str, Any]]:
    """Three good reactions, the one at ``index`` with ``fields`` replaced."""
    reactions = [FORMATS[name].reaction(i) for i in range(3)]
    reactions[index].update(fields)
    return reactions


TIME_FIELD = {"weibo-covid19": "created_at", "ced": "date", "pheme": "created_at", "rumoureval": "time", "rumdect": "t",
              "generic": "timestamp"}


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("bad_time", [float("nan"), float("inf"), "-Infinity", "NaN", 1e20])
def test_non_finite_or_absurd_time_rejects_only_its_record(name: str, bad_time: Any, tmp_path: Path) -> None:
    event, report = _load(name, tmp_path, reactions=_with(name, 0, **{TIME_FIELD[name]: bad_time}))
    bad = [r for r in report.rejected if r.field == TIME_FIELD[name]]
    assert len(bad) == 1 and ("finite" in bad[0].reason or "range" in bad[0].reason)
    assert report.loaded + len(report.rejected) == 3 == len(event.reactions) + len(report.rejected)
    times = [r.timestamp for r in event.reactions]
    assert times == sorted(times) and all(T0 <= t < T0 + 10**6 for t in times)


@pytest.mark.parametrize("name,count_field,reported", [
    ("weibo-covid19", "user", "user.followers_count"), ("rumdect", None, "followers_count"), ("generic", "user", "user_followers_count"),
])
def test_infinite_count_is_reported_and_set_to_unknown(name: str, count_field: str | None, reported: str, tmp_path: Path) -> None:
    reactions = [FORMATS[name].reaction(i) for i in range(3)]
    target = reactions[1][count_field] if count_field else reactions[1]
    target["followers_count"] = float("inf")
    event, report = _load(name, tmp_path, reactions=reactions)
    assert len(event.reactions) == 3 and event.reactions[1].user.followers_count is None
    assert [(r.field, r.reason) for r in report.cleared] == [(reported, "not a finite number: inf")]


def _rewrite(relative: str, content: str | bytes) -> Callable[[Path], None]:
    def tweak(root: Path) -> None:
        path = next(root.glob(relative))
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return tweak


DEEP = "[" * 100_000 + "]" * 100_000
BAD_FILES = [
    ("weibo-covid19", None, _rewrite("**/comments.json", DEEP), r"comments\.json: invalid JSON: nested too deeply"),
    ("weibo-covid19", {"created_at": "Fri Jan 24 13:27:47 +0800 2020", "raw_text": 5}, None,
     r"detail\.json: source post: field 'text': Input should be a valid string$"),
    ("ced", {"text": "源", "time": 1e20}, None, r"1_abc_2\.json: source post: field 'time': out of range"),
    ("ced", {"text": ["源"], "time": T0}, None, r"1_abc_2\.json: source post: field 'text'"),
    ("pheme", [1, 2], None, r"tweet\.json: expected a JSON object, got array"),
    ("pheme", None, _rewrite("**/annotation.json", "[1]"), r"annotation\.json: expected a JSON object, got array"),
    ("pheme", None, _rewrite("**/reactions/601.json", b'{"text": "\xe8"}'), r"601\.json: not UTF-8 text: line 1, byte 10"),
    ("pheme", None, _rewrite("**/tweet.json", b'{"text": "\xe8"}'), r"tweet\.json: not UTF-8 text"),
    ("rumoureval", None, _rewrite("traindev/post_label.txt", "0\n1\n7\n"), r"post_label\.txt: label 3 \(id 601\): '7' is not one of"),
    ("rumoureval", None, _rewrite("traindev/post_label.txt", "0\n-1\n2\n"), r"post_label\.txt: label 2 \(id 600\): '-1' is not one"),
    ("rumoureval", None, _rewrite("traindev/posts.json", "[]"), r"posts\.json: expected a JSON object, got array"),
    ("rumoureval", None, _rewrite("traindev/structures.json", '{"500": 5}'), r"structures\.json: thread 500: expected a JSON object"),
    ("rumdect", [], None, r"700\.json: source post: field '<record>': not an object: array$"),
    ("generic", None, _rewrite("events.jsonl", b'{"event_id": "e1"}\n\xe8'), r"no usable record with kind 'source'"),
    ("ced", {"text": "a\ud800", "time": T0}, None, r"1_abc_2\.json: invalid JSON: unpaired surrogate escape \\ud800"),
]


@pytest.mark.parametrize("name,source,tweak,message", BAD_FILES)
def test_unusable_file_is_one_line_error_naming_it(name: str, source: Any, tweak: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=message) as raised:
        _load(name, tmp_path, source=source, tweak=tweak)
    assert "\n" not in str(raised.value) and str(raised.value).startswith(str(tmp_path))


def test_generic_csv_bom_big_cell_and_bad_bytes(tmp_path: Path) -> None:
    header = "event_id,kind,post_id,text,timestamp\r\n"
    rows = f"e1,source,s,hello,{T0}\r\ne1,comment,c,hi,{T0 + 5}\r\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + (header + rows).encode())
    event, report = load_event(tmp_path / "bom.csv", "e1")
    assert [r.post_id for r in event.reactions] == ["c"] and not report.rejected
    (tmp_path / "big.csv").write_text(header + rows + "e1,comment,d," + "x" * 140_000 + f",{T0}\r\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"big\.csv: line 4: invalid CSV: field larger than field limit"):
        load_event(tmp_path / "big.csv", "e1")
    (tmp_path / "latin.csv").write_bytes((header + rows).encode() + b"e1,comment,d,caf\xe9,1\r\n")
    with pytest.raises(DataFormatError, match=r"latin\.csv: not UTF-8 text: line 4"):
        get_reader(tmp_path / "latin.csv").list_events(tmp_path / "latin.csv")


def test_rumdect_detection_names_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "1.json").write_bytes(b'[{"uid": "1", "t": 1, "text": "\xe8"}]')
    with pytest.raises(DataFormatError, match=r"1\.json: not UTF-8 text"):
        get_reader(tmp_path)


def test_bad_records_are_rejected_alone_and_reported(tmp_path: Path) -> None:
    event, report = _load("weibo-covid19", tmp_path / "w", reactions=_with("weibo-covid19", 1, comments=5, user="bob"))
    assert len(event.reactions) == 3
    assert [(r.record, r.field) for r in report.rejected] == [("1", "comments")]
    assert [(r.field, r.reason) for r in report.cleared] == [("user", "not an object: string")]

    event, report = _load("ced", tmp_path / "c", reactions=_with("ced", 2, date="13月45日 10:00"))
    assert [r.post_id for r in event.reactions] == ["m0", "m1"]
    assert [(r.record, r.field, r.reason) for r in report.rejected] == [("2 (mid m2)", "date", "unparseable time: '13月45日 10:00'")]

    event, report = _load("pheme", tmp_path / "p", reactions=_with("pheme", 0, user="bob"),
                          tweak=_rewrite("**/reactions/602.json", " \n"))
    assert len(event.reactions) == 2 and event.reactions[0].user.user_id is None
    assert [(Path(r.file).name, r.reason) for r in report.rejected] == [("602.json", "empty file: no reply tweet")]
    assert [(r.field, r.reason) for r in report.cleared] == [("user", "not an object: string")]

    posts_entry = {"time": T0 + 60, "text": "reply"}
    event, report = _load("rumoureval", tmp_path / "r", reactions=[posts_entry, 5, posts_entry, posts_entry])
    assert [r.post_id for r in event.reactions] == ["600", "603"]
    assert [(r.record, r.reason) for r in report.rejected] == [("601", "not an object: number"),
                                                               ("602", "not in posts.json (deleted tweet)")]


def test_generic_record_without_event_id_or_with_a_user_string_is_reported(tmp_path: Path) -> None:
    lines = [FORMATS["generic"].source(), {"kind": "comment", "post_id": "x", "text": "lost?", "timestamp": T0},
             {**FORMATS["generic"].reaction(1), "user": "bob"}]
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n" + "[" * 5000 + "\n", encoding="utf-8")
    event, report = load_event(path, "e1")
    assert [r.post_id for r in event.reactions] == ["c1"]
    assert [(r.record, r.field, r.reason) for r in report.rejected] == [
        ("line 2", "event_id", "missing: the record belongs to no event"), ("line 4", "<record>", "invalid JSON: nested too deeply")]
    assert [(r.record, r.field) for r in report.cleared] == [("line 3", "user")]



ID_FIELD = {"weibo-covid19": "id", "ced": "mid", "pheme": "id_str", "rumoureval": "id", "rumdect": "mid", "generic": "post_id"}


@pytest.mark.parametrize("name", ["weibo-covid19", "ced", "generic"])
@pytest.mark.parametrize("bad_id", [{"a": 1}, [1, 2], True])
def test_an_id_of_the_wrong_type_is_reported_as_such(name: str, bad_id: Any, tmp_path: Path) -> None:
    event, report = _load(name, tmp_path, reactions=_with(name, 1, **{ID_FIELD[name]: bad_id}))
    assert len(event.reactions) == 2 and report.cleared == []
    assert [(r.field, r.reason.split(":")[0]) for r in report.rejected] == [(ID_FIELD[name], "wrong type")]


@pytest.mark.parametrize("name,count_field,reported", [
    ("weibo-covid19", "user", "user.followers_count"), ("rumdect", None, "followers_count"), ("generic", "user", "user_followers_count"),
])
def test_an_absurd_count_is_reported_and_set_to_unknown(name: str, count_field: str | None, reported: str, tmp_path: Path) -> None:
    reactions = [FORMATS[name].reaction(i) for i in range(3)]
    target = reactions[1][count_field] if count_field else reactions[1]
    target["followers_count"] = 10**40
    event, report = _load(name, tmp_path, reactions=reactions)
    assert len(event.reactions) == 3 and event.reactions[1].user.followers_count is None
    assert [(r.field, r.reason.split(":")[0]) for r in report.cleared] == [(reported, "out of range (above 10^12)")]
