"""Background jobs of the web app: one command (simulate, backtest, branch, forecast, plan) with its config, run by
the library in a process of its own, over a job directory in the project folder.

``<project>/jobs/<id>/`` holds ``job.json`` (command, config, launches; written by the app), ``status.json``
(written by the job's process: running, completed or failed, the error, the result page), ``job.log`` (its
output) and ``output/`` (the command's run directories and report). Everything a page shows is read from
there, so a job survives a page reload and a restart of the app. Stopping terminates the job's process group
(its executor workers too); resuming starts the command again with ``resume`` (the engine continues each run
from its last committed step). The runs themselves go to the executor the config names (:mod:`mfllm.executors`).

Run a job's process by hand with ``python -m mfllm.presentation.jobs JOB_DIR [--resume]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mfllm.analysis.backtest import BacktestConfig
from mfllm.analysis.branch import BranchConfig
from mfllm.analysis.forecast import ForecastConfig
from mfllm.analysis.plan import PlanConfig
from mfllm.configuration import YamlConfig
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.store import ACTIONS, MANIFEST, RunStore, _process_alive

JOBS = "jobs"
JOB_FILE, STATUS_FILE, LOG_FILE, OUTPUT = "job.json", "status.json", "job.log", "output"
COMPARISON = "comparison"
"""Where a branch job writes the paired comparison of its arms (under its output)."""


def _tqdm(total: int, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="agent", file=sys.stderr, mininterval=2.0)


def _simulate(config: SimulationConfig, output: Path, resume: bool) -> Path | None:
    from mfllm.simulation.sweep import simulate_many

    simulate_many([(config, output / "run")], resume=resume, progress=_tqdm)
    return None


def _backtest(config: BacktestConfig, output: Path, resume: bool) -> Path | None:
    from mfllm.analysis.backtest import backtest

    return Path(backtest(config, progress=_tqdm)["report"]).parent  # a backtest always continues its finished runs


def _branch(config: BranchConfig, output: Path, resume: bool) -> Path | None:
    from mfllm.analysis import branch, write_comparison
    from mfllm.analysis.compare import CompareConfig

    directory = branch(config, resume=resume, progress=_tqdm)
    return write_comparison(directory, output / COMPARISON, CompareConfig(dimensions=["sentiment", "behaviour"]), progress=_tqdm).parent


def _forecast(config: ForecastConfig, output: Path, resume: bool) -> Path | None:
    from mfllm.analysis.forecast import forecast

    return forecast(config, resume=resume, progress=_tqdm).report.parent


def _plan(config: PlanConfig, output: Path, resume: bool) -> Path | None:
    from mfllm.analysis.plan import plan

    return plan(config, resume=resume, progress=_tqdm).report.parent


@dataclass(frozen=True)
class Command:
    """A command the app launches: its config (the form), what it does, and the fields the app sets itself."""

    name: str
    config: type[YamlConfig]
    summary: str
    run: Callable[[Any, Path, bool], Path | None]
    set_by_app: tuple[str, ...] = ("output",)


COMMANDS = {c.name: c for c in (
    Command("simulate", SimulationConfig, "One run of an event with a method and seed.", _simulate, ()),
    Command("backtest", BacktestConfig, "Every method x seed on a set of events, evaluated against the real reactions.", _backtest),
    Command("branch", BranchConfig, "Continue a run from its first steps with and without a change, under the same seeds; then "
                                    "the paired comparison of the arms.", _branch),
    Command("forecast", ForecastConfig, "An ensemble past a real prefix (label shares and volume with bands); scored against "
                                        "what happened with score.", _forecast),
    Command("plan", PlanConfig, "Search candidate interventions for the best at a target within a budget of runs.", _plan),
)}


def command(name: str) -> Command:
    if name not in COMMANDS:
        raise KeyError(f"unknown command {name!r} (one of {', '.join(COMMANDS)})")
    return COMMANDS[name]


def job_config(job: dict[str, Any], directory: Path) -> YamlConfig:
    """The validated config of a job, its output inside the job directory."""
    spec = command(job["command"])
    values = {**job["config"], **({"output": str(directory / OUTPUT)} if "output" in spec.set_by_app else {})}
    return spec.config(**values)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _alive(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` is this job's: alive and, where /proc tells, running this job directory and not a zombie."""
    if not _process_alive(pid):
        return False
    proc = Path(f"/proc/{pid}")
    try:
        return not proc.exists() or (str(directory).encode() in (proc / "cmdline").read_bytes()
                                     and (proc / "stat").read_bytes().rsplit(b")", 1)[-1].split()[0] != b"Z")
    except OSError:
        return False


