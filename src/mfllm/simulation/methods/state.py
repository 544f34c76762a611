"""The State baseline: an agent sees only the topic and its own profile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from mfllm.interfaces import AgentAction, ContextProvider, LanguageModel
from mfllm.simulation.methods import register

if TYPE_CHECKING:
    from mfllm.data.schema import Event
    from mfllm.simulation.config import SimulationConfig


@register
class State(ContextProvider):
    """No context at all; the policy acts from (topic, profile).

    Interventions: nothing is taken in; agents see an injected post (pinned) and a statement (as a notice)
    only in their own prompts, from the intervention's step on."""

    name = "state"
    description = "profile only: the agent sees the topic and its own profile, no context"

    @classmethod
    def create(cls, config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> State:
        return cls()

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        return None

    def context(self) -> str | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
