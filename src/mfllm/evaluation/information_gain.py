"""Information gain of a context method: how much better the policy predicts the real next actions with
the method's context than with none.

Along the real history of an event, on the run's schedule (warm-up W, batches of B), the method's
context is built by teacher forcing: it takes in each batch's *real* actions, and a mean field is
sampled by the method's own sampler with the seeds simulation uses. For every rollout batch, the real
actions a*_i of users s_i are scored under the policy twice, with the same tokens:

    IG = [ sum_i -log pi(a*_i | s_i, no context) - sum_i -log pi(a*_i | s_i, context_t) ] / tokens

in nats per token, with each action written as the policy writes it (kind marker, then text), so
predicting whether people comment or repost counts. Reported separately for the three choices an agent
makes (:data:`~mfllm.prompts.ACTION_CHOICES`: comments and replies, reposts with words, bare reposts),
whose markers are short and would otherwise weigh little against comments, and for all actions.
IG > 0: the context carries information about what the population does next; IG <= 0: it does not
(shown as it is). It is a property of the method on the event's real history, so a run's
interventions play no part in it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from mfllm.data.schema import Event
from mfllm.interfaces import LanguageModel
from mfllm.manifest import derive_seed
from mfllm.prompts import ACTION_CHOICES, action_choice
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import RUNTIME_FIELDS, make_context
from mfllm.simulation.methods import get_method
from mfllm.simulation.scenario import Replay
from mfllm.simulation.step import StepContext

GAIN_GROUPS = (*ACTION_CHOICES, "all")


@dataclass
class GainTotals:
    """Summed NLL (nats) of real action tokens without and with the context, and the token count."""

    nll_without: float = 0.0
    nll_with: float = 0.0
    tokens: int = 0
    actions: int = 0

    @property
    def gain(self) -> float | None:
        """Nats per token the context saves (None when there is nothing to score)."""
        return (self.nll_without - self.nll_with) / self.tokens if self.tokens else None


_MEASURED: dict[str, dict[str, dict[str, Any]]] = {}
"""Gains already measured in this process, by :func:`gain_key`."""


def gain_key(config: SimulationConfig, event: Event, policy: LanguageModel) -> str:
    """What a gain depends on. A method with no model-written part builds the same contexts whatever the
    seed (nothing is sampled along the real history), so its gain is measured once for all seeds."""
    settings = {k: v for k, v in config.model_dump().items() if k not in RUNTIME_FIELDS}
    if not get_method(config.method).needs_mean_field_model:
        settings.pop("seed")
    return json.dumps([settings, event.content_hash(), policy.describe()], sort_keys=True, default=str)


def information_gain(config: SimulationConfig, event: Event, policy: LanguageModel,
                     mean_field_model: LanguageModel | None = None) -> dict[str, dict[str, Any]]:
    """Per action group (the three choices, ``repost`` being a bare repost, and "all"): the gain of ``config.method``'s context over no
    context, with the totals behind it (see the module docstring). Measured once per :func:`gain_key`."""
    key = gain_key(config, event, policy)
    if key not in _MEASURED:
        _MEASURED[key] = _measure(config, event, policy, mean_field_model)
    return _MEASURED[key]


def _measure(config: SimulationConfig, event: Event, policy: LanguageModel, mean_field_model: LanguageModel | None) -> dict[str, dict[str, Any]]:
    method = make_context(config, event, mean_field_model)
    if method.needs_mean_field_model and mean_field_model is None:
        raise ValueError(f"information gain of {config.method!r} needs its mean-field model")
    with_context = StepContext(event, method)
    without = StepContext(event, make_context(config.model_copy(update={"method": "state", "mean_field_model": None,
                                                                         "mean_field_adapter": None, "mean_field_temperature": None,
                                                                         "mean_field_top_p": None}), event, None))
    scenario = Replay(event, config.warmup, config.batch_size, config.num_agents)
    totals = {group: GainTotals() for group in GAIN_GROUPS}
    for step in scenario.steps():
        agents = scenario.agents(step)
        if step.phase == "rollout":
            scored = [a for a in agents if a.real is not None]
            texts = [with_context.continuation(a.real.kind, a.real.text) for a in scored]  # type: ignore[union-attr]
            plain = policy.score(without.prompts(scored), texts)
            given = policy.score(with_context.prompts(scored), texts)
            for agent, a, b in zip(scored, plain, given):
                if a.num_tokens != b.num_tokens:
                    raise RuntimeError(f"the policy tokenised the same action differently under two prompts ({a.num_tokens} vs {b.num_tokens})")
                for group in (action_choice(agent.real.kind, agent.real.text), "all"):  # type: ignore[union-attr]
                    totals[group].nll_without -= a.logprob
                    totals[group].nll_with -= b.logprob
                    totals[group].tokens += a.num_tokens
                    totals[group].actions += 1
        with_context.observe(with_context.real_actions(agents), derive_seed(config.seed, step.index, "mean_field"))
    return {group: {"gain": t.gain, **asdict(t)} for group, t in totals.items()}
