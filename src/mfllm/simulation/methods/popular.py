"""The Popular-k baseline: the k most engaged-with actions among the last ``window``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from mfllm.interfaces import AgentAction, LanguageModel
from mfllm.prompts import render_actions
from mfllm.simulation.methods import register
from mfllm.simulation.methods.action_memory import ActionMemory

if TYPE_CHECKING:
    from mfllm.data.schema import Event
    from mfllm.simulation.config import SimulationConfig


def recorded_responses(event: Event, known: int) -> list[list[int]]:
    """For each reaction of ``event`` (by position), the positions of the replies and reposts to it among the
    first ``known`` reactions, the real history a simulation is given (its warm-up)."""
    position_of = {r.post_id: p for p, r in enumerate(event.reactions)}
    responses: list[list[int]] = [[] for _ in event.reactions]
    for p, reaction in enumerate(event.reactions[:known]):
        parent = position_of.get(reaction.parent_id or "")
        if parent is not None and parent != p:
            responses[parent].append(p)
    return responses


@register
class PopularK(ActionMemory):
    """Engagement of an action is the number of replies and reposts to it recorded before the step: the
    event's reactions whose parent it is, among the real reactions a simulation is given (the warm-up) that
    the context has taken in by then. Crawl-time counts (likes, retweet and comment
    totals) are not used: they include reactions from after the step and carry no time. A simulated action
    has no recorded responses, so it ranks by recency. Ties go to the more recent action.

    Without an event's responses (``responses=None``) the actions' own ``engagement`` is used, as it is for a
    post injected by an intervention, which enters the window at its step with the ``engagement`` its file
    declares (so a post declared more engaged-with stays in the top k while it is among the last
    ``popular_window`` actions); a statement is shown as a notice above the context.
    """

    name = "popular"
    description = "the top k by replies and reposts received before the step, among the last popular_window actions"
    headers = {"zh": "评论区最热的几条评论：", "en": "The most engaged-with replies:"}

    def __init__(self, language: str, k: int, window: int, responses: Sequence[Sequence[int]] | None = None):
        super().__init__(language, window)
        self.k, self.responses = k, responses

    @classmethod
    def create(cls, config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> PopularK:
        return cls(event.language, config.context_k, config.popular_window, recorded_responses(event, config.warmup))

    def engagement(self, action: AgentAction, newest: int) -> int:
        """Responses to ``action`` recorded before the step (``newest``: the newest position taken in)."""
        if self.responses is None or not 0 <= action.position < len(self.responses):
            return action.engagement
        return sum(p <= newest for p in self.responses[action.position])

    def context(self) -> str | None:
        if not self.memory:
            return None
        newest = max(a.position for a in self.memory)
        ranked = sorted(enumerate(self.memory), key=lambda pair: (-self.engagement(pair[1], newest), -pair[0]))[: self.k]
        return render_actions([a for _, a in ranked], self.language)
