"""GGUF models through llama.cpp (llama-cpp-python): quantised weights, fast on a CPU.

One :class:`LoadedGGUF` holds a model file and a single llama.cpp context shared by every backend
view on it (a policy and a mean-field model, each with its own LoRA adapter). A batch of prompts
runs as parallel sequences of that context, each in its own KV stream: the tokens of their common
prefix are evaluated once on the first sequence and its cache is copied to the others, then every
sequence decodes its own tokens. Each sequence samples with its own seeded sampler, so a call with a
seed is reproducible, and a sequence's results do not depend on the others in its batch. (A unified
cache, where one cached token can belong to several sequences, gave a sequence other than the first
different log-probs than alone in llama-cpp-python 0.3.36, so it is not used.)
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mfllm.backends.embedded import cache_root
from mfllm.backends.hf import adapter_digest, clean_output, prefix_to_share, require, stop_position
from mfllm.backends.vocabulary import InputEmbeddings, ReducedVocabulary, UnsupportedVocabulary, reduced_gguf
from mfllm.interfaces import ContinuationScore, LanguageModel, Prompt, SamplingParams, UsageStats

LLAMA_CPP_VERSION = "0.3.36"
SMALL_BATCH_TOKENS = 32  # batches with fewer tokens run on one thread (see LoadedGGUF._use_threads)
MIN_STORED_TOKENS = 32  # shorter prefixes are not worth a stored copy (see LoadedGGUF.begin)
READ_AGAIN = 2
"""Prompt tokens a continued sequence evaluates again (see LoadedGGUF.resume). llama.cpp computes a batch of one
token along another path than a larger batch (logits up to 1 apart in 0.3.36), while larger batches give each
token the same values whatever else they hold: with at least two tokens in every first batch, a continued
prompt gives exactly what reading it afresh gives."""
SEED_MODULUS = 2**32 - 1  # llama.cpp reads 0xFFFFFFFF as "pick a random seed"


_SPINNING_OPENMP = False  # set when llama.cpp shares an OpenMP runtime that torch started with busy waiting


def llama_cpp_module() -> Any:
    """The ``llama_cpp`` module. On first import its OpenMP threads are set to wait passively (unless
    ``OMP_WAIT_POLICY`` is set): busy-waiting threads made decoding on a 2-core machine shared with other
    processes ten times slower. The policy is read once, when the OpenMP runtime loads; torch ships the
    same runtime, so if torch was imported first, llama.cpp defaults to one thread instead."""
    global _SPINNING_OPENMP
    if "llama_cpp" in sys.modules:
        return sys.modules["llama_cpp"]
    if "OMP_WAIT_POLICY" in os.environ:
        return require("llama_cpp", "llamacpp")
    _SPINNING_OPENMP = "torch" in sys.modules
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        return require("llama_cpp", "llamacpp")
    finally:
        del os.environ["OMP_WAIT_POLICY"]


def available_threads() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class LlamaCppSettings:
    """Context settings. ``n_ctx`` is the context of each of the ``max_sequences`` parallel sequences
    (prompt plus generated tokens); larger batches run in groups. ``stored_prefixes`` more sequences keep
    recent prompt prefixes between calls (see :meth:`LoadedGGUF.begin`). ``threads=None`` uses every
    available core."""

    threads: int | None = None
    n_ctx: int = 2048
    n_batch: int = 512
    max_sequences: int = 16
    stored_prefixes: int = 2

    @property
    def resolved_threads(self) -> int:
        if self.threads:
            return self.threads
        llama_cpp_module()
        return 1 if _SPINNING_OPENMP else available_threads()


@dataclass(frozen=True)
class _Entry:
    """One token of a llama.cpp batch."""

    token: int
    position: int
    sequence: int
    wants_logits: bool


GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT = 4, 5  # ggml.h of llama-cpp-python 0.3.36
_LOG_CALLBACK: Any = None  # kept alive: llama.cpp calls it from C


def _quiet_llama_logs() -> None:
    """Keep llama.cpp's chatter (loading, cache notices) out of the output; its errors still print on stderr.
    llama-cpp-python's own quiet mode maps the log levels of an older ggml, so warnings such as
    "using full-size SWA cache" got through at every model load."""
    global _LOG_CALLBACK
    llama_cpp = llama_cpp_module()
    for module in ("llama_cpp._logger", "llama_cpp.llama_chat_format"):  # each installs its callback when first imported
        require(module, "llamacpp")
    if _LOG_CALLBACK is None:
        last = [0]

        def log(level: int, text: bytes, user_data: Any) -> None:
            if level != GGML_LOG_LEVEL_CONT:
                last[0] = level
            if last[0] == GGML_LOG_LEVEL_ERROR:
                print(text.decode("utf-8", errors="replace"), end="", file=sys.stderr, flush=True)

        _LOG_CALLBACK = llama_cpp.llama_log_callback(log)
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def built_with_amx() -> bool:
    """Whether this llama.cpp build uses Intel AMX. Its AMX matrix multiply segfaulted on an AMX CPU
    (llama-cpp-python 0.3.36), so such a build runs without the extra buffer types that route work to
    AMX (losing weight repacking too); ``make setup`` builds without AMX instead."""
    llama_cpp = llama_cpp_module()
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


class LoadedGGUF:
    """A GGUF model, its tokenizer and chat template, one llama.cpp context, and its LoRA adapters."""

    def __init__(self, model_file: str | Path, settings: LlamaCppSettings = LlamaCppSettings()):
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {self.model_file}")
        self.settings = settings
        self.adapters: dict[str, str] = {}
        self._adapter_handles: dict[str, Any] = {}
        self._adapter_files: dict[str, Path] = {}
        self._unrestricted_adapters: set[str] = set()  # adapters the reduced-vocabulary copies could not load
        self._active_adapter: str | None = None
        self._model: Any = None
        self._context: Any = None
        self._batch: Any = None
        self._formatter: Any = None
        self._pieces: dict[int, bytes] = {}
        self._ending: dict[tuple[str, ...], np.ndarray] = {}
        self._restricted: dict[str, LoadedGGUF] = {}
        self._threads = 0  # threads the context runs on now (see _use_threads)
        self._prefix: list[int] = []  # what sequence 0 holds from position 0 on, kept for the next group (see begin)
        self._retained: dict[int, tuple[list[int], list[int]]] = {}  # sequence -> (prompt, tokens held): see retain
        self._stored: dict[tuple[int, ...], int] = {}  # prefix -> the sequence keeping it, least recently used first: see begin

    def _load(self) -> None:
        llama_cpp = llama_cpp_module()
        _quiet_llama_logs()
        internals = require("llama_cpp._internals", "llamacpp")
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model_params.use_extra_bufts = not built_with_amx()
        self._model = internals.LlamaModel(path_model=str(self.model_file), params=model_params, verbose=False)
        context_params = llama_cpp.llama_context_default_params()
        threads = self.settings.resolved_threads
        sequences = self.settings.max_sequences + self.settings.stored_prefixes
        context_params.n_ctx = self.settings.n_ctx * sequences
        context_params.n_batch = context_params.n_ubatch = self.settings.n_batch
        context_params.n_seq_max = sequences
        context_params.n_threads = context_params.n_threads_batch = threads
        context_params.kv_unified = False  # one KV stream per sequence (see the module docstring)
        context_params.no_perf = True
        # Without flash attention, a sequence's scores do not depend on which other sequences share its
        # batch (with it, the gaps other sequences leave in the unified cache change the rounding).
        context_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._context = internals.LlamaContext(model=self._model, params=context_params, verbose=False)
        self._batch = internals.LlamaBatch(n_tokens=self.settings.n_batch, embd=self._input_width(), n_seq_max=1, verbose=False)
        template = self._model.metadata().get("tokenizer.chat_template")
        if template:
            chat_format = require("llama_cpp.llama_chat_format", "llamacpp")
            vocab = self._model.vocab
            self._formatter = chat_format.Jinja2ChatFormatter(
                template=template, bos_token=self._token_text(llama_cpp.llama_vocab_bos(vocab)),
                eos_token=self._token_text(llama_cpp.llama_vocab_eos(vocab)), add_generation_prompt=True)

    def _token_text(self, token: int) -> str:
        return self._model.token_get_text(token) if token >= 0 else ""

    @property
    def model(self) -> Any:
        if self._model is None:
            self._load()
        return self._model

    @property
    def context(self) -> Any:
        if self._context is None:
            self._load()
        return self._context

    @property
    def n_vocab(self) -> int:
        return int(self.model.n_vocab())

    @property
    def is_chat(self) -> bool:
        self.model  # noqa: B018  (loads the template)
        return self._formatter is not None

    def render(self, prompt: Prompt) -> str:
        """The text sent to the model: the chat template over the messages for chat models (rendered
        like transformers' ``apply_chat_template`` with a generation prompt), else the completion text."""
        if self.is_chat:
            return self._formatter(messages=[{"role": m.role, "content": m.content} for m in prompt.messages]).prompt
        return prompt.completion

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        """Token ids of ``text``; special tokens written in it (chat markers) are parsed as such."""
        if not text:
            return []
        return list(self.model.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Prompt token ids as transformers builds them: BOS for completion prompts, the template's own for chat."""
        return self.tokenize(self.render(prompt), add_special=not self.is_chat)

    def header_length(self, prompt: Prompt, ids: Sequence[int]) -> int:
        """How many of the prompt's tokens ``ids`` are its fixed header (``Prompt.header``, completion layout
        only); 0 when the header's tokens are not where the prompt's begin."""
        if self.is_chat or not prompt.header:
            return 0
        header = self.tokenize(prompt.completion[:prompt.header], add_special=True)
        return len(header) if list(ids[:len(header)]) == header else 0

    def piece(self, token: int) -> bytes:
        """The bytes of one token as text (control tokens render as nothing)."""
        if token not in self._pieces:
            llama_cpp = llama_cpp_module()
            buffer = ctypes.create_string_buffer(64)
            length = llama_cpp.llama_token_to_piece(self.model.vocab, token, buffer, len(buffer), 0, False)
            if length < 0:  # longer than the buffer: -length is the size needed
                buffer = ctypes.create_string_buffer(-length)
                length = llama_cpp.llama_token_to_piece(self.model.vocab, token, buffer, len(buffer), 0, False)
            self._pieces[token] = buffer.raw[:length]
        return self._pieces[token]

    def is_end_of_generation(self, token: int) -> bool:
        llama_cpp = llama_cpp_module()
        return bool(llama_cpp.llama_vocab_is_eog(self.model.vocab, token))

    def _full_ids(self) -> np.ndarray:
        """The full model's id of each of this model's tokens (what :meth:`piece` reads)."""
        return np.arange(self.n_vocab)

    def is_control(self, token: int) -> bool:
        llama_cpp = llama_cpp_module()
        return bool(llama_cpp.llama_vocab_is_control(self.model.vocab, token))

    def ending_tokens(self, stops: tuple[str, ...]) -> np.ndarray:
        """This model's ids of the tokens that end generation, are control tokens (a chat model's turn
        markers) or whose text holds one of ``stops``: what a length floor holds back (computed once per
        model and stops)."""
        if stops not in self._ending:
            encoded = [stop.encode("utf-8") for stop in stops]
            self._ending[stops] = np.array([own for own, token in enumerate(self._full_ids().tolist())
                                            if self.is_end_of_generation(token) or self.is_control(token)
                                            or any(stop in self.piece(token) for stop in encoded)], dtype=np.int64)
        return self._ending[stops]

    def hold_back(self, batch_index: int, stops: tuple[str, ...]) -> None:
        """Keep the next token drawn at output ``batch_index`` from ending the text (:meth:`ending_tokens`)."""
        self.logits(batch_index)[self.ending_tokens(stops)] = -np.inf

    def add_adapter(self, gguf_adapter: str | Path, name: str, source: str) -> None:
        """Load a GGUF LoRA adapter under ``name`` (``source`` is the adapter directory it came from)."""
        llama_cpp = llama_cpp_module()
        handle = llama_cpp.llama_adapter_lora_init(self.model.model, str(gguf_adapter).encode("utf-8"))
        if handle is None:
            raise ValueError(f"llama.cpp could not load the LoRA adapter {gguf_adapter} (converted from {source}) on {self.model_file}")
        self._adapter_handles[name] = handle
        self._adapter_files[name] = Path(gguf_adapter)
        self.adapters[name] = source

    def activate(self, adapter: str | None) -> None:
        """Make ``adapter`` (or no adapter) the one applied by the following decodes."""
        if adapter == self._active_adapter:
            return
        llama_cpp = llama_cpp_module()
        if adapter is None:
            status = llama_cpp.llama_set_adapters_lora(self.context.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapter_handles[adapter])
            scales = (ctypes.c_float * 1)(1.0)
            status = llama_cpp.llama_set_adapters_lora(self.context.ctx, handles, 1, scales)
        if status != 0:
            raise RuntimeError(f"llama.cpp could not switch to adapter {adapter!r} (status {status})")
        self._active_adapter = adapter
        self._prefix, self._retained, self._stored = [], {}, {}  # cached under the other adapter

    def clear(self) -> None:
        """Forget every cached token of every sequence."""
        llama_cpp = llama_cpp_module()
        llama_cpp.llama_memory_clear(self.context.memory, False)
        self._prefix, self._retained, self._stored = [], {}, {}

    def begin(self, prefix: Sequence[int], sequences: int) -> int:
        """Start a group of ``sequences`` rows that share ``prefix``: sequence 0 holds the prefix, evaluated
        on its own, and every other sequence a copy of it; nothing else stays on the rows' sequences. A
        prefix is evaluated only when neither sequence 0 (the previous group's prefix: the same step's
        prompts, scored then generated) nor the store (the last ``stored_prefixes`` prefixes of at least
        :data:`MIN_STORED_TOKENS` tokens, each in a sequence of its own: a template's fixed header, a
        context that did not change) holds it. It was evaluated the same way, on its own, so the values
        are the same wherever they come from. Returns how many prefix tokens were not evaluated."""
        prefix = list(prefix)
        self._retained = {}
        reused = len(prefix)
        if prefix and prefix == self._prefix:
            self.trim(0, len(prefix))
            for sequence in range(1, self.settings.max_sequences):
                self.trim(sequence, 0)
        else:
            for sequence in range(self.settings.max_sequences):
                self.trim(sequence, 0)
            stored = self._stored.pop(tuple(prefix), None)
            if stored is not None:
                self.copy_sequence(stored, [0])
                self._stored[tuple(prefix)] = stored  # now the most recently used
            elif prefix:
                self.decode([_Entry(token, position, 0, False) for position, token in enumerate(prefix)], lambda entry, index: None)
                self._store(prefix)
                reused = 0
            self._prefix = prefix
        if prefix:
            self.copy_sequence(0, range(1, sequences))
        return reused

    def _store(self, prefix: list[int]) -> None:
        """Keep a copy of sequence 0 (holding just ``prefix``) in the store, in place of the least recently used."""
        slots = range(self.settings.max_sequences, self.settings.max_sequences + self.settings.stored_prefixes)
        if len(prefix) < MIN_STORED_TOKENS or not slots:
            return
        taken = set(self._stored.values())
        free = [slot for slot in slots if slot not in taken]
        slot = free[0] if free else self._stored.pop(next(iter(self._stored)))
        self.copy_sequence(0, [slot])
        self._stored[tuple(prefix)] = slot

    def retain(self, held: dict[int, tuple[list[int], list[int]]]) -> None:
        """Offer the sequences of ``held`` (sequence -> (its prompt, every token it holds from position 0))
        to the next call, which may continue them (:meth:`resume`); any other call forgets them."""
        self._retained = held

    def resume(self, rows: Sequence[Sequence[int]]) -> list[tuple[int, int]] | None:
        """Place each row on a retained sequence whose prompt it extends (or repeats), keeping the tokens they
        share but the row's last :data:`READ_AGAIN`: each row's (sequence, tokens kept), or None when a row
        extends no retained prompt (nothing is kept then). Rows that extend the same prompt (agents with
        the same profile) continue copies of its sequence. Retained sequences serve one call."""
        retained, self._retained = self._retained, {}
        unused = dict(retained)
        placement: list[tuple[int, int]] = [(-1, 0)] * len(rows)
        copies: list[tuple[int, int]] = []  # (row, sequence to copy)
        for i, row in enumerate(rows):
            owners = [s for s, (prompt, _) in retained.items() if len(row) >= len(prompt) and list(row[:len(prompt)]) == prompt]
            if not owners:
                return None
            own = next((s for s in owners if s in unused), None)
            if own is None:
                copies.append((i, owners[0]))
                continue
            del unused[own]
            placement[i] = (own, _common_length(retained[own][1], rows[i][:len(rows[i]) - READ_AGAIN]))
        spare = [s for s in range(self.settings.max_sequences) if s not in retained] + list(unused)
        for (i, source), target in zip(copies, spare):
            self.copy_sequence(source, [target])
            placement[i] = (target, _common_length(retained[source][1], rows[i][:len(rows[i]) - READ_AGAIN]))
        for sequence, kept in placement:
            self.trim(sequence, kept)
        return placement

    def trim(self, sequence: int, length: int) -> None:
        """Forget a sequence's tokens from position ``length`` on."""
        llama_cpp_module().llama_memory_seq_rm(self.context.memory, sequence, length, -1)

    def copy_sequence(self, source: int, targets: Sequence[int]) -> None:
        """Give every target sequence a copy of the source sequence's cache."""
        llama_cpp = llama_cpp_module()
        for target in targets:
            llama_cpp.llama_memory_seq_cp(self.context.memory, source, target, -1, -1)

    def decode(self, entries: Sequence[_Entry], on_logits: Callable[[int, int], None]) -> None:
        """Evaluate ``entries`` in chunks of ``n_batch``; after each chunk, ``on_logits(entry_index,
        batch_index)`` for every entry that asked for logits (``batch_index`` addresses them in the context)."""
        llama_cpp = llama_cpp_module()
        context, batch = self.context, self._batch.batch
        for start in range(0, len(entries), self.settings.n_batch):
            chunk = entries[start:start + self.settings.n_batch]
            batch.n_tokens = len(chunk)
            self._use_threads(len(chunk))
            self._fill_inputs(batch, chunk)
            for i, entry in enumerate(chunk):
                batch.pos[i], batch.logits[i] = entry.position, entry.wants_logits
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = entry.sequence
            status = llama_cpp.llama_decode(context.ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama.cpp decode failed with status {status} on {self.model_file.name} "
                                   f"({self.settings.max_sequences} sequences of {self.settings.n_ctx} tokens)")
            for i, entry in enumerate(chunk):
                if entry.wants_logits:
                    on_logits(start + i, i)

    def _use_threads(self, tokens: int) -> None:
        """One thread for a small batch, every thread for a large one. With passively waiting OpenMP
        threads (see :func:`llama_cpp_module`) each of the graph's few hundred barriers wakes a sleeping
        thread: on 2 cores a one-token decode took 14 ms on two threads and 4 ms on one, while two
        threads won from about 32 tokens on. Results do not depend on the thread count."""
        threads = 1 if tokens < SMALL_BATCH_TOKENS else self.settings.resolved_threads
        if threads != self._threads:
            llama_cpp_module().llama_set_n_threads(self.context.ctx, threads, threads)
            self._threads = threads

    def _input_width(self) -> int:
        """0: batches carry token ids (a subclass may feed embeddings of this width instead)."""
        return 0

    def _fill_inputs(self, batch: Any, chunk: Sequence[_Entry]) -> None:
        for i, entry in enumerate(chunk):
            batch.token[i] = entry.token

    def for_generation(self, vocabulary: str | None, adapter: str | None) -> LoadedGGUF:
        """The model that generates: this one, or its copy restricted to ``vocabulary``'s tokens when one is
        asked for and the architecture allows it, with ``adapter`` loaded there too (else this one)."""
        if vocabulary is None or adapter in self._unrestricted_adapters:
            return self
        if vocabulary not in self._restricted:
            try:
                reduced = reduced_gguf(self.model_file, vocabulary, cache_root() / "gguf" / "vocabulary")
            except UnsupportedVocabulary as why:
                announce(f"{why}: generating from the whole vocabulary")
                self._restricted[vocabulary] = self
            else:
                self._restricted[vocabulary] = RestrictedGGUF(self, reduced)
        restricted = self._restricted[vocabulary]
        if adapter is not None and restricted is not self and adapter not in restricted.adapters:
            try:
                restricted.add_adapter(self._adapter_files[adapter], adapter, self.adapters[adapter])
            except ValueError as why:
                announce(f"{why}: with this adapter, generating from the whole vocabulary")
                self._unrestricted_adapters.add(adapter)
                return self
        return restricted

    def logits(self, batch_index: int) -> np.ndarray:
        """The next-token logits at one output of the last decode (a view, valid until the next decode)."""
        llama_cpp = llama_cpp_module()
        pointer = llama_cpp.llama_get_logits_ith(self.context.ctx, batch_index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def sampler(self, params: SamplingParams, seed: int) -> Any:
        """A sampler chain like the transformers backend's: top-k, repetition penalties over the tokens the
        row has generated (the chain accepts each sampled token), temperature, nucleus, then a seeded draw
        (at temperature 0, the best token after the penalties)."""
        internals = require("llama_cpp._internals", "llamacpp")
        sampler = internals.LlamaSampler()
        if params.temperature <= 0 and not params.penalises:
            sampler.add_greedy()
            return sampler
        sampler.add_top_k(params.top_k)
        if params.penalises:  # after top-k, as llama.cpp advises: the penalties then scan k candidates, not the vocabulary
            sampler.add_penalties(self.n_vocab, params.penalty_window, params.repetition_penalty, params.frequency_penalty,
                                  params.presence_penalty)
        if params.temperature <= 0:
            sampler.add_greedy()
            return sampler
        sampler.add_temp(params.temperature)
        sampler.add_top_p(params.top_p, 1)
        sampler.add_dist(seed)
        return sampler

    def sample(self, sampler: Any, batch_index: int) -> int:
        llama_cpp = llama_cpp_module()
        return int(llama_cpp.llama_sampler_sample(sampler.sampler, self.context.ctx, batch_index))

    def describe(self) -> dict[str, Any]:
        return {"model_file": str(self.model_file), "threads": self.settings.resolved_threads, "n_ctx": self.settings.n_ctx,
                "n_batch": self.settings.n_batch, "max_sequences": self.settings.max_sequences,
                "stored_prefixes": self.settings.stored_prefixes, "llama_cpp_python": LLAMA_CPP_VERSION,
                "extra_buffer_types": bool(self.model.params.use_extra_bufts)}


class RestrictedGGUF(LoadedGGUF):
    """A model's reduced-vocabulary copy (``mfllm.backends.vocabulary``) that reads the full model's input
    embeddings and samples among the kept tokens, reporting them by their ids in the full model, whose
    tokenizer, pieces and end-of-generation tokens it uses."""

    def __init__(self, full: LoadedGGUF, vocabulary: ReducedVocabulary):
        super().__init__(vocabulary.gguf_file, full.settings)
        self.full, self.vocabulary = full, vocabulary
        self._embeddings = InputEmbeddings(full.model_file, vocabulary)
        self._own_ids: np.ndarray | None = None

    def _input_width(self) -> int:
        return self.vocabulary.n_embd

    def _fill_inputs(self, batch: Any, chunk: Sequence[_Entry]) -> None:
        rows = np.ascontiguousarray(self._embeddings.rows([entry.token for entry in chunk]), dtype=np.float32)
        ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)

    def sample(self, sampler: Any, batch_index: int) -> int:
        return int(self.vocabulary.full_ids[super().sample(sampler, batch_index)])

    def own_id(self, token: int) -> int:
        """This model's id of a full-model token (-1: not kept)."""
        if self._own_ids is None:
            self._own_ids = np.full(self.full.n_vocab, -1, dtype=np.int64)
            self._own_ids[self.vocabulary.full_ids] = np.arange(self.vocabulary.size)
        return int(self._own_ids[token])

    @property
    def is_chat(self) -> bool:
        return self.full.is_chat

    def render(self, prompt: Prompt) -> str:
        return self.full.render(prompt)

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self.full.tokenize(text, add_special)

    def piece(self, token: int) -> bytes:
        return self.full.piece(token)

    def is_end_of_generation(self, token: int) -> bool:
        return self.full.is_end_of_generation(token)

    def is_control(self, token: int) -> bool:
        return self.full.is_control(token)

    def _full_ids(self) -> np.ndarray:
        return self.vocabulary.full_ids

    def for_generation(self, vocabulary: str | None, adapter: str | None) -> LoadedGGUF:
        return self


def _log_normaliser(logits: np.ndarray) -> float:
    """log(sum(exp(logits))), computed stably: subtracted from a logit, the token's log-probability."""
    top = logits.max()
    return float(top + np.log(np.exp(logits - top).sum()))


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _groups(lengths: Sequence[int], n_ctx: int, max_sequences: int, what: str) -> list[list[int]]:
    """Consecutive groups of at most ``max_sequences`` rows, after checking every row fits ``n_ctx`` tokens."""
    for i, length in enumerate(lengths):
        if length > n_ctx:
            raise ValueError(f"{what} {i} needs {length} tokens, more than the llama.cpp context of {n_ctx} per sequence: raise n_ctx")
    return [list(range(start, min(start + max_sequences, len(lengths)))) for start in range(0, len(lengths), max_sequences)]


@dataclass
class _Row:
    """One sequence being generated."""

    sampler: Any
    position: int
    pieces: bytearray
    limit: int
    minimum: int = 0
    tokens: int = 0
    finished: bool = False
    stopped_by_string: bool = False

    def text(self) -> str:
        return self.pieces.decode("utf-8", errors="ignore")


class LlamaCppModel(LanguageModel):
    """A :class:`LanguageModel` over a :class:`LoadedGGUF`, optionally through one named LoRA adapter."""

    def __init__(self, loaded: LoadedGGUF, name: str, adapter: str | None = None, prefix_cache: bool = True):
        self.loaded, self.name, self.adapter, self.prefix_cache = loaded, name, adapter, prefix_cache
        self.usage = UsageStats()

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.loaded.prompt_ids(prompt))

    def count_text_tokens(self, text: str) -> int:
        return len(self.loaded.tokenize(text, add_special=False))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__, "backend": "llamacpp", **self.loaded.describe(),
                "adapter": self.loaded.adapters.get(self.adapter or ""), "adapter_sha256": adapter_digest(self.loaded.adapters.get(self.adapter or "")),
                "chat": self.loaded.is_chat}

    def _shared(self, token_ids: Sequence[Sequence[int]]) -> int:
        return prefix_to_share(token_ids) if self.prefix_cache else 0

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        loaded = self.loaded
        runner = loaded.for_generation(params.vocabulary, self.adapter)
        runner.activate(self.adapter)
        token_ids = [loaded.prompt_ids(p) for p in prompts]
        headers = [loaded.header_length(p, ids) for p, ids in zip(prompts, token_ids)]
        results: list[str] = [""] * len(prompts)
        lengths = [len(t) + params.limit(i) for i, t in enumerate(token_ids)]
        for group in _groups(lengths, loaded.settings.n_ctx, loaded.settings.max_sequences, "prompt"):
            for index, text in zip(group, self._generate_group(runner, [token_ids[i] for i in group], group, params,
                                                                min(headers[i] for i in group))):
                results[index] = text
        self.usage.generate_calls += 1
        self.usage.prompt_tokens += sum(len(t) for t in token_ids)
        return results

    def _shared_or_header(self, token_ids: Sequence[Sequence[int]], header: int) -> int:
        """The rows' shared prefix (:meth:`_shared`), or their common fixed header when that is longer."""
        shared = self._shared(token_ids)
        if header > shared and self.prefix_cache and all(len(ids) >= header + READ_AGAIN and ids[:header] == token_ids[0][:header] for ids in token_ids):
            return header
        return shared

    def _generate_group(self, loaded: LoadedGGUF, token_ids: list[list[int]], indices: list[int], params: SamplingParams,
                        header: int) -> list[str]:
        seeds = [SEED_MODULUS if params.seed is None else (params.seed + i) % SEED_MODULUS for i in indices]
        rows = [_Row(loaded.sampler(params, seed), len(ids), bytearray(), limit=params.limit(i), minimum=params.minimum(i)) for ids, seed, i in zip(token_ids, seeds, indices)]
        placement = loaded.resume(token_ids) if self.prefix_cache else None  # the prompts the kind choice just read (see score_options)
        if placement is None:
            shared = self._shared_or_header(token_ids, header)
            placement = [(sequence, shared) for sequence in range(len(rows))]
            self.usage.prefix_cached_tokens += loaded.begin(token_ids[0][:shared], len(rows)) + shared * (len(rows) - 1)
        else:
            self.usage.prefix_cached_tokens += sum(kept for _, kept in placement)
        row_of = {sequence: i for i, (sequence, _) in enumerate(placement)}
        entries = []
        for (sequence, start), ids in zip(placement, token_ids):
            entries += [_Entry(token, start + k, sequence, start + k == len(ids) - 1) for k, token in enumerate(ids[start:])]
        pending: list[_Entry] = []

        def take(entry_index: int, batch_index: int) -> None:
            sequence = entries[entry_index].sequence
            row = rows[row_of[sequence]]
            if row.tokens < row.minimum:
                loaded.hold_back(batch_index, params.stop)
            token = loaded.sample(row.sampler, batch_index)
            row.tokens += 1
            if loaded.is_end_of_generation(token):
                row.finished = True
            else:
                row.pieces += loaded.piece(token)
                row.stopped_by_string = bool(params.stop) and stop_position(row.text(), params.stop) is not None
                row.finished = row.stopped_by_string or row.tokens >= row.limit
            if row.finished:
                loaded.trim(sequence, len(token_ids[row_of[sequence]]))
            else:
                pending.append(_Entry(token, row.position, sequence, True))
                row.position += 1

        while entries:
            pending = []
            loaded.decode(entries, take)
            entries = pending
        loaded.retain({sequence: (ids, ids) for (sequence, _), ids in zip(placement, token_ids)})  # for a retry of some rows
        texts = []
        for row in rows:
            text = clean_output(row.text(), params.stop)
            kept = len(loaded.tokenize(text, add_special=False)) + row.stopped_by_string
            self.usage.generated_tokens += kept
            self.usage.discarded_tokens += max(row.tokens - kept, 0)
            texts.append(text)
        return texts

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        loaded = self.loaded
        loaded.activate(self.adapter)
        prompt_ids = [loaded.prompt_ids(p) for p in prompts]
        continuation_ids = [loaded.tokenize(c, add_special=False) for c in continuations]
        lengths = [len(p) + len(c) for p, c in zip(prompt_ids, continuation_ids)]
        scores: list[ContinuationScore] = [ContinuationScore(())] * len(prompts)
        for group in _groups(lengths, loaded.settings.n_ctx, loaded.settings.max_sequences, "prompt and continuation"):
            group_scores = self._score_group([prompt_ids[i] for i in group], [continuation_ids[i] for i in group])
            for index, score in zip(group, group_scores):
                scores[index] = score
        self.usage.score_calls += 1
        self.usage.prompt_tokens += sum(len(p) for p in prompt_ids)
        return scores

    def score_options(self, prompts: Sequence[Prompt], options: Sequence[str], vocabulary: str | None) -> list[ContinuationScore]:
        """With a restricted output vocabulary, the options are scored by the reduced-vocabulary model that
        then writes the text (normalised over its tokens), and the prompts it reads stay in its cache for the
        next :meth:`generate` call, which continues them instead of reading them again. Each prompt's
        options form a prefix tree read path by path (the three kind markers: two paths), every prompt of a
        group in one batch per path, each path reading at least :data:`READ_AGAIN` tokens: the log-probs are
        the full model's renormalised over the kept tokens. Otherwise (the whole vocabulary, no reduced
        model for this language or adapter, an option with a token outside the vocabulary): :meth:`score`."""
        loaded = self.loaded
        runner = loaded.for_generation(vocabulary, self.adapter)
        option_ids = [loaded.tokenize(o, add_special=False) for o in options]
        if not isinstance(runner, RestrictedGGUF) or any(runner.own_id(t) < 0 for ids in option_ids for t in ids):
            return self.score(prompts, options)
        runner.activate(self.adapter)
        ids_of = {prompt: loaded.prompt_ids(prompt) for prompt in dict.fromkeys(prompts)}  # each prompt comes once per option
        prompt_ids = [ids_of[prompt] for prompt in prompts]
        rows_of: dict[tuple[int, ...], list[int]] = {}
        for row, ids in enumerate(prompt_ids):
            rows_of.setdefault(tuple(ids), []).append(row)
        distinct = list(rows_of)
        lengths = [len(ids) + max(len(option_ids[row]) for row in rows_of[ids]) for ids in distinct]
        groups = _groups(lengths, loaded.settings.n_ctx, loaded.settings.max_sequences, "prompt and option")
        scores: list[ContinuationScore] = [ContinuationScore(())] * len(prompts)
        for number, group in enumerate(groups):
            found = self._score_options_group(runner, [list(distinct[k]) for k in group],
                                              [[option_ids[row] for row in rows_of[distinct[k]]] for k in group], number == len(groups) - 1)
            for k, values in zip(group, found):
                for row, score in zip(rows_of[distinct[k]], values):
                    scores[row] = score
        self.usage.score_calls += 1
        self.usage.prompt_tokens += sum(len(p) for p in prompt_ids)
        return scores

    def _score_options_group(self, runner: RestrictedGGUF, prompts: list[list[int]], options: list[list[list[int]]],
                             retain: bool) -> list[list[ContinuationScore]]:
        """Score one group (prompt k on sequence k); with ``retain``, offer its sequences to the next call."""
        shared = self._shared(prompts)
        self.usage.prefix_cached_tokens += runner.begin(prompts[0][:shared], len(prompts)) + shared * (len(prompts) - 1)
        paths = [_option_paths(own) for own in options]
        logprobs: list[list[dict[int, float]]] = [[{} for _ in own] for own in options]
        held = [list(prompt) for prompt in prompts]
        for stage in range(max(len(p) for p in paths)):
            entries: list[_Entry] = []
            contexts: list[tuple[int, tuple[int, ...], int]] = []  # per entry: prompt, path, tokens of the path read (-1: no logits)
            for k, prompt in enumerate(prompts):
                if stage >= len(paths[k]):
                    continue
                path = paths[k][stage]
                held[k] = prompt + list(path)
                start = shared if stage == 0 else min(len(prompt) + _common_length(paths[k][stage - 1], path), len(held[k]) - READ_AGAIN)
                if stage:
                    runner.trim(k, start)
                for position in range(start, len(held[k])):
                    read = position - len(prompt) + 1
                    entries.append(_Entry(held[k][position], position, k, read >= 0))
                    contexts.append((k, path, read))

            def take(entry_index: int, batch_index: int) -> None:
                k, path, read = contexts[entry_index]
                logits = runner.logits(batch_index).astype(np.float64)
                normaliser = _log_normaliser(logits)
                for option, values in zip(options[k], logprobs[k]):
                    if len(option) > read and tuple(option[:read]) == path[:read]:
                        values[read] = float(logits[runner.own_id(option[read])] - normaliser)

            runner.decode(entries, take)
        if retain:
            runner.retain({k: (prompt, held[k]) for k, prompt in enumerate(prompts)})
        return [[ContinuationScore(tuple(values[t] for t in range(len(option)))) for option, values in zip(own, found)]
                for own, found in zip(options, logprobs)]

    def _score_group(self, prompt_ids: list[list[int]], continuation_ids: list[list[int]]) -> list[ContinuationScore]:
        """Score one group. Rows that share tokens beyond the common prefix (the same prompt with several
        continuations, as when an agent's three action markers are scored) evaluate those tokens once:
        the rows form a prefix tree decoded level by level, each branch continuing on a copy of its
        parent's cache, and every position's log-softmax serves all rows through it."""
        loaded = self.loaded
        shared = self._shared(prompt_ids)
        self.usage.prefix_cached_tokens += loaded.begin(prompt_ids[0][:shared], len(prompt_ids))
        sequences = [p + c for p, c in zip(prompt_ids, continuation_ids)]
        logprobs: list[dict[int, float]] = [{} for _ in prompt_ids]

        def decode(branches: Sequence[_Branch]) -> None:
            entries: list[_Entry] = []
            targets: list[list[tuple[int, int, int]]] = []  # per entry: (row, position, token it predicts)
            for branch in branches:
                for offset, token in enumerate(branch.tokens):
                    position = branch.start + offset
                    wanted = [(row, position, sequences[row][position + 1]) for row in branch.rows
                              if len(prompt_ids[row]) - 1 <= position < len(sequences[row]) - 1]
                    entries.append(_Entry(token, position, branch.sequence, bool(wanted)))
                    targets.append(wanted)

            def take(entry_index: int, batch_index: int) -> None:
                logits = loaded.logits(batch_index).astype(np.float64)
                normaliser = _log_normaliser(logits)
                for row, position, token in targets[entry_index]:
                    logprobs[row][position] = float(logits[token] - normaliser)

            loaded.decode(entries, take)

        level = _branches(sequences, range(len(sequences)), shared)
        first = True
        while level:
            # The first level goes in one batch, as rows without shared tokens always did; after a branch,
            # each branch is its own batch, which scores every row exactly as when scored alone (batching
            # copied sequences together moved some log-probs by up to 0.04 nats in llama-cpp-python 0.3.36).
            for batch in [level] if first else [[branch] for branch in level]:
                decode(batch)
            first = False
            following = []
            for branch in level:
                children = _branches(sequences, branch.rows, branch.start + len(branch.tokens))
                loaded.copy_sequence(branch.sequence, [c.sequence for c in children if c.sequence != branch.sequence])
                following += children
            level = following
        self.usage.prefix_cached_tokens += shared * (len(prompt_ids) - 1)
        return [ContinuationScore(tuple(values[p] for p in sorted(values))) for values in logprobs]


