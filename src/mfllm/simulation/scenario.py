"""Scenarios: who acts at each step of a run.

Replay of the recorded event is the default scenario: the agents of a step are the next real users,
each with their real reaction beside them, so evaluation can compare. A scenario whose agents carry
no real reaction (a population drawn from profiles, a forecast past the data) writes rows without
one, and evaluation compares only where a real reaction exists.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from mfllm.data.schema import Event
from mfllm.simulation.step import Agent, Step, schedule


class Scenario(ABC):
    """The schedule of a run and the agents of each step."""

    name: str

    @abstractmethod
    def steps(self) -> list[Step]:
        """Every step, warm-up first; warm-up agents must carry real reactions (they are replayed)."""

    @abstractmethod
    def agents(self, step: Step) -> list[Agent]:
        """The agents that act at ``step``, one per position."""

    def describe(self) -> dict[str, Any]:
        """What the run manifest records about the scenario."""
        return {"name": self.name}


class Replay(Scenario):
    """Warm up on the first ``warmup`` real reactions, then the next real users act in batches."""

    name = "replay"

    def __init__(self, event: Event, warmup: int, batch_size: int, num_agents: int | None):
        self.event = event
        self._steps = schedule(len(event.reactions), warmup, batch_size, num_agents)

    def steps(self) -> list[Step]:
        return self._steps

    def agents(self, step: Step) -> list[Agent]:
        return [Agent.of(self.event.reactions[p], p) for p in step.positions]
