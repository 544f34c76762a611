"""Analyses over many runs: simulate then evaluate, the adapter ablation, the demo."""

from mfllm.analysis.ablation import AblationConfig, ablate
from mfllm.analysis.demo import DemoConfig, DemoResult, run_demo
from mfllm.analysis.experiments import simulate_and_evaluate

__all__ = ["AblationConfig", "DemoConfig", "DemoResult", "ablate", "run_demo", "simulate_and_evaluate"]
