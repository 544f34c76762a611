"""RumourEval 2017 (processed): posts, reply trees and aligned stance/veracity label files per split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from mfllm.data.readers.base import (
    CollectedReactions, DatasetReader, RecordContext, build_record, expect_type, finish_event, json_type, read_json, read_text, register_reader,
    subfolder_or_self, unknown_event, unusable_source,
)
from mfllm.data.schema import DataFormatError, Event, LoadReport, Post, Reaction


@register_reader
class RumourEvalReader(DatasetReader):
    """RumourEval 2017 processed: ``{traindev,test}/{posts.json,structures.json,post_id.txt,...}``."""

    name = "rumoureval"
    detect_order = 40
    STANCES = ("support", "query", "deny", "comment")
    VERACITY = ("true", "false", "unverified")

    @staticmethod
    def _splits(path: Path) -> list[Path]:
        root = subfolder_or_self(path, "semeval2017-task8")
        candidates = [root / "traindev", root / "test", root]
        return [c for c in candidates if (c / "posts.json").is_file() and (c / "structures.json").is_file()]

    @classmethod
    def detect(cls, path: Path) -> bool:
        return bool(cls._splits(path))

    def list_events(self, path: Path) -> list[str]:
        ids: list[str] = []
        for split in self._splits(path):
            ids.extend(read_json(split / "structures.json", dict).keys())
        return ids

    @staticmethod
    def _aligned_labels(split: Path, ids_name: str, labels_name: str, names: tuple[str, ...]) -> dict[str, str]:
        ids_file, labels_file = split / ids_name, split / labels_name
        if not ids_file.is_file() or not labels_file.is_file():
            return {}
        ids = read_text(ids_file).split()
        labels = read_text(labels_file).split()
        if len(ids) != len(labels):
            raise DataFormatError(f"{labels_file}: {len(labels)} labels for {len(ids)} ids in {ids_file}")
        for number, label in enumerate(labels, start=1):
            if not (label.isascii() and label.isdigit() and int(label) < len(names)):
                choices = ", ".join(f"{k} {name}" for k, name in enumerate(names))
                raise DataFormatError(f"{labels_file}: label {number} (id {ids[number - 1]}): {label!r} is not one of {choices}")
        return {i: names[int(label)] for i, label in zip(ids, labels)}

    def load_event(self, path: Path, event_id: str) -> tuple[Event, LoadReport]:
        for split in self._splits(path):
            structures = read_json(split / "structures.json", dict)
            if event_id in structures:
                break
        else:
            raise unknown_event(path, event_id)
        tree = expect_type(structures[event_id], dict, f"{split / 'structures.json'}: thread {event_id}")
        posts = read_json(split / "posts.json", dict)
        stance = self._aligned_labels(split, "post_id.txt", "post_label.txt", self.STANCES)
        veracity = self._aligned_labels(split, "thread_id.txt", "thread_label.txt", self.VERACITY)
        report = LoadReport()
        posts_file = split / "posts.json"

        def make(post_id: str, model: type, ctx: RecordContext, **extra: Any) -> Any:
            raw = posts.get(post_id)
            if not isinstance(raw, dict):
                ctx.reject("<record>", "not in posts.json (deleted tweet)" if raw is None else f"not an object: {json_type(raw)}")
                return None
            text, timestamp = ctx.required_text(raw.get("text"), "text"), ctx.timestamp(raw.get("time"), "time")
            if text is None or timestamp is None:
                return None
            labels = {"stance": stance[post_id]} if post_id in stance else {}
            return build_record(model, ctx, post_id=post_id, text=text, timestamp=timestamp, labels=labels, **extra)

        source = make(event_id, Post, RecordContext(report, posts_file, event_id))
        if source is None:
            raise unusable_source(f"{posts_file}: thread {event_id}", report)
        reactions = CollectedReactions()
        for child, parent in _depth_first(tree.get(event_id), event_id):
            reaction = make(child, Reaction, RecordContext(report, posts_file, child),
                            kind="comment" if parent == event_id else "reply", parent_id=parent)
            reactions.add(reaction, posts_file, child)
        labels = {"veracity": veracity[event_id]} if event_id in veracity else {}
        fields = dict(event_id=event_id, dataset=self.name, language="en", source=source, labels={**labels, "split": split.name})
        return finish_event(fields, reactions, report, split), report


def _depth_first(tree: Any, root: str) -> Iterator[tuple[str, str]]:
    """(post, parent) for every post of a nested reply tree, parents before their replies, in file
    order; iterative, so any depth that JSON can hold is fine."""
    pending = [(iter(tree.items()), root)] if isinstance(tree, dict) else []
    while pending:
        children, parent = pending[-1]
        for child, subtree in children:
            yield child, parent
            if isinstance(subtree, dict):
                pending.append((iter(subtree.items()), child))
            break
        else:
            pending.pop()
