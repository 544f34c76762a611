"""Executors: many runs in this process, in a process pool or on a 2-node Ray cluster give the same run
directories; a failed run is reported while the others finish; a re-submitted sweep skips finished runs
and continues partial ones; evaluation runs per run without labelling anything twice."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from mfllm.cache import JsonlCache
from mfllm.cli import main
from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.pipeline import evaluate_runs, labelling_rounds
from mfllm.executors import ExecutorConfig, TaskFailures, WorkerPools, release_workers, run_tasks
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.store import LOCK, MANIFEST, STEPS, RunLockedError, RunStore
from mfllm.simulation.sweep import simulate_many, simulation_tasks, sweep_configs, sweep_plan

REPO = Path(__file__).resolve().parents[1]
TIMING_FIELDS = ("created", "throughput")
"""Manifest fields that differ between two otherwise identical runs."""
SECOND_EVENT = "second-event"


@pytest.fixture(scope="module")
def two_events(demo_event_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo event, and a copy of it under another id: a dataset of two events."""
    lines = [json.loads(line) for line in demo_event_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    copy = [{**record, "event_id": SECOND_EVENT, "post_id": f"b-{record['post_id']}",
             **({"parent_id": f"b-{record['parent_id']}"} if record.get("parent_id") else {}),
             **({"text": record["text"] + " (2)"} if record["kind"] == "source" else {})} for record in lines]
    path = tmp_path_factory.mktemp("events") / "two_events.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines + copy), encoding="utf-8")
    return path


def _plan(data: Path, root: Path) -> list[tuple[SimulationConfig, Path]]:
    base = SimulationConfig(data=str(data), policy_model="fake", warmup=8, num_agents=16, batch_size=4)
    events = [json.loads(data.read_text(encoding="utf-8").splitlines()[0])["event_id"], SECOND_EVENT]
    return sweep_plan(sweep_configs(base, events, ["mf", "state"], [0, 1]), root)


@pytest.fixture(scope="module")
def sequential_runs(two_events: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sequential")
    simulate_many(_plan(two_events, root))
    return root


def _contents(root: Path, resumed: Path | None = None) -> dict[str, Any]:
    """Every file under ``root`` by relative path: bytes, or the manifest less its timing fields. The
    manifest of the ``resumed`` run also leaves out its usage (the engine counts the resuming session's calls)."""
    out: dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name == MANIFEST:
            skipped = (*TIMING_FIELDS, "usage") if resumed is not None and path.parent == root / resumed else TIMING_FIELDS
            out[str(path.relative_to(root))] = {k: v for k, v in json.loads(path.read_text()).items() if k not in skipped}
        else:
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def stop_workers_afterwards() -> Iterator[None]:
    """The process pools and actors the executors keep are stopped when the module's tests are done."""
    yield
    release_workers()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """Two Ray nodes on this host (1 CPU each, small object stores, no dashboard), shared by the module."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    yield cluster
    import ray

    release_workers()
    ray.shutdown()
    cluster.shutdown()


def _hold_lock(run: Path) -> None:
    """Leave ``run`` locked by a live process (this one): simulating it fails until the lock goes."""
    run.mkdir(parents=True)
    (run / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": 0}))


def _cut_after(run: Path, steps: int) -> None:
    """What a kill mid-run leaves: the journal cut after ``steps`` steps, the manifest still running."""
    journal = (run / STEPS).read_text().splitlines(keepends=True)
    (run / STEPS).write_text("".join(journal[:steps]))
    manifest = json.loads((run / MANIFEST).read_text())
    (run / MANIFEST).write_text(json.dumps({**manifest, "status": "running"}))


def test_ray_sweep_on_two_nodes_matches_sequential_and_resubmission_redoes_nothing(
        ray_cluster: Any, two_events: Path, sequential_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.chdir(tmp_path)  # run directories relative to where the sweep is submitted, wherever the workers started
    plan = _plan(two_events, Path("runs"))
    locked, partial = plan[1][1], plan[6][1]
    _hold_lock(locked)
    shutil.copytree(sequential_runs / partial.relative_to("runs"), partial)
    _cut_after(partial, 3)
    executor = ExecutorConfig(executor="ray", ray_address=ray_cluster.address)
    tasks, done = simulation_tasks(plan, resume=True)
    assert done == [] and len(tasks) == 8
    outcomes = run_tasks(tasks, executor, raise_failures=False)
    assert [o.name for o in outcomes if not o.ok] == [str(locked)] and "is in use by process" in outcomes[1].error
    with pytest.raises(RunLockedError, match="is in use by process"):  # the only failed run's own error, once the others finished
        run_tasks(simulation_tasks(plan, resume=True)[0], executor)
    finished = {directory for _, directory in plan if RunStore(directory).exists()}
    assert finished == {directory for _, directory in plan} - {locked}
    (locked / LOCK).unlink()
    before = _mtimes(Path("runs"))
    tasks, done = simulation_tasks(plan, resume=True)
    assert [task.name for task in tasks] == [str(locked)] and len(done) == 7  # finished runs are not submitted again
    assert simulate_many(plan, resume=True, executor=executor) == [directory for _, directory in plan]
    after = _mtimes(Path("runs"))
    assert {k: v for k, v in after.items() if k in before} == before  # not one file of a finished run was rewritten
    resumed = partial.relative_to("runs")
    assert _contents(Path("runs"), resumed) == _contents(sequential_runs, resumed)


def test_process_pool_matches_sequential_and_keeps_one_pool_per_worker(two_events: Path, sequential_runs: Path, tmp_path: Path) -> None:
    plan = _plan(two_events, tmp_path)
    broken = [(plan[0][0].model_copy(update={"event_id": f"no-such-event-{i}"}), tmp_path / f"broken{i}") for i in (1, 2)]
    tasks, _ = simulation_tasks([*plan, *broken])
    executor, seen = ExecutorConfig(executor="process", workers=2), []
    with pytest.raises(TaskFailures, match="2 of 10 tasks failed") as failure:
        run_tasks(tasks, executor, on_result=seen.append)
    assert [f.name for f in failure.value.failed] == [str(d) for _, d in broken] and "no-such-event-2" in failure.value.failed[1].error
    workers = {o.worker for o in seen}
    assert len(seen) == 10 and 1 <= len(workers) <= 2 and f"{socket.gethostname()}:{os.getpid()}" not in workers
    for _, directory in broken:
        directory.rmdir()
    assert _contents(tmp_path) == _contents(sequential_runs)
    again = run_tasks(simulation_tasks(_plan(two_events, tmp_path / "again"))[0], executor)
    assert {o.worker for o in again} <= workers  # the same workers serve the next command, their models loaded
    release_workers()


def test_a_worker_builds_one_model_pool_per_setting_and_keeps_it() -> None:
    pools = WorkerPools(threads=1)
    cpu = {"device": "cpu", "engine": "transformers", "threads": None}
    first = pools.get(cpu)
    assert pools.get(dict(cpu)) is first and first.llama_options == {"threads": 1}  # the worker's share of the cores
    assert pools.get({**cpu, "threads": 3}) is not first and len(pools.pools) == 2


def test_parallel_evaluation_equals_sequential_and_labels_nothing_twice(two_events: Path, sequential_runs: Path, tmp_path: Path) -> None:
    runs = [directory for _, directory in _plan(two_events, sequential_runs)]
    plain = EvaluationConfig(dimensions=["sentiment"], nll=True)
    sequential, _ = evaluate_runs(runs, plain)
    parallel, _ = evaluate_runs(runs, plain, executor=ExecutorConfig(executor="process", workers=2))
    assert [e.to_json() for e in parallel] == [e.to_json() for e in sequential]
    lines = {}
    for name, executor in (("sequential", None), ("process", ExecutorConfig(executor="process", workers=2))):
        judged = EvaluationConfig(dimensions=["sentiment"], judge_model="fake", judge_only=True, labeller_cache=str(tmp_path / name))
        evaluations, _ = evaluate_runs(runs, judged, executor=executor)
        assert all(e.labeller.startswith("judge") for e in evaluations)
        lines[name] = (tmp_path / name / "judge.jsonl").read_text().splitlines()
    # an event's real reactions are labelled by one run, the event's other runs (in parallel) read them from the shared cache
    assert len(lines["process"]) == len(lines["sequential"]) and set(lines["process"]) == set(lines["sequential"])


def test_with_a_judge_on_parallel_workers_one_run_per_event_labels_first(two_events: Path, sequential_runs: Path) -> None:
    runs = [directory for _, directory in _plan(two_events, sequential_runs)]  # 4 runs of one event, then 4 of the other
    judged = EvaluationConfig(judge_model="fake")
    assert labelling_rounds(runs, judged, ExecutorConfig(executor="ray")) == [[0, 4], [1, 2, 3, 5, 6, 7]]
    assert labelling_rounds(runs, judged, ExecutorConfig()) == [list(range(8))]  # one at a time: nothing runs beside another
    assert labelling_rounds(runs, EvaluationConfig(), ExecutorConfig(executor="process")) == [list(range(8))]  # no judge


def test_two_caches_on_one_file_see_each_others_entries(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    mine, theirs = JsonlCache(path), JsonlCache(path)
    theirs.put("a", 1)
    assert "a" in mine and mine["a"] == 1  # appended after `mine` read the file
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "b", "va')  # another process in the middle of a write
    assert "b" not in mine
    with path.open("a", encoding="utf-8") as handle:
        handle.write('lue": 2}\n')
    assert "b" in mine and mine["b"] == 2 and JsonlCache(path)["b"] == 2


def test_ray_missing_is_one_line_saying_how_to_install(demo_event_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    args = ["simulate", "--data", str(demo_event_path), "--policy-model", "fake", "--warmup", "8", "--agents", "4", "--batch", "4",
            "--output", str(tmp_path), "--executor", "ray"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pip install 'mfllm[ray]'" in err and err.count("\n") == 1


def test_bench_script_runs_side_by_side_with_the_fake_backend(ray_cluster: Any, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "executors.py"), "--model", "fake", "--runs", "4", "--agents", "8",
                             "--ray-address", ray_cluster.address, "--output", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, check=False, env={**os.environ})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert {"sequential", "process", "ray"} <= set(lines) and lines["ray"].endswith("x")
    assert "same runs from every executor: yes" in result.stdout


POOL_PARENT = """
import sys, time
from mfllm import executors
executors.run_tasks([executors.Task(str(i), repr) for i in range(2)], executors.ExecutorConfig(executor="process", workers=2))
print(*[pid for pool in executors._PROCESS_EXECUTORS.values() for pid in pool._processes], flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc")
def test_process_pool_workers_exit_when_their_parent_is_killed() -> None:
    import signal
    import time

    parent = subprocess.Popen([sys.executable, "-c", POOL_PARENT], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in parent.stdout.readline().split()]  # type: ignore[union-attr]
    assert len(workers) == 2 and all(_running(pid) for pid in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(pid) for pid in workers)
