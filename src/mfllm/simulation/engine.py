"""The MF-LLM engine: runs a scenario step by step, committing each step to the run directory.

The :class:`Simulator` owns time (the scenario's steps) and randomness (a seed per model call derived
from the run seed, the step and the role), so a resumed run reproduces an uninterrupted one exactly.
Measurement is kept out of it: it writes rows; evaluation reads them.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mfllm.data.loaders import load_event
from mfllm.data.schema import Event, LoadReport
from mfllm.interfaces import ContextProvider, LanguageModel, LLMMeanField, Prompt, SamplingParams
from mfllm.manifest import base_manifest, derive_seed
from mfllm.prompts import action_choice, bare_repost_text, needs_text, policy_stops, strip_marker
from mfllm.redaction import redacted
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.methods import get_method
from mfllm.simulation.methods.mean_field import mean_field_sampling, output_vocabulary
from mfllm.simulation.interventions import Scheduled, file_digest, schedule_interventions
from mfllm.simulation.scenario import Intervened, Replay, Scenario
from mfllm.simulation.step import Agent, Step, StepContext, action_row, fit_choice_calibration, sample_choices
from mfllm.text import copied, is_degenerate, normalise
from mfllm.simulation.store import RunStore
from mfllm.simulation.throughput import run_throughput

ProgressFactory = Callable[[int, str], Any]
FAILED_EMPTY = "no text after a marker that needs one"
REJECTIONS = ("empty", "repeat", "degenerate", "copied")
"""Why a generated text is asked again (see :meth:`Simulator._rejected`)."""
RETRY_HEAT = 0.2
"""Temperature added per retry of a rejected text."""
MAX_RETRY_TEMPERATURE = 1.4
MIN_LENGTH_SAMPLES = 8
"""Warm-up texts needed before action lengths follow the data (fewer: the fixed bound)."""


def make_context(config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> ContextProvider:
    """The context provider of ``config.method`` (without a mean-field model it can only be restored and read)."""
    return get_method(config.method).create(config, event, mean_field_model)


class Simulator:
    """Runs one event with one method and seed under a scenario (replay by default), writing every step
    to a :class:`RunStore`."""

    def __init__(self, config: SimulationConfig, event: Event, policy: LanguageModel, mean_field_model: LanguageModel | None = None,
                 scenario: Scenario | None = None):
        method = get_method(config.method)
        if method.needs_mean_field_model and mean_field_model is None:
            raise ValueError(f"method {config.method!r} needs a mean-field model")
        self.config, self.event, self.policy, self.mean_field_model = config, event, policy, mean_field_model
        self.scenario = scenario or Replay(event, config.warmup, config.batch_size, config.num_agents)
        self.steps = self.scenario.steps()
        self.context = make_context(config, event, mean_field_model)
        self.step_context = StepContext(event, self.context)
        self.first_rollout_step = next((s.index for s in self.steps if s.phase == "rollout"), None)
        self.length_floor = config.resolved_length_floor()  # read once: it may come from the adapter's metadata file
        self._length_pool: list[int] | None = None
        self._calibration: list[tuple[dict[str, float], str]] = []
        self._fitted: dict[str, Any] | None = None
        self._taken: set[str] = set()
        self.observed_choices: list[dict[str, Any]] = []

    def _policy_params(self, step: Step, attempt: int, lengths: Sequence[tuple[int, int]] | None) -> SamplingParams:
        """The policy's sampling for an attempt, each writing agent within its ``lengths`` (floor, bound; see
        :meth:`action_lengths`): a retry (``attempt > 0``) has its own seed and samples :data:`RETRY_HEAT`
        hotter per attempt (at most :data:`MAX_RETRY_TEMPERATURE`), so it can leave the mode that made the
        rejected text."""
        seed = derive_seed(self.config.seed, step.index, "policy") if attempt == 0 else derive_seed(self.config.seed, step.index, "policy", attempt)
        config = self.config
        temperature = config.temperature if attempt == 0 or config.temperature <= 0 else \
            max(config.temperature, min(MAX_RETRY_TEMPERATURE, config.temperature + RETRY_HEAT * attempt))
        floors = None if lengths is None or not any(floor for floor, _ in lengths) else tuple(floor for floor, _ in lengths)
        return SamplingParams(config.max_action_tokens, temperature, config.top_p, policy_stops(self.event.language), seed,
                              repetition_penalty=config.repetition_penalty, frequency_penalty=config.frequency_penalty,
                              presence_penalty=config.presence_penalty, penalty_window=config.penalty_window,
                              max_new_tokens_each=None if lengths is None else tuple(bound for _, bound in lengths),
                              min_new_tokens_each=floors, vocabulary=output_vocabulary(config, self.event.language))

    def _warmup_texts(self) -> list[str]:
        """The texts of the real warm-up reactions that wrote words (what action lengths follow)."""
        return [a.real.text for step in self.steps if step.phase == "warmup" for a in self.scenario.agents(step)
                if a.real is not None and needs_text(action_choice(a.real.kind, a.real.text)) and a.real.text.strip()]

    def action_lengths(self, step: Step, count: int) -> list[tuple[int, int]] | None:
        """Each writing agent's (floor, bound) on its action, in tokens, from the length ``L`` of a real
        warm-up reaction drawn at random (seeded by run seed and step): it may not end its line before
        ``length_floor * L`` tokens (rounded down) and writes at most ``length_slack * L`` (rounded up) plus
        one, at most ``max_action_tokens``; None (the fixed bound) with ``action_length=fixed`` or fewer
        than :data:`MIN_LENGTH_SAMPLES` warm-up texts."""
        if self.config.action_length == "fixed":
            return None
        if self._length_pool is None:
            self._length_pool = sorted(self.policy.count_text_tokens(text) for text in self._warmup_texts())
        if len(self._length_pool) < MIN_LENGTH_SAMPLES:
            return None
        rng = random.Random(derive_seed(self.config.seed, step.index, "length"))
        drawn = [rng.choice(self._length_pool) for _ in range(count)]
        bounds = [min(self.config.max_action_tokens, math.ceil(self.config.length_slack * length) + 1) for length in drawn]
        return [(min(math.floor(self.length_floor * length), bound), bound) for length, bound in zip(drawn, bounds)]

    def _rejected(self, text: str, taken: set[str], prompt: Prompt) -> str | None:
        """Why a generated text is asked again (one of :data:`REJECTIONS`): empty, or (with
        ``resample_copies``) a repeat of a text in ``taken`` (the run's earlier texts and the step's texts so
        far), degenerate (:func:`mfllm.text.is_degenerate`) or copied from the agent's own ``prompt``
        (:func:`mfllm.text.copied`: its context, the topic or its profile)."""
        if not text.strip():
            return "empty"
        if self.config.resample_copies:
            if normalise(text) in taken:
                return "repeat"
            if is_degenerate(text):
                return "degenerate"
            if copied(text, prompt.completion, self.event.language):
                return "copied"
        return None

    def _generate(self, step: Step, prompts: list[Prompt]) -> tuple[list[str], dict[int, dict[str, Any]]]:
        """One text per prompt (each ends after a kind marker that needs text), each within its agent's bound.
        A text that is empty, degenerate or a repeat of an earlier text of the run is asked again, with a new
        seed per attempt, for those agents only; their rows record ``attempts``, the ``seed`` of the last and
        why earlier ones were ``rejected``. After the last attempt an empty text is a ``failure``, and any
        other text is kept with the reason it would have been rejected (``kept_despite``)."""
        language = self.event.language
        lengths = self.action_lengths(step, len(prompts))
        texts = [strip_marker(text, language) for text in self.policy.generate(prompts, self._policy_params(step, 0, lengths))] if prompts else []
        notes: dict[int, dict[str, Any]] = {}

        def judge() -> list[int]:
            taken, again = set(self._taken), []
            for i, text in enumerate(texts):
                reason = self._rejected(text, taken, prompts[i])
                if reason is None:
                    taken.add(normalise(text))
                else:
                    again.append(i)
                    notes.setdefault(i, {"attempts": 1, "rejected": []})["rejected"].append(reason)
            return again

        again = judge()
        for attempt in range(1, self.config.max_generation_attempts):
            if not again:
                break
            params = self._policy_params(step, attempt, None if lengths is None else [lengths[i] for i in again])
            for i, text in zip(again, self.policy.generate([prompts[i] for i in again], params)):
                texts[i] = strip_marker(text, language)
                notes[i].update(attempts=attempt + 1, seed=params.seed)
            again = judge()
        for i in again:
            reason = notes[i]["rejected"].pop()
            notes[i].update({"failure": FAILED_EMPTY} if reason == "empty" else {"kept_despite": reason})
            if not notes[i]["rejected"]:
                del notes[i]["rejected"]
        return texts, notes

    def _choice_calibration(self) -> dict[str, Any] | None:
        """The kind-choice calibration of this run, fitted once on the warm-up's real reactors."""
        if self._fitted is None and self.config.calibrate_choices and len(self.step_context.choices) > 1:
            self._fitted = fit_choice_calibration(self._calibration)
        return self._fitted

    def _observe_choices(self, agents: list[Agent], active: list[Scheduled]) -> list[dict[str, Any]]:
        """During warm-up: the policy's marker log-probs for each real reactor under the context it saw,
        beside what it did (what the kind choice is calibrated on); recorded in the step's journal entry."""
        if not self.config.calibrate_choices or len(self.step_context.choices) == 1:
            return []
        reactors = [a for a in agents if a.real is not None]
        if not reactors:
            return []
        logprobs = self.step_context.choice_logprobs(self.policy, self.step_context.prompts(reactors, active),
                                                     output_vocabulary(self.config, self.event.language))
        observed = [{"logprobs": {c: round(v, 6) for c, v in lp.items()}, "choice": action_choice(a.real.kind, a.real.text)}
                    for a, lp in zip(reactors, logprobs)]
        self._calibration += [(o["logprobs"], o["choice"]) for o in observed]
        return observed

    def _act(self, step: Step, agents: list[Agent], active: list[Scheduled]) -> tuple[list[dict[str, float]], list[str], list[Prompt],
                                                                                       list[str], dict[int, dict[str, Any]]]:
        """The agents' actions: each kind drawn from the policy's marker probabilities (calibrated on the
        warm-up, or at the run's temperature), then the texts of the kinds that need one (a bare repost
        carries the platform's default text). Returns the probabilities, choices, prompts (ending after each
        chosen marker), texts and per-agent generation notes."""
        calibration = self._choice_calibration()
        probabilities = self.step_context.choice_probabilities(self.policy, self.step_context.prompts(agents, active),
                                                               output_vocabulary(self.config, self.event.language), self.config.temperature,
                                                               calibration)
        choices = sample_choices(probabilities, derive_seed(self.config.seed, step.index, "choice"))
        prompts = self.step_context.prompts(agents, active, choices)
        writing = [i for i, choice in enumerate(choices) if needs_text(choice)]
        written, written_notes = self._generate(step, [prompts[i] for i in writing])
        texts = [bare_repost_text(self.event.language)] * len(agents)
        notes = {}
        for slot, i in enumerate(writing):
            texts[i] = written[slot]
            if slot in written_notes:
                notes[i] = written_notes[slot]
        return probabilities, choices, prompts, texts, notes

    def run_step(self, step: Step) -> list[dict[str, Any]]:
        """Replay (warm-up) or act (rollout) one step and update the context; returns the step's rows.

        Interventions in effect at the step act through the step context: those starting now reach the
        shared context first, pinned posts and notices appear in the prompts of the agents they reach, and
        actions a moderation removes are kept out of the context (their rows say which moderation)."""
        agents: list[Agent] = self.scenario.agents(step)
        active = list(self.scenario.interventions(step))
        injected = self.step_context.begin(step.index, active) if active else []
        mean_field_seed = derive_seed(self.config.seed, step.index, "mean_field")
        self.observed_choices = []
        if step.phase == "warmup":
            self.observed_choices = self._observe_choices(agents, active)
            actions = [self.step_context.action(a, a.real.text, a.real.kind) for a in agents
                       if a.real is not None and not (active and self.step_context.removed_by(a, a.real.text, a.real.kind, active))]
            self.step_context.observe([*injected, *actions], mean_field_seed)
            return []
        probabilities, choices, prompts, texts, notes = self._act(step, agents, active)
        rows = []
        for i, (agent, prompt, text) in enumerate(zip(agents, prompts, texts)):
            row = action_row(step.index, agent, self.step_context.persona(agent), prompt, choices[i], probabilities[i], text, self.policy)
            if i in notes:
                row.update(notes[i])
                if "failure" in notes[i]:
                    row["sim_kind"] = None
            elif active and (moderation := self.step_context.removed_by(agent, text, row["sim_kind"], active)):
                row["moderated"] = moderation
            rows.append(row)
        self._taken.update(normalise(row["sim_text"]) for row in rows if needs_text(row["sim_choice"]) and "failure" not in row)
        actions = [self.step_context.action(agent, row["sim_text"], row["sim_kind"], simulated=True)
                   for agent, row in zip(agents, rows) if "failure" not in row and "moderated" not in row]
        self.step_context.observe([*injected, *actions], mean_field_seed)
        return rows

    def run(self, store: RunStore, progress: ProgressFactory | None = None) -> tuple[dict[str, Any], dict[str, dict[str, int] | None]]:
        """Run (or continue) the schedule, committing each step; returns the throughput figures
        (:func:`~mfllm.simulation.throughput.run_throughput`) and each role's backend counts added meanwhile
        (a mean field counted by the policy's own counter is counted with the policy)."""
        records_mean_field = not get_method(self.config.method).is_baseline  # every mean field, model-written or not
        committed = store.rollback_to_committed(self.steps, records_mean_field)
        if committed:
            self.context.load_state_dict(committed[-1]["context_state"])
        self._calibration = [(o["logprobs"], o["choice"]) for record in committed for o in record.get("choices_observed", [])]
        self._taken = {normalise(text) for text in [self.event.source.text, *self._warmup_texts()]}
        self._taken.update(normalise(row["sim_text"]) for row in store.actions() if needs_text(row["sim_choice"]) and "failure" not in row)
        remaining = self.steps[len(committed):]
        rollout_agents = sum(len(s.positions) for s in remaining if s.phase == "rollout")
        bar = progress(rollout_agents, f"{self.event.event_id} {self.config.method}") if progress else None
        shared = self.mean_field_model is not None and self.mean_field_model.usage is self.policy.usage
        counters = {"policy": self.policy.usage, "mean_field": None if self.mean_field_model is None or shared else self.mean_field_model.usage}
        before = {role: counter.as_dict() for role, counter in counters.items() if counter is not None}
        started, simulated = time.perf_counter(), 0
        for step in remaining:
            rows = self.run_step(step)
            entry = {"step": step.index, "phase": step.phase, "after_position": step.positions[-1], "text": self.context.context()} \
                if records_mean_field else None
            record = {"step": step.index, "phase": step.phase, "positions": list(step.positions)}
            starting = [s.id for s in self.scenario.interventions(step) if s.start == step.index]
            if starting:
                record["interventions"] = starting
            if self.observed_choices:
                record["choices_observed"] = self.observed_choices
            if step.phase == "rollout" and step.index == self.first_rollout_step and self._fitted:
                record["choice_calibration"] = self._fitted
            store.commit({**record, "context_state": self.context.state_dict()}, rows, entry)
            simulated += len(rows)
            if bar is not None and rows:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - started
        usage = {role: counter.since(before[role]) if counter is not None else None for role, counter in counters.items()}
        return run_throughput(elapsed, simulated, usage, shared), usage


