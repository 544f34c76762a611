"""Evaluate one run: label real and simulated actions, compare their distributions, score real actions (NLL)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mfllm.data.loaders import load_event
from mfllm.data.schema import Event
from mfllm.evaluation.dimensions import Dimension
from mfllm.evaluation.information_gain import information_gain
from mfllm.evaluation.labellers import LabelItem, Labeller
from mfllm.evaluation.realism import realism
from mfllm.evaluation.metrics import (DEFAULT_ALPHA, CorrectedMetrics, DimensionMetrics, compare_streams, corrected_comparison,
                                     pooled_confusion, window_ids)
from mfllm.interfaces import LanguageModel
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import make_context
from mfllm.simulation.interventions import scheduled_from_manifest
from mfllm.simulation.methods import get_method, method_names
from mfllm.simulation.step import Agent, StepContext
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
    failed_actions: int = 0
    """Rows whose generation failed (no action): left out of every distribution."""
    unpaired_actions: int = 0
    """Rows with no real reaction beside them (e.g. agents drawn from a population): nothing to compare."""
    information_gain: dict[str, dict[str, Any]] | None = None
    """Per action group, nats per token the method's context saves the policy on the real next actions
    (see :mod:`mfllm.evaluation.information_gain`)."""
    # per dimension: the labeller that labelled it, its note and its stored validations against human labels
    validity: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per dimension: raw and confusion-corrected KL (present where the labeller's validation covers every label)
    corrected: dict[str, CorrectedMetrics] = field(default_factory=dict)
    circular: list[str] = field(default_factory=list)
    """Dimensions labelled by a labeller the method's context is built from: not an independent measure of it."""
    realism: dict[str, Any] = field(default_factory=dict)
    """Whether the simulated texts read like the real ones (see :mod:`mfllm.evaluation.realism`)."""

    def summary(self) -> dict[str, Any]:
        """Flat metrics (no per-window series, no labels), for tables."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("run", "event_id", "method", "seed", "agents", "window_scheme",
                                                              "alpha", "labeller", "nll", "nll_per_action",
                                                              "failed_actions", "unpaired_actions")}
        for name, metrics in self.dimensions.items():
            for key in ("kl", "js", "wasserstein", "dtw", "pooled_kl", "micro_f1", "macro_f1"):
                out[f"{name}.{key}"] = getattr(metrics, key)
        for group, gain in (self.information_gain or {}).items():
            out[f"information_gain.{group}"] = gain["gain"]
        for name, corrected in self.corrected.items():
            out[f"{name}.kl_corrected"] = corrected.kl_corrected
        for name, value in self.realism.items():
            out[f"realism.{name}"] = value
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


def shown_contexts(store: RunStore, config: SimulationConfig, event: Event) -> dict[int, str]:
    """The context text each step's agents saw: the recorded mean-field history where the run keeps one
    (the entry after step s is what step s + 1 saw), else the context restored from the journal."""
    history = store.mean_field_history()
    if history:
        return {entry["step"] + 1: entry.get("text") or "" for entry in history}
    return {step: context.context_block() or "" for step, context in contexts_by_step(store, config, event).items()}


def contexts_by_step(store: RunStore, config: SimulationConfig, event: Event) -> dict[int, StepContext]:
    """The shared context each step's agents saw, restored from the journal's saved states (no model needed),
    with the statements of interventions starting at the step folded in as the engine did."""
    contexts: dict[int, StepContext] = {}
    previous: dict[str, Any] | None = None
    scheduled = scheduled_from_manifest(store.manifest())
    for step in store.committed_steps():
        provider = make_context(config, event, None)
        if previous is not None:
            provider.load_state_dict(previous)
        contexts[step["step"]] = StepContext(event, provider)
        active = [s for s in scheduled if s.active(step["step"])]
        if active:
            contexts[step["step"]].begin(step["step"], active)
        previous = step["context_state"]
    return contexts


def policy_nll(store: RunStore, policy: LanguageModel, event: Event | None = None) -> tuple[float, float]:
    """(token-weighted mean NLL per token, mean over actions of per-token NLL) of the real actions,
    teacher-forced under ``policy`` with the same prompt (topic, persona, simulated context, the
    interventions that reached the agent) the simulated agent had. The action is scored as the policy
    writes it (kind marker, then text), so the kind is predicted too. Only the action's tokens count;
    rows without a real reaction are skipped."""
    manifest = store.manifest()
    config = SimulationConfig(**manifest["config"])
    if event is None:
        event, _ = load_event(config.data, config.event_id, config.data_format)
    contexts = contexts_by_step(store, config, event)
    scheduled = scheduled_from_manifest(manifest)
    rows = [r for r in store.actions() if r.get("real_text") is not None]
    prompts = []
    for r in rows:
        active = [s for s in scheduled if s.active(r["step"])]
        if active:
            agent = Agent.of(event.reactions[r["position"]], r["position"])
            prompts.append(contexts[r["step"]].prompts([agent], active)[0])
        else:
            prompts.append(contexts[r["step"]].prompt(r["persona"]))
    scores = policy.score(prompts, [contexts[r["step"]].continuation(r["real_kind"], r["real_text"]) for r in rows])
    tokens = sum(s.num_tokens for s in scores)
    per_action = [s.mean_nll for s in scores if s.num_tokens]
    return -sum(s.logprob for s in scores) / max(tokens, 1), sum(per_action) / max(len(per_action), 1)


def circular_dimensions(method: str, validity: dict[str, dict[str, Any]]) -> list[str]:
    """The dimensions whose labeller the method's context is built from (none for an unknown method)."""
    if method not in method_names():
        return []
    uses = get_method(method).uses_labellers
    return sorted(name for name, v in validity.items() if v["labeller"] in uses)


