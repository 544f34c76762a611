"""`mfllm backtest`: every method x seed on several events, evaluated, paired, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfllm.analysis.backtest import BacktestConfig, backtest
from mfllm.backends import FakeModel
from mfllm.cli import main
from mfllm.simulation.methods import resolve_method
from mfllm.simulation.store import MANIFEST

from pools import FixedPool

EVENTS = ["4484800548711562", "4474926621242011"]


def test_backtest_compares_every_method_and_resumes_without_new_calls(shared_data: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["backtest", "--data", str(shared_data / "weibo_covid19_rumor"), "--event", *EVENTS, "--method", "mf", "state", "recent",
            "--seeds", "0", "1", "--policy-model", "fake", "--agents", "8", "--warmup", "8", "--batch", "4",
            "--dimension", "behaviour", "--dimension", "sentiment", "--output", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    default = resolve_method("mf")  # the alias runs the default mean field, under its own name
    assert f"{default} - state mean_kl" in out and f"{default} - recent information_gain.all" in out and "backtest report" in out
    assert len(list((tmp_path / "runs").rglob(MANIFEST))) == 2 * 3 * 2
    summary = json.loads((tmp_path / "backtest.json").read_text())
    paired = {(r["baseline"], r["metric"]): r for r in summary["points"][0]["paired"]}
    assert paired[("state", "mean_kl")]["pairs"] == 4 and paired[("recent", "nll")]["events"] == 2
    assert paired[("state", "mean_kl")]["ci_low"] <= paired[("state", "mean_kl")]["difference"] <= paired[("state", "mean_kl")]["ci_high"]
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Paired comparisons" in page and "information_gain.comment" in page
    pool = FixedPool(FakeModel())
    config = BacktestConfig(data=str(shared_data / "weibo_covid19_rumor"), events=EVENTS, methods=["mf", "state", "recent"], seeds=[0, 1],
                            policy_model="fake", num_agents=8, warmup=8, batch_size=4, dimensions=["behaviour", "sentiment"],
                            output=str(tmp_path))
    again = backtest(config, pool=pool)
    assert pool.model.usage.generate_calls == 0 and pool.model.usage.score_calls == 0  # runs and evaluations reused
    assert again["points"][0]["paired"] == summary["points"][0]["paired"]


def test_backtest_grid_writes_a_sensitivity_page(shared_data: Path, tmp_path: Path) -> None:
    config = BacktestConfig(data=str(shared_data / "weibo_covid19_rumor"), events=EVENTS[:1], methods=["mf", "state"], seeds=[0],
                            policy_model="fake", num_agents=8, warmup=8, grid_batch_size=[4, 8], dimensions=["behaviour"],
                            information_gain=False, output=str(tmp_path))
    result = backtest(config)
    assert [p["point"]["batch_size"] for p in result["points"]] == [4, 8]
    assert "Backtest sensitivity" in (tmp_path / "report" / "index.html").read_text()
    assert all(Path(p["report"]).exists() for p in result["points"])


def test_a_backtest_never_reuses_stale_runs_or_evaluations(demo_event_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mfllm.analysis import backtest as backtest_module
    from mfllm.data.loaders import get_reader
    from mfllm.simulation import sweep

    data = tmp_path / "event.jsonl"
    data.write_bytes(demo_event_path.read_bytes())
    config = BacktestConfig(data=str(data), events=get_reader(str(data)).list_events(data), methods=["state"], seeds=[0],
                            policy_model="fake", num_agents=8, warmup=8, batch_size=4, dimensions=["behaviour"], information_gain=False,
                            output=str(tmp_path / "out"))
    backtest(config, pool=FixedPool(FakeModel()))
    saved = next((tmp_path / "out" / "runs").rglob("evaluation.json"))
    settings = json.loads(saved.read_text())["settings"]
    backtest(config, pool=FixedPool(FakeModel()))
    assert json.loads(saved.read_text())["settings"] == settings  # nothing changed: reused
    monkeypatch.setattr(backtest_module, "shipped_models_digest", lambda: "retrained")
    backtest(config, pool=FixedPool(FakeModel()))
    assert json.loads(saved.read_text())["settings"] != settings  # other labeller weights: evaluated again
    versions = sweep.package_versions()
    monkeypatch.setattr(sweep, "package_versions", lambda: {**versions, "mfllm": "99.0"})
    with pytest.raises(sweep.StaleRunError, match=rf"{saved.parent}: cannot reuse or resume this run: it was made by mfllm .*, this is 99.0; "
                                                  "write to a fresh output folder"):
        backtest(config, pool=FixedPool(FakeModel()))
    monkeypatch.setattr(sweep, "package_versions", lambda: versions)
    data.write_text(data.read_text(encoding="utf-8").replace("转发微博", "转发", 1), encoding="utf-8")
    with pytest.raises(sweep.StaleRunError, match="the event data changed since it ran"):
        backtest(config, pool=FixedPool(FakeModel()))


def test_a_backtest_without_nll_scores_no_real_action_and_is_evaluated_again_with_it(demo_event_path: Path, tmp_path: Path) -> None:
    config = BacktestConfig(data=str(demo_event_path), methods=["mf", "state"], seeds=[0], policy_model="fake", num_agents=8, warmup=8,
                            batch_size=4, dimensions=["behaviour"], information_gain=False, nll=False, output=str(tmp_path))
    without = backtest(config, pool=FixedPool(FakeModel()))
    assert {r["metric"] for r in without["points"][0]["paired"]} == {"mean_kl"}
    evaluations = [json.loads(p.read_text())["evaluation"] for p in (tmp_path / "runs").rglob("evaluation.json")]
    assert len(evaluations) == 2 and all(e["nll"] is None for e in evaluations)
    with_nll = backtest(config.model_copy(update={"nll": True}), pool=FixedPool(FakeModel()))
    assert {r["metric"] for r in with_nll["points"][0]["paired"]} == {"mean_kl", "nll"}


def test_policy_adapter_reaches_every_run_but_sft() -> None:
    config = BacktestConfig(data="d", events=["e1"], methods=["mf", "state", "sft"], seeds=[0], policy_adapter="tuned/policy",
                            sft_adapter="tuned/sft")
    adapters = {c.method: c.policy_adapter for c in config.run_configs(config.grid()[0], ["e1"])}
    assert adapters == {resolve_method("mf"): "tuned/policy", "state": "tuned/policy", "sft": "tuned/sft"}
    base = BacktestConfig(data="d", events=["e1"], methods=["state"], seeds=[0])
    assert [c.policy_adapter for c in base.run_configs(base.grid()[0], ["e1"])] == [None]
    untuned = BacktestConfig(data="d", events=["e1"], methods=["state", "mf"], seeds=[0], adapter=False, length_slack=2.5)
    assert [(c.adapter, c.length_slack) for c in untuned.run_configs(untuned.grid()[0], ["e1"])] == [(False, 2.5)] * 2
