"""What keeps the simulated population from collapsing: action bounds that follow the data, texts asked
again when they repeat or loop, contexts that show neither, and a kind choice calibrated on the warm-up."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from mfllm.backends import FakeModel
from mfllm.data import load_event
from mfllm.interfaces import AgentAction
from mfllm.manifest import derive_seed
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.methods.recent import RecentK
from mfllm.simulation.step import choice_distribution, fit_choice_calibration
from mfllm.text import copied, is_degenerate, normalise, repeated_piece

from pools import FixedPool


@pytest.mark.parametrize("text", ["大家好，我是我的李大兴，我是我的李大兴，我是我的李大兴，我是我的李大兴", "咳嗽，咳，咳嗽，咳嗽，咳，咳，咳",
                                  "2017-12-03 21:49:53", "1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12. 13. 14. 1", "哈哈哈哈哈哈哈哈",
                                  "fake news fake news fake news fake news", "no no no no no no no no no"])
def test_loops_and_texts_without_words_are_degenerate(text: str) -> None:
    assert is_degenerate(text)


@pytest.mark.parametrize("text", ["真的假的，求官方消息", "伦儿一定要保护好自己[奥特曼]", "哈哈哈", "Is this confirmed? Any source for it?",
                                  "I think the police should check the source of this before people share it more", "匿名："])
def test_what_people_write_is_not(text: str) -> None:
    assert not is_degenerate(text) and repeated_piece(text) is None


def test_real_reactions_are_rarely_degenerate(demo_event_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    texts = [r.text for r in event.reactions if r.kind == "comment"]
    assert sum(map(is_degenerate, texts)) / len(texts) < 0.05


class Repeating(FakeModel):
    """Writes one fixed text on a call's first attempt (its seed is the step's policy seed), else as the fake does."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.bounds, self.floors = text, [], []
        self.first_seeds = {derive_seed(0, step, "policy") for step in range(20)}

    def generate(self, prompts, params):  # type: ignore[no-untyped-def]
        self.bounds.append(params.max_new_tokens_each)
        self.floors.append(params.min_new_tokens_each)
        if params.seed in self.first_seeds:
            return [self.text] * len(prompts)
        return super().generate(prompts, params)


def run(demo_event_path: Path, tmp_path: Path, model: FakeModel, **fields) -> list[dict]:  # type: ignore[no-untyped-def]
    config = SimulationConfig(data=str(demo_event_path), method="recent", policy_model="fake", warmup=16, batch_size=8, num_agents=32, **fields)
    return RunStore(simulate(config, tmp_path / "run", pool=FixedPool(model))).actions()


def test_repeated_texts_are_asked_again_and_recorded(demo_event_path: Path, tmp_path: Path) -> None:
    rows = run(demo_event_path, tmp_path, Repeating("同样的一句话"))
    written = [r for r in rows if r["sim_choice"] != "repost"]
    # every step's first attempt wrote the same text for everyone: at most the first writer of the run keeps it
    assert sum(r["sim_text"] == "同样的一句话" for r in written) <= 1
    again = [r for r in written if "rejected" in r]
    assert again and all(r["rejected"][0] == "repeat" and r["attempts"] >= 2 for r in again)
    kept = [normalise(r["sim_text"]) for r in written if "kept_despite" not in r]
    assert len(kept) == len(set(kept))


class Copying(FakeModel):
    """On a call's first attempt, writes a piece of each agent's own prompt: the end of its topic line."""

    def __init__(self) -> None:
        super().__init__()
        self.first_seeds = {derive_seed(0, step, "policy") for step in range(20)}

    def generate(self, prompts, params):  # type: ignore[no-untyped-def]
        if params.seed in self.first_seeds:
            return [p.completion.split("\n")[0][-12:] for p in prompts]
        return super().generate(prompts, params)


