"""Install a trained LoRA adapter as the one mfllm ships for an embedded model's role (README "The tuned simulator").

The adapter of a finished `mfllm train` run (with its mfllm_adapter.json: split, metrics, fingerprint) is copied
into src/mfllm/backends/adapters/<model>/<role>, its weights stored in fp16 (half the size; every backend loads
them in its own precision). Generation settings measured with it (``--length-floor``) are stored beside its
metadata (``generation``), and runs that use the adapter take them unless told otherwise.

Usage: python scripts/ship_adapter.py RUN/adapter [--role policy] [--model gemma-3-270m] [--length-floor F]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from mfllm.backends.embedded import EMBEDDED_MODELS, embedded_gguf_file
from mfllm.backends.hf import ADAPTER_META, adapter_meta
from mfllm.backends.lora_gguf import convert_peft_lora

PACKAGE_ADAPTERS = Path(__file__).resolve().parents[1] / "src" / "mfllm" / "backends" / "adapters"
TASK_OF_ROLE = {"policy": "policy", "mean_field": "mean-field"}


def check_trained(adapter: Path, role: str, model: str) -> None:
    """Refuse anything but the adapter of a finished `mfllm train` run of ``role`` on ``embedded:model``."""
    meta = adapter_meta(adapter)
    if meta is None:
        raise SystemExit(f"{adapter}: no {ADAPTER_META}; ship the adapter of a finished `mfllm train` run")
    if meta["task"] != TASK_OF_ROLE[role] or meta["base_model"] != f"embedded:{model}":
        raise SystemExit(f"{adapter}: a {meta['task']} adapter of {meta['base_model']}, not a {role} adapter of embedded:{model}")


def ship(adapter: Path, target: Path, model: str, base_gguf: Path | None = None, generation: dict[str, float] | None = None) -> Path:
    """Write ``adapter`` (weights in fp16, ``generation`` settings in its metadata) to ``target``, replacing
    what is there only once the copy is whole and, given the base model's ``base_gguf``, converts for llama.cpp."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = model
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / target.name
        staged.mkdir()
        weights = load_file(str(adapter / "adapter_model.safetensors"))
        save_file({name: tensor.half().contiguous() for name, tensor in weights.items()}, str(staged / "adapter_model.safetensors"))
        (staged / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        meta = json.loads((adapter / ADAPTER_META).read_text(encoding="utf-8"))  # check_trained makes sure it is there
        if generation:
            meta["generation"] = generation
        (staged / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if base_gguf is not None:
            convert_peft_lora(staged, base_gguf, Path(tmp) / "check.gguf")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, target)
    for path in target.iterdir():
        path.chmod(0o644)  # package data every user can read (safetensors writes its files private)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="the adapter directory of a finished `mfllm train` run")
    parser.add_argument("--role", choices=sorted(TASK_OF_ROLE), default="policy")
    parser.add_argument("--model", choices=sorted(EMBEDDED_MODELS), default="gemma-3-270m")
    parser.add_argument("--length-floor", type=float, default=None,
                        help="the length floor (SimulationConfig.length_floor) runs with this adapter take by default")
    args = parser.parse_args()
    check_trained(args.adapter, args.role, args.model)
    generation = None if args.length_floor is None else {"length_floor": args.length_floor}
    target = ship(args.adapter, PACKAGE_ADAPTERS / args.model / args.role, args.model, embedded_gguf_file(args.model), generation)
    size = sum(f.stat().st_size for f in target.iterdir())
    print(f"shipped {args.adapter} as the {args.role} adapter of embedded:{args.model}: {target} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