@dataclass(frozen=True)
class _Branch:
    """Tokens that several rows share from ``start`` on, evaluated once on the first row's sequence."""

    tokens: list[int]
    start: int
    rows: list[int]

    @property
    def sequence(self) -> int:
        return self.rows[0]


def _option_paths(options: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """The paths that read every option's tokens: each option but its last token (its log-prob comes from
    the position before), leaving out paths that another path continues; in a fixed order."""
    inner = {tuple(option[:-1]) for option in options}
    return sorted(path for path in inner if not any(len(other) > len(path) and other[:len(path)] == path for other in inner))


def _branches(sequences: Sequence[Sequence[int]], rows: Sequence[int], start: int) -> list[_Branch]:
    """The rows (which agree on every token before ``start``) split by their token at ``start``, each
    part extended while its rows keep agreeing; rows that end at ``start`` drop out."""
    parts: dict[int, list[int]] = {}
    for row in rows:
        if len(sequences[row]) > start:
            parts.setdefault(sequences[row][start], []).append(row)
    branches = []
    for members in parts.values():
        end = start + 1
        while all(len(sequences[m]) > end for m in members) and len({sequences[m][end] for m in members}) == 1:
            end += 1
        branches.append(_Branch(list(sequences[members[0]][start:end]), start, members))
    return branches


def announce(message: str) -> None:
    """A one-line notice on stderr (a choice the user should know about, not a warning to silence)."""
    print(f"mfllm: {message}", file=sys.stderr, flush=True)
