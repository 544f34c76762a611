"""The MF-LLM loop: schedule, contexts, alignment on every dataset, resume, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfllm.backends import FakeModel, ModelPool
from mfllm.data import load_event
from mfllm.interfaces import AgentAction
from mfllm.prompts import action_line
from mfllm.simulation import RunStore, SimulationConfig, Simulator, estimate, export_actions, schedule, simulate
from mfllm.simulation.methods import get_method, resolve_method
from mfllm.simulation.methods.popular import PopularK
from mfllm.simulation.methods.recent import RecentK
from mfllm.simulation.store import ACTIONS, STEPS

from pools import FixedPool

SHARED_EVENTS = {
    "weibo_covid19_rumor": "4484800548711562",
    "ced_weibo": "0_yBmepBtUB_2279086572",
    "pheme_rumour_scheme_subset": "552783667052167168",
    "rumoureval2017_processed": "498280126254428160",
}


def test_schedule_cuts_warmup_per_reaction() -> None:
    steps = schedule(num_reactions=50, warmup=20, batch_size=16, num_agents=None)
    assert [(s.phase, s.positions[0], len(s.positions)) for s in steps] == [
        ("warmup", 0, 16), ("warmup", 16, 4), ("rollout", 20, 16), ("rollout", 36, 14)]
    assert sum(len(s.positions) for s in schedule(50, 20, 16, 10) if s.phase == "rollout") == 10
    with pytest.raises(ValueError, match="leaves no reaction"):
        schedule(10, 10, 4, None)


@pytest.mark.parametrize("folder", SHARED_EVENTS)
@pytest.mark.parametrize("method", ["mf", "state", "recent", "popular"])
def test_every_dataset_and_method_gives_aligned_rows(shared_data: Path, tmp_path: Path, folder: str, method: str) -> None:
    event, _ = load_event(shared_data / folder, SHARED_EVENTS[folder])
    warmup = min(8, len(event.reactions) // 3)
    agents = min(20, len(event.reactions) - warmup)
    config = SimulationConfig(data=str(shared_data / folder), event_id=SHARED_EVENTS[folder], method=method, policy_model="fake",
                              warmup=warmup, batch_size=6, num_agents=agents)
    run = simulate(config, tmp_path / "run")
    rows = RunStore(run).actions()
    assert len(rows) == agents
    assert [r["position"] for r in rows] == list(range(warmup, warmup + agents))
    for row in rows:  # each simulated action sits beside the real reaction of the same user
        real = event.reactions[row["position"]]
        assert (row["reaction_id"], row["real_text"], row["user_id"]) == (real.post_id, real.text, real.user.user_id)
        assert row["sim_text"]
    manifest = RunStore(run).manifest()
    assert manifest["status"] == "completed" and manifest["data_hash"] == event.content_hash()
    assert manifest["config"]["method"] == resolve_method(method) and "python" in manifest["versions"]
    history = RunStore(run).mean_field_history()
    assert (len(history) > 0) == (not get_method(method).is_baseline)


def test_mean_field_prompt_stays_flat_while_full_history_grows(shared_data: Path) -> None:
    event, _ = load_event(shared_data / "weibo_covid19_rumor", "4484800548711562")
    config = SimulationConfig(data="x", method="mf-llm", policy_model="fake", warmup=8, batch_size=8)
    plan = estimate(config, event, FakeModel())
    mf_tokens = [s["policy_prompt_tokens"] for s in plan["per_step"]]
    full = [s["full_history_tokens"] for s in plan["per_step"]]
    assert len(mf_tokens) >= 8
    assert max(mf_tokens) < 1.5 * min(mf_tokens)  # only the persona varies
    assert full[-1] > 4 * full[0] and full[-1] > 5 * max(mf_tokens)
    assert plan["mean_field_calls"] == len(plan["per_step"]) + 1 and plan["agents"] == len(event.reactions) - 8


def test_mean_field_sees_real_actions_in_warmup_and_simulated_ones_after(demo_event_path: Path) -> None:
    class Recorder(FakeModel):
        def __init__(self) -> None:
            super().__init__()
            self.prompts: list[str] = []

        def generate(self, prompts, params):  # type: ignore[no-untyped-def]
            self.prompts.extend(p.completion for p in prompts)
            return super().generate(prompts, params)

    event, _ = load_event(demo_event_path)
    mean_field = Recorder()
    config = SimulationConfig(data=str(demo_event_path), method="mf-hybrid", policy_model="fake", warmup=5, batch_size=4, num_agents=4)
    simulator = Simulator(config, event, FakeModel(), mean_field)
    warmup_rows = simulator.run_step(simulator.steps[0])
    first = event.reactions[0]
    assert warmup_rows == [] and action_line(first.kind, first.text, "zh")[:20] in mean_field.prompts[0]
    assert simulator.steps[1].positions == (4,)  # the partial warm-up batch
    simulator.run_step(simulator.steps[1])
    rows = simulator.run_step(simulator.steps[2])
    assert action_line(rows[0]["sim_kind"], rows[0]["sim_text"], "zh")[:10] in mean_field.prompts[-1]
    assert simulator.context.context() is not None


def test_popular_ranks_by_engagement_not_followers() -> None:
    popular = PopularK("en", k=2, window=10)
    popular.observe([AgentAction("followers: over 100k", "famous but ignored", "comment", engagement=0),
                     AgentAction("followers: under 100", "viral reply", "comment", engagement=50),
                     AgentAction("followers: under 100", "some reply", "comment", engagement=5)], seed=0)
    assert popular.context().splitlines() == ["- [reply] viral reply", "- [reply] some reply"]
    recent = RecentK("en", k=2)
    recent.observe([AgentAction("p", t, "repost") for t in ("a", "RT", "c")], seed=0)
    assert recent.context().splitlines() == ["- [share]", "- [share with comment] c"]


class _Crash(Exception):
    pass


class _CrashingModel(FakeModel):
    def __init__(self, crash_on_call: int):
        super().__init__()
        self.calls, self.crash_on_call = 0, crash_on_call

    def generate(self, prompts, params):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise _Crash
        return super().generate(prompts, params)


@pytest.mark.parametrize("method,crash_on_call", [("mf-hybrid", 5), ("mf-hybrid", 8), ("recent", 3)])
def test_killed_run_resumes_to_the_uninterrupted_result(demo_event_path: Path, tmp_path: Path, method: str, crash_on_call: int) -> None:
    config = SimulationConfig(data=str(demo_event_path), method=method, policy_model="fake", warmup=10, batch_size=8, num_agents=40, seed=3)
    reference = simulate(config, tmp_path / "reference")
    with pytest.raises(_Crash):
        simulate(config, tmp_path / "resumed", pool=FixedPool(_CrashingModel(crash_on_call)))
    # a torn, half-written line from the crash must not survive either
    with (tmp_path / "resumed" / ACTIONS).open("a") as handle:
        handle.write('{"step": 99, "posit')
    with pytest.raises(FileExistsError, match="--resume"):
        simulate(config, tmp_path / "resumed")
    simulate(config, tmp_path / "resumed", resume=True)
    for name in ("actions.jsonl", "mean_field.jsonl", "steps.jsonl"):
        ref = (reference / name).read_text() if (reference / name).exists() else ""
        assert (tmp_path / "resumed" / name).read_text() == ref, name


def test_resume_refuses_a_changed_config(demo_event_path: Path, tmp_path: Path) -> None:
    config = SimulationConfig(data=str(demo_event_path), policy_model="fake", warmup=10, num_agents=8)
    simulate(config, tmp_path / "run")
    with pytest.raises(ValueError, match="changed: batch_size"):
        simulate(config.model_copy(update={"batch_size": 4}), tmp_path / "run", resume=True)


def test_corrupt_journal_line_in_the_middle_is_an_error(demo_event_path: Path, tmp_path: Path) -> None:
    config = SimulationConfig(data=str(demo_event_path), policy_model="fake", warmup=10, batch_size=4, num_agents=12)
    run = simulate(config, tmp_path / "run")
    lines = (run / STEPS).read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / STEPS).write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 2 is corrupt"):
        RunStore(run).committed_steps()


def test_seeds_reproduce_with_a_local_model(demo_event_path: Path, tiny_base_model_dir: Path, tmp_path: Path) -> None:
    base = dict(data=str(demo_event_path), policy_model=f"hf:{tiny_base_model_dir}", warmup=6, batch_size=4, num_agents=8,
                max_action_tokens=8, max_mean_field_tokens=8, device="cpu")
    pool = ModelPool(device="cpu")
    runs = [simulate(SimulationConfig(**base, seed=s), tmp_path / f"run{i}", pool=pool) for i, s in enumerate((1, 1, 2))]
    texts = [[r["sim_text"] for r in RunStore(run).actions()] for run in runs]
    assert texts[0] == texts[1] and texts[0] != texts[2]
    manifest = RunStore(runs[0]).manifest()
    assert manifest["models"]["policy"]["path"] == str(tiny_base_model_dir)
    assert manifest["usage"]["policy"]["generate_calls"] == 2 and manifest["throughput"]["simulated_actions"] == 8


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_export(demo_event_path: Path, tmp_path: Path, suffix: str) -> None:
    pd = pytest.importorskip("pandas")
    run = simulate(SimulationConfig(data=str(demo_event_path), policy_model="fake", warmup=10, num_agents=12), tmp_path / "run")
    out = export_actions(run, tmp_path / f"actions{suffix}")
    frame = {"csv": pd.read_csv, "parquet": pd.read_parquet, "jsonl": lambda p: pd.read_json(p, lines=True)}[suffix[1:]](out)
    assert len(frame) == 12 and {"event_id", "method", "seed", "real_text", "sim_text"} <= set(frame.columns)
    assert json.loads((run / "manifest.json").read_text())["event"]["event_id"] == str(frame["event_id"][0])


def test_config_from_yaml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: d\nmethod: recent\nbatch_size: 4\n")
    config = SimulationConfig.from_sources(path, {"batch_size": 8, "warmup": None})
    assert (config.method, config.batch_size, config.warmup) == ("recent", 8, 32)
    with pytest.raises(ValueError, match="has no mean-field model"):
        SimulationConfig(data="d", method="state", mean_field_adapter="x")
    with pytest.raises(ValueError, match="extra"):
        SimulationConfig.from_sources(None, {"data": "d", "batch": 3})
