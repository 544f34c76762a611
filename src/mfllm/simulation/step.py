"""The one owner of an MF-LLM step: who acts, the context they see, and what the context takes in.

Simulation, dry-run estimates, training data, IB-Tune and evaluation all build their prompts and
feed their context providers through :class:`StepContext`, so the step is written once. Interventions
in effect at a step (see :mod:`mfllm.simulation.interventions`) go through it too: what each agent sees
of them (per agent when an intervention targets a subgroup) and what the shared context takes in.
"""

from __future__ import annotations

import math
import random

import numpy as np
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from mfllm.data.personas import persona_text
from mfllm.data.schema import Event, Reaction, UserProfile
from mfllm.interfaces import AgentAction, ContextProvider, LanguageModel, LLMMeanField, Prompt
from mfllm.prompts import ACTION_CHOICES, action_line, choice_kind, marker, policy_prompt, render_context, render_interventions
from mfllm.simulation.interventions import InjectedPost, Scheduled, Statement


@dataclass(frozen=True)
class Step:
    """One step of the schedule: which slots (positions in the event) act, and in which phase."""

    index: int
    phase: str  # "warmup" (real actions feed the context) or "rollout" (agents act through the policy)
    positions: tuple[int, ...]


@dataclass(frozen=True)
class Agent:
    """Who acts in one slot of a step; ``real`` is the recorded reaction in that slot, when there is one."""

    position: int
    user: UserProfile
    timestamp: float | None = None
    engagement: int = 0
    real: Reaction | None = None

    @classmethod
    def of(cls, reaction: Reaction, position: int) -> Agent:
        """The real user of ``reaction``, in slot ``position``, with that reaction beside them."""
        return cls(position, reaction.user, reaction.timestamp, reaction.engagement, reaction)


def schedule(num_reactions: int, warmup: int, batch_size: int, num_agents: int | None) -> list[Step]:
    """Warm-up over the first ``warmup`` reactions (last chunk may be partial), then rollout batches."""
    if warmup >= num_reactions:
        raise ValueError(f"warm-up of {warmup} leaves no reaction to simulate (the event has {num_reactions})")
    end = num_reactions if num_agents is None else min(num_reactions, warmup + num_agents)
    steps: list[Step] = []
    for phase, lo, hi in (("warmup", 0, warmup), ("rollout", warmup, end)):
        for start in range(lo, hi, batch_size):
            steps.append(Step(len(steps), phase, tuple(range(start, min(start + batch_size, hi)))))
    return steps


def real_batches(event: Event, batch_size: int, limit: int | None = None) -> list[list[Agent]]:
    """The event's real history as consecutive batches of agents (at most ``limit`` batches)."""
    agents = [Agent.of(r, p) for p, r in enumerate(event.reactions)]
    chunks = [agents[i:i + batch_size] for i in range(0, len(agents), batch_size)]
    return chunks[:limit] if limit else chunks


def available_choices(event: Event) -> tuple[str, ...]:
    """What agents of ``event`` can do: comment, repost with words or repost without, where the event's
    platform records reposts; comment only where it records replies alone (the Twitter sets here)."""
    return ACTION_CHOICES if any(r.kind == "repost" for r in event.reactions) else ("comment",)


def sample_choices(probabilities: Sequence[dict[str, float]], seed: int) -> list[str]:
    """One choice per agent, drawn from its probabilities, in agent order, with one generator per step."""
    rng = random.Random(seed)
    return [rng.choices(list(p), weights=list(p.values()))[0] for p in probabilities]


def choice_distribution(logprobs: dict[str, float], temperature: float, calibration: dict[str, Any] | None = None) -> dict[str, float]:
    """The probabilities of the choices from the policy's marker log-probs. Uncalibrated:
    ``softmax(logprob / T)`` (``T`` the run's temperature; at 0 the most likely choice is certain).
    Calibrated (:func:`fit_choice_calibration`): ``softmax(scale * logprob + offset)``, the fitted scale
    standing in for the temperature."""
    if calibration:
        scaled = {c: calibration["scale"] * lp + calibration["offsets"].get(c, 0.0) for c, lp in logprobs.items()}
    elif temperature <= 0:
        best = max(logprobs, key=logprobs.__getitem__)
        return {c: float(c == best) for c in logprobs}
    else:
        scaled = {c: lp / temperature for c, lp in logprobs.items()}
    top = max(scaled.values())
    weights = {c: math.exp(v - top) for c, v in scaled.items()}
    total = sum(weights.values())
    return {c: w / total for c, w in weights.items()}


