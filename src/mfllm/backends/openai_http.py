"""OpenAI-compatible HTTP backend (vLLM, Ollama, OpenAI): async, bounded concurrency, per-request retries.

The API key is read from the environment variable named by ``api_key_env`` only; it is never stored in
configs or manifests, and every message this module builds is passed through :func:`redact_secrets`.

Reliability contract:

- one request per prompt for generation (its own seed); scoring may pack ``prompts_per_score_request``
  prompts into one ``/completions`` request, and choices are matched to prompts by their ``index``;
- a reply with the wrong number of choices, an index out of range or repeated, a body that is not JSON,
  or a timeout, dropped connection, 408/409/429/5xx is a transient failure: that request alone is sent
  again (after ``Retry-After`` when the server sent one) up to ``max_attempts`` times in all;
- anything else (401, 403, 404, other 4xx) and exhausted retries raise :class:`BackendError` with a
  one-line message naming the URL and model and quoting at most a short redacted excerpt of the body;
- an empty or null completion comes back as ``""`` (the caller decides what an empty reply means).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Sequence, TypeVar

from mfllm.backends.hf import clean_output, require
from mfllm.backends.wrappers import BackendError, RetryPolicy, TransientBackendError
from mfllm.interfaces import ContinuationScore, LanguageModel, Prompt, SamplingParams, UsageStats
from mfllm.redaction import redact_secrets

T = TypeVar("T")

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
EXCERPT_CHARS = 120
def excerpt(text: str, secrets: Sequence[str] = (), limit: int = EXCERPT_CHARS) -> str:
    """A redacted one-line excerpt of at most ``limit`` characters (redacted before it is cut)."""
    line = " ".join(redact_secrets(text, secrets).split())
    return line if len(line) <= limit else line[:limit] + "…"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        return None
    return max(when.timestamp() - now, 0.0)


class _MalformedReply(ValueError):
    """A 2xx reply that does not follow the API (transient: retried)."""


@dataclass
class _Reply(Generic[T]):
    """One successful request: the extracted choices in prompt order and the token counts its ``usage``
    reported (``metered`` false when the reply had none)."""

    values: list[T]
    prompt_tokens: int
    completion_tokens: int
    metered: bool = True


class OpenAICompatibleModel(LanguageModel):
    """Chat (``/chat/completions``) or completion (``/completions``) requests to one server.

    ``request_timeout_s`` bounds each attempt as a whole; ``max_attempts`` counts all attempts of one request;
    ``sleep`` and ``clock`` (wall time, for ``Retry-After`` dates) can be replaced in tests.
    """

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY", chat: bool = True,
                 max_concurrency: int = 8, request_timeout_s: float = 60.0, max_attempts: int = 4, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, max_retry_after_s: float = 120.0, prompts_per_score_request: int = 1,
                 transport: Any = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time):
        if request_timeout_s <= 0 or max_concurrency < 1 or prompts_per_score_request < 1:
            raise ValueError("request_timeout_s must be positive; max_concurrency and prompts_per_score_request at least 1")
        url = urllib.parse.urlsplit(base_url)  # a query (e.g. ?api_key=...) goes after each request's path, not before it
        self.name, self.chat, self.url = model, chat, base_url
        self.base_url = urllib.parse.urlunsplit(url._replace(query="", fragment="")).rstrip("/")
        self.query = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        self.api_key_env, self.max_concurrency, self.request_timeout_s = api_key_env, max_concurrency, request_timeout_s
        self.retry = RetryPolicy(max_attempts=max_attempts, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                                 max_retry_after_s=max_retry_after_s)
        self.prompts_per_score_request = prompts_per_score_request
        self.transport, self.sleep, self.clock = transport, sleep, clock
        self.usage = UsageStats()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__, "backend": "openai", "base_url": redact_secrets(self.url),
                "chat": self.chat}

    def _api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def _safe(self, text: str) -> str:
        key = self._api_key()
        return excerpt(text, [key] if key else [])

    def _where(self, path: str) -> str:
        return f"{redact_secrets(self.base_url + path)} (model {self.name})"

    async def _attempt(self, client: Any, path: str, body: dict[str, Any], count: int,
                       extract: Callable[[dict[str, Any]], T]) -> _Reply[T]:
        """One POST and its checked reply. Raises TransientBackendError or BackendError."""
        httpx = require("httpx", "http")
        where = self._where(path)
        try:  # the client's timeout bounds each read; wait_for bounds the whole attempt (a server may drip bytes)
            response = await asyncio.wait_for(client.post(path, json=body), self.request_timeout_s)
        except (httpx.TimeoutException, asyncio.TimeoutError):
            raise TransientBackendError(f"{where}: no reply within {self.request_timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise TransientBackendError(f"{where}: connection failed ({type(exc).__name__}: {self._safe(str(exc))})") from None
        status = response.status_code
        if status >= 400:
            reason = f"{where}: HTTP {status} {response.reason_phrase}".rstrip()
            text = self._safe(response.text)
            detail = f": {text}" if text else ""
            if status in RETRY_STATUS:
                retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock())
                raise TransientBackendError(reason + detail, retry_after_s=retry_after)
            if status in (401, 403):
                hint = f" (check the API key in ${self.api_key_env})"
            elif status == 404:
                hint = f" (check the base URL and that the server serves model {self.name!r})"
            else:
                hint = ""
            raise BackendError(reason + hint + detail)
        try:
            answer = response.json()
            values = self._choices(answer, count, extract)
        except (ValueError, _MalformedReply) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            what = str(exc) if isinstance(exc, _MalformedReply) else "reply is not JSON"
            raise TransientBackendError(f"{where}: malformed reply ({what}): {self._safe(response.text)}") from None
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        return _Reply(values, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), bool(usage))

    @staticmethod
    def _choices(answer: Any, count: int, extract: Callable[[dict[str, Any]], T]) -> list[T]:
        """The ``count`` choices of a reply ordered by their ``index`` (one reply per prompt, in prompt order)."""
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            raise _MalformedReply("no 'choices' list")
        if len(choices) != count:
            raise _MalformedReply(f"{len(choices)} choices for {count} prompt{'s' if count > 1 else ''}")
        ordered: dict[int, T] = {}
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise _MalformedReply(f"choice {position} is not an object")
            index = choice.get("index", 0 if count == 1 else None)
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count or index in ordered:
                raise _MalformedReply(f"choice {position} has index {index!r}, expected each of 0..{count - 1} once")
            ordered[index] = extract(choice)
        return [ordered[i] for i in range(count)]

    async def _request(self, client: Any, semaphore: asyncio.Semaphore, path: str, body: dict[str, Any], count: int,
                       extract: Callable[[dict[str, Any]], T]) -> _Reply[T]:
        """One request with its retries; only this request is sent again when it fails."""
        for attempt in range(self.retry.max_attempts):
            async with semaphore:
                try:
                    return await self._attempt(client, path, body, count, extract)
                except TransientBackendError as exc:
                    error = exc
            if attempt + 1 < self.retry.max_attempts:
                await self.sleep(self.retry.delay_s(attempt, error.retry_after_s))
        raise BackendError(f"gave up after {self.retry.max_attempts} attempts: {error}")

    def _run(self, requests: list[tuple[str, dict[str, Any], int]], extract: Callable[[dict[str, Any]], T]) -> list[_Reply[T]]:
        """All requests concurrently; their replies in request order.

        The first lasting failure cancels the other requests and is raised."""
        httpx = require("httpx", "http")
        key = self._api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}

        async def main() -> list[_Reply[T]]:
            semaphore = asyncio.Semaphore(self.max_concurrency)
            async with httpx.AsyncClient(base_url=self.base_url, params=self.query, headers=headers, timeout=self.request_timeout_s,
                                         transport=self.transport) as client:
                tasks = [asyncio.create_task(self._request(client, semaphore, path, body, count, extract))
                         for path, body, count in requests]
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                failed = [task for task in tasks if task in done and task.exception() is not None]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
                return [task.result() for task in tasks]

        return asyncio.run(main()) if requests else []

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        common: dict[str, Any] = {"model": self.name, "temperature": params.temperature, "top_p": params.top_p}
        if params.frequency_penalty or params.presence_penalty:
            common.update(frequency_penalty=params.frequency_penalty, presence_penalty=params.presence_penalty)
        if params.repetition_penalty != 1.0:  # not in the OpenAI API; vLLM reads it (over prompt and output)
            common["repetition_penalty"] = params.repetition_penalty
        requests = []
        for i, prompt in enumerate(prompts):
            body = dict(common, max_tokens=params.limit(i), seed=None if params.seed is None else params.seed + i)
            if params.minimum(i):  # not in the OpenAI API (which refuses it); vLLM and llama-cpp-python's server hold back the end of
                # text for that many tokens, but not a line end: stops are cut here, after the reply (clean_output)
                body["min_tokens"] = params.minimum(i)
            if self.chat:
                messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
                requests.append(("/chat/completions", dict(body, messages=messages), 1))
            else:
                requests.append(("/completions", dict(body, prompt=prompt.completion), 1))
        replies = self._run(requests, self._chat_text if self.chat else self._completion_text)
        texts = [clean_output(raw, params.stop) for reply in replies for raw in reply.values]
        self._count_usage(replies)
        self.usage.generate_calls += 1
        return texts

    def _count_usage(self, replies: Sequence[_Reply[Any]], kept: bool = True) -> None:
        """Tokens as the server's ``usage`` reports them (the token a scoring request must generate is
        discarded, not kept); a reply without ``usage`` counts as unmetered."""
        self.usage.prompt_tokens += sum(reply.prompt_tokens for reply in replies)
        completion = sum(reply.completion_tokens for reply in replies)
        if kept:
            self.usage.generated_tokens += completion
        else:
            self.usage.discarded_tokens += completion
        self.usage.unmetered_requests += sum(not reply.metered for reply in replies)

    @staticmethod
    def _chat_text(choice: dict[str, Any]) -> str:
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _MalformedReply("a choice has no 'message' object")
        return _text_or_empty(message.get("content"), "message.content")

    @staticmethod
    def _completion_text(choice: dict[str, Any]) -> str:
        return _text_or_empty(choice.get("text"), "text")

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        """Teacher-forced log-probs through ``/completions`` with ``echo`` (vLLM and OpenAI legacy API)."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        spans = [(len(p.completion), len(p.completion) + len(c)) for p, c in zip(prompts, continuations)]
        texts = [p.completion + c for p, c in zip(prompts, continuations)]
        size = self.prompts_per_score_request
        requests = []
        for first in range(0, len(texts), size):
            batch = texts[first:first + size]
            requests.append(("/completions", {"model": self.name, "prompt": batch if size > 1 else batch[0], "max_tokens": 1,
                                              "echo": True, "logprobs": 0, "temperature": 0.0}, len(batch)))
        replies = self._run(requests, _echo_logprobs)
        self._count_usage(replies, kept=False)
        token_lists = [tokens for reply in replies for tokens in reply.values]
        scores = [ContinuationScore(tuple(v for o, v in tokens if start <= o < end and v is not None))
                  for tokens, (start, end) in zip(token_lists, spans)]
        self.usage.score_calls += 1
        return scores


def _count(value: Any) -> int:
    """A token count from a reply's ``usage``; anything but a non-negative integer counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _text_or_empty(value: Any, field: str) -> str:
    """A reply's text; null or missing is the empty string (an empty completion, not an error)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _MalformedReply(f"{field} is {type(value).__name__}, not a string")
    return value


def _echo_logprobs(choice: dict[str, Any]) -> list[tuple[int, float | None]]:
    """(character offset, log-prob) of each echoed token of a ``/completions`` choice with ``echo`` and ``logprobs``."""
    logprobs = choice.get("logprobs")
    offsets = logprobs.get("text_offset") if isinstance(logprobs, dict) else None
    values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
    if not isinstance(offsets, list) or not isinstance(values, list) or len(offsets) != len(values):
        raise _MalformedReply("a choice has no matching 'logprobs.text_offset' and 'logprobs.token_logprobs' lists")
    tokens: list[tuple[int, float | None]] = []
    for offset, value in zip(offsets, values):
        if not isinstance(offset, int) or not (value is None or (isinstance(value, (int, float)) and math.isfinite(value))):
            raise _MalformedReply("a token offset or log-prob is not a number")
        tokens.append((offset, None if value is None else float(value)))
    return tokens