def _manifest(config: SimulationConfig, event: Event, report: LoadReport, simulator: Simulator) -> dict[str, Any]:
    manifest = base_manifest("simulation", config.model_dump())
    manifest["event"] = {"event_id": event.event_id, "dataset": event.dataset, "language": event.language,
                         "num_reactions": len(event.reactions), "labels": event.labels}
    manifest["data_hash"] = event.content_hash()
    manifest["load_report"] = {"summary": report.summary(), "rejected": len(report.rejected), "cleared": len(report.cleared)}
    manifest["models"] = {"policy": simulator.policy.describe(),
                          "mean_field": simulator.mean_field_model.describe() if simulator.mean_field_model else None}
    manifest["schedule"] = {"steps": len(simulator.steps), "warmup_steps": sum(s.phase == "warmup" for s in simulator.steps),
                            "rollout_agents": sum(len(s.positions) for s in simulator.steps if s.phase == "rollout")}
    manifest["scenario"] = simulator.scenario.describe()
    if simulator.mean_field_model is not None:
        sampling = mean_field_sampling(config, event.language)
        manifest["mean_field_sampling"] = {"max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                                           "top_p": sampling.top_p, "top_k": sampling.top_k, "output_vocabulary": sampling.vocabulary}
    policy = simulator._policy_params(simulator.steps[0], 0, None)
    manifest["policy_sampling"] = {"temperature": policy.temperature, "top_p": policy.top_p, "top_k": policy.top_k,
                                   "repetition_penalty": policy.repetition_penalty, "frequency_penalty": policy.frequency_penalty,
                                   "presence_penalty": policy.presence_penalty, "penalty_window": policy.penalty_window,
                                   "max_new_tokens": policy.max_new_tokens, "action_length": config.action_length,
                                   "length_slack": config.length_slack, "length_floor": simulator.length_floor, "resample_copies": config.resample_copies,
                                   "calibrate_choices": config.calibrate_choices, "output_vocabulary": policy.vocabulary}
    manifest["status"] = "running"
    return manifest


RUNTIME_FIELDS = ("device", "interventions", "engine", "threads", "n_ctx", "request_timeout_s", "max_attempts")
"""Config fields a resumed run may change: where and how models run (the resolved backend itself is
checked separately) and where intervention files live (their content is compared)."""


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded config as the current code reads it (:meth:`SimulationConfig.recorded`, credentials redacted as
    in the manifest), less the :data:`RUNTIME_FIELDS` and ``adapter``, whose effect (the adapters a run loads)
    :func:`adapter_mismatches` compares by content."""
    return {k: v for k, v in redacted(SimulationConfig.recorded(config).model_dump()).items() if k not in (*RUNTIME_FIELDS, "adapter")}


def adapter_mismatches(manifest: dict[str, Any], config: SimulationConfig) -> list[str]:
    """Why ``config`` would not run on the LoRA adapters the run of ``manifest`` ran on, compared by content
    (:func:`~mfllm.backends.hf.adapter_digest`): one line per role that differs, none when they agree. A run
    recorded before digests were recorded had only the adapter directories its config names."""
    from mfllm.backends.hf import adapter_digest

    reasons = []
    for role in ("policy", "mean_field") if get_method(config.method).needs_mean_field_model else ("policy",):
        recorded, now = manifest.get("models", {}).get(role) or {}, config.resolved_adapter(role)
        had = recorded.get("adapter")
        if "adapter_sha256" in recorded:
            same = recorded["adapter_sha256"] == adapter_digest(now)
        else:
            same = (had is None) == (now is None)
        if same:
            continue
        if had is None:
            reasons.append(f"its {role} model ran without an adapter, this config would load {now} (--no-adapter: the base model)")
        elif now is None:
            reasons.append(f"its {role} model ran with the adapter {had}, this config would load none")
        else:
            reasons.append(f"its {role} model ran with the adapter {had}, whose weights differ from those of {now} now")
    return reasons


LEGACY_BACKENDS = {"TransformersModel": "transformers", "FakeModel": "fake", "OpenAICompatibleModel": "openai"}
"""The backend of a model recorded before manifests named it, by its class."""


def backend_of(description: dict[str, Any] | None) -> str | None:
    """The engine a model description (``LanguageModel.describe()``) names."""
    if description is None:
        return None
    return description.get("backend") or LEGACY_BACKENDS.get(description.get("class", ""), description.get("class"))


def _check_backends(output_dir: str | Path, recorded: dict[str, Any], models: dict[str, LanguageModel | None]) -> None:
    """A resumed run must continue on the backends it started on (an old run must not silently move to
    another engine): the backend of each role is compared with the manifest's."""
    for role, model in models.items():
        before = backend_of(recorded.get(role))
        now = backend_of(model.describe()) if model is not None else None
        if before != now:
            raise ValueError(f"{output_dir}: the run's {role} model ran on {before}, this one would run on {now}; cannot resume "
                             "(choose the same engine, e.g. --engine transformers)")


def build_models(config: SimulationConfig, pool: Any) -> tuple[LanguageModel, LanguageModel | None]:
    """The policy and (for methods that need one) the mean-field backend, sharing weights when they share a base model."""
    policy = pool.get(config.policy_model, adapter=config.resolved_adapter("policy"), role="policy")
    mean_field = None
    if get_method(config.method).needs_mean_field_model:
        mean_field = pool.get(config.resolved_mean_field_model, adapter=config.resolved_adapter("mean_field"), role="mean_field")
    return policy, mean_field


@dataclass(frozen=True)
class BranchPoint:
    """Where a branch starts: the first ``at`` committed steps of the ``parent`` run are copied (byte for byte,
    no model call), and the branch continues from there. ``added`` are the intervention files of the change
    (the branch's config lists them after the parent's own); they may not start before ``at``."""

    parent: Path
    at: int
    added: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"parent": str(self.parent), "at": self.at, "added_interventions": list(self.added)}


