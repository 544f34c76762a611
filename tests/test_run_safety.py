"""A run's data stays safe: stale locks are taken over by exactly one process, a journal written twice is
refused, a run stopped by an error says so, and errors while writing or reading a run name the file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

from mfllm.backends import FakeModel
from mfllm.backends.wrappers import BackendError
from mfllm.cli import main
from mfllm.data.loaders import get_reader
from mfllm.interfaces import Prompt, SamplingParams
from mfllm.simulation import RunStore, SimulationConfig, simulate
from mfllm.simulation.sweep import run_directory
from mfllm.simulation.store import ACTIONS, LOCK, MANIFEST, MEAN_FIELD, STEPS

from pools import FixedPool

RUN_FILES = (ACTIONS, STEPS, MEAN_FIELD)
WARMUP, BATCH, AGENTS, SEED = 8, 4, 40, 3


@pytest.fixture(scope="module")
def reference(demo_event_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationConfig, Path]:
    """An uninterrupted run (method mf, fake backend)."""
    event_id = get_reader(str(demo_event_path)).list_events(demo_event_path)[0]
    config = SimulationConfig(data=str(demo_event_path), event_id=event_id, policy_model="fake", warmup=WARMUP, batch_size=BATCH,
                              num_agents=AGENTS, seed=SEED, method="mf")
    return config, simulate(config, tmp_path_factory.mktemp("reference") / "run")


def killed_copy(reference: Path, target: Path, steps: int) -> Path:
    """What a run killed after ``steps`` committed steps leaves: the rows of those steps, status running, and
    the ``run.lock`` of its dead process."""
    shutil.copytree(reference, target)
    for name in RUN_FILES:
        kept = [line for line in (reference / name).read_text(encoding="utf-8").splitlines(keepends=True) if json.loads(line)["step"] < steps]
        (target / name).write_text("".join(kept), encoding="utf-8")
    manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    (target / MANIFEST).write_text(json.dumps({**manifest, "status": "running"}), encoding="utf-8")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    (target / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": 0}))
    return target


SLOW_RESUME = """
import sys, time
import mfllm.simulation.store as store
from mfllm.backends.fake import FakeModel
from mfllm.cli import main
alive, generate = store._process_alive, FakeModel.generate
store._process_alive = lambda pid: time.sleep(1.5) or alive(pid)  # a slow look at the holder: every resume looks at once
FakeModel.generate = lambda self, prompts, params: time.sleep(0.05) or generate(self, prompts, params)
sys.exit(main(sys.argv[1:]))
"""


def test_concurrent_resumes_of_a_dead_run_make_one_writer(reference: tuple[SimulationConfig, Path], tmp_path: Path) -> None:
    config, ref = reference
    target = killed_copy(ref, run_directory(tmp_path / "sweep", config), 3)
    command = [sys.executable, "-c", SLOW_RESUME, "simulate", "--resume", "--data", config.data, "--policy-model", "fake",
               "--warmup", str(WARMUP), "--batch", str(BATCH), "--agents", str(AGENTS), "--seeds", str(SEED), "--method", "mf",
               "--event", str(config.event_id), "--output", str(tmp_path / "sweep")]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]  # type: ignore[union-attr]
    assert all(code in (0, 2) for code, _ in results) and any(code == 0 for code, _ in results), results
    losers = [err for code, err in results if code == 2]
    assert all("is in use by process" in err and err.count("\n") == 1 for err in losers), losers
    assert RunStore(target).committed_steps() and all((target / n).read_bytes() == (ref / n).read_bytes() for n in RUN_FILES)
    assert json.loads((target / MANIFEST).read_text())["status"] == "completed" and not (target / LOCK).exists()


def test_resume_and_export_refuse_a_journal_written_twice(reference: tuple[SimulationConfig, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    config, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    journal = (ref / STEPS).read_text(encoding="utf-8").splitlines(keepends=True)
    (run / STEPS).write_text("".join(journal[:5] + journal[1:]), encoding="utf-8")  # steps 0-4, then 1-... again
    rows = (ref / ACTIONS).read_text(encoding="utf-8")
    (run / ACTIONS).write_text(rows + rows, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{STEPS}: line 6: step 1 after step 4"):
        simulate(config, run, resume=True)
    assert main(["export", str(run), str(tmp_path / "rows.csv")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{run / STEPS}: line 6: step 1 after step 4" in error
    assert not (tmp_path / "rows.csv").exists()
    (run / STEPS).write_text("".join(journal), encoding="utf-8")  # a sound journal, but rows written twice
    assert main(["export", str(run), str(tmp_path / "rows.csv")]) == 2
    assert f"{run / ACTIONS}: line {rows.count(chr(10)) + 1}: step 2 after step" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x00", b'{"host": '])
def test_an_empty_or_unreadable_lock_does_not_block_resume(reference: tuple[SimulationConfig, Path], tmp_path: Path,
                                                           content: bytes) -> None:
    config, ref = reference
    run = killed_copy(ref, tmp_path / "run", 3)
    (run / LOCK).write_bytes(content)  # what a full disk leaves
    simulate(config, run, resume=True)
    assert all((run / n).read_bytes() == (ref / n).read_bytes() for n in RUN_FILES)


class FailsAtCall(FakeModel):
    """The fake backend, raising a server's error on its ``failing``-th generation call."""

    def __init__(self, failing: int):
        super().__init__()
        self.failing, self.calls = failing, 0

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        self.calls += 1
        if self.calls == self.failing:
            raise BackendError("http://server/v1/chat/completions (model m): HTTP 401 Unauthorized (check the API key)")
        return super().generate(prompts, params)


