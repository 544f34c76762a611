"""Labeller validation against human labels: gold sets, agreement figures and their JSON records.

Gold sets (read from ``shared/data``; only validation and training need them, never a run):

==================== ========== ======== ===================================================================
name                 dimension  language gold labels (ours <- theirs)
==================== ========== ======== ===================================================================
weibo2018-sentiment  sentiment  zh       negative <- 0, positive <- 1 (no neutral in this set)
smp2020-emotion      emotion    zh       happy, angry, sad, fear, surprise <- same; **calm <- neutral**
smp2020-sentiment    sentiment  zh       positive <- happy; negative <- angry, sad, fear; neutral <- neutral;
                                         surprise is left out (it carries no polarity)
nlpcc2016-stance     stance     zh       support <- FAVOR, oppose <- AGAINST, neutral <- NONE (topic = target)
rumoureval-sdqc      sdqc       en       support, deny, query, comment (RumourEval 2017 traindev; PHEME
                                         rumour-scheme replies not already in it are added)
rumoureval-stance    stance     en       the same replies, SDQC mapped by ``SDQC_TO_STANCE``
==================== ========== ======== ===================================================================

Every :class:`Validation` carries the gold set, the protocol (held-out rows, out-of-fold
predictions, or "not trained on this data" for lexicons and judges), the confusion matrix, accuracy,
macro-F1, per-class recall and the majority-class baseline beside them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mfllm.data.loaders import PhemeReader, RumourEvalReader, get_reader
from mfllm.data.readers.base import read_json
from mfllm.data.readers.pheme import read_json_objects_lenient
from mfllm.data.schema import DataFormatError
from mfllm.evaluation.dimensions import BUILTIN_DIMENSIONS, SDQC, Dimension
from mfllm.evaluation.labellers import LabelItem, Labeller

# SDQC gold onto the 3-way stance dimension (a query or a comment takes no side)
SDQC_TO_STANCE = {"support": "support", "deny": "oppose", "query": "neutral", "comment": "neutral"}
# SMP2020-EWECT's six emotions onto our emotion dimension: "neutral" (无情绪, no emotion) is our "calm"
EWECT_TO_EMOTION = {"happy": "happy", "angry": "angry", "sad": "sad", "fear": "fear", "surprise": "surprise", "neutral": "calm"}
# ... and onto sentiment polarity; surprise has no polarity and is left out of that set
EWECT_TO_SENTIMENT = {"happy": "positive", "angry": "negative", "sad": "negative", "fear": "negative", "neutral": "neutral"}
WEIBO2018_TO_SENTIMENT = {"0": "negative", "1": "positive"}
NLPCC_TO_STANCE = {"FAVOR": "support", "AGAINST": "oppose", "NONE": "neutral"}
NONE_LABEL = "(none)"


@dataclass
class GoldSet:
    """Human-labelled items for one dimension, with a group per item (rows of a group stay together
    in any split: identical texts, one thread's event, one stance target)."""

    name: str
    dimension: str
    language: str
    source: str
    items: list[LabelItem]
    gold: list[str]
    groups: list[str]

    @property
    def threads(self) -> list[str | None]:
        """Each item's thread (source post id; None where the set has no threads)."""
        return [item.thread for item in self.items]

    def __post_init__(self) -> None:
        if not (len(self.items) == len(self.gold) == len(self.groups)):
            raise ValueError(f"gold set {self.name}: {len(self.items)} items, {len(self.gold)} labels, {len(self.groups)} groups")
        if not self.items:
            raise ValueError(f"gold set {self.name}: no rows")

    def subset(self, indices: Sequence[int]) -> GoldSet:
        return GoldSet(self.name, self.dimension, self.language, self.source, [self.items[i] for i in indices],
                       [self.gold[i] for i in indices], [self.groups[i] for i in indices])


def weibo2018_sentiment(root: str | Path) -> GoldSet:
    file = Path(root) / "labeller_validation" / "sentiment_weibo2018" / "train.shared_6000.txt"
    items, gold, groups = [], [], []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split(",", 2)
        if len(parts) != 3 or parts[1] not in WEIBO2018_TO_SENTIMENT:
            raise ValueError(f"{file}: line {number}: expected 'mid,label,text' with label 0 or 1, got {line[:60]!r}")
        items.append(LabelItem(parts[2], "", "zh"))
        gold.append(WEIBO2018_TO_SENTIMENT[parts[1]])
        groups.append(parts[2])
    return GoldSet("weibo2018-sentiment", "sentiment", "zh", "weibo2018 (dengxiuqi/weibo2018 @ 4c6145e), hand-labelled Weibo posts",
                   items, gold, groups)


def _ewect_rows(root: str | Path) -> list[tuple[str, str, str]]:
    """(file stem, text, EWECT label) of the three shared SMP2020-EWECT files."""
    folder = Path(root) / "labeller_validation" / "emotion_smp2020_ewect"
    rows = []
    for name in ("usual_eval_labeled.txt", "virus_eval_labeled.txt", "virus_train.shared_2000.txt"):
        records = read_json(folder / name)
        if not isinstance(records, list):
            raise ValueError(f"{folder / name}: expected one JSON array of {{id, content, label}}")
        for k, record in enumerate(records):
            if not isinstance(record, dict) or not isinstance(record.get("content"), str) or record.get("label") not in EWECT_TO_EMOTION:
                raise ValueError(f"{folder / name}: record {k}: needs string 'content' and a label in {sorted(EWECT_TO_EMOTION)}")
            rows.append((name.split("_")[0], record["content"], record["label"]))
    return rows


_EWECT_SOURCE = "SMP2020-EWECT (HIT-SCIR annotation; copy BrownSweater/BERT_SMP2020-EWECT @ e928cec), usual + virus Weibo posts"


def smp2020_emotion(root: str | Path) -> GoldSet:
    rows = _ewect_rows(root)
    return GoldSet("smp2020-emotion", "emotion", "zh", _EWECT_SOURCE, [LabelItem(text, "", "zh") for _, text, _ in rows],
                   [EWECT_TO_EMOTION[label] for _, _, label in rows], [text for _, text, _ in rows])


def smp2020_sentiment(root: str | Path) -> GoldSet:
    rows = [r for r in _ewect_rows(root) if r[2] in EWECT_TO_SENTIMENT]
    return GoldSet("smp2020-sentiment", "sentiment", "zh", _EWECT_SOURCE + " (emotion mapped to polarity, surprise left out)",
                   [LabelItem(text, "", "zh") for _, text, _ in rows], [EWECT_TO_SENTIMENT[label] for _, _, label in rows],
                   [text for _, text, _ in rows])


def nlpcc2016_stance(root: str | Path) -> GoldSet:
    file = Path(root) / "labeller_validation" / "stance_nlpcc2016" / "evasampledata4-TaskAA.shared.txt"
    lines = file.read_text(encoding="utf-8-sig").splitlines()
    items, gold, groups = [], [], []
    for number, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) != 4 or parts[3] not in NLPCC_TO_STANCE:
            raise ValueError(f"{file}: line {number}: expected 'ID TARGET TEXT STANCE' with STANCE in {sorted(NLPCC_TO_STANCE)}")
        items.append(LabelItem(parts[2], parts[1], "zh"))
        gold.append(NLPCC_TO_STANCE[parts[3]])
        groups.append(parts[1])
    return GoldSet("nlpcc2016-stance", "stance", "zh", "NLPCC 2016 Task 4A (Xu et al. 2016; copy jacoxu/2016NLPCC_Stance_Detection @ 185c763)",
                   items, gold, groups)


