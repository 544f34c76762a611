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
import html
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
from mfllm.evaluation.report import _fmt, _img, _pyplot, mark_steps
from mfllm.simulation.engine import ProgressFactory
from mfllm.simulation.store import RunStore

ARM_COLOURS = {"real": "black", "factual": "tab:blue", "counterfactual": "tab:red"}


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


def trajectory_figure(comparison: DimensionComparison, marks: Sequence[tuple[int, str]], path: Path) -> Path:
    """Each label's share per step: the real continuation, and each arm's ensemble mean with its 5-95% band."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(comparison.labels), figsize=(3.2 * len(comparison.labels), 3.0), sharey=True, squeeze=False)
    x = np.array(comparison.steps)
    for k, label in enumerate(comparison.labels):
        ax = axes[0][k]
        if comparison.real is not None:
            ax.plot(x, comparison.real[:, k], color=ARM_COLOURS["real"], linewidth=2, label="real")
        for arm, runs in comparison.shares.items():
            mean, low, high = _band(list(runs.values()), k)
            ax.plot(x, mean, color=ARM_COLOURS[arm], label=f"{arm} (n={len(runs)} seeds)")
            ax.fill_between(x, low, high, color=ARM_COLOURS[arm], alpha=0.2)
        mark_steps(ax, marks)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of actions")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{comparison.dimension}: label shares per step by arm (bands: 5-95% of the seed ensemble)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def effect_figure(comparisons: Sequence[DimensionComparison], path: Path, confidence: float) -> Path | None:
    """Difference in pooled shares (counterfactual minus factual) per label, with bootstrap CIs."""
    rows = [(c.dimension, label, d) for c in comparisons for label, d in zip(c.labels, c.difference)]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows)), 3.4))
    means = np.array([d.mean for _, _, d in rows])
    errors = np.array([[0.0 if math.isnan(d.low) else d.mean - d.low for _, _, d in rows],
                       [0.0 if math.isnan(d.high) else d.high - d.mean for _, _, d in rows]])
    ax.bar(range(len(rows)), means, yerr=errors, color=[ARM_COLOURS["counterfactual"] if m >= 0 else ARM_COLOURS["factual"] for m in means],
           capsize=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [f"{dim}:{label}" for dim, label, _ in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("share difference")
    ax.set_title(f"Counterfactual minus factual share ({confidence:.0%} bootstrap CI over seeds)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    """Compare a branch's arms and write ``compare.json``, ``effects.csv``, ``figures/*.png`` and ``index.html``."""
    config = config or CompareConfig()
    comparison = compare_branch(branch_dir, config, labeller, progress)
    out = Path(output)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(comparison.to_json(), indent=1, ensure_ascii=False), encoding="utf-8")
    _write_effects(comparison, out / "effects.csv")
    at = int(comparison.branch["at"])
    names: dict[int, list[str]] = {at: ["branch"]}
    for item in comparison.interventions:
        if int(item["start_step"]) >= at:
            names.setdefault(int(item["start_step"]), []).append(str(item["id"]))
    marks = [(step, ", ".join(labels)) for step, labels in sorted(names.items())]
    figures = [trajectory_figure(d, marks, figures_dir / f"shares_{d.dimension}.png") for d in comparison.dimensions]
    effect = effect_figure(comparison.dimensions, figures_dir / "effects.png", config.confidence)
    level = f"{config.confidence:.0%}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mfllm branch comparison</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td.t{text-align:left}img{max-width:100%}</style></head><body>",
        "<h1>What if: counterfactual vs factual continuation</h1>",
        f"<p>Parent run <code>{html.escape(str(comparison.branch['parent']))}</code>, branched at step {at}; "
        f"seeds {', '.join(map(str, comparison.seeds))} (each arm of a seed draws the same model-call seeds). "
        f"Shares are over the continuation (steps from {at} on); intervals are {level} percentile bootstrap CIs over seeds "
        f"(none with one seed). Actions removed by moderation: "
        f"{', '.join(f'{arm} {n}' for arm, n in comparison.moderated.items())}"
        f"{' (counted in shares)' if config.include_moderated else ' (left out of shares)'}.</p>",
        "<h2>Interventions</h2><table><tr><th>id</th><th>kind</th><th>from step</th><th>until step</th><th>what</th></tr>",
    ]
    for i in comparison.interventions:
        spec = i["spec"]
        what = spec.get("text") or json.dumps(spec.get("rule"), ensure_ascii=False)
        parts.append(f"<tr><td class=t>{html.escape(str(i['id']))}</td><td class=t>{spec['kind']}</td><td>{i['start_step']}</td>"
                     f"<td>{'' if i['end_step'] is None else i['end_step']}</td><td class=t>{html.escape(str(what))}</td></tr>")
    parts.append(f"</table><h2>Effects</h2><table><tr><th>dimension</th><th>effect</th><th>label</th><th>mean</th><th>{level} CI</th></tr>")
    for d in comparison.dimensions:
        effects = [("share difference", label, x) for label, x in zip(d.labels, d.difference)]
        effects += [("KL(counterfactual‖factual)", "", d.kl_between_arms)] if d.kl_between_arms else []
        effects += [(f"KL(real‖{arm})", "", x) for arm, x in d.fidelity.items()]
        parts.extend(f"<tr><td class=t>{d.dimension}</td><td class=t>{name}</td><td class=t>{html.escape(label)}</td><td>{_fmt(x.mean)}</td>"
                     f"<td>{_fmt(x.low)} – {_fmt(x.high)}</td></tr>" for name, label, x in effects)
    parts.append("</table><h2>Figures</h2>")
    parts.extend(_img(f) for f in [*([effect] if effect else []), *figures])
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index
