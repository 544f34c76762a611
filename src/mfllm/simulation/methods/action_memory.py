"""The memory of recent actions that the Recent-k and Popular-k baselines show from, and the rule every
context applies before showing an action: nothing that would feed a collapse of the population."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterable, Sequence

from mfllm.interfaces import AgentAction, ContextProvider
from mfllm.prompts import action_choice, needs_text
from mfllm.text import is_degenerate, normalise, opening


def showable(actions: Iterable[AgentAction], language: str, shown: Iterable[AgentAction] = ()) -> list[AgentAction]:
    """The ``actions`` a context may show next to ``shown``: a bare repost always; an action with words unless
    its text is degenerate (:func:`mfllm.text.is_degenerate`) or repeats (:func:`mfllm.text.normalise`) a text
    already shown or earlier in ``actions``, and, for a simulated action, unless it opens
    (:func:`mfllm.text.opening`) like one of them. Real users do not repeat each other word for word; a
    context that showed the simulated population's repeats, loops and templates (``大家好，我是…`` again and
    again) would teach the next agents to copy them. Recorded reactions keep their shared openings
    (``哈哈哈``, ``//@``): they are how people write, which the context is there to show."""
    writing = [a for a in shown if needs_text(action_choice(a.kind, a.text))]
    taken = {normalise(a.text) for a in writing}
    openings = {opening(a.text, language) for a in writing} - {None}
    kept = []
    for action in actions:
        if needs_text(action_choice(action.kind, action.text)):
            key, start = normalise(action.text), opening(action.text, language)
            if key in taken or (action.simulated and start in openings) or is_degenerate(action.text):
                continue
            taken.add(key)
            if start is not None:
                openings.add(start)
        kept.append(action)
    return kept


class ActionMemory(ContextProvider):
    """Keeps the last ``capacity`` showable actions (:func:`showable`), oldest first; subclasses choose which
    to show."""

    def __init__(self, language: str, capacity: int):
        self.language, self.capacity = language, capacity
        self.memory: list[AgentAction] = []

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        self.memory = (self.memory + showable(actions, self.language, self.memory))[-self.capacity:]

    def state_dict(self) -> dict[str, Any]:
        return {"memory": [asdict(a) for a in self.memory]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = [AgentAction(**a) for a in state["memory"]]
