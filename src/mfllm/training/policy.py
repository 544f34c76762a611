"""Policy and SFT training: LoRA, loss on the action tokens only, batches of similar length, resumable.

Only the action tokens carry loss, so the output layer (Gemma's 262,144-entry vocabulary) runs only
there: the model body gives the hidden states of every position, the positions that predict an action
token are picked out, and the LM head turns only those into logits. The loss equals the whole-sequence
loss restricted to the action tokens, at a fraction of its cost.

Examples are sorted by length (ties in a random order) and cut into batches, and the batches of each
epoch are shuffled with a generator seeded by (seed, epoch), so little padding is computed and the
data order is a pure function of the position in the run. The learning rate decays linearly to 0 at
``max_steps`` (a function of the step), AdamW, gradient norm clipped at 1. A checkpoint holds the
adapter, the optimizer, the random generators and the data position (epoch, batch), so a run resumed
from it continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mfllm.backends.hf import LoadedCausalLM, require
from mfllm.manifest import derive_seed
from mfllm.training.config import TrainConfig
from mfllm.training.data import PolicyExample, completion_target
from mfllm.training.ib_tune import POLICY_ADAPTER, lora_config
from mfllm.training.loop import Budget, after_step


@dataclass(frozen=True)
class TokenizedExample:
    """A training sequence: prompt tokens, then the target tokens that carry the loss."""

    prompt: tuple[int, ...]
    target: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.target)


def fit_prompt(prompt: Sequence[int], target: Sequence[int], max_length: int, keep_first: bool) -> tuple[tuple[int, ...], bool]:
    """``prompt`` cut from the left so that it and ``target`` fit ``max_length`` tokens (the target, what is
    learnt, is never cut; with ``keep_first`` the first token, a BOS, stays), and whether it was cut."""
    if len(prompt) + len(target) <= max_length:
        return tuple(prompt), False
    head = tuple(prompt[:1]) if keep_first else ()
    room = max_length - len(target) - len(head)
    if room <= 0:
        raise ValueError(f"an action of {len(target)} tokens alone exceeds max_length={max_length} tokens: raise max_length")
    return head + tuple(prompt[-room:]), True


def tokenize_examples(loaded: LoadedCausalLM, examples: Sequence[PolicyExample], max_length: int) -> tuple[list[TokenizedExample], int]:
    """Each example as the simulator's scoring tokenises it (rendered prompt, then the action and where
    generation stops), and how many prompts were cut from the left to fit ``max_length``."""
    tokenizer = loaded.tokenizer
    special = not loaded.is_chat
    tokenized, cut = [], 0
    for example in examples:
        prompt = tokenizer(loaded.render(example.prompt), add_special_tokens=special).input_ids
        completion = completion_target(example.action, example.language, loaded.is_chat, tokenizer.eos_token)
        target = tokenizer(completion, add_special_tokens=False).input_ids
        kept, was_cut = fit_prompt(prompt, target, max_length, keep_first=special and prompt[:1] == [tokenizer.bos_token_id])
        tokenized.append(TokenizedExample(kept, tuple(target)))
        cut += was_cut
    return tokenized, cut


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices in batches of similar length: sorted by length (ties in a random order), cut into batches
    of ``batch_size``, the batches in a random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[TokenizedExample], pad_id: int, device: str) -> dict[str, Any]:
    """Right-padded input ids and attention mask, and where the targets are: ``rows`` and ``positions`` of
    the hidden states that predict each target token (the position before it), and the ``targets``."""
    torch = require("torch", "hf")
    width = max(len(e) for e in examples)
    ids, mask, rows, positions, targets = [], [], [], [], []
    for row, example in enumerate(examples):
        sequence = list(example.prompt) + list(example.target)
        ids.append(sequence + [pad_id] * (width - len(sequence)))
        mask.append([1] * len(sequence) + [0] * (width - len(sequence)))
        start = len(example.prompt)
        rows += [row] * len(example.target)
        positions += range(start - 1, start - 1 + len(example.target))
        targets += example.target
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return {"input_ids": as_tensor(ids), "attention_mask": as_tensor(mask), "rows": as_tensor(rows), "positions": as_tensor(positions),
            "targets": as_tensor(targets)}


def _causal_lm(model: Any) -> Any:
    """The transformers causal LM inside ``model`` (a PeftModel wraps it; LoRA layers live inside it)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def target_logprobs(model: Any, batch: dict[str, Any]) -> Any:
    """Log-probabilities of the target tokens of a :func:`collate` batch: the model body's hidden states at
    the positions that predict a target, through the LM head there only (with the model's final logit
    soft-capping, where it has one)."""
    torch = require("torch", "hf")
    causal_lm = _causal_lm(model)
    hidden = causal_lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    logits = causal_lm.get_output_embeddings()(hidden[batch["rows"], batch["positions"]]).float()
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.gather(-1, batch["targets"].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


class PolicyTrainer:
    """Trains a LoRA adapter on the policy by the NLL of real actions (see the module docstring)."""

    def __init__(self, config: TrainConfig, loaded: LoadedCausalLM, train_set: Sequence[TokenizedExample]):
        torch = require("torch", "hf")
        if not train_set:
            raise ValueError(f"{config.data}: no training examples (too few reactions per event for batch_size={config.batch_size}?)")
        self.config, self.loaded, self.train_set = config, loaded, list(train_set)
        torch.manual_seed(config.seed)
        self.model = loaded.add_trainable_adapter(lora_config(config), POLICY_ADAPTER)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            self.model.enable_input_require_grads()
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=0.0)
        self.pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
        self.step_count, self.epoch, self.position = 0, 0, 0
        self._batches: tuple[int, list[list[int]]] = (-1, [])

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` (indices into the training set): a pure function of seed and epoch."""
        if self._batches[0] != epoch:
            rng = random.Random(derive_seed(self.config.seed, "policy-batches", epoch))
            self._batches = (epoch, length_batches([len(e) for e in self.train_set], self.config.train_batch_size, rng))
        return self._batches[1]

    def next_batch(self) -> list[TokenizedExample]:
        """The batch at the data position, which then moves on (to the next epoch after the last batch)."""
        batches = self.epoch_batches(self.epoch)
        batch = [self.train_set[i] for i in batches[self.position]]
        self.position += 1
        if self.position == len(batches):
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): linear decay to 0 at ``max_steps``."""
        return self.config.learning_rate * max(0.0, 1.0 - step / self.config.max_steps)

    def loss(self, examples: Sequence[TokenizedExample]) -> tuple[Any, int]:
        """Summed NLL of the target tokens of ``examples``, and their number."""
        logprobs = target_logprobs(self.model, collate(examples, self.pad_id, self.loaded.device))
        return -logprobs.sum(), logprobs.numel()

    def step(self, examples: Sequence[TokenizedExample]) -> dict[str, Any]:
        """One optimizer step on ``examples`` (loss: mean NLL per target token)."""
        torch = require("torch", "hf")
        self.model.train()
        total, tokens = self.loss(examples)
        loss = total / tokens
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, 1.0))
        lr = self.learning_rate(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step_count += 1
        return {"step": self.step_count, "loss": float(loss.detach()), "grad_norm": grad_norm, "lr": lr,
                "target_tokens": tokens, "sequence_tokens": sum(len(e) for e in examples)}

    def train(self, log: Callable[[dict[str, Any]], None], save: Callable[[], None], progress: Any = None) -> None:
        """Steps until ``max_steps`` (or ``max_minutes``), logging every ``log_every`` and saving every ``save_every`` steps and at the end."""
        budget = Budget(self.config)
        while self.step_count < self.config.max_steps:
            stats = self.step(self.next_batch())
            if after_step(budget, self.step_count, stats, log, save, progress, loss=f"{stats['loss']:.3f}", epoch=str(self.epoch)):
                break

    def evaluate(self, examples: Sequence[TokenizedExample]) -> float:
        """Mean NLL per target token of ``examples`` under the current adapter, in batches of similar length."""
        torch = require("torch", "hf")
        self.model.eval()
        total, tokens = 0.0, 0
        with torch.no_grad():
            for batch in length_batches([len(e) for e in examples], self.config.train_batch_size, random.Random(0)):
                summed, n = self.loss([examples[i] for i in batch])
                total, tokens = total + float(summed), tokens + n
        return total / max(tokens, 1)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the adapter weights that a resumed run needs: optimizer, data position, generators."""
        torch = require("torch", "hf")
        generators = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            generators["cuda"] = torch.cuda.get_rng_state_all()
        return {"step": self.step_count, "epoch": self.epoch, "position": self.position, "optimizer": self.optimizer.state_dict(),
                "generators": generators}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch = require("torch", "hf")
        self.step_count, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.optimizer.load_state_dict(state["optimizer"])
        random.setstate(state["generators"]["python"])
        torch.set_rng_state(state["generators"]["torch"])
        if "cuda" in state["generators"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["generators"]["cuda"])
