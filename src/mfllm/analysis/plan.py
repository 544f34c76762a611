"""Intervention search: which candidate intervention moves a label share most, evaluated by ensembles of branches.

A plan has a target (lower or raise the share of one label on one dimension over the forecast horizon, measured by a
labeller in use: ``belief`` and ``stance`` only with an LLM judge, whose validation figures the plan states), candidates
(intervention files: given, or a grid of texts x timing x audience expanded into files of the intervention schema) and
a budget in runs. The prefix is shared: one control run (no intervention, the first seed) warms up on the first
``W`` real reactions and forecasts past them (:mod:`mfllm.analysis.forecast`); every other run is a branch of it at the
end of the warm-up (:class:`~mfllm.simulation.engine.BranchPoint`: the prefix is copied, no model call), under seed
``s``: a candidate's run adds its file, the control run of seed ``s`` adds nothing. Runs of one seed share agents,
times and model-call seeds, so a candidate's effect is paired with the control of its seed.

The budget is spent by successive halving: in each of ``ceil(log2 n)`` rounds the surviving candidates get the same
number of new seeds (each new seed also needs its control run), then the better half by mean target share goes on;
the last round spends what is left. The ranking (by round reached, then mean target share) comes with percentile
bootstrap CIs over seeds of the mean share and of the paired effect against the control, and the model calls each
candidate cost.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mfllm.analysis.compare import CompareConfig, _interval
from mfllm.analysis.forecast import HorizonSettings, fixed_scenario, forecast_scenario
from mfllm.configuration import read_yaml
from mfllm.data.loaders import load_event
from mfllm.data.population import load_personas
from mfllm.data.schema import Event
from mfllm.evaluation.dimensions import Dimension, resolve_dimensions
from mfllm.evaluation.labellers import LabelItem, Labeller
from mfllm.executors import ExecutorConfig, Task, run_tasks
from mfllm.interfaces import LanguageModel
from mfllm.redaction import redacted
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import BranchPoint, ProgressFactory, simulate
from mfllm.simulation.interventions import Rule, _seconds as duration_seconds, load_interventions
from mfllm.simulation.store import RunStore
from mfllm.simulation.sweep import simulate_task

JUDGE_ONLY_DIMENSIONS = ("belief", "stance")
"""Dimensions no offline labeller measures well enough to plan on: a plan on them needs an LLM judge."""
PLAN_FILE = "plan.json"
CALLS_FILE = "model_calls.json"
"""Model calls of each run of a plan, kept across sessions so that a resumed plan reports its whole cost."""


class PlanConfig(HorizonSettings, ExecutorConfig):
    """A target, candidate interventions, and the budget of an intervention search."""

    event_id: str | None = Field(default=None, description="Event whose prefix is shared (default: the first event).")
    warmup: int | None = Field(default=None, ge=2, description="The shared prefix: the first W real reactions (default: all of them).")
    target_dimension: str = Field(description="Dimension of the target (sentiment, emotion, behaviour, ...; belief/stance need a judge).")
    target_label: str = Field(description="Label whose share over the horizon the plan moves (e.g. negative; share for reposts on behaviour).")
    direction: Literal["lower", "raise"] = Field(default="lower", description="Lower or raise the target label's share.")
    candidates: str | None = Field(default=None, description="YAML grid of candidates (kind, author, texts, timing, audiences; see README).")
    candidate_files: list[str] = Field(default=[], description="Intervention files, one candidate each.")
    budget: int = Field(ge=2, description="Runs the search may make, control runs included (each run: one seed of one arm).")
    dimensions_file: str | None = Field(default=None, description="YAML list of extra dimensions.")
    judge_mode: Literal["likelihood", "generate"] = Field(default="likelihood", description="How the judge labels (see `mfllm evaluate`).")
    seed: int = Field(default=0, description="Seed of the bootstrap.")
    output: str = Field(default="plan", description="Directory of the candidates, runs and report.")


# ---------------------------------------------------------------- candidates


class CandidateGrid(BaseModel):
    """Candidates as a product of texts x timing x audiences, of one kind."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["post", "statement"] = Field(default="post", description="An injected post or a statement to the mean field.")
    author: str = Field(default="official account", min_length=1, description="Who posts (posts only).")
    texts: list[str] = Field(min_length=1, description="Texts to try.")
    timing: list[int | str] = Field(default=[0], min_length=1, description="When, after the origin: a number of rollout steps, or a "
                                                                            "duration (2h, 30m).")
    audiences: list[Rule | None] = Field(default=[None], min_length=1, description="Who sees it (a profile rule; null: everyone).")


