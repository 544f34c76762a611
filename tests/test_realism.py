"""Realism metrics: each rule on Chinese and English texts, the run-level wiring (prompts rebuilt from the
journal), aggregation with CIs, the report and the model-free ``mfllm realism`` command."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from mfllm.cli import main
from mfllm.evaluation import RunEvaluation
from mfllm.evaluation.aggregate import method_table, realism_headline, realism_table
from mfllm.evaluation.evaluate import contexts_by_step, run_realism
from mfllm.evaluation.realism import (Realism, copied, degenerate_reason, discriminator_accuracy, distinct_n, duplicates,
                                      has_text, kind_shares, length_distance, measure_realism, tokens)
from mfllm.evaluation.report import realism_headline_text
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.methods import resolve_method


@pytest.mark.parametrize("text", ["大家好，我是我的李大兴，我是我的李大兴，我是我的李大兴，我是我的李大兴", "咳嗽，咳，咳嗽，咳嗽，咳，咳，咳",
                                  "I love it I love it I love it", "so true so true so true so true!"])
def test_repeated_pieces_are_degenerate(text: str) -> None:
    language = "en" if text.isascii() else "zh"
    assert degenerate_reason(text, language) == "repetition"


@pytest.mark.parametrize("text", ["2017-12-03 21:49:53", "10/12/2020 11:03:09 544楼", "1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12. 13. 14. 1",
                                  "2020年06月27日", "12:05 PM, 3/4/2021"])
def test_timestamps_and_numbered_lists_are_degenerate(text: str) -> None:
    assert degenerate_reason(text, "zh") == "numeric" or degenerate_reason(text, "en") == "numeric"


def test_what_people_write_is_not_degenerate() -> None:
    for text in ("穿越了？[蜡烛][蜡烛][蜡烛]", "哈哈哈哈哈哈", "666", "匿名：", "湖北襄阳这个病人太过分了，襄阳人民要小心，襄阳的医院已经开始排查，希望襄阳早日平安，大家都注意防护",
                 "底层民众的医疗费用猛于虎，国人的性命其何等脆弱！"):
        assert degenerate_reason(text, "zh") is None, text
    for text in ("This is fake news, the photo is from 2015 and the caption is wrong.", "lol", "RIP to all of the victims of the attack",
                 "The police said the man in the video is not the suspect and the police asked people to stop sharing the video"):
        assert degenerate_reason(text, "en") is None, text
    # one character or word over and over: the distinct-token ratio catches what the piece rule skips
    assert degenerate_reason("咳" * 30, "zh") == "low-diversity" and degenerate_reason("no " * 15, "en") == "low-diversity"


def test_tokens_are_characters_for_chinese_and_words_otherwise() -> None:
    assert tokens("真的 吗？", "zh") == ["真", "的", "吗", "？"]
    assert tokens("Don't SHARE this, it's fake!", "en") == ["don't", "share", "this", "it's", "fake"]


def test_duplicates_after_whitespace_normalisation() -> None:
    assert duplicates(["真的吗", "真的 吗", " 真的吗 ", "假的", "fake  news", "fake news\n"]) == [False, False, True, False, False, True]


def test_copied_needs_a_minimum_length_and_most_of_the_text_in_the_prompt() -> None:
    prompt = "事件：湖北襄阳当地疑似感染的病人把唾沫吐在电梯按钮上！\n最近的反应：\n- [评论] 太可怕了吧\n你的回应："
    assert copied("湖北襄阳当地疑似感染的病人", prompt, "zh")  # verbatim, 13 characters
    assert copied("襄阳当地疑似感染的病人把唾沫吐在电梯上", prompt, "zh")  # longest common piece covers >= 80%
    assert not copied("太可怕了吧", prompt, "zh")  # five characters: too short to count
    assert not copied("襄阳的病人真的太过分了，希望尽快查清", prompt, "zh")
    english = "Event: Police confirm two suspects arrested after the shooting in Ottawa\nRecent reactions:\n- [comment] praying for them"
    assert copied("police confirm two suspects arrested", english.lower(), "en") and copied("Police  confirm two suspects arrested", english, "en")
    assert not copied("praying for them", english, "en")  # three words
    assert not copied("I do not believe the police at all here", english, "en")


def test_length_distance_on_hand_computed_cases() -> None:
    same = length_distance([5, 10, 20], [20, 5, 10])
    assert same["length_wasserstein_log"] == pytest.approx(0.0) and same["length_ratio"] == 1.0
    longer = length_distance([9, 9], [99, 99])
    assert longer["length_median_sim"] == 99 and longer["length_ratio"] == 11
    assert longer["length_wasserstein_log"] == pytest.approx(math.log(100) - math.log(10))
    assert length_distance([], [3])["length_ratio"] is None


def test_distinct_n_compares_equal_numbers_of_ngrams() -> None:
    rng = random.Random(0)
    vocabulary = "天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜金生丽水玉出昆冈"
    few = ["".join(rng.choice(vocabulary) for _ in range(10)) for _ in range(25)]
    many = ["".join(rng.choice(vocabulary) for _ in range(10)) for _ in range(200)]
    real, sim = distinct_n(few, many, "zh", 1)
    assert real == pytest.approx(sim, abs=0.05)  # same source: equal budgets give equal diversity however much text each side has
    naive_few, naive_many = len(set("".join(few))) / 250, len(set("".join(many))) / 2000
    assert naive_few > 2 * naive_many  # what a per-token ratio over all text would have reported
    real, sim = distinct_n(few, ["天地玄黄天地玄黄天地"] * 50, "zh", 2)
    assert sim < 0.1 < 0.8 < real
    words = [" ".join(rng.choice(["fake", "news", "true", "police", "photo", "real", "wow", "sad"]) for _ in range(8)) for _ in range(20)]
    assert distinct_n(words, ["fake news"] * 40, "en", 1)[1] == pytest.approx(2 / 80)  # both sides measured on the 80 simulated words
    assert distinct_n(["短"], ["短"], "zh", 1) == (None, None)


def test_discriminator_is_near_chance_on_one_source_and_high_on_two() -> None:
    rng = random.Random(1)
    pool = [f"{rng.choice(['真的吗', '太可怕了', '转发', '心疼', '辟谣了吗'])}{rng.choice(['[蜡烛]', '！', '。', '？', ''])}" for _ in range(400)]
    same = discriminator_accuracy(pool[:60], pool[60:120])
    assert 0.3 < same < 0.65
    different = discriminator_accuracy(pool[:60], [f"大家好，我是{t}，我是{t}" for t in pool[60:120]])
    assert different > 0.95
    assert discriminator_accuracy(pool[:60], pool[60:120]) == same  # seeded
    assert discriminator_accuracy(pool[:60], pool[60:64]) is None
    english = ["this is fake", "praying for everyone", "so sad", "source?", "not true at all", "wow", "stay safe"] * 8
    assert discriminator_accuracy(english, [f"As a concerned citizen, I think {t}." for t in english]) > 0.95


def test_kind_shares_and_bare_reposts_have_no_text() -> None:
    actions = [("comment", "真的吗"), ("repost", "转发微博"), ("repost", "转发"), ("repost", "心疼//@某人:真的吗"), ("repost", "")]
    assert kind_shares(actions) == {"comment": 0.2, "repost_with_text": 0.2, "repost": 0.6}
    assert [has_text(k, t) for k, t in actions] == [True, False, False, True, False]
    assert not has_text("comment", "  ")


def test_measure_realism_real_beside_simulated() -> None:
    real = [("comment", f"第{i}条真实评论，说点别的{i * 7}") for i in range(12)] + [("repost", "转发微博")] * 4
    sim = [("comment", "咳嗽，咳，咳嗽，咳嗽，咳，咳，咳")] * 6 + [("comment", f"模拟的评论{i}号，太可怕了") for i in range(6)] + [("repost", "转发微博")] * 4
    prompts = ["事件：有人咳嗽，咳，咳嗽，咳嗽，咳，咳，咳\n你的回应："] * 16
    result = measure_realism(real, sim, prompts, "zh")
    assert result.texts_real == result.texts_sim == 12
    assert result.degenerate_sim == 0.5 and result.degenerate_real == 0.0
    assert result.duplicate_sim == pytest.approx(5 / 12) and result.duplicate_real == 0.0
    assert result.copied_sim == 0.5 and result.copied_real == 0.0
    assert result.repost_real == result.repost_sim == 0.25 and result.comment_sim == 0.75
    assert result.degenerate_examples == ["咳嗽，咳，咳嗽，咳嗽，咳，咳，咳"] * 3
    assert measure_realism(real, sim, None, "zh").copied_sim is None
    with pytest.raises(ValueError, match="misaligned"):
        measure_realism(real, sim[:3], None, "zh")


@pytest.fixture(scope="module")
def recent_run(demo_event_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SimulationConfig(data=str(demo_event_path), method="recent", policy_model="fake", warmup=16, batch_size=8, num_agents=24, seed=0)
    return simulate(config, tmp_path_factory.mktemp("realism") / "recent")


def test_copied_is_measured_against_the_prompt_each_agent_had(recent_run: Path, tmp_path: Path) -> None:
    """A step-2 text shown in step 3's recent-k context is copied when a step-3 agent writes it, not by its author."""
    import shutil

    run = Path(shutil.copytree(recent_run, tmp_path / "run"))
    store = RunStore(run)
    rows = store.actions()
    before = run_realism(store)
    assert before.copied_sim == 0.0 and before.texts_sim > 0
    contexts = contexts_by_step(store, SimulationConfig(**store.manifest()["config"]), _event(store))
    source = next(r for r in rows if r["step"] == 2 and has_text(r["sim_kind"], r["sim_text"]) and len(r["sim_text"]) >= 8
                  and r["sim_text"] in (contexts[3].context_block() or ""))
    target = next(r for r in rows if r["step"] == 3 and r["sim_kind"] == "comment")
    target["sim_text"] = source["sim_text"]
    (run / "actions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    after = run_realism(RunStore(run))
    assert after.copied_sim == pytest.approx(1 / after.texts_sim)


def _event(store: RunStore):  # type: ignore[no-untyped-def]
    from mfllm.data import load_event

    config = store.manifest()["config"]
    return load_event(config["data"], config["event_id"], config["data_format"])[0]


def _evaluation(method: str, event: str, seed: int, duplicate: float, accuracy: float) -> RunEvaluation:
    values = {name: 0.1 for name in Realism.__dataclass_fields__ if name != "degenerate_examples"}
    values.update(texts_real=40, texts_sim=40, duplicate_sim=duplicate, duplicate_real=0.0, discriminator_accuracy=accuracy)
    return RunEvaluation(f"{event}/{method}/{seed}", event, method, seed, 64, "step", 0.5, "x", realism=Realism(**values, degenerate_examples=[]))


def test_realism_table_and_headline_aggregate_over_events_and_seeds() -> None:
    mf = resolve_method("mf")
    evaluations = [_evaluation(mf, f"e{e}", s, 0.4 + 0.02 * e, 0.8 + 0.01 * s) for e in range(4) for s in range(3)]
    evaluations += [_evaluation("state", f"e{e}", s, 0.02, 0.9) for e in range(4) for s in range(3)]
    table = realism_table(evaluations)
    assert table[0]["method"] == "real" and {r["method"] for r in table} == {"real", mf, "state"}
    cell = {(r["method"], r["metric"]): r for r in table}
    assert cell[mf, "duplicate"]["mean"] == pytest.approx(0.43) and cell[mf, "duplicate"]["events"] == 4 and cell[mf, "duplicate"]["runs"] == 12
    assert cell[mf, "duplicate"]["ci_low"] < 0.43 < cell[mf, "duplicate"]["ci_high"]
    assert cell["real", "duplicate"]["mean"] == 0.0 and ("real", "discriminator_accuracy") not in cell
    top = realism_headline(evaluations)
    assert top["method"] == mf and top["sim"]["discriminator_accuracy"]["mean"] == pytest.approx(0.81)
    line = realism_headline_text(top)
    assert "duplicates 43%" in line and "real 0%" in line and "discriminator accuracy 0.81" in line
    rows = [r for r in method_table(evaluations) if r["dimension"] == "(realism)" and r["method"] == "state"]
    assert {r["metric"] for r in rows} >= {"duplicate.sim", "duplicate.real", "discriminator_accuracy.sim"}


def test_cli_realism_and_evaluate_report_it(recent_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["realism", str(recent_run.parent), "--output", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "discriminator accuracy" in out and out.splitlines()[1].startswith("real") and "recent" in out
    rows = (tmp_path / "r" / "realism.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("method,metric,mean,ci_low,ci_high") and any(r.startswith("recent,duplicate,") for r in rows)
    assert main(["evaluate", str(recent_run), "--output", str(tmp_path / "m"), "--dimension", "sentiment"]) == 0
    assert "realism (sim/real): discriminator" in capsys.readouterr().out
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["runs"][0]["realism"]["texts_sim"] > 0 and saved["realism"][0]["method"] == "real"


def test_a_saved_evaluation_keeps_its_realism_and_an_older_one_gets_it(recent_run: Path) -> None:
    from mfllm.analysis.backtest import _evaluation_from_json, _with_realism
    from mfllm.evaluation import LabellerChain, evaluate_run

    evaluation = evaluate_run(recent_run, LabellerChain([]), [])
    saved = json.loads(json.dumps(evaluation.to_json(), ensure_ascii=False))
    assert _evaluation_from_json(saved).realism == evaluation.realism
    older = _evaluation_from_json({**saved, "realism": None})
    assert older.realism is None and _with_realism(recent_run, older).realism == evaluation.realism


def test_report_shows_the_realism_table_and_the_mean_fields_realism(recent_run: Path, demo_event_path: Path, tmp_path: Path) -> None:
    from mfllm.evaluation import write_report
    from mfllm.evaluation.pipeline import realism_only

    config = SimulationConfig(data=str(demo_event_path), method="mf", policy_model="fake", warmup=16, batch_size=8, num_agents=24, seed=0)
    evaluations = realism_only([simulate(config, tmp_path / "mf"), recent_run])
    page = write_report(evaluations, [], tmp_path / "report").read_text(encoding="utf-8")
    table = page[page.index("<h2>Realism</h2>"):page.index("</table>", page.index("<h2>Realism</h2>"))]
    assert [row.split("</td>")[0] for row in table.split("<tr><td class=t>")[1:]] == ["real", resolve_method("mf"), "recent"]
    assert f"<b>Realism:</b> realism of {resolve_method('mf')}: discriminator accuracy" in page
    metrics_table = page[page.index("<h2>Metrics by method</h2>"):]
    assert "(realism)" not in metrics_table[:metrics_table.index("</table>")]
