"""Convert a PEFT LoRA adapter (as ``mfllm train`` saves it) into a GGUF LoRA adapter for llama.cpp.

llama.cpp applies ``W x + alpha / r * B (A x)`` with the adapter's ``lora_a`` (r × in) and
``lora_b`` (out × r) tensors named after the model's GGUF tensors, which is PEFT's formula and
layout. Adapters that use other formulas (rsLoRA, DoRA, per-module ranks) or touch modules llama.cpp
cannot map are refused with :class:`AdapterConversionError`, so the caller can fall back.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mfllm.backends.hf import adapter_digest, require

PEFT_PREFIX = "base_model.model."


class AdapterConversionError(ValueError):
    """The adapter uses something the GGUF LoRA format or llama.cpp does not support."""


def _read_base(model_file: Path) -> dict[str, Any]:
    """Architecture facts of the base GGUF the adapter must match."""
    gguf = require("gguf", "llamacpp")
    reader = gguf.GGUFReader(str(model_file))

    def field(key: str) -> Any:
        value = reader.get_field(key)
        if value is None:
            raise AdapterConversionError(f"{model_file.name} has no {key} metadata")
        return value.contents()

    arch = field("general.architecture")
    return {"arch": arch, "blocks": int(field(f"{arch}.block_count")), "heads": int(field(f"{arch}.attention.head_count")),
            "kv_heads": int(field(f"{arch}.attention.head_count_kv")), "hidden": int(field(f"{arch}.embedding_length"))}


def _rope_row_order(rows: int, heads: int) -> np.ndarray:
    """Row order in which Llama-family GGUF files store the q/k projections (each head's two rotary
    halves interleaved), so a LoRA ``B`` matrix lines up with the converted weights."""
    head_dim = rows // heads
    return np.arange(rows).reshape(heads, 2, head_dim // 2).swapaxes(1, 2).reshape(rows)


def convert_peft_lora(adapter_dir: str | Path, model_file: str | Path, output: str | Path) -> Path:
    """Write the GGUF LoRA of ``adapter_dir`` for base ``model_file`` to ``output``."""
    gguf = require("gguf", "llamacpp")
    safetensors = require("safetensors.numpy", "llamacpp")
    adapter_dir, model_file, output = Path(adapter_dir), Path(model_file), Path(output)
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    unsupported = [key for key in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if config.get(key)]
    if unsupported:
        raise AdapterConversionError(f"adapter {adapter_dir} uses {', '.join(unsupported)}, which GGUF LoRA cannot express")
    weights_file = adapter_dir / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise AdapterConversionError(f"adapter {adapter_dir} has no adapter_model.safetensors")
    base = _read_base(model_file)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[base["arch"].upper()], base["blocks"])
    tensors = safetensors.load_file(str(weights_file))
    writer = gguf.GGUFWriter(str(output), base["arch"])
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(config["lora_alpha"]))
    converted = 0
    for key in sorted(tensors):
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise AdapterConversionError(f"adapter {adapter_dir} has tensor {key}, which is not a LoRA A/B matrix")
            continue
        module = key.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
        target = names.get_name(module)
        if target is None or target in ("token_embd", "output"):
            raise AdapterConversionError(f"adapter {adapter_dir}: llama.cpp has no LoRA target for module {module}")
        lora_a = tensors[key].astype(np.float32)
        lora_b = tensors[key.replace(".lora_A.", ".lora_B.")].astype(np.float32)
        if base["arch"] == "llama" and target.endswith(("attn_q", "attn_k")):
            heads = base["heads"] if target.endswith("attn_q") else base["kv_heads"]
            lora_b = lora_b[_rope_row_order(lora_b.shape[0], heads)]
        writer.add_tensor(f"{target}.weight.lora_a", np.ascontiguousarray(lora_a))
        writer.add_tensor(f"{target}.weight.lora_b", np.ascontiguousarray(lora_b))
        converted += 1
    if not converted:
        raise AdapterConversionError(f"adapter {adapter_dir} has no LoRA tensors")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return output


def cached_gguf_adapter(adapter_dir: str | Path, model_file: str | Path, cache_dir: Path) -> Path:
    """The GGUF LoRA of ``adapter_dir`` for ``model_file``, converted once and cached by content."""
    adapter_dir = Path(adapter_dir)
    key = hashlib.sha256(f"{Path(model_file).resolve()}:{adapter_digest(adapter_dir)}".encode("utf-8")).hexdigest()[:16]
    target = cache_dir / "adapters" / f"{adapter_dir.name}-{key}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        os.replace(convert_peft_lora(adapter_dir, model_file, Path(tmp) / target.name), target)
    return target
