"""Simulation layer: configuration, methods (mean field and baselines), the step, scenarios, the engine, run storage."""

from mfllm.simulation.config import SimulationConfig
from mfllm.simulation.engine import BranchPoint, Simulator, estimate, simulate
from mfllm.simulation.interventions import load_interventions
from mfllm.simulation.methods import baseline_names, get_method, method_names, register
from mfllm.simulation.scenario import Forecast, Intervened, Replay, Scenario
from mfllm.simulation.step import Agent, Step, StepContext, schedule
from mfllm.simulation.store import RunStore, export_actions

__all__ = ["Agent", "BranchPoint", "Forecast", "Intervened", "Replay", "RunStore", "Scenario", "SimulationConfig", "Simulator", "Step", "StepContext", "baseline_names",
           "estimate", "export_actions", "get_method", "load_interventions", "method_names", "register", "schedule", "simulate"]