def place_interventions(config: SimulationConfig, event: Event, scenario: Scenario, branch: BranchPoint | None = None) -> list[Scheduled]:
    """The interventions of ``config.interventions`` on ``scenario``'s schedule. A branch's added files start at
    or after the branch point (an entry without a start takes it); the parent's own files keep their steps."""
    added = set(branch.added) if branch else set()
    own = [f for f in config.interventions if f not in added]
    steps, source_time = scenario.steps(), event.source.timestamp
    scheduled = schedule_interventions(own, steps, scenario.agents, source_time)
    if branch is not None and branch.added:
        scheduled += schedule_interventions(branch.added, steps, scenario.agents, source_time, default_step=branch.at, earliest_step=branch.at)
    ids = [s.id for s in scheduled]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"intervention ids used in more than one file: {', '.join(twice)}")
    return scheduled


def _intervention_record(scheduled: Sequence[Scheduled]) -> list[dict[str, Any]]:
    """What a resumed run must find unchanged: each intervention's content and steps (not where its file lives)."""
    return [{k: v for k, v in s.describe().items() if k != "file"} for s in scheduled]


def _check_branch(config: SimulationConfig, branch: BranchPoint, event: Event, steps: Sequence[Step]) -> None:
    """The parent must be this config's run (up to seed and added interventions) on the same data, with ``at`` steps committed."""
    parent = RunStore(branch.parent)
    manifest = parent.manifest()
    ignored = ("seed", "interventions", "data")
    recorded = {k: v for k, v in comparable_config(manifest["config"]).items() if k not in ignored}
    mine = {k: v for k, v in comparable_config(config.model_dump()).items() if k not in ignored}
    if recorded != mine:
        changed = sorted(k for k in recorded if recorded[k] != mine.get(k))
        raise ValueError(f"{branch.parent}: a branch keeps its parent's config except seed and interventions (changed: {', '.join(changed)})")
    if reasons := adapter_mismatches(manifest, config):
        raise ValueError(f"{branch.parent}: a branch runs on its parent's adapters: {'; '.join(reasons)}")
    own = [f for f in config.interventions if f not in set(branch.added)]
    if own != list(manifest["config"].get("interventions", [])):
        raise ValueError(f"{branch.parent}: a branch keeps its parent's intervention files ({manifest['config'].get('interventions', [])})")
    if manifest["data_hash"] != event.content_hash():
        raise ValueError(f"{branch.parent}: the event data changed since the parent ran; cannot branch")
    committed = len(parent.committed_steps())
    if not 0 <= branch.at < len(steps):
        raise ValueError(f"{branch.parent}: branch point {branch.at} is outside the run's steps 0..{len(steps) - 1}")
    if branch.at > committed:
        raise ValueError(f"{branch.parent}: branch point {branch.at} is past the parent's {committed} committed steps")


