"""Property-based fuzzing of every reader (hypothesis): generated or mangled input either loads, with
reactions time-sorted, finite and each id once, and every record loaded or reported, or raises a one-line
:class:`DataFormatError` naming a file under the dataset. Any other exception fails the test."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reader_layouts import FORMATS

from mfllm.data import DataFormatError, Event, get_reader

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

ODD_STRINGS = ["NaN", "Infinity", "-inf", "1e20", "1e400", "", " ", "13月45日 10:00", "02月30日 10:00", "2020-02-30 10:00:00",
               "Fri Jan 24 13:27:47 +0800 2020", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "empty", "\ufeff",
               "\ud800", "source", "reply", "e1", "-1", "3.5", "true", "m"]
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
              st.sampled_from(ODD_STRINGS), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["id", "text", "t", "0"]), inner, max_size=3)),
    max_leaves=6,
)
# keys worth mangling beyond those a good record already has
EXTRA_KEYS = ["user", "comments", "parent", "id", "id_str", "raw_text", "event_id", "kind", "labels", "language",
              "verified_type", "in_reply_to_status_id_str", "user_followers_count", "followers_count"]


def _mangle(data: st.DataObject, record: dict[str, Any]) -> Any:
    """``record`` with a few fields (top-level or in its user object) deleted or set to odd values,
    or now and then replaced as a whole."""
    if data.draw(st.integers(0, 19)) == 0:
        return data.draw(VALUES)
    record = dict(record)
    for _ in range(data.draw(st.integers(0, 3))):
        target = record
        if isinstance(record.get("user"), dict) and data.draw(st.booleans()):
            target = record["user"] = dict(record["user"])
        key = data.draw(st.sampled_from(sorted(target) or EXTRA_KEYS) | st.sampled_from(EXTRA_KEYS))
        if data.draw(st.integers(0, 3)) == 0:
            target.pop(key, None)
        else:
            target[key] = data.draw(VALUES)
    return record


def _raw_reactions(name: str, reactions: list[Any]) -> int:
    """How many reaction records the written files hold (Weibo nests replies inside comments)."""
    if name != "weibo-covid19":
        return len(reactions)
    return sum(1 + (len(r["comments"]) if isinstance(r, dict) and isinstance(r.get("comments"), list) else 0) for r in reactions)


def _check(root: Path, path: Path, name: str, raw_records: int | None) -> None:
    """Detect the format and load every event; assert the invariants, or that the refusal is one line
    naming a file under ``root``."""
    try:
        get_reader(path)
    except DataFormatError as exc:  # mangled past recognition: said in one line, naming the path
        assert "\n" not in str(exc) and str(exc).startswith(str(root)), str(exc)
    try:
        reader = get_reader(path, name)
        event_ids = reader.list_events(path)
        accounted = 0
        for event_id in event_ids:
            event, report = reader.load_event(path, event_id)
            times = [r.timestamp for r in event.reactions]
            assert all(math.isfinite(t) for t in times) and times == sorted(times)
            assert math.isfinite(event.source.timestamp) and report.loaded == len(event.reactions)
            assert Event.model_validate(event.model_dump()) == event and event.content_hash()
            assert "\n" not in report.summary()
            assert len({r.post_id for r in event.reactions}) == len(event.reactions)  # repeats removed
            accounted += report.loaded + len(report.rejected) + len(report.repeats)
        if raw_records is not None and event_ids:
            assert accounted >= raw_records, f"{raw_records} records written, {accounted} loaded or rejected"
    except DataFormatError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(str(root)), message


@pytest.mark.parametrize("name", list(FORMATS))
@FUZZ
@given(data=st.data())
def test_mangled_records_load_or_refuse_in_one_line(name: str, data: st.DataObject) -> None:
    layout = FORMATS[name]
    source = _mangle(data, layout.source()) if data.draw(st.integers(0, 3)) == 0 else layout.source()
    reactions = [_mangle(data, layout.reaction(i)) for i in range(data.draw(st.integers(0, 5)))]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        path, _ = layout.write(root, source, reactions)
        _check(root, path, name, _raw_reactions(name, reactions))


BYTE_EDITS = st.sampled_from(["truncate", "insert", "overwrite", "bom", "deep", "empty", "garbage"])


@pytest.mark.parametrize("name", list(FORMATS))
@FUZZ
@given(data=st.data())
def test_mangled_files_load_or_refuse_in_one_line(name: str, data: st.DataObject) -> None:
    layout = FORMATS[name]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        path, _ = layout.write(root, layout.source(), [layout.reaction(i) for i in range(data.draw(st.integers(0, 4)))])
        files = sorted(p for p in root.rglob("*") if p.is_file())
        for _ in range(data.draw(st.integers(1, 2))):
            file = data.draw(st.sampled_from(files))
            content = file.read_bytes()
            at = data.draw(st.integers(0, len(content)))
            edit = data.draw(BYTE_EDITS)
            if edit == "truncate":
                content = content[:at]
            elif edit in ("insert", "overwrite"):
                chunk = data.draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"\xe8", b"NaN", b"\x00", b",", b"\r", b'"']))
                content = content[:at] + chunk + content[at + (len(chunk) if edit == "overwrite" else 0):]
            elif edit == "bom":
                content = b"\xef\xbb\xbf" + content
            elif edit == "deep":
                content = content[:at] + b"[" * 50_000 + content[at:]
            else:
                content = b"" if edit == "empty" else data.draw(st.binary(max_size=64))
            file.write_bytes(content)
        _check(root, path, name, None)
