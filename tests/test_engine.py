"""The open engine: a method is one class, scenarios decide who acts, runs are locked, resume survives
torn and cut files, empty replies are failures, and kill -9 at any moment resumes to the same bytes."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfllm.backends import FakeModel
from mfllm.data import load_event
from mfllm.data.schema import Event
from mfllm.evaluation import KindLabeller, LabellerChain, evaluate_run, headline, resolve_dimensions
from mfllm.evaluation.evaluate import policy_nll
from mfllm.interfaces import LanguageModel
from mfllm.simulation import Agent, RunStore, Scenario, SimulationConfig, Step, StepContext, estimate, schedule, simulate
from mfllm.simulation import methods
from mfllm.simulation.methods.action_memory import ActionMemory
from mfllm.simulation.engine import FAILED_EMPTY
from mfllm.simulation.store import ACTIONS, LOCK, MANIFEST, MEAN_FIELD, STEPS, RunLockedError

from pools import FixedPool

RUN_FILES = (ACTIONS, STEPS, MEAN_FIELD)


def same_files(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in RUN_FILES if (b / n).exists())


# ---------------------------------------------------------------- a method is one class


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The method registry, restored after the test."""
    methods.method_names()
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    return methods


def test_a_new_baseline_is_one_class(registry: Any, demo_event_path: Path, tmp_path: Path) -> None:
    @registry.register
    class FirstK(ActionMemory):  # the first k actions of the event, as a newcomer would write it
        name = "first"
        description = "the first k actions of the event"
        headers = {"zh": "评论区最早的几条评论：", "en": "The first replies:"}

        @classmethod
        def create(cls, config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> FirstK:
            provider = cls(event.language, 10_000)
            provider.k = config.context_k
            return provider

        def context(self) -> str | None:
            from mfllm.prompts import render_actions

            return render_actions(self.memory[: self.k], self.language) if self.memory else None

    from mfllm.cli import build_parser, main

    assert "first" in registry.baseline_names()
    assert build_parser().parse_args(["simulate", "--data", "x", "--method", "first"]).method == ["first"]
    assert main(["simulate", "--data", str(demo_event_path), "--method", "first", "--policy-model", "fake", "--warmup", "6",
                 "--agents", "8", "--batch", "4", "--k", "2", "--output", str(tmp_path)]) == 0
    run = next(tmp_path.rglob(MANIFEST)).parent
    event, _ = load_event(demo_event_path)
    config = SimulationConfig(**RunStore(run).manifest()["config"])
    state = RunStore(run).committed_steps()[-1]["context_state"]
    provider = FirstK.create(config, event, None)
    provider.load_state_dict(state)
    prompt = StepContext(event, provider).prompt("someone").completion
    k = config.context_k
    first = next(r for r in event.reactions[:k] if r.kind == "comment")
    later = next(r for r in event.reactions[k:] if r.kind == "comment" and all(r.text[:10] not in e.text for e in event.reactions[:k]))
    assert "评论区最早的几条评论：" in prompt and first.text[:10] in prompt and later.text[:10] not in prompt
    assert estimate(config, event, FakeModel())["policy_calls"] == 2
    evaluation = evaluate_run(run, LabellerChain([KindLabeller()]), resolve_dimensions(["behaviour"]), policy=FakeModel())
    assert evaluation.method == "first" and evaluation.nll == policy_nll(RunStore(run), FakeModel(), event)[0]
    mf = evaluate_run(run, LabellerChain([KindLabeller()]), resolve_dimensions(["behaviour"]))
    mf.method = "mf-hybrid"
    assert headline([mf, evaluation], "mf-hybrid")["best_baseline"] == "first"  # the headline compares against it
    with pytest.raises(ValueError, match="registered methods: .*first"):
        SimulationConfig(data="x", method="firsts")


def test_method_names_are_unique(registry: Any) -> None:
    from mfllm.simulation.methods.state import State

    class Impostor(State):
        name = "state"
        description = "another state"

    with pytest.raises(ValueError, match="taken"):
        registry.register(Impostor)


# ---------------------------------------------------------------- scenarios


class HalfCrowd(Scenario):
    """Replay, except that every second agent is a profile from the warm-up with no real reaction beside it."""

    name = "half-crowd"

    def __init__(self, event: Event, warmup: int, batch: int, agents: int):
        self.event, self._steps = event, schedule(len(event.reactions), warmup, batch, agents)
        self.crowd = [r.user for r in event.reactions[:warmup]]

    def steps(self) -> list[Step]:
        return self._steps

    def agents(self, step: Step) -> list[Agent]:
        real = [Agent.of(self.event.reactions[p], p) for p in step.positions]
        if step.phase == "warmup":
            return real
        return [a if a.position % 2 == 0 else Agent(a.position, self.crowd[a.position % len(self.crowd)]) for a in real]


def test_agents_without_a_real_reaction_are_simulated_and_not_compared(demo_event_path: Path, tmp_path: Path) -> None:
    config = SimulationConfig(data=str(demo_event_path), policy_model="fake", warmup=6, batch_size=4, num_agents=12)
    run = simulate(config, tmp_path / "run", scenario=lambda event: HalfCrowd(event, 6, 4, 12))
    rows = RunStore(run).actions()
    assert len(rows) == 12 and all(r["sim_text"] for r in rows)
    assert [r["real_text"] is None for r in rows] == [r["position"] % 2 == 1 for r in rows]
    assert RunStore(run).manifest()["scenario"] == {"name": "half-crowd"}
    evaluation = evaluate_run(run, LabellerChain([KindLabeller()]), resolve_dimensions(["behaviour"]), policy=FakeModel())
    assert (evaluation.agents, evaluation.unpaired_actions) == (6, 6)
    assert [e["position"] for e in evaluation.labels] == [r["position"] for r in rows if r["real_text"] is not None]


# ---------------------------------------------------------------- empty replies


class SometimesEmpty(FakeModel):
    """Answers nothing for agents whose persona mentions ``marker`` until ``after`` attempts were made."""

    def __init__(self, marker: str, after: int):
        super().__init__()
        self.marker, self.after, self.attempts = marker, after, {}

    def generate(self, prompts, params):  # type: ignore[no-untyped-def]
        texts = super().generate(prompts, params)
        calls = {p.completion: self.attempts.get(p.completion, 0) for p in prompts}  # earlier calls with each prompt
        for i, prompt in enumerate(prompts):
            if self.marker in prompt.completion.split("\n")[-1] and calls[prompt.completion] < self.after:
                texts[i] = "  "
        for completion, seen in calls.items():
            self.attempts[completion] = seen + 1
        return texts


@pytest.mark.parametrize("after,failed", [(1, False), (5, True)])
def test_empty_replies_are_retried_with_new_seeds_then_recorded_as_failures(demo_event_path: Path, tmp_path: Path, after: int,
                                                                           failed: bool) -> None:
    config = SimulationConfig(data=str(demo_event_path), method="recent", policy_model="fake", warmup=6, batch_size=4, num_agents=12)
    run = simulate(config, tmp_path / "run", pool=FixedPool(SometimesEmpty("粉丝数：不足100", after)))
    rows = RunStore(run).actions()
    touched = [r for r in rows if "粉丝数：不足100" in r["persona"] and r["sim_choice"] != "repost"]  # a bare repost writes nothing
    assert touched and len(rows) == 12
    for row in rows:
        if row in touched:
            assert row["attempts"] == (config.max_generation_attempts if failed else 2) and isinstance(row["seed"], int)
            assert (row.get("failure") == FAILED_EMPTY) == failed and (row["sim_kind"] is None) == failed
        else:
            assert "attempts" not in row and row["sim_text"].strip()
    manifest = RunStore(run).manifest()
    assert manifest.get("failed_actions", 0) == (len(touched) if failed else 0)
    if failed:  # failed actions never reach the context
        contexts = [json.dumps(s["context_state"], ensure_ascii=False) for s in RunStore(run).committed_steps()]
        assert all('"text": "  "' not in c for c in contexts)
        evaluation = evaluate_run(run, LabellerChain([KindLabeller()]), resolve_dimensions(["behaviour"]))
        assert (evaluation.failed_actions, evaluation.agents) == (len(touched), 12 - len(touched))


# ---------------------------------------------------------------- lock


def test_a_locked_run_refuses_a_second_process_and_stale_locks_are_taken_over(demo_event_path: Path, tmp_path: Path) -> None:
    config = SimulationConfig(data=str(demo_event_path), policy_model="fake", warmup=6, batch_size=4, num_agents=8)
    store = RunStore(tmp_path / "run")
    with store.lock():
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()} on {socket.gethostname()}"):
            simulate(config, tmp_path / "run")
    assert not (tmp_path / "run" / LOCK).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    (tmp_path / "run" / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    simulate(config, tmp_path / "run")  # the holder is gone: taken over
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(RunLockedError, match="elsewhere"):
        simulate(config, tmp_path / "other")
    old = time.time() - 3600
    os.utime(tmp_path / "other" / LOCK, (old, old))
    simulate(config, tmp_path / "other")  # not refreshed for an hour on another host: abandoned
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a file stands"):
        simulate(config, tmp_path / "file")


def test_two_processes_on_one_directory_never_both_write(demo_event_path: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mfllm.cli", "simulate", "--data", str(demo_event_path), "--policy-model", "fake",
               "--warmup", "8", "--agents", "88", "--batch", "4", "--method", "mf", "--output"]
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        processes = [subprocess.Popen(command + [str(out)], stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in processes]  # type: ignore[union-attr]
        assert sorted(code for code, _ in results) == [0, 2], results
        loser = next(err for code, err in results if code == 2)
        assert ("is in use by process" in loser or "already holds a run" in loser) and loser.count("\n") == 1
        rows = RunStore(next(out.rglob(MANIFEST)).parent).actions()
        assert len(rows) == 88 and len({r["position"] for r in rows}) == 88


# ---------------------------------------------------------------- resume after damage


@pytest.fixture(scope="module")
def reference(demo_event_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationConfig, Path]:
    config = SimulationConfig(data=str(demo_event_path), policy_model="fake", warmup=8, batch_size=4, num_agents=40, seed=5)
    return config, simulate(config, tmp_path_factory.mktemp("reference") / "run")


def partial_copy(reference: Path, target: Path, steps: int) -> Path:
    """What a run killed after ``steps`` committed steps leaves behind."""
    shutil.copytree(reference, target)
    for name in RUN_FILES:
        kept = [line for line in (reference / name).read_text(encoding="utf-8").splitlines(keepends=True) if json.loads(line)["step"] < steps]
        (target / name).write_text("".join(kept), encoding="utf-8")
    return target


def test_a_tear_inside_a_multibyte_character_resumes(reference: tuple[SimulationConfig, Path], tmp_path: Path) -> None:
    config, ref = reference
    run = partial_copy(ref, tmp_path / "run", 5)
    with (run / STEPS).open("ab") as handle:
        handle.write(b'{"step": 5, "text": "\xe8')
    simulate(config, run, resume=True)
    assert same_files(run, ref)


def test_a_cut_actions_file_reruns_the_damaged_step(reference: tuple[SimulationConfig, Path], tmp_path: Path) -> None:
    config, ref = reference
    run = partial_copy(ref, tmp_path / "run", 7)
    data = (run / ACTIONS).read_bytes()
    (run / ACTIONS).write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 30])  # the last row cut mid-line
    simulate(config, run, resume=True)
    assert same_files(run, ref) and len(RunStore(run).actions()) == 40


