"""Decorators around any :class:`~mfllm.interfaces.LanguageModel`: retry, cache, rate limit.

Errors: :class:`BackendError` is a backend failing for good (its message is one line, safe to show);
:class:`TransientBackendError` is one attempt failing in a way worth retrying. :class:`RetryPolicy` is
the one retry schedule, used both by :class:`RetryingModel` and inside the HTTP backend (which retries
only the requests that failed, so it is not wrapped again).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from mfllm.cache import JsonlCache, digest
from mfllm.interfaces import ContinuationScore, LanguageModel, Prompt, SamplingParams

T = TypeVar("T")


class BackendError(RuntimeError):
    """A backend failed for good (bad key, unknown model, retries exhausted); the message is one line."""


class TransientBackendError(BackendError):
    """A failure worth retrying (timeout, overloaded server, dropped connection, malformed reply).

    ``retry_after_s`` is the wait the server asked for (``Retry-After``), if any.
    """

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try and how long to wait between attempts.

    The wait after failed attempt ``k`` (0-based) is ``backoff_s * 2**k`` capped at ``max_backoff_s``,
    or the server's ``Retry-After`` when it sent one, capped at ``max_retry_after_s``.
    """

    max_attempts: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if min(self.backoff_s, self.max_backoff_s, self.max_retry_after_s) < 0:
            raise ValueError("retry waits must not be negative")

    def delay_s(self, failed_attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after the 0-based ``failed_attempt``."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after_s)
        return min(self.backoff_s * 2**failed_attempt, self.max_backoff_s)


class _Wrapper(LanguageModel):
    def __init__(self, inner: LanguageModel):
        self.inner = inner
        self.name = inner.name

    @property
    def usage(self):  # type: ignore[override]
        return self.inner.usage

    def count_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_tokens(prompt)

    def count_text_tokens(self, text: str) -> int:
        return self.inner.count_text_tokens(text)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


class RetryingModel(_Wrapper):
    """Retries a whole call on :class:`TransientBackendError` (for backends that fail per call; the HTTP
    backend retries per request itself). Gives up with :class:`BackendError`; other errors propagate."""

    def __init__(self, inner: LanguageModel, attempts: int = 4, backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep):
        super().__init__(inner)
        self.policy = RetryPolicy(max_attempts=attempts, backoff_s=backoff_s)
        self.sleep = sleep

    def _call(self, fn: Callable[[], T]) -> T:
        for attempt in range(self.policy.max_attempts):
            try:
                return fn()
            except TransientBackendError as exc:
                error = exc
            if attempt + 1 < self.policy.max_attempts:
                self.sleep(self.policy.delay_s(attempt, error.retry_after_s))
        raise BackendError(f"{self.name}: gave up after {self.policy.max_attempts} attempts: {error}")

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        return self._call(lambda: self.inner.generate(prompts, params))

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        return self._call(lambda: self.inner.score(prompts, continuations))

    def score_options(self, prompts: Sequence[Prompt], options: Sequence[str], vocabulary: str | None) -> list[ContinuationScore]:
        return self._call(lambda: self.inner.score_options(prompts, options, vocabulary))


class RateLimitedModel(_Wrapper):
    """At most ``calls_per_second`` calls to the inner backend (thread-safe)."""

    def __init__(self, inner: LanguageModel, calls_per_second: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(inner)
        self.interval = 1.0 / calls_per_second
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def _wait(self) -> None:
        with self._lock:
            now = self.clock()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            self.sleep(delay)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        self._wait()
        return self.inner.generate(prompts, params)

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        self._wait()
        return self.inner.score(prompts, continuations)

    def score_options(self, prompts: Sequence[Prompt], options: Sequence[str], vocabulary: str | None) -> list[ContinuationScore]:
        self._wait()
        return self.inner.score_options(prompts, options, vocabulary)


class CachingModel(_Wrapper):
    """Caches results per item, keyed by model, prompt, parameters (seed included) and continuation.

    Items already cached are not sent again; a batch with some misses sends only the misses. With a
    ``path`` the cache persists as JSON lines, so repeated labelling or scoring runs are free.
    Sampling without a seed is never cached (it is meant to differ between calls).
    """

    def __init__(self, inner: LanguageModel, path: str | Path | None = None):
        super().__init__(inner)
        self.cache = JsonlCache(path)

    def _key(self, *parts: Any) -> str:
        return digest(self.inner.describe(), *parts)

    def _cached(self, keys: list[str], compute: Callable[[list[int]], list[Any]]) -> list[Any]:
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            for i, value in zip(missing, compute(missing)):
                self.cache.put(keys[i], value)
        return [self.cache[key] for key in keys]

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        if params.seed is None:
            return self.inner.generate(prompts, params)
        shared = {key: value for key, value in params.__dict__.items() if key != "min_new_tokens_each"} | {"max_new_tokens_each": None}
        keys = [self._key("generate", prompt.messages, prompt.completion, shared, params.limit(i), i, *([params.minimum(i)] if params.minimum(i) else []))
                for i, prompt in enumerate(prompts)]
        return self._cached(keys, lambda idx: self.inner.generate([prompts[i] for i in idx], params.for_prompts(idx)))

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        keys = [self._key("score", p.messages, p.completion, c) for p, c in zip(prompts, continuations)]
        values = self._cached(
            keys,
            lambda idx: [list(s.token_logprobs) for s in self.inner.score([prompts[i] for i in idx], [continuations[i] for i in idx])],
        )
        return [ContinuationScore(tuple(v)) for v in values]

    def score_options(self, prompts: Sequence[Prompt], options: Sequence[str], vocabulary: str | None) -> list[ContinuationScore]:
        keys = [self._key("score_options", p.messages, p.completion, o, vocabulary) for p, o in zip(prompts, options)]
        values = self._cached(
            keys,
            lambda idx: [list(s.token_logprobs) for s in self.inner.score_options([prompts[i] for i in idx], [options[i] for i in idx], vocabulary)],
        )
        return [ContinuationScore(tuple(v)) for v in values]
