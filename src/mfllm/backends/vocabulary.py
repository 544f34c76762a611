"""Output vocabularies restricted to the tokens a language uses, for faster decoding on llama.cpp.

Gemma's output layer has 262,144 rows, and on a CPU it costs more than the rest of the model for every
token decoded. Texts of one language use a small part of it. :func:`reduced_gguf` writes, once per model
file and language, a copy of a GGUF whose vocabulary (and so whose output layer) holds only the kept
tokens; the transformer blocks are the same tensors. Generation then feeds that model the full model's
input embeddings (so prompts are read exactly as before, whatever tokens they hold) and samples among
the kept tokens, mapped back to the full vocabulary's ids. Scores (NLL, information gain, the action
choice) always use the full vocabulary.

A token is kept when it is a control, user-defined or byte token, or a piece of a character split
across tokens (any text stays writable, byte by byte), or when its text (``▁`` read as a space,
byte-level BPE characters decoded) is made only of characters of the language:

- ``zh``: CJK ideographs, CJK and full-width punctuation, other punctuation, symbols (emoji) and
  digits, and ASCII pieces of at most :data:`SHORT_ASCII` characters (Chinese posts use ASCII for
  numbers, tags and the odd short word, which stay writable piece by piece);
- ``en``: ASCII and Latin letters, punctuation, symbols and digits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mfllm.backends.hf import require

SHORT_ASCII = 2
RULES_VERSION = 1  # part of a cached reduced model's name: raise it when the rules below change
LANGUAGES = ("zh", "en")
NORMAL_TOKEN = 1  # llama.cpp's token type of an ordinary piece; every other type is kept
_TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
_TOKEN_ID_KEYS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                  "tokenizer.ggml.padding_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
                  "tokenizer.ggml.separator_token_id", "tokenizer.ggml.mask_token_id")
INPUT_EMBEDDING_SCALE: dict[str, Callable[[int], float]] = {
    "gemma3": lambda n_embd: float(np.sqrt(np.float32(n_embd))),  # applied by llama.cpp to token inputs only
    "llama": lambda n_embd: 1.0,
}


class UnsupportedVocabulary(ValueError):
    """No reduced vocabulary for this model or language."""


def _is_cjk(character: str) -> bool:
    code = ord(character)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x3000 <= code <= 0x303F
            or 0xFF00 <= code <= 0xFFEF or 0xF900 <= code <= 0xFAFF)


def _is_mark(character: str) -> bool:
    """Punctuation, symbols (emoji included), digits and spaces: shared by every language."""
    return character.isspace() or unicodedata.category(character)[0] in "PSNZ"


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """Byte-level BPE (GPT-2 style) writes each byte as one printable character: printable Latin-1
    bytes as themselves, the others as the characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(0x100 + i): b for i, b in enumerate(others)}}


def token_text(token: str, tokenizer_model: str) -> str | None:
    """A token's text as written (``▁`` and byte-level characters decoded); None for a piece of a
    character split across tokens (kept: it writes text byte by byte)."""
    if tokenizer_model != "gpt2":
        return token.replace("\u2581", " ")
    decoder = _byte_level_decoder()
    if not all(c in decoder for c in token):
        return token
    try:
        return bytes(decoder[c] for c in token).decode("utf-8")
    except UnicodeDecodeError:
        return None


def keeps(text: str, language: str) -> bool:
    """Whether an ordinary token with this text (see :func:`token_text`) belongs to ``language``'s output vocabulary."""
    if not text:
        return False
    if language == "zh":
        if all(c.isascii() for c in text):
            return len(text) <= SHORT_ASCII
        return all(_is_cjk(c) or _is_mark(c) or c.isascii() for c in text)
    if language == "en":
        return all(c.isascii() or _is_mark(c) or (unicodedata.category(c)[0] == "L" and ord(c) < 0x250) for c in text)
    raise UnsupportedVocabulary(f"no output vocabulary for language {language!r}; known: {', '.join(LANGUAGES)}")


@dataclass(frozen=True)
class ReducedVocabulary:
    """A reduced GGUF, the id in the full model of each of its tokens, and where the full model's input
    embedding matrix lies in its file (so nothing needs the full GGUF parsed again)."""

    gguf_file: Path
    full_ids: np.ndarray
    architecture: str
    n_embd: int
    embedding_offset: int
    embedding_type: int
    embedding_rows: int

    @property
    def size(self) -> int:
        return int(len(self.full_ids))


def _field_value(field: object) -> object:
    return field.contents()  # type: ignore[attr-defined]


