"""Throughput a user can plan with: simulated actions per second and tokens per simulated action.

The engine records each run's figures in its manifest (``throughput``): the wall-clock seconds of its run
loop (warm-up replay included: it calls the models too), the actions it simulated, and the tokens its
backends counted during that time, per role (``policy``, ``mean_field``). Tokens per action are prompt
tokens (everything sent to the model, scoring included) and generated tokens (kept text) divided by the
simulated actions. A resumed run records the session that finished it.

A dry run turns the engine's :func:`~mfllm.simulation.engine.estimate` into wall-clock time with a speed:
measured (the pooled actions per second of earlier completed runs under the output directory, same policy
model, backend and method; else same model and backend, any method), else a reference figure for the
model and backend (:data:`REFERENCE_SPEEDS`), else unknown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

ROLES = ("policy", "mean_field")
REFERENCE_SPEEDS: dict[tuple[str, str], tuple[float, str]] = {
    ("embedded:gemma-3-270m", "llamacpp"): (2.820, "the README's reference figure for Gemma-3-270M on llama.cpp (make bench, 2-core "
                                                   "CPU, LLM mean field, 32 agents in batches of 16, Chinese demo event, medians of 3)"),
    ("embedded:gemma-3-270m", "transformers"): (0.443, "the README's reference figure for Gemma-3-270M on transformers (make bench, 2-core "
                                                       "CPU, LLM mean field, 32 agents in batches of 16, Chinese demo event, medians of 3)"),
}
"""Actions per second by (policy model spec, backend), with where the figure comes from: used only when no earlier run was measured."""


def _per_action(total: int, actions: int) -> float | None:
    return round(total / actions, 2) if actions else None


def role_figures(usage: Mapping[str, int], actions: int) -> dict[str, Any]:
    """One role's calls and tokens over a run, and its tokens per simulated action (None when the backend
    could not count every request's tokens)."""
    metered = not usage.get("unmetered_requests", 0)
    return {"calls": usage.get("generate_calls", 0) + usage.get("score_calls", 0), "prompt_tokens": usage.get("prompt_tokens", 0),
            "generated_tokens": usage.get("generated_tokens", 0), "unmetered_requests": usage.get("unmetered_requests", 0),
            "prompt_tokens_per_action": _per_action(usage.get("prompt_tokens", 0), actions) if metered else None,
            "generated_tokens_per_action": _per_action(usage.get("generated_tokens", 0), actions) if metered else None}


def run_throughput(seconds: float, actions: int, usage: Mapping[str, Mapping[str, int] | None], shared_counter: bool = False) -> dict[str, Any]:
    """The ``throughput`` a manifest records: seconds, simulated actions, actions per second, and per role
    (``usage``: the counts each role's backend added during the run; None for a role the run lacks) the calls
    and tokens. ``shared_counter``: one backend counted both roles (it then appears as ``policy``)."""
    roles = {role: role_figures(counts, actions) if counts is not None else None for role, counts in usage.items()}
    figures = {"seconds": round(seconds, 3), "simulated_actions": actions,
               "actions_per_second": round(actions / seconds, 4) if seconds > 0 and actions else None, **roles}
    figures.update(_token_totals(list(roles.values()), actions))
    if shared_counter:
        figures["mean_field_counted_with_policy"] = True
    return figures


def _token_totals(roles: list[dict[str, Any] | None], actions: int) -> dict[str, float | None]:
    present = [r for r in roles if r is not None]
    known = all(not r["unmetered_requests"] for r in present)
    return {"prompt_tokens_per_action": _per_action(sum(r["prompt_tokens"] for r in present), actions) if known else None,
            "generated_tokens_per_action": _per_action(sum(r["generated_tokens"] for r in present), actions) if known else None}


