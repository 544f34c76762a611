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
from mfllm.evaluation.metrics import (DEFAULT_ALPHA, CorrectedMetrics, DimensionMetrics, compare_streams, corrected_comparison,
                                     pooled_confusion, window_ids)
from mfllm.evaluation.realism import realism
from mfllm.interfaces import LanguageModel, Prompt
from mfllm.prompts import choice_kind
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
    """Rows whose generation failed after their choice was drawn: their drawn kind counts on behaviour, they
    have no simulated label on text dimensions, and their real reaction counts on every dimension."""
    total_actions: int = 0
    """Every simulated row of the run, failed or not, paired with a real reaction or not."""
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
    """Whether the simulated texts read like the real ones beside them (see :mod:`mfllm.evaluation.realism`)."""

    def summary(self) -> dict[str, Any]:
        """Flat metrics (no per-window series, no labels), for tables."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("run", "event_id", "method", "seed", "agents", "window_scheme",
                                                              "alpha", "labeller", "nll", "nll_per_action",
                                                              "failed_actions", "total_actions", "unpaired_actions")}
        for name, metrics in self.dimensions.items():
            for key in ("kl", "kl_floor", "js", "wasserstein", "dtw", "pooled_kl", "micro_f1", "macro_f1"):
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


FAILED_GENERATION = "generation failed (only its drawn kind is known)"


def simulated_item(row: dict[str, Any], topic: str, language: str, thread: str | None) -> LabelItem:
    """The simulated action of ``row`` as a label item; a failed generation keeps the kind it drew and has no text."""
    if "failure" in row:
        choice = row.get("sim_choice")
        return LabelItem("", topic, language, choice_kind(choice) if choice else None, thread)
    return LabelItem(row["sim_text"], topic, language, row["sim_kind"], thread)


def label_run(rows: Sequence[dict[str, Any]], topic: str, language: str, labeller: Labeller, dimension: Dimension,
              thread: str | None = None) -> tuple[list[str | None], list[str | None], dict[str, Any]]:
    """Real and simulated labels for every row (aligned by position), with the reasons for gaps. ``thread``:
    the event's source post id (a trained labeller picks a model that never saw it)."""
    items = [LabelItem(r["real_text"], topic, language, r["real_kind"], thread) for r in rows]
    items += [simulated_item(r, topic, language, thread) for r in rows]
    result = labeller.label(items, dimension)
    n = len(rows)
    for i, row in enumerate(rows):
        if "failure" in row and n + i in result.failures:
            result.failures[n + i] = FAILED_GENERATION
    reasons: dict[str, int] = {}
    for reason in result.failures.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    failed = {"real": [rows[i]["position"] for i in result.failures if i < n],
              "sim": [rows[i - n]["position"] for i in result.failures if i >= n], "reasons": reasons}
    return result.labels[:n], result.labels[n:], failed


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


def agent_prompts(contexts: dict[int, StepContext], scheduled: Sequence[Any], event: Event, rows: Sequence[dict[str, Any]]) -> list[Prompt]:
    """The policy prompt each row's agent had: its step's context and the interventions that reached it."""
    prompts = []
    for r in rows:
        active = [s for s in scheduled if s.active(r["step"])]
        if active:
            agent = Agent.of(event.reactions[r["position"]], r["position"])
            prompts.append(contexts[r["step"]].prompts([agent], active)[0])
        else:
            prompts.append(contexts[r["step"]].prompt(r["persona"]))
    return prompts


def evaluated_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The actions an evaluation compares: generated, with a real reaction beside them."""
    return [r for r in rows if "failure" not in r and r.get("real_text") is not None]


def shown_prompts(store: RunStore, config: SimulationConfig, event: Event, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The text of each row's prompt as its agent saw it: rebuilt from the journal (no model), with the
    context the run recorded (its mean-field history, where it keeps one; the entry after step s is what
    step s + 1 saw) in place of the restored one, so that a run made by older code is measured against
    what its agents were shown."""
    contexts = contexts_by_step(store, config, event)
    recorded = {entry["step"] + 1: entry.get("text") or "" for entry in store.mean_field_history()}
    shown = []
    for row, prompt in zip(rows, agent_prompts(contexts, scheduled_from_manifest(store.manifest()), event, rows)):
        restored = contexts[row["step"]].provider.context()
        shown.append(prompt.completion.replace(restored, recorded[row["step"]]) if restored and row["step"] in recorded
                     else prompt.completion)
    return shown


