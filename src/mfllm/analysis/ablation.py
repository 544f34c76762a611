"""The adapter ablation: held-out events under every combination of tuned/untuned policy and mean field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from mfllm.analysis.experiments import simulate_and_evaluate
from mfllm.configuration import YamlConfig
from mfllm.evaluation.config import EvaluationConfig
from mfllm.evaluation.report import write_report
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import ProgressFactory
from mfllm.simulation.methods import get_method


class AblationConfig(YamlConfig):
    """Which events, adapters and schedule the ablation simulates."""

    data: str = Field(description="Dataset directory or file.")
    data_format: str | None = Field(default=None, description="Reader name; detected from the path when omitted.")
    events: list[str] = Field(description="Held-out event ids (not used in training).")
    base_model: str = Field(default="embedded:gemma-3-270m", description="Base model the adapters were trained on.")
    policy_adapter: str | None = Field(default=None, description="Policy adapter from `mfllm train policy` (default: the one "
                                                                 "shipped for an embedded base model, if any).")
    mean_field_adapter: str | None = Field(default=None, description="Mean-field adapter from `mfllm train mean-field` (default: "
                                                                     "the one shipped for an embedded base model, if any).")
    sft_adapter: str | None = Field(default=None, description="SFT adapter from `mfllm train sft` (adds the sft baseline).")
    method: str = Field(default="mf-hybrid", description="The mean field the adapters were trained for (one with a model part: "
                                                        "mf-hybrid or mf-llm).")
    num_agents: int = Field(default=32, ge=1, description="Agents simulated per run after warm-up.")
    warmup: int = Field(default=16, ge=0, description="Real reactions fed to the context before simulation starts.")
    batch_size: int = Field(default=16, ge=1, description="Agents per step.")
    seeds: list[int] = Field(default=[0], description="One run per seed.")
    dimensions: list[str] = Field(default=["sentiment", "emotion", "behaviour"], description="Dimensions to evaluate.")
    device: str = Field(default="auto", description="auto, cpu, cuda, ...")
    output: str = Field(default="runs/ablation", description="Root of the variants' run directories and the report.")

    def variants(self) -> dict[str, dict[str, Any]]:
        """Variant name -> the settings that make it (each adapter alone, both together, sft, state without and
        with the tuned policy). Only the adapters named here are used (no variant falls back on a shipped one)."""
        from mfllm.backends.embedded import shipped_adapter

        name = self.method
        policy = self.policy_adapter or shipped_adapter(self.base_model, "policy")
        mean_field = None
        if get_method(self.method).needs_mean_field_model:
            mean_field = self.mean_field_adapter or shipped_adapter(self.base_model, "mean_field")
        variants: dict[str, dict[str, Any]] = {f"{name} (untuned)": {}}
        if policy:
            variants[f"{name} + tuned policy"] = {"policy_adapter": policy}
        if mean_field:
            variants[f"{name} + tuned mean field"] = {"mean_field_adapter": mean_field}
        if policy and mean_field:
            variants[f"{name} + both tuned"] = {"policy_adapter": policy, "mean_field_adapter": mean_field}
        if self.sft_adapter:
            variants["sft"] = {"method": "sft", "policy_adapter": self.sft_adapter}
        variants["state"] = {"method": "state"}
        if policy:
            variants["state + tuned policy"] = {"method": "state", "policy_adapter": policy}
        return {variant: {"adapter": False, **settings} for variant, settings in variants.items()}


def ablate(config: AblationConfig, pool: Any = None, resume: bool = False, progress: ProgressFactory | None = None) -> Path:
    """Simulate every variant on every event and seed, evaluate them in one table (the variant is the
    table's method column) and write the report; returns the report's index page."""
    plan, labels = [], []
    for name, extra in config.variants().items():
        slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
        for event_id in config.events:
            for seed in config.seeds:
                simulation = SimulationConfig(data=config.data, data_format=config.data_format, policy_model=config.base_model,
                                              num_agents=config.num_agents, warmup=config.warmup, batch_size=config.batch_size,
                                              device=config.device, event_id=event_id, seed=seed, **{"method": config.method, **extra})
                plan.append((simulation, Path(config.output) / slug / event_id / f"seed{seed}"))
                labels.append(name)
    evaluation = EvaluationConfig(dimensions=config.dimensions, nll=True, device=config.device)
    evaluations, dimensions = simulate_and_evaluate(plan, evaluation, pool, resume=resume, progress=progress, labels=labels)
    return write_report(evaluations, dimensions, Path(config.output) / "report")
