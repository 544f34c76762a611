"""Numbers that mean what they say: out-of-sample English stance, the KL noise floor, failed generations,
Popular-k without the future, the best baseline chosen inside the bootstrap, circular dimensions per event,
and information gain by the three action choices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mfllm.backends import FakeModel
from mfllm.data import load_event
from mfllm.data.readers.rumoureval import RumourEvalReader
from mfllm.evaluation import BUILTIN_DIMENSIONS, KindLabeller, LabellerChain, LexiconLabeller, RunEvaluation, evaluate_run, headline, method_table
from mfllm.evaluation.aggregate import labeller_variants
from mfllm.evaluation.information_gain import information_gain
from mfllm.evaluation.labellers import default_labellers, shipped_labellers
from mfllm.evaluation.metrics import DimensionMetrics, compare_streams, kl_divergence, smoothed
from mfllm.evaluation.report import headline_text
from mfllm.evaluation.validate import rumoureval_sdqc
from mfllm.interfaces import AgentAction
from mfllm.prompts import BARE_REPOST_TEXTS, render_actions
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.methods.popular import PopularK

from pools import FixedPool

SENTIMENT, BEHAVIOUR, STANCE = BUILTIN_DIMENSIONS["sentiment"], BUILTIN_DIMENSIONS["behaviour"], BUILTIN_DIMENSIONS["stance"]
RUMOUREVAL_EVENT = "500279160795721728"  # a traindev thread (in the English labeller's training data), 30+ replies


# ---------------------------------------------------------------- 1: English stance out of sample

def test_a_rumoureval_event_is_labelled_by_a_model_that_never_saw_its_thread(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "rumoureval2017_processed"
    event, _ = RumourEvalReader().load_event(data, RUMOUREVAL_EVENT)
    [english] = [lab for lab in shipped_labellers() if lab.name == "linear:en-sdqc"]
    thread = event.source.post_id
    assert thread in english.spec["training"]["threads"]  # the full model was trained on this thread ...
    fold = english.fold_for(thread)
    assert fold is not None and english.provenance(thread) == {"variant": f"linear:en-sdqc without {fold['held_out']}", "saw_event": False}
    gold = rumoureval_sdqc(shared_data)
    held_out = {i for i, group in enumerate(gold.groups) if group == fold["held_out"]}
    trained_threads = {gold.threads[i] for i in range(len(gold.items)) if i not in held_out}
    assert thread not in trained_threads  # ... the fold model labelling it was not
    texts = [r.text for r in event.reactions]
    assert english.predict(texts, thread) != english.predict(texts)  # and it is that model that labels
    run = simulate(SimulationConfig(data=str(data), event_id=RUMOUREVAL_EVENT, method="state", policy_model="fake", warmup=8,
                                    batch_size=8, num_agents=16), tmp_path / "run")
    evaluation = evaluate_run(run, LabellerChain(default_labellers()), [STANCE])
    assert evaluation.validity["stance"]["saw_event"] is False and "without" in evaluation.validity["stance"]["variant"]
    assert labeller_variants([evaluation]) == [{"event_id": RUMOUREVAL_EVENT, "dimension": "stance",
                                                "variant": evaluation.validity["stance"]["variant"], "saw_event": False}]


# ---------------------------------------------------------------- 2: the noise floor, window weights, no CI from one event

def test_the_floor_is_the_kl_two_samples_of_one_distribution_show() -> None:
    rng = np.random.default_rng(1)
    shares = np.array([0.6, 0.3, 0.1])
    labels = np.array(SENTIMENT.labels)
    floors, kls = [], []
    for _ in range(300):  # windows of 12 labels, real and simulated drawn from the same distribution
        real, sim = list(labels[rng.choice(3, 12, p=shares)]), list(labels[rng.choice(3, 12, p=shares)])
        metrics = compare_streams(real, sim, [0] * 12, SENTIMENT)
        floors.append(metrics.kl_floor)
        kls.append(metrics.kl)
    assert 0.05 < np.mean(kls) < 0.4  # a perfect simulator is this far from the real labels ...
    assert np.mean(floors) == pytest.approx(np.mean(kls), rel=0.25)  # ... and the floor says so


def test_windows_are_weighted_by_their_size() -> None:
    real = ["negative"] * 2 + ["positive"] * 20
    sim = ["positive"] * 2 + ["positive"] * 20
    metrics = compare_streams(real, sim, [0] * 2 + [1] * 20, SENTIMENT)
    small = kl_divergence(smoothed(np.array([2.0, 0, 0]), 0.5), smoothed(np.array([0, 0, 2.0]), 0.5))
    large = kl_divergence(smoothed(np.array([0, 0, 20.0]), 0.5), smoothed(np.array([0, 0, 20.0]), 0.5))
    assert metrics.window_weights == [2, 20] and metrics.kl == pytest.approx((2 * small + 20 * large) / 22)


def _synthetic(method: str, event: str, seed: int, kl: float, floor: float = 0.05, circular: tuple[str, ...] = (),
               other: float | None = None) -> RunEvaluation:
    def metric(name: str, value: float) -> DimensionMetrics:
        return DimensionMetrics(name, value, value, value, value, value, 0.5, 0.5, 3, [], [], 10, 10, kl_floor=floor)

    dimensions = {"sentiment": metric("sentiment", kl)}
    if other is not None:
        dimensions["emotion"] = metric("emotion", other)
    return RunEvaluation(f"{event}/{method}/{seed}", event, method, seed, 10, "step", 0.5, "x", dimensions, circular=list(circular),
                         total_actions=10)


def test_one_event_gives_no_interval_and_no_paper_comparison() -> None:
    top = headline([_synthetic("mf-stats", "e0", 0, 0.2), _synthetic("state", "e0", 0, 0.3)], "mf-stats")
    assert top["ci_low"] is None and top["ci_note"] == "no CI: 1 event" and not top["comparable_to_paper"]
    text = headline_text(top)
    assert "no CI: 1 event" in text and "95% CI" not in text and "47%" not in text
    many = headline([_synthetic(m, f"e{e}", 0, kl + 0.01 * e) for e in range(4) for m, kl in (("mf-stats", 0.2), ("state", 0.3))], "mf-stats")
    assert many["comparable_to_paper"] and "95% CI" in headline_text(many) and "47%" in headline_text(many)


def test_the_headline_states_the_distance_above_the_floor() -> None:
    evaluations = [_synthetic("mf-stats", f"e{e}", 0, 0.20, floor=0.15) for e in range(3)]
    evaluations += [_synthetic("state", f"e{e}", 0, 0.25, floor=0.15) for e in range(3)]
    top = headline(evaluations, "mf-stats")
    assert top["relative_kl_reduction"] == pytest.approx(0.2) and top["method_floor"] == pytest.approx(0.15)
    assert top["relative_reduction_above_floor"] == pytest.approx(0.5) and top["method_share_above_floor"] == pytest.approx(0.25)
    assert "above the floor 50%" in headline_text(top)


# ---------------------------------------------------------------- 6: the best baseline is chosen inside each resample

def test_the_best_baseline_is_chosen_again_in_every_resample() -> None:
    rng = np.random.default_rng(0)
    evaluations = []
    for e in range(8):  # recent and state are about as good; which is better depends on the events drawn
        evaluations += [_synthetic("mf-stats", f"e{e}", 0, 0.20), _synthetic("state", f"e{e}", 0, 0.30 + rng.normal(0, 0.05)),
                        _synthetic("recent", f"e{e}", 0, 0.30 + rng.normal(0, 0.05))]
    top = headline(evaluations, "mf-stats", resamples=400)
    choice = top["baseline_choice"]
    assert set(choice) == {"recent", "state"} and sum(choice.values()) == pytest.approx(1.0)
    assert 0 < choice["recent"] < 1 and 0 < choice["state"] < 1
    # each resample's best baseline is at least as close as the overall best: the interval moves towards smaller reductions
    fixed = headline([e for e in evaluations if e.method != ({"recent", "state"} - {top["best_baseline"]}).pop()], "mf-stats", resamples=400)
    assert top["ci_low"] <= fixed["ci_low"] and top["ci_high"] <= fixed["ci_high"]
    assert (top["ci_low"], top["ci_high"]) != (fixed["ci_low"], fixed["ci_high"])


# ---------------------------------------------------------------- 7: circular dimensions decided per event, marked in tables

def test_circular_dimensions_are_left_out_per_event_and_marked() -> None:
    # on e0 (English, say) the method's context uses the sentiment labeller; on e1 it does not
    evaluations = [_synthetic("mf-stats", "e0", 0, 0.9, circular=("sentiment",), other=0.2), _synthetic("mf-stats", "e1", 0, 0.1, other=0.3),
                   _synthetic("state", "e0", 0, 0.5, other=0.4), _synthetic("state", "e1", 0, 0.5, other=0.4)]
    top = headline(evaluations, "mf-stats")
    assert top["method_kl"] == pytest.approx((0.2 + (0.1 + 0.3) / 2) / 2)  # sentiment kept on e1
    assert top["excluded_by_event"] == {"e0": ["sentiment"]}
    rows = {(r["method"], r["dimension"], r["metric"]): r for r in method_table(evaluations, resamples=50)}
    assert rows[("mf-stats", "(mean)", "kl")]["mean"] == pytest.approx(top["method_kl"])  # the mean row leaves them out too
    assert rows[("state", "(mean)", "kl")]["mean"] == pytest.approx((0.4 + 0.45) / 2)
    assert rows[("mf-stats", "sentiment", "kl")]["circular_events"] == ["e0"] and not rows[("state", "sentiment", "kl")]["circular"]
    assert rows[("mf-stats", "sentiment", "kl_floor")]["mean"] == pytest.approx(0.05)


# ---------------------------------------------------------------- 3: failed generations keep their drawn kind

class EmptyForSome(FakeModel):
    """Writes nothing (every attempt) for agents whose persona holds ``marker``: their generations fail."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def generate(self, prompts, params):  # type: ignore[no-untyped-def]
        texts = super().generate(prompts, params)
        return ["  " if self.marker in p.completion.split("\n")[-1] else t for p, t in zip(prompts, texts)]


