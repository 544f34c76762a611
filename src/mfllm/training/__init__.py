"""Training layer: IB-Tune of the mean-field model, policy and SFT fine-tuning with LoRA."""

from mfllm.training.config import TrainConfig, parse_overrides
from mfllm.training.runner import train

__all__ = ["TrainConfig", "parse_overrides", "train"]
