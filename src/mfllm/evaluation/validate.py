"""Labeller validation against human annotation (RumourEval 2017 and PHEME reply stance)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfllm.data.loaders import get_reader
from mfllm.evaluation.dimensions import Dimension
from mfllm.evaluation.labellers import LabelItem, Labeller
from mfllm.evaluation.metrics import f1_scores

# SDQC gold onto the 3-way stance dimension (a query or a comment takes no side)
SDQC_TO_STANCE = {"support": "support", "deny": "oppose", "query": "neutral", "comment": "neutral"}


@dataclass
class Agreement:
    dimension: str
    labeller: str
    items: int
    labelled: int
    accuracy: float
    macro_f1: float
    majority_accuracy: float
    confusion: dict[str, dict[str, int]]  # gold -> predicted -> count
    failures: dict[str, int]

    def render(self) -> str:
        labels = list(self.confusion)
        width = max(len(x) for x in labels + ["gold \\ predicted", "(none)"]) + 2
        lines = [f"labeller {self.labeller} on {self.dimension}: {self.items} items, {self.labelled} labelled",
                 f"accuracy {self.accuracy:.3f}   macro-F1 {self.macro_f1:.3f}   (majority-class accuracy {self.majority_accuracy:.3f})",
                 "gold \\ predicted".ljust(width) + "".join(x.rjust(width) for x in labels + ["(none)"])]
        for gold in labels:
            row = self.confusion[gold]
            lines.append(gold.ljust(width) + "".join(str(row.get(p, 0)).rjust(width) for p in labels + ["(none)"]))
        if self.failures:
            lines.append("unlabelled: " + ", ".join(f"{n} × {why}" for why, n in self.failures.items()))
        return "\n".join(lines)


def gold_items(path: str | Path, data_format: str | None = None, limit: int | None = None) -> tuple[list[LabelItem], list[str]]:
    """Replies with a gold ``stance`` (SDQC) label, in dataset order, up to ``limit``."""
    reader = get_reader(path, data_format)
    items, gold = [], []
    for event_id in reader.list_events(Path(path)):
        event, _ = reader.load_event(Path(path), event_id)
        for reaction in event.reactions:
            if "stance" in reaction.labels:
                items.append(LabelItem(reaction.text, event.source.text, event.language, reaction.kind))
                gold.append(reaction.labels["stance"])
                if limit is not None and len(items) >= limit:
                    return items, gold
    if not items:
        raise ValueError(f"{path}: no reactions with a gold 'stance' label")
    return items, gold


def agreement(labeller: Labeller, dimension: Dimension, items: list[LabelItem], gold: list[str]) -> Agreement:
    if dimension.name == "stance":
        gold = [SDQC_TO_STANCE[g] for g in gold]
    result = labeller.label(items, dimension)
    pairs = [(g, p) for g, p in zip(gold, result.labels) if p is not None]
    accuracy, macro = f1_scores(gold, result.labels, dimension)
    confusion: dict[str, dict[str, int]] = {label: {} for label in dimension.labels}
    for g, p in zip(gold, result.labels):
        key = p if p is not None else "(none)"
        confusion[g][key] = confusion[g].get(key, 0) + 1
    majority = max(gold.count(label) for label in dimension.labels) / len(gold)
    failures: dict[str, Any] = {}
    for reason in result.failures.values():
        kind = re.sub(r"(['\"]).*\1", "…", reason)  # group by kind of failure, not by each answer's text
        failures[kind] = failures.get(kind, 0) + 1
    return Agreement(dimension.name, labeller.name, len(items), len(pairs), accuracy, macro, majority, confusion, failures)
