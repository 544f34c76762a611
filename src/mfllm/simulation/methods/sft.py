"""The SFT baseline: a policy fine-tuned on real actions (``--policy-adapter``), with no context."""

from __future__ import annotations

from mfllm.simulation.methods import register
from mfllm.simulation.methods.state import State


@register
class SFT(State):
    """Sees what :class:`State` sees; the difference is the tuned policy adapter the run loads. It takes
    interventions as :class:`State` does: only through the agents' prompts."""

    name = "sft"
    description = "tuned policy (--policy-adapter from `mfllm train sft`), no context"
