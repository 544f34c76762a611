"""Realism measures on Chinese and English text: a simulator that copies, loops or runs long is told apart."""

from __future__ import annotations

import random

import pytest

from mfllm.evaluation.realism import discriminator_accuracy, distinct, duplicate_share, realism

REAL_ZH = ["伦儿要注意安全", "终于等到你了", "希望一切平安", "这是真的吗？求官方消息", "已经辟谣了，别传了", "大家保护好自己", "太可怕了",
           "加油武汉[加油]", "心疼", "注意防护啊", "不信谣不传谣", "转发扩散一下", "我也想知道", "有没有人知道是哪里", "看完哭了"]


def rows(real: list[str], sim: list[str], real_kind: str = "comment") -> list[dict]:  # type: ignore[type-arg]
    return [{"step": 2 + i // 8, "real_kind": real_kind, "real_text": r, "sim_choice": "comment", "sim_text": s}
            for i, (r, s) in enumerate(zip(real, sim))]


def test_a_population_that_loops_and_copies_is_told_apart_from_people() -> None:
    rng = random.Random(0)
    real = [rng.choice(REAL_ZH) + rng.choice(["", "！", "啊", "～"]) + str(i) for i in range(60)]
    collapsed = ["大家好，我是我的李大兴，我是我的李大兴，我是我的李大兴，我是我的李大兴"] * 30 + [f"2017-12-03 21:49:{i:02d}" for i in range(30)]
    measured = realism(rows(real, collapsed), {2: "- [评论] 大家好，我是我的李大兴，我是我的李大兴，我是我的李大兴，我是我的李大兴"})
    assert measured["discriminator_accuracy"] > 0.9
    assert measured["degenerate_sim"] == 1.0 and measured["degenerate_real"] == 0.0
    assert measured["duplicate_sim"] == pytest.approx(29 / 60) and measured["duplicate_real"] < 0.1
    assert measured["copied_sim"] == pytest.approx(8 / 60)  # the copies at step 2, whose context showed the line
    assert measured["median_length_sim"] > 2 * measured["median_length_real"] and measured["length_w1"] > 0.5
    assert measured["distinct2_sim"] < measured["distinct2_real"]
    like = realism(rows(real, list(reversed(real))))
    assert like["discriminator_accuracy"] < 0.7 and like["length_w1"] < 0.05 and "copied_sim" not in like


def test_english_counts_words_and_kinds() -> None:
    real = ["Is this confirmed?", "Source please", "This is fake news", "Stay safe everyone", "Praying for them"] * 3
    sim = ["fake news fake news fake news fake news"] * 15
    measured = realism(rows(real, sim))
    assert measured["median_length_real"] == 3 and measured["median_length_sim"] == 8 and measured["degenerate_sim"] == 1.0
    reposts = [{"step": 2, "real_kind": "repost", "real_text": "转发微博", "sim_choice": "repost_with_text", "sim_text": "支持"}] * 4
    shares = realism(reposts)
    assert shares["share_repost_real"] == 1.0 and shares["share_repost_with_text_sim"] == 1.0 and shares["texts_real"] == 0


def test_the_pieces() -> None:
    assert duplicate_share(["a b", "A  B!", "c"]) == pytest.approx(1 / 3)
    assert distinct(["哈哈哈哈", "你好"], 1, 6) == pytest.approx(3 / 6)  # the budget cuts the second text after two units
    assert discriminator_accuracy(["x"] * 5, ["y"] * 50) is None
