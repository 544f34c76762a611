"""Loaders: every shared dataset, the rumdect and generic formats, error reporting, round trips."""

from __future__ import annotations

import json
import pkgutil
from pathlib import Path

import pytest

from mfllm.data import DataFormatError, get_reader, load_event, write_generic
from mfllm.data.loaders import CEDReader, clean_html

DATASETS = {
    "weibo_covid19_rumor": "weibo-covid19",
    "ced_weibo": "ced",
    "pheme_rumour_scheme_subset": "pheme",
    "rumoureval2017_processed": "rumoureval",
}


@pytest.mark.parametrize("folder,reader_name", DATASETS.items())
def test_shared_datasets_load_sorted_with_profiles_where_present(shared_data: Path, folder: str, reader_name: str) -> None:
    reader = get_reader(shared_data / folder)
    assert reader.name == reader_name
    ids = reader.list_events(shared_data / folder)
    assert len(ids) > 10
    loaded = 0
    for event_id in ids[:15]:
        try:
            event, report = reader.load_event(shared_data / folder, event_id)
        except DataFormatError as exc:  # a broken source post must name its file
            assert str(shared_data) in str(exc)
            continue
        loaded += 1
        times = [r.timestamp for r in event.reactions]
        assert times == sorted(times)
        assert report.loaded == len(event.reactions)
        assert event.language == ("zh" if folder in ("weibo_covid19_rumor", "ced_weibo") else "en")
    assert loaded >= 10


def test_weibo_covid_keeps_profile_fields_and_kinds(shared_data: Path) -> None:
    event, report = load_event(shared_data / "weibo_covid19_rumor", "4484800548711562")
    assert {r.kind for r in event.reactions} == {"comment", "repost", "reply"}
    profiles = [r.user for r in event.reactions]
    assert sum(p.gender == "male" for p in profiles) > 0 and sum(p.gender == "female" for p in profiles) > 0
    assert all(p.followers_count is not None and p.statuses_count is not None for p in profiles)
    assert any(p.description for p in profiles)
    assert event.labels["veracity"] == "rumor"
    assert all("<" not in r.text for r in event.reactions)  # HTML removed
    assert event.source.post_id not in {r.post_id for r in event.reactions}  # the source is not its own repost


def test_rumoureval_reports_deleted_tweets_and_keeps_gold_stance(shared_data: Path) -> None:
    reader = get_reader(shared_data / "rumoureval2017_processed")
    rejected_total, stances = 0, set()
    for event_id in reader.list_events(shared_data / "rumoureval2017_processed")[:40]:
        event, report = reader.load_event(shared_data / "rumoureval2017_processed", event_id)
        rejected_total += len(report.rejected)
        stances |= {r.labels.get("stance") for r in event.reactions}
        for rejected in report.rejected:
            assert rejected.file.endswith("posts.json") and "deleted" in rejected.reason
    assert rejected_total > 0
    assert {"support", "deny", "query", "comment"} <= stances


def test_ced_year_less_dates_and_empty_reposts(tmp_path: Path) -> None:
    root = tmp_path / "CED_Dataset"
    (root / "original-microblog").mkdir(parents=True)
    (root / "rumor-repost").mkdir()
    (root / "original-microblog" / "1_abc_2.json").write_text(json.dumps(
        {"text": "源微博", "time": 1347334462, "user": {"gender": "f", "followers": 10, "friends": 3, "messages": 7,
                                                       "location": "上海", "verified": False}}), encoding="utf-8")
    (root / "rumor-repost" / "1_abc_2.json").write_text(json.dumps([
        {"uid": "1", "parent": "", "text": "", "mid": "m1", "date": "2012-09-16 15:05:11"},
        {"uid": "2", "parent": "m1", "text": "真的吗", "mid": "m2", "date": "09月12日 10:00"},
        {"uid": "3", "parent": "", "text": "坏的", "mid": "m3", "date": "not a date"},
    ]), encoding="utf-8")
    reader = get_reader(tmp_path)
    assert isinstance(reader, CEDReader)
    event, report = reader.load_event(tmp_path, "1_abc_2")
    assert [r.post_id for r in event.reactions] == ["m2", "m1"]  # sorted; year taken from the source
    assert event.reactions[1].text == "转发微博"
    assert event.source.user.location == "上海" and event.source.user.gender == "female"
    assert len(report.rejected) == 1 and report.rejected[0].field == "date" and "m3" in report.rejected[0].record


def _rumdect_item(i: int, **over: object) -> dict:
    item = {"t": 1300000000 + i * 60, "text": f"转发 {i}", "original_text": "源", "parent": None if i == 0 else "m0",
            "uid": f"u{i}", "mid": f"m{i}", "gender": "m" if i % 2 else "f", "followers_count": 10 * i, "friends_count": 5,
            "bi_followers_count": 2, "statuses_count": 100, "verified": i == 3, "verified_type": -1,
            "user_description": f"简介{i}", "user_location": "北京", "reposts_count": 1, "comments_count": 0, "attitudes_count": 2}
    item.update(over)
    return item