def test_failed_generations_count_on_behaviour_and_the_real_side_is_whole(demo_event_path: Path, tmp_path: Path) -> None:
    config = SimulationConfig(data=str(demo_event_path), method="recent", policy_model="fake", warmup=6, batch_size=4, num_agents=12)
    run = simulate(config, tmp_path / "run", pool=FixedPool(EmptyForSome("粉丝数：不足100")))
    rows = RunStore(run).actions()
    failed = [r for r in rows if "failure" in r]
    assert failed and all(r["sim_kind"] is None and r["sim_choice"] != "repost" for r in failed)
    evaluation = evaluate_run(run, LabellerChain([KindLabeller(), LexiconLabeller()]), [BEHAVIOUR, SENTIMENT])
    behaviour, sentiment = evaluation.dimensions["behaviour"], evaluation.dimensions["sentiment"]
    assert behaviour.labelled_sim == len(rows)  # the drawn kind of a failed row still counts
    assert sentiment.labelled_real == len(rows) and sentiment.labelled_sim == len(rows) - len(failed)
    assert evaluation.unlabelled["sentiment"]["reasons"]["generation failed (only its drawn kind is known)"] == len(failed)
    [share] = [r for r in method_table([evaluation], resamples=20) if r["metric"] == "failed_share"]
    assert share["mean"] == pytest.approx(len(failed) / len(rows))


