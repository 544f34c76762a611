"""A deterministic fake backend for tests and dry runs: no weights, same output for the same input."""

from __future__ import annotations

import hashlib
import random
from typing import Any, Sequence

from mfllm.data.loaders import detect_language
from mfllm.interfaces import ContinuationScore, LanguageModel, Prompt, SamplingParams, UsageStats

_WORDS = {
    "zh": ["真的吗", "太可怕了", "转发微博", "辟谣了", "支持", "不信", "大家注意安全", "希望早日康复", "这是谣言吧", "求证"],
    "en": ["really?", "this is awful", "source?", "fake news", "stay safe", "I believe it", "not true", "wow", "praying", "share"],
}


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode("utf-8")).digest()[:8], "big")


class FakeModel(LanguageModel):
    """Generates short phrases chosen by a hash of (prompt, seed, position); scores by a hash too.

    Output depends on every character of the prompt, so tests can check that context reaches the
    model, and on the seed, so tests can check reproducibility.
    """

    def __init__(self, name: str = "fake"):
        self.name = name
        self.usage = UsageStats()

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        self.usage.generate_calls += 1
        outputs = []
        for i, prompt in enumerate(prompts):
            rng = random.Random(_digest(prompt.completion, params.seed, i))
            language = detect_language(prompt.completion)
            words = [rng.choice(_WORDS[language]) for _ in range(rng.randint(1, 3))]
            joiner = "，" if language == "zh" else " "
            text = joiner.join(words) + f" #{rng.randrange(10_000)}"
            while self.count_text_tokens(text) < params.minimum(i):  # a length floor: more words
                text += joiner + rng.choice(_WORDS[language])
            tokens = text.split() if language == "en" else list(text)
            separator = " " if language == "en" else ""
            limit = params.limit(i)
            outputs.append(text if len(tokens) <= limit else separator.join(tokens[:limit]))
            self.usage.prompt_tokens += self.count_tokens(prompt)
            self.usage.generated_tokens += min(len(tokens), limit)
        return outputs

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        self.usage.score_calls += 1
        scores = []
        for prompt, continuation in zip(prompts, continuations):
            tokens = list(continuation) if detect_language(continuation) == "zh" else continuation.split()
            scores.append(ContinuationScore(tuple(-1.0 - (_digest(prompt.completion[-200:], t) % 100) / 50 for t in tokens)))
        return scores

    def count_tokens(self, prompt: Prompt) -> int:
        return len(prompt.completion)

    def count_text_tokens(self, text: str) -> int:
        return len(text.split()) if detect_language(text) == "en" else len(text)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "backend": "fake"}
