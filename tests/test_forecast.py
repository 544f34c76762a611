"""Forecasting past the data and intervention search: arrival models recover the processes they are fitted on;
a forecast past the end of a real event makes the requested agents, drawn from the reactors before its origin, with
ensemble bands and resumable runs; scored forecasts report skill against both naive forecasts with CIs and
coverage; a plan ranks the candidate a keyword-reacting model answers to first, within its budget."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from mfllm.analysis.forecast import ForecastConfig, forecast, forecast_scenario, skill_interval
from mfllm.analysis.plan import PlanConfig, plan
from mfllm.backends import FakeModel
from mfllm.cli import main
from mfllm.prompts import marker
from mfllm.data import load_event
from mfllm.data.population import load_personas, prefix_population
from mfllm.interfaces import ContinuationScore, Prompt, SamplingParams
from mfllm.simulation.arrivals import DecayingRate, Hawkes, fit_arrivals
from mfllm.simulation.store import RunStore

from pools import FixedPool

KEYWORD = "感谢"
POSITIVE, NEGATIVE = "太好了，感谢，支持", "太可怕了，愤怒"


class KeywordModel(FakeModel):
    """The fake backend, answering every prompt that mentions :data:`KEYWORD` warmly and every other one angrily."""

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        self.usage.generate_calls += 1
        return [POSITIVE if KEYWORD in p.completion else NEGATIVE for p in prompts]

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        """Every agent comments (the comment marker is all but certain), so every agent writes a text."""
        self.usage.score_calls += 1
        return [ContinuationScore((0.0 if c == marker("comment", "zh") else -30.0,)) for c in continuations]


def forecast_config(data: Path, output: Path, **changes: object) -> ForecastConfig:
    values: dict[str, object] = {"data": str(data), "policy_model": "fake", "method": "state", "batch_size": 8, "seeds": [0, 1, 2],
                                 "dimensions": ["sentiment", "behaviour"], "bootstrap": 200, "output": str(output)}
    return ForecastConfig(**{**values, **changes})


# ---------------------------------------------------------------- arrival models


@pytest.mark.parametrize("model, kind", [(Hawkes(mu=0.05, alpha=0.6, beta=0.01, last=0.0, excitation=0.0), "hawkes"),
                                         (DecayingRate(mu=0.002, a=0.5, b=0.001), "decay")])
def test_arrival_models_recover_the_process_they_are_fitted_on(model: Hawkes | DecayingRate, kind: str) -> None:
    times = model.simulate(0.0, np.random.default_rng(0), horizon=20_000.0)
    fitted = fit_arrivals(kind, times, 20_000.0)
    assert type(fitted) is type(model)
    for name, value in model.parameters().items():
        assert fitted.parameters()[name] == pytest.approx(value, rel=0.35), name
    later = fitted.simulate(20_000.0, np.random.default_rng(1), count=25)
    assert len(later) == 25 and all(b > a for a, b in zip([20_000.0, *later], later))


def test_an_arrival_model_needs_a_prefix_that_spans_time() -> None:
    with pytest.raises(ValueError, match="at least 2 reactions"):
        fit_arrivals("hawkes", [5.0], 10.0)
    with pytest.raises(ValueError, match="spans no time"):
        fit_arrivals("decay", [0.0, 0.0], 0.0)


# ---------------------------------------------------------------- forecasts past the data


@pytest.fixture(scope="module")
def past_the_end(demo_event_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("forecast")
    model = FakeModel()
    config = forecast_config(demo_event_path, out, horizon_agents=20)
    return {"config": config, "result": forecast(config, pool=FixedPool(model)), "model": model, "out": out}


def test_a_forecast_past_the_end_draws_the_requested_agents_from_the_event_population(past_the_end: dict, demo_event_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    users = {r.user.user_id for r in event.reactions}
    last = event.reactions[-1].timestamp
    runs = sorted((past_the_end["out"] / "runs").rglob("seed*"))
    assert len(runs) == 3
    for run in runs:
        store = RunStore(run)
        rows = store.actions()
        assert len(rows) == 20
        assert {r["user_id"] for r in rows} <= users and all(r["real_text"] is None for r in rows)
        times = [r["timestamp"] for r in rows]
        assert times == sorted(times) and times[0] > last
        manifest = store.manifest()
        assert manifest["status"] == "completed" and manifest["scenario"]["name"] == "forecast"
        assert manifest["scenario"]["population"] == "reactors before the origin"
    assert len({tuple(r["user_id"] for r in RunStore(run).actions()) for run in runs}) > 1  # each seed draws its own agents


def test_forecast_ensembles_run_on_a_process_pool_to_the_same_runs(past_the_end: dict, tmp_path: Path) -> None:
    config = past_the_end["config"].model_copy(update={"output": str(tmp_path / "pooled"), "executor": "process", "workers": 2})
    forecast(config)
    for run in sorted((past_the_end["out"] / "runs").rglob("seed*")):
        pooled = tmp_path / "pooled" / run.relative_to(past_the_end["out"])
        assert (pooled / "actions.jsonl").read_bytes() == (run / "actions.jsonl").read_bytes()


def test_the_forecast_writes_bands_volume_and_a_report(past_the_end: dict) -> None:
    result = past_the_end["result"]
    (ensemble,) = result.ensembles
    assert ensemble.observed == 0 and ensemble.real_volume is None  # nothing real after the end of the data
    assert ensemble.volume.sum(axis=1).tolist() == [20, 20, 20]
    with result.files["volume.csv"].open(encoding="utf-8") as handle:
        volume = list(csv.DictReader(handle))
    assert len(volume) == ensemble.windows
    assert sum(float(row["mean"]) for row in volume) == pytest.approx(20)
    with result.files["shares.csv"].open(encoding="utf-8") as handle:
        shares = [row for row in csv.DictReader(handle) if row["share"] not in ("", "nan")]
    assert {row["dimension"] for row in shares} == {"sentiment", "behaviour"}
    for row in shares:
        assert float(row["band_low"]) <= float(row["median"]) <= float(row["band_high"])
    by_window: dict[tuple[str, str], float] = {}
    for row in shares:
        by_window[(row["dimension"], row["window"])] = by_window.get((row["dimension"], row["window"]), 0.0) + float(row["share"])
    assert all(total == pytest.approx(1.0) for total in by_window.values())
    page = result.report.read_text(encoding="utf-8")
    charts = page.count('<div class="chart-box">')
    assert charts == 1 + sum(len(labels) for labels in ensemble.labels.values()) and "past the end of the data" in page  # volume, each label
    assert "hours after the origin" in page and "<img" not in page


def test_a_forecast_resumes_without_model_calls_and_refuses_to_start_over(past_the_end: dict) -> None:
    model, config = past_the_end["model"], past_the_end["config"]
    calls = model.usage.generate_calls
    with pytest.raises(FileExistsError, match="--resume"):
        forecast(config, pool=FixedPool(model))
    again = forecast(config, pool=FixedPool(model), resume=True)
    assert model.usage.generate_calls == calls
    assert again.ensembles[0].volume.tolist() == past_the_end["result"].ensembles[0].volume.tolist()
    with pytest.raises(ValueError, match="scenario differs"):
        forecast(config.model_copy(update={"arrival": "decay"}), pool=FixedPool(model), resume=True)


def test_agents_come_from_before_the_origin_or_from_a_persona_file(demo_event_path: Path, tmp_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    config = forecast_config(demo_event_path, tmp_path, horizon_agents=40)
    before = {u.user_id for u in prefix_population(event, 30)}
    only_later = {r.user.user_id for r in event.reactions[30:]} - before
    assert only_later  # the test can tell the two apart
    drawn = {u.user_id for seed in range(5) for u in forecast_scenario(event, config, 30, seed).users}
    assert drawn <= before and len(drawn) > 1
    personas = tmp_path / "personas.jsonl"
    personas.write_text('{"user_id": "p1", "gender": "female"}\n{"user_id": "p2", "location": "北京"}\n', encoding="utf-8")
    scenario = forecast_scenario(event, config, 30, 0, load_personas(personas))
    assert {u.user_id for u in scenario.users} == {"p1", "p2"} and scenario.describe()["population"] == "personas file"
    personas.write_text('{"user_id": "p1"}\n{"user_id": "p2", "followers_count": -3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"personas.jsonl: line 2: field 'followers_count'"):
        load_personas(personas)


def test_a_duration_horizon_takes_as_many_agents_as_the_arrival_model_draws(demo_event_path: Path) -> None:
    event, _ = load_event(demo_event_path)
    config = forecast_config(demo_event_path, Path("unused"), horizon_time="12h", max_agents=500)
    scenario = forecast_scenario(event, config, 60, 0)
    origin = event.reactions[59].timestamp
    assert scenario.timestamps and all(origin < t <= origin + 12 * 3600 for t in scenario.timestamps)
    capped = forecast_scenario(event, config.model_copy(update={"max_agents": 3}), 60, 0)
    assert len(capped.users) == 3 and capped.describe()["capped"] is True


# ---------------------------------------------------------------- scored forecasts


def test_skill_is_relative_improvement_on_the_naive_score_with_a_clustered_ci() -> None:
    forecast_scores, naive_scores = [1.0, 2.0, 1.5, 0.5], [2.0, 4.0, 3.0, 1.0]
    skill, low, high = skill_interval(forecast_scores, naive_scores, ["a", "a", "b", "c"], 500, 0.95)
    assert skill == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)
    skill, low, high = skill_interval([1.0, 3.0, 2.0], [2.0, 2.0, 2.0], ["a", "b", "c"], 500, 0.95)
    assert skill == pytest.approx(0.0) and low < 0 < high
    assert np.isnan(skill_interval([1.0], [2.0], ["a"], 500, 0.95)[1])


def test_scored_forecasts_print_skill_against_both_naive_forecasts(demo_event_path: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scored"
    args = ["forecast", "--data", str(demo_event_path), "--policy-model", "fake", "--method", "state", "--batch", "8", "--score",
            "--horizon-time", "12h", "--window", "3h", "--origins", "0.3", "0.6", "--seeds", "0", "1", "--min-reactions", "50",
            "--dimension", "sentiment", "--bootstrap", "200", "--output", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for line in ("sentiment kl:", "sentiment w1:", "sentiment dtw:", "volume mae:"):
        assert line in printed
    assert all(part in printed for part in ("last window", "prefix", "95% CI", "coverage of the 90% band", "2 forecasts on 1 event(s)"))
    skills = {(r["dimension"], r["metric"]): r for r in csv.DictReader((out / "skill.csv").open(encoding="utf-8"))}
    assert set(skills) == {("sentiment", "kl"), ("sentiment", "w1"), ("sentiment", "dtw"), ("volume", "mae")}
    with (out / "scores.csv").open(encoding="utf-8") as handle:
        windows = [r for r in csv.DictReader(handle) if r["dimension"] == "sentiment"]
    event, _ = load_event(demo_event_path)
    assert {r["origin"] for r in windows} == {str(round(share * len(event.reactions))) for share in (0.3, 0.6)}
    for row in skills.values():
        assert 0.0 <= float(row["coverage"]) <= 1.0 and int(row["forecasts"]) == 2
        for naive in ("last_window", "prefix"):
            assert float(row[f"skill_vs_{naive}"]) == pytest.approx(1 - float(row["mean_forecast"]) / float(row[f"mean_{naive}"]))
            assert float(row[f"skill_vs_{naive}_low"]) <= float(row[f"skill_vs_{naive}"]) <= float(row[f"skill_vs_{naive}_high"])
    summary = json.loads((out / "forecast.json").read_text(encoding="utf-8"))
    assert all(f["observed_windows"] == 4 for f in summary["forecasts"])
    assert main([*args[:-1], str(tmp_path / "again"), "--horizon-agents", "5"]) == 2  # two horizons


# ---------------------------------------------------------------- intervention search


def write_grid(path: Path) -> Path:
    texts = f"[请大家保持冷静, 官方通报：{KEYWORD}大家的关心, 消息已核实, 请勿转发]"
    path.write_text(f"kind: post\nauthor: 市卫健委\ntexts: {texts}\ntiming: [0]\n", encoding="utf-8")
    return path


def test_a_plan_ranks_the_candidate_the_model_reacts_to_first_within_its_budget(demo_event_path: Path, tmp_path: Path) -> None:
    model = KeywordModel()
    config = PlanConfig(data=str(demo_event_path), policy_model="fake", method="state", horizon_agents=16, batch_size=8, warmup=72,
                        target_dimension="sentiment", target_label="negative", candidates=str(write_grid(tmp_path / "grid.yaml")),
                        budget=10, bootstrap=200, output=str(tmp_path / "plan"))
    result = plan(config, pool=FixedPool(model))
    best = result.ranking[0]
    assert best["candidate"] == "c1" and KEYWORD in best["description"]
    # the kind choice is calibrated on the warm-up's real reposts, so a few agents repost bare (no angry text)
    assert best["share"] == 0.0 and best["effect_high"] < 0 and result.control["share"] > 0.8
    assert all(r["share"] > 0.8 for r in result.ranking[1:])
    assert result.runs <= config.budget and result.calls == model.usage.generate_calls + model.usage.score_calls  # texts and kind choices
    assert sum(len(list((tmp_path / "plan" / "runs" / arm).iterdir())) for arm in ("control", "c0", "c1", "c2", "c3")) == result.runs
    assert [h["candidates"][0] for h in result.rounds] == ["c1", "c1"] and len(result.rounds[-1]["candidates"]) == 2
    branch = RunStore(tmp_path / "plan" / "runs" / "c1" / "seed1").manifest()
    origin_step = config.warmup // config.batch_size  # after the shared prefix
    assert branch["branch"]["at"] == origin_step and branch["interventions"]["scheduled"][0]["start_step"] == origin_step
    recorded = json.loads((tmp_path / "plan" / "plan.json").read_text(encoding="utf-8"))
    assert recorded["ranking"][0]["candidate"] == "c1" and recorded["validation"][0]["accuracy"] > 0.5
    page = result.report.read_text(encoding="utf-8")
    assert page.count('<figure class="intervals">') == 2 and page.count('<div class="chart-box">') == 1  # share, effect; rounds
    assert "1. c1" in page and "Intervention search: lower the share of &#39;negative&#39; on sentiment" in page
    with pytest.raises(FileExistsError):
        plan(config, pool=FixedPool(model))
    calls = model.usage.generate_calls
    again = plan(config, pool=FixedPool(model), resume=True)
    assert model.usage.generate_calls == calls and again.ranking == result.ranking


def test_a_plan_refuses_targets_no_labeller_measures_and_budgets_too_small(demo_event_path: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path / "grid.yaml")
    common = ["plan", "--data", str(demo_event_path), "--policy-model", "fake", "--horizon-agents", "8", "--candidates", str(grid)]
    assert main([*common, "--dimension", "belief", "--label", "doubt", "--budget", "10", "--output", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err
    assert "belief" in error and "give an LLM judge" in error and error.count("\n") == 1
    assert main([*common, "--dimension", "sentiment", "--label", "negative", "--budget", "4", "--output", str(tmp_path / "b")]) == 2
    assert "first round needs 5 runs" in capsys.readouterr().err


def test_a_run_cut_at_max_agents_forecasts_no_volume_after_its_last_agent(demo_event_path: Path, tmp_path: Path) -> None:
    config = forecast_config(demo_event_path, tmp_path, horizon_time="12h", window="3h", score=True, origins=[0.5], seeds=[0, 1],
                             max_agents=3, dimensions=["behaviour"], min_reactions=50)
    result = forecast(config, pool=FixedPool(FakeModel()))
    (ensemble,) = result.ensembles
    assert ensemble.capped == [0, 1]
    for row in ensemble.volume:
        cut = int(np.flatnonzero(np.isnan(row))[0])
        assert row[:cut].sum() < 3 and np.isnan(row[cut:]).all()
    scored = [r for r in result.scores[0].per_window if r["dimension"] == "volume"]
    assert all(np.isfinite(ensemble.volume[:, r["window"]]).any() for r in scored)
    assert "Cut at max_agents" in result.report.read_text(encoding="utf-8")


def test_scored_forecasts_on_shared_weibo_events(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["forecast", "--score", "--data", str(shared_data / "weibo_covid19_rumor"), "--max-events", "2", "--min-reactions", "300",
            "--origins", "0.5", "--horizon-time", "3h", "--window", "1h", "--seeds", "0", "1", "--max-agents", "100",
            "--policy-model", "fake", "--method", "state", "--dimension", "sentiment", "--bootstrap", "200", "--output", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    skills = {(r["dimension"], r["metric"]): r for r in csv.DictReader((tmp_path / "skill.csv").open(encoding="utf-8"))}
    assert {("sentiment", "kl"), ("sentiment", "w1"), ("sentiment", "dtw")} <= set(skills) and "2 event(s)" in printed
    for row in skills.values():
        assert int(row["events"]) >= 1 and 0.0 <= float(row["coverage"]) <= 1.0
        for naive in ("last_window", "prefix"):
            assert np.isfinite(float(row[f"skill_vs_{naive}"]))


def test_a_plan_runs_its_rounds_on_a_process_pool_to_the_same_shares(demo_event_path: Path, tmp_path: Path) -> None:
    values = dict(data=str(demo_event_path), policy_model="fake", method="state", horizon_agents=16, batch_size=8, warmup=72,
                  target_dimension="behaviour", target_label="share", candidates=str(write_grid(tmp_path / "grid.yaml")), budget=10,
                  bootstrap=200)
    here = plan(PlanConfig(**values, output=str(tmp_path / "here")))
    pooled = plan(PlanConfig(**values, output=str(tmp_path / "pooled"), executor="process", workers=2))
    assert [(r["candidate"], r["share"], r["seeds"]) for r in pooled.ranking] == [(r["candidate"], r["share"], r["seeds"]) for r in here.ranking]
    assert pooled.runs == here.runs and pooled.control["share"] == here.control["share"]