# ---------------------------------------------------------------- 5: Popular-k counts engagement recorded before the step

def test_popular_counts_only_responses_recorded_before_the_step(demo_event_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    reactions = list(event.reactions)
    for p in range(len(reactions)):  # a flat event: nobody responds to anybody, and crawl-time counts are huge for reaction 1
        reactions[p] = reactions[p].model_copy(update={"parent_id": event.source.post_id, "likes_count": 10_000 if p == 1 else 0,
                                                       "reposts_count": 0, "comments_count": 0})
    for p in (20, 21, 22):  # three later reactions answer reaction 2, all after the warm-up
        reactions[p] = reactions[p].model_copy(update={"parent_id": reactions[2].post_id})
    reactions[4] = reactions[4].model_copy(update={"parent_id": reactions[3].post_id})  # one early answer to reaction 3
    event = event.model_copy(update={"reactions": reactions})
    config = SimulationConfig(data=str(demo_event_path), method="popular", policy_model="fake", warmup=8, batch_size=4, context_k=1)
    popular = PopularK.create(config, event, None)
    popular.observe([AgentAction(f"p{p}", reactions[p].text, reactions[p].kind, reactions[p].engagement, p) for p in range(8)], 0)
    assert popular.context() == render_actions([popular.memory[3]], "zh")  # not 1 (crawl-time likes) nor 2 (answered later)


# ---------------------------------------------------------------- 8: information gain by the three choices

def test_information_gain_keeps_bare_reposts_apart_from_reposts_with_words(demo_event_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    reactions = list(event.reactions)
    for p in range(16, 48, 3):  # some reposts with words, some bare, among the scored actions
        reactions[p] = reactions[p].model_copy(update={"kind": "repost", "text": "转发微博" if p % 2 else "转发一下，大家注意"})
    event = event.model_copy(update={"reactions": reactions})
    config = SimulationConfig(data=str(demo_event_path), method="recent", policy_model="fake", warmup=16, batch_size=8, num_agents=32)
    gains = information_gain(config, event, FakeModel())
    scored = reactions[16:48]
    bare = sum(r.kind == "repost" and r.text.strip().lower() in BARE_REPOST_TEXTS for r in scored)
    worded = sum(r.kind == "repost" for r in scored) - bare
    assert bare and worded
    assert (gains["repost"]["actions"], gains["repost_with_text"]["actions"]) == (bare, worded)
    assert sum(gains[g]["actions"] for g in ("comment", "repost_with_text", "repost")) == gains["all"]["actions"] == 32
