"""Scenarios: who acts at each step of a run.

Replay of the recorded event is the default scenario: the agents of a step are the next real users,
each with their real reaction beside them, so evaluation can compare. A scenario whose agents carry
no real reaction (a population drawn from profiles, a forecast past the data) writes rows without
one, and evaluation compares only where a real reaction exists.

What happens at a step besides agents acting (an injected post, a statement, moderation) is the
scenario's too: :meth:`Scenario.interventions` lists what is in effect at a step, and the engine applies
it through the step (:class:`~mfllm.simulation.step.StepContext`). :class:`Intervened` adds interventions
to any scenario.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

from mfllm.data.schema import Event
from mfllm.simulation.interventions import Scheduled
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

    def interventions(self, step: Step) -> Sequence[Scheduled]:
        """What the scenario makes happen at ``step``: the interventions in effect there (none by default)."""
        return ()

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


class Intervened(Scenario):
    """A scenario with interventions placed on its schedule: the same steps and agents, plus what happens at each step."""

    def __init__(self, base: Scenario, scheduled: Sequence[Scheduled]):
        self.base, self.scheduled = base, list(scheduled)
        self.name = base.name

    def steps(self) -> list[Step]:
        return self.base.steps()

    def agents(self, step: Step) -> list[Agent]:
        return self.base.agents(step)

    def interventions(self, step: Step) -> list[Scheduled]:
        return [s for s in self.scheduled if s.active(step.index)]

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "interventions": [s.id for s in self.scheduled]}
