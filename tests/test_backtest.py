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
