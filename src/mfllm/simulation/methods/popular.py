"""The Popular-k baseline: the k most engaged-with actions among the last ``window``."""

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
class PopularK(ActionMemory):
    """Engagement is reposts + comments + likes the action received (not the author's follower count).

    A simulated action carries the engagement of the real reaction in its slot, since a simulation
    cannot observe engagement its own outputs would have received. Ties go to the more recent action.

    Interventions: a post injected for everyone enters the window at its step with the ``engagement`` its
    file declares, so a post declared more engaged-with than the replies stays in the top k while it is
    among the last ``popular_window`` actions; a statement is shown as a notice above the context.
    """

    name = "popular"
    description = "the top k by engagement received among the last popular_window actions"
    headers = {"zh": "评论区最热的几条评论：", "en": "The most engaged-with replies:"}

    def __init__(self, language: str, k: int, window: int):
        super().__init__(language, window)
        self.k = k

    @classmethod
    def create(cls, config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> PopularK:
        return cls(event.language, config.context_k, config.popular_window)

    def context(self) -> str | None:
        if not self.memory:
            return None
        ranked = sorted(enumerate(self.memory), key=lambda pair: (-pair[1].engagement, -pair[0]))[: self.k]
        return render_actions([a for _, a in ranked], self.language)
