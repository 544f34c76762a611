"""Training data built from events with the simulator's own prompts and batch size.

Events are split into train/validation/test by event, never by reaction. Every prompt comes from the
simulator's own step (:class:`~mfllm.simulation.step.StepContext`): the mean fields a policy is trained
on are written by the mean-field model over the real history in batches of ``batch_size``, with the
simulation's prompts and sampling settings, exactly as during warm-up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from mfllm.data.loaders import get_reader
from mfllm.data.schema import Event
from mfllm.interfaces import LanguageModel, Prompt
from mfllm.manifest import derive_seed
from mfllm.prompts import POLICY_STOP
from mfllm.simulation.engine import make_context
from mfllm.simulation.step import Agent, StepContext, real_batches, replay
from mfllm.training.config import TrainConfig


def split_events(event_ids: Sequence[str], shares: tuple[float, float, float], seed: int, test_events: Sequence[str] = (),
                 groups: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Deterministic split of whole events into train/validation/test. Events of one group (``groups``:
    event id -> group, e.g. posts about one story; each event alone when omitted) stay on one side, and
    ``shares`` split the groups. The groups of ``test_events`` go to the test split: first the randomly
    drawn test events, then the other members of those groups, then ``test_events`` themselves."""
    group_of = {event_id: (groups or {}).get(event_id, event_id) for event_id in event_ids}
    named = [i for i in event_ids if i in set(test_events)]
    kept = {group_of[i] for i in named}
    keys = sorted(set(group_of.values()) - kept)
    if not keys:
        raise ValueError("no events left for training: every event is a test event or grouped with one")
    random.Random(seed).shuffle(keys)
    n_train = max(1, round(shares[0] * len(keys)))
    n_val = round(shares[1] * len(keys)) if len(keys) - n_train > 1 else 0
    members: dict[str, list[str]] = {}
    for event_id in sorted(event_ids):
        members.setdefault(group_of[event_id], []).append(event_id)

    def events_of(chosen: Sequence[str]) -> list[str]:
        return [event_id for key in chosen for event_id in members[key]]

    siblings = [i for i in events_of(sorted(kept)) if i not in named]
    return {"train": events_of(keys[:n_train]), "validation": events_of(keys[n_train:n_train + n_val]),
            "test": events_of(keys[n_train + n_val:]) + siblings + named}


def load_training_events(config: TrainConfig) -> tuple[dict[str, list[Event]], dict[str, list[str]]]:
    """Events of each split (those with at least ``min_reactions`` reactions), and the split by id: by the
    reader's event groups (posts about one story stay together). The config's ``test_events`` are loaded
    whatever ``events`` and ``max_events`` say, and put in the test split with their groups."""
    reader = get_reader(config.data, config.data_format)
    path = Path(config.data)
    ids = [i for i in config.events or reader.list_events(path) if i not in set(config.test_events)]
    events = {}
    for event_id in ids:
        event, _ = reader.load_event(path, event_id)
        if len(event.reactions) >= config.min_reactions:
            events[event_id] = event
        if config.max_events and len(events) >= config.max_events:
            break
    groups = reader.event_groups(path)
    test_events = []
    for event_id in config.test_events:
        if event_id in groups:
            event, _ = reader.load_event(path, event_id)
            if len(event.reactions) >= config.min_reactions:
                events[event_id] = event
                test_events.append(event_id)
    if len(events) < 2:
        raise ValueError(f"{config.data}: only {len(events)} events with at least {config.min_reactions} reactions; need 2 or more")
    split = split_events(list(events), config.split, config.split_seed, test_events, groups)
    return {name: [events[i] for i in members] for name, members in split.items()}, split


def split_record(config: TrainConfig, split: dict[str, list[str]]) -> dict[str, list[str]]:
    """What ``split.json`` holds: the split, plus (when the config names test events) which of them are in
    the test split and which were not used (missing from the data, or too few reactions)."""
    if not config.test_events:
        return dict(split)
    used = set(split["test"])
    return {**split, "test_events": [e for e in config.test_events if e in used],
            "test_events_unused": [e for e in config.test_events if e not in used]}


def step_context(config: TrainConfig, event: Event, mean_field_model: LanguageModel | None) -> StepContext:
    """The simulator's step for ``event`` under the training config's method (no context for sft)."""
    return StepContext(event, make_context(config.simulation_config(), event, mean_field_model))


def history(config: TrainConfig, event: Event) -> list[list[Agent]]:
    """The batches of real history a training run uses from ``event``."""
    return real_batches(event, config.batch_size, config.max_steps_per_event)


def mean_field_seed(config: TrainConfig, event: Event, role: str) -> Callable[[int], int]:
    """The seed of the mean-field update after batch t of ``event`` in a training pass named ``role``."""
    return lambda t: derive_seed(config.seed, role, event.event_id, t)


def simulation_mean_field_seed(config: TrainConfig) -> Callable[[int], int]:
    """The seed simulation gives the mean-field update of warm-up step t (as the engine derives it), so the
    policy learns from the mean fields a simulation with that warm-up would write."""
    return lambda t: derive_seed(config.seed, t, "mean_field")


@dataclass(frozen=True)
class PolicyExample:
    event_id: str
    position: int
    prompt: Prompt
    action: str
    language: str


def policy_examples(events: Sequence[Event], config: TrainConfig, mean_field_model: LanguageModel | None,
                    progress: str | None = None) -> list[PolicyExample]:
    """(prompt, real action) pairs along each event's real history, built by the simulator's step: the
    prompt of batch t is the one simulation shows after a warm-up over batches 0..t-1, with the
    context of the config's mean field (model-written ones sampled with simulation's seeds), or no
    context (sft). A model-written mean field has nothing to say before the first batch, so that batch
    is left out, as in simulation, where agents act only after warm-up. ``progress``: a progress bar's
    description (none when omitted)."""
    from tqdm.auto import tqdm

    examples = []
    for event in tqdm(events, desc=progress, unit="event", disable=progress is None):
        step = step_context(config, event, mean_field_model)
        for t, batch in replay(step, history(config, event), simulation_mean_field_seed(config)):
            if step.provider.needs_mean_field_model and t == 0:
                continue
            for agent, prompt in zip(batch, step.prompts(batch)):
                real = agent.real
                examples.append(PolicyExample(event.event_id, agent.position, prompt, step.continuation(real.kind, real.text), event.language))  # type: ignore[union-attr]
    return examples


def completion_target(action: str, language: str, is_chat: bool, eos_token: str) -> str:
    """What the policy is trained to write after the prompt: the action (kind marker, then text), then
    where simulation stops generating (the end of the line, or the end of the turn)."""
    return action + (eos_token if is_chat else POLICY_STOP[-1])