@pytest.mark.parametrize("missing,message", [(MANIFEST, "manifest.json is missing"), (STEPS, "steps.jsonl .* is missing")])
def test_resume_refuses_a_run_whose_journal_is_gone(reference: tuple[SimulationConfig, Path], tmp_path: Path, missing: str,
                                                    message: str) -> None:
    config, ref = reference
    run = partial_copy(ref, tmp_path / "run", 6)
    (run / missing).unlink()
    with pytest.raises(ValueError, match=message):
        simulate(config.model_copy(update={"batch_size": 8}), run, resume=True)
    with pytest.raises(FileExistsError, match="already holds a run"):
        simulate(config, run)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(0, 12), cuts=st.lists(st.tuples(st.sampled_from(RUN_FILES), st.floats(0, 1)), max_size=3),
       junk=st.binary(max_size=12))
def test_fuzzed_crash_damage_resumes_to_the_same_bytes(reference: tuple[SimulationConfig, Path], tmp_path_factory: pytest.TempPathFactory,
                                                       steps: int, cuts: Sequence[tuple[str, float]], junk: bytes) -> None:
    """Cut any journal file anywhere and append junk without a newline (a torn write): resume either
    reproduces the uninterrupted run or refuses with a message naming the file."""
    config, ref = reference
    run = partial_copy(ref, tmp_path_factory.mktemp("fuzz") / "run", steps)
    for name, fraction in cuts:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * fraction)])
    with (run / STEPS).open("ab") as handle:
        handle.write(junk.replace(b"\n", b""))
    try:
        simulate(config, run, resume=True)
    except ValueError as exc:
        assert str(run) in str(exc) and "\n" not in str(exc)
        return
    assert same_files(run, ref)