def simulate(config: SimulationConfig, output_dir: str | Path, pool: Any = None, resume: bool = False,
             progress: ProgressFactory | None = None, scenario: Callable[[Event], Scenario] | None = None,
             branch: BranchPoint | None = None) -> Path:
    """Run one simulation into ``output_dir`` (or resume it); returns the run directory.

    ``scenario`` builds the run's scenario from the loaded event (default: replay of the event); the
    interventions of ``config.interventions`` are placed on it. With ``branch``, the run starts as a copy of
    the parent's first ``branch.at`` steps and continues from there.
    """
    store = RunStore(output_dir)
    with store.lock():
        store.check_resumable(resume)
        previous = store.manifest() if resume and store.exists() else None
        if previous is not None:
            if comparable_config(previous["config"]) != comparable_config(config.model_dump()):
                new = comparable_config(config.model_dump())
                changed = sorted(k for k, v in comparable_config(previous["config"]).items() if new.get(k) != v)
                raise ValueError(f"{output_dir}: cannot resume with a different config (changed: {', '.join(changed)})")
            if reasons := adapter_mismatches(previous, config):
                raise ValueError(f"{output_dir}: cannot resume: {'; '.join(reasons)}")
            if previous.get("branch") != (branch.describe() if branch else None):
                raise ValueError(f"{output_dir}: cannot resume with a different branch point (the run has {previous.get('branch')})")
        event, report = load_event(config.data, config.event_id, config.data_format)
        if previous is not None and previous["data_hash"] != event.content_hash():
            raise ValueError(f"{output_dir}: the event data changed since the run started; cannot resume")
        base = scenario(event) if scenario else Replay(event, config.warmup, config.batch_size, config.num_agents)
        scheduled = place_interventions(config, event, base, branch)
        if previous is not None and previous.get("interventions", {}).get("scheduled", []) != _intervention_record(scheduled):
            raise ValueError(f"{output_dir}: cannot resume with different interventions (an intervention file changed since the run started)")
        if branch is not None:
            _check_branch(config, branch, event, base.steps())
        pool = pool or config.model_pool()
        policy, mean_field = build_models(config, pool)
        if previous is not None:
            _check_backends(output_dir, previous["models"], {"policy": policy, "mean_field": mean_field})
        simulator = Simulator(config, event, policy, mean_field, Intervened(base, scheduled) if scheduled else base)
        if not store.exists():
            manifest = _manifest(config, event, report, simulator)
            if scheduled:
                manifest["interventions"] = {"sha256": file_digest(config.interventions), "scheduled": _intervention_record(scheduled)}
            if branch is not None:
                manifest["branch"] = branch.describe()
            store.write_manifest(manifest)
        if branch is not None and len(store.committed_steps()) < branch.at:
            store.copy_prefix(RunStore(branch.parent), branch.at)
        with store.running():
            throughput, usage = simulator.run(store, progress)
        rows = store.actions()
        failures = sum(1 for row in rows if "failure" in row)
        moderated = sum(1 for row in rows if "moderated" in row)
        store.update_manifest(status="completed", throughput=throughput, usage=usage, **({"failed_actions": failures} if failures else {}),
                              **({"moderated_actions": moderated} if moderated else {}))
    return Path(output_dir)