@dataclass(frozen=True)
class Candidate:
    """One candidate: its intervention file and a short description."""

    id: str
    file: str
    description: str


def _grid(path: Path) -> CandidateGrid:
    raw = read_yaml(path)
    try:
        return CandidateGrid.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "grid"
        raise ValueError(f"{path}: {where}: {first['msg'].removeprefix('Value error, ')}") from None


def expand_candidates(config: PlanConfig, event: Event, warmup_steps: int, out: Path) -> list[Candidate]:
    """The candidates of ``config``: its files as given, then the grid's product written as one intervention file each
    under ``out`` (timing after the origin made absolute: a step of the schedule, or a time after the source post)."""
    candidates = [Candidate(Path(f).stem, str(f), ", ".join(f"{i.kind} {i.id}" for i in load_interventions(f))) for f in config.candidate_files]
    if config.candidates:
        grid = _grid(Path(config.candidates))
        origin_offset = event.reactions[(config.warmup or len(event.reactions)) - 1].timestamp - event.source.timestamp
        out.mkdir(parents=True, exist_ok=True)
        for index, (text, timing, audience) in enumerate(itertools.product(grid.texts, grid.timing, grid.audiences)):
            name = f"c{index}"
            entry: dict[str, Any] = {"id": name, "kind": grid.kind, "text": text}
            if grid.kind == "post":
                entry["author"] = grid.author
            if isinstance(timing, int):
                entry["at_step"] = warmup_steps + timing
            else:
                seconds = duration_seconds(timing)
                entry["at_time"] = origin_offset + float(seconds or 0.0)
            if audience is not None:
                entry["audience"] = audience.model_dump(mode="json", by_alias=True, exclude_unset=True)
            path = out / f"{name}.yaml"
            path.write_text(yaml.safe_dump({"interventions": [entry]}, allow_unicode=True, sort_keys=False), encoding="utf-8")
            load_interventions(path)  # the schema's own check, with its one-line errors
            who = "everyone" if audience is None else json.dumps(entry["audience"], ensure_ascii=False)
            candidates.append(Candidate(name, str(path), f"{grid.kind} {text!r} at {timing} after the origin, to {who}"))
    ids = [c.id for c in candidates]
    if len(set(ids)) != len(ids) or "control" in ids:
        raise ValueError(f"candidate names must be distinct and not 'control' (got {', '.join(ids)})")
    if not candidates:
        raise ValueError("no candidate: give candidates (a grid file) or candidate_files")
    return candidates


# ---------------------------------------------------------------- the target


@dataclass(frozen=True)
class Target:
    dimension: Dimension
    label: str
    direction: str
    validation: list[dict[str, Any]]

    def better(self, share: float) -> float:
        """A sort key: smaller is better."""
        return share if self.direction == "lower" else -share

    def describe(self) -> str:
        return f"{self.direction} the share of {self.label!r} on {self.dimension.name}"


def resolve_target(config: PlanConfig, labeller: Labeller, language: str) -> Target:
    """The target, checked to be measurable by ``labeller`` in ``language`` (``belief``/``stance`` only with a judge)."""
    dimension = next(iter(resolve_dimensions([config.target_dimension], config.dimensions_file)))
    if config.target_label not in dimension.labels:
        raise ValueError(f"target_label {config.target_label!r} is not a label of {dimension.name} ({', '.join(dimension.labels)})")
    if dimension.name in JUDGE_ONLY_DIMENSIONS and not config.judge_model:
        raise ValueError(f"no labeller in use measures {dimension.name} well enough to plan on; give an LLM judge (--judge-model) "
                         "validated for it (`mfllm evaluate-labeller`)")
    if not labeller.covers(dimension, language):
        raise ValueError(f"no labeller in use measures {dimension.name} in {language!r}; give an LLM judge (--judge-model)")
    summary = [{k: record[k] for k in ("labeller", "data", "items", "accuracy", "macro_f1", "majority_accuracy") if k in record}
               for record in labeller.validations(dimension, language)]
    return Target(dimension, config.target_label, config.direction, summary)


