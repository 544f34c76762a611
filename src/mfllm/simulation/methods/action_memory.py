"""The memory of recent actions that the Recent-k and Popular-k baselines show from."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

from mfllm.interfaces import AgentAction, ContextProvider


class ActionMemory(ContextProvider):
    """Keeps the last ``capacity`` actions, oldest first; subclasses choose which to show."""

    def __init__(self, language: str, capacity: int):
        self.language, self.capacity = language, capacity
        self.memory: list[AgentAction] = []

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        self.memory = (self.memory + list(actions))[-self.capacity:]

    def state_dict(self) -> dict[str, Any]:
        return {"memory": [asdict(a) for a in self.memory]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = [AgentAction(**a) for a in state["memory"]]
