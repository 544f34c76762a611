"""Throughput a user can plan with: per-run figures from the backends' counters, and dry-run wall-clock estimates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mfllm.analysis.backtest import BacktestConfig, backtest, backtest_estimate
from mfllm.backends import FakeModel, ModelPool
from mfllm.cli import main
from mfllm.data.loaders import load_event
from mfllm.interfaces import LanguageModel
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation import throughput
from mfllm.simulation.store import MANIFEST

from pools import FixedPool


class RolePool(ModelPool):
    """A fresh fake backend per role, kept so a test can read each one's counters."""

    def __init__(self) -> None:
        super().__init__()
        self.models: dict[str, FakeModel] = {}

    def get(self, spec, adapter=None, role="model") -> LanguageModel:  # type: ignore[no-untyped-def]
        return self.models.setdefault(role, FakeModel())


def test_the_manifest_records_the_backends_counts_per_role(demo_event_path: Path, tmp_path: Path) -> None:
    pool = RolePool()
    config = SimulationConfig(data=str(demo_event_path), method="mf-llm", policy_model="fake", warmup=8, batch_size=8, num_agents=24)
    run = simulate(config, tmp_path / "run", pool=pool)
    manifest = RunStore(run).manifest()
    figures, actions = manifest["throughput"], len(RunStore(run).actions())
    assert figures["simulated_actions"] == actions == 24
    assert actions / (figures["seconds"] + 5e-4) <= figures["actions_per_second"] <= actions / (figures["seconds"] - 5e-4)  # seconds to 3 decimals
    for role in ("policy", "mean_field"):
        usage = pool.models[role].usage
        assert manifest["usage"][role] == usage.as_dict()  # a fresh backend: everything it counted was this run's
        assert figures[role]["calls"] == usage.generate_calls + usage.score_calls > 0
        assert figures[role]["prompt_tokens"] == usage.prompt_tokens > 0 and figures[role]["generated_tokens"] == usage.generated_tokens > 0
        assert figures[role]["prompt_tokens_per_action"] == round(usage.prompt_tokens / actions, 2)
        assert figures[role]["generated_tokens_per_action"] == round(usage.generated_tokens / actions, 2)
    total = sum(pool.models[r].usage.prompt_tokens for r in ("policy", "mean_field"))
    assert figures["prompt_tokens_per_action"] == round(total / actions, 2)
    # the policy's generated tokens are the fake's words of the texts it kept, plus those of texts asked again
    assert pool.models["policy"].usage.generated_tokens >= sum(FakeModel().count_text_tokens(r["sim_text"]) for r in RunStore(run).actions()
                                                              if r["sim_choice"] != "repost")


def test_a_shared_backend_is_counted_once_and_runs_count_only_their_own_calls(demo_event_path: Path, tmp_path: Path) -> None:
    model = FakeModel()
    config = SimulationConfig(data=str(demo_event_path), method="mf-llm", policy_model="fake", warmup=8, batch_size=8, num_agents=16)
    first = RunStore(simulate(config, tmp_path / "a", pool=FixedPool(model))).manifest()
    before = model.usage.as_dict()
    second = RunStore(simulate(config.model_copy(update={"seed": 1}), tmp_path / "b", pool=FixedPool(model))).manifest()
    for manifest in (first, second):
        assert manifest["usage"]["mean_field"] is None and manifest["throughput"]["mean_field_counted_with_policy"] is True
    assert second["usage"]["policy"] == model.usage.since(before)  # not the backend's total since it was built
    assert first["usage"]["policy"]["prompt_tokens"] + second["usage"]["policy"]["prompt_tokens"] == model.usage.prompt_tokens
    assert "counted together" in throughput.throughput_text(second["throughput"])


def test_tokens_a_server_did_not_report_are_unknown_not_zero() -> None:
    figures = throughput.run_throughput(10.0, 20, {"policy": {"generate_calls": 2, "prompt_tokens": 300, "generated_tokens": 0,
                                                              "unmetered_requests": 4}, "mean_field": None})
    assert figures["policy"]["prompt_tokens_per_action"] is None and figures["prompt_tokens_per_action"] is None
    assert figures["actions_per_second"] == 2.0
    assert throughput.throughput_text(figures) == ("20 simulated actions in 10.0 s: 2 actions/s; tokens per action: prompt unknown, "
                                                   "generated unknown")


def test_the_openai_backend_counts_the_servers_usage_and_replies_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    httpx = pytest.importorskip("httpx")
    from mfllm.backends.openai_http import OpenAICompatibleModel
    from mfllm.interfaces import Prompt, SamplingParams

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("echo"):  # a scoring request: this server sends no usage
            cut = len(body["prompt"]) - 1
            return httpx.Response(200, json={"choices": [{"logprobs": {"text_offset": [0, cut], "token_logprobs": [None, -1.0]}}]})
        return httpx.Response(200, json={"choices": [{"text": "ok"}], "usage": {"prompt_tokens": 7, "completion_tokens": 2}})

    model = OpenAICompatibleModel("m", "http://server/v1", chat=False, transport=httpx.MockTransport(handler))
    prompts = [Prompt((), "hello there"), Prompt((), "hi")]
    model.generate(prompts, SamplingParams(seed=1))
    assert (model.usage.prompt_tokens, model.usage.generated_tokens, model.usage.unmetered_requests) == (14, 4, 0)
    model.score(prompts[:1], ["x"])
    assert model.usage.unmetered_requests == 1 and model.usage.prompt_tokens == 14


