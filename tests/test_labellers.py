"""Labeller validation, trained offline labellers and label-share correction."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from mfllm.evaluation import BUILTIN_DIMENSIONS, SDQC, LabelItem, LabellerChain, LexiconLabeller
from mfllm.evaluation.labellers import LinearTextLabeller, default_labellers, shipped_labellers
from mfllm.evaluation.metrics import (confusion_rates, corrected_comparison, corrected_shares, kl_divergence, pooled_confusion,
                                      smoothed)
from mfllm.evaluation.validate import (EWECT_TO_EMOTION, GoldSet, load_gold_set, validate_gold_set,
                                       validation_from_predictions)

SENTIMENT, EMOTION, STANCE = BUILTIN_DIMENSIONS["sentiment"], BUILTIN_DIMENSIONS["emotion"], BUILTIN_DIMENSIONS["stance"]


def test_validation_figures_on_a_hand_example() -> None:
    gold = ["negative", "negative", "negative", "positive", "positive", "neutral"]
    predicted = ["negative", "positive", None, "positive", "positive", "negative"]
    v = validation_from_predictions(gold, predicted, SENTIMENT, "hand", "zh", "toy", "hand")
    assert v.confusion == [[1, 0, 1, 1], [1, 0, 0, 0], [0, 0, 2, 0]]  # rows negative, neutral, positive; last column unlabelled
    assert v.accuracy == pytest.approx(3 / 6) and v.labelled == 5
    # F1: negative 2*1/(2+1+2) = 0.4, neutral 0, positive 2*2/(4+1+0) = 0.8
    assert v.macro_f1 == pytest.approx((0.4 + 0.0 + 0.8) / 3)
    assert v.recall == pytest.approx({"negative": 1 / 3, "neutral": 0.0, "positive": 1.0})
    assert v.majority_label == "negative" and v.majority_accuracy == pytest.approx(0.5)
    assert v.majority_macro_f1 == pytest.approx((2 * 3 / (6 + 3)) / 3)
    assert v.at_or_below_majority  # accuracy 0.5 is not above the majority's 0.5
    # a label absent from the gold set adds no class of its own to macro-F1
    binary = validation_from_predictions(["negative", "positive"], ["neutral", "positive"], SENTIMENT, "hand", "zh", "toy", "hand")
    assert binary.macro_f1 == pytest.approx((0.0 + 1.0) / 2)
    with pytest.raises(ValueError, match="misaligned"):
        validation_from_predictions(gold, predicted[:-1], SENTIMENT, "hand", "zh", "toy", "hand")


def test_validate_gold_set_runs_the_labeller_and_renders() -> None:
    gold_set = GoldSet("toy", "sentiment", "zh", "hand", [LabelItem("哈哈哈太开心了", "", "zh"), LabelItem("", "", "zh")],
                       ["positive", "negative"], ["a", "b"])
    v = validate_gold_set(LexiconLabeller(), gold_set)
    assert v.confusion[SENTIMENT.index("negative")][-1] == 1 and v.failures == {"empty text": 1}
    assert "gold \\ predicted" in v.render() and "majority class" in v.render()


def test_correction_recovers_known_shares() -> None:
    rates = np.array([[0.7, 0.2, 0.1], [0.25, 0.6, 0.15], [0.05, 0.15, 0.8]])
    true = np.array([0.5, 0.2, 0.3])
    observed = rates.T @ true * 1000
    assert corrected_shares(observed, confusion_rates(rates * 10_000, pseudo_count=0)) == pytest.approx(true, abs=1e-6)
    # shares the labeller could not have produced are clipped onto the simplex
    clipped = corrected_shares(np.array([0.0, 0.0, 10.0]), rates)
    assert clipped.min() >= 0 and clipped.sum() == pytest.approx(1) and clipped.argmax() == 2
    # a sampled case: labels drawn through the confusion, corrected from a sampled validation confusion
    rng = np.random.default_rng(1)
    gold = rng.choice(3, 20_000, p=true)
    labelled = np.array([rng.choice(3, p=rates[g]) for g in gold])
    validation = np.array([rng.multinomial(2_000, row) for row in rates])
    raw = np.bincount(labelled, minlength=3) / len(labelled)
    corrected = corrected_shares(np.bincount(labelled, minlength=3).astype(float), confusion_rates(validation))
    assert np.abs(corrected - true).max() < 0.03 < np.abs(raw - true).max()


def test_corrected_kl_undoes_attenuation_and_its_interval_covers_the_truth() -> None:
    rates = np.array([[0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.1, 0.3, 0.6]])
    real_true, sim_true = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.3, 0.5])
    rng = np.random.default_rng(0)
    n = 3000
    labels = SENTIMENT.labels

    def draw(shares: np.ndarray) -> list[str]:
        return [labels[rng.choice(3, p=rates[g])] for g in rng.choice(3, n, p=shares)]

    real, sim = draw(real_true), draw(sim_true)
    confusion = np.array([rng.multinomial(1500, row) for row in rates]).astype(float)
    result = corrected_comparison(real, sim, [0] * n, SENTIMENT, confusion, resamples=100)
    assert result is not None
    truth = kl_divergence(smoothed(real_true * n, 0.5), smoothed(sim_true * n, 0.5))
    assert result.kl_raw < truth / 2  # label noise pulls the two distributions together
    assert abs(result.kl_corrected - truth) < abs(result.kl_raw - truth)
    assert result.ci_low <= truth <= result.ci_high and len(result.kl_corrected_draws) == 100
    # the same seed gives the same confusion draws, so runs of one labeller pool draw by draw
    again = corrected_comparison(real, sim, [0] * n, SENTIMENT, confusion, resamples=100)
    assert again is not None and again.kl_corrected_draws == result.kl_corrected_draws


def test_pooled_confusion_needs_every_label() -> None:
    record = {"dimension": "sentiment", "labels": list(SENTIMENT.labels), "confusion": [[5, 1, 0, 2], [0, 0, 0, 0], [1, 0, 7, 0]]}
    assert pooled_confusion([record], SENTIMENT) is None  # no human-labelled neutral rows
    full = {**record, "confusion": [[5, 1, 0, 2], [1, 3, 1, 0], [1, 0, 7, 0]]}
    assert pooled_confusion([record, full], SENTIMENT).tolist() == [[10, 2, 0], [1, 3, 1], [2, 0, 14]]


def _write_weibo2018(root: Path, rows: list[tuple[str, str]]) -> None:
    folder = root / "labeller_validation" / "sentiment_weibo2018"
    folder.mkdir(parents=True)
    (folder / "train.shared_6000.txt").write_text("".join(f"{i},{label},{text}\n" for i, (label, text) in enumerate(rows)),
                                                  encoding="utf-8")


def test_train_labeller_writes_a_safe_model_validated_out_of_fold(tmp_path: Path) -> None:
    from mfllm.training.labeller import LabellerRecipe, train_labeller

    rng = random.Random(0)
    good, bad, filler = ["开心", "喜欢", "太棒", "哈哈"], ["难过", "讨厌", "糟糕", "生气"], ["今天", "我们", "一起", "上班", "电影", "吃饭"]
    rows = [(label, "".join(rng.sample(filler, 3)) + rng.choice(good if label == "1" else bad) + rng.choice(filler))
            for label in ("1", "0") * 60]
    _write_weibo2018(tmp_path / "data", rows)
    recipe = LabellerRecipe("toy-sentiment", "zh", "sentiment", ("weibo2018-sentiment",),
                            {"analyzer": "char", "ngram_range": [1, 2], "hash_bits": 12, "lowercase": True}, "text-folds",
                            c_grid=(1.0,), folds=3)
    spec_path = train_labeller(recipe, tmp_path / "data", tmp_path / "models")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    [validation] = spec["validations"]
    assert validation["protocol"].startswith("out-of-fold, 3-fold") and validation["items"] == len(rows)
    assert validation["macro_f1"] > 0.9 > validation["majority_macro_f1"]
    with np.load(tmp_path / "models" / "toy-sentiment.npz", allow_pickle=False) as weights:
        assert weights["coef"].dtype == np.float16 and weights["coef"].shape[0] == 3
    labeller = LinearTextLabeller(spec_path)
    result = labeller.label([LabelItem("我们今天很开心", "", "zh"), LabelItem("上班真讨厌", "", "zh"), LabelItem(" ", "", "zh"),
                             LabelItem("I love it", "", "en")], SENTIMENT)
    assert result.labels == ["positive", "negative", None, None] and set(result.failures) == {2, 3}
    assert not labeller.covers(EMOTION, "zh") and labeller.validations(SENTIMENT, "zh")[0]["data"] == "weibo2018-sentiment"
    np.savez_compressed(tmp_path / "models" / "toy-sentiment.npz", columns=np.zeros(1, np.int32))  # weights swapped under the spec
    with pytest.raises(ValueError, match="weights do not match toy-sentiment.model.json"):
        LinearTextLabeller(spec_path).label([LabelItem("开心", "", "zh")], SENTIMENT)


def test_shipped_labellers_are_small_validated_and_first_in_the_default_chain() -> None:
    shipped = {lab.name: lab for lab in shipped_labellers()}
    assert set(shipped) >= {"linear:zh-sentiment", "linear:zh-emotion", "linear:en-sdqc"}
    folder = Path(shipped["linear:zh-sentiment"].spec_path).parent
    assert sum(p.stat().st_size for p in folder.iterdir()) < 6_000_000
    chain = LabellerChain(default_labellers())
    assert chain.chosen(SENTIMENT, "zh").name == "linear:zh-sentiment"
    assert chain.chosen(EMOTION, "zh").name == "linear:zh-emotion"
    assert chain.chosen(STANCE, "en").name == "linear:en-sdqc" and chain.chosen(SDQC, "en").name == "linear:en-sdqc"
    assert chain.chosen(SENTIMENT, "en").name == "lexicon" and chain.chosen(STANCE, "zh") is None
    for labeller, dimension, language in ((shipped["linear:zh-sentiment"], SENTIMENT, "zh"), (shipped["linear:zh-emotion"], EMOTION, "zh"),
                                          (shipped["linear:en-sdqc"], SDQC, "en"), (shipped["linear:en-sdqc"], STANCE, "en")):
        records = labeller.validations(dimension, language)
        assert records and all(r["protocol"].startswith("out-of-fold") for r in records)
        assert all(r["macro_f1"] > r["majority_macro_f1"] for r in records)
        assert pooled_confusion(records, dimension) is not None
    labels = chain.label([LabelItem("气死我了，什么垃圾服务！", "", "zh"), LabelItem("Is this confirmed? Source?", "claim", "en")], SDQC)
    assert labels.labels == [None, "query"]
    lexicon = {(r["dimension"], r["data"]) for r in LexiconLabeller().validations(SENTIMENT, "zh") + LexiconLabeller().validations(EMOTION, "zh")}
    assert lexicon == {("sentiment", "weibo2018-sentiment"), ("sentiment", "smp2020-sentiment"), ("emotion", "smp2020-emotion")}


def test_gold_sets_map_labels_explicitly(shared_data: Path) -> None:
    emotion = load_gold_set("smp2020-emotion", shared_data)
    assert EWECT_TO_EMOTION["neutral"] == "calm" and set(emotion.gold) == set(EMOTION.labels)
    assert emotion.gold.count("calm") == 420 + 476 + 339  # the README's neutral counts of the three files
    stance = load_gold_set("nlpcc2016-stance", shared_data)
    assert len(set(stance.groups)) == 5 and stance.gold.count("oppose") == 898
    sdqc = load_gold_set("rumoureval-sdqc", shared_data)
    assert len(set(sdqc.groups)) == 8 and len({item.text for item in sdqc.items}) > 4000
    from mfllm.evaluation.validate import GOLD_SET_COVERS

    assert all(GOLD_SET_COVERS[g.name] == (g.dimension, g.language) for g in (emotion, stance, sdqc))


def test_trained_sentiment_beats_majority_and_snownlp_on_a_held_out_slice(shared_data: Path) -> None:
    """Recipe check on data the model never saw: fit on 4/5 of weibo2018, score the other fifth."""
    from mfllm.training.labeller import RECIPES, fit_linear

    gold_set = load_gold_set("weibo2018-sentiment", shared_data)
    order = np.random.default_rng(0).permutation(len(gold_set.items))
    held_out, train = order[:300], order[1200:]
    recipe = RECIPES["zh-sentiment"]
    weights = fit_linear([gold_set.items[i].text for i in train], [gold_set.gold[i] for i in train], SENTIMENT.labels,
                         recipe.features, 1.0)
    test = gold_set.subset(held_out)
    predicted = [SENTIMENT.labels[k] for k in weights.scores([item.text for item in test.items], recipe.features).argmax(axis=1)]
    trained = validation_from_predictions(test.gold, predicted, SENTIMENT, "fit", "zh", "held-out", "held-out")
    lexicon = validate_gold_set(LexiconLabeller(), test)
    assert trained.accuracy > trained.majority_accuracy + 0.15
    assert trained.macro_f1 > lexicon.macro_f1 + 0.1


def test_validate_labeller_covers_only_its_gold_sets_and_samples_rows(shared_data: Path) -> None:
    from mfllm.evaluation.validate import validate_labeller

    validations = validate_labeller(LexiconLabeller(), shared_data, rows=25, seed=3)
    assert {v.data for v in validations} == {"weibo2018-sentiment", "smp2020-emotion", "smp2020-sentiment"}
    assert all(v.items == 25 and v.protocol.endswith("25 rows drawn at random (seed 3)") for v in validations)
    assert all(sum(map(sum, v.confusion)) == 25 for v in validations)