class _StandIn(LanguageModel):
    """A mean-field model for dry runs: every update is ``text`` (the longest one allowed)."""

    def __init__(self, text: str, counter: LanguageModel):
        self.text, self.counter, self.usage = text, counter, counter.usage

    def generate(self, prompts: Any, params: SamplingParams) -> list[str]:
        return [self.text for _ in prompts]

    def score(self, prompts: Any, continuations: Any) -> list[Any]:
        raise NotImplementedError("a dry run scores nothing")


def estimate(config: SimulationConfig, event: Event, policy: LanguageModel, scenario: Scenario | None = None,
             branch: BranchPoint | None = None) -> dict[str, Any]:
    """Model calls and prompt tokens a run will need, without generating anything (``--dry-run``).

    The schedule runs through the same step code as a simulation (interventions included); mean-field
    updates are stood in for by a placeholder of the maximum update length (an upper bound), simulated
    actions by the real reactions of their slots. ``full_history_tokens`` is what a prompt holding every earlier reaction would cost at
    the same step: the growth the mean field avoids. ``scenario``: the run's scenario (default: replay of the event).
    ``branch``: the run continues a parent from ``branch.at`` (its added files start there); the steps before are
    copied, so only the steps from there are counted.
    """
    from mfllm.prompts import policy_prompt, render_actions, render_context
    from mfllm.simulation.methods.recent import RecentK

    method = get_method(config.method)
    placeholder = ("某" if event.language == "zh" else "word ") * config.max_mean_field_tokens
    base = scenario or Replay(event, config.warmup, config.batch_size, config.num_agents)
    scheduled = place_interventions(config, event, base, branch)
    simulator = Simulator(config, event, policy, _StandIn(placeholder, policy) if method.needs_mean_field_model else None,
                          Intervened(base, scheduled) if scheduled else base)
    step_context, provider = simulator.step_context, simulator.context
    if isinstance(provider, LLMMeanField):  # the longest summary stands in for the summary before the first update too
        provider.accept(placeholder)
    first = branch.at if branch else 0
    per_step, mean_field_tokens = [], 0
    history_actions: list[Any] = []  # the real actions of every earlier step
    for step in simulator.steps:
        agents = simulator.scenario.agents(step)
        active = simulator.scenario.interventions(step)
        injected = step_context.begin(step.index, active) if active else []
        actions = [*injected, *step_context.real_actions(agents)]
        if isinstance(provider, LLMMeanField) and step.index >= first:
            mean_field_tokens += policy.count_tokens(provider.update_prompt(actions))
        if step.phase == "rollout" and step.index >= first:
            prompts = step_context.prompts(agents, active)
            history = render_context(RecentK.headers[event.language], render_actions(history_actions, event.language))
            full = [policy.count_tokens(policy_prompt(step_context.topic, step_context.persona(a), event.language, history)) for a in agents]
            tokens = [policy.count_tokens(p) for p in prompts]
            per_step.append({"step": step.index, "agents": len(agents), "policy_prompt_tokens": round(sum(tokens) / len(tokens), 1),
                             "full_history_tokens": round(sum(full) / len(full), 1)})
        step_context.observe(actions, 0)
        history_actions.extend(step_context.real_actions(agents))
    counted = [s for s in simulator.steps if s.index >= first]
    return {
        "event_id": event.event_id, "method": config.method, "agents": sum(len(s.positions) for s in counted if s.phase == "rollout"),
        "policy_calls": sum(s.phase == "rollout" for s in counted), "mean_field_calls": len(counted) if method.needs_mean_field_model else 0,
        "policy_prompt_tokens": round(sum(s["policy_prompt_tokens"] * s["agents"] for s in per_step)),
        "mean_field_prompt_tokens": mean_field_tokens, "max_new_tokens_per_action": config.max_action_tokens,
        "per_step": per_step,
    }
