"""Context providers: what an agent sees of the population (mean field, recent-k, popular-k, nothing)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

from mfllm.interfaces import AgentAction, ContextProvider, LanguageModel, SamplingParams
from mfllm.prompts import mean_field_prompt, render_actions


class NoContext(ContextProvider):
    """The State baseline (and SFT): the agent sees only the topic and its own profile."""

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        return None

    def context(self) -> str | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class _ActionMemory(ContextProvider):
    def __init__(self, language: str, capacity: int):
        self.language, self.capacity = language, capacity
        self.memory: list[AgentAction] = []

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        self.memory = (self.memory + list(actions))[-self.capacity:]

    def state_dict(self) -> dict[str, Any]:
        return {"memory": [asdict(a) for a in self.memory]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = [AgentAction(**a) for a in state["memory"]]


class RecentK(_ActionMemory):
    """The Recent-k baseline: the last k actions, oldest first."""

    def __init__(self, language: str, k: int):
        super().__init__(language, k)

    def context(self) -> str | None:
        return render_actions(self.memory, self.language) if self.memory else None


class PopularK(_ActionMemory):
    """The Popular-k baseline: the k most engaged-with actions among the last ``window``.

    Engagement is reposts + comments + likes the action received (not the author's follower count).
    A simulated action carries the engagement of the real reaction in its slot, since a simulation
    cannot observe engagement its own outputs would have received.
    """

    def __init__(self, language: str, k: int, window: int):
        super().__init__(language, window)
        self.k = k

    def context(self) -> str | None:
        if not self.memory:
            return None
        ranked = sorted(enumerate(self.memory), key=lambda pair: (-pair[1].engagement, -pair[0]))[: self.k]
        return render_actions([a for _, a in ranked], self.language)


class MeanField(ContextProvider):
    """The mean field m_t: a short text the mean-field model rewrites from m_{t-1} and each new batch."""

    def __init__(self, model: LanguageModel, topic: str, language: str, params: SamplingParams, max_chars: int):
        self.model, self.topic, self.language = model, topic, language
        self.params, self.max_chars = params, max_chars
        self.text: str | None = None

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        if not actions:
            return
        prompt = mean_field_prompt(self.topic, self.text, actions, self.language, self.max_chars)
        params = SamplingParams(self.params.max_new_tokens, self.params.temperature, self.params.top_p, self.params.stop, seed)
        update = self.model.generate([prompt], params)[0].strip()
        if update:  # an empty update keeps the previous summary rather than erasing it
            self.text = update

    def context(self) -> str | None:
        return self.text

    def state_dict(self) -> dict[str, Any]:
        return {"text": self.text}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.text = state["text"]
