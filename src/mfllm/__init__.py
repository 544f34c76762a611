"""mfllm: simulate how a population reacts to an event with a mean-field LLM, calibrated against real data.

Importing mfllm loads no model and no heavy dependency; backends import torch/transformers on first use.
"""

from mfllm.backends import ModelPool, parse_spec
from mfllm.data import Event, LoadReport, Reaction, UserProfile, get_reader, load_event, persona_text
from mfllm.interfaces import ContextProvider, LanguageModel, Prompt, SamplingParams
from mfllm.simulation import RunStore, SimulationConfig, Simulator, estimate, export_actions, simulate

__version__ = "0.1.0"

__all__ = ["ContextProvider", "Event", "LanguageModel", "LoadReport", "ModelPool", "Prompt", "Reaction", "RunStore",
           "SamplingParams", "SimulationConfig", "Simulator", "UserProfile", "estimate", "export_actions", "get_reader",
           "load_event", "parse_spec", "persona_text", "simulate"]
