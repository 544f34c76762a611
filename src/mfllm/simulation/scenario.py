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

from mfllm.data.schema import Event, UserProfile
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


class Forecast(Scenario):
    """Warm up on the first ``warmup`` real reactions, then agents who are not in the data act in batches:
    agent ``i`` of the horizon is ``users[i]`` acting at ``timestamps[i]`` (a forecast past the origin; its rows
    carry no real reaction). Who they are and when they act is decided by the caller (see
    :mod:`mfllm.analysis.forecast`); ``details`` is what the manifest records about that."""

    name = "forecast"

    def __init__(self, event: Event, warmup: int, batch_size: int, users: Sequence[UserProfile], timestamps: Sequence[float],
                 details: dict[str, Any] | None = None):
        if not 0 < warmup <= len(event.reactions):
            raise ValueError(f"a forecast warms up on 1 to {len(event.reactions)} real reactions, not {warmup}")
        if len(users) != len(timestamps):
            raise ValueError(f"{len(users)} forecast agents but {len(timestamps)} timestamps")
        self.event, self.warmup = event, warmup
        self.users, self.timestamps, self.details = list(users), list(timestamps), dict(details or {})
        steps: list[Step] = []
        for phase, lo, hi in (("warmup", 0, warmup), ("rollout", warmup, warmup + len(users))):
            for start in range(lo, hi, batch_size):
                steps.append(Step(len(steps), phase, tuple(range(start, min(start + batch_size, hi)))))
        self._steps = steps

    def steps(self) -> list[Step]:
        return self._steps

    def agents(self, step: Step) -> list[Agent]:
        if step.phase == "warmup":
            return [Agent.of(self.event.reactions[p], p) for p in step.positions]
        return [Agent(p, self.users[p - self.warmup], self.timestamps[p - self.warmup]) for p in step.positions]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "warmup": self.warmup, "agents": len(self.users), **self.details}
