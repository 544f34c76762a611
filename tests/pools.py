"""A model pool for tests: one given model serves every spec and role."""

from __future__ import annotations

from mfllm.backends import ModelPool
from mfllm.interfaces import LanguageModel


class FixedPool(ModelPool):
    """Hands out ``model`` for every spec and role (adapters ignored)."""

    def __init__(self, model: LanguageModel):
        super().__init__()
        self.model = model

    def get(self, spec, adapter=None, role="model"):  # type: ignore[no-untyped-def]
        return self.model