CALIBRATION_RIDGE = 0.05
"""Weight of the penalty ``sum(offset**2)`` in the calibration fit: keeps a choice absent from the warm-up
possible and the fit finite on a short warm-up."""
MAX_CALIBRATION_SCALE = 1.0
"""The fitted scale of the marker log-probs is kept in ``[0, 1]``: calibration may trust the policy less,
never more sharply than it speaks."""


def fit_choice_calibration(observed: Sequence[tuple[dict[str, float], str]]) -> dict[str, Any] | None:
    """A calibration of the kind choice on the warm-up's real reactors (``observed``: each one's marker
    log-probs under the context it saw, and what it really did): ``softmax(scale * logprob + offset)``
    fitted by maximum likelihood (Platt-style scaling: one shared scale, an offset per choice, the first
    choice's fixed at 0, a small ridge :data:`CALIBRATION_RIDGE` on the offsets). The offsets remove the
    policy's own bias towards a marker (a base model prefers ``[评论]``); the scale says how far its
    context-driven changes predict what people did (near 0: the warm-up mix, whatever the context). None
    without observations."""
    from scipy.optimize import minimize

    if not observed:
        return None
    choices = list(observed[0][0])
    logprobs = np.array([[lp[c] for c in choices] for lp, _ in observed])
    logprobs -= logprobs.max(axis=1, keepdims=True)
    made = np.array([choices.index(c) for _, c in observed])

    def loss(theta: np.ndarray) -> float:
        logits = theta[0] * logprobs + np.concatenate(([0.0], theta[1:]))
        top = logits.max(axis=1, keepdims=True)
        log_norm = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
        return float(-(logits[np.arange(len(made)), made] - log_norm).sum() + CALIBRATION_RIDGE * (theta[1:] ** 2).sum())

    start = np.zeros(len(choices))
    start[0] = MAX_CALIBRATION_SCALE
    fit = minimize(loss, start, method="L-BFGS-B", bounds=[(0.0, MAX_CALIBRATION_SCALE)] + [(None, None)] * (len(choices) - 1))
    return {"scale": round(float(fit.x[0]), 6), "offsets": {c: round(float(v), 6) for c, v in zip(choices, [0.0, *fit.x[1:]])}}


