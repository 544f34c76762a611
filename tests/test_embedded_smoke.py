"""Slow smoke tests on the real embedded models (minutes on a 2-core CPU)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mfllm.backends.embedded import CACHE_MARKER, embedded_model_dir
from mfllm.cli import main
from mfllm.simulation import RunStore

pytestmark = pytest.mark.slow


def test_demo_produces_chinese_comments_and_a_complete_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--agents", "16", "--warmup", "16", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "simulated actions/s" in out and "real:" in out and "sim :" in out
    run = next(tmp_path.rglob("manifest.json")).parent
    store = RunStore(run)
    rows = store.actions()
    assert len(rows) == 16
    assert sum(bool(re.search(r"[\u4e00-\u9fff]", r["sim_text"])) for r in rows) >= 8
    assert store.mean_field_history() and store.manifest()["status"] == "completed"
    assert "shipped tuned policy adapter" in out  # the default embedded model runs tuned
    policy = store.manifest()["models"]["policy"]
    assert policy["adapter"].endswith("gemma-3-270m/policy") and len(policy["adapter_sha256"]) == 16
    assert (embedded_model_dir("gemma-3-270m") / CACHE_MARKER).is_file()  # cached as safetensors
    assert list(embedded_model_dir("gemma-3-270m").glob("*.safetensors"))


def test_smollm2_is_a_chat_model(tmp_path: Path) -> None:
    from mfllm.backends import ModelPool
    from mfllm.interfaces import SamplingParams
    from mfllm.prompts import policy_prompt

    model = ModelPool(device="cpu").get("embedded:smollm2-135m-instruct")
    assert model.loaded.is_chat
    [text] = model.generate([policy_prompt("The city will close all schools tomorrow.", "gender: female", "en")],
                            SamplingParams(max_new_tokens=24, seed=0))
    assert text and "\n" not in text


def test_what_the_population_does_moves_the_policy_s_choice_of_kind(demo_event_path: Path) -> None:
    from mfllm.backends import ModelPool
    from mfllm.data import load_event
    from mfllm.interfaces import AgentAction
    from mfllm.simulation import StepContext
    from mfllm.simulation.methods.recent import RecentK

    event, _ = load_event(demo_event_path)
    policy = ModelPool().get("embedded:gemma-3-270m")
    personas = [f"性别：{g}；地区：{r}" for g in ("男", "女") for r in ("北京", "上海", "广东", "未知")]
    repost_probability = {}
    for kind, text in (("repost", "转发微博"), ("comment", "这是真的吗？")):
        provider = RecentK("zh", 8)
        provider.observe([AgentAction("p", text if kind == "repost" else f"{text}{i}", kind) for i in range(8)], seed=0)  # contexts drop repeats
        step = StepContext(event, provider)
        probabilities = step.choice_probabilities(policy, [step.prompt(p) for p in personas], None)
        repost_probability[kind] = sum(p["repost"] for p in probabilities) / len(probabilities)
    assert repost_probability["repost"] > repost_probability["comment"] + 0.1, repost_probability