def evaluate_run(run_dir: str | Path, labeller: Labeller, dimensions: Sequence[Dimension], window_scheme: str = "step",
                 alpha: float = DEFAULT_ALPHA, policy: LanguageModel | None = None,
                 gain_models: tuple[LanguageModel, LanguageModel | None] | None = None) -> RunEvaluation:
    """Compare the run's simulated actions with the real reactions beside them, dimension by dimension and
    window by window; failed generations and rows without a real reaction are counted, not compared.
    With ``policy``: the NLL of the real actions; with ``gain_models`` (the run's policy and mean-field
    model): the information gain of the run's method along the real history."""
    store = RunStore(run_dir)
    manifest = store.manifest()
    all_rows = store.actions()
    if not all_rows:
        raise ValueError(f"{run_dir}: the run has no simulated actions yet")
    failed = sum("failure" in r for r in all_rows)
    unpaired = sum(r.get("real_text") is None for r in all_rows)
    rows = [r for r in all_rows if "failure" not in r and r.get("real_text") is not None]
    if not rows:
        raise ValueError(f"{run_dir}: no simulated action has a real reaction beside it to compare with "
                         f"({failed} failed generations, {unpaired} actions without a real reaction)")
    config = manifest["config"]
    event, _ = load_event(config["data"], config["event_id"], config["data_format"])
    windows = window_ids(rows, window_scheme)
    evaluation = RunEvaluation(str(run_dir), manifest["event"]["event_id"], config["method"], config["seed"], len(rows),
                               window_scheme, alpha, labeller.name, failed_actions=failed, unpaired_actions=unpaired)
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
    evaluation.circular = circular_dimensions(config["method"], evaluation.validity)
    evaluation.realism = realism(rows, shown_contexts(store, SimulationConfig(**config), event), event.source.text, config["seed"])
    if policy is not None:
        evaluation.nll, evaluation.nll_per_action = policy_nll(store, policy, event)
    if gain_models is not None:
        evaluation.information_gain = information_gain(SimulationConfig(**config), event, *gain_models)
    return evaluation