# ---------------------------------------------------------------- runs and their cost


class MeteredPool:
    """A model pool that counts the model calls (generate and score) of each run made through it."""

    def __init__(self, pool: Any):
        self.pool = pool
        self._got: dict[int, tuple[LanguageModel, int]] = {}

    def get(self, spec: Any, adapter: str | None = None, role: str = "model") -> LanguageModel:
        model = self.pool.get(spec, adapter=adapter, role=role)
        self._got.setdefault(id(model), (model, _calls(model)))
        return model

    def start(self) -> None:
        """Count from now."""
        self._got = {}

    def calls(self) -> int:
        """Model calls since :meth:`start` by the models handed out since then."""
        return sum(_calls(model) - before for model, before in self._got.values())


def _calls(model: LanguageModel) -> int:
    return model.usage.generate_calls + model.usage.score_calls


@dataclass
class Arm:
    """A candidate (or the control): its runs by seed, their target shares and their model calls."""

    candidate: Candidate | None
    runs: dict[int, Path] = field(default_factory=dict)
    shares: dict[int, float] = field(default_factory=dict)
    calls: int = 0
    round_reached: int = 0

    @property
    def name(self) -> str:
        return self.candidate.id if self.candidate else "control"


class Planner:
    """Runs the arms of a plan from one shared prefix and measures each run's target share."""

    def __init__(self, config: PlanConfig, event: Event, target: Target, labeller: Labeller, pool: MeteredPool,
                 resume: bool, progress: ProgressFactory | None):
        self.config, self.event, self.target, self.labeller, self.pool = config, event, target, labeller, pool
        self.resume, self.progress = resume, progress
        self.warmup = config.warmup or len(event.reactions)
        self.at = math.ceil(self.warmup / config.batch_size)
        self.personas = load_personas(config.personas) if config.personas else None
        self.root = Path(config.output) / "runs"
        self.runs_made = 0
        self.ledger_path = Path(config.output) / CALLS_FILE
        self.ledger: dict[str, int] = json.loads(self.ledger_path.read_text(encoding="utf-8")) if self.ledger_path.exists() else {}

    @property
    def parent(self) -> Path:
        """The run whose prefix every other run copies: the control under seed 0 (the first run made)."""
        return self.root / "control" / "seed0"

    def _member(self, arm: Arm, seed: int) -> tuple[Path, SimulationConfig, BranchPoint | None, Any]:
        """Where the run of ``arm`` under ``seed`` goes, its config, its branch point and its scenario."""
        directory = self.root / arm.name / f"seed{seed}"
        files = [arm.candidate.file] if arm.candidate else []
        scenario = forecast_scenario(self.event, self.config, self.warmup, seed, self.personas)
        if not scenario.users:
            raise ValueError(f"under seed {seed} the arrival model draws no agent within {self.config.horizon_time} after the origin; "
                             "give a longer horizon_time, or horizon_agents")
        config = self.config.simulation_config(self.event.event_id, self.warmup, seed, files)
        branch = None if arm.candidate is None and seed == 0 else BranchPoint(self.parent, self.at, tuple(files))
        return directory, config, branch, scenario

    def run(self, arm: Arm, seed: int) -> None:
        """Make (or continue) the run of ``arm`` under ``seed`` in this process, and measure it (calls metered)."""
        directory, config, branch, scenario = self._member(arm, seed)
        label = f"{arm.name} seed{seed}"
        progress = self.progress
        self.pool.start()
        simulate(config, directory, pool=self.pool, resume=self.resume,
                 progress=(lambda total, text: progress(total, f"{label} {text}")) if progress else None,
                 scenario=partial(fixed_scenario, scenario), branch=branch)
        self._record(arm, seed, directory, self.pool.calls())

    def run_round(self, members: Sequence[tuple[Arm, int]]) -> None:
        """Make the runs of one round: here one after another, or as executor tasks on parallel workers (the
        shared prefix, the control under seed 0, first). Parallel runs' calls are read from their manifests."""
        executor = self.config.executor_settings()
        if not executor.parallel:
            for arm, seed in members:
                self.run(arm, seed)
            return
        is_parent = [arm.candidate is None and seed == 0 for arm, seed in members]
        for (arm, seed), parent in zip(members, is_parent):
            if parent:
                self.run(arm, seed)
        rest = [(arm, seed) for (arm, seed), parent in zip(members, is_parent) if not parent]
        tasks, directories = [], []
        for arm, seed in rest:
            directory, config, branch, scenario = self._member(arm, seed)
            tasks.append(Task(str(directory), simulate_task, (config, directory, self.resume, None, branch, partial(fixed_scenario, scenario)),
                              config.pool_options()))
            directories.append(directory)
        run_tasks(tasks, executor, progress=self.progress is not None)
        for (arm, seed), directory in zip(rest, directories):
            usage = RunStore(directory).manifest().get("usage", {})
            self._record(arm, seed, directory, sum(u.get("generate_calls", 0) + u.get("score_calls", 0) for u in usage.values() if u))

    def _record(self, arm: Arm, seed: int, directory: Path, calls: int) -> None:
        key = str(directory)
        self.ledger[key] = self.ledger.get(key, 0) + calls  # with the calls of earlier sessions of a resumed run
        self.ledger_path.write_text(json.dumps(self.ledger, indent=1), encoding="utf-8")
        arm.calls += self.ledger[key]
        arm.runs[seed] = directory
        arm.shares[seed] = self.share(directory)
        self.runs_made += 1

    def share(self, directory: Path) -> float:
        """The target label's share among the run's labelled actions after the prefix that others saw."""
        rows = [r for r in RunStore(directory).actions() if r["step"] >= self.at and "failure" not in r and "moderated" not in r]
        items = [LabelItem(r["sim_text"], self.event.source.text, self.event.language, r["sim_kind"]) for r in rows]
        labels = [label for label in self.labeller.label(items, self.target.dimension).labels if label is not None] if items else []
        return sum(label == self.target.label for label in labels) / len(labels) if labels else math.nan


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _check_budget(budget: int, candidates: int) -> None:
    if budget < candidates + 1:
        raise ValueError(f"a budget of {budget} runs cannot try {candidates} candidates: the first round needs {candidates + 1} runs "
                         "(one seed of each candidate, and its control run)")