def test_texts_copied_from_the_agents_own_prompt_are_asked_again(demo_event_path: Path, tmp_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    rows = run(demo_event_path, tmp_path, Copying())
    written = [r for r in rows if r["sim_choice"] != "repost"]
    again = [r for r in written if "rejected" in r]
    assert again and all(r["rejected"][0] == "copied" and r["attempts"] >= 2 for r in again)
    kept = [r["sim_text"] for r in written if "kept_despite" not in r]
    assert kept and not any(copied(text, event.source.text, event.language) for text in kept)
    plain = run(demo_event_path, tmp_path / "plain", Copying(), resample_copies=False)
    assert sum(copied(r["sim_text"], event.source.text, event.language) for r in plain if r["sim_choice"] != "repost") >= len(again)


def test_without_resampling_the_repeats_stay(demo_event_path: Path, tmp_path: Path) -> None:
    rows = run(demo_event_path, tmp_path, Repeating("同样的一句话"), resample_copies=False)
    written = [r for r in rows if r["sim_choice"] != "repost"]
    assert all(r["sim_text"] == "同样的一句话" and "rejected" not in r for r in written)


def test_action_floors_and_bounds_follow_the_warm_up_lengths(demo_event_path: Path, tmp_path: Path) -> None:
    model = Repeating("x")
    run(demo_event_path, tmp_path, model, length_slack=1.5, length_floor=0.5, max_action_tokens=30)
    event, _ = load_event(demo_event_path)
    lengths = {model.count_text_tokens(r.text) for r in event.reactions[:16] if r.text.strip() and r.text != "转发微博"}
    allowed = {(min(math.floor(0.5 * n), min(30, math.ceil(1.5 * n) + 1)), min(30, math.ceil(1.5 * n) + 1)) for n in lengths}
    pairs = [pair for floors, bounds in zip(model.floors, model.bounds) if bounds for pair in zip(floors or (0,) * len(bounds), bounds)]
    assert pairs and set(pairs) <= allowed and len(set(pairs)) > 1
    unfloored = Repeating("x")
    run(demo_event_path, tmp_path / "unfloored", unfloored)
    assert all(call is None for call in unfloored.floors) and any(unfloored.bounds)
    fixed = Repeating("x")
    run(demo_event_path, tmp_path / "fixed", fixed, action_length="fixed")
    assert all(call is None for call in fixed.bounds)


def test_contexts_show_no_repeat_and_no_loop() -> None:
    recent = RecentK("zh", k=8)
    recent.observe([AgentAction("p", "真的吗", "comment"), AgentAction("p", "真的吗 ", "comment"), AgentAction("p", "哈哈哈哈哈哈哈哈", "comment"),
                    AgentAction("p", "转发微博", "repost"), AgentAction("p", "转发微博", "repost")], seed=0)
    recent.observe([AgentAction("p", "真的吗", "comment"), AgentAction("p", "求证", "comment")], seed=1)
    assert recent.context() == "- [评论] 真的吗\n- [转发]\n- [转发]\n- [评论] 求证"
    recent.observe([AgentAction("p", "大家好，我是中国人", "comment", simulated=True), AgentAction("p", "大家好！我在上海", "comment", simulated=True),
                    AgentAction("p", "大家都别信", "comment", simulated=True)], seed=2)  # a template's second text is not shown; another opening is
    assert recent.context().endswith("- [评论] 求证\n- [评论] 大家好，我是中国人\n- [评论] 大家都别信")
    recent.observe([AgentAction("p", "哈哈哈哈笑死", "comment"), AgentAction("p", "哈哈哈哈哈信了", "comment")], seed=3)
    assert recent.context().endswith("- [评论] 哈哈哈哈笑死\n- [评论] 哈哈哈哈哈信了")  # recorded reactions keep shared openings
    recent.observe([AgentAction("p", "哈哈哈哈，我也是", "comment", simulated=True)], seed=4)
    assert "我也是" not in recent.context()  # a simulated text opening like them is not shown


def test_the_calibration_matches_the_warm_up_mix_and_keeps_what_predicts() -> None:
    rng = random.Random(0)
    choices = ("comment", "repost_with_text", "repost")
    informative, noise = [], []
    for _ in range(400):
        logprobs = {c: rng.gauss(0, 2) for c in choices}
        truth = choice_distribution(logprobs, 1.0, {"scale": 0.5, "offsets": {"comment": 0.0, "repost_with_text": -2.0, "repost": 1.0}})
        informative.append((logprobs, rng.choices(choices, weights=[truth[c] for c in choices])[0]))
        noise.append((logprobs, rng.choices(choices, weights=[0.6, 0.1, 0.3])[0]))
    for observed in (informative, noise):
        fitted = fit_choice_calibration(observed)
        mean = {c: sum(choice_distribution(lp, 1.0, fitted)[c] for lp, _ in observed) / len(observed) for c in choices}
        for c in choices:
            assert mean[c] == pytest.approx(sum(made == c for _, made in observed) / len(observed), abs=0.02)
    assert fit_choice_calibration(informative)["scale"] == pytest.approx(0.5, abs=0.15)
    assert fit_choice_calibration(noise)["scale"] < 0.1


def test_a_calibrated_run_records_its_fit_and_resumes_to_the_same_bytes(demo_event_path: Path, tmp_path: Path) -> None:
    config = SimulationConfig(data=str(demo_event_path), method="recent", policy_model="fake", warmup=16, batch_size=8, num_agents=24)
    whole = simulate(config, tmp_path / "whole")
    steps = RunStore(whole).committed_steps()
    assert [len(s.get("choices_observed", [])) for s in steps[:2]] == [8, 8] and "choice_calibration" in steps[2]
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "manifest.json").write_text((whole / "manifest.json").read_text())
    for name in ("steps.jsonl", "actions.jsonl"):
        lines = (whole / name).read_text().splitlines(keepends=True)
        (cut / name).write_text("".join(line for line in lines if '"step": 0' in line or '"step": 1,' in line or '"step": 2,' in line))
    simulate(config, cut, resume=True)
    for name in ("steps.jsonl", "actions.jsonl"):
        assert (cut / name).read_text() == (whole / name).read_text()


def test_texts_that_differ_only_in_punctuation_or_blanks_are_one_text() -> None:
    assert normalise("戴口罩必会！") == normalise("戴口罩 必会") == normalise("戴口罩必会") != normalise("戴口罩必会你为什么")
    assert normalise("Fake NEWS!!") == normalise("fake news") and normalise("👍") == "👍" != normalise("👍👍")


def test_a_retry_samples_hotter_with_its_own_seed(demo_event_path: Path, tmp_path: Path) -> None:
    model = Repeating("同样的一句话")
    seen = []
    generate = model.generate

    def recording(prompts, params):  # type: ignore[no-untyped-def]
        seen.append((params.seed, params.temperature))
        return generate(prompts, params)

    model.generate = recording  # type: ignore[method-assign]
    run(demo_event_path, tmp_path, model, temperature=0.8)
    first = {derive_seed(0, step, "policy") for step in range(20)}
    assert {t for s, t in seen if s in first} == {0.8}
    assert {round(t, 2) for s, t in seen if s not in first} <= {1.0, 1.2, 1.4} and len(seen) > len(first & {s for s, _ in seen})
