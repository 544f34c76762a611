"""Simulation layer: configuration, context providers (mean field and baselines), the loop, run storage."""

from mfllm.simulation.config import METHODS, SimulationConfig
from mfllm.simulation.context import MeanField, NoContext, PopularK, RecentK
from mfllm.simulation.engine import Simulator, estimate, schedule, simulate
from mfllm.simulation.store import RunStore, export_actions

__all__ = ["METHODS", "MeanField", "NoContext", "PopularK", "RecentK", "RunStore", "SimulationConfig", "Simulator",
           "estimate", "export_actions", "schedule", "simulate"]
