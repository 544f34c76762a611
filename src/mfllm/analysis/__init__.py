"""Analyses over many runs: simulate then evaluate, the adapter ablation, the demo, counterfactual branches."""

from mfllm.analysis.ablation import AblationConfig, ablate
from mfllm.analysis.branch import BranchConfig, branch
from mfllm.analysis.compare import CompareConfig, compare_branch, write_comparison
from mfllm.analysis.demo import DemoConfig, DemoResult, run_demo
from mfllm.analysis.experiments import simulate_and_evaluate

__all__ = ["AblationConfig", "BranchConfig", "CompareConfig", "DemoConfig", "DemoResult", "ablate", "branch", "compare_branch", "run_demo",
           "simulate_and_evaluate", "write_comparison"]