def _pooled_rate(root: Path, method: str) -> float:
    """Actions per second of the completed runs of ``method`` under ``root``, pooled, straight from their manifests."""
    figures = [json.loads(p.read_text())["throughput"] for p in root.rglob(MANIFEST) if json.loads(p.read_text())["config"]["method"] == method]
    return sum(f["simulated_actions"] for f in figures) / sum(f["seconds"] for f in figures)


def test_the_dry_run_estimates_the_backtest_from_measured_speeds(demo_event_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = BacktestConfig(data=str(demo_event_path), methods=["state", "recent"], seeds=[0, 1, 2], policy_model="fake", whole_events=True,
                            warmup=15, batch_size=16, dimensions=["behaviour"], information_gain=False, output=str(tmp_path / "out"))
    reactions = len(load_event(str(demo_event_path))[0].reactions)
    plan = backtest_estimate(config)
    assert plan["events"] == {"4484800548711562": reactions} and plan["runs"] == 6
    for method in plan["methods"]:
        assert method["simulated_actions"] == 3 * (reactions - 15) and method["policy_calls"] == 3 * math.ceil((reactions - 15) / 16)
        assert method["max_generated_tokens"] == method["simulated_actions"] * 48
        assert method["wall_clock_s"] is None and method["speed_source"].startswith("unknown: no completed run of fake on fake")
    assert plan["wall_clock_s"] is None
    monkeypatch.setitem(throughput.REFERENCE_SPEEDS, ("fake", "fake"), (4.0, "a test's figure"))
    referenced = backtest_estimate(config)
    assert referenced["wall_clock_s"] == pytest.approx(2 * 3 * (reactions - 15) / 4.0)
    assert referenced["methods"][0]["speed_source"] == "reference figure, not measured here: a test's figure"
    small = config.model_copy(update={"whole_events": False, "num_agents": 16, "seeds": [0]})
    backtest(small, pool=FixedPool(FakeModel()))  # earlier runs under the output: their speed is used from now on
    measured = backtest_estimate(config)
    for method in measured["methods"]:
        rate = _pooled_rate(tmp_path / "out", method["method"])
        assert method["actions_per_second"] == pytest.approx(rate, rel=1e-3)
        assert method["wall_clock_s"] == pytest.approx(3 * (reactions - 15) / method["actions_per_second"])
        assert method["speed_source"].startswith(f"measured: 1 earlier {method['method']} runs of fake on fake")
    assert measured["wall_clock_s"] == pytest.approx(sum(m["wall_clock_s"] for m in measured["methods"]))
    assert main(["backtest", "--data", str(demo_event_path), "--method", "state", "recent", "--seeds", "0", "1", "2", "--policy-model", "fake",
                 "--whole-events", "--warmup", "15", "--batch", "16", "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"1 events (4484800548711562: {reactions} reactions), 6 runs, {6 * (reactions - 15)} simulated actions" in out
    assert "estimated wall-clock time of the backtest: " in out and "unknown" not in out
    assert not (tmp_path / "out" / "runs" / "base" / "4484800548711562" / "state" / "seed1").exists()  # a dry run simulates nothing


def test_every_simulate_run_prints_its_throughput(demo_event_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", "--data", str(demo_event_path), "--policy-model", "fake", "--method", "mf-llm", "--agents", "8", "--warmup", "8",
            "--batch", "8", "--output", str(tmp_path)]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"run written to {tmp_path}") and "8 simulated actions in" in line and " (policy " in line and "mean field " in line
    assert main(args + ["--dry-run"]) == 0
    assert "estimated wall-clock time: " in capsys.readouterr().out.splitlines()[-1]


def test_pooled_throughput_adds_runs_up_and_leaves_uncounted_tokens_unknown() -> None:
    a = throughput.run_throughput(2.0, 10, {"policy": {"generate_calls": 1, "prompt_tokens": 100, "generated_tokens": 20}, "mean_field": None})
    b = throughput.run_throughput(3.0, 20, {"policy": {"score_calls": 2, "prompt_tokens": 500, "generated_tokens": 40}, "mean_field": None})
    pooled = throughput.pooled_throughput([a, b])
    assert (pooled["runs"], pooled["simulated_actions"], pooled["seconds"], pooled["actions_per_second"]) == (2, 30, 5.0, 6.0)
    assert (pooled["prompt_tokens_per_action"], pooled["generated_tokens_per_action"], pooled["policy"]["calls"]) == (20.0, 2.0, 3)
    older = {"seconds": 5.0, "simulated_actions": 10, "actions_per_second": 2.0}  # a run recorded before tokens were counted
    mixed = throughput.pooled_throughput([a, older])
    assert mixed["actions_per_second"] == round(20 / 7.0, 4) and mixed["prompt_tokens_per_action"] is None and "policy" not in mixed