@pytest.mark.parametrize("error", [BackendError, KeyboardInterrupt])
def test_a_run_stopped_by_an_error_records_why_and_resumes(reference: tuple[SimulationConfig, Path], tmp_path: Path,
                                                           error: type[BaseException]) -> None:
    config, ref = reference
    model = FailsAtCall(4)
    if error is KeyboardInterrupt:
        model.generate = lambda prompts, params: (_ for _ in ()).throw(KeyboardInterrupt())  # type: ignore[method-assign]
    with pytest.raises(error):
        simulate(config, tmp_path / "run", pool=FixedPool(model))
    manifest = RunStore(tmp_path / "run").manifest()
    if error is BackendError:
        assert manifest["status"] == "failed" and manifest["error"].startswith("BackendError: http://server/v1/chat/completions")
        assert "\n" not in manifest["error"]
    else:
        assert manifest["status"] == "interrupted" and manifest["error"] == "KeyboardInterrupt:"
    simulate(config, tmp_path / "run", resume=True)
    manifest = RunStore(tmp_path / "run").manifest()
    assert manifest["status"] == "completed" and "error" not in manifest
    assert all((tmp_path / "run" / n).read_bytes() == (ref / n).read_bytes() for n in RUN_FILES)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_names_the_file_and_marks_the_run_failed(reference: tuple[SimulationConfig, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config, ref = reference
    run = killed_copy(ref, tmp_path / "run", 3)
    (run / (ACTIONS + ".tmp")).symlink_to("/dev/full")  # every write of the rows' file fails: No space left on device
    with pytest.raises(OSError, match=rf"{run / ACTIONS}: cannot write \(No space left on device\)"):
        simulate(config, run, resume=True)
    manifest = RunStore(run).manifest()
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"]


def test_a_truncated_manifest_is_named_on_resume(reference: tuple[SimulationConfig, Path], tmp_path: Path) -> None:
    config, ref = reference
    run = killed_copy(ref, tmp_path / "run", 3)
    data = (run / MANIFEST).read_bytes()
    (run / MANIFEST).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{run / MANIFEST}: corrupt or cut short at line 1 column \d+"):
        simulate(config, run, resume=True)


SLOW_CLI = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever the test process left ignored
from mfllm.backends.fake import FakeModel
from mfllm.cli import main
generate = FakeModel.generate
FakeModel.generate = lambda self, prompts, params: time.sleep(0.6) or generate(self, prompts, params)
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_prints_one_line_with_the_resume_hint(reference: tuple[SimulationConfig, Path], tmp_path: Path) -> None:
    import signal
    import time

    config, ref = reference
    command = [sys.executable, "-c", SLOW_CLI, "simulate", "--data", config.data, "--policy-model", "fake", "--warmup", str(WARMUP),
               "--batch", str(BATCH), "--agents", str(AGENTS), "--seeds", str(SEED), "--method", "mf", "--output", str(tmp_path / "runs")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = run_directory(tmp_path / "runs", config)
    deadline = time.monotonic() + 60
    while not (run / STEPS).exists() or not (run / STEPS).read_text():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
    _, error = process.communicate(timeout=60)
    lines = [line for line in error.replace("\r", "\n").splitlines() if "mfllm:" in line]
    assert process.returncode == 130 and "Traceback" not in error
    assert lines == ["mfllm: interrupted; run the same command with --resume to continue where it stopped"], error
    assert RunStore(run).manifest()["status"] == "interrupted"
    assert subprocess.run(command + ["--resume"], capture_output=True, text=True).returncode == 0  # the slow model: a few seconds
    assert all((run / n).read_bytes() == (ref / n).read_bytes() for n in RUN_FILES)


@pytest.mark.parametrize(("content", "message"), [
    (b"policy_model: fake\nwarmup: [1,\n", r"config.yaml: invalid YAML at line 3 column 1: while parsing a flow node expected the node content"),
    (b"policy_model: fake\n  warmup: 2\n", r"config.yaml: invalid YAML at line 2 column 9: mapping values are not allowed here"),
    (b"policy_model: \xff\xfe\n", r"config.yaml: not UTF-8 text: line 1, byte 14: invalid start byte"),
])
def test_a_malformed_config_is_one_line_naming_file_and_position(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  content: bytes, message: str) -> None:
    import re

    (tmp_path / "config.yaml").write_bytes(content)
    assert main(["simulate", "--config", str(tmp_path / "config.yaml"), "--data", "x", "--output", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and re.search(message, error), error


def test_a_sweep_whose_runs_share_a_directory_names_them_before_starting(demo_event_path: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--data", str(demo_event_path), "--policy-model", "fake", "--method", "state", "--method", "mf", "--method", "mf-stats",
                 "--seeds", "0", "1", "--output", str(tmp_path / "runs")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and not (tmp_path / "runs").exists()
    assert "mf-stats/seed0: runs 3 and 5 of the sweep would both write here" in error and "method mf-stats, seed 0" in error
