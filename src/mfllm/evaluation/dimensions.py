"""Semantic dimensions on which real and simulated actions are labelled and compared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mfllm.configuration import read_yaml


@dataclass(frozen=True)
class Dimension:
    """A labelling dimension. ``ordinal`` dimensions list labels in order (Wasserstein uses it)."""

    name: str
    labels: tuple[str, ...]
    definition: str
    ordinal: bool = False
    label_descriptions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise ValueError(f"dimension {self.name!r}: needs at least two distinct labels, got {self.labels}")
        if self.label_descriptions and len(self.label_descriptions) != len(self.labels):
            raise ValueError(f"dimension {self.name!r}: one description per label")

    def index(self, label: str) -> int:
        return self.labels.index(label)


BUILTIN_DIMENSIONS: dict[str, Dimension] = {d.name: d for d in (
    Dimension("sentiment", ("negative", "neutral", "positive"), "the polarity of the feeling the text expresses", ordinal=True),
    # emotion matches SMP2020-EWECT's six classes one to one, with our "calm" for its "neutral" (无情绪, no
    # emotion); see mfllm.evaluation.validate.EWECT_TO_EMOTION, which the shipped zh-emotion model is trained on
    Dimension("emotion", ("angry", "calm", "happy", "sad", "fear", "surprise"), "the dominant emotion the text expresses"),
    Dimension("stance", ("oppose", "neutral", "support"), "the author's stance toward the claim in the source post", ordinal=True),
    Dimension("belief", ("doubt", "believe"), "whether the author believes the claim in the source post is true", ordinal=True),
    Dimension("behaviour", ("comment", "share"), "whether the action is a comment or a bare share (repost)"),
    Dimension("intent", ("question", "opinion", "spread-information"),
              "what the author mainly does: asks a question, states an opinion, or passes information on"),
)}

# RumourEval / PHEME reply stance (SDQC), for validating labellers against human annotation.
SDQC = Dimension("sdqc", ("support", "deny", "query", "comment"),
                 "how the reply relates to the rumour in the source post",
                 label_descriptions=("supports the rumour", "denies the rumour", "asks for evidence or more information",
                                     "comments without taking a side"))


def load_dimensions(path: str | Path) -> list[Dimension]:
    """User dimensions from YAML: a list of {name, labels, definition, ordinal?, label_descriptions?}."""
    items = read_yaml(path)
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of dimensions")
    dimensions = []
    for i, item in enumerate(items):
        try:
            dimensions.append(Dimension(item["name"], tuple(item["labels"]), item["definition"], bool(item.get("ordinal", False)),
                                        tuple(item.get("label_descriptions", ()))))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: dimension {i}: missing or invalid field {exc}") from exc
    return dimensions


def resolve_dimensions(names: list[str] | None, extra_file: str | None = None) -> list[Dimension]:
    extra = {d.name: d for d in load_dimensions(extra_file)} if extra_file else {}
    available = {**BUILTIN_DIMENSIONS, **extra, SDQC.name: SDQC}
    chosen = names or list(BUILTIN_DIMENSIONS) + [n for n in extra if n not in BUILTIN_DIMENSIONS]
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise ValueError(f"unknown dimension(s) {unknown}; available: {', '.join(available)}")
    return [available[n] for n in chosen]
