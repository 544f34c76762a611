"""Results by horizon: thirds of the rollout and hours since the source post, whole-event backtests."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from mfllm.analysis.backtest import BacktestConfig, backtest
from mfllm.backends import FakeModel
from mfllm.data.loaders import load_event
from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.dimensions import resolve_dimensions
from mfllm.evaluation.evaluate import evaluate_run
from mfllm.evaluation.horizon import AXES, HOURS_LABELS, THIRDS, horizon_parts, horizon_table, run_horizon
from mfllm.evaluation.pipeline import build_labeller
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.store import ACTIONS, MANIFEST

from pools import FixedPool

DIMENSIONS = ["behaviour", "sentiment"]


def test_every_action_lands_in_one_third_and_one_hours_bin() -> None:
    source = 1_000_000.0
    offsets_h = [-0.5, 0.0, 0.99, 1.0, 2.5, 3.0, 11.9, 12.0, 47.0, 48.0, 500.0]  # bin edges on both sides, a clock error
    rows = [{"position": 20 - i, "timestamp": source + h * 3600} for i, h in enumerate(offsets_h)]  # not in position order
    parts = horizon_parts(rows, source)
    assert sorted(parts) == sorted(r["position"] for r in rows)
    by_position = sorted(parts.items())
    assert [p["third"] for _, p in by_position] == [THIRDS[0]] * 4 + [THIRDS[1]] * 4 + [THIRDS[2]] * 3  # floor(3i / 11)
    hours = {r["position"]: parts[r["position"]]["hours"] for r in rows}
    assert [hours[r["position"]] for r in rows] == [HOURS_LABELS[0]] * 3 + [HOURS_LABELS[1]] * 2 + [HOURS_LABELS[2]] * 2 + \
        [HOURS_LABELS[3]] * 2 + [HOURS_LABELS[4]] * 2


@pytest.fixture(scope="module")
def evaluated(demo_event_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list]:
    """One fake run of 60 agents on the demo event, evaluated with step windows; three texts of its middle third
    are made copies of one text of its first third (the fake backend writes no duplicates)."""
    run = simulate(SimulationConfig(data=str(demo_event_path), method="recent", policy_model="fake", warmup=8, batch_size=6, num_agents=60),
                   tmp_path_factory.mktemp("horizon") / "run")
    rows = RunStore(run).actions()
    writing = [i for i, row in enumerate(rows) if row["sim_choice"] != "repost" and "failure" not in row]
    original = next(i for i in writing if i < 20)
    for i in [i for i in writing if 20 <= i < 40][:3]:
        rows[i]["sim_text"] = rows[original]["sim_text"]
    (run / ACTIONS).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    config = EvaluationConfig(dimensions=DIMENSIONS)
    dimensions = resolve_dimensions(config.dimensions, config.dimensions_file)
    labeller = build_labeller(config)
    return run, evaluate_run(run, labeller, dimensions), dimensions


def test_kl_and_realism_by_horizon_equal_an_evaluation_of_the_same_actions_alone(evaluated: tuple, tmp_path: Path) -> None:
    run, evaluation, dimensions = evaluated
    records = run_horizon(evaluation, dimensions)
    rows = RunStore(run).actions()
    event, _ = load_event(*(RunStore(run).manifest()["config"][k] for k in ("data", "event_id", "data_format")))
    parts = horizon_parts(rows, event.source.timestamp)
    labeller = build_labeller(EvaluationConfig(dimensions=DIMENSIONS))
    for axis, labels in AXES.items():
        on_axis = [r for r in records if r["axis"] == axis]
        assert sum(r["agents"] for r in on_axis) == len(rows) == 60  # no action lost, none counted twice
        assert [r["part"] for r in on_axis] == [p for p in labels if any(where[axis] == p for where in parts.values())]
    checked = [r for r in records if r["axis"] == "third"] + [max((r for r in records if r["axis"] == "hours"), key=lambda r: r["agents"])]
    for record in checked:
        alone = tmp_path / f"{record['axis']}{record['part_index']}"
        shutil.copytree(run, alone)
        kept = [row for row in rows if parts[row["position"]][record["axis"]] == record["part"]]
        (alone / ACTIONS).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept), encoding="utf-8")
        subset = evaluate_run(alone, labeller, dimensions)
        assert subset.total_actions == record["agents"] == len(kept)
        for name, metrics in subset.dimensions.items():
            for metric in ("kl", "kl_floor", "pooled_kl"):
                assert record[f"{name}.{metric}"] == pytest.approx(getattr(metrics, metric), abs=1e-12), (record["part"], name, metric)
        for metric in ("length_w1", "median_length_real", "median_length_sim", "share_repost_real", "share_repost_sim", "common_opening_real",
                       "common_opening_sim"):
            assert record[metric] == pytest.approx(subset.realism[metric]), (record["part"], metric)
        if record["part"] == THIRDS[1]:  # its copies repeat a text of the first third: duplicates of the run, not of the part alone
            assert record["duplicate_sim"] > subset.realism["duplicate_sim"] > 0
            assert record["common_opening_sim"] >= 3 / record["agents"]  # the copies open alike
    # duplicates count repeats of any earlier text of the run: the parts' counts add up to the run's
    generated = [row for row in rows if "failure" not in row]
    texts = sum(1 for row in generated if row["sim_choice"] != "repost" and row["sim_text"].strip())
    thirds = [r for r in records if r["axis"] == "third"]
    weights = [sum(1 for row in generated if parts[row["position"]]["third"] == r["part"] and row["sim_choice"] != "repost"
                   and row["sim_text"].strip()) for r in thirds]
    pooled = sum((r["duplicate_sim"] or 0) * w for r, w in zip(thirds, weights)) / texts
    assert pooled == pytest.approx(evaluation.realism["duplicate_sim"]) and pooled > 0


def test_horizon_table_means_over_seeds_then_events(demo_event_path: Path, tmp_path: Path) -> None:
    config = EvaluationConfig(dimensions=["behaviour"])
    dimensions = resolve_dimensions(config.dimensions, config.dimensions_file)
    labeller = build_labeller(config)
    evaluations = [evaluate_run(simulate(SimulationConfig(data=str(demo_event_path), method=method, policy_model="fake", warmup=8,
                                                          batch_size=4, num_agents=24, seed=seed), tmp_path / f"{method}{seed}"),
                                labeller, dimensions) for method in ("state", "recent") for seed in (0, 1, 2)]
    table = horizon_table(evaluations, dimensions, resamples=200)
    for method in ("state", "recent"):
        runs = [run_horizon(e, dimensions) for e in evaluations if e.method == method]
        for part in THIRDS:
            values = [next(r for r in records if r["part"] == part)["behaviour.kl"] for records in runs]
            row = next(r for r in table if (r["axis"], r["part"], r["method"], r["dimension"], r["metric"]) == ("third", part, method, "(mean)", "kl"))
            assert row["mean"] == pytest.approx(np.mean(values)) and row["runs"] == 3 and row["events"] == 1 and row["agents"] == 24
            assert row["ci_low"] <= row["mean"] <= row["ci_high"] or math.isclose(row["ci_low"], row["ci_high"])


def test_whole_event_backtest_replays_every_reaction_after_the_warmup(demo_event_path: Path, tmp_path: Path) -> None:
    data = tmp_path / "events.jsonl"  # the demo event (95 reactions) and a copy cut to 30 reactions under another id
    lines = demo_event_path.read_text(encoding="utf-8").splitlines()
    short = [json.loads(line) for line in lines[:31]]
    for record in short:
        record["event_id"] = "short"
        if record["kind"] == "source":
            record["post_id"] = "short"
    data.write_text("\n".join(lines + [json.dumps(r, ensure_ascii=False) for r in short]) + "\n", encoding="utf-8")
    config = BacktestConfig(data=str(data), min_reactions=40, methods=["state", "recent"], seeds=[0, 1], policy_model="fake", num_agents=8,
                            whole_events=True, warmup=10, batch_size=16, dimensions=["behaviour"], information_gain=False,
                            output=str(tmp_path / "out"))
    result = backtest(config, pool=FixedPool(FakeModel()))
    assert result["events"] == ["4484800548711562"]  # the short event has fewer than min_reactions
    event, _ = load_event(str(data), "4484800548711562")
    manifests = [RunStore(p.parent).manifest() for p in (tmp_path / "out" / "runs").rglob(MANIFEST)]
    assert len(manifests) == 4
    for manifest in manifests:
        assert manifest["schedule"]["rollout_agents"] == len(event.reactions) - 10 == manifest["throughput"]["simulated_actions"]
    for run in (tmp_path / "out" / "runs").rglob(MANIFEST):
        assert len(RunStore(run.parent).actions()) == len(event.reactions) - 10
    point = result["points"][0]
    table = json.loads((tmp_path / "out" / "report" / "horizon.json").read_text())["rows"]
    kl = [r for r in table if r["axis"] == "third" and r["dimension"] == "(mean)" and r["metric"] == "kl" and r["method"] == "state"]
    assert [r["part"] for r in kl] == list(THIRDS) and sum(r["agents"] for r in kl) == 2 * (len(event.reactions) - 10)
    assert point["horizon_kl"]["third"]["state"] == [r["mean"] for r in kl]
    assert (tmp_path / "out" / "report" / "horizon_kl.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "out" / "report" / "index.html").read_text(encoding="utf-8")
    assert "Fidelity by horizon" in page and "mean KL by rollout third" in page and "Throughput" in page
