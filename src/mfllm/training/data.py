"""Training data built from events with the simulator's own prompts and batch size.

Events are split into train/validation/test by event, never by reaction. The mean fields a policy
is trained on are produced by the mean-field model itself, run over the real history in batches of
``batch_size``, exactly as during warm-up in simulation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mfllm.data.loaders import get_reader
from mfllm.data.personas import persona_text
from mfllm.data.schema import Event, Reaction
from mfllm.interfaces import AgentAction, LanguageModel, SamplingParams
from mfllm.manifest import derive_seed
from mfllm.prompts import mean_field_prompt, policy_prompt, policy_stop
from mfllm.training.config import TrainConfig


def split_events(event_ids: Sequence[str], shares: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Deterministic split of whole events into train/validation/test."""
    ids = sorted(event_ids)
    random.Random(seed).shuffle(ids)
    n_train = max(1, round(shares[0] * len(ids)))
    n_val = round(shares[1] * len(ids)) if len(ids) - n_train > 1 else 0
    return {"train": ids[:n_train], "validation": ids[n_train:n_train + n_val], "test": ids[n_train + n_val:]}


def load_training_events(config: TrainConfig) -> tuple[dict[str, list[Event]], dict[str, list[str]]]:
    """Events of each split (those with at least ``min_reactions`` reactions), and the split by id."""
    reader = get_reader(config.data, config.data_format)
    path = Path(config.data)
    ids = config.events or reader.list_events(path)
    events = {}
    for event_id in ids:
        event, _ = reader.load_event(path, event_id)
        if len(event.reactions) >= config.min_reactions:
            events[event_id] = event
        if config.max_events and len(events) >= config.max_events:
            break
    if len(events) < 2:
        raise ValueError(f"{config.data}: only {len(events)} events with at least {config.min_reactions} reactions; need 2 or more")
    split = split_events(list(events), config.split, config.split_seed)
    return {name: [events[i] for i in members] for name, members in split.items()}, split


def batches(event: Event, batch_size: int, limit: int | None = None) -> list[list[Reaction]]:
    chunks = [event.reactions[i:i + batch_size] for i in range(0, len(event.reactions), batch_size)]
    return chunks[:limit] if limit else chunks


def actions_of(reactions: Sequence[Reaction], language: str) -> list[AgentAction]:
    return [AgentAction(persona_text(r.user, language, short=True), r.text, r.kind, r.engagement) for r in reactions]


def mean_field_params(config: TrainConfig, seed: int | None, temperature: float = 0.0) -> SamplingParams:
    return SamplingParams(config.max_mean_field_tokens, temperature, 1.0, ("\n",), seed)


def mean_field_chain(model: LanguageModel, event: Event, config: TrainConfig) -> list[str | None]:
    """m before each batch of the real history: ``chain[t]`` summarises batches ``0..t-1`` (greedy)."""
    chain: list[str | None] = [None]
    for t, batch in enumerate(batches(event, config.batch_size, config.max_steps_per_event)[:-1]):
        prompt = mean_field_prompt(event.source.text, chain[-1], actions_of(batch, event.language), event.language, config.mean_field_max_chars)
        update = model.generate([prompt], mean_field_params(config, derive_seed(config.seed, event.event_id, t)))[0]
        chain.append(update or chain[-1])
    return chain


@dataclass(frozen=True)
class PolicyExample:
    event_id: str
    position: int
    prompt: Any  # mfllm.interfaces.Prompt
    action: str
    language: str


def policy_examples(events: Sequence[Event], config: TrainConfig, mean_field_model: LanguageModel | None,
                    progress: str | None = None) -> list[PolicyExample]:
    """(prompt, real action) pairs: with the mean field before each batch (policy) or no context (sft).
    The first batch of an event has no mean field yet and is left out of policy training, as in
    simulation, where agents act only after warm-up. ``progress``: a progress bar's description."""
    from tqdm.auto import tqdm

    examples = []
    for event in tqdm(events, desc=progress, unit="event", disable=progress is None or mean_field_model is None):
        chunks = batches(event, config.batch_size, config.max_steps_per_event)
        chain = mean_field_chain(mean_field_model, event, config) if mean_field_model is not None else [None] * len(chunks)
        position = 0
        for t, chunk in enumerate(chunks):
            for reaction in chunk:
                if mean_field_model is None or t > 0:
                    method = "mf" if mean_field_model is not None else "sft"
                    prompt = policy_prompt(event.source.text, persona_text(reaction.user, event.language), event.language, method, chain[t])
                    examples.append(PolicyExample(event.event_id, position, prompt, reaction.text, event.language))
                position += 1
    return examples


def completion_target(action: str, language: str, is_chat: bool, eos_token: str) -> str:
    """What the policy is trained to write after the prompt: the action, then the marker where
    simulation stops generating (the closing quote of the completion layout, or end of turn)."""
    return action + (eos_token if is_chat else policy_stop(language)[-1])