class StepContext:
    """An event seen through one context provider: the policy prompts of a step and the actions the
    provider takes in. The provider's state is the only thing that changes between steps."""

    def __init__(self, event: Event, provider: ContextProvider):
        self.event, self.provider = event, provider
        self.topic, self.language = event.source.text, event.language
        self.choices = available_choices(event)

    def persona(self, agent: Agent, short: bool = False) -> str:
        return persona_text(agent.user, self.language, short=short)

    def context_block(self) -> str | None:
        """The context as the policy sees it (the method's header over the provider's context)."""
        return render_context(self.provider.headers.get(self.language, ""), self.provider.context())

    def prompt(self, persona: str) -> Prompt:
        """The policy prompt of an agent described by ``persona`` under the current context."""
        return policy_prompt(self.topic, persona, self.language, self.context_block())

    def prompts(self, agents: Sequence[Agent], active: Sequence[Scheduled] = (), choices: Sequence[str] | None = None) -> list[Prompt]:
        """Each agent's policy prompt under the current context and the interventions ``active`` at the step
        (pinned posts and notices that reach the agent, above the context); with ``choices``, each prompt
        ends after the agent's chosen kind marker, ready for its text."""
        block = self.context_block()
        chosen = choices or [None] * len(agents)
        if not active:
            return [policy_prompt(self.topic, self.persona(agent), self.language, block, choice) for agent, choice in zip(agents, chosen)]
        return [policy_prompt(self.topic, self.persona(agent), self.language,
                              "\n".join(part for part in (self.exposure_block(agent, active), block) if part) or None, choice)
                for agent, choice in zip(agents, chosen)]

    def choice_logprobs(self, policy: LanguageModel, prompts: Sequence[Prompt], vocabulary: str | None) -> list[dict[str, float]]:
        """The policy's own log-probabilities of each kind marker the event's platform offers, after each
        prompt (no fixed rate or rule: the context moves them), over the tokens its text is then written
        from (``vocabulary``, the policy's ``SamplingParams.vocabulary``); a single choice gets 0."""
        if len(self.choices) == 1:
            return [{self.choices[0]: 0.0} for _ in prompts]
        markers = [marker(choice, self.language) for choice in self.choices]
        scores = policy.score_options([p for p in prompts for _ in markers], markers * len(prompts), vocabulary)
        return [{choice: s.logprob for choice, s in zip(self.choices, scores[i * len(markers):(i + 1) * len(markers)])}
                for i in range(len(prompts))]

    def choice_probabilities(self, policy: LanguageModel, prompts: Sequence[Prompt], vocabulary: str | None, temperature: float = 1.0,
                             calibration: dict[str, Any] | None = None) -> list[dict[str, float]]:
        """Each prompt's probabilities of the choices (:func:`choice_distribution` of :meth:`choice_logprobs`)."""
        return [choice_distribution(lp, temperature, calibration) for lp in self.choice_logprobs(policy, prompts, vocabulary)]

    def continuation(self, kind: str, text: str) -> str:
        """A recorded action as the policy would write it after its prompt: marker, then text."""
        return action_line(kind, text, self.language)

    def absorbs(self, scheduled: Scheduled) -> bool:
        """Whether the shared context folds a statement into its own text: an LLM mean field does, for a
        statement to everyone; otherwise agents see the statement as a notice."""
        return isinstance(self.provider, LLMMeanField) and scheduled.shared

    def exposure_block(self, agent: Agent, active: Sequence[Scheduled]) -> str | None:
        """What ``agent`` sees of the interventions ``active`` at the step: pinned posts and notices that reach it."""
        reaching = [s for s in active if s.reaches(agent.user)]
        posts = [(s.spec.author, s.spec.text) for s in reaching if isinstance(s.spec, InjectedPost) and s.spec.pinned]
        notices = [s.spec.text for s in reaching if isinstance(s.spec, Statement) and not self.absorbs(s)]
        return render_interventions(posts, notices, self.language)

    def begin(self, step_index: int, active: Sequence[Scheduled]) -> list[AgentAction]:
        """Apply the interventions that start at ``step_index`` to the shared context before agents act:
        statements an LLM mean field folds into its summary now; returns the injected posts (to everyone)
        the context takes in with the step's actions."""
        starting = [s for s in active if s.start == step_index]
        provider = self.provider
        for scheduled in starting:
            if isinstance(scheduled.spec, Statement) and scheduled.shared and isinstance(provider, LLMMeanField):
                provider.add_statement(scheduled.spec.text)
        return [action for action in (s.injected_action() for s in starting) if action is not None]

    def removed_by(self, agent: Agent, text: str, kind: str, active: Sequence[Scheduled]) -> str | None:
        """The id of the moderation in effect that removes ``agent``'s action, or None."""
        return next((s.id for s in active if s.removes(agent.user, text, kind)), None)

    def action(self, agent: Agent, text: str, kind: str, simulated: bool = False) -> AgentAction:
        """An action as the context provider takes it in (``simulated``: one the policy wrote)."""
        return AgentAction(self.persona(agent, short=True), text, kind, agent.engagement, agent.position, simulated=simulated)

    def real_actions(self, agents: Sequence[Agent]) -> list[AgentAction]:
        """The recorded actions of agents that have one."""
        return [self.action(a, a.real.text, a.real.kind) for a in agents if a.real is not None]

    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        self.provider.observe(actions, seed)


def replay(step: StepContext, batches: Sequence[Sequence[Agent]], seed_of: Callable[[int], int]) -> Iterator[tuple[int, Sequence[Agent]]]:
    """Teacher forcing along the real history: yields ``(t, batch)`` while the provider holds the context
    before batch ``t`` (it has taken in batches ``0..t-1``, each with seed ``seed_of(t)``)."""
    for t, batch in enumerate(batches):
        yield t, batch
        if t + 1 < len(batches):
            step.observe(step.real_actions(batch), seed_of(t))


def action_row(step_index: int, agent: Agent, persona: str, prompt: Prompt, choice: str, probabilities: dict[str, float], text: str,
               policy: LanguageModel) -> dict[str, Any]:
    """One simulated action (its choice, the probabilities it was drawn from, its text), with the real
    reaction of its slot beside it when there is one."""
    real = agent.real
    return {
        "step": step_index, "position": agent.position, "reaction_id": real.post_id if real else None, "user_id": agent.user.user_id,
        "timestamp": agent.timestamp, "persona": persona, "real_kind": real.kind if real else None,
        "real_text": real.text if real else None, "sim_kind": choice_kind(choice), "sim_choice": choice,
        "choice_probabilities": {c: round(p, 6) for c, p in probabilities.items()}, "sim_text": text,
        "prompt_chars": len(prompt.completion), "prompt_tokens": policy.count_tokens(prompt),
    }
