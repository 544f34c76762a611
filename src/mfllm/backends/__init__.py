"""Backends: build a :class:`~mfllm.interfaces.LanguageModel` from a model spec.

Spec strings (CLI and configs):

- ``embedded:gemma-3-270m`` (default) or ``embedded:smollm2-135m-instruct``: models shipped in PyPI packages
- ``hf:<path or hub id>`` (optionally ``hf:<dir>#<file.gguf>``): any local transformers causal LM
- ``openai:<model>@<base_url>``: an OpenAI-compatible server (vLLM, Ollama, OpenAI); key from ``$OPENAI_API_KEY``
- ``fake``: the deterministic fake for tests
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mfllm.backends.fake import FakeModel
from mfllm.cache import digest
from mfllm.backends.wrappers import CachingModel, RateLimitedModel, RetryingModel, TransientBackendError
from mfllm.interfaces import LanguageModel

__all__ = ["BackendSpec", "CachingModel", "FakeModel", "ModelPool", "RateLimitedModel", "RetryingModel",
           "TransientBackendError", "parse_spec"]

BackendKind = Literal["embedded", "hf", "openai", "fake"]


@dataclass(frozen=True)
class BackendSpec:
    kind: BackendKind
    name: str
    base_url: str | None = None
    gguf_file: str | None = None

    def __str__(self) -> str:
        if self.kind == "fake":
            return "fake"
        if self.kind == "openai":
            return f"openai:{self.name}@{self.base_url}"
        return f"{self.kind}:{self.name}" + (f"#{self.gguf_file}" if self.gguf_file else "")


def parse_spec(spec: str) -> BackendSpec:
    """Parse a model spec string (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "fake":
        return BackendSpec("fake", rest or "fake")
    if kind == "embedded":
        return BackendSpec("embedded", rest or "gemma-3-270m")
    if kind == "hf" and rest:
        path, _, gguf = rest.partition("#")
        return BackendSpec("hf", path, gguf_file=gguf or None)
    if kind == "openai" and "@" in rest:
        model, _, url = rest.partition("@")
        return BackendSpec("openai", model, base_url=url)
    raise ValueError(f"bad model spec {spec!r}: use embedded:NAME, hf:PATH[#FILE.gguf], openai:MODEL@URL or fake")


def local_source(spec: BackendSpec) -> Any:
    """The :class:`~mfllm.backends.hf.ModelSource` of a local model spec (embedded:NAME or hf:PATH)."""
    from mfllm.backends.hf import ModelSource

    if spec.kind == "embedded":
        from mfllm.backends.embedded import embedded_source

        return embedded_source(spec.name)
    return ModelSource(spec.name, spec.gguf_file)


class ModelPool:
    """Builds backends and shares loaded weights: a policy and a mean-field model on the same base
    model (each with its own LoRA adapter) load the weights once."""

    def __init__(self, device: str = "auto", dtype: str = "auto", api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, timeout_s: float = 60.0):
        self.device, self.dtype = device, dtype
        self.api_key_env, self.max_concurrency, self.timeout_s = api_key_env, max_concurrency, timeout_s
        self._loaded: dict[tuple[str, str | None], object] = {}

    @property
    def loaded(self) -> list[object]:
        """The local models loaded so far (each shared by all its backend views)."""
        return list(self._loaded.values())

    def get(self, spec: str | BackendSpec, adapter: str | None = None, role: str = "model") -> LanguageModel:
        """A backend for ``spec``; ``adapter`` is a LoRA directory attached under the name ``role``."""
        spec = parse_spec(spec) if isinstance(spec, str) else spec
        if spec.kind == "fake":
            if adapter:
                raise ValueError("the fake backend cannot load adapters")
            return FakeModel(spec.name)
        if spec.kind == "openai":
            if adapter:
                raise ValueError("adapters for an OpenAI-compatible server are configured on the server (e.g. vLLM --lora-modules)")
            from mfllm.backends.openai_http import OpenAICompatibleModel

            return OpenAICompatibleModel(spec.name, spec.base_url or "", api_key_env=self.api_key_env,
                                         max_concurrency=self.max_concurrency, request_timeout_s=self.timeout_s)
        from mfllm.backends.hf import LoadedCausalLM, TransformersModel

        key = (str(spec), None)
        if key not in self._loaded:
            self._loaded[key] = LoadedCausalLM(local_source(spec), self.device, self.dtype)
        loaded = self._loaded[key]
        name = None
        if adapter:  # one name per adapter directory, so repeated runs reuse an attached adapter
            name = f"{role}-{digest(str(Path(adapter).resolve()))[:8]}"
            if name not in loaded.adapters:  # type: ignore[attr-defined]
                loaded.add_adapter(adapter, name)  # type: ignore[attr-defined]
        return TransformersModel(loaded, str(spec), adapter=name)  # type: ignore[arg-type]