def _thread_events(pheme_root: Path) -> dict[str, str]:
    """PHEME thread id -> event name, from the tweet-level annotation file (covers all 297 English threads)."""
    file = PhemeReader._threads_root(pheme_root).parent / "annotations" / "en-scheme-annotations.json"
    records = read_json_objects_lenient(file) if file.is_file() else []
    return {str(r.get("threadid")): str(r.get("event")) for r in records}


def rumoureval_sdqc(root: str | Path) -> GoldSet:
    """RumourEval 2017 replies with SDQC gold, plus PHEME rumour-scheme replies not already there.
    Groups are PHEME events (charliehebdo, ferguson, ...), so a split by group holds out whole events."""
    rumoureval, pheme = Path(root) / "rumoureval2017_processed", Path(root) / "pheme_rumour_scheme_subset"
    events = _thread_events(pheme) if pheme.is_dir() else {}
    items, gold, groups, seen, skipped = [], [], [], set(), []
    for path, reader in ((rumoureval, RumourEvalReader()), (pheme, PhemeReader())):
        if not path.is_dir():
            continue
        for event_id in reader.list_events(path):
            try:
                event, _ = reader.load_event(path, event_id)
            except DataFormatError:  # a thread without a usable source tweet (two in the PHEME copy); counted below
                skipped.append(event_id)
                continue
            for reaction in event.reactions:
                if "stance" in reaction.labels and reaction.post_id not in seen:
                    seen.add(reaction.post_id)
                    items.append(LabelItem(reaction.text, event.source.text, "en", reaction.kind, event.source.post_id))
                    gold.append(reaction.labels["stance"])
                    groups.append(events.get(event_id, event.labels.get("event", event_id)))
    note = f"; {len(skipped)} threads without a usable source tweet skipped ({', '.join(skipped)})" if skipped else ""
    return GoldSet("rumoureval-sdqc", "sdqc", "en", "RumourEval 2017 traindev (Derczynski et al. 2017) + PHEME rumour-scheme "
                   f"replies (Zubiaga et al. 2016), annotations CC-BY{note}", items, gold, groups)


