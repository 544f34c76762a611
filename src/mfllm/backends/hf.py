"""Local causal LMs through transformers (any HF model by path or hub id, GGUF files, LoRA adapters).

Heavy imports (torch, transformers, peft) happen when a model is first used, so importing mfllm
stays cheap and a missing extra gives an actionable error.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mfllm.interfaces import ContinuationScore, LanguageModel, Prompt, SamplingParams, UsageStats


def require(module: str, extra: str) -> Any:
    """Import an optional dependency or explain which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is needed for this feature: pip install 'mfllm[{extra}]'") from exc


@contextmanager
def _peft_quietly() -> Any:
    """peft (0.21) reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps a model,
    which printed a FutureWarning in every training run and adapter load; this silences exactly that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when present, else CPU; anything else is passed through."""
    if device != "auto":
        return device
    torch = require("torch", "hf")
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    torch = require("torch", "hf")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
            "fp16": torch.float16, "float16": torch.float16}[dtype]


ADAPTER_META = "mfllm_adapter.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""What a LoRA adapter directory holds that makes it this adapter (its :func:`adapter_digest`)."""


def adapter_digest(directory: str | Path | None) -> str | None:
    """The content digest (16 hex digits of sha256) of a LoRA adapter directory's config and weights, what
    manifests record so that a run is never continued, reused or scored with other weights; None for none."""
    if directory is None:
        return None
    files = [Path(directory) / name for name in ADAPTER_FILES]
    return _files_digest(tuple((str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()))


def adapter_meta(directory: str | Path | None) -> dict[str, Any] | None:
    """What ``mfllm train`` recorded beside a LoRA adapter (its mfllm_adapter.json), or None without one."""
    meta_file = None if directory is None else Path(directory) / ADAPTER_META
    if meta_file is None or not meta_file.is_file():
        return None
    return json.loads(meta_file.read_text(encoding="utf-8"))


def adapter_generation(directory: str | Path | None) -> dict[str, Any]:
    """The generation settings a LoRA adapter was measured with (its mfllm_adapter.json ``generation``, e.g.
    ``length_floor``), which runs with it take unless told otherwise; empty for none."""
    return dict((adapter_meta(directory) or {}).get("generation") or {})


@functools.lru_cache(maxsize=64)
def _files_digest(files: tuple[tuple[str, int, int], ...]) -> str:
    hasher = hashlib.sha256()
    for path, _, _ in files:
        hasher.update(Path(path).name.encode("utf-8"))
        hasher.update(Path(path).read_bytes())
    return hasher.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: a directory or hub id, optionally a GGUF file inside it."""

    path: str
    gguf_file: str | None = None


class LoadedCausalLM:
    """A tokenizer and model loaded once and shared by every backend view (and adapter) on it."""

    def __init__(self, source: ModelSource, device: str = "auto", dtype: str = "auto"):
        self.source = source
        self.device = resolve_device(device)
        self.dtype_name = dtype
        self._tokenizer: Any = None
        self._model: Any = None
        self.adapters: dict[str, str] = {}
        self._ending: dict[tuple[str, ...], list[int]] = {}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            transformers = require("transformers", "hf")
            kwargs = {"gguf_file": self.source.gguf_file} if self.source.gguf_file else {}
            tokenizer = transformers.AutoTokenizer.from_pretrained(self.source.path, **kwargs)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "left"
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            transformers = require("transformers", "hf")
            kwargs = {"gguf_file": self.source.gguf_file} if self.source.gguf_file else {}
            model = transformers.AutoModelForCausalLM.from_pretrained(
                self.source.path, dtype=resolve_dtype(self.dtype_name, self.device), use_kernels=False, **kwargs
            )  # use_kernels: no kernel code fetched from a hub at run time (transformers 5 does so on CUDA by default)
            self._model = model.to(self.device).eval()
        return self._model

    def add_trainable_adapter(self, lora_config: Any, name: str) -> Any:
        """Wrap the model in a new trainable LoRA adapter ``name`` (a peft ``LoraConfig``), which every view
        then uses; returns the PeftModel."""
        peft = require("peft", "train")
        with _peft_quietly():
            self._model = peft.get_peft_model(self.model, lora_config, adapter_name=name)
        return self._model

    @property
    def is_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the base architecture an adapter must match."""
        config = self.model.config
        text_config = getattr(config, "text_config", None) or config
        return {key: getattr(text_config, key, None) for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}

    def add_adapter(self, path: str | Path, name: str) -> None:
        """Attach a LoRA adapter, refusing one trained on a different base model."""
        peft = require("peft", "hf")
        meta = adapter_meta(path)
        if meta is not None:
            if meta["fingerprint"] != self.fingerprint():
                raise ValueError(f"adapter {path} was trained on base model {meta['base_model']} ({meta['fingerprint']}), "
                                 f"which does not match {self.source.path} ({self.fingerprint()})")
        else:
            config = peft.PeftConfig.from_pretrained(str(path))
            base = Path(config.base_model_name_or_path or "").name
            if base and base != Path(self.source.path).name:
                raise ValueError(f"adapter {path} was trained on base model {config.base_model_name_or_path!r}, not {self.source.path!r}")
        with _peft_quietly():
            if isinstance(self.model, peft.PeftModel):
                self._model.load_adapter(str(path), adapter_name=name)
            else:
                self._model = peft.PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()
        self.adapters[name] = str(path)

    def ending_tokens(self, stops: tuple[str, ...]) -> list[int]:
        """The ids of the tokens that end generation, are special (a chat model's turn markers) or whose text
        holds one of ``stops``: what a length floor holds back (computed once per stops)."""
        if stops not in self._ending:
            tokenizer = self.tokenizer
            texts = tokenizer.batch_decode([[token] for token in range(len(tokenizer))])
            ends = self.model.generation_config.eos_token_id
            held = set(ends if isinstance(ends, list) else [ends]) | {tokenizer.eos_token_id} | set(tokenizer.all_special_ids)
            self._ending[stops] = sorted(token for token, text in enumerate(texts) if token in held or any(stop in text for stop in stops))
        return self._ending[stops]

    def render(self, prompt: Prompt) -> str:
        if self.is_chat:
            messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return prompt.completion


def stop_position(text: str, stops: Sequence[str]) -> int | None:
    """Index of the first stop string after the first non-whitespace character, else None
    (leading blank lines and an opening quote do not end the text)."""
    start = len(text) - len(text.lstrip()) + 1
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def clean_output(text: str, stops: Sequence[str]) -> str:
    """Generated text up to its first stop string, without surrounding blanks and quotes."""
    cut = stop_position(text, stops)
    return (text if cut is None else text[:cut]).strip().strip('"“”').strip()


def _stop_criteria(tokenizer: Any, stops: Sequence[str], prompt_length: int, limits: Sequence[int]) -> Any:
    transformers = require("transformers", "hf")
    torch = require("torch", "hf")

    class StopOnStringsOrLimit(transformers.StoppingCriteria):
        """Per-sequence stop once a stop string follows some non-blank text (leading newlines are skipped),
        or once the sequence has generated its own bound of tokens."""

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            generated = input_ids.shape[1] - prompt_length
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True) if stops else [""] * len(limits)
            return torch.tensor([generated >= limit or (bool(stops) and stop_position(t, stops) is not None) for t, limit in zip(texts, limits)],
                                device=input_ids.device)

    return transformers.StoppingCriteriaList([StopOnStringsOrLimit()])


