"""Agents choose their action kind from the policy's own probabilities of explicit kind markers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mfllm.backends import FakeModel
from mfllm.data import load_event
from mfllm.interfaces import AgentAction, ContinuationScore
from mfllm.prompts import ACTION_CHOICES, action_choice, action_line, marker
from mfllm.simulation import RunStore, SimulationConfig, StepContext, simulate
from mfllm.simulation.methods import ALIASES, get_method, resolve_method
from mfllm.simulation.methods.recent import RecentK
from mfllm.simulation.step import available_choices, sample_choices

from pools import FixedPool


class Imitator(FakeModel):
    """Scores a kind marker by how often the prompt's context shows it: a policy that does what it sees."""

    def score(self, prompts, continuations):  # type: ignore[no-untyped-def]
        return [ContinuationScore((math.log(1 + p.completion.count(f"- {c}")),)) for p, c in zip(prompts, continuations)]


def recent_context(event, kind: str, text: str) -> StepContext:  # type: ignore[no-untyped-def]
    provider = RecentK(event.language, k=8)
    provider.observe([AgentAction("p", text, kind)] * 8, seed=0)
    return StepContext(event, provider)


def test_the_context_moves_the_repost_share(demo_event_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    shares = {}
    for kind, text in (("repost", "转发微博"), ("comment", "真的吗")):
        step = recent_context(event, kind, text)
        prompts = [step.prompt(f"用户{i}") for i in range(200)]
        probabilities = step.choice_probabilities(Imitator(), prompts, None)
        assert all(abs(sum(p.values()) - 1) < 1e-9 and set(p) == set(ACTION_CHOICES) for p in probabilities)
        choices = sample_choices(probabilities, seed=1)
        shares[kind] = sum(c == "repost" for c in choices) / len(choices)
    assert shares["repost"] > 0.6 > 0.3 > shares["comment"]


def test_choices_follow_the_probabilities_and_the_seed() -> None:
    probabilities = [{"comment": 0.2, "repost_with_text": 0.0, "repost": 0.8}] * 4000
    choices = sample_choices(probabilities, seed=7)
    assert choices == sample_choices(probabilities, seed=7) and choices != sample_choices(probabilities, seed=8)
    assert "repost_with_text" not in choices and abs(choices.count("repost") / 4000 - 0.8) < 0.03


def test_a_platform_without_reposts_offers_comments_only(shared_data: Path) -> None:
    pheme = shared_data / "pheme_rumour_scheme_subset"
    event, _ = load_event(pheme, "552806309540528128")
    assert available_choices(event) == ("comment",)
    step = StepContext(event, get_method("state").create(SimulationConfig(data=str(pheme), method="state"), event, None))
    model = FakeModel()
    assert step.choice_probabilities(model, [step.prompt("someone")], None) == [{"comment": 1.0}] and model.usage.score_calls == 0


def test_rows_record_the_choice_and_bare_reposts_write_no_text(demo_event_path: Path, tmp_path: Path) -> None:
    config = SimulationConfig(data=str(demo_event_path), method="recent", policy_model="fake", warmup=8, batch_size=8, num_agents=32)
    model = FakeModel()
    rows = RunStore(simulate(config, tmp_path / "run", pool=FixedPool(model))).actions()
    assert {r["sim_choice"] for r in rows} <= set(ACTION_CHOICES) and len({r["sim_choice"] for r in rows}) > 1
    for row in rows:
        assert row["sim_kind"] == ("comment" if row["sim_choice"] == "comment" else "repost")
        assert abs(sum(row["choice_probabilities"].values()) - 1) < 1e-4
        if row["sim_choice"] == "repost":
            assert row["sim_text"] == "转发微博"
    assert model.usage.score_calls == 4 + 1  # one scoring of every agent's markers per step, warm-up step included (calibration)


def test_actions_are_written_and_shown_with_their_marker() -> None:
    assert action_choice("repost", "转发微博") == "repost" and action_choice("repost", "说得对") == "repost_with_text"
    assert action_choice("reply", "x") == action_choice("comment", "x") == "comment"
    assert action_line("repost", "转发微博", "zh") == marker("repost", "zh") == "[转发]"
    assert action_line("repost", " 说得对 ", "zh") == "[转发并评论] 说得对" and action_line("comment", "really?", "en") == "[reply] really?"


def test_mf_is_an_alias_recorded_resolved(demo_event_path: Path, tmp_path: Path) -> None:
    config = SimulationConfig(data=str(demo_event_path), method="mf", policy_model="fake", warmup=8, batch_size=8, num_agents=8)
    assert config.method == ALIASES["mf"] == resolve_method("mf") != "mf"
    run = simulate(config, tmp_path / "run")
    assert RunStore(run).manifest()["config"]["method"] == ALIASES["mf"]
    with pytest.raises(ValueError, match="aliases: mf = "):
        get_method("nope")
