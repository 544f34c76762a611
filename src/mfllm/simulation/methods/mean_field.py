"""The LLM mean field: key points of the population's reactions that the mean-field model rewrites
from the previous points and each new batch (``mf-llm``)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

from mfllm.interfaces import AgentAction, LanguageModel, LLMMeanField, Prompt, SamplingParams
from mfllm.prompts import MEAN_FIELD_STOP, TEMPLATES, mean_field_prompt
from mfllm.simulation.methods import register
from mfllm.text import is_degenerate

if TYPE_CHECKING:
    from mfllm.data.schema import Event
    from mfllm.simulation.config import SimulationConfig

def output_vocabulary(config: SimulationConfig, language: str) -> str | None:
    """The vocabulary a run's generations are restricted to (None: the whole vocabulary)."""
    return language if config.output_vocabulary == "language" else None


def mean_field_sampling(config: SimulationConfig, language: str) -> SamplingParams:
    """How a run samples its mean-field updates (the run records the resolved settings)."""
    temperature = config.temperature if config.mean_field_temperature is None else config.mean_field_temperature
    top_p = config.top_p if config.mean_field_top_p is None else config.mean_field_top_p
    return SamplingParams(config.max_mean_field_tokens, temperature, top_p, MEAN_FIELD_STOP,
                          vocabulary=output_vocabulary(config, language))


def clip_points(text: str, language: str, max_chars: int) -> str:
    """Points cut to ``max_chars`` characters (zh) or words (en)."""
    if language == "zh":
        return text[:max_chars]
    return " ".join(text.split()[:max_chars])


def usable_points(update: str, language: str) -> str | None:
    """A sampled update as points, or None when it is not one: empty, a copied reaction line (a list item
    or a kind marker) rather than a summary of them, or degenerate (:func:`mfllm.text.is_degenerate`: a
    loop or no words, which every agent would be shown)."""
    update = update.strip()
    if not update or update.startswith(("-", "#")) or any(m in update for m in TEMPLATES[language].markers.values()) \
            or is_degenerate(update):
        return None
    return update


class KeyPoints:
    """The LLM part of a mean field: points rewritten by the mean-field model from the previous points
    and the latest batch. An unusable update keeps the previous points."""

    def __init__(self, model: LanguageModel | None, topic: str, language: str, params: SamplingParams, max_chars: int):
        self.model, self.topic, self.language = model, topic, language
        self.params, self.max_chars = params, max_chars
        self.text: str | None = None

    def prompt(self, actions: Sequence[AgentAction]) -> Prompt:
        return mean_field_prompt(self.topic, self.text, actions, self.language)

    def accept(self, update: str) -> None:
        points = usable_points(update, self.language)
        if points is not None:
            self.text = clip_points(points, self.language, self.max_chars)

    def add(self, statement: str) -> None:
        """A statement joins the points as it is (it is not the model's to reject)."""
        self.text = f"{self.text} {statement}" if self.text else statement

    def update(self, actions: Sequence[AgentAction], seed: int) -> None:
        if self.model is None:
            raise RuntimeError("this mean field was built without a mean-field model: it can be restored and read, not updated")
        self.accept(self.model.generate([self.prompt(actions)], replace(self.params, seed=seed))[0])


class KeyPointsMeanField(LLMMeanField):
    """An LLM mean field whose model-written part is :class:`KeyPoints` (``self.points``)."""

    points: KeyPoints

    def update_prompt(self, actions: Sequence[AgentAction]) -> Prompt:
        return self.points.prompt(actions)

    def accept(self, update: str) -> None:
        self.points.accept(update)

    def add_statement(self, text: str) -> None:
        self.points.add(text)


@register
class MeanField(KeyPointsMeanField):
    """m_t = μ(m_{t-1}, latest batch of (persona, action)): key points sampled from the mean-field model
    with a completion layout a base model continues (two worked records, then the new one).

    Interventions: a post injected for everyone joins the batch of its step's update (first, with its
    author as the persona), so the points take it in like an action and later updates keep or drop it.
    A statement for everyone is appended to the points at its step, before that step's agents read it;
    later updates rewrite it with the rest (:meth:`add_statement`)."""

    name = "mf-llm"
    description = "LLM mean field: key points the mean-field model rewrites after every batch"
    headers = {"zh": "评论区要点：", "en": "Key points of the replies so far:"}
    needs_mean_field_model = True
    is_baseline = False

    def __init__(self, points: KeyPoints):
        self.points = points

    @classmethod
    def create(cls, config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> MeanField:
        return cls(KeyPoints(mean_field_model, event.source.text, event.language, mean_field_sampling(config, event.language), config.mean_field_max_chars))

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        if actions:
            self.points.update(actions, seed)

    def context(self) -> str | None:
        return self.points.text

    def state_dict(self) -> dict[str, Any]:
        return {"text": self.points.text}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.points.text = state["text"]