MIN_SHARED_PREFIX_TOKENS = 16


def penalise(values: Any, indices: Any, generated: Any, params: SamplingParams) -> Any:
    """llama.cpp's penalties sampler on candidate logits ``values`` (token ids ``indices``, one row per
    sequence): a token generated ``n > 0`` times among the last ``penalty_window`` tokens of its row
    (``generated``) has its logit divided by the repetition penalty (multiplied when negative), then
    lowered by ``n * frequency_penalty + presence_penalty``."""
    torch = require("torch", "hf")
    window = generated[:, -params.penalty_window:] if params.penalty_window > 0 else generated[:, :0]
    counts = (indices.unsqueeze(-1) == window.unsqueeze(1)).sum(-1).to(values.dtype)
    seen = counts > 0
    repeated = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    values = torch.where(seen, repeated, values)
    return values - counts * params.frequency_penalty - seen.to(values.dtype) * params.presence_penalty


def _top_k_top_p(params: SamplingParams, prompt_length: int) -> Any:
    """Top-k, repetition penalties over each row's generated tokens (after ``prompt_length``), temperature,
    then nucleus sampling, in the order of the llama.cpp backend's sampler chain (at temperature 0, top-k
    and the penalties only, before the greedy choice).

    transformers' own top-p warper sorts the whole vocabulary at every step (262k entries for
    Gemma 3), which on a CPU costs as much as the model's forward pass; selecting the top k first
    is O(vocabulary) and gives the same nucleus whenever it lies within those k tokens.
    """
    transformers = require("transformers", "hf")
    torch = require("torch", "hf")

    class TopKTopP(transformers.LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            values, indices = torch.topk(scores, min(params.top_k, scores.shape[-1]), dim=-1)
            if params.penalises:
                values = penalise(values, indices, input_ids[:, prompt_length:], params)
            if params.temperature <= 0:  # greedy: the best candidate after the penalties
                return torch.full_like(scores, float("-inf")).scatter_(-1, indices, values)
            values = values / params.temperature
            probs = torch.softmax(values, dim=-1)
            outside = (probs.cumsum(-1) - probs) > params.top_p
            filtered = torch.full_like(scores, float("-inf"))
            return filtered.scatter_(-1, indices, values.masked_fill(outside, float("-inf")))

    return TopKTopP()


def _hold_back(ending: Sequence[int], minimums: Sequence[int], prompt_length: int) -> Any:
    """A row that has generated fewer tokens than its minimum cannot draw one of the ``ending`` tokens (ids
    past the logits' width, tokenizer additions the model has no output for, are left out)."""
    transformers = require("transformers", "hf")
    torch = require("torch", "hf")

    class HoldBack(transformers.LogitsProcessor):
        held: Any = None  # the ending tokens as an index tensor, built at the first step (when the width is known)

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if self.held is None:
                self.held = torch.tensor([token for token in ending if token < scores.shape[-1]], dtype=torch.long, device=scores.device)
            rows = [i for i, minimum in enumerate(minimums) if input_ids.shape[1] - prompt_length < minimum]
            if rows and len(self.held):
                scores[torch.tensor(rows, device=scores.device).unsqueeze(-1), self.held] = float("-inf")
            return scores

    return HoldBack()


def shared_prefix_length(token_ids: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix common to every prompt, leaving each at least one own token."""
    shortest = min(len(t) for t in token_ids)
    length = 0
    while length < shortest - 1 and all(t[length] == token_ids[0][length] for t in token_ids):
        length += 1
    return length


def prefix_to_share(prompt_ids: Sequence[Sequence[int]]) -> int:
    """How many leading prompt tokens a batch can compute once (0: none worth sharing)."""
    if len(prompt_ids) < 2:
        return 0
    shared = shared_prefix_length(prompt_ids)
    return shared if shared >= MIN_SHARED_PREFIX_TOKENS else 0


def padding_fits_window(model: Any, row_lengths: Sequence[int]) -> bool:
    """Whether padding placed between a shared prefix and each row's own tokens leaves attention
    unchanged. It does for full attention, but it widens the distance a sliding-window layer sees,
    so with a window it is exact only when the longest row fits in it or no row needs padding."""
    config = getattr(model.config, "text_config", None) or model.config
    window = getattr(config, "sliding_window", None)
    return not window or max(row_lengths) <= window or len(set(row_lengths)) == 1


def _pad_after_prefix(token_ids: Sequence[Sequence[int]], shared: int, pad_id: int) -> tuple[Any, Any]:
    """Batch tensors laid out as [shared prefix][padding][own suffix]: suffixes end together (left
    padding for generation) while the prefix stays aligned for a shared KV cache. Positions follow the
    attention mask, so the padding in the middle does not shift them."""
    torch = require("torch", "hf")
    width = max(len(t) for t in token_ids)
    rows, masks = [], []
    for ids in token_ids:
        gap = width - len(ids)
        rows.append(list(ids[:shared]) + [pad_id] * gap + list(ids[shared:]))
        masks.append([1] * shared + [0] * gap + [1] * (len(ids) - shared))
    return torch.tensor(rows), torch.tensor(masks)


def cache_argument(model: Any) -> str:
    """The keyword a model takes its KV cache by: ``cache`` in transformers 5 (``past_key_values`` is
    deprecated there), ``past_key_values`` before. A peft wrapper passes either through, so the wrapped
    model's signature decides."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _prefix_cache(model: Any, prefix_ids: Any, batch: int) -> Any:
    """KV cache of the shared prefix, computed once and repeated for every prompt of the batch."""
    transformers = require("transformers", "hf")
    cache = transformers.DynamicCache(config=model.config)
    model(input_ids=prefix_ids, use_cache=True, **{cache_argument(model): cache})
    cache.batch_repeat_interleave(batch)
    return cache


class TransformersModel(LanguageModel):
    """A :class:`LanguageModel` over a :class:`LoadedCausalLM`, optionally through one named adapter."""

    def __init__(self, loaded: LoadedCausalLM, name: str, adapter: str | None = None, score_batch_size: int = 8,
                 prefix_cache: bool = True):
        self.loaded, self.name, self.adapter = loaded, name, adapter
        self.score_batch_size, self.prefix_cache = score_batch_size, prefix_cache
        self.usage = UsageStats()

    def _activate(self) -> tuple[Any, Any]:
        """The model with this view's adapter active (or all adapters disabled), and the context to run in."""
        model = self.loaded.model
        if self.adapter is not None:
            model.set_adapter(self.adapter)
            return model, nullcontext()
        if self.loaded.adapters:
            return model, model.disable_adapter()
        return model, nullcontext()

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.loaded.tokenizer(self.loaded.render(prompt), add_special_tokens=False).input_ids)

    def count_text_tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer(text, add_special_tokens=False).input_ids)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__, "backend": "transformers", "path": self.loaded.source.path,
                "gguf_file": self.loaded.source.gguf_file, "adapter": self.loaded.adapters.get(self.adapter or "", None),
                "adapter_sha256": adapter_digest(self.loaded.adapters.get(self.adapter or "")),
                "device": self.loaded.device, "dtype": self.loaded.dtype_name, "chat": self.loaded.is_chat}

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        torch = require("torch", "hf")
        tokenizer = self.loaded.tokenizer
        model, adapter_context = self._activate()
        token_ids = [tokenizer(self.loaded.render(p), add_special_tokens=not self.loaded.is_chat).input_ids for p in prompts]
        limits = [params.limit(i) for i in range(len(prompts))]
        exact = padding_fits_window(model, [len(t) + limit for t, limit in zip(token_ids, limits)])
        shared = prefix_to_share(token_ids) if self.prefix_cache and exact else 0
        input_ids, attention = _pad_after_prefix(token_ids, shared, tokenizer.pad_token_id)
        input_ids, attention = input_ids.to(self.loaded.device), attention.to(self.loaded.device)
        prompt_length = input_ids.shape[1]
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sampling = params.temperature > 0
        transformers = require("transformers", "hf")
        minimums = [params.minimum(i) for i in range(len(prompts))]
        processors = [_hold_back(self.loaded.ending_tokens(params.stop), minimums, prompt_length)] if any(minimums) else []
        processors += [_top_k_top_p(params, prompt_length)] if sampling or params.penalises else []
        warper = transformers.LogitsProcessorList(processors) if processors else None
        with torch.inference_mode(), adapter_context:
            cache = _prefix_cache(model, input_ids[:1, :shared], len(prompts)) if shared else None
            output = model.generate(
                input_ids=input_ids, attention_mask=attention, **{cache_argument(model): cache},
                max_new_tokens=max(limits), do_sample=sampling, logits_processor=warper,
                temperature=1.0 if sampling else None, top_p=1.0 if sampling else None, top_k=0 if sampling else None,
                stopping_criteria=_stop_criteria(tokenizer, params.stop, prompt_length, limits),
                pad_token_id=tokenizer.pad_token_id,
            )
        generated = output[:, prompt_length:]
        results, kept = [], 0
        for row in tokenizer.batch_decode(generated, skip_special_tokens=True):
            text = clean_output(row, params.stop)
            results.append(text)
            kept += len(tokenizer(text, add_special_tokens=False).input_ids) + (stop_position(row, params.stop) is not None)
        self.usage.generate_calls += 1
        self.usage.prompt_tokens += sum(len(t) for t in token_ids)
        self.usage.prefix_cached_tokens += shared * (len(prompts) - 1)
        self.usage.generated_tokens += kept
        self.usage.discarded_tokens += max(int(generated.numel()) - kept, 0)
        return results

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        torch = require("torch", "hf")
        model, adapter_context = self._activate()
        tokenizer = self.loaded.tokenizer
        prompt_ids = [tokenizer(self.loaded.render(p), add_special_tokens=not self.loaded.is_chat).input_ids for p in prompts]
        continuation_ids = [tokenizer(c, add_special_tokens=False).input_ids for c in continuations]
        scores: list[ContinuationScore] = []
        with torch.inference_mode(), adapter_context:
            for start in range(0, len(prompts), self.score_batch_size):
                chunk = slice(start, start + self.score_batch_size)
                for logprobs in continuation_logprobs(model, tokenizer, prompt_ids[chunk], continuation_ids[chunk], self.loaded.device,
                                                      self.prefix_cache):
                    scores.append(ContinuationScore(tuple(float(x) for x in logprobs)))
        self.usage.score_calls += 1
        self.usage.prompt_tokens += sum(len(p) for p in prompt_ids)
        return scores


