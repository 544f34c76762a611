"""Evaluation configuration: which dimensions, which labellers, which windows; CLI flags derive from it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mfllm.configuration import YamlConfig
from mfllm.evaluation.metrics import DEFAULT_ALPHA


class EvaluationConfig(YamlConfig):
    """How runs are labelled and compared with the real population."""

    dimensions: list[str] | None = Field(default=None, description="Dimensions to evaluate (default: every built-in one).")
    dimensions_file: str | None = Field(default=None, description="YAML list of extra dimensions (name, labels, definition, ordinal).")
    window: str = Field(default="step", description="Comparison windows: step (the simulation batch), count:N or time:SECONDS.")
    alpha: float = Field(default=DEFAULT_ALPHA, gt=0, description="Smoothing pseudo-count per label in each window's distribution.")
    nll: bool = Field(default=False, description="Also score the real actions under each run's policy (loads the model).")
    information_gain: bool = Field(default=False, description="Also measure each run's information gain: NLL of the real next actions "
                                                              "without minus with the method's context, along the real history (loads "
                                                              "the policy and the mean-field model; samples the mean field as simulation does).")
    judge_model: str | None = Field(default=None, description="Model spec of an LLM judge for dimensions the offline labellers do not cover.")
    judge_mode: Literal["likelihood", "generate"] = Field(default="likelihood", description="likelihood: score each label word; "
                                                                                           "generate: a validated JSON answer.")
    judge_only: bool = Field(default=False, description="Label every dimension with the judge (no offline labellers).")
    labeller_cache: str | None = Field(default=None, description="Directory of the judge's label cache.")
    device: str = Field(default="auto", description="Device of local models (auto, cpu, cuda, ...).")

    @model_validator(mode="after")
    def _check(self) -> EvaluationConfig:
        if self.judge_only and not self.judge_model:
            raise ValueError("judge_only needs a judge_model")
        return self