def test_rumdect_format_loads_all_fields_and_reports_bad_records(tmp_path: Path) -> None:
    items = [_rumdect_item(0), _rumdect_item(3), _rumdect_item(1), _rumdect_item(2, t="garbage"), _rumdect_item(4, followers_count="many")]
    (tmp_path / "6143639461.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    reader = get_reader(tmp_path)
    assert reader.name == "rumdect"
    event, report = reader.load_event(tmp_path, "6143639461")
    assert [r.post_id for r in event.reactions] == ["m1", "m3", "m4"]
    first = event.reactions[0].user
    assert (first.gender, first.location, first.description, first.bi_followers_count) == ("male", "北京", "简介1", 2)
    assert event.reactions[1].user.verified is True
    assert event.reactions[2].user.followers_count is None
    assert [(r.field, r.record.split()[0]) for r in report.rejected] == [("t", "3")]
    assert [(r.field, r.record) for r in report.cleared] == [("followers_count", "4")]
    assert "1 rejected" in report.summary()


def test_truncated_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    good = json.dumps([_rumdect_item(0), _rumdect_item(1)])
    (tmp_path / "cut.json").write_text(good[: len(good) // 2], encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"cut\.json.*invalid JSON.*line 1"):
        load_event(tmp_path / "cut.json", data_format="rumdect")
    (tmp_path / "obj.json").write_text('{"t": 1}', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"obj\.json: expected a non-empty JSON array"):
        load_event(tmp_path / "obj.json", data_format="rumdect")


def test_generic_jsonl_partly_bad_file_keeps_good_records_in_order(tmp_path: Path) -> None:
    lines = [
        {"event_id": "e1", "kind": "source", "post_id": "s", "text": "Big news", "timestamp": "2020-01-01T00:00:00Z"},
        {"event_id": "e1", "kind": "comment", "post_id": "c2", "text": "second", "timestamp": 1577836900, "user": {"gender": "f"}},
        {"event_id": "e1", "kind": "comment", "post_id": "c1", "text": "first", "timestamp": 1577836850, "user_followers_count": 12},
        {"event_id": "e1", "kind": "like", "post_id": "c3", "text": "bad kind", "timestamp": 1577836950},
        {"event_id": "e1", "kind": "comment", "post_id": "c4", "timestamp": 1577836960},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n", encoding="utf-8")
    event, report = load_event(path)
    assert [r.post_id for r in event.reactions] == ["c1", "c2"]
    assert event.reactions[0].user.followers_count == 12 and event.reactions[1].user.gender == "female"
    assert sorted((r.field, r.record) for r in report.rejected) == [("<record>", "line 6"), ("kind", "line 4"), ("text", "line 5")]
    assert event.language == "en"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_generic_round_trip_is_lossless(shared_data: Path, tmp_path: Path, suffix: str) -> None:
    originals = [load_event(shared_data / "weibo_covid19_rumor", e)[0] for e in ("4484800548711562", "4464249138673885")]
    originals.append(load_event(shared_data / "rumoureval2017_processed", "498280126254428160")[0])
    write_generic(originals, tmp_path / f"out{suffix}")
    reader = get_reader(tmp_path / f"out{suffix}")
    assert reader.list_events(tmp_path / f"out{suffix}") == [e.event_id for e in originals]
    for original in originals:
        again, report = reader.load_event(tmp_path / f"out{suffix}", original.event_id)
        assert not report.rejected and not report.cleared
        assert again.model_dump(exclude={"dataset"}) == original.model_dump(exclude={"dataset"})


def test_clean_html_keeps_emoticons() -> None:
    raw = '好<span class="url-icon"><img alt=[微笑] src="x.png" /></span>吧<br />下一行 &amp; <a href="/n/x">@某人</a>'
    assert clean_html(raw) == "好[微笑]吧 下一行 & @某人"


def test_unknown_format_and_missing_event(tmp_path: Path, demo_event_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataFormatError, match="cannot tell the data format"):
        get_reader(tmp_path / "x.txt")
    with pytest.raises(KeyError, match="no event with id 'nope'"):
        load_event(demo_event_path, "nope")


def test_every_reader_module_registers_one_format_in_detection_order() -> None:
    from mfllm.data import readers
    from mfllm.data.loaders import READERS
    from mfllm.data.readers.base import register_reader

    modules = {m.name for m in pkgutil.iter_modules(readers.__path__)} - {"base"}
    assert sorted(reader.__module__.rsplit(".", 1)[1] for reader in READERS.values()) == sorted(modules)
    assert list(READERS) == ["weibo-covid19", "ced", "pheme", "rumoureval", "generic", "rumdect"]
    with pytest.raises(ValueError, match="two readers named 'ced'"):
        register_reader(type("OtherCED", (READERS["ced"],), {}))
