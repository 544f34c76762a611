"""The Recent-k baseline: the last k actions, oldest first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mfllm.interfaces import LanguageModel
from mfllm.prompts import render_actions
from mfllm.simulation.methods import register
from mfllm.simulation.methods.action_memory import ActionMemory

if TYPE_CHECKING:
    from mfllm.data.schema import Event
    from mfllm.simulation.config import SimulationConfig


@register
class RecentK(ActionMemory):
    """Shows the ``k`` most recent actions.

    Interventions: a post injected for everyone enters the memory at its step, before that step's actions,
    and is listed until ``k`` newer actions push it out; a statement has no summary to join and is shown
    as a notice above the context."""

    name = "recent"
    description = "the last k actions (--context-k)"
    headers = {"zh": "评论区最新的几条评论：", "en": "The latest replies:"}

    def __init__(self, language: str, k: int):
        super().__init__(language, k)

    @classmethod
    def create(cls, config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> RecentK:
        return cls(event.language, config.context_k)

    def context(self) -> str | None:
        return render_actions(self.memory, self.language) if self.memory else None
