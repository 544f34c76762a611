"""Counterfactual branches: continue a run from its committed prefix with and without a change.

``branch(BranchConfig(run=..., at=k, interventions=[file], seeds=[...]))`` writes, under its output:

- ``factual/seed<s>``: the parent's first ``k`` steps (copied byte for byte, no model call), then the
  parent's own dynamics under run seed ``s``;
- ``counterfactual/seed<s>``: the same prefix, then the same dynamics with the interventions of the
  change added, under the same run seed ``s``;
- ``branch.json``: the parent, the branch point, the seeds and the change.

Same seeds make paired differences meaningful: every model call's seed is derived from (run seed, step,
role[, attempt]), so at each step the two arms of a seed draw the same seeds (common random numbers); the
arms differ only where the change makes their prompts or contexts differ. A branch without a change on
the parent's seed reproduces the parent exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from mfllm.executors import ExecutorConfig, Task, run_tasks
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import BranchPoint, ProgressFactory
from mfllm.simulation.store import RunStore
from mfllm.simulation.sweep import completed_run, simulate_task

BRANCH_FILE = "branch.json"
ARMS = ("factual", "counterfactual")


class BranchConfig(ExecutorConfig):
    """A branch of a run: where it starts, what changes, the seeds of the ensemble, and the executor its runs go to."""

    run: str = Field(description="The parent run directory.")
    at: int = Field(ge=0, description="Branch point: the number of the parent's committed steps copied (the change may start here).")
    interventions: list[str] = Field(default=[], description="YAML files of the change (the counterfactual arm); "
                                                                       "none: the factual arm only.")
    seeds: list[int] | None = Field(default=None, description="Run seeds of the continuations, one pair of arms each (default: the parent's seed).")
    output: str | None = Field(default=None, description="Directory of the branch (default: <run>-branch<at>).")
    data: str | None = Field(default=None, description="Where the parent's event data lives now, if it moved.")

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path(f"{str(self.run).rstrip('/')}-branch{self.at}")


def branch_plan(config: BranchConfig) -> list[tuple[str, SimulationConfig, Path, BranchPoint]]:
    """(arm, run config, run directory, branch point) of every run of the branch."""
    parent = RunStore(config.run).manifest()
    base = SimulationConfig.recorded(parent["config"])
    if config.data:
        base = base.model_copy(update={"data": config.data})
    added = [str(Path(f)) for f in config.interventions]
    plan = []
    for arm in ARMS if added else ARMS[:1]:
        change = added if arm == "counterfactual" else []
        for seed in config.seeds or [base.seed]:
            run_config = SimulationConfig(**{**base.model_dump(), "seed": seed, "interventions": [*base.interventions, *change]})
            plan.append((arm, run_config, config.output_dir / arm / f"seed{seed}", BranchPoint(Path(config.run), config.at, tuple(change))))
    return plan


def _record(config: BranchConfig) -> dict[str, Any]:
    return {"parent": str(config.run), "at": config.at, "interventions": [str(Path(f)) for f in config.interventions],
            "seeds": config.seeds or [RunStore(config.run).manifest()["config"]["seed"]],
            "arms": list(ARMS if config.interventions else ARMS[:1])}


def _labelled(progress: ProgressFactory | None, prefix: str) -> ProgressFactory | None:
    """``progress`` with ``prefix`` before each bar's description."""
    if progress is None:
        return None
    return lambda total, description: progress(total, f"{prefix} {description}")


def branch(config: BranchConfig, pool: Any = None, resume: bool = False, progress: ProgressFactory | None = None) -> Path:
    """Run (or resume) every arm and seed of the branch, one task per run on the config's executor (in this
    process by default, sharing one model pool); returns the branch directory."""
    out = config.output_dir
    record = _record(config)
    path = out / BRANCH_FILE
    if path.exists():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if not resume:
            raise FileExistsError(f"{out} already holds a branch; pass resume=True (--resume) to continue it")
        if recorded != record:
            changed = sorted(k for k in record if recorded.get(k) != record[k])
            raise ValueError(f"{out}: cannot resume a branch with different settings (changed: {', '.join(changed)})")
    plan = branch_plan(config)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    executor = config.executor_settings()
    tasks = [Task(str(directory), simulate_task,
                  (run_config, directory, resume, None if executor.parallel else _labelled(progress, f"{arm} seed{run_config.seed}"), point),
                  run_config.pool_options())
             for arm, run_config, directory, point in plan if not (resume and completed_run(directory, run_config, point))]
    run_tasks(tasks, executor, pool=pool, progress=progress is not None)
    return out
