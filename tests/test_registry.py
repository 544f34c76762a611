"""Backends registered by kind: a new kind is one register_backend call; specs and the pool read the registry."""

from __future__ import annotations

import pytest

from mfllm.backends import BACKENDS, BackendKind, BackendSpec, FakeModel, ModelPool, parse_spec, register_backend


def test_a_registered_kind_is_parsed_and_built_by_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mfllm.backends.registry.BACKENDS", dict(BACKENDS))  # registration stays inside this test
    built: list[tuple[str, str | None, str]] = []

    def build(pool: ModelPool, spec: BackendSpec, adapter: str | None, role: str) -> FakeModel:
        built.append((spec.name, adapter, role))
        return FakeModel(f"echo-{spec.name}")

    register_backend(BackendKind("echo", "echo:NAME", lambda rest: BackendSpec("echo", rest) if rest else None, build))
    model = ModelPool().get("echo:abc", adapter="dir", role="policy")
    assert model.name == "echo-abc" and built == [("abc", "dir", "policy")]
    assert str(parse_spec("echo:abc")) == "echo:abc"
    with pytest.raises(ValueError, match="echo:NAME"):
        parse_spec("echo:")


def test_unknown_kinds_list_every_registered_syntax() -> None:
    with pytest.raises(ValueError) as error:
        parse_spec("vllm:model")
    for syntax in ("embedded:NAME", "llamacpp:NAME|FILE.gguf", "hf:PATH[#FILE.gguf]", "openai:MODEL@URL", "fake"):
        assert syntax in str(error.value)


def test_adapters_are_refused_where_a_backend_cannot_hold_them() -> None:
    with pytest.raises(ValueError, match="fake backend cannot load adapters"):
        ModelPool().get("fake", adapter="dir")
    with pytest.raises(ValueError, match="--lora-modules"):
        ModelPool().get("openai:m@http://127.0.0.1:1/v1", adapter="dir")
