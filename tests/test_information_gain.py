"""Information gain: NLL of the real next actions without minus with a method's context, by action group."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfllm.backends import FakeModel
from mfllm.data import load_event
from mfllm.evaluation import KindLabeller, LabellerChain, evaluate_run, method_table, resolve_dimensions
from mfllm.evaluation.information_gain import information_gain
from mfllm.prompts import action_line
from mfllm.interfaces import ContinuationScore
from mfllm.simulation import SimulationConfig, simulate


class Recogniser(FakeModel):
    """Scores a continuation's characters -0.1 nats each when the continuation appears in the prompt's
    context, -3 otherwise: a policy that profits exactly from seeing what others wrote."""

    def score(self, prompts, continuations):  # type: ignore[no-untyped-def]
        return [ContinuationScore(tuple(-0.1 if c and c in p.completion else -3.0 for _ in c)) for p, c in zip(prompts, continuations)]


def config(data: Path, method: str, batch_size: int = 8) -> SimulationConfig:
    return SimulationConfig(data=str(data), method=method, policy_model="fake", warmup=16, batch_size=batch_size, num_agents=48, context_k=8)


def test_state_has_no_gain_and_a_context_that_shows_repeats_has_some(demo_event_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    reactions = list(event.reactions)
    for p in (18, 27, 41):  # people who say again what someone said just before them
        reactions[p] = reactions[p].model_copy(update={"text": reactions[p - 5].text, "kind": reactions[p - 5].kind})
    event = event.model_copy(update={"reactions": reactions})
    batch = 4  # steps start at multiples of 4 (warm-up 16); each sees the 8 reactions before its step
    state = information_gain(config(demo_event_path, "state", batch), event, Recogniser())
    assert state["all"]["gain"] == 0 and state["all"]["actions"] == 48
    recent = information_gain(config(demo_event_path, "recent", batch), event, Recogniser())
    assert recent["all"]["gain"] > 0
    assert sum(recent[g]["tokens"] for g in ("comment", "repost_with_text", "repost")) == recent["all"]["tokens"] == state["all"]["tokens"]
    # the actions as the policy writes them (marker, then text); each step sees the 8 actions before it
    lines = [action_line(r.kind, r.text, "zh") for r in event.reactions]
    repeated = [p for p in range(16, 64) if lines[p] in lines[max(0, p - p % batch - 8):p - p % batch]]
    assert recent["all"]["nll_with"] == pytest.approx(recent["all"]["nll_without"] - 2.9 * sum(len(lines[p]) for p in repeated))
    assert repeated


def test_mean_field_gain_needs_its_model_and_lands_in_the_evaluation(demo_event_path: Path, tmp_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    with pytest.raises(ValueError, match="needs its mean-field model"):
        information_gain(config(demo_event_path, "mf-hybrid"), event, Recogniser())
    gains = information_gain(config(demo_event_path, "mf-hybrid"), event, Recogniser(), FakeModel())
    assert gains["all"]["actions"] == 48 and gains["all"]["gain"] is not None
    assert gains == information_gain(config(demo_event_path, "mf-hybrid"), event, Recogniser(), FakeModel())  # seeded as simulation
    run = simulate(config(demo_event_path, "mf-hybrid"), tmp_path / "run")
    evaluation = evaluate_run(run, LabellerChain([KindLabeller()]), resolve_dimensions(["behaviour"]), gain_models=(Recogniser(), FakeModel()))
    assert evaluation.information_gain == gains
    assert evaluation.summary()["information_gain.comment"] == gains["comment"]["gain"]
    rows = {r["metric"]: r for r in method_table([evaluation]) if r["dimension"] == "(policy)"}
    assert rows["information_gain.all"]["mean"] == pytest.approx(gains["all"]["gain"])


def test_a_gain_that_cannot_depend_on_the_seed_is_measured_once(demo_event_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    policy = FakeModel()  # counts its calls
    first = information_gain(config(demo_event_path, "recent").model_copy(update={"seed": 11}), event, policy)
    calls = policy.usage.score_calls
    assert information_gain(config(demo_event_path, "recent").model_copy(update={"seed": 12}), event, policy) == first
    assert policy.usage.score_calls == calls  # recent samples nothing along the real history
    information_gain(config(demo_event_path, "mf-hybrid").model_copy(update={"seed": 11}), event, policy, FakeModel())
    calls = policy.usage.score_calls
    information_gain(config(demo_event_path, "mf-hybrid").model_copy(update={"seed": 12}), event, policy, FakeModel())
    assert policy.usage.score_calls > calls  # the key points are sampled with the run's seed