def rumoureval_stance(root: str | Path) -> GoldSet:
    sdqc = rumoureval_sdqc(root)
    return GoldSet("rumoureval-stance", "stance", "en", sdqc.source + " (SDQC mapped: deny->oppose, query/comment->neutral)",
                   sdqc.items, [SDQC_TO_STANCE[g] for g in sdqc.gold], sdqc.groups)


GOLD_SETS: dict[str, Callable[[str | Path], GoldSet]] = {
    "weibo2018-sentiment": weibo2018_sentiment, "smp2020-emotion": smp2020_emotion, "smp2020-sentiment": smp2020_sentiment,
    "nlpcc2016-stance": nlpcc2016_stance, "rumoureval-sdqc": rumoureval_sdqc, "rumoureval-stance": rumoureval_stance,
}


# (dimension, language) of each gold set, known before reading it
GOLD_SET_COVERS: dict[str, tuple[str, str]] = {
    "weibo2018-sentiment": ("sentiment", "zh"), "smp2020-emotion": ("emotion", "zh"), "smp2020-sentiment": ("sentiment", "zh"),
    "nlpcc2016-stance": ("stance", "zh"), "rumoureval-sdqc": ("sdqc", "en"), "rumoureval-stance": ("stance", "en"),
}


def load_gold_set(name: str, root: str | Path) -> GoldSet:
    """A gold set by name from the shared data folder ``root`` (the one holding ``labeller_validation/``)."""
    if name not in GOLD_SETS:
        raise ValueError(f"unknown gold set {name!r}; available: {', '.join(GOLD_SETS)}")
    return GOLD_SETS[name](root)


def dimension_of(gold_set: GoldSet) -> Dimension:
    return SDQC if gold_set.dimension == SDQC.name else BUILTIN_DIMENSIONS[gold_set.dimension]


@dataclass
class Validation:
    """Agreement of one labeller with human labels on one dimension, language and gold set."""

    labeller: str
    dimension: str
    language: str
    data: str
    protocol: str
    labels: list[str]
    confusion: list[list[int]]  # gold label (rows, ``labels``) -> predicted (columns, ``labels`` + "(none)")
    items: int
    labelled: int
    accuracy: float
    macro_f1: float
    recall: dict[str, float]
    majority_label: str
    majority_accuracy: float
    majority_macro_f1: float
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def at_or_below_majority(self) -> bool:
        """No better than always answering the most common gold label, on accuracy or on macro-F1."""
        return self.accuracy <= self.majority_accuracy or self.macro_f1 <= self.majority_macro_f1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Validation:
        return cls(**data)

    def render(self) -> str:
        columns = self.labels + [NONE_LABEL]
        width = max(len(x) for x in columns + ["gold \\ predicted"]) + 2
        where = "; ".join(x for x in (self.language, self.data, self.protocol) if x)
        lines = [f"labeller {self.labeller} on {self.dimension}: {self.items} items, {self.labelled} labelled ({where})",
                 f"accuracy {self.accuracy:.3f}   macro-F1 {self.macro_f1:.3f}   (majority class {self.majority_label!r}: "
                 f"accuracy {self.majority_accuracy:.3f}, macro-F1 {self.majority_macro_f1:.3f})"
                 + ("   WARNING: no better than the majority class" if self.at_or_below_majority else ""),
                 "recall " + "  ".join(f"{label} {value:.3f}" for label, value in self.recall.items()),
                 "gold \\ predicted".ljust(width) + "".join(x.rjust(width) for x in columns)]
        for label, row in zip(self.labels, self.confusion):
            if sum(row):
                lines.append(label.ljust(width) + "".join(str(n).rjust(width) for n in row))
        if self.failures:
            lines.append("unlabelled: " + ", ".join(f"{n} × {why}" for why, n in self.failures.items()))
        return "\n".join(lines)