def run_realism(store: RunStore, event: Event | None = None, rows: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Realism of ``rows`` (default: the run's :func:`evaluated_rows`), the copied share against the
    prompts the agents were shown (:func:`shown_prompts`)."""
    config = SimulationConfig.recorded(store.manifest()["config"])
    if event is None:
        event, _ = load_event(config.data, config.event_id, config.data_format)
    rows = evaluated_rows(store.actions()) if rows is None else rows
    return realism(rows, shown_prompts(store, config, event, rows), event.language, config.seed)


def policy_nll(store: RunStore, policy: LanguageModel, event: Event | None = None) -> tuple[float, float]:
    """(token-weighted mean NLL per token, mean over actions of per-token NLL) of the real actions,
    teacher-forced under ``policy`` with the same prompt (topic, persona, simulated context, the
    interventions that reached the agent) the simulated agent had. The action is scored as the policy
    writes it (kind marker, then text), so the kind is predicted too. Only the action's tokens count;
    rows without a real reaction are skipped."""
    manifest = store.manifest()
    config = SimulationConfig.recorded(manifest["config"])
    if event is None:
        event, _ = load_event(config.data, config.event_id, config.data_format)
    contexts = contexts_by_step(store, config, event)
    rows = [r for r in store.actions() if r.get("real_text") is not None]
    prompts = agent_prompts(contexts, scheduled_from_manifest(manifest), event, rows)
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
    window by window. Rows without a real reaction are counted, not compared. A failed generation keeps its
    real reaction on every dimension and its drawn kind on behaviour (only text dimensions lack its label),
    so every method is compared on the same real rows and windows.
    With ``policy``: the NLL of the real actions; with ``gain_models`` (the run's policy and mean-field
    model): the information gain of the run's method along the real history."""
    store = RunStore(run_dir)
    manifest = store.manifest()
    all_rows = store.actions()
    if not all_rows:
        raise ValueError(f"{run_dir}: the run has no simulated actions yet")
    failed = sum("failure" in r for r in all_rows)
    unpaired = sum(r.get("real_text") is None for r in all_rows)
    rows = [r for r in all_rows if r.get("real_text") is not None]  # failed rows keep their drawn kind (behaviour)
    if not rows:
        raise ValueError(f"{run_dir}: no simulated action has a real reaction beside it to compare with "
                         f"({unpaired} actions without a real reaction)")
    config = manifest["config"]
    event, _ = load_event(config["data"], config["event_id"], config["data_format"])
    windows = window_ids(rows, window_scheme)
    evaluation = RunEvaluation(str(run_dir), manifest["event"]["event_id"], config["method"], config["seed"],
                               sum("failure" not in r for r in rows), window_scheme, alpha, labeller.name, failed_actions=failed,
                               total_actions=len(all_rows), unpaired_actions=unpaired)
    per_row: list[dict[str, Any]] = [{"position": r["position"], "step": r["step"], "window": w, "sim_failed": "failure" in r}
                                     for r, w in zip(rows, windows)]
    thread = event.source.post_id
    for dimension in dimensions:
        real, sim, failed = label_run(rows, event.source.text, event.language, labeller, dimension, thread)
        evaluation.unlabelled[dimension.name] = failed
        for entry, r_label, s_label in zip(per_row, real, sim):
            entry[f"{dimension.name}.real"], entry[f"{dimension.name}.sim"] = r_label, s_label
        chosen = labeller.chosen(dimension, event.language)
        records = chosen.validations(dimension, event.language) if chosen is not None else []
        evaluation.validity[dimension.name] = {"labeller": chosen.name if chosen is not None else None, "language": event.language,
                                               "note": getattr(chosen, "note", ""), "validations": records,
                                               **(chosen.provenance(thread) if chosen is not None else {})}
        if any(label is not None for label in real) and any(label is not None for label in sim):
            evaluation.dimensions[dimension.name] = compare_streams(real, sim, windows, dimension, alpha)
            confusion = pooled_confusion(records, dimension)
            corrected = corrected_comparison(real, sim, windows, dimension, confusion, alpha) if confusion is not None else None
            if corrected is not None:
                evaluation.corrected[dimension.name] = corrected
    evaluation.labels = per_row
    evaluation.realism = run_realism(store, event, evaluated_rows(all_rows))  # texts: generated rows only
    evaluation.circular = circular_dimensions(config["method"], evaluation.validity)
    if policy is not None:
        evaluation.nll, evaluation.nll_per_action = policy_nll(store, policy, event)
    if gain_models is not None:
        evaluation.information_gain = information_gain(SimulationConfig.recorded(config), event, *gain_models)
    return evaluation
