"""The web app's forms, dry-run estimates and result pages through its HTTP API (no browser): form defaults read as a
user types them, a submitted form is validated by the CLI's pydantic config with one-line errors, every estimate is the
engine's estimate of a run times the runs the command makes, and a backtest's sensitivity page links its grid points'
reports inside the app."""

from __future__ import annotations

import enum
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mfllm.analysis.backtest import BacktestConfig
from mfllm.analysis.demo import demo_data_path
from mfllm.analysis.forecast import ForecastConfig, forecast_scenario
from mfllm.analysis.plan import PlanConfig, halving_runs, successive_halving
from mfllm.backends.fake import FakeModel
from mfllm.data.loaders import load_event
from mfllm.presentation.app import UiConfig, create_app, form_text
from mfllm.presentation.jobs import COMMANDS, JOB_FILE, STATUS_FILE
from mfllm.presentation.render import write_page
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import BranchPoint, estimate

pytest.importorskip("fastapi", reason="the web app needs FastAPI: pip install 'mfllm[ui]'")
DATA = str(demo_data_path())
FIGURES = ("agents", "policy_calls", "mean_field_calls", "policy_prompt_tokens", "mean_field_prompt_tokens")


@pytest.fixture()
def client(tmp_path: Path) -> Any:
    from fastapi.testclient import TestClient

    return TestClient(create_app(UiConfig(project=str(tmp_path / "project"), policy_model="fake")))


def _inputs(page: str) -> dict[str, dict[str, str]]:
    """Each form field of a launch page: its value (or checked state) and the default its help text states."""
    fields = {}
    for block in page.split('<label for="f-')[2:]:  # the job's title first
        name = block.split('"', 1)[0]
        value = re.search(r'<input id="f-\w+" name="\w+" data-kind="\w+" value="([^"]*)"', block)
        selected = re.search(r'<option value="([^"]*)" selected>', block)
        default = re.search(r"Default: <code>(.*?)</code>", block)
        fields[name] = {"value": html.unescape(value.group(1)) if value else selected.group(1) if selected else
                        "checked" if re.search(r'data-kind="bool" checked', block) else "",
                        "default": html.unescape(default.group(1)) if default else ""}
    return fields


def test_form_values_and_defaults_read_as_a_user_types_them(client: Any) -> None:
    for name, spec in COMMANDS.items():
        fields = _inputs(client.get(f"/launch/{name}").text)
        assert set(fields) == set(spec.config.model_fields) - set(spec.set_by_app) - {"output"}, name
        for field, shown in fields.items():
            for text in shown.values():
                assert not re.search(r"None|\[|\]|PosixPath|'|<|Enum", text), (name, field, text)
    backtest = _inputs(client.get("/launch/backtest").text)
    assert backtest["seeds"] == {"value": "0, 1, 2", "default": "0, 1, 2"}
    assert backtest["information_gain"] == {"value": "checked", "default": "checked"}
    assert backtest["events"] == {"value": "", "default": ""} and backtest["data"]["value"] == DATA
    assert backtest["policy_model"] == {"value": "fake", "default": "embedded:gemma-3-270m"}
    forecast = _inputs(client.get("/launch/forecast?score=true&horizon_time=2h").text)
    assert forecast["origins"]["value"] == "0.25, 0.5, 0.75" and forecast["score"] == {"value": "checked", "default": "unchecked"}
    assert forecast["horizon_time"]["value"] == "2h" and forecast["arrival"]["value"] == "hawkes"

    class Colour(enum.Enum):
        RED = "red"

    assert [form_text(v) for v in (None, [Path("/a/b"), 2], Colour.RED, {"k": [1]}, 0.5, False)] == \
        ["", "/a/b, 2", "red", '{"k": [1]}', "0.5", "false"]


@pytest.mark.parametrize(("command", "config"), [
    ("forecast", {"data": DATA, "seeds": ["0", "x"]}),
    ("simulate", {"data": DATA, "batch_size": "0", "method": "no-such-method"}),
    ("backtest", {"data": DATA, "seeds": [], "unknown_field": "1"}),
])
def test_a_submitted_form_is_validated_by_the_cli_config_with_one_line_errors(client: Any, tmp_path: Path, command: str,
                                                                              config: dict[str, Any]) -> None:
    spec = COMMANDS[command]
    with pytest.raises(ValidationError) as cli:
        spec.config.from_sources(None, config)
    response = client.post("/api/jobs", json={"command": command, "config": config})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [e["field"] for e in errors] == [str(e["loc"][0]) if e["loc"] else "" for e in cli.value.errors()]
    for error, expected in zip(errors, cli.value.errors()):
        assert "\n" not in error["message"] and not error["message"].startswith("Value error")
        assert " ".join(expected["msg"].removeprefix("Value error, ").split()) in error["message"]
    assert not (tmp_path / "project" / "jobs").exists() or not list((tmp_path / "project" / "jobs").iterdir())


def _engine(config: SimulationConfig, scenario: Any = None, branch: BranchPoint | None = None) -> dict[str, Any]:
    event, _ = load_event(config.data, config.event_id, config.data_format)
    return estimate(config, event, FakeModel(), scenario, branch)


def _totals(parts: list[tuple[int, dict[str, Any]]]) -> dict[str, int]:
    return {key: sum(runs * plan[key] for runs, plan in parts) for key in FIGURES}


