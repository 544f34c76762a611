"""Realism measures on Chinese and English text (a simulator that copies, loops or runs long is told apart
from people), the run-level wiring (prompts rebuilt from the journal), aggregation with CIs, the report,
the backtest's reuse and the model-free ``mfllm realism`` command. The degenerate rule itself
(:mod:`mfllm.text`) is tested in test_generation_realism.py."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from mfllm.cli import main
from mfllm.evaluation import RunEvaluation
from mfllm.evaluation.aggregate import method_table, realism_headline, realism_table
from mfllm.evaluation.evaluate import contexts_by_step, run_realism, shown_prompts
from mfllm.evaluation.realism import REALISM_METRICS, discriminator_accuracy, distinct_n, duplicate_share, realism
from mfllm.text import common_opening_share, copied, opening, tokens
from mfllm.evaluation.report import realism_headline_text
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.methods import resolve_method

REAL_ZH = ["伦儿要注意安全", "终于等到你了", "希望一切平安", "这是真的吗？求官方消息", "已经辟谣了，别传了", "大家保护好自己", "太可怕了",
           "加油武汉[加油]", "心疼", "注意防护啊", "不信谣不传谣", "转发扩散一下", "我也想知道", "有没有人知道是哪里", "看完哭了"]


def rows(real: list[str], sim: list[str], real_kind: str = "comment") -> list[dict]:  # type: ignore[type-arg]
    return [{"step": 2 + i // 8, "real_kind": real_kind, "real_text": r, "sim_choice": "comment", "sim_text": s}
            for i, (r, s) in enumerate(zip(real, sim))]


def test_a_population_that_loops_and_copies_is_told_apart_from_people() -> None:
    rng = random.Random(0)
    real = [rng.choice(REAL_ZH) + rng.choice(["", "！", "啊", "～"]) + str(i) for i in range(60)]
    loop = "大家好，我是我的李大兴，我是我的李大兴，我是我的李大兴，我是我的李大兴"
    collapsed = [loop] * 30 + [f"2017-12-03 21:49:{i:02d}" for i in range(30)]
    prompts = [f"事件：某地疫情\n最近的反应：\n- [评论] {loop}\n你的回应：" if i < 8 else "事件：某地疫情\n你的回应：" for i in range(60)]
    measured = realism(rows(real, collapsed), prompts, "zh")
    assert measured["discriminator_accuracy"] > 0.9
    assert measured["degenerate_sim"] == 1.0 and measured["degenerate_real"] == 0.0
    assert measured["duplicate_sim"] == pytest.approx(29 / 60) and measured["duplicate_real"] < 0.1
    assert measured["copied_sim"] == pytest.approx(8 / 60)  # the loops whose prompt showed the line
    assert measured["median_length_sim"] > 2 * measured["median_length_real"] and measured["length_w1"] > 0.5
    assert measured["distinct2_sim"] < measured["distinct2_real"]
    like = realism(rows(real, list(reversed(real))), None, "zh")
    assert like["discriminator_accuracy"] < 0.7 and like["length_w1"] < 0.05 and "copied_sim" not in like
    assert set(measured) >= set(REALISM_METRICS)


def test_english_counts_words_and_kinds() -> None:
    real = ["Is this confirmed?", "Source please", "This is fake news", "Stay safe everyone", "Praying for them"] * 3
    sim = ["fake news fake news fake news fake news"] * 15
    measured = realism(rows(real, sim), None, "en")
    assert measured["median_length_real"] == 3 and measured["median_length_sim"] == 8 and measured["degenerate_sim"] == 1.0
    reposts = [{"step": 2, "real_kind": "repost", "real_text": "转发微博", "sim_choice": "repost_with_text", "sim_text": "支持"}] * 4
    shares = realism(reposts, None, "zh")
    assert shares["share_repost_real"] == 1.0 and shares["share_repost_with_text_sim"] == 1.0 and shares["texts_real"] == 0
    # a run recorded before agents chose a kind: the simulated kind and text tell the choice
    older = [{"step": 2, "real_kind": "comment", "real_text": "真的吗", "sim_kind": "repost", "sim_text": "转发微博"}]
    assert realism(older, None, "zh")["share_repost_sim"] == 1.0


def test_a_population_in_a_template_shares_its_opening_though_no_two_texts_are_equal() -> None:
    real = ["真的假的", "求官方消息", "已经辟谣了", "赶紧囤水吧", "服务好就支持", "涨价太离谱", "哈哈哈笑死", "谁信谁傻"]
    template = [f"大家好，我是中国人，我在{place}" for place in ("上海", "北京", "武汉", "广州", "深圳", "杭州", "成都")] + ["疫情过去了吗"]
    measured = realism(rows(real, template), None, "zh")
    assert measured["duplicate_sim"] == 0 and measured["common_opening_sim"] == pytest.approx(7 / 8)
    assert measured["common_opening_real"] == pytest.approx(1 / 8)
    assert opening("大家好！我是", "zh") == ("大", "家", "好") and opening("好的", "zh") is None  # punctuation aside; too short
    assert opening("I think so, really", "en") == ("i", "think", "so")
    assert common_opening_share(["短", "也短"], "zh") is None


def test_tokens_are_characters_for_chinese_and_words_otherwise() -> None:
    assert tokens("真的 吗？", "zh") == ["真", "的", "吗", "？"]
    assert tokens("Don't SHARE this, it's fake!", "en") == ["don't", "share", "this", "it's", "fake"]


def test_duplicates_on_the_normalised_text() -> None:
    assert duplicate_share(["a b", "A  B!", "c"]) == pytest.approx(1 / 3)
    assert duplicate_share(["真的吗", "真的 吗？", "假的"]) == pytest.approx(1 / 3) and duplicate_share([]) is None


def test_copied_needs_a_minimum_length_and_most_of_the_text_in_the_prompt() -> None:
    prompt = "事件：湖北襄阳当地疑似感染的病人把唾沫吐在电梯按钮上！\n最近的反应：\n- [评论] 太可怕了吧\n你的回应："
    assert copied("湖北襄阳当地疑似感染的病人", prompt, "zh")  # verbatim, 13 characters
    assert copied("襄阳当地疑似感染的病人把唾沫吐在电梯上", prompt, "zh")  # the longest common piece covers >= 80%
    assert not copied("太可怕了吧", prompt, "zh")  # five characters: too short to count
    assert not copied("襄阳的病人真的太过分了，希望尽快查清", prompt, "zh")
    english = "Event: Police confirm two suspects arrested after the shooting in Ottawa\nRecent reactions:\n- [comment] praying for them"
    assert copied("police confirm two suspects arrested", english, "en") and copied("Police,  confirm two suspects arrested!", english, "en")
    assert not copied("praying for them", english, "en")  # three words
    assert not copied("I do not believe the police at all here", english, "en")


def test_distinct_n_compares_equal_numbers_of_ngrams() -> None:
    rng = random.Random(0)
    vocabulary = "天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜金生丽水玉出昆冈"
    few = ["".join(rng.choice(vocabulary) for _ in range(10)) for _ in range(25)]
    many = ["".join(rng.choice(vocabulary) for _ in range(10)) for _ in range(200)]
    real, sim = distinct_n(few, many, "zh", 1)
    assert real == pytest.approx(sim, abs=0.05)  # one source: equal budgets give equal diversity however much text each side has
    assert len(set("".join(few))) / 250 > 2 * len(set("".join(many))) / 2000  # what a ratio over all the text would report
    real, sim = distinct_n(few, ["天地玄黄天地玄黄天地"] * 50, "zh", 2)
    assert sim < 0.1 < 0.8 < real
    words = [" ".join(rng.choice(["fake", "news", "true", "police", "photo", "real", "wow", "sad"]) for _ in range(8)) for _ in range(20)]
    assert distinct_n(words, ["fake news"] * 40, "en", 1)[1] == pytest.approx(2 / 80)  # both sides on the 80 simulated words
    assert distinct_n(["短"], ["短"], "zh", 1) == (None, None)


def test_discriminator_is_near_chance_on_one_source_and_high_on_two() -> None:
    rng = random.Random(1)
    pool = [f"{rng.choice(['真的吗', '太可怕了', '转发', '心疼', '辟谣了吗'])}{rng.choice(['[蜡烛]', '！', '。', '？', ''])}" for _ in range(400)]
    same = discriminator_accuracy(pool[:60], pool[60:120])
    assert 0.3 < same < 0.65
    assert discriminator_accuracy(pool[:60], [f"大家好，我是{t}，我是{t}" for t in pool[60:120]]) > 0.95
    assert discriminator_accuracy(pool[:60], pool[60:120]) == same  # seeded
    assert discriminator_accuracy(pool[:60], pool[60:69]) is None  # fewer than 10 on a side
    english = ["this is fake", "praying for everyone", "so sad", "source?", "not true at all", "wow", "stay safe"] * 8
    assert discriminator_accuracy(english, [f"As a concerned citizen, I think {t}." for t in english]) > 0.95


@pytest.fixture(scope="module")
def recent_run(demo_event_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SimulationConfig(data=str(demo_event_path), method="recent", policy_model="fake", warmup=16, batch_size=8, num_agents=24, seed=0)
    return simulate(config, tmp_path_factory.mktemp("realism") / "recent")


def _event(store: RunStore):  # type: ignore[no-untyped-def]
    from mfllm.data import load_event

    config = store.manifest()["config"]
    return load_event(config["data"], config["event_id"], config["data_format"])[0]


def test_copied_is_measured_against_the_prompt_each_agent_had(recent_run: Path, tmp_path: Path) -> None:
    """A step-2 text shown in step 3's recent-k context is copied when a step-3 agent writes it, not by its author."""
    run = Path(shutil.copytree(recent_run, tmp_path / "run"))
    store = RunStore(run)
    rows = store.actions()
    before = run_realism(store)
    contexts = contexts_by_step(store, SimulationConfig(**store.manifest()["config"]), _event(store))
    source = next(r for r in rows if r["step"] == 2 and r["sim_choice"] != "repost" and len(r["sim_text"]) >= 8
                  and r["sim_text"] in (contexts[3].context_block() or ""))
    target = next(r for r in rows if r["step"] == 3 and r["sim_choice"] == "comment"
                  and not copied(r["sim_text"], contexts[3].prompt(r["persona"]).completion, "zh"))
    neighbour = next(r for r in rows if r["step"] == 2 and r["sim_choice"] == "comment" and r is not source
                     and not copied(r["sim_text"], contexts[2].prompt(r["persona"]).completion, "zh"))
    copies = before["copied_sim"] * before["texts_sim"]
    for row, added in ((neighbour, 0), (target, 1)):  # the same text: not shown to a step-2 agent, shown to a step-3 one
        row["sim_text"] = source["sim_text"]
        (run / "actions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        after = run_realism(RunStore(run))
        assert after["texts_sim"] == before["texts_sim"] > 0
        assert after["copied_sim"] * after["texts_sim"] == pytest.approx(copies + added)


def test_a_mean_field_run_is_measured_against_the_context_it_recorded(demo_event_path: Path, tmp_path: Path) -> None:
    """What agents were shown is the run's recorded mean-field history, even where code restoring the
    context from the journal would now write it differently."""
    config = SimulationConfig(data=str(demo_event_path), method="mf", policy_model="fake", warmup=16, batch_size=8, num_agents=24, seed=0)
    run = simulate(config, tmp_path / "mf")
    store = RunStore(run)
    before = run_realism(store)
    line = "这句话只在记录的上下文里出现过"
    history = store.mean_field_history()
    seen_by_step_3 = max(i for i, entry in enumerate(history) if entry["step"] == 2)
    history[seen_by_step_3]["text"] += f"\n- [评论] {line}"
    (run / "mean_field.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in history), encoding="utf-8")
    rows = store.actions()
    prompts = shown_prompts(store, SimulationConfig(**store.manifest()["config"]), _event(store), rows)
    target = next(r for r, p in zip(rows, prompts) if r["step"] == 3 and r["sim_choice"] == "comment" and not copied(r["sim_text"], p, "zh"))
    target["sim_text"] = line
    (run / "actions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    after = run_realism(RunStore(run))
    assert line not in (contexts_by_step(store, SimulationConfig(**store.manifest()["config"]), _event(store))[3].context_block() or "")
    assert after["copied_sim"] * after["texts_sim"] == pytest.approx(before["copied_sim"] * before["texts_sim"] + 1)


def _evaluation(method: str, event: str, seed: int, duplicate: float, accuracy: float) -> RunEvaluation:
    measures = {name: 0.1 for name in REALISM_METRICS}
    measures.update(duplicate_sim=duplicate, duplicate_real=0.0, discriminator_accuracy=accuracy)
    return RunEvaluation(f"{event}/{method}/{seed}", event, method, seed, 64, "step", 0.5, "x", realism=measures)


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
    assert {r["metric"] for r in rows} == set(REALISM_METRICS)


def test_report_shows_the_realism_table_and_the_mean_fields_realism(recent_run: Path, demo_event_path: Path, tmp_path: Path) -> None:
    from mfllm.evaluation import write_report
    from mfllm.evaluation.pipeline import realism_only

    config = SimulationConfig(data=str(demo_event_path), method="mf", policy_model="fake", warmup=16, batch_size=8, num_agents=24, seed=0)
    evaluations = realism_only([simulate(config, tmp_path / "mf"), recent_run])
    page = write_report(evaluations, [], tmp_path / "report").read_text(encoding="utf-8")
    table = page[page.index("<h2>Realism</h2>"):page.index("</table>", page.index("<h2>Realism</h2>"))]
    assert [row.split("</td>")[0] for row in table.split('<tr><td class="t">')[1:]] == ["real", resolve_method("mf"), "recent"]
    assert f"<b>Realism:</b> realism of {resolve_method('mf')}: discriminator accuracy" in page
    metrics_table = page[page.index("<h2>All metrics by method</h2>"):]
    assert "(realism)" not in metrics_table[:metrics_table.index("</table>")]


def test_a_reused_evaluation_gets_its_realism_measured_again(recent_run: Path) -> None:
    from mfllm.analysis.backtest import _evaluation_from_json, _with_realism
    from mfllm.evaluation import LabellerChain, evaluate_run

    evaluation = evaluate_run(recent_run, LabellerChain([]), [])
    saved = json.loads(json.dumps(evaluation.to_json(), ensure_ascii=False))
    assert _evaluation_from_json(saved).realism == evaluation.realism
    stale = _evaluation_from_json({**saved, "realism": {"duplicate_sim": 0.99}})
    assert _with_realism(recent_run, stale).realism == evaluation.realism


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
