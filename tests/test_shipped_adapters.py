"""The LoRA adapters mfllm ships for its embedded model: used by default for embedded specs only, --no-adapter gives
the base model, and runs recorded before they existed keep what they ran with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfllm.analysis.ablation import AblationConfig
from mfllm.backends.embedded import SHIPPED_ADAPTERS, shipped_adapter
from mfllm.backends.fake import FakeModel
from mfllm.backends.hf import adapter_digest
from mfllm.cli import main
from mfllm.manifest import package_versions
from mfllm.simulation import RunStore, SimulationConfig
from mfllm.data import load_event
from mfllm.simulation.engine import Simulator, adapter_mismatches, build_models, simulate
from mfllm.simulation.sweep import StaleRunError, check_fresh


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
    assert shipped_adapter("embedded:", "policy") == shipped  # the default embedded model
    assert shipped_adapter("llamacpp:gemma-3-270m", "policy") == shipped
    assert shipped_adapter("embedded:/models/gemma-3-270m.gguf", "policy") is None  # a file is not the shipped model
    assert shipped_adapter("embedded:nope", "policy") is None


def test_no_adapter_on_the_command_line_is_recorded_in_the_manifest(demo_event_path: Path, tmp_path: Path) -> None:
    args = ["simulate", "--data", str(demo_event_path), "--policy-model", "fake", "--agents", "8", "--warmup", "8", "--batch", "8"]
    assert main([*args, "--no-adapter", "--output", str(tmp_path / "base")]) == 0
    assert main([*args, "--output", str(tmp_path / "default")]) == 0
    manifests = {name: RunStore(next((tmp_path / name).rglob("manifest.json")).parent).manifest() for name in ("base", "default")}
    assert manifests["base"]["config"]["adapter"] is False and manifests["default"]["config"]["adapter"] is True
    assert manifests["default"]["models"]["policy"].get("adapter") is None  # nothing is shipped for the fake model


def test_runs_recorded_before_shipped_adapters_are_read_as_runs_without_one() -> None:
    old = SimulationConfig(data="d").model_dump()
    del old["adapter"], old["length_floor"]
    assert SimulationConfig.recorded(old).adapter is False
    assert SimulationConfig.recorded({**old, "adapter": True}).adapter is True
    assert SimulationConfig.recorded({**old, "adapter": True}).resolved_length_floor() == 0.0  # before the floor existed


def test_a_run_takes_the_length_floor_its_policy_adapter_was_measured_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                           demo_event_path: Path) -> None:
    shipped = Path(_ship(monkeypatch, tmp_path / "package"))
    (shipped / "mfllm_adapter.json").write_text(json.dumps({"task": "policy", "generation": {"length_floor": 0.25}}), encoding="utf-8")
    assert SimulationConfig(data="d").resolved_length_floor() == 0.25
    assert SimulationConfig(data="d", adapter=False).resolved_length_floor() == 0.0  # the base model: no floor
    assert SimulationConfig(data="d", length_floor=0.0).resolved_length_floor() == 0.0  # told otherwise
    assert SimulationConfig(data="d", policy_adapter=_weights(tmp_path / "mine", 1)).resolved_length_floor() == 0.0  # none recorded
    assert SimulationConfig(data="d", policy_model="fake").resolved_length_floor() == 0.0
    event, _ = load_event(demo_event_path)
    floors = {}
    for name, floor in (("adapter's", None), ("told", 0.0)):
        config = SimulationConfig(data=str(demo_event_path), policy_model="fake", policy_adapter=str(shipped), length_floor=floor,
                                  warmup=24, batch_size=8, num_agents=8)
        simulator = Simulator(config, event, FakeModel())
        floors[name] = [low for low, _ in simulator.action_lengths(simulator.steps[-1], 8) or []]
    assert len(floors["told"]) == 8 and max(floors["adapter's"]) > 0 and max(floors["told"]) == 0

    class AnyWeights:  # the fake model standing in for one that loads the adapter
        def get(self, spec: str, adapter: str | None = None, role: str = "policy") -> FakeModel:
            return FakeModel()

    config = SimulationConfig(data=str(demo_event_path), policy_model="fake", policy_adapter=str(shipped), warmup=24, batch_size=8, num_agents=8)
    manifest = RunStore(simulate(config, tmp_path / "run", pool=AnyWeights())).manifest()
    assert manifest["config"]["length_floor"] is None and manifest["policy_sampling"]["length_floor"] == 0.25


def _weights(directory: Path, value: float) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text("{}", encoding="utf-8")
    (directory / "adapter_model.safetensors").write_bytes(bytes([int(value)]) * 64)
    return str(directory)


def test_a_run_is_never_continued_reused_or_scored_on_other_adapter_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shipped = _ship(monkeypatch, tmp_path / "package")
    _weights(Path(shipped), 1)
    config = SimulationConfig(data="d", method="mf-stats")
    base = {"models": {"policy": {"backend": "llamacpp", "adapter": None, "adapter_sha256": None}}}
    tuned = {"models": {"policy": {"backend": "llamacpp", "adapter": shipped, "adapter_sha256": adapter_digest(shipped)}}}
    before_digests = {"models": {"policy": {"backend": "llamacpp", "adapter": None}}}  # recorded before adapters had digests
    assert adapter_mismatches(tuned, config) == []
    assert adapter_mismatches(base, config.model_copy(update={"adapter": False})) == []
    [reason] = adapter_mismatches(base, config)
    assert "ran without an adapter, this config would load" in reason and "--no-adapter" in reason
    assert adapter_mismatches(before_digests, config) == [reason]
    assert "would load none" in adapter_mismatches(tuned, config.model_copy(update={"adapter": False}))[0]
    _weights(Path(shipped), 2)  # re-shipped: same directory, other weights
    assert "whose weights differ" in adapter_mismatches(tuned, config)[0]
    with pytest.raises(StaleRunError, match="whose weights differ"):
        check_fresh("run", {**tuned, "versions": {"mfllm": package_versions().get("mfllm")}, "data_hash": "h"}, "h", config)


class _RecordingPool:
    def __init__(self) -> None:
        self.got: list[tuple[str, str | None, str]] = []

    def get(self, spec: str, adapter: str | None = None, role: str = "model") -> FakeModel:
        self.got.append((spec, adapter, role))
        return FakeModel("fake")


def test_the_models_of_a_run_are_built_with_the_adapters_it_resolves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shipped = _ship(monkeypatch, tmp_path)
    for adapter, expected in ((True, shipped), (False, None)):
        pool = _RecordingPool()
        build_models(SimulationConfig(data="d", method="mf-llm", adapter=adapter), pool)
        assert pool.got == [("embedded:gemma-3-270m", expected, "policy"), ("embedded:gemma-3-270m", None, "mean_field")]


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