def continuation_logprobs(model: Any, tokenizer: Any, prompt_ids: Sequence[list[int]], continuation_ids: Sequence[list[int]], device: str,
                          share_prefix: bool = True) -> list[Any]:
    """Per-token log-probs of each continuation given its prompt, as tensors (differentiable).

    When the prompts share a prefix (the topic and mean field of one simulation step, or K samples
    scored on one context), its keys and values are computed once for the whole batch; gradients flow
    through them as through any activation. Rows are padded so that every continuation ends at the
    last position, and only the positions that predict continuation tokens go through the LM head,
    which keeps time and memory small for large vocabularies. Where padding between the prefix and a
    row's own tokens would change what a sliding-window layer sees, rows are padded on the right
    instead, which is exact but sends more positions through the LM head. Position ids follow the
    attention mask.
    """
    torch = require("torch", "hf")
    shared = prefix_to_share(prompt_ids) if share_prefix else 0
    sequences = [list(p) + list(c) for p, c in zip(prompt_ids, continuation_ids)]
    width = max(len(s) for s in sequences) - shared
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if not shared or padding_fits_window(model, [len(s) for s in sequences]):
        input_ids, attention = _pad_after_prefix(sequences, shared, pad)
        ends = [width] * len(sequences)
    else:
        input_ids = torch.tensor([s + [pad] * (shared + width - len(s)) for s in sequences])
        attention = torch.tensor([[1] * len(s) + [0] * (shared + width - len(s)) for s in sequences])
        ends = [len(s) - shared for s in sequences]
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    first = min(end - len(c) - 1 for end, c in zip(ends, continuation_ids))  # first position whose logits are needed
    cache = _prefix_cache(model, input_ids[:1, :shared], len(sequences)) if shared else None
    logits = model(input_ids=input_ids[:, shared:], attention_mask=attention, position_ids=positions, **{cache_argument(model): cache},
                   use_cache=cache is not None, logits_to_keep=width - first).logits.float()
    results = []
    for i, (end, continuation) in enumerate(zip(ends, continuation_ids)):
        row = logits[i, end - len(continuation) - 1 - first:end - 1 - first]
        targets = torch.tensor(continuation, device=device, dtype=torch.long).unsqueeze(-1)
        results.append(row.gather(-1, targets).squeeze(-1) - row.logsumexp(-1))
    return results