def reduced_gguf(model_file: Path, language: str, cache_dir: Path) -> ReducedVocabulary:
    """The model's reduced-vocabulary copy for ``language``, written under ``cache_dir`` the first time
    (with a small description beside it; later calls read only that)."""
    if language not in LANGUAGES:
        raise UnsupportedVocabulary(f"no output vocabulary for language {language!r}; known: {', '.join(LANGUAGES)}")
    stat = model_file.stat()
    key = hashlib.sha256(f"{model_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{language}|{SHORT_ASCII}|{RULES_VERSION}".encode()).hexdigest()[:16]
    target = cache_dir / f"{model_file.stem}.{language}-{key}.gguf"
    described = target.with_suffix(".json")
    if not (target.is_file() and described.is_file()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        _build(model_file, language, target, described)
    facts = json.loads(described.read_text(encoding="utf-8"))
    return ReducedVocabulary(target, np.asarray(facts["full_ids"], dtype=np.int64), facts["architecture"], facts["n_embd"],
                             facts["embedding_offset"], facts["embedding_type"], facts["embedding_rows"])


def _build(model_file: Path, language: str, target: Path, described: Path) -> None:
    gguf = require("gguf", "llamacpp")
    reader = gguf.GGUFReader(str(model_file))
    architecture = str(_field_value(reader.fields["general.architecture"]))
    if architecture not in INPUT_EMBEDDING_SCALE:
        raise UnsupportedVocabulary(f"no reduced output vocabulary for architecture {architecture!r} ({model_file.name})")
    tokens = _field_value(reader.fields["tokenizer.ggml.tokens"])
    types = _field_value(reader.fields["tokenizer.ggml.token_type"])
    tokenizer_model = str(_field_value(reader.fields["tokenizer.ggml.model"]))
    texts = [token_text(token, tokenizer_model) for token in tokens]
    kept = np.array([i for i, (text, kind) in enumerate(zip(texts, types)) if kind != NORMAL_TOKEN or text is None or keeps(text, language)],
                    dtype=np.int64)
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    print(f"mfllm: writing {model_file.name}'s output vocabulary for {language} ({len(kept):,} of {len(tokens):,} tokens; once, "
          f"about 10 s) to {target}", file=sys.stderr, flush=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    _write_reduced(reader, architecture, kept, partial)
    os.replace(partial, target)
    facts = {"model_file": str(model_file), "language": language, "architecture": architecture,
             "n_embd": int(_field_value(reader.fields[f"{architecture}.embedding_length"])),
             "embedding_offset": int(embedding.data_offset), "embedding_type": int(embedding.tensor_type),
             "embedding_rows": int(embedding.data.shape[0]), "full_ids": kept.tolist()}
    partial = described.with_name(f"{described.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(facts), encoding="utf-8")
    os.replace(partial, described)


def _write_reduced(reader: object, architecture: str, kept: np.ndarray, target: Path) -> None:
    """Copy every metadata field and tensor, keeping only the ``kept`` rows of the vocabulary arrays
    and of the token embedding (which Gemma also uses as its output layer)."""
    gguf = require("gguf", "llamacpp")
    new_id = {int(old): new for new, old in enumerate(kept)}
    writer = gguf.GGUFWriter(str(target), architecture)
    for name, field in reader.fields.items():  # type: ignore[attr-defined]
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value, kind = _field_value(field), field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        if name in _TOKENIZER_ARRAYS:
            value = [value[i] for i in kept]
        elif name in _TOKEN_ID_KEYS:
            if int(value) not in new_id:
                continue
            value = new_id[int(value)]
        writer.add_key_value(name, value, kind, sub_type=sub_type)
    for tensor in reader.tensors:  # type: ignore[attr-defined]
        data = np.asarray(tensor.data)
        if tensor.name in ("token_embd.weight", "output.weight"):
            data = data[kept]
        writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class InputEmbeddings:
    """The full model's input embedding of any token id, as llama.cpp computes it for a token input
    (dequantised row times the architecture's scale), read from the model file on demand."""

    def __init__(self, model_file: Path, vocabulary: ReducedVocabulary):
        quants = require("gguf.quants", "llamacpp")
        constants = require("gguf.constants", "llamacpp")
        self._type = constants.GGMLQuantizationType(vocabulary.embedding_type)
        block_size, type_size = constants.GGML_QUANT_SIZES[self._type]
        row_bytes = vocabulary.n_embd // block_size * type_size
        self._rows = np.memmap(model_file, dtype=np.uint8, mode="r", offset=vocabulary.embedding_offset,
                               shape=(vocabulary.embedding_rows, row_bytes))
        self._dequantize = quants.dequantize
        self._scale = np.float32(INPUT_EMBEDDING_SCALE[vocabulary.architecture](vocabulary.n_embd))
        self._cache: dict[int, np.ndarray] = {}

    def rows(self, token_ids: list[int]) -> np.ndarray:
        """A (len(token_ids), n_embd) float32 array."""
        missing = sorted({t for t in token_ids if t not in self._cache})
        if missing:
            values = self._dequantize(np.asarray(self._rows[missing]), self._type).astype(np.float32) * self._scale
            self._cache.update(zip(missing, values))
        return np.stack([self._cache[t] for t in token_ids])
