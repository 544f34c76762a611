"""Compare the arms of a branch (see :mod:`mfllm.analysis.branch`): label-share trajectories with ensemble
bands, paired effect sizes with bootstrap CIs, and the real continuation where the rows carry one.

For each dimension and seed s, over the continuation (steps from the branch point on):

- shares: the share of each label among an arm's labelled actions, per step and pooled;
- difference in shares: pooled share in the counterfactual arm minus the factual arm, per label, paired by seed;
- KL between arms: KL(counterfactual || factual) of the pooled label distributions, smoothed with ``alpha``;
- fidelity: KL(real || arm) of the pooled distributions, where rows carry the real reaction of their slot.

Means over seeds come with percentile bootstrap CIs over seeds (none with a single seed). Actions removed
by a moderation are left out of an arm's shares (they are not seen) unless ``include_moderated``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import Field

from mfllm.analysis.branch import BRANCH_FILE
from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.dimensions import Dimension, resolve_dimensions
from mfllm.evaluation.labellers import LabelItem, Labeller
from mfllm.evaluation.metrics import counts, kl_divergence, smoothed
from mfllm.simulation.engine import ProgressFactory
from mfllm.simulation.store import RunStore

class CompareConfig(EvaluationConfig):
    """How the arms of a branch are labelled and compared."""

    bootstrap: int = Field(default=2000, ge=100, description="Bootstrap resamples of the seeds for each CI.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="Confidence level of the intervals.")
    include_moderated: bool = Field(default=False, description="Count actions a moderation removed in the arm's shares.")
    seed: int = Field(default=0, description="Seed of the bootstrap.")


@dataclass
class Interval:
    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high}


@dataclass
class DimensionComparison:
    """One dimension: per-step shares of every run, pooled effects over the continuation."""

    dimension: str
    labels: list[str]
    steps: list[int]
    shares: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    """arm -> seed -> (steps x labels) shares (NaN where a step has no labelled action)."""
    real: np.ndarray | None = None
    """(steps x labels) shares of the real continuation, when rows carry it."""
    difference: list[Interval] = field(default_factory=list)
    """Per label: pooled counterfactual share minus factual share, paired by seed."""
    kl_between_arms: Interval | None = None
    fidelity: dict[str, Interval] = field(default_factory=dict)
    """arm -> KL(real || arm) of the pooled distributions."""

    def to_json(self) -> dict[str, Any]:
        def series(matrix: np.ndarray) -> list[list[float | None]]:
            return [[None if math.isnan(v) else float(v) for v in row] for row in matrix]

        return {"dimension": self.dimension, "labels": self.labels, "steps": self.steps,
                "shares": {arm: {str(seed): series(m) for seed, m in runs.items()} for arm, runs in self.shares.items()},
                "real": series(self.real) if self.real is not None else None,
                "difference": {label: interval.as_dict() for label, interval in zip(self.labels, self.difference)},
                "kl_between_arms": self.kl_between_arms.as_dict() if self.kl_between_arms else None,
                "fidelity": {arm: interval.as_dict() for arm, interval in self.fidelity.items()}}


@dataclass
class Comparison:
    branch: dict[str, Any]
    interventions: list[dict[str, Any]]
    dimensions: list[DimensionComparison]
    moderated: dict[str, int]
    seeds: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"branch": self.branch, "interventions": self.interventions, "moderated_actions": self.moderated, "seeds": self.seeds,
                "dimensions": [d.to_json() for d in self.dimensions]}


def _interval(values: Sequence[float], config: CompareConfig) -> Interval:
    """Mean over seeds with a percentile bootstrap CI (NaN bounds for fewer than two seeds)."""
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    mean = float(data.mean()) if len(data) else math.nan
    if len(data) < 2:
        return Interval(mean, math.nan, math.nan)
    if np.allclose(data, data[0]):
        return Interval(mean, mean, mean)
    result = bootstrap((data,), np.mean, n_resamples=config.bootstrap, confidence_level=config.confidence, method="percentile",
                       random_state=np.random.default_rng(config.seed))
    return Interval(mean, float(result.confidence_interval.low), float(result.confidence_interval.high))


def _labels(labeller: Labeller, texts: Sequence[tuple[str, str | None]], topic: str, language: str, dimension: Dimension) -> list[str | None]:
    return labeller.label([LabelItem(text, topic, language, kind) for text, kind in texts], dimension).labels


def _step_shares(labels: Sequence[str | None], steps_of_rows: Sequence[int], steps: Sequence[int], dimension: Dimension) -> np.ndarray:
    matrix = np.full((len(steps), len(dimension.labels)), np.nan)
    for i, step in enumerate(steps):
        c = counts([label for label, s in zip(labels, steps_of_rows) if s == step], dimension)
        if c.sum():
            matrix[i] = c / c.sum()
    return matrix


def compare_branch(branch_dir: str | Path, config: CompareConfig | None = None, labeller: Labeller | None = None,
                   progress: ProgressFactory | None = None) -> Comparison:
    """Label every run of the branch at ``branch_dir`` (with ``labeller``, default the chain ``config`` names) and
    compute shares and paired effects per dimension; ``progress`` shows the actions labelled."""
    from mfllm.data.loaders import load_event
    from mfllm.evaluation.pipeline import build_labeller

    config = config or CompareConfig()
    root = Path(branch_dir)
    record_path = root / BRANCH_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"{root}: not a branch directory (no {BRANCH_FILE}; `mfllm branch` writes one)")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    at, seeds, arms = int(record["at"]), list(record["seeds"]), list(record["arms"])
    stores = {arm: {seed: RunStore(root / arm / f"seed{seed}") for seed in seeds} for arm in arms}
    for arm in arms:
        for seed, store in stores[arm].items():
            if not store.exists() or store.manifest().get("status") != "completed":
                raise ValueError(f"{store.root}: run missing or unfinished; finish the branch first (`mfllm branch ... --resume`)")
    manifest = stores[arms[-1]][seeds[0]].manifest()
    topic_store = stores[arms[0]][seeds[0]]
    labeller = labeller or build_labeller(config)
    dimensions = resolve_dimensions(config.dimensions, config.dimensions_file)
    run_config = manifest["config"]
    event, _ = load_event(run_config["data"], run_config["event_id"], run_config["data_format"])
    rows = {arm: {seed: [r for r in stores[arm][seed].actions() if r["step"] >= at] for seed in seeds} for arm in arms}
    moderated = {arm: sum("moderated" in r for runs in rows[arm].values() for r in runs) for arm in arms}
    visible = {arm: {seed: [r for r in runs if "failure" not in r and (config.include_moderated or "moderated" not in r)]
                     for seed, runs in rows[arm].items()} for arm in arms}
    steps = sorted({r["step"] for r in topic_store.actions() if r["step"] >= at})
    real_rows = [r for r in rows[arms[0]][seeds[0]] if r.get("real_text") is not None]
    per_dimension = sum(len(runs) for arm in arms for runs in visible[arm].values()) + len(real_rows)
    bar = progress(per_dimension * len(dimensions), "labelling the arms") if progress else None
    results = []
    for dimension in dimensions:
        comparison = DimensionComparison(dimension.name, list(dimension.labels), steps)
        pooled: dict[str, dict[int, np.ndarray]] = {}
        for arm in arms:
            comparison.shares[arm], pooled[arm] = {}, {}
            for seed in seeds:
                runs = visible[arm][seed]
                labels = _labels(labeller, [(r["sim_text"], r["sim_kind"]) for r in runs], event.source.text, event.language, dimension)
                comparison.shares[arm][seed] = _step_shares(labels, [r["step"] for r in runs], steps, dimension)
                pooled[arm][seed] = counts(labels, dimension)
                if bar is not None:
                    bar.update(len(runs))
        if not any(c.sum() for arm in arms for c in pooled[arm].values()):  # no labeller covers this dimension
            if bar is not None:
                bar.update(len(real_rows))
            continue
        real_counts = None
        if real_rows:
            real_labels = _labels(labeller, [(r["real_text"], r["real_kind"]) for r in real_rows], event.source.text, event.language, dimension)
            if bar is not None:
                bar.update(len(real_rows))
            if any(label is not None for label in real_labels):
                comparison.real = _step_shares(real_labels, [r["step"] for r in real_rows], steps, dimension)
                real_counts = counts(real_labels, dimension)
        if "counterfactual" in arms:
            shares = {arm: {s: c / c.sum() if c.sum() else np.full(len(c), np.nan) for s, c in pooled[arm].items()} for arm in arms}
            paired = [s for s in seeds if pooled["factual"][s].sum() and pooled["counterfactual"][s].sum()]
            comparison.difference = [_interval([shares["counterfactual"][s][k] - shares["factual"][s][k] for s in paired], config)
                                     for k in range(len(dimension.labels))]
            comparison.kl_between_arms = _interval([kl_divergence(smoothed(pooled["counterfactual"][s], config.alpha),
                                                                  smoothed(pooled["factual"][s], config.alpha)) for s in paired], config)
        if real_counts is not None and real_counts.sum():
            comparison.fidelity = {arm: _interval([kl_divergence(smoothed(real_counts, config.alpha), smoothed(pooled[arm][s], config.alpha))
                                                   for s in seeds if pooled[arm][s].sum()], config) for arm in arms}
        results.append(comparison)
    if bar is not None:
        bar.close()
    interventions = manifest.get("interventions", {}).get("scheduled", [])
    return Comparison(record, interventions, results, moderated, seeds)


def _band(matrices: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds of label ``k``'s share per step, and the 5-95% range of the ensemble."""
    stacked = np.stack([m[:, k] for m in matrices])
    with np.errstate(all="ignore"):
        mean = np.nanmean(stacked, axis=0) if np.isfinite(stacked).any() else np.full(stacked.shape[1], np.nan)
        low, high = (np.nanpercentile(stacked, q, axis=0) if np.isfinite(stacked).any() else mean for q in (5, 95))
    return mean, low, high


