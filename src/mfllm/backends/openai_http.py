"""OpenAI-compatible HTTP backend (vLLM, Ollama, OpenAI): async, bounded concurrency, retries.

The API key is read from the environment variable named by ``api_key_env`` only; it is never
stored in configs or manifests.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Sequence

from mfllm.backends.hf import clean_output, require
from mfllm.backends.wrappers import TransientBackendError
from mfllm.interfaces import ContinuationScore, LanguageModel, Prompt, SamplingParams, UsageStats

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAICompatibleModel(LanguageModel):
    """Chat (``/chat/completions``) or completion (``/completions``) requests to one server."""

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY", chat: bool = True,
                 max_concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 4, backoff_s: float = 1.0,
                 transport: Any = None):
        self.name, self.base_url, self.chat = model, base_url.rstrip("/"), chat
        self.api_key_env, self.max_concurrency, self.timeout_s = api_key_env, max_concurrency, timeout_s
        self.max_retries, self.backoff_s, self.transport = max_retries, backoff_s, transport
        self.usage = UsageStats()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__, "base_url": self.base_url, "chat": self.chat}

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _post(self, client: Any, semaphore: asyncio.Semaphore, path: str, body: dict[str, Any]) -> dict[str, Any]:
        httpx = require("httpx", "http")
        for attempt in range(self.max_retries + 1):
            async with semaphore:
                try:
                    response = await client.post(path, json=body)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    error: Exception = TransientBackendError(f"{self.base_url}{path}: {exc!r}")
                else:
                    if response.status_code < 400:
                        return response.json()
                    message = f"{self.base_url}{path}: HTTP {response.status_code}: {response.text[:300]}"
                    if response.status_code not in RETRY_STATUS:
                        raise RuntimeError(message)
                    error = TransientBackendError(message)
            if attempt == self.max_retries:
                raise error
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _run(self, bodies: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        httpx = require("httpx", "http")

        async def main() -> list[dict[str, Any]]:
            semaphore = asyncio.Semaphore(self.max_concurrency)
            async with httpx.AsyncClient(base_url=self.base_url, headers=self._headers(), timeout=self.timeout_s,
                                         transport=self.transport) as client:
                return await asyncio.gather(*(self._post(client, semaphore, path, body) for path, body in bodies))

        return asyncio.run(main())

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        common: dict[str, Any] = {"model": self.name, "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                                  "top_p": params.top_p}
        bodies = []
        for i, prompt in enumerate(prompts):
            body = dict(common, seed=None if params.seed is None else params.seed + i)
            if self.chat:
                bodies.append(("/chat/completions", dict(body, messages=[{"role": m.role, "content": m.content} for m in prompt.messages])))
            else:
                bodies.append(("/completions", dict(body, prompt=prompt.completion)))
        texts = []
        for answer in self._run(bodies):
            choice = answer["choices"][0]
            raw = choice["message"]["content"] if self.chat else choice["text"]
            texts.append(clean_output(raw or "", params.stop))
            usage = answer.get("usage") or {}
            self.usage.prompt_tokens += int(usage.get("prompt_tokens", 0))
            self.usage.generated_tokens += int(usage.get("completion_tokens", 0))
        self.usage.generate_calls += 1
        return texts

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        """Teacher-forced log-probs through ``/completions`` with ``echo`` (vLLM and OpenAI legacy API)."""
        bodies = [("/completions", {"model": self.name, "prompt": p.completion + c, "max_tokens": 1, "echo": True,
                                    "logprobs": 0, "temperature": 0.0}) for p, c in zip(prompts, continuations)]
        scores = []
        for prompt, answer in zip(prompts, self._run(bodies)):
            logprobs = answer["choices"][0]["logprobs"]
            offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
            start, end = len(prompt.completion), len(prompt.completion) + len(continuations[len(scores)])
            scores.append(ContinuationScore(tuple(float(v) for o, v in zip(offsets, values) if start <= o < end and v is not None)))
        self.usage.score_calls += 1
        return scores