def _macro_f1(pairs: Sequence[tuple[str, str]], labels: Sequence[str]) -> float:
    """Mean over the labels present in the gold set of 2 TP / (2 TP + FP + FN).

    A prediction outside the gold labels (e.g. neutral on a positive/negative set) counts as a miss of
    its gold label but adds no class of its own, as in the usual macro-F1 over gold classes."""
    present = {g for g, _ in pairs}
    scores = []
    for label in (label for label in labels if label in present):
        tp = sum(g == label and p == label for g, p in pairs)
        fp = sum(g != label and p == label for g, p in pairs)
        fn = sum(g == label and p != label for g, p in pairs)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def validation_from_predictions(gold: Sequence[str], predicted: Sequence[str | None], dimension: Dimension, labeller: str,
                                language: str, data: str, protocol: str, failures: dict[str, int] | None = None) -> Validation:
    """All agreement figures from aligned gold and predicted labels (None = the labeller gave no label).

    Accuracy and macro-F1 (over the gold set's labels) count an unlabelled item as wrong, so a labeller
    cannot gain by abstaining.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"misaligned validation: {len(gold)} gold labels, {len(predicted)} predictions")
    if not gold:
        raise ValueError("validation needs at least one gold label")
    labels = list(dimension.labels)
    unknown = sorted({g for g in gold if g not in labels} | {p for p in predicted if p is not None and p not in labels})
    if unknown:
        raise ValueError(f"labels {unknown} are not in dimension {dimension.name!r} {labels}")
    columns = labels + [NONE_LABEL]
    confusion = [[0] * len(columns) for _ in labels]
    for g, p in zip(gold, predicted):
        confusion[labels.index(g)][columns.index(p if p is not None else NONE_LABEL)] += 1
    pairs = [(g, p if p is not None else NONE_LABEL) for g, p in zip(gold, predicted)]
    gold_counts = Counter(gold)
    majority_label = max(labels, key=lambda label: (gold_counts[label], -labels.index(label)))
    recall = {label: confusion[k][k] / gold_counts[label] for k, label in enumerate(labels) if gold_counts[label]}
    return Validation(labeller, dimension.name, language, data, protocol, labels, confusion, len(gold),
                      sum(p is not None for p in predicted), sum(g == p for g, p in pairs) / len(pairs), _macro_f1(pairs, labels),
                      recall, majority_label, gold_counts[majority_label] / len(gold),
                      _macro_f1([(g, majority_label) for g in gold], labels), dict(failures or {}))


def _failure_kinds(failures: dict[int, str]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for reason in failures.values():
        kind = re.sub(r"(['\"]).*\1", "…", reason)  # group by kind of failure, not by each answer's text
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def agreement(labeller: Labeller, dimension: Dimension, items: list[LabelItem], gold: list[str], data: str = "",
              protocol: str = "not trained on this data", language: str | None = None) -> Validation:
    """Label ``items`` and compare with ``gold`` (SDQC gold is mapped onto the 3-way stance dimension)."""
    if dimension.name == "stance" and set(gold) <= set(SDQC.labels):
        gold = [SDQC_TO_STANCE[g] for g in gold]
    result = labeller.label(items, dimension)
    languages = sorted({item.language for item in items})
    return validation_from_predictions(gold, result.labels, dimension, labeller.name, language or "+".join(languages), data,
                                       protocol, _failure_kinds(result.failures))


def validate_gold_set(labeller: Labeller, gold_set: GoldSet, protocol: str = "not trained on this data") -> Validation:
    return agreement(labeller, dimension_of(gold_set), gold_set.items, gold_set.gold, gold_set.name, protocol, gold_set.language)


def gold_items(path: str | Path, data_format: str | None = None, limit: int | None = None) -> tuple[list[LabelItem], list[str]]:
    """Replies with a gold ``stance`` (SDQC) label in a RumourEval/PHEME dataset, in dataset order, up to ``limit``."""
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


def write_validations(validations: Sequence[Validation], path: str | Path) -> Path:
    out = Path(path)
    out.write_text(json.dumps([v.to_json() for v in validations], indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def read_validations(path: str | Path) -> list[Validation]:
    return [Validation.from_json(item) for item in json.loads(Path(path).read_text(encoding="utf-8"))]


def validate_labeller(labeller: Labeller, root: str | Path, names: Sequence[str] | None = None,
                      protocol: str = "not trained on this data", rows: int | None = None, seed: int = 0) -> list[Validation]:
    """Validate ``labeller`` on every gold set (of ``names``, default all) whose dimension and language it
    covers; with ``rows``, on that many rows of each set drawn at random (``seed``), for slow labellers."""
    validations = []
    for name in names or list(GOLD_SETS):
        loader = GOLD_SETS.get(name)
        if loader is None:
            raise ValueError(f"unknown gold set {name!r}; available: {', '.join(GOLD_SETS)}")
        dimension_name, language = GOLD_SET_COVERS[name]
        if not labeller.covers(SDQC if dimension_name == SDQC.name else BUILTIN_DIMENSIONS[dimension_name], language):
            continue
        gold_set = loader(root)
        if rows is not None and rows < len(gold_set.items):
            drawn = np.random.default_rng(seed).permutation(len(gold_set.items))[:rows]
            gold_set = gold_set.subset(sorted(drawn.tolist()))
            protocol_used = f"{protocol}; {rows} rows drawn at random (seed {seed})"
        else:
            protocol_used = protocol
        validations.append(validate_gold_set(labeller, gold_set, protocol_used))
    return validations
