"""Simulation configuration: one pydantic model, loadable from YAML with CLI overrides."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from mfllm.configuration import YamlConfig
from mfllm.simulation.methods import get_method, resolve_method

if TYPE_CHECKING:
    from mfllm.backends import ModelPool


class SimulationConfig(YamlConfig):
    """Everything that determines a simulation run (and so goes into its manifest)."""

    data: str = Field(description="Dataset directory or file (see `mfllm data list`).")
    data_format: str | None = Field(default=None, description="Reader name; detected from the path when omitted.")
    event_id: str | None = Field(default=None, description="Event to simulate; the first event when omitted.")
    method: str = Field(default="mf", validate_default=True, description="What agents see of the population: a registered method (`mfllm methods` lists "
                                                  "them: mf-hybrid, mf-stats, mf-llm, state, recent, popular, sft); mf is the "
                                                  "default mean field, recorded resolved.")
    policy_model: str = Field(default="embedded:gemma-3-270m", description="Policy model spec (embedded:NAME, hf:PATH, openai:MODEL@URL, fake).")
    mean_field_model: str | None = Field(default=None, description="Mean-field model spec; the policy model when omitted.")
    policy_adapter: str | None = Field(default=None, description="LoRA adapter directory for the policy (default: the adapter "
                                                                 "shipped for an embedded model, see adapter).")
    mean_field_adapter: str | None = Field(default=None, description="LoRA adapter directory for the mean-field model (default: "
                                                                     "the adapter shipped for an embedded model, see adapter).")
    adapter: bool = Field(default=True, description="A role without an adapter directory uses the LoRA adapter mfllm ships for an "
                                                    "embedded model where there is one (the tuned simulator; README 'The tuned "
                                                    "simulator'; the sft baseline excepted); --no-adapter: the base model.")
    num_agents: int | None = Field(default=None, ge=1, description="Agents to simulate after warm-up; all remaining reactions when omitted.")
    warmup: int = Field(default=32, ge=0, description="Real reactions fed to the context before simulation starts (cut-off per reaction).")
    batch_size: int = Field(default=16, ge=1, description="Agents per step; they act together, then the context updates.")
    context_k: int = Field(default=8, ge=1, description="Actions shown by the recent and popular baselines.")
    popular_window: int = Field(default=64, ge=1, description="Recent actions the popular baseline ranks by engagement.")
    seed: int = Field(default=0, description="Run seed; every model call derives its own seed from it.")
    temperature: float = Field(default=1.0, ge=0.0, description="Sampling temperature (0 = greedy); 1 samples the model's own "
                                                                "distribution (see README 'Temperature, length floor and the tuned policy').")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_action_tokens: int = Field(default=48, ge=1, description="Upper bound on an action (tokens); generation stops at the end of the "
                                                                 "line first, and with action_length=data at the agent's own bound.")
    action_length: Literal["data", "fixed"] = Field(default="data", description="data: each agent's bound is length_slack times the "
                                                    "length of a real warm-up reaction drawn at random (seeded), so lengths follow the "
                                                    "event; fixed: max_action_tokens for every agent.")
    length_slack: float = Field(default=3.0, ge=1.0, description="With action_length=data, an agent may write this many times the drawn "
                                                                  "real length (plus one token); warm-up reactions run shorter than later "
                                                                  "ones (README 'The tuned simulator (measured)').")
    length_floor: float | None = Field(default=None, ge=0.0, le=1.0, description="With action_length=data, an agent may not end its "
                                              "action before this share of the drawn real length (end-of-line and end-of-text tokens are "
                                              "held back until then; 0 = no floor). Omitted: the floor the policy's adapter was measured "
                                              "with (its mfllm_adapter.json, 0.25 for the shipped one), else 0; see README 'The tuned "
                                              "simulator (measured)'.")
    repetition_penalty: float = Field(default=1.0, gt=0.0, description="Policy: a token already generated in the action has its logit "
                                                                       "divided by this (1 = off); see SamplingParams.")
    frequency_penalty: float = Field(default=0.4, description="Policy: subtracted from a token's logit per earlier use in the action "
                                                               "(llama.cpp and OpenAI semantics; 0 = off).")
    presence_penalty: float = Field(default=0.4, description="Policy: subtracted once from the logit of a token already used in the "
                                                              "action (0 = off).")
    penalty_window: int = Field(default=64, ge=0, description="Policy: how many of the action's last generated tokens the penalties "
                                                               "look at.")
    resample_copies: bool = Field(default=True, description="Ask an agent again (new seed, up to max_generation_attempts) when its "
                                                            "text repeats an earlier text of the run (warm-up, source post or another "
                                                            "agent's), is degenerate or is copied from its own prompt (mfllm.text); "
                                                            "the last attempt is kept and marked.")
    calibrate_choices: bool = Field(default=True, description="Calibrate the kind choice on the warm-up: a scale and per-choice offsets "
                                                              "of the policy's marker log-probs, fitted by maximum likelihood to what the "
                                                              "real warm-up reactors did (see README 'Agents choose what to do'); else "
                                                              "the markers' probabilities at the run's temperature.")
    output_vocabulary: Literal["language", "full"] = Field(default="language", description="language: the policy and mean-field "
                                                           "model write from the event language's tokens only where the backend can "
                                                           "(llama.cpp; several times faster decoding, see README 'Fast inference'); "
                                                           "full: from the whole vocabulary. Scores always use the whole vocabulary.")
    max_mean_field_tokens: int = Field(default=128, ge=8, description="Upper bound on a mean-field update (tokens).")
    mean_field_temperature: float | None = Field(default=None, ge=0.0, description="Temperature of mean-field updates; the policy's "
                                                                                     "temperature when omitted.")
    mean_field_top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus mass of mean-field updates; top_p when omitted.")
    max_generation_attempts: int = Field(default=4, ge=1, description="Tries per agent when its text is empty, or (resample_copies) repeats "
                                                                      "an earlier text or loops: a new seed each, recorded in the row; then an "
                                                                      "empty action is recorded as failed, any other text is kept and marked.")
    mean_field_max_chars: int = Field(default=120, ge=20, description="Longest key points a mean-field update keeps (characters in zh, "
                                                                                   "words in en).")
    interventions: list[str] = Field(default=[], description="YAML files of interventions (injected posts, statements, "
                                                                        "moderation, targeted at subgroups; see README 'What-if').")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, ...")
    engine: Literal["auto", "llamacpp", "transformers"] = Field(default="auto", description="What runs embedded: models: llama.cpp "
                                                                                               "on a CPU when installed (auto), or force one.")
    threads: int | None = Field(default=None, ge=1, description="llama.cpp threads (default: its own choice).")
    n_ctx: int | None = Field(default=None, ge=256, description="llama.cpp context size in tokens (default: the backend's).")
    request_timeout_s: float = Field(default=60.0, gt=0, description="OpenAI-compatible servers: the longest one attempt of a request may take.")
    max_attempts: int = Field(default=4, ge=1, description="OpenAI-compatible servers: attempts per request (transient faults are retried).")
    dtype: str = Field(default="auto", description="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16.")

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        get_method(method)
        return resolve_method(method)

    @model_validator(mode="after")
    def _check(self) -> SimulationConfig:
        mean_field_settings = ("mean_field_model", "mean_field_adapter", "mean_field_temperature", "mean_field_top_p")
        if not get_method(self.method).needs_mean_field_model and any(getattr(self, f) is not None for f in mean_field_settings):
            raise ValueError(f"method {self.method!r} has no mean-field model: drop {', '.join(f for f in mean_field_settings if getattr(self, f) is not None)}")
        return self

    def pool_options(self) -> dict[str, Any]:
        """The :class:`~mfllm.backends.ModelPool` keyword arguments of this run: device, dtype, engine and server settings."""
        return {"device": self.device, "dtype": self.dtype, "request_timeout_s": self.request_timeout_s, "max_attempts": self.max_attempts,
                "engine": self.engine, "threads": self.threads, "n_ctx": self.n_ctx}

    def model_pool(self) -> ModelPool:
        """A model pool with this run's :meth:`pool_options`."""
        from mfllm.backends import ModelPool

        return ModelPool(**self.pool_options())

    @property
    def resolved_mean_field_model(self) -> str:
        return self.mean_field_model or self.policy_model

    def resolved_adapter(self, role: Literal["policy", "mean_field"]) -> str | None:
        """The LoRA adapter of ``role``: the directory given, else (with ``adapter``) the one shipped for its
        embedded model, else None (the base model). The sft baseline's policy is never given the shipped one."""
        given = self.policy_adapter if role == "policy" else self.mean_field_adapter
        if given or not self.adapter or (role == "policy" and self.method == "sft"):
            return given
        from mfllm.backends.embedded import shipped_adapter

        return shipped_adapter(self.policy_model if role == "policy" else self.resolved_mean_field_model, role)

    def resolved_length_floor(self) -> float:
        """The length floor the policy runs with: ``length_floor`` when given, else its adapter's (see
        :func:`mfllm.backends.hf.adapter_generation`), else 0."""
        if self.length_floor is not None:
            return self.length_floor
        from mfllm.backends.hf import adapter_generation

        return float(adapter_generation(self.resolved_adapter("policy")).get("length_floor", 0.0))

    @classmethod
    def recorded(cls, values: dict[str, Any]) -> SimulationConfig:
        """The config a manifest recorded. Fields added since take their defaults, except those whose default
        would change what the run did: a run recorded before ``adapter`` existed ran without a shipped adapter,
        one recorded before ``length_floor`` without a floor."""
        return cls(**{**RECORDED_BEFORE, **values})


RECORDED_BEFORE: dict[str, Any] = {"adapter": False, "length_floor": 0.0}
"""What a recorded config without these fields ran with (see :meth:`SimulationConfig.recorded`)."""