# ---------------------------------------------------------------- kill -9


class SlowFake(FakeModel):
    """A fake backend whose every call takes a moment, so that a kill lands inside a run."""

    def generate(self, prompts, params):  # type: ignore[no-untyped-def]
        time.sleep(0.02)
        return super().generate(prompts, params)

    def score(self, prompts, continuations):  # type: ignore[no-untyped-def]
        time.sleep(0.02)
        return super().score(prompts, continuations)


def _run_child(config: SimulationConfig, run: str) -> None:
    simulate(config, run, pool=FixedPool(SlowFake()), resume=True)


def test_kill_9_at_random_moments_resumes_byte_equal(demo_event_path: Path, tmp_path: Path) -> None:
    config = SimulationConfig(data=str(demo_event_path), method="mf-llm", policy_model="fake", warmup=8, batch_size=2, num_agents=120,
                              seed=9)
    ref = simulate(config, tmp_path / "reference")
    run = tmp_path / "killed"
    rng, kills = random.Random(0), 0
    context = multiprocessing.get_context("fork")
    for _ in range(60):
        child = context.Process(target=_run_child, args=(config, str(run)))
        child.start()
        child.join(rng.uniform(0.02, 0.4))
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
            child.join()
            kills += 1
            continue
        assert child.exitcode == 0
        break
    else:
        pytest.fail("the run never finished")
    assert kills >= 5 and RunStore(run).manifest()["status"] == "completed"
    assert same_files(run, ref)


def test_resume_refuses_a_run_whose_backend_changed(demo_event_path: Path, tmp_path: Path) -> None:
    class OtherEngine(FakeModel):
        """Another backend, as llama.cpp is to transformers."""

        def describe(self):  # type: ignore[no-untyped-def]
            return {**super().describe(), "backend": "other"}

    config = SimulationConfig(data=str(demo_event_path), policy_model="fake", warmup=6, batch_size=4, num_agents=12)
    run = partial_copy(simulate(config, tmp_path / "full"), tmp_path / "cut", 2)
    with pytest.raises(ValueError, match="ran on fake, this one would run on other"):
        simulate(config, run, resume=True, pool=FixedPool(OtherEngine()))
    simulate(config.model_copy(update={"engine": "transformers", "threads": 2}), run, resume=True)  # runtime settings may change
    assert same_files(run, tmp_path / "full")
