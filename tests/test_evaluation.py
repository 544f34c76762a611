"""Evaluation: metric formulas on hand-computed cases, labellers, run evaluation, aggregation, reports."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from mfllm.backends import FakeModel
from mfllm.evaluation import (BUILTIN_DIMENSIONS, SDQC, Dimension, KindLabeller, LabelItem, LabellerChain, LexiconLabeller,
                              LLMJudgeLabeller, RunEvaluation, bootstrap_mean, compare_streams, dtw_distance, evaluate_run,
                              headline, js_divergence, kl_divergence, load_dimensions, method_table, parse_label_answer,
                              window_ids, write_report)
from mfllm.evaluation.metrics import DimensionMetrics, smoothed, wasserstein_or_tv
from mfllm.interfaces import ContinuationScore
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.methods import resolve_method

SENTIMENT = BUILTIN_DIMENSIONS["sentiment"]
EMOTION = BUILTIN_DIMENSIONS["emotion"]


def test_formulas_on_hand_computed_cases() -> None:
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    assert kl_divergence(p, q) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    m = (p + q) / 2
    assert js_divergence(p, q) == pytest.approx(0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m))
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(math.log(2))
    # W1 on ordered labels counts label steps: all mass moved from label 0 to label 2 costs 2
    assert wasserstein_or_tv(np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), ordinal=True) == pytest.approx(2.0)
    assert wasserstein_or_tv(np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), ordinal=False) == pytest.approx(1.0)
    assert smoothed(np.array([3.0, 1.0]), 0.5).tolist() == pytest.approx([3.5 / 5, 1.5 / 5])
    # DTW: a series against its time-shifted copy costs less than against a different series
    a = np.array([[1.0, 0], [0, 1.0], [1.0, 0]])
    assert dtw_distance(a, a) == 0.0
    assert dtw_distance(a, np.array([[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 0]])) == 0.0
    assert dtw_distance(a, np.array([[0, 1.0]] * 3)) == pytest.approx(2 / 3)


def _stream(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(["negative", "negative", "neutral", "positive"]) if i < n // 2 else rng.choice(["positive", "positive", "neutral"])
            for i in range(n)]


def test_self_comparison_is_zero_and_shuffled_or_constant_is_larger() -> None:
    real = _stream(64, 0)
    windows = [i // 16 for i in range(64)]
    same = compare_streams(real, real, windows, SENTIMENT)
    assert same.kl == pytest.approx(0) and same.js == pytest.approx(0) and same.wasserstein == pytest.approx(0)
    assert same.dtw == pytest.approx(0) and same.micro_f1 == 1.0 and same.macro_f1 == 1.0
    shuffled = real[:]
    random.Random(1).shuffle(shuffled)
    constant = ["neutral"] * 64
    for other in (shuffled, constant):
        worse = compare_streams(real, other, windows, SENTIMENT)
        assert worse.kl > 0.05 and worse.js > 0.01 and worse.wasserstein > 0.1 and worse.dtw > 0.1
    assert compare_streams(real, constant, windows, SENTIMENT).kl > compare_streams(real, shuffled, windows, SENTIMENT).kl


def test_unlabelled_items_are_left_out_not_shifted() -> None:
    real = ["positive", None, "negative", "negative"]
    sim = ["positive", "positive", None, "negative"]
    metrics = compare_streams(real, sim, [0, 0, 0, 0], SENTIMENT, alpha=0.0)
    assert (metrics.labelled_real, metrics.labelled_sim) == (3, 3)
    assert metrics.micro_f1 == 1.0  # only agents 0 and 3 have both labels, and they agree
    with pytest.raises(ValueError, match="misaligned"):
        compare_streams(real, sim[:3], [0, 0, 0, 0], SENTIMENT)


def test_window_schemes() -> None:
    rows = [{"step": 2 + i // 3, "timestamp": 100.0 + 40 * i} for i in range(7)]
    assert window_ids(rows, "step") == [2, 2, 2, 3, 3, 3, 4]
    assert window_ids(rows, "count:2") == [0, 0, 1, 1, 2, 2, 3]
    assert window_ids(rows, "time:100") == [0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="unknown window scheme"):
        window_ids(rows, "hours")


class _ScriptedJudge(FakeModel):
    """Answers per item text from a script; counts calls."""

    def __init__(self, answers: dict[str, list[str]]):
        super().__init__("scripted")
        self.answers, self.asked = answers, []

    def generate(self, prompts, params):  # type: ignore[no-untyped-def]
        out = []
        for prompt in prompts:
            text = next(t for t in self.answers if f"：{t}\n" in prompt.completion or f": {t}\n" in prompt.completion)
            self.asked.append(text)
            queue = self.answers[text]
            out.append(queue.pop(0) if len(queue) > 1 else queue[0])
        return out

    def score(self, prompts, continuations):  # type: ignore[no-untyped-def]
        return [ContinuationScore((-0.1,) if c == "fear" and "scared" in p.completion else (-1.0, -1.0)) for p, c in zip(prompts, continuations)]


def test_malformed_answer_leaves_other_items_in_place(tmp_path: Path) -> None:
    judge = _ScriptedJudge({"item one": ['{"label": "happy"}'], "item two": ["I think it's angry", "still no json"],
                            "item three": ['{"label": "sad"'], "item four": ['{"label": "furious"}', '{"label": "angry"}']})
    labeller = LLMJudgeLabeller(judge, mode="generate", retries=1, cache_path=tmp_path / "c.jsonl")
    items = [LabelItem(f"item {n}", "topic", "en") for n in ("one", "two", "three", "four")]
    result = labeller.label(items, EMOTION)
    assert result.labels == ["happy", None, "sad", "angry"]
    assert set(result.failures) == {1} and "no JSON object" in result.failures[1] and "2 attempts" in result.failures[1]
    asked = len(judge.asked)
    again = LLMJudgeLabeller(judge, mode="generate", cache_path=tmp_path / "c.jsonl").label(items, EMOTION)
    assert again.labels == result.labels[:1] + [None] + result.labels[2:]
    assert judge.asked[asked:] == ["item two"] * 3  # only the uncached item is asked again


def test_parse_label_answer_contract() -> None:
    assert parse_label_answer('blah {"label": " Support "} tail', SDQC.labels) == ("support", "")
    assert parse_label_answer('{"label": 3}', SDQC.labels)[0] is None
    assert "not one of" in parse_label_answer('{"label": "maybe"}', SDQC.labels)[1]


def test_likelihood_mode_picks_the_most_likely_label() -> None:
    labeller = LLMJudgeLabeller(_ScriptedJudge({}), mode="likelihood")
    result = labeller.label([LabelItem("I am so scared", "t", "en"), LabelItem("fine", "t", "en"), LabelItem("", "t", "en")], EMOTION)
    assert result.labels[0] == "fear" and result.labels[1] == "angry" and result.labels[2] is None
    assert result.failures == {2: "empty text"}


def test_lexicons_and_chain_report_what_they_cannot_label() -> None:
    lexicon = LexiconLabeller()
    zh = lexicon.label([LabelItem("哈哈哈太开心了", "t", "zh"), LabelItem("太可怕了，我好害怕", "t", "zh")], SENTIMENT)
    assert zh.labels == ["positive", "negative"]
    assert lexicon.label([LabelItem("太可怕了，我好害怕", "t", "zh"), LabelItem("今天下雨", "t", "zh")], EMOTION).labels == ["fear", "calm"]
    assert lexicon.label([LabelItem("This is awful news", "t", "en"), LabelItem("great!", "t", "en")], SENTIMENT).labels == ["negative", "positive"]
    chain = LabellerChain([KindLabeller(), lexicon])
    result = chain.label([LabelItem("great!", "t", "en"), LabelItem("哈哈哈太开心了", "t", "zh")], EMOTION)
    assert result.labels == [None, "happy"] and "no labeller covers emotion in 'en'" in result.failures[0]
    assert chain.label([LabelItem("x", "t", "en", "repost"), LabelItem("y", "t", "zh", "reply")], BUILTIN_DIMENSIONS["behaviour"]).labels == ["share", "comment"]


def test_user_dimensions_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("- name: urgency\n  labels: [low, high]\n  definition: how urgent the author sounds\n  ordinal: true\n")
    [dimension] = load_dimensions(path)
    assert dimension == Dimension("urgency", ("low", "high"), "how urgent the author sounds", True)
    path.write_text("- name: x\n  labels: [a]\n  definition: d\n")
    with pytest.raises(ValueError, match="at least two"):
        load_dimensions(path)


@pytest.fixture(scope="module")
def fake_runs(demo_event_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for method in ("mf", "state"):
        for seed in (0, 1):
            config = SimulationConfig(data=str(demo_event_path), method=method, policy_model="fake", warmup=16, batch_size=8,
                                      num_agents=32, seed=seed)
            runs.append(simulate(config, root / method / str(seed)))
    return runs


def test_evaluate_run_aligns_labels_and_masks_nll(fake_runs: list[Path]) -> None:
    policy = FakeModel()
    evaluation = evaluate_run(fake_runs[0], LabellerChain([KindLabeller(), LexiconLabeller()]), [SENTIMENT, EMOTION], policy=policy)
    rows = RunStore(fake_runs[0]).actions()
    assert [entry["position"] for entry in evaluation.labels] == [r["position"] for r in rows]
    lexicon = LexiconLabeller()
    expected = lexicon.label([LabelItem(r["real_text"], "t", "zh") for r in rows], SENTIMENT).labels
    assert [entry["sentiment.real"] for entry in evaluation.labels] == expected
    assert evaluation.dimensions["sentiment"].windows == 4
    # NLL scores exactly the real texts' tokens under the prompts the simulated agents had
    from mfllm.data import load_event
    from mfllm.evaluation.evaluate import contexts_by_step

    store = RunStore(fake_runs[0])
    config = SimulationConfig(**store.manifest()["config"])
    event, _ = load_event(config.data)
    contexts = contexts_by_step(store, config, event)
    prompts = [contexts[r["step"]].prompt(r["persona"]) for r in rows]
    scores = FakeModel().score(prompts, [contexts[r["step"]].continuation(r["real_kind"], r["real_text"]) for r in rows])
    assert evaluation.nll == pytest.approx(-sum(s.logprob for s in scores) / sum(s.num_tokens for s in scores))
    wrong = FakeModel().score(prompts, [r["sim_text"] for r in rows])
    assert evaluation.nll != pytest.approx(-sum(s.logprob for s in wrong) / sum(s.num_tokens for s in wrong))


def test_policy_nll_uses_the_context_the_agent_saw(fake_runs: list[Path]) -> None:
    from mfllm.evaluation.evaluate import contexts_by_step
    from mfllm.data import load_event

    store = RunStore(fake_runs[0])
    config = SimulationConfig(**store.manifest()["config"])
    event, _ = load_event(config.data)
    contexts = contexts_by_step(store, config, event)
    history = {h["step"]: h["text"] for h in store.mean_field_history()}
    for row in store.actions():
        assert contexts[row["step"]].provider.context() == history[row["step"] - 1]


def _synthetic(method: str, event: str, seed: int, kl: float) -> RunEvaluation:
    metric = DimensionMetrics("sentiment", kl, kl / 2, kl, kl, kl, 0.5, 0.5, 3, [], [], 10, 10)
    return RunEvaluation(f"{event}/{method}/{seed}", event, method, seed, 10, "step", 0.5, "x", {"sentiment": metric})


def test_bootstrap_and_headline_reduction() -> None:
    evaluations = [_synthetic("mf-hybrid", f"e{e}", s, 0.10 + 0.01 * e + 0.001 * s) for e in range(5) for s in range(3)]
    evaluations += [_synthetic("state", f"e{e}", s, 0.20 + 0.01 * e) for e in range(5) for s in range(3)]
    evaluations += [_synthetic("recent", f"e{e}", s, 0.30) for e in range(5) for s in range(3)]
    mean, low, high = bootstrap_mean({"a": [1.0, 2.0], "b": [3.0]})
    assert mean == pytest.approx(2.25) and 1.0 <= low <= mean <= high <= 3.0
    top = headline(evaluations, "mf-hybrid")
    assert top["best_baseline"] == "state" and top["method"] == "mf-hybrid" and headline(evaluations, "mf-llm") is None
    assert top["relative_kl_reduction"] == pytest.approx(1 - 0.121 / 0.22, abs=1e-3)
    assert top["ci_low"] <= top["relative_kl_reduction"] <= top["ci_high"]
    rows = method_table(evaluations)
    mf_kl = next(r for r in rows if r["method"] == "mf-hybrid" and r["dimension"] == "sentiment" and r["metric"] == "kl")
    assert mf_kl["events"] == 5 and mf_kl["runs"] == 15 and mf_kl["ci_low"] < mf_kl["mean"] < mf_kl["ci_high"]


def test_report_is_a_self_contained_page(fake_runs: list[Path], tmp_path: Path) -> None:
    labeller = LabellerChain([KindLabeller(), LexiconLabeller()])
    dimensions = [SENTIMENT, EMOTION, BUILTIN_DIMENSIONS["behaviour"]]
    evaluations = [evaluate_run(run, labeller, dimensions) for run in fake_runs]
    index = write_report(evaluations, dimensions, tmp_path / "report")
    page = index.read_text()
    assert "Headline" in page and "<table>" in page and "<script src=" not in page and "rel=\"stylesheet\"" not in page  # stands alone
    # the mean field's shares come from the lexicons: their dimensions are no measure of it
    assert f"mean KL of {resolve_method('mf')}" in page and "left out as circular: emotion, sentiment" in page
    context = json.loads((tmp_path / "report" / "page.json").read_text(encoding="utf-8"))["context"]
    assert page.count('<figure class="intervals">') == len(context["metric_plots"]) >= 2  # kl, js, ...
    sentiment = next(t for t in context["trajectories"] if t["dimension"] == "sentiment")
    steps = sentiment["charts"][0]["x"]["values"]
    assert sentiment["charts"][0]["x"]["label"] == "step" and steps == sorted(steps) and steps[0] >= 1  # steps, not 0-1 window ticks
    assert len(sentiment["charts"]) == len(SENTIMENT.labels) and page.count('<div class="chart-box">') >= len(SENTIMENT.labels)
    assert ("Unlabelled items" in page) == bool(context["unlabelled"])  # no empty heading
    for name in ("metrics.json", "metrics.csv", "summary.csv", "labels.csv"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_report_states_label_validity_and_corrected_kl(fake_runs: list[Path], tmp_path: Path) -> None:
    from mfllm.evaluation.labellers import default_labellers
    from mfllm.evaluation.report import validity_rows

    intent = BUILTIN_DIMENSIONS["intent"]
    evaluations = [evaluate_run(run, LabellerChain(default_labellers()), [SENTIMENT, EMOTION, intent]) for run in fake_runs[::2]]
    first = evaluations[0]
    assert first.validity["sentiment"]["labeller"] == "linear:zh-sentiment" and first.validity["intent"]["labeller"] is None
    corrected = first.corrected["sentiment"]
    assert corrected.kl_raw == pytest.approx(first.dimensions["sentiment"].kl) and corrected.ci_low <= corrected.ci_high
    page = write_report(evaluations, [SENTIMENT, EMOTION, intent], tmp_path / "report").read_text()
    assert "Label validity" in page and "weibo2018-sentiment" in page and "corrected KL" in page
    assert "not validated against human labels" in page  # nothing offline labels intent
    rows = validity_rows(evaluations)
    assert any(r["labeller"] == "linear:zh-sentiment" and r["data"] == "weibo2018-sentiment" and not r["warning"] for r in rows)
    # a labeller no better than the majority class on accuracy is flagged, not hidden
    weak = {"accuracy": 0.60, "majority_accuracy": 0.70, "macro_f1": 0.40, "majority_macro_f1": 0.20}
    record = {**first.validity["sentiment"]["validations"][0], **weak}
    first.validity["sentiment"] = {**first.validity["sentiment"], "validations": [record]}
    [flagged] = [r for r in validity_rows([first]) if r["dimension"] == "sentiment"]
    assert flagged["warning"] == "accuracy at or below the majority class"


def test_cli_evaluate_labeller_on_rumoureval(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mfllm.cli import main

    assert main(["evaluate-labeller", "--data", str(shared_data / "rumoureval2017_processed"), "--judge-model", "fake",
                 "--limit", "40", "--dimension", "sdqc", "--dimension", "stance"]) == 0
    out = capsys.readouterr().out
    assert "on sdqc: 40 items" in out and "on stance: 40 items" in out and "macro-F1" in out and "gold \\ predicted" in out
