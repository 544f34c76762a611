"""The LoRA adapters mfllm ships for its embedded model: used by default for embedded specs only, --no-adapter gives
the base model, and runs recorded before they existed keep what they ran with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mfllm.analysis.ablation import AblationConfig
from mfllm.backends.embedded import SHIPPED_ADAPTERS, shipped_adapter
from mfllm.cli import main
from mfllm.simulation import RunStore, SimulationConfig
from mfllm.simulation.engine import _check_backends, comparable_config


def _ship(monkeypatch: pytest.MonkeyPatch, root: Path, role: str = "policy") -> str:
    directory = root / "gemma-3-270m" / role
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr("mfllm.backends.embedded.SHIPPED_ADAPTERS", root)
    return str(directory)


def test_a_run_takes_the_adapter_shipped_for_its_embedded_model_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch,
                                                                                     tmp_path: Path) -> None:
    shipped = _ship(monkeypatch, tmp_path)
    assert SimulationConfig(data="d", method="mf-stats").resolved_adapter("policy") == shipped
    assert SimulationConfig(data="d", method="mf-stats", adapter=False).resolved_adapter("policy") is None
    assert SimulationConfig(data="d", policy_adapter="mine").resolved_adapter("policy") == "mine"
    assert SimulationConfig(data="d", method="sft").resolved_adapter("policy") is None  # the sft baseline has its own
    assert SimulationConfig(data="d", policy_model="fake").resolved_adapter("policy") is None
    assert SimulationConfig(data="d", method="mf-llm").resolved_adapter("mean_field") is None  # none shipped for that role
    assert shipped_adapter("embedded:gemma-3-270m", "mean_field") is None
    with pytest.raises(ValueError, match="unknown embedded model"):
        shipped_adapter("embedded:nope", "policy")


def test_no_adapter_on_the_command_line_is_recorded_in_the_manifest(demo_event_path: Path, tmp_path: Path) -> None:
    args = ["simulate", "--data", str(demo_event_path), "--policy-model", "fake", "--agents", "8", "--warmup", "8", "--batch", "8"]
    assert main([*args, "--no-adapter", "--output", str(tmp_path / "base")]) == 0
    assert main([*args, "--output", str(tmp_path / "default")]) == 0
    manifests = {name: RunStore(next((tmp_path / name).rglob("manifest.json")).parent).manifest() for name in ("base", "default")}
    assert manifests["base"]["config"]["adapter"] is False and manifests["default"]["config"]["adapter"] is True
    assert manifests["default"]["models"]["policy"].get("adapter") is None  # nothing is shipped for the fake model


def test_runs_recorded_before_shipped_adapters_are_read_as_runs_without_one() -> None:
    old = SimulationConfig(data="d").model_dump()
    del old["adapter"]
    assert SimulationConfig.recorded(old).adapter is False
    assert comparable_config(old) != comparable_config(SimulationConfig(data="d").model_dump())  # never reused as a tuned run
    assert comparable_config(old) == comparable_config(SimulationConfig(data="d", adapter=False).model_dump())


class _Described:
    def __init__(self, adapter: str | None):
        self.adapter = adapter

    def describe(self) -> dict[str, Any]:
        return {"backend": "llamacpp", "adapter": self.adapter}


def test_a_run_resumes_only_with_an_adapter_where_it_had_one() -> None:
    without = {"policy": {"backend": "llamacpp", "adapter": None}}
    _check_backends("run", without, {"policy": _Described(None)})
    with pytest.raises(ValueError, match="ran without an adapter, this one would run with adapter /a.*--no-adapter"):
        _check_backends("run", without, {"policy": _Described("/a")})
    with pytest.raises(ValueError, match="ran with adapter /a, this one would run without one"):
        _check_backends("run", {"policy": {"backend": "llamacpp", "adapter": "/a"}}, {"policy": _Described(None)})


def test_the_ablation_names_every_adapter_it_uses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shipped = _ship(monkeypatch, tmp_path)
    variants = AblationConfig(data="d", events=["e"], method="mf-stats").variants()
    assert variants["mf-stats + tuned policy"]["policy_adapter"] == shipped
    assert variants["state + tuned policy"] == {"adapter": False, "method": "state", "policy_adapter": shipped}
    assert all(settings["adapter"] is False for settings in variants.values())  # untuned variants stay untuned
    assert "mf-stats + tuned mean field" not in variants
    assert AblationConfig(data="d", events=["e"], base_model="fake").variants().keys() == {"mf-hybrid (untuned)", "state"}


@pytest.mark.skipif(not (SHIPPED_ADAPTERS / "gemma-3-270m" / "policy").is_dir(), reason="no policy adapter shipped")
def test_the_shipped_policy_adapter_fits_gemma_and_converts_for_llama_cpp(tmp_path: Path) -> None:
    from mfllm.backends.embedded import embedded_gguf_file
    from mfllm.backends.lora_gguf import convert_peft_lora

    directory = SHIPPED_ADAPTERS / "gemma-3-270m" / "policy"
    meta = json.loads((directory / "mfllm_adapter.json").read_text(encoding="utf-8"))
    assert meta["task"] == "policy" and meta["fingerprint"] == {"model_type": "gemma3_text", "hidden_size": 640,
                                                                "num_hidden_layers": 18, "vocab_size": 262144}
    assert not set(meta["split"]["train"]) & set(meta["split"]["test"])
    assert sum(f.stat().st_size for f in directory.iterdir()) < 10 * 2**20
    assert "Gemma Terms of Use" in (SHIPPED_ADAPTERS / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert convert_peft_lora(directory, embedded_gguf_file("gemma-3-270m"), tmp_path / "a.gguf").stat().st_size > 2**20
