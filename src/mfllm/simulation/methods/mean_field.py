"""The mean field m_t: a short text the mean-field model rewrites from m_{t-1} and each new batch."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

from mfllm.interfaces import AgentAction, LanguageModel, LLMMeanField, Prompt, SamplingParams
from mfllm.prompts import mean_field_prompt
from mfllm.simulation.methods import register

if TYPE_CHECKING:
    from mfllm.data.schema import Event
    from mfllm.simulation.config import SimulationConfig

UPDATE_STOP = ("\n",)
"""Where a mean-field update ends."""


def mean_field_sampling(config: SimulationConfig) -> SamplingParams:
    """How a run samples its mean-field updates (the run records the resolved settings)."""
    temperature = config.temperature if config.mean_field_temperature is None else config.mean_field_temperature
    top_p = config.top_p if config.mean_field_top_p is None else config.mean_field_top_p
    return SamplingParams(config.max_mean_field_tokens, temperature, top_p, UPDATE_STOP)


@register
class MeanField(LLMMeanField):
    """m_t = μ(m_{t-1}, latest batch of (persona, action)), sampled from the mean-field model.

    Interventions: a post injected for everyone joins the batch of its step's update (first, with its
    author as the persona), so the summary takes it in like an action and later updates keep or drop it.
    A statement for everyone is appended to the summary at its step, before that step's agents read it;
    later updates rewrite it with the rest (:meth:`accept` takes the extended summary)."""

    name = "mf"
    description = "mean field: a summary the mean-field model rewrites after every batch"
    headers = {"zh": "评论区概况：", "en": "What the replies say so far:"}
    needs_mean_field_model = True
    is_baseline = False

    def __init__(self, model: LanguageModel | None, topic: str, language: str, params: SamplingParams, max_chars: int):
        self.model, self.topic, self.language = model, topic, language
        self.params, self.max_chars = params, max_chars
        self.text: str | None = None

    @classmethod
    def create(cls, config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> MeanField:
        return cls(mean_field_model, event.source.text, event.language, mean_field_sampling(config), config.mean_field_max_chars)

    def update_prompt(self, actions: Sequence[AgentAction]) -> Prompt:
        return mean_field_prompt(self.topic, self.text, actions, self.language, self.max_chars)

    def accept(self, update: str) -> None:
        """An empty update keeps the previous summary rather than erasing it."""
        update = update.strip()
        if update:
            self.text = update

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        if not actions:
            return
        if self.model is None:
            raise RuntimeError("this mean field was built without a mean-field model: it can be restored and read, not updated")
        self.accept(self.model.generate([self.update_prompt(actions)], replace(self.params, seed=seed))[0])

    def context(self) -> str | None:
        return self.text

    def state_dict(self) -> dict[str, Any]:
        return {"text": self.text}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.text = state["text"]