def halving_schedule(candidates: int, budget: int) -> list[int]:
    """The new seeds of each round of successive halving over ``candidates`` within ``budget`` runs: each round spends an
    equal part of what is left on the surviving candidates and their control (the better half survives a round, the last
    round spends the rest). The runs it makes do not depend on the results, so the schedule is known before the first."""
    _check_budget(budget, candidates)
    rounds = max(1, math.ceil(math.log2(candidates)))
    surviving, made, schedule = candidates, 0, []
    for round_index in range(rounds):
        left = budget - made
        allotment = left // (rounds - round_index)
        arms_now = surviving + 1  # each new seed also needs its control run
        new_seeds = min(max(allotment // arms_now, 1 if round_index == 0 else 0), left // arms_now)
        schedule.append(new_seeds)
        made += new_seeds * arms_now
        if round_index < rounds - 1:
            surviving = math.ceil(surviving / 2)
    return schedule


def halving_runs(candidates: int, budget: int) -> int:
    """Runs successive halving makes over ``candidates`` within ``budget``, control runs included."""
    surviving, runs = candidates, 0
    for new_seeds in halving_schedule(candidates, budget):
        runs += new_seeds * (surviving + 1)
        surviving = math.ceil(surviving / 2)
    return runs


def successive_halving(planner: Planner, candidates: Sequence[Candidate], budget: int) -> tuple[list[Arm], Arm, list[dict[str, Any]]]:
    """Spend ``budget`` runs over the candidates by successive halving (:func:`halving_schedule`); returns (arms,
    control, rounds)."""
    arms = [Arm(c) for c in candidates]
    control = Arm(None)
    schedule = halving_schedule(len(arms), budget)
    surviving, seeds, history = list(arms), 0, []
    for round_index, new_seeds in enumerate(schedule):
        planner.run_round([(arm, seed) for seed in range(seeds, seeds + new_seeds) for arm in [control, *surviving]])
        seeds += new_seeds
        for arm in surviving:
            arm.round_reached = round_index + 1
        ranked = sorted(surviving, key=lambda a: planner.target.better(_mean(list(a.shares.values()))))
        history.append({"round": round_index + 1, "seeds": seeds, "candidates": [a.name for a in ranked],
                        "mean_share": [_mean(list(a.shares.values())) for a in ranked], "runs_so_far": planner.runs_made})
        surviving = ranked[:math.ceil(len(ranked) / 2)] if round_index < len(schedule) - 1 else ranked
    return arms, control, history


def candidate_count(config: PlanConfig) -> int:
    """How many candidates ``config`` names (its files and its grid's product), without writing them."""
    grid = _grid(Path(config.candidates)) if config.candidates else None
    return len(config.candidate_files) + (len(grid.texts) * len(grid.timing) * len(grid.audiences) if grid else 0)


# ---------------------------------------------------------------- the plan


@dataclass
class PlanResult:
    target: Target
    ranking: list[dict[str, Any]]
    control: dict[str, Any]
    rounds: list[dict[str, Any]]
    runs: int
    calls: int
    report: Path


def _ranking(arms: Sequence[Arm], control: Arm, target: Target, config: PlanConfig) -> list[dict[str, Any]]:
    intervals = CompareConfig(bootstrap=config.bootstrap, confidence=config.confidence, seed=config.seed)
    rows = []
    for arm in arms:
        seeds = sorted(s for s, v in arm.shares.items() if not math.isnan(v))
        share = _interval([arm.shares[s] for s in seeds], intervals)
        paired = [s for s in seeds if not math.isnan(control.shares.get(s, math.nan))]
        effect = _interval([arm.shares[s] - control.shares[s] for s in paired], intervals)
        rows.append({"candidate": arm.name, "description": arm.candidate.description if arm.candidate else "",
                     "file": arm.candidate.file if arm.candidate else "",
                     "round_reached": arm.round_reached, "seeds": len(arm.runs), "share": share.mean, "share_low": share.low,
                     "share_high": share.high, "effect": effect.mean, "effect_low": effect.low, "effect_high": effect.high,
                     "model_calls": arm.calls})
    rows.sort(key=lambda r: (-r["round_reached"], target.better(r["share"]) if not math.isnan(r["share"]) else math.inf))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def page_context(result: PlanResult, config: PlanConfig) -> dict[str, Any]:
    """What the plan page (``plan.html``) shows: the target and its labeller's validation, the ranking with its CIs (as
    interval plots too), and each round's mean target share per candidate."""
    from mfllm.presentation.charts import interval_plot, line_chart, series

    level = f"{config.confidence:.0%}"
    ranked = [{"label": f"{r['rank']}. {r['candidate']}", "group": r["candidate"], "mean": r["share"], "low": r["share_low"],
               "high": r["share_high"]} for r in result.ranking]
    effects = [{**row, "mean": r["effect"], "low": r["effect_low"], "high": r["effect_high"]} for row, r in zip(ranked, result.ranking)]
    names = list(dict.fromkeys(name for h in result.rounds for name in h["candidates"]))
    rounds = [h["round"] for h in result.rounds]
    by_round = {name: [dict(zip(h["candidates"], h["mean_share"])).get(name) for h in result.rounds] for name in names}
    return {"title": "mfllm plan", "target": result.target.describe(), "dimension": result.target.dimension.name,
            "validation": result.target.validation, "runs": result.runs, "budget": config.budget, "calls": result.calls,
            "control": result.control, "level": level, "ranking": result.ranking, "rounds": result.rounds,
            "share_plot": interval_plot(f"Target share by candidate ({level} CI over seeds)", ranked, f"share of {config.target_label!r}",
                                        percent=True),
            "effect_plot": interval_plot(f"Effect against the control, paired by seed ({level} CI)", effects,
                                         "candidate share − control share"),
            "round_chart": line_chart("Mean target share of each surviving candidate per round", "round", rounds,
                                      [series(name, by_round[name], index=i) for i, name in enumerate(names)], y_label=f"share of {config.target_label!r}", integer_x=True)}


RESUMABLE_CHANGES = ("budget", "device", "dtype", "engine", "bootstrap", "confidence", "seed")
"""Plan settings a resumed plan may change (a larger budget goes on with the runs already made)."""


def _check_record(record: Path, config: PlanConfig, resume: bool) -> None:
    """Refuse to start over a plan, or to resume one with different settings."""
    if not record.exists():
        return
    if not resume:
        raise FileExistsError(f"{record.parent} already holds a plan; pass resume=True (--resume) to continue it")
    recorded = json.loads(record.read_text(encoding="utf-8"))["settings"]
    mine = redacted(config.model_dump())
    changed = sorted(k for k in mine if k not in RESUMABLE_CHANGES and recorded.get(k) != mine[k])
    if changed:
        raise ValueError(f"{record.parent}: cannot resume a plan with different settings (changed: {', '.join(changed)})")


def plan(config: PlanConfig, pool: Any = None, resume: bool = False, progress: ProgressFactory | None = None,
         labeller: Labeller | None = None) -> PlanResult:
    """Search the candidates of ``config`` for the best at its target within its budget; writes ``plan.json``,
    ``ranking.csv`` and ``report/index.html`` under ``config.output``."""
    from mfllm.evaluation.config import EvaluationConfig
    from mfllm.evaluation.pipeline import build_labeller
    from mfllm.presentation.render import write_page

    out = Path(config.output)
    record = out / PLAN_FILE
    _check_record(record, config, resume)
    event, _ = load_event(config.data, config.event_id, config.data_format)
    if config.warmup is not None and not 0 < config.warmup <= len(event.reactions):
        raise ValueError(f"{config.data}: event {event.event_id} has {len(event.reactions)} reactions; the warm-up (the plan's origin) "
                         f"must be between 1 and that, got {config.warmup}")
    metered = MeteredPool(pool or config.model_pool())
    labeller = labeller or build_labeller(EvaluationConfig(dimensions=[config.target_dimension], dimensions_file=config.dimensions_file,
                                                           judge_model=config.judge_model, judge_mode=config.judge_mode, device=config.device),
                                          metered)
    target = resolve_target(config, labeller, event.language)
    planner = Planner(config, event, target, labeller, metered, resume, progress)
    candidates = expand_candidates(config, event, planner.at, out / "candidates")
    _check_budget(config.budget, len(candidates))
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"settings": redacted(config.model_dump())}, indent=1, ensure_ascii=False), encoding="utf-8")
    arms, control, rounds = successive_halving(planner, candidates, config.budget)
    ranking = _ranking(arms, control, target, config)
    control_row = {"share": _mean(list(control.shares.values())), "seeds": len(control.runs), "model_calls": control.calls}
    total_calls = control.calls + sum(a.calls for a in arms)
    result = PlanResult(target, ranking, control_row, rounds, planner.runs_made, total_calls, out / "report" / "index.html")
    result.report = write_page(out / "report", "plan.html", page_context(result, config))
    with (out / "ranking.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ranking[0]))
        writer.writeheader()
        writer.writerows(ranking)
    record.write_text(json.dumps({"settings": redacted(config.model_dump()), "target": target.describe(), "validation": target.validation,
                                  "budget": config.budget, "runs": planner.runs_made, "model_calls": total_calls, "control": control_row,
                                  "rounds": rounds, "ranking": ranking}, indent=1, ensure_ascii=False), encoding="utf-8")
    return result


__all__ = ["Candidate", "CandidateGrid", "PlanConfig", "PlanResult", "candidate_count", "expand_candidates", "halving_runs", "halving_schedule", "plan",
           "resolve_target", "successive_halving"]
