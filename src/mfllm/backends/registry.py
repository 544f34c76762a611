"""Model specs, the registry of backend kinds, and the pool that builds and shares backends.

A spec is ``KIND:REST``. Each kind is registered once with a parser for ``REST`` and a factory
that builds the backend in a :class:`ModelPool`; adding a backend is one :func:`register_backend`
call. Built-in kinds:

- ``embedded:NAME`` (default ``gemma-3-270m``; also ``smollm2-135m-instruct``): models shipped in PyPI
  packages; llama.cpp on the CPU when installed, else transformers (``ModelPool(engine=...)`` forces one)
- ``llamacpp:NAME_OR_FILE.gguf``: an embedded model name or any GGUF file, through llama.cpp
- ``hf:<path or hub id>`` (optionally ``hf:<dir>#<file.gguf>``): any local transformers causal LM
- ``openai:<model>@<base_url>``: an OpenAI-compatible server (vLLM, Ollama, OpenAI); key from ``$OPENAI_API_KEY``
- ``fake``: the deterministic fake for tests
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from mfllm.backends.fake import FakeModel
from mfllm.cache import digest
from mfllm.interfaces import LanguageModel

Engine = Literal["auto", "llamacpp", "transformers"]


@dataclass(frozen=True)
class BackendSpec:
    kind: str
    name: str
    base_url: str | None = None
    gguf_file: str | None = None

    def __str__(self) -> str:
        if self.kind == "fake":
            return "fake"
        if self.kind == "openai":
            return f"openai:{self.name}@{self.base_url}"
        return f"{self.kind}:{self.name}" + (f"#{self.gguf_file}" if self.gguf_file else "")


@dataclass(frozen=True)
class BackendKind:
    """One spec kind: ``parse`` turns the text after ``KIND:`` into a spec (None: malformed), ``build``
    makes the backend (``pool``, ``spec``, ``adapter`` directory or None, ``role``)."""

    kind: str
    syntax: str
    parse: Callable[[str], BackendSpec | None]
    build: Callable[["ModelPool", BackendSpec, str | None, str], LanguageModel]


BACKENDS: dict[str, BackendKind] = {}


def register_backend(entry: BackendKind) -> BackendKind:
    """Add (or replace) a backend kind."""
    BACKENDS[entry.kind] = entry
    return entry


def parse_spec(spec: str) -> BackendSpec:
    """Parse a model spec string (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    entry = BACKENDS.get(kind)
    parsed = entry.parse(rest) if entry else None
    if parsed is None:
        raise ValueError(f"bad model spec {spec!r}: use " + ", ".join(e.syntax for e in BACKENDS.values()))
    return parsed


def local_source(spec: BackendSpec) -> Any:
    """The transformers :class:`~mfllm.backends.hf.ModelSource` of a local model spec (training uses it)."""
    from mfllm.backends.hf import ModelSource

    if spec.kind in ("embedded", "llamacpp") and not spec.name.endswith(".gguf"):
        from mfllm.backends.embedded import embedded_source

        return embedded_source(spec.name)
    if spec.kind == "llamacpp":
        path = Path(spec.name)
        return ModelSource(str(path.parent), path.name)
    return ModelSource(spec.name, spec.gguf_file)


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


class ModelPool:
    """Builds backends and shares loaded weights: a policy and a mean-field model on the same base
    model (each with its own LoRA adapter) load the weights once.

    ``engine`` picks what runs ``embedded:`` specs: ``auto`` is llama.cpp on a CPU when
    llama-cpp-python is installed, else transformers. ``request_timeout_s`` and ``max_attempts`` bound
    each request of an OpenAI-compatible server. ``threads``, ``n_ctx`` and ``n_batch`` set up
    llama.cpp contexts (None: its defaults, every available core).
    """

    def __init__(self, device: str = "auto", dtype: str = "auto", api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, request_timeout_s: float = 60.0, max_attempts: int = 4, engine: Engine = "auto",
                 threads: int | None = None, n_ctx: int | None = None, n_batch: int | None = None):
        self.device, self.dtype = device, dtype
        self.api_key_env, self.max_concurrency = api_key_env, max_concurrency
        self.request_timeout_s, self.max_attempts = request_timeout_s, max_attempts
        self.engine = engine
        self.llama_options = {key: value for key, value in (("threads", threads), ("n_ctx", n_ctx), ("n_batch", n_batch)) if value}
        self._loaded: dict[tuple[str, str], Any] = {}

    @property
    def loaded(self) -> list[object]:
        """The local models loaded so far (each shared by all its backend views)."""
        return list(self._loaded.values())

    def get(self, spec: str | BackendSpec, adapter: str | None = None, role: str = "model") -> LanguageModel:
        """A backend for ``spec``; ``adapter`` is a LoRA directory attached under the name ``role``."""
        spec = parse_spec(spec) if isinstance(spec, str) else spec
        return BACKENDS[spec.kind].build(self, spec, adapter, role)

    def embedded_engine(self) -> Literal["llamacpp", "transformers"]:
        """What runs ``embedded:`` specs in this pool."""
        if self.engine != "auto":
            return self.engine
        if not llama_cpp_installed():
            return "transformers"
        from mfllm.backends.llamacpp import llama_cpp_module

        llama_cpp_module()  # before torch, so both share an OpenMP runtime that waits passively
        return "llamacpp" if self.device == "cpu" or (self.device == "auto" and _cuda_absent()) else "transformers"

    def transformers_model(self, spec: BackendSpec, adapter: str | None, role: str) -> LanguageModel:
        from mfllm.backends.hf import LoadedCausalLM, TransformersModel

        key = ("transformers", str(spec))
        if key not in self._loaded:
            self._loaded[key] = LoadedCausalLM(local_source(spec), self.device, self.dtype)
        loaded = self._loaded[key]
        name = None
        if adapter:  # one name per adapter directory, so repeated runs reuse an attached adapter
            name = _adapter_name(adapter, role)
            if name not in loaded.adapters:
                loaded.add_adapter(adapter, name)
        return TransformersModel(loaded, str(spec), adapter=name)

    def llamacpp_model(self, spec: BackendSpec, adapter: str | None, role: str) -> LanguageModel:
        """A llama.cpp backend; an adapter is converted to GGUF (raises AdapterConversionError if it cannot be)."""
        from mfllm.backends.embedded import cache_root, embedded_gguf_file
        from mfllm.backends.llamacpp import LlamaCppModel, LlamaCppSettings, LoadedGGUF
        from mfllm.backends.lora_gguf import cached_gguf_adapter

        model_file = Path(spec.name) if spec.name.endswith(".gguf") else embedded_gguf_file(spec.name)
        key = ("llamacpp", str(model_file.resolve()))
        if key not in self._loaded:
            self._loaded[key] = LoadedGGUF(model_file, LlamaCppSettings(**self.llama_options))
        loaded = self._loaded[key]
        name = None
        if adapter:
            name = _adapter_name(adapter, role)
            if name not in loaded.adapters:
                loaded.add_adapter(cached_gguf_adapter(adapter, model_file, cache_root()), name, str(adapter))
        return LlamaCppModel(loaded, str(spec), adapter=name)


def _cuda_absent() -> bool:
    if importlib.util.find_spec("torch") is None:
        return True
    from mfllm.backends.hf import resolve_device

    return resolve_device("auto") == "cpu"


def _adapter_name(adapter: str, role: str) -> str:
    return f"{role}-{digest(str(Path(adapter).resolve()))[:8]}"


def _no_adapter(kind: str, adapter: str | None, reason: str) -> None:
    if adapter:
        raise ValueError(f"the {kind} backend cannot load adapters: {reason}")


def _build_fake(pool: ModelPool, spec: BackendSpec, adapter: str | None, role: str) -> LanguageModel:
    _no_adapter("fake", adapter, "it has no weights")
    return FakeModel(spec.name)


def _build_openai(pool: ModelPool, spec: BackendSpec, adapter: str | None, role: str) -> LanguageModel:
    _no_adapter("openai", adapter, "configure them on the server (e.g. vLLM --lora-modules) and name them in the spec")
    from mfllm.backends.openai_http import OpenAICompatibleModel

    return OpenAICompatibleModel(spec.name, spec.base_url or "", api_key_env=pool.api_key_env,
                                 max_concurrency=pool.max_concurrency, request_timeout_s=pool.request_timeout_s,
                                 max_attempts=pool.max_attempts)


def _build_embedded(pool: ModelPool, spec: BackendSpec, adapter: str | None, role: str) -> LanguageModel:
    if pool.embedded_engine() == "transformers":
        return pool.transformers_model(spec, adapter, role)
    from mfllm.backends.llamacpp import announce
    from mfllm.backends.lora_gguf import AdapterConversionError

    try:
        return pool.llamacpp_model(spec, adapter, role)
    except AdapterConversionError as exc:
        announce(f"{role} runs on transformers instead of llama.cpp: {exc}")
        return pool.transformers_model(spec, adapter, role)


def _parse_openai(rest: str) -> BackendSpec | None:
    model, _, url = rest.partition("@")
    return BackendSpec("openai", model, base_url=url) if model and url else None


def _parse_hf(rest: str) -> BackendSpec | None:
    path, _, gguf = rest.partition("#")
    return BackendSpec("hf", path, gguf_file=gguf or None) if path else None


register_backend(BackendKind("embedded", "embedded:NAME", lambda rest: BackendSpec("embedded", rest or "gemma-3-270m"), _build_embedded))
register_backend(BackendKind("llamacpp", "llamacpp:NAME|FILE.gguf", lambda rest: BackendSpec("llamacpp", rest) if rest else None,
                             lambda pool, spec, adapter, role: pool.llamacpp_model(spec, adapter, role)))
register_backend(BackendKind("hf", "hf:PATH[#FILE.gguf]", _parse_hf,
                             lambda pool, spec, adapter, role: pool.transformers_model(spec, adapter, role)))
register_backend(BackendKind("openai", "openai:MODEL@URL", _parse_openai, _build_openai))
register_backend(BackendKind("fake", "fake", lambda rest: BackendSpec("fake", rest or "fake"), _build_fake))