def test_estimates_are_the_engine_estimate_of_a_run_times_the_runs(client: Any, tmp_path: Path) -> None:
    post = tmp_path / "post.yaml"
    post.write_text("interventions: [{id: p, kind: post, text: 'police: not true', author: police}]\n", encoding="utf-8")
    event, _ = load_event(DATA)

    forecast = {"data": DATA, "policy_model": "fake", "horizon_agents": 40, "warmup": 40, "seeds": [0, 1, 2], "method": "mf-hybrid"}
    got = client.post("/api/estimate", json={"command": "forecast", "config": forecast}).json()
    parsed = ForecastConfig(**forecast)
    member = _engine(parsed.simulation_config(event.event_id, 40, 0), forecast_scenario(event, parsed, 40, 0))
    assert member["agents"] == 40 and member["mean_field_calls"] > 0
    assert got["runs"] == 3 and {k: got[k] for k in FIGURES} == _totals([(3, member)])
    assert got["model_calls"] == 3 * (member["policy_calls"] + member["mean_field_calls"])
    assert got["prompt_tokens"] == 3 * (member["policy_prompt_tokens"] + member["mean_field_prompt_tokens"])

    plan = {"data": DATA, "policy_model": "fake", "horizon_agents": 40, "warmup": 40, "target_dimension": "sentiment",
            "target_label": "negative", "candidate_files": [str(post)] * 3, "budget": 12, "method": "mf-hybrid"}
    got = client.post("/api/estimate", json={"command": "plan", "config": plan}).json()
    parsed_plan = PlanConfig(**plan)
    control = parsed_plan.simulation_config(event.event_id, 40, 0)
    scenario = forecast_scenario(event, parsed_plan, 40, 0)
    branched = _engine(control, scenario, BranchPoint(tmp_path, 3))
    assert branched["mean_field_calls"] < _engine(control, scenario)["mean_field_calls"]  # the prefix is copied, not run
    assert got["runs"] == halving_runs(3, 12) == 10
    assert {k: got[k] for k in FIGURES} == _totals([(1, _engine(control, scenario)), (9, branched)])

    backtest = {"data": DATA, "policy_model": "fake", "seeds": [0, 1], "num_agents": 32, "warmup": 16, "grid_batch_size": [8, 16]}
    got = client.post("/api/estimate", json={"command": "backtest", "config": backtest}).json()
    methods = BacktestConfig(**backtest).resolved_methods()
    parts = [(2, _engine(SimulationConfig(data=DATA, policy_model="fake", num_agents=32, warmup=16, batch_size=size, method=method,
                                          event_id=event.event_id)))
             for size in (8, 16) for method in methods]
    assert got["runs"] == 2 * 2 * len(methods) and {k: got[k] for k in FIGURES} == _totals(parts)
    assert got["seconds"] is None and got["rate"] is None  # no finished run yet: an unknown speed

    run = tmp_path / "project" / "jobs" / "earlier" / "output" / "run"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"kind": "simulation", "status": "completed", "config": {"policy_model": "fake"},
                                                   "throughput": {"seconds": 25.0, "simulated_actions": 100}}), encoding="utf-8")
    got = client.post("/api/estimate", json={"command": "backtest", "config": backtest}).json()
    assert got["rate"] == 4.0 and got["rate_runs"] == 1 and got["seconds"] == pytest.approx(got["agents"] / 4.0)


def test_the_halving_schedule_counts_the_runs_a_search_makes() -> None:
    class Target:
        @staticmethod
        def better(share: float) -> float:
            return share

    class Planner:
        target, runs_made = Target(), 0

        def run_round(self, members: list[tuple[Any, int]]) -> None:
            for arm, seed in members:
                arm.shares[seed] = hash((arm.name, seed)) % 7 / 7
                arm.runs[seed] = Path(f"{arm.name}/seed{seed}")
            self.runs_made += len(members)

    from mfllm.analysis.plan import Candidate

    for candidates, budget in ((1, 2), (2, 7), (3, 12), (5, 17), (8, 40)):
        planner = Planner()
        successive_halving(planner, [Candidate(f"c{i}", f"c{i}.yaml", "") for i in range(candidates)], budget)  # type: ignore[arg-type]
        assert planner.runs_made == halving_runs(candidates, budget) <= budget


def test_a_sensitivity_page_links_its_grid_points_inside_the_app(client: Any, tmp_path: Path) -> None:
    job = tmp_path / "project" / "jobs" / "20250101-000000-backtest-abcd"
    report = job / "output" / "report"
    write_page(report / "warmup8", "sensitivity.html", {"title": "point warmup 8", "points": []})
    write_page(report, "sensitivity.html", {"title": "mfllm backtest: sensitivity", "points": [
        {"name": "warmup8", "point": '{"warmup": 8}', "headlines": []}]})
    (job / JOB_FILE).write_text(json.dumps({"id": job.name, "command": "backtest", "title": "", "config": {}, "created": 0,
                                            "launches": []}), encoding="utf-8")
    (job / STATUS_FILE).write_text(json.dumps({"state": "completed", "result": "output/report"}), encoding="utf-8")
    assert 'href="warmup8/index.html"' in (report / "index.html").read_text(encoding="utf-8")  # the file links the file
    page = client.get(f"/jobs/{job.name}/result").text
    link = f"/jobs/{job.name}/result/warmup8"
    assert f'href="{link}"' in page
    part = client.get(link)
    assert part.status_code == 200 and "point warmup 8" in part.text
    assert client.get(f"/api/jobs/{job.name}/result", params={"part": "warmup8"}).json()["context"]["title"] == "point warmup 8"
    assert client.get(f"/jobs/{job.name}/result/..%2F..%2Fjob.json").status_code == 404