def pooled_throughput(figures: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Runs' throughputs pooled: total actions over total seconds, total tokens over total actions (per role
    and together; unknown when a run recorded no tokens, as runs made before they were counted); None
    without a run that simulated anything."""
    runs = [f for f in figures if f and f.get("simulated_actions") and f.get("seconds")]
    if not runs:
        return None
    actions, seconds = sum(f["simulated_actions"] for f in runs), sum(f["seconds"] for f in runs)
    roles: dict[str, Any] = {}
    counted = all(f.get("policy") for f in runs)
    for role in ROLES if counted else ():
        present = [f[role] for f in runs if f.get(role)]
        if present:
            total = {key: sum(p.get(key, 0) for p in present) for key in ("prompt_tokens", "generated_tokens", "unmetered_requests")}
            roles[role] = role_figures({**total, "generate_calls": sum(p["calls"] for p in present)}, actions)
    tokens = _token_totals(list(roles.values()), actions) if counted else {"prompt_tokens_per_action": None, "generated_tokens_per_action": None}
    return {"runs": len(runs), "seconds": round(seconds, 3), "simulated_actions": actions, "actions_per_second": round(actions / seconds, 4),
            **roles, **tokens,
            **({"mean_field_counted_with_policy": True} if any(f.get("mean_field_counted_with_policy") for f in runs) else {})}


def _tokens(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.1f}"


def throughput_text(figures: Mapping[str, Any]) -> str:
    """One line: actions per second and tokens per action (each role's beside the total)."""
    rate = figures.get("actions_per_second")
    line = (f"{figures['simulated_actions']} simulated actions in {figures['seconds']:,.1f} s: "
            f"{'unknown' if rate is None else f'{rate:.3g}'} actions/s; tokens per action: prompt {_tokens(figures.get('prompt_tokens_per_action'))}, "
            f"generated {_tokens(figures.get('generated_tokens_per_action'))}")
    parts = [f"{role.replace('_', ' ')} {_tokens(figures[role]['prompt_tokens_per_action'])} + "
             f"{_tokens(figures[role]['generated_tokens_per_action'])}" for role in ROLES if figures.get(role)]
    if len(parts) > 1:
        line += f" ({', '.join(parts)})"
    elif figures.get("mean_field_counted_with_policy"):
        line += " (policy and mean field share one backend: counted together)"
    return line


@dataclass(frozen=True)
class Speed:
    """Actions per second to plan with (None: unknown) and, in plain words, where the figure comes from."""

    actions_per_second: float | None
    source: str


def completed_runs(root: Path) -> list[dict[str, Any]]:
    """Manifests of the completed simulation runs below ``root`` that measured their throughput."""
    manifests = []
    for path in sorted(root.rglob("manifest.json")) if root.is_dir() else []:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # a manifest being written or a foreign file: not a measurement
            continue
        if manifest.get("kind") == "simulation" and manifest.get("status") == "completed" and (manifest.get("throughput") or {}).get("seconds"):
            manifests.append(manifest)
    return manifests


def measured_speed(root: str | Path, policy_model: str, backend: str | None, method: str) -> Speed:
    """The speed of a run of ``method`` with ``policy_model`` on ``backend``: measured by earlier completed
    runs under ``root`` (same method, else any method of that model and backend), else the reference figure
    for the model and backend, else unknown."""
    from mfllm.simulation.engine import backend_of

    same_model = [m for m in completed_runs(Path(root)) if m["config"].get("policy_model") == policy_model
                  and backend_of(m.get("models", {}).get("policy")) == backend]
    for runs, which in (([m for m in same_model if m["config"].get("method") == method], f"{method} runs"), (same_model, "runs of any method")):
        pooled = pooled_throughput(m["throughput"] for m in runs)
        if pooled is not None:
            return Speed(pooled["actions_per_second"], f"measured: {pooled['runs']} earlier {which} of {policy_model} on {backend} under "
                                                       f"{root} ({pooled['simulated_actions']} actions in {pooled['seconds']:,.0f} s)")
    if (policy_model, backend) in REFERENCE_SPEEDS:
        rate, source = REFERENCE_SPEEDS[policy_model, backend]
        return Speed(rate, f"reference figure, not measured here: {source}")
    return Speed(None, f"unknown: no completed run of {policy_model} on {backend} under {root} and no reference figure for them")


def wall_clock(actions: int, speed: Speed) -> float | None:
    """Seconds ``actions`` simulated actions take at ``speed`` (None when the speed is unknown)."""
    return actions / speed.actions_per_second if speed.actions_per_second else None


def duration_text(seconds: float | None) -> str:
    """A duration for people: seconds, minutes or hours; "unknown" for None."""
    if seconds is None:
        return "unknown"
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