def share_charts(comparison: DimensionComparison, marks: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
    """One chart per label: its share per step in the real continuation and in each arm (ensemble mean, 5-95% band)."""
    from mfllm.presentation.charts import line_chart, series

    charts = []
    for k, label in enumerate(comparison.labels):
        lines = [series("real", comparison.real[:, k], width=2.5)] if comparison.real is not None else []
        for arm, runs in comparison.shares.items():
            mean, low, high = _band(list(runs.values()), k)
            lines.append(series(f"{arm} (n={len(runs)} seeds)", mean, low=low, high=high))
        charts.append(line_chart(f"{comparison.dimension}: {label}", "step", comparison.steps, lines, marks=marks, integer_x=True,
                                 note="share per step; bands: 5-95% of the seeds"))
    return charts


def page_context(comparison: Comparison, config: CompareConfig) -> dict[str, Any]:
    """What the comparison page (``compare.html``) shows: the branch, its interventions, the effects with CIs and
    the share charts."""
    from mfllm.presentation.charts import interval_plot

    at = int(comparison.branch["at"])
    names: dict[int, list[str]] = {at: ["branch"]}
    for item in comparison.interventions:
        if int(item["start_step"]) >= at:
            names.setdefault(int(item["start_step"]), []).append(str(item["id"]))
    marks = [(step, ", ".join(labels)) for step, labels in sorted(names.items())]
    interventions = [{"id": i["id"], "kind": i["spec"]["kind"], "start_step": i["start_step"], "end_step": i["end_step"],
                      "what": i["spec"].get("text") or json.dumps(i["spec"].get("rule"), ensure_ascii=False)} for i in comparison.interventions]
    effects = []
    for d in comparison.dimensions:
        effects += [{"dimension": d.dimension, "effect": "share difference", "label": label, **x.as_dict()} for label, x in zip(d.labels, d.difference)]
        effects += [{"dimension": d.dimension, "effect": "KL(counterfactual‖factual)", "label": "", **d.kl_between_arms.as_dict()}] \
            if d.kl_between_arms else []
        effects += [{"dimension": d.dimension, "effect": f"KL(real‖{arm})", "label": "", **x.as_dict()} for arm, x in d.fidelity.items()]
    level = f"{config.confidence:.0%}"
    differences = [{"label": f"{e['dimension']}: {e['label']}", "mean": e["mean"], "low": e["ci_low"], "high": e["ci_high"],
                    "group": "counterfactual" if e["mean"] >= 0 else "factual"} for e in effects if e["effect"] == "share difference"]
    return {"title": "mfllm branch comparison", "branch": comparison.branch, "seeds": comparison.seeds, "level": level,
            "moderated": comparison.moderated, "include_moderated": config.include_moderated, "interventions": interventions,
            "effects": effects,
            "difference_plot": interval_plot(f"Counterfactual minus factual share ({level} bootstrap CI over seeds)", differences,
                                             "share difference (counterfactual − factual)") if differences else None,
            "dimensions": [{"name": d.dimension, "charts": share_charts(d, marks)} for d in comparison.dimensions]}


def _write_effects(comparison: Comparison, path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dimension", "effect", "label", "mean", "ci_low", "ci_high"])
        for d in comparison.dimensions:
            for label, interval in zip(d.labels, d.difference):
                writer.writerow([d.dimension, "share_difference", label, interval.mean, interval.low, interval.high])
            if d.kl_between_arms:
                writer.writerow([d.dimension, "kl_counterfactual_factual", "", *d.kl_between_arms.as_dict().values()])
            for arm, interval in d.fidelity.items():
                writer.writerow([d.dimension, f"kl_real_{arm}", "", *interval.as_dict().values()])


def write_comparison(branch_dir: str | Path, output: str | Path, config: CompareConfig | None = None,
                     labeller: Labeller | None = None, progress: ProgressFactory | None = None) -> Path:
    """Compare a branch's arms and write ``compare.json``, ``effects.csv`` and the page ``index.html`` (with ``page.json``)."""
    from mfllm.presentation.render import write_page

    config = config or CompareConfig()
    comparison = compare_branch(branch_dir, config, labeller, progress)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(comparison.to_json(), indent=1, ensure_ascii=False), encoding="utf-8")
    _write_effects(comparison, out / "effects.csv")
    return write_page(out, "compare.html", page_context(comparison, config))
