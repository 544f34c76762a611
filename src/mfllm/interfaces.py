"""The interfaces every layer programs against: language-model backends and context providers.

A backend has two methods: :meth:`LanguageModel.generate` (sample texts for prompts) and
:meth:`LanguageModel.score` (log-likelihood of given continuations). Everything else (retry,
cache, rate limit) wraps a backend without changing these two signatures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Sequence

if TYPE_CHECKING:
    from mfllm.data.schema import Event
    from mfllm.simulation.config import SimulationConfig


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class Prompt:
    """One prompt in both layouts; the backend uses ``messages`` for chat models, ``completion`` otherwise.
    ``header``: how many leading characters of ``completion`` are a fixed header that every prompt of its
    template starts with (worked examples), which a backend may evaluate once and keep between calls."""

    messages: tuple[Message, ...]
    completion: str
    header: int = 0


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings, applied in this order at every generated token: keep the ``top_k`` most likely
    tokens; penalise the ones already generated (see below); divide by ``temperature``; keep the nucleus
    of mass ``top_p``; draw with ``seed``.

    Repetition penalties look only at the tokens this row has generated so far (the last
    ``penalty_window`` of them), never at the prompt, so a topic word is not penalised. For a token
    generated ``n > 0`` times its logit ``l`` becomes ``l / repetition_penalty`` (``l * repetition_penalty``
    when negative), then ``l - n * frequency_penalty - presence_penalty`` (llama.cpp's penalties sampler;
    the transformers backend applies the same formula, an OpenAI-compatible server its own
    ``frequency_penalty``/``presence_penalty``). ``max_new_tokens_each`` bounds each prompt's reply on its
    own (``max_new_tokens`` bounds them all); ``min_new_tokens_each`` holds each prompt's reply back from
    ending before that many tokens: until then no token that ends generation, is a control token or writes a
    ``stop`` string is drawn (stop strings spread over several tokens can still end it; an OpenAI-compatible
    server is only sent ``min_tokens``, which holds back the end of text). ``vocabulary`` names the
    language of the text to write: a
    backend that can (llama.cpp) then samples among that language's tokens only, which decodes faster
    (see ``mfllm.backends.vocabulary``); ``None`` samples from the whole vocabulary."""

    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ("\n",)
    seed: int | None = None
    top_k: int = 200
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_window: int = 64
    max_new_tokens_each: tuple[int, ...] | None = None
    min_new_tokens_each: tuple[int, ...] | None = None
    vocabulary: str | None = None

    def limit(self, index: int) -> int:
        """The most tokens prompt ``index`` of a call may generate."""
        if self.max_new_tokens_each is None:
            return self.max_new_tokens
        return min(self.max_new_tokens, self.max_new_tokens_each[index])

    def minimum(self, index: int) -> int:
        """The fewest tokens prompt ``index`` of a call generates before it may end (0: no floor)."""
        return 0 if self.min_new_tokens_each is None else min(self.min_new_tokens_each[index], self.limit(index))

    def for_prompts(self, indices: Sequence[int]) -> SamplingParams:
        """These settings for a call that sends only the prompts at ``indices`` of this one (their own
        bounds and floors, and seeds as if sent alone: ``seed + index`` is the caller's business)."""
        return replace(self, max_new_tokens_each=None if self.max_new_tokens_each is None else tuple(self.max_new_tokens_each[i] for i in indices),
                       min_new_tokens_each=None if self.min_new_tokens_each is None else tuple(self.min_new_tokens_each[i] for i in indices))

    @property
    def penalises(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


@dataclass(frozen=True)
class ContinuationScore:
    """Log-likelihood of a continuation: per-token log-probs (natural log) of its tokens only."""

    token_logprobs: tuple[float, ...]

    @property
    def logprob(self) -> float:
        return float(sum(self.token_logprobs))

    @property
    def num_tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def mean_nll(self) -> float:
        return -self.logprob / max(self.num_tokens, 1)


@dataclass
class UsageStats:
    """Counters a backend keeps: calls, prompt tokens, kept and discarded generated tokens.
    ``prefix_cached_tokens``: prompt tokens not evaluated because a cache held them (a prefix shared by a
    batch's rows, one kept from an earlier call, prompts continued after the kind choice).
    ``unmetered_requests``: requests whose tokens the backend could not count (a server reply without
    ``usage``); token figures are then incomplete."""

    generate_calls: int = 0
    score_calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    discarded_tokens: int = 0
    prefix_cached_tokens: int = 0
    unmetered_requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def since(self, before: Mapping[str, int]) -> dict[str, int]:
        """The counts added since ``before`` (an earlier :meth:`as_dict`)."""
        return {key: value - before.get(key, 0) for key, value in self.as_dict().items()}


class LanguageModel(ABC):
    """A text generator and scorer. Implementations must be deterministic for a fixed ``seed``."""

    name: str = "model"
    usage: UsageStats

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        """One sampled text per prompt, cut before the first stop string, without the prompt."""

    @abstractmethod
    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[ContinuationScore]:
        """Log-probabilities of each continuation's tokens given its prompt (teacher forcing)."""

    def score_options(self, prompts: Sequence[Prompt], options: Sequence[str], vocabulary: str | None) -> list[ContinuationScore]:
        """Log-probabilities of options offered as a choice (an action's kind marker) after each prompt,
        by a model about to write with ``SamplingParams(vocabulary=vocabulary)``: normalised over the
        tokens that generation draws from, so the choice and the text that follows come from one
        distribution. A backend may keep the prompts' state for the next :meth:`generate` call (llama.cpp
        does). Default: :meth:`score`, over the whole vocabulary (what a backend generating from the whole
        vocabulary draws from)."""
        return self.score(prompts, options)

    def count_tokens(self, prompt: Prompt) -> int:
        """Prompt length in tokens as this backend would send it (characters when no tokenizer)."""
        return len(prompt.completion)

    def count_text_tokens(self, text: str) -> int:
        """Tokens of ``text`` as a continuation (no special tokens; characters when no tokenizer)."""
        return len(text)

    def describe(self) -> dict[str, Any]:
        """What a run manifest records about this model."""
        return {"name": self.name, "class": type(self).__name__}


@dataclass
class AgentAction:
    """One agent's action as seen by context providers (real during warm-up, simulated afterwards)."""

    persona: str
    text: str
    kind: str
    engagement: int = 0
    position: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    simulated: bool = False
    """Written by the simulated population (not a recorded reaction or an injected post)."""


class ContextProvider(ABC):
    """What an agent sees of the population before acting: a mean field, recent actions, or nothing.

    A subclass registered with :func:`mfllm.simulation.methods.register` is a simulation *method*: its
    class attributes say what the method is, :meth:`create` builds it from a run's config, and
    :meth:`state_dict` / :meth:`load_state_dict` save and restore it, so a run can resume.
    """

    name: ClassVar[str]
    """The method's name in configs, on the command line and in run directories."""
    description: ClassVar[str]
    """One line for ``--help`` and ``mfllm methods``."""
    headers: ClassVar[Mapping[str, str]] = {}
    """Per language, the line above the context in the policy prompt (none for methods without context)."""
    needs_mean_field_model: ClassVar[bool] = False
    """Whether :meth:`create` needs a mean-field model to update the context."""
    is_baseline: ClassVar[bool] = True
    """Whether the method is a non-mean-field baseline that mean-field methods are compared against."""
    ablation_of: ClassVar[str | None] = None
    """The method this one is an ablation of (it then stays out of default method lists, e.g. a backtest's)."""
    uses_labellers: ClassVar[tuple[str, ...]] = ()
    """Names of the labellers whose output the context is built from: evaluation flags a dimension one of
    them labels as circular for this method."""

    @classmethod
    @abstractmethod
    def create(cls, config: SimulationConfig, event: Event, mean_field_model: LanguageModel | None) -> ContextProvider:
        """The provider for one run. Without a mean-field model a provider can still be restored and read."""

    @abstractmethod
    def observe(self, actions: Sequence[AgentAction], seed: int) -> None:
        """Take in the latest batch of actions (one call per step)."""

    @abstractmethod
    def context(self) -> str | None:
        """The context text shown under the method's header in the policy prompt, or None for no context."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, enough to resume after a crash."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""


class LLMMeanField(ContextProvider):
    """A context a mean-field model writes: the next summary is sampled from :meth:`update_prompt`.

    Simulation samples it in :meth:`observe`; IB-Tune trains the model that writes it, scoring samples of
    the same prompt; dry runs stand in for it with a placeholder through :meth:`accept`.
    """

    @abstractmethod
    def update_prompt(self, actions: Sequence[AgentAction]) -> Prompt:
        """The prompt of the next update, from the current state and the latest batch ``actions``."""

    @abstractmethod
    def accept(self, update: str) -> None:
        """Take a sampled ``update`` as the new summary."""

    @abstractmethod
    def add_statement(self, text: str) -> None:
        """Fold a statement made to everyone into the summary now; later updates rewrite it with the rest."""

    def absorb(self, actions: Sequence[AgentAction]) -> None:
        """The part of an update that needs no model (statistics), applied to the latest batch before the
        model's part is accepted; nothing for a mean field the model writes whole."""
