"""The MF-LLM loop: warm up on real reactions, then step through batches of real users acting via the policy.

The :class:`Simulator` owns time (the step schedule) and randomness (a seed per model call derived
from the run seed and the step), so a resumed run reproduces an uninterrupted one exactly.
Measurement is kept out of it: it writes rows; evaluation reads them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mfllm.data.loaders import WEIBO_DEFAULT_REPOST_TEXT, load_event
from mfllm.data.personas import persona_text
from mfllm.data.schema import Event, LoadReport, Reaction
from mfllm.interfaces import AgentAction, ContextProvider, LanguageModel, SamplingParams
from mfllm.manifest import base_manifest, derive_seed
from mfllm.prompts import policy_prompt, policy_stop
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.context import MeanField, NoContext, PopularK, RecentK
from mfllm.simulation.store import RunStore

ProgressFactory = Callable[[int, str], Any]


@dataclass(frozen=True)
class Step:
    """One step of the schedule: which reactions (by position in the event) act, and in which phase."""

    index: int
    phase: str  # "warmup" (real actions feed the context) or "rollout" (agents act through the policy)
    positions: tuple[int, ...]


def schedule(num_reactions: int, warmup: int, batch_size: int, num_agents: int | None) -> list[Step]:
    """Warm-up over the first ``warmup`` reactions (last chunk may be partial), then rollout batches."""
    if warmup >= num_reactions:
        raise ValueError(f"warm-up of {warmup} leaves no reaction to simulate (the event has {num_reactions})")
    end = num_reactions if num_agents is None else min(num_reactions, warmup + num_agents)
    steps: list[Step] = []
    for phase, lo, hi in (("warmup", 0, warmup), ("rollout", warmup, end)):
        for start in range(lo, hi, batch_size):
            steps.append(Step(len(steps), phase, tuple(range(start, min(start + batch_size, hi)))))
    return steps


def make_context(config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> ContextProvider:
    """The context provider of ``config.method`` (a mean field without a model can only be restored and read)."""
    if config.method == "mf":
        params = SamplingParams(config.max_mean_field_tokens, config.temperature, config.top_p, ("\n",))
        return MeanField(mean_field_model, event.source.text, event.language, params, config.mean_field_max_chars)  # type: ignore[arg-type]
    if config.method == "recent":
        return RecentK(event.language, config.context_k)
    if config.method == "popular":
        return PopularK(event.language, config.context_k, config.popular_window)
    return NoContext()


def infer_kind(text: str) -> str:
    """A simulated action's kind: a bare repost (empty or the platform's default text) or a comment."""
    stripped = text.strip().lower()
    return "repost" if stripped in ("", WEIBO_DEFAULT_REPOST_TEXT, "转发", "repost", "retweet", "rt") else "comment"


class Simulator:
    """Runs one event with one method and seed, writing every step to a :class:`RunStore`."""

    def __init__(self, config: SimulationConfig, event: Event, policy: LanguageModel, mean_field_model: LanguageModel | None = None):
        if config.method == "mf" and mean_field_model is None:
            raise ValueError("method 'mf' needs a mean-field model")
        self.config, self.event, self.policy, self.mean_field_model = config, event, policy, mean_field_model
        self.language = event.language
        self.steps = schedule(len(event.reactions), config.warmup, config.batch_size, config.num_agents)
        self.context = make_context(config, event, mean_field_model)

    def persona(self, reaction: Reaction, short: bool = False) -> str:
        return persona_text(reaction.user, self.language, short=short)

    def _action(self, position: int, text: str, kind: str) -> AgentAction:
        reaction = self.event.reactions[position]
        return AgentAction(self.persona(reaction, short=True), text, kind, reaction.engagement, position)

    def run_step(self, step: Step) -> tuple[list[dict[str, Any]], list[AgentAction]]:
        """Act (rollout) or replay (warm-up) one step and update the context; returns rows and actions."""
        reactions = [self.event.reactions[p] for p in step.positions]
        if step.phase == "warmup":
            actions = [self._action(p, r.text, r.kind) for p, r in zip(step.positions, reactions)]
            self.context.observe(actions, derive_seed(self.config.seed, step.index, "mean_field"))
            return [], actions
        context = self.context.context()
        prompts = [policy_prompt(self.event.source.text, self.persona(r), self.language, self.config.method, context) for r in reactions]
        params = SamplingParams(self.config.max_action_tokens, self.config.temperature, self.config.top_p, policy_stop(self.language),
                                derive_seed(self.config.seed, step.index, "policy"))
        texts = self.policy.generate(prompts, params)
        rows = []
        for position, reaction, prompt, text in zip(step.positions, reactions, prompts, texts):
            rows.append({
                "step": step.index, "position": position, "reaction_id": reaction.post_id, "user_id": reaction.user.user_id,
                "timestamp": reaction.timestamp, "persona": self.persona(reaction), "real_kind": reaction.kind,
                "real_text": reaction.text, "sim_kind": infer_kind(text), "sim_text": text,
                "prompt_chars": len(prompt.completion), "prompt_tokens": self.policy.count_tokens(prompt),
            })
        actions = [self._action(p, row["sim_text"], row["sim_kind"]) for p, row in zip(step.positions, rows)]
        self.context.observe(actions, derive_seed(self.config.seed, step.index, "mean_field"))
        return rows, actions

    def run(self, store: RunStore, progress: ProgressFactory | None = None) -> dict[str, Any]:
        """Run (or continue) the schedule, committing each step; returns throughput figures."""
        committed = store.rollback_to_committed()
        if committed:
            self.context.load_state_dict(committed[-1]["context_state"])
        remaining = self.steps[len(committed):]
        rollout_agents = sum(len(s.positions) for s in remaining if s.phase == "rollout")
        bar = progress(rollout_agents, f"{self.event.event_id} {self.config.method}") if progress else None
        started, simulated = time.perf_counter(), 0
        for step in remaining:
            rows, _ = self.run_step(step)
            context = self.context.context()
            entry = {"step": step.index, "phase": step.phase, "after_position": step.positions[-1], "text": context} \
                if self.config.method == "mf" else None
            store.commit({"step": step.index, "phase": step.phase, "positions": list(step.positions),
                          "context_state": self.context.state_dict()}, rows, entry)
            simulated += len(rows)
            if bar is not None and rows:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - started
        return {"seconds": round(elapsed, 3), "simulated_actions": simulated,
                "actions_per_second": round(simulated / elapsed, 4) if elapsed > 0 and simulated else None}


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
    manifest["status"] = "running"
    return manifest


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("device",)}


def build_models(config: SimulationConfig, pool: Any) -> tuple[LanguageModel, LanguageModel | None]:
    """The policy and (for ``mf``) the mean-field backend, sharing weights when they share a base model."""
    policy = pool.get(config.policy_model, adapter=config.policy_adapter, role="policy")
    mean_field = None
    if config.method == "mf":
        mean_field = pool.get(config.resolved_mean_field_model, adapter=config.mean_field_adapter, role="mean_field")
    return policy, mean_field


def simulate(config: SimulationConfig, output_dir: str | Path, pool: Any = None, resume: bool = False,
             progress: ProgressFactory | None = None) -> Path:
    """Run one simulation into ``output_dir`` (or resume it); returns the run directory."""
    from mfllm.backends import ModelPool

    store = RunStore(output_dir)
    if store.exists() and not resume:
        raise FileExistsError(f"{output_dir} already holds a run; pass resume=True (--resume) to continue it")
    if resume and store.exists():
        previous = store.manifest()
        if _comparable(previous["config"]) != _comparable(config.model_dump()):
            changed = sorted(k for k in config.model_dump() if previous["config"].get(k) != config.model_dump()[k])
            raise ValueError(f"{output_dir}: cannot resume with a different config (changed: {', '.join(changed)})")
    event, report = load_event(config.data, config.event_id, config.data_format)
    if resume and store.exists() and store.manifest()["data_hash"] != event.content_hash():
        raise ValueError(f"{output_dir}: the event data changed since the run started; cannot resume")
    pool = pool or ModelPool(config.device, config.dtype)
    policy, mean_field = build_models(config, pool)
    simulator = Simulator(config, event, policy, mean_field)
    if not store.exists():
        store.write_manifest(_manifest(config, event, report, simulator))
    throughput = simulator.run(store, progress)
    usage = {"policy": policy.usage.as_dict(), "mean_field": mean_field.usage.as_dict() if mean_field else None}
    store.update_manifest(status="completed", throughput=throughput, usage=usage)
    return Path(output_dir)


def estimate(config: SimulationConfig, event: Event, policy: LanguageModel) -> dict[str, Any]:
    """Model calls and prompt tokens a run will need, without generating anything (``--dry-run``).

    Mean fields are stood in for by a placeholder of the maximum update length (an upper bound),
    recent/popular contexts by the real reactions. ``full_history_tokens`` is what a prompt holding
    every earlier reaction would cost at the same step: the growth the mean field avoids.
    """
    from mfllm.prompts import mean_field_prompt, render_actions

    simulator = Simulator(config, event, policy, policy if config.method == "mf" else None)
    placeholder = ("某" if event.language == "zh" else "word ") * config.max_mean_field_tokens
    per_step, mean_field_tokens = [], 0
    for step in simulator.steps:
        actions = [simulator._action(p, event.reactions[p].text, event.reactions[p].kind) for p in step.positions]
        if config.method == "mf":
            mean_field_tokens += policy.count_tokens(mean_field_prompt(event.source.text, placeholder, actions, event.language,
                                                                       config.mean_field_max_chars))
        if step.phase == "rollout":
            context = placeholder if config.method == "mf" else simulator.context.context()
            history = render_actions([simulator._action(p, event.reactions[p].text, event.reactions[p].kind)
                                      for p in range(step.positions[0])], event.language)
            tokens, full = [], []
            for p in step.positions:
                persona = simulator.persona(event.reactions[p])
                tokens.append(policy.count_tokens(policy_prompt(event.source.text, persona, event.language, config.method, context)))
                full.append(policy.count_tokens(policy_prompt(event.source.text, persona, event.language, "recent", history)))
            per_step.append({"step": step.index, "agents": len(step.positions), "policy_prompt_tokens": round(sum(tokens) / len(tokens), 1),
                             "full_history_tokens": round(sum(full) / len(full), 1)})
        if config.method in ("recent", "popular"):
            simulator.context.observe(actions, 0)
    rollout_steps = [s for s in simulator.steps if s.phase == "rollout"]
    return {
        "event_id": event.event_id, "method": config.method, "agents": sum(len(s.positions) for s in rollout_steps),
        "policy_calls": len(rollout_steps), "mean_field_calls": len(simulator.steps) if config.method == "mf" else 0,
        "policy_prompt_tokens": round(sum(s["policy_prompt_tokens"] * s["agents"] for s in per_step)),
        "mean_field_prompt_tokens": mean_field_tokens, "max_new_tokens_per_action": config.max_action_tokens,
        "per_step": per_step,
    }