class Jobs:
    """The jobs of a project folder: create, start, stop, resume, and read their state."""

    def __init__(self, project: str | Path):
        self.project = Path(project)
        self.root = self.project / JOBS
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def directory(self, job_id: str) -> Path:
        path = self.root / job_id
        if "/" in job_id or job_id.startswith(".") or not (path / JOB_FILE).is_file():
            raise KeyError(f"no job {job_id!r} in {self.root}")
        return path

    def create(self, name: str, config: dict[str, Any], title: str | None = None) -> str:
        """Validate ``config`` for command ``name`` (pydantic raises a ValidationError naming each bad field), write the job
        and start it; returns its id."""
        spec = command(name)
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(2)}"
        directory = self.root / job_id
        values = {k: v for k, v in config.items() if k not in spec.set_by_app}
        job = {"id": job_id, "command": name, "title": title or "", "config": values, "created": time.time(), "launches": []}
        job_config(job, directory)  # refuse a bad config before anything is written
        directory.mkdir(parents=True)
        _write_json(directory / JOB_FILE, job)
        self.start(job_id)
        return job_id

    def start(self, job_id: str, resume: bool = False) -> None:
        """Start (or, with ``resume``, continue) the job's process, in a session of its own."""
        directory = self.directory(job_id)
        if self.state(job_id)["state"] == "running":
            raise ValueError(f"job {job_id} is running already")
        job = _read_json(directory / JOB_FILE)
        (directory / STATUS_FILE).unlink(missing_ok=True)
        with (directory / LOG_FILE).open("ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "mfllm.presentation.jobs", str(directory.resolve()),
                                        *(["--resume"] if resume else [])], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.project)
        self.children[job_id] = process
        job["launches"].append({"pid": process.pid, "started": time.time(), "resume": resume})
        _write_json(directory / JOB_FILE, job)

    def stop(self, job_id: str) -> None:
        """Terminate the job's process group (its executor workers with it); its runs resume from their last committed step."""
        directory = self.directory(job_id)
        job = _read_json(directory / JOB_FILE)
        if not job["launches"] or self.state(job_id)["state"] != "running":
            raise ValueError(f"job {job_id} is not running")
        pid = job["launches"][-1]["pid"]
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        child = self.children.pop(job_id, None)
        if child is not None:
            child.wait(timeout=30)
        else:
            deadline = time.time() + 30
            while _alive(pid, directory.resolve()) and time.time() < deadline:
                time.sleep(0.1)
        job["launches"][-1]["stopped"] = time.time()
        _write_json(directory / JOB_FILE, job)

    def _running(self, job_id: str, job: dict[str, Any], directory: Path) -> bool:
        child = self.children.get(job_id)
        if child is not None:
            return child.poll() is None
        return bool(job["launches"]) and _alive(job["launches"][-1]["pid"], directory.resolve())

    def state(self, job_id: str) -> dict[str, Any]:
        """The job with its state: running, completed, failed (with the error) or stopped (a process that ended without
        finishing: stopped from the page, or killed)."""
        directory = self.directory(job_id)
        job = _read_json(directory / JOB_FILE)
        status = _read_json(directory / STATUS_FILE)
        if self._running(job_id, job, directory):
            state = "running"
        elif status.get("state") in ("completed", "failed"):
            state = status["state"]
        else:
            state = "stopped"
        return {**job, "state": state, "error": status.get("error"), "result": status.get("result"),
                "finished": status.get("finished"), "directory": str(directory)}

    def list(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        ids = sorted((p.name for p in self.root.iterdir() if (p / JOB_FILE).is_file()), reverse=True)
        return [self.state(job_id) for job_id in ids]

    def runs(self, job_id: str) -> list[Path]:
        """The run directories a job has made so far."""
        output = self.directory(job_id) / OUTPUT
        return sorted(p.parent for p in output.rglob(MANIFEST)) if output.is_dir() else []


# ---------------------------------------------------------------- progress and estimates


def run_progress(run: Path) -> dict[str, Any]:
    """A run's progress from its directory: rollout actions written of those scheduled, and its status."""
    manifest = RunStore(run).manifest()
    actions = run / ACTIONS
    written = actions.read_bytes().count(b"\n") if actions.exists() else 0
    config = manifest["config"]
    return {"path": str(run), "event": manifest["event"]["event_id"], "method": config["method"], "seed": config["seed"],
            "status": manifest.get("status"), "done": written, "total": manifest.get("schedule", {}).get("rollout_agents") or 0,
            "throughput": (manifest.get("throughput") or {}).get("actions_per_second")}


def measured_rate(project: str | Path, policy_model: str) -> tuple[float | None, int]:
    """Actions/s of the project's completed runs with ``policy_model``, pooled as the dry run pools them
    (:func:`~mfllm.simulation.throughput.pooled_throughput`), and how many runs it is from."""
    from mfllm.simulation.throughput import completed_runs, pooled_throughput

    pooled = pooled_throughput(m["throughput"] for m in completed_runs(Path(project, JOBS))
                               if m.get("config", {}).get("policy_model") == policy_model)
    return (pooled["actions_per_second"], pooled["runs"]) if pooled else (None, 0)


ESTIMATED = ("agents", "policy_calls", "mean_field_calls", "policy_prompt_tokens", "mean_field_prompt_tokens")
"""The figures of the engine's estimate of a run that add up over runs."""


def _group(description: str, runs: int, plan: dict[str, Any]) -> dict[str, Any]:
    """``runs`` runs that each cost what the engine's estimate ``plan`` says."""
    return {"description": description, "runs": runs, "per_run": {key: plan[key] for key in ESTIMATED}}


def _groups(project: str | Path, name: str, config: Any) -> tuple[list[dict[str, Any]], str, str]:
    """The runs command ``name`` will make, as groups of runs of one engine estimate each; the policy model; a note."""
    from mfllm.data.loaders import load_event
    from mfllm.simulation.engine import BranchPoint, estimate

    pool: Any = None

    def engine(run: SimulationConfig, scenario: Any = None, branch: Any = None, event: Any = None) -> dict[str, Any]:
        nonlocal pool
        pool = pool or run.model_pool()
        event = event or load_event(run.data, run.event_id, run.data_format)[0]
        return estimate(run, event, pool.get(run.policy_model), scenario, branch)

    if name == "simulate":
        return [_group(f"{config.method} on {config.event_id or 'the first event'}", 1, engine(config))], config.policy_model, ""
    if name == "backtest":
        from mfllm.analysis.backtest import backtest_plans

        groups = [_group(f"{point}: {runs[0].method} on {runs[0].event_id}", len(runs), plan) for point, runs, plan in backtest_plans(config)]
        return groups, config.policy_model, "the evaluation also scores the real actions with the policy model (NLL): not counted"
    if name == "branch":
        from mfllm.analysis.branch import branch_plan

        plans = branch_plan(config)
        groups = []
        for arm in dict.fromkeys(arm for arm, *_ in plans):
            arm_runs = [(run, point) for a, run, _, point in plans if a == arm]
            run, point = arm_runs[0]
            groups.append(_group(f"{arm} arm from step {config.at}", len(arm_runs), engine(run, branch=point)))
        return groups, plans[0][1].policy_model, ""
    from mfllm.analysis.forecast import forecast_scenario

    personas = None
    if config.personas:
        from mfllm.data.population import load_personas

        personas = load_personas(config.personas)
    note = "" if config.horizon_agents else ("horizon in time: each member draws its own number of agents (at most max_agents); "
                                             "estimated from the first seed's draw")
    if name == "forecast":
        groups = []
        for event_id in config.resolved_events():
            event = load_event(config.data, event_id, config.data_format)[0]
            for warmup in config.origins_of(event):
                seed = config.seeds[0]
                run = config.simulation_config(event.event_id, warmup, seed)
                plan = engine(run, forecast_scenario(event, config, warmup, seed, personas), event=event)
                groups.append(_group(f"{event.event_id} from reaction {warmup}", len(config.seeds), plan))
        return groups, config.policy_model, note
    from mfllm.analysis.plan import candidate_count, halving_runs

    event = load_event(config.data, config.event_id, config.data_format)[0]
    warmup = config.warmup or len(event.reactions)
    run = config.simulation_config(event.event_id, warmup, 0)
    scenario = forecast_scenario(event, config, warmup, 0, personas)
    at = math.ceil(warmup / config.batch_size)
    runs = halving_runs(candidate_count(config), config.budget)
    groups = [_group("control, seed 0 (the shared prefix)", 1, engine(run, scenario, event=event)),
              _group(f"the other runs, branched at step {at}", runs - 1,
                     engine(run, scenario, BranchPoint(Path(config.output) / "runs" / "control" / "seed0", at), event=event))]
    return groups, config.policy_model, "; ".join(filter(None, (note, "a candidate's run is estimated as its control's (its post adds a "
                                                                      "few prompt tokens)")))


def estimate_job(project: str | Path, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The dry run of a job before it starts, generating nothing: the runs the command will make, in groups that cost
    the same, each with the engine's :func:`~mfllm.simulation.engine.estimate` of one run (agents, model calls, prompt
    tokens); the totals (each group's estimate times its runs); and the time at the pooled actions/s of the project's
    finished runs with the same policy model (None, an unknown speed, until one has finished)."""
    spec = command(name)
    parsed: Any = spec.config(**{k: v for k, v in config.items() if k not in spec.set_by_app},
                              **({"output": str(Path(project) / JOBS / "estimate")} if "output" in spec.set_by_app else {}))
    groups, policy_model, note = _groups(project, name, parsed)
    totals = {key: sum(g["runs"] * g["per_run"][key] for g in groups) for key in ESTIMATED}
    rate, basis = measured_rate(project, policy_model)
    return {"runs": sum(g["runs"] for g in groups), **totals, "model_calls": totals["policy_calls"] + totals["mean_field_calls"],
            "prompt_tokens": totals["policy_prompt_tokens"] + totals["mean_field_prompt_tokens"], "groups": groups,
            "seconds": totals["agents"] / rate if rate else None, "rate": rate, "rate_runs": basis, "policy_model": policy_model, "note": note}


# ---------------------------------------------------------------- the job's process


def main(argv: list[str] | None = None) -> int:
    """Run the job in JOB_DIR (the app starts this in a process of its own) and record how it ended."""
    parser = argparse.ArgumentParser(prog="python -m mfllm.presentation.jobs")
    parser.add_argument("directory", help="the job directory")
    parser.add_argument("--resume", action="store_true", help="continue the job's runs from their last committed step")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    job = _read_json(directory / JOB_FILE)
    _write_json(directory / STATUS_FILE, {"state": "running", "pid": os.getpid(), "started": time.time()})
    try:
        result = command(job["command"]).run(job_config(job, directory), directory / OUTPUT, args.resume)
    except Exception as exc:  # noqa: BLE001 - the job's boundary: every failure is recorded for the page, then re-raised
        _write_json(directory / STATUS_FILE, {"state": "failed", "finished": time.time(),
                                              "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"})
        raise
    _write_json(directory / STATUS_FILE, {"state": "completed", "finished": time.time(),
                                          "result": str(result.relative_to(directory)) if result else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
