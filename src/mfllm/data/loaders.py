"""Turns dataset files into :class:`~mfllm.data.schema.Event` objects with the registered readers.

Every reader lists event ids cheaply and loads one event with a :class:`~mfllm.data.schema.LoadReport`.
A file that cannot be parsed at all raises :class:`~mfllm.data.schema.DataFormatError` naming the file;
a record with an unusable required field (id, text, time) is rejected and reported; an invalid optional
field is set to unknown and reported; a reaction repeated in the files (same id) is kept once, the earliest,
and every removed copy is reported (a copy with other content as a conflict). Reactions come back sorted
by time (stable for ties).

Formats (one module each under :mod:`mfllm.data.readers`): ``weibo-covid19``, ``ced``, ``pheme``,
``rumoureval``, ``rumdect`` and the generic ``jsonl`` / ``csv`` format documented in ``docs/data-format.md``.
"""

from __future__ import annotations

from pathlib import Path

from mfllm.data.readers import discover_readers
from mfllm.data.readers.base import WEIBO_DEFAULT_REPOST_TEXT, DatasetReader, clean_html, detect_language
from mfllm.data.readers.ced import CEDReader
from mfllm.data.readers.generic import GenericReader, write_generic
from mfllm.data.readers.pheme import PhemeReader
from mfllm.data.readers.rumdect import RumdectReader
from mfllm.data.readers.rumoureval import RumourEvalReader
from mfllm.data.readers.weibo_covid19 import WeiboCovid19Reader
from mfllm.data.schema import DataFormatError, Event, LoadReport

__all__ = ["READERS", "WEIBO_DEFAULT_REPOST_TEXT", "CEDReader", "DatasetReader", "GenericReader", "PhemeReader",
           "RumdectReader", "RumourEvalReader", "WeiboCovid19Reader", "clean_html", "detect_language", "get_reader",
           "events_with_reactions", "load_event", "write_generic"]

READERS: dict[str, type[DatasetReader]] = discover_readers()


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


def events_with_reactions(path: str | Path, data_format: str | None, minimum: int, limit: int) -> list[str]:
    """The first ``limit`` events of ``path`` (in the reader's order) with at least ``minimum`` reactions."""
    reader = get_reader(path, data_format)
    chosen = []
    for event_id in reader.list_events(Path(path)):
        event, _ = reader.load_event(Path(path), event_id)
        if len(event.reactions) >= minimum:
            chosen.append(event_id)
        if len(chosen) == limit:
            break
    if not chosen:
        raise ValueError(f"{path}: no event with at least {minimum} reactions")
    return chosen
