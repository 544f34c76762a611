"""Backends: build a :class:`~mfllm.interfaces.LanguageModel` from a model spec.

Spec kinds are registered in :mod:`mfllm.backends.registry` (see its docstring for the syntax);
:class:`ModelPool` builds backends from specs and shares loaded weights between them.
"""

from __future__ import annotations

from mfllm.backends.fake import FakeModel
from mfllm.backends.registry import BACKENDS, BackendKind, BackendSpec, ModelPool, local_source, parse_spec, register_backend
from mfllm.backends.wrappers import CachingModel, RateLimitedModel, RetryingModel, TransientBackendError

__all__ = ["BACKENDS", "BackendKind", "BackendSpec", "CachingModel", "FakeModel", "ModelPool", "RateLimitedModel", "RetryingModel",
           "TransientBackendError", "local_source", "parse_spec", "register_backend"]
