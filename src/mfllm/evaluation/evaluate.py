"""Evaluate one run: label real and simulated actions, compare their distributions, score real actions (NLL)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mfllm.data.loaders import load_event
from mfllm.data.schema import Event
from mfllm.evaluation.dimensions import Dimension
from mfllm.evaluation.labellers import LabelItem, Labeller
from mfllm.evaluation.metrics import (DEFAULT_ALPHA, CorrectedMetrics, DimensionMetrics, compare_streams, corrected_comparison,
                                     pooled_confusion, window_ids)
from mfllm.interfaces import LanguageModel
from mfllm.prompts import policy_prompt
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import make_context
from mfllm.simulation.store import RunStore


@dataclass
class RunEvaluation:
    run: str
    event_id: str
    method: str
    seed: int
    agents: int
    window_scheme: str
    alpha: float
    labeller: str
    dimensions: dict[str, DimensionMetrics] = field(default_factory=dict)
    unlabelled: dict[str, dict[str, Any]] = field(default_factory=dict)
    nll: float | None = None
    nll_per_action: float | None = None
    labels: list[dict[str, Any]] = field(default_factory=list)
    # per dimension: the labeller that labelled it, its note and its stored validations against human labels
    validity: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per dimension: raw and confusion-corrected KL (present where the labeller's validation covers every label)
    corrected: dict[str, CorrectedMetrics] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Flat metrics (no per-window series, no labels), for tables."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("run", "event_id", "method", "seed", "agents", "window_scheme",
                                                              "alpha", "labeller", "nll", "nll_per_action")}
        for name, metrics in self.dimensions.items():
            for key in ("kl", "js", "wasserstein", "dtw", "pooled_kl", "micro_f1", "macro_f1"):
                out[f"{name}.{key}"] = getattr(metrics, key)
        for name, corrected in self.corrected.items():
            out[f"{name}.kl_corrected"] = corrected.kl_corrected
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["dimensions"] = {k: asdict(v) for k, v in self.dimensions.items()}
        return data


def label_run(rows: Sequence[dict[str, Any]], topic: str, language: str, labeller: Labeller, dimension: Dimension
              ) -> tuple[list[str | None], list[str | None], dict[str, Any]]:
    """Real and simulated labels for every row (aligned by position), with the reasons for gaps."""
    items = [LabelItem(r["real_text"], topic, language, r["real_kind"]) for r in rows]
    items += [LabelItem(r["sim_text"], topic, language, r["sim_kind"]) for r in rows]
    result = labeller.label(items, dimension)
    n = len(rows)
    reasons: dict[str, int] = {}
    for reason in result.failures.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    failed = {"real": [rows[i]["position"] for i in result.failures if i < n],
              "sim": [rows[i - n]["position"] for i in result.failures if i >= n], "reasons": reasons}
    return result.labels[:n], result.labels[n:], failed


def contexts_by_step(store: RunStore, config: SimulationConfig, event: Any) -> dict[int, str | None]:
    """The context each rollout step's agents saw, restored from the journal's saved states."""
    provider = make_context(config, event, None)
    contexts: dict[int, str | None] = {}
    previous: dict[str, Any] | None = None
    for step in store.committed_steps():
        if previous is not None:
            provider.load_state_dict(previous)
        contexts[step["step"]] = provider.context() if previous is not None else None
        previous = step["context_state"]
    return contexts


def policy_nll(store: RunStore, policy: LanguageModel, event: Event | None = None) -> tuple[float, float]:
    """(token-weighted mean NLL per token, mean over actions of per-token NLL) of the real actions,
    teacher-forced under ``policy`` with the same prompt (topic, persona, simulated context) the
    simulated agent had. Only the action's tokens count."""
    manifest = store.manifest()
    config = SimulationConfig(**manifest["config"])
    if event is None:
        event, _ = load_event(config.data, config.event_id, config.data_format)
    contexts = contexts_by_step(store, config, event)
    rows = store.actions()
    prompts = [policy_prompt(event.source.text, r["persona"], event.language, config.method, contexts[r["step"]]) for r in rows]
    scores = policy.score(prompts, [r["real_text"] for r in rows])
    tokens = sum(s.num_tokens for s in scores)
    per_action = [s.mean_nll for s in scores if s.num_tokens]
    return -sum(s.logprob for s in scores) / max(tokens, 1), sum(per_action) / max(len(per_action), 1)


def evaluate_run(run_dir: str | Path, labeller: Labeller, dimensions: Sequence[Dimension], window_scheme: str = "step",
                 alpha: float = DEFAULT_ALPHA, policy: LanguageModel | None = None) -> RunEvaluation:
    store = RunStore(run_dir)
    manifest = store.manifest()
    rows = store.actions()
    if not rows:
        raise ValueError(f"{run_dir}: the run has no simulated actions yet")
    config = manifest["config"]
    event, _ = load_event(config["data"], config["event_id"], config["data_format"])
    windows = window_ids(rows, window_scheme)
    evaluation = RunEvaluation(str(run_dir), manifest["event"]["event_id"], config["method"], config["seed"], len(rows),
                               window_scheme, alpha, labeller.name)
    per_row: list[dict[str, Any]] = [{"position": r["position"], "step": r["step"], "window": w} for r, w in zip(rows, windows)]
    for dimension in dimensions:
        real, sim, failed = label_run(rows, event.source.text, event.language, labeller, dimension)
        evaluation.unlabelled[dimension.name] = failed
        for entry, r_label, s_label in zip(per_row, real, sim):
            entry[f"{dimension.name}.real"], entry[f"{dimension.name}.sim"] = r_label, s_label
        chosen = labeller.chosen(dimension, event.language)
        records = chosen.validations(dimension, event.language) if chosen is not None else []
        evaluation.validity[dimension.name] = {"labeller": chosen.name if chosen is not None else None, "language": event.language,
                                               "note": getattr(chosen, "note", ""), "validations": records}
        if any(label is not None for label in real) and any(label is not None for label in sim):
            evaluation.dimensions[dimension.name] = compare_streams(real, sim, windows, dimension, alpha)
            confusion = pooled_confusion(records, dimension)
            corrected = corrected_comparison(real, sim, windows, dimension, confusion, alpha) if confusion is not None else None
            if corrected is not None:
                evaluation.corrected[dimension.name] = corrected
    evaluation.labels = per_row
    if policy is not None:
        evaluation.nll, evaluation.nll_per_action = policy_nll(store, policy, event)
    return evaluation
