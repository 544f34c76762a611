"""Training configuration (IB-Tune mean field, policy, SFT): one pydantic model, YAML plus overrides."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mfllm.configuration import YamlConfig, parse_yaml
from mfllm.interfaces import LLMMeanField
from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.methods import get_method, mean_field_names, resolve_method

Task = Literal["mean-field", "policy", "sft"]
DEFAULT_METHODS: dict[str, str] = {"mean-field": "mf-hybrid", "policy": SimulationConfig.model_fields["method"].default, "sft": "sft"}
"""The mean field of each task when none is given: one with a model part to tune, the simulator's default
(the context the policy is simulated with), none."""


class TrainConfig(YamlConfig):
    """Every setting of a training run; it is saved with the adapter and checked when resuming."""

    task: Task = Field(description="mean-field: IB-Tune of the mean-field model (score-function estimator); policy: NLL of real "
                                   "actions given mean fields the mean-field model produced; sft: policy with no mean field.")
    data: str = Field(description="Dataset directory or file.")
    data_format: str | None = Field(default=None, description="Reader name; detected when omitted.")
    events: list[str] | None = Field(default=None, description="Event ids to use; all events of the dataset when omitted.")
    max_events: int | None = Field(default=None, ge=3, description="Use at most this many events (in dataset order), before splitting.")
    min_reactions: int = Field(default=32, ge=2, description="Skip events with fewer reactions.")
    split: tuple[float, float, float] = Field(default=(0.6, 0.2, 0.2), description="Train/validation/test shares, by event (never by reaction).")
    split_seed: int = Field(default=0, description="Seed of the event split.")
    test_events: list[str] = Field(default_factory=list, description="Event ids kept for testing: always in the test split, never in "
                                                                   "train or validation (e.g. the events a study evaluates on). They "
                                                                   "are loaded even when not among events or past max_events; those "
                                                                   "missing from the data or below min_reactions are listed as "
                                                                   "test_events_unused in split.json. The shares split the other events.")
    base_model: str = Field(default="embedded:gemma-3-270m", description="Base model spec (embedded:NAME or hf:PATH).")
    mean_field_adapter: str | None = Field(default=None, description="policy task: mean fields come from the base model with this adapter.")
    policy_adapter: str | None = Field(default=None, description="mean-field task: the policy that scores next actions (frozen base when omitted).")
    output_dir: str = Field(description="Where checkpoints, logs and the final adapter go.")
    batch_size: int = Field(default=16, ge=1, description="Agents per simulation step: the batch the mean field summarises and predicts.")
    max_steps_per_event: int | None = Field(default=None, ge=1, description="Use at most this many batches of each event.")
    lora_r: int = Field(default=8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=16, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] | str = Field(default="all-linear", description="Modules that get LoRA weights.")
    learning_rate: float = Field(default=2e-4, gt=0, description="Optimizer learning rate.")
    max_steps: int = Field(default=20, ge=1, description="Optimizer steps (policy/sft: the learning rate decays linearly to 0 there).")
    max_minutes: float | None = Field(default=None, gt=0, description="Stop after this many minutes of training in this process "
                                                                       "(saving a checkpoint there) even before max_steps; --resume "
                                                                       "continues. The learning-rate schedule still runs to max_steps.")
    train_batch_size: int = Field(default=8, ge=1, description="policy/sft: sequences per optimizer step, batched by length.")
    num_samples: int = Field(default=4, ge=2, description="mean-field: K summaries sampled per context (leave-one-out baseline).")
    beta: float = Field(default=0.05, ge=0.0, description="mean-field: weight of KL(q || p0), p0 = base model prompted without history.")
    sample_temperature: float = Field(default=1.0, gt=0, description="mean-field: temperature of the sampled summaries.")
    max_action_tokens: int = Field(default=48, ge=1, description="Longest action kept in training examples (tokens).")
    method: str | None = Field(default=None, description="The mean field. mean-field task: the method whose language-model part is "
                                                         "trained (mf-hybrid when omitted, or mf-llm); policy task: the mean field whose "
                                                         "contexts the policy learns from, built as simulation builds them over the real "
                                                         "history (any mean field; simulation's default when omitted); sft: none.")
    max_mean_field_tokens: int = Field(default=128, ge=8, description="Longest mean-field summary (tokens), as in simulation.")
    mean_field_temperature: float | None = Field(default=None, ge=0.0, description="Temperature of the mean fields the policy is trained "
                                                                                     "on and evaluation samples; simulation's default when omitted.")
    mean_field_top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus mass of those mean fields; simulation's "
                                                                                      "default when omitted.")
    mean_field_max_chars: int = Field(default=120, ge=20, description="Longest key points kept (characters in zh, words in en).")
    max_length: int = Field(default=768, ge=64, description="Longest training sequence (tokens); longer prompts are cut from the left.")
    dtype: str = Field(default="auto", description="auto (bf16 on GPU, fp32 on CPU), fp32, bf16.")
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for memory.")
    device: str = Field(default="auto", description="auto, cpu, cuda, ...")
    seed: int = Field(default=0, description="Seed of sampling and initialisation.")
    log_every: int = Field(default=1, ge=1, description="Log every N optimizer steps.")
    save_every: int = Field(default=10, ge=1, description="Checkpoint every N optimizer steps (policy/sft: and log the "
                                                                 "validation loss); a resumed run continues from the last one.")
    eval_events: int = Field(default=4, ge=1, description="Events of each split scored before/after training (the test split "
                                                           "also scores every one of test_events).")
    eval_samples: int = Field(default=4, ge=0, description="mean-field: summaries sampled per training context to measure the expected "
                                                           "reward before/after training (same seeds both times); 0 skips it.")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0 or self.split[0] == 0:
            raise ValueError(f"split must be three non-negative shares summing to 1 with a training share, got {self.split}")
        if len(set(self.test_events)) != len(self.test_events) or not all(e.strip() for e in self.test_events):
            raise ValueError(f"test_events must be distinct, non-empty event ids, got {self.test_events}")
        if self.task != "policy" and self.mean_field_adapter:
            raise ValueError("mean_field_adapter is only used by the policy task")
        if self.task != "mean-field" and self.policy_adapter:
            raise ValueError("policy_adapter is only used by the mean-field task")
        self.method = resolve_method(self.method or DEFAULT_METHODS[self.task])
        if self.task == "sft" and self.method != "sft":
            raise ValueError(f"the sft task trains the no-context baseline: method {self.method!r} is not used (drop it, or train policy)")
        if self.task == "mean-field" and not issubclass(get_method(self.method), LLMMeanField):
            raise ValueError(f"method {self.method!r} has no language-model part for the mean-field task to train "
                             "(it needs no model call); choose mf-llm or mf-hybrid")
        if self.task == "policy" and self.method not in mean_field_names():
            raise ValueError(f"the policy task learns from a mean field: method {self.method!r} is not one; choose from "
                             f"{', '.join(mean_field_names())} (sft is the no-context baseline)")
        if self.mean_field_adapter and not get_method(self.method).needs_mean_field_model:
            raise ValueError(f"mean_field_adapter is not used: method {self.method!r} has no mean-field model")
        if self.base_model.startswith(("openai:", "fake")):
            raise ValueError(f"training needs local weights: base_model must be embedded:NAME or hf:PATH, got {self.base_model!r}")
        return self


    def simulation_config(self) -> SimulationConfig:
        """The simulator settings that shape a step (method, batch, mean-field prompt and sampling), so
        training builds its steps exactly as simulation does; training starts from the base model (no shipped adapter)."""
        method = self.method
        mean_field = {} if method == "sft" else {"mean_field_temperature": self.mean_field_temperature, "mean_field_top_p": self.mean_field_top_p}
        return SimulationConfig(data=self.data, data_format=self.data_format, method=method, policy_model=self.base_model,
                                batch_size=self.batch_size, max_action_tokens=self.max_action_tokens, max_mean_field_tokens=self.max_mean_field_tokens,
                                mean_field_max_chars=self.mean_field_max_chars, seed=self.seed, adapter=False, **mean_field)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs from the command line, values parsed as YAML (numbers, lists, booleans)."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        overrides[key.replace("-", "_")] = parse_yaml(value, f"--set {key}")
    return overrides
