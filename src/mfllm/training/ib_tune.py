"""IB-Tune of the mean-field model with a score-function (RLOO) estimator.

For an event at step t, with m_{t-1} the previous summary, batch_t the latest real (persona, action)
pairs and Y the next batch of real actions a*_i of users s_i, the mean-field model q_phi maximises

    J(phi) = E_{m ~ q_phi(. | m_{t-1}, batch_t)} [ sum_{i in Y} log pi(a*_i | s_i, m) ] - beta * KL(q_phi(. | .) || p0)

p0 is the frozen base model prompted with the mean-field instruction alone (no history). m is
sampled text, so the gradient uses K samples m_1..m_K and the per-sample reward

    R_k = sum_i log pi(a*_i | s_i, m_k) - beta * (log q_phi(m_k | .) - log p0(m_k))

with the leave-one-out baseline b_k = mean_{j != k} R_j (RLOO):

    grad J ~= 1/K sum_k (R_k - b_k) * grad log q_phi(m_k | .)

Rewards are constants to the gradient (the KL term's own derivative has zero expectation under q).
The original MF-LLM code computed the predictive term with a frozen model and no score-function
term, so no useful gradient reached the mean-field model; here every step logs the gradient norm
that reaches the mean-field LoRA weights.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence

from mfllm.backends.hf import LoadedCausalLM, TransformersModel, continuation_logprobs, require
from mfllm.data.schema import Event
from mfllm.interfaces import LanguageModel, LLMMeanField, Prompt, SamplingParams
from mfllm.manifest import derive_seed
from mfllm.prompts import MEAN_FIELD_STOP
from mfllm.simulation.step import Agent, StepContext
from mfllm.training.config import TrainConfig
from mfllm.training.data import history, mean_field_seed, step_context
from mfllm.training.loop import Budget, after_step

MEAN_FIELD_ADAPTER = "mean_field"
POLICY_ADAPTER = "policy"


def rloo_advantages(rewards: Any) -> Any:
    """R_k minus the mean of the other K-1 rewards."""
    k = rewards.numel()
    if k < 2:
        raise ValueError("the leave-one-out baseline needs at least two samples")
    return rewards - (rewards.sum() - rewards) / (k - 1)


def score_function_loss(sample_logprobs: Any, rewards: Any) -> Any:
    """Loss whose gradient is the RLOO estimate of -grad J: -(1/K) sum_k A_k log q(m_k)."""
    return -(rloo_advantages(rewards.detach()) * sample_logprobs).mean()


def lora_config(config: TrainConfig) -> Any:
    peft = require("peft", "train")
    return peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=config.target_modules, task_type="CAUSAL_LM")


class MeanFieldTrainer:
    """Trains a LoRA adapter on the mean-field model; the policy scoring next actions stays frozen."""

    def __init__(self, config: TrainConfig, loaded: LoadedCausalLM, train_events: Sequence[Event]):
        torch = require("torch", "hf")
        self.config, self.loaded, self.events = config, loaded, list(train_events)
        torch.manual_seed(config.seed)
        model = loaded.add_trainable_adapter(lora_config(config), MEAN_FIELD_ADAPTER)
        if config.policy_adapter:
            loaded.add_adapter(config.policy_adapter, POLICY_ADAPTER)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        self.sampler = TransformersModel(loaded, config.base_model, adapter=MEAN_FIELD_ADAPTER)
        self.optimizer = torch.optim.AdamW(self._trainable(), lr=config.learning_rate)
        self.step_count = 0
        self.chains: dict[str, tuple[int, dict[str, Any] | None]] = {}  # event id -> (next step t, mean-field state)

    # -------------------------------------------------------------- model views

    def _trainable(self) -> list[Any]:
        """Only the mean-field LoRA weights train (switching adapters must not unfreeze others)."""
        params = []
        for name, param in self.loaded.model.named_parameters():
            param.requires_grad = "lora_" in name and f".{MEAN_FIELD_ADAPTER}." in name
            if param.requires_grad:
                params.append(param)
        if not params:
            raise RuntimeError("no trainable mean-field LoRA weights found")
        return params

    def _use(self, adapter: str | None) -> Any:
        """Activate ``adapter`` (None: the frozen base model) and return the context to run in."""
        model = self.loaded.model
        if adapter is None:
            return model.disable_adapter()
        model.set_adapter(adapter)
        self._trainable()
        return nullcontext()

    def _ids(self, prompt: Any) -> list[int]:
        return self.loaded.tokenizer(self.loaded.render(prompt), add_special_tokens=not self.loaded.is_chat).input_ids[-self.config.max_length:]

    def _text_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.loaded.tokenizer(t, add_special_tokens=False).input_ids[: self.config.max_mean_field_tokens] for t in texts]

    def _sum_logprobs(self, prompt_ids: Sequence[list[int]], continuation_ids: Sequence[list[int]], adapter: str | None, grad: bool) -> Any:
        torch = require("torch", "hf")
        with self._use(adapter), (nullcontext() if grad else torch.no_grad()):
            per_token = continuation_logprobs(self.loaded.model, self.loaded.tokenizer, prompt_ids, continuation_ids, self.loaded.device)
        return torch.stack([t.sum() for t in per_token])

    def _step(self, event: Event, model: LanguageModel | None = None, state: dict[str, Any] | None = None) -> tuple[StepContext, LLMMeanField]:
        """The simulator's step for ``event``; its mean field restored to ``state`` (a fresh one when None)."""
        step = step_context(self.config, event, model)
        assert isinstance(step.provider, LLMMeanField)  # TrainConfig admits only such methods
        if state is not None:
            step.provider.load_state_dict(state)
        return step, step.provider

    def _sample_params(self, seed: int) -> SamplingParams:
        """Summaries scored by the estimator come from q itself: full distribution at ``sample_temperature``."""
        return SamplingParams(self.config.max_mean_field_tokens, self.config.sample_temperature, 1.0, MEAN_FIELD_STOP, seed)

    def _policy_logprob(self, step: StepContext, next_batch: Sequence[Agent]) -> tuple[Any, int]:
        """sum_i log pi(a*_i | s_i, context) of the next batch's real actions under the step's current context."""
        policy = POLICY_ADAPTER if self.config.policy_adapter else None
        actions = [self.loaded.tokenizer(step.continuation(a.real.kind, a.real.text),  # type: ignore[union-attr]
                                         add_special_tokens=False).input_ids[: self.config.max_action_tokens] for a in next_batch]
        prompts = [self._ids(prompt) for prompt in step.prompts(next_batch)]
        return self._sum_logprobs(prompts, actions, policy, grad=False).sum(), sum(len(a) for a in actions)

    def predictive(self, step: StepContext, state: dict[str, Any], next_batch: Sequence[Agent], summaries: Sequence[str]) -> tuple[Any, int]:
        """sum_i log pi(a*_i | s_i, m) for each summary m accepted on top of ``state``, and the action tokens per summary."""
        torch = require("torch", "hf")
        provider = step.provider
        assert isinstance(provider, LLMMeanField)
        totals, tokens = [], 0
        for summary in summaries:
            provider.load_state_dict(state)
            provider.accept(summary)
            total, tokens = self._policy_logprob(step, next_batch)
            totals.append(total)
        provider.load_state_dict(state)
        return torch.stack(totals), tokens

    # -------------------------------------------------------------- one step

    def rewards(self, step: StepContext, state: dict[str, Any], prompt: Prompt, summaries: Sequence[str], next_batch: Sequence[Agent],
                adapter: str | None, grad: bool) -> dict[str, Any]:
        """log q(m_k | context) under ``adapter`` (None: the base model), the predictive term, the KL
        estimate log q - log p0 and the reward R_k of each summary; ``action_tokens`` per summary.
        p0 is the same mean field's update prompt with no history."""
        sample_ids = self._text_ids(summaries)
        _, fresh = self._step(step.event)
        prior = fresh.update_prompt(())
        log_q = self._sum_logprobs([self._ids(prompt)] * len(summaries), sample_ids, adapter, grad=grad)
        log_p0 = self._sum_logprobs([self._ids(prior)] * len(summaries), sample_ids, None, grad=False)
        predictive, action_tokens = self.predictive(step, state, next_batch, summaries)
        kl = log_q.detach() - log_p0
        return {"log_q": log_q, "predictive": predictive, "kl": kl, "reward": predictive - self.config.beta * kl,
                "action_tokens": action_tokens, "summary_tokens": sum(len(s) for s in sample_ids) / len(sample_ids)}

    def step(self, event: Event, t: int, state: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """One RLOO update on (event, step t) from the mean field's ``state``; returns the logged stats and
        the state after taking sample 1 as the update (the chain carries the model's own m)."""
        torch = require("torch", "hf")
        config = self.config
        chunks = history(config, event)
        step, provider = self._step(event, state=state)
        actions = step.real_actions(chunks[t])
        prompt = provider.update_prompt(actions)
        provider.absorb(actions)  # the update's statistics part, if the mean field has one
        before = provider.state_dict()
        self.loaded.model.eval()
        summaries = [s or "…" for s in self.sampler.generate([prompt] * config.num_samples,
                                                              self._sample_params(derive_seed(config.seed, "ib", self.step_count)))]
        self.loaded.model.train()
        scored = self.rewards(step, before, prompt, summaries, chunks[t + 1], MEAN_FIELD_ADAPTER, grad=True)
        loss = score_function_loss(scored["log_q"], scored["reward"])
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self._trainable(), 1.0))
        self.optimizer.step()
        self.step_count += 1
        rewards = scored["reward"]
        stats = {"step": self.step_count, "event": event.event_id, "t": t, "loss": float(loss.detach()), "reward_mean": float(rewards.mean()),
                 "reward_std": float(rewards.std()),
                 "predictive_nll_per_token": float(-scored["predictive"].mean()) / max(scored["action_tokens"], 1),
                 "kl_estimate": float(scored["kl"].mean()), "grad_norm": grad_norm, "beta": config.beta, "lr": config.learning_rate,
                 "summary_tokens": scored["summary_tokens"]}
        provider.accept(summaries[0])
        return stats, provider.state_dict()

    def next_context(self) -> tuple[Event, int, dict[str, Any] | None]:
        """Walk each training event's real history in order; the chain carries the model's own m."""
        event = self.events[self.step_count % len(self.events)]
        t, state = self.chains.get(event.event_id, (0, None))
        if t + 1 >= len(history(self.config, event)):
            t, state = 0, None
        return event, t, state

    def train(self, log: Callable[[dict[str, Any]], None], save: Callable[[], None], progress: Any = None) -> None:
        budget = Budget(self.config)
        while self.step_count < self.config.max_steps:
            event, t, state = self.next_context()
            stats, after = self.step(event, t, state)
            self.chains[event.event_id] = (t + 1, after)
            if after_step(budget, self.step_count, stats, log, save, progress, reward=f"{stats['reward_mean']:.1f}",
                          grad=f"{stats['grad_norm']:.2g}"):
                break

    # -------------------------------------------------------------- evaluation and state

    def evaluate(self, events: Sequence[Event], adapter: str | None, samples: int = 0, max_steps: int = 3,
                 progress: str | None = None) -> dict[str, float]:
        """Walk each event's first ``max_steps`` steps of real history with the mean field the mean-field
        model (``adapter``; None = the untuned base) writes through the simulator's step and sampler.
        Returns ``nll``: the token-weighted NLL of each next batch's real actions under the policy given
        the mean field, and, when ``samples`` > 0, ``reward``: the mean IB reward of that many summaries
        sampled at each context. Seeds depend only on (seed, event, step), so before/after comparisons
        use common random numbers. ``progress``: the description of a progress bar (none when omitted)."""
        torch = require("torch", "hf")
        from tqdm.auto import tqdm

        config = self.config
        chunks_of = {event.event_id: history(config, event) for event in events}
        contexts = [(event, t) for event in events for t in range(min(max_steps, len(chunks_of[event.event_id]) - 1))]
        self.loaded.model.eval()
        view = TransformersModel(self.loaded, config.base_model, adapter=adapter)
        total, tokens, rewards = 0.0, 0, []
        step: StepContext | None = None
        with torch.no_grad():
            for event, t in tqdm(contexts, desc=progress, unit="context", disable=progress is None):
                chunks = chunks_of[event.event_id]
                if t == 0:
                    step, _ = self._step(event, view)
                assert step is not None and isinstance(step.provider, LLMMeanField)
                actions = step.real_actions(chunks[t])
                if samples:
                    previous = step.provider.state_dict()
                    prompt = step.provider.update_prompt(actions)
                    step.provider.absorb(actions)
                    params = self._sample_params(derive_seed(config.seed, "eval-sample", event.event_id, t))
                    summaries = [s or "…" for s in view.generate([prompt] * samples, params)]
                    rewards.append(float(self.rewards(step, step.provider.state_dict(), prompt, summaries, chunks[t + 1], adapter,
                                                      grad=False)["reward"].mean()))
                    step.provider.load_state_dict(previous)
                step.observe(actions, mean_field_seed(config, event, "eval")(t))
                logprob, n = self._policy_logprob(step, chunks[t + 1])
                total, tokens = total - float(logprob), tokens + n
        self._use(MEAN_FIELD_ADAPTER)
        result = {"nll": total / max(tokens, 1)}
        if rewards:
            result["reward"] = sum(rewards) / len(rewards)
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "optimizer": self.optimizer.state_dict(), "chains": self.chains}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.chains = {k: tuple(v) for k, v in state["chains"].items()}  # type: ignore[misc]
