"""Analyses over many runs: simulate then evaluate, the adapter ablation, the demo, counterfactual branches, forecasts
past the data and intervention search."""

from mfllm.analysis.ablation import AblationConfig, ablate
from mfllm.analysis.branch import BranchConfig, branch
from mfllm.analysis.compare import CompareConfig, compare_branch, write_comparison
from mfllm.analysis.demo import DemoConfig, DemoResult, run_demo
from mfllm.analysis.experiments import simulate_and_evaluate
from mfllm.analysis.forecast import ForecastConfig, forecast
from mfllm.analysis.plan import PlanConfig, plan

__all__ = ["AblationConfig", "BranchConfig", "CompareConfig", "DemoConfig", "DemoResult", "ForecastConfig", "PlanConfig", "ablate", "branch",
           "compare_branch", "forecast", "plan", "run_demo", "simulate_and_evaluate", "write_comparison"]
