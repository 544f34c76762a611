"""Policy training steps per minute: TRL's SFTTrainer on whole sequences (how mfllm trained before) vs
mfllm's loop (LM head on the action tokens only, batches of similar length), side by side in one
process, on the same examples, model, LoRA settings and batch size.

The examples are the policy's training examples on the bundled sample event with the default mean
field (``mf-stats``, no model call), tokenised once and given to both. Each variant takes one warm-up
step, then ``--steps`` timed steps; prints each variant's median seconds per step and steps per
minute, and the ratio to TRL. Run it niced on a shared machine:

    nice -n 10 python bench/training.py [--model gemma-3-270m] [--batch 4] [--steps 3] [--dtypes fp32,bf16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any, Callable

import torch

from mfllm.backends import local_source, parse_spec
from mfllm.backends.hf import LoadedCausalLM
from mfllm.cli import demo_data_path
from mfllm.training import TrainConfig
from mfllm.data.loaders import get_reader
from mfllm.training.data import policy_examples
from mfllm.training.ib_tune import lora_config
from mfllm.training.policy import PolicyTrainer, TokenizedExample, tokenize_examples


def trl_step_times(config: TrainConfig, loaded: LoadedCausalLM, examples: list[TokenizedExample], steps: int) -> list[float]:
    """Seconds per optimizer step of TRL's SFTTrainer (completion-only loss, logits at every position)."""
    import datasets
    import transformers
    import trl

    times: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter() - self.start)

    rows = [{"input_ids": list(e.prompt + e.target), "completion_mask": [0] * len(e.prompt) + [1] * len(e.target)} for e in examples]
    with tempfile.TemporaryDirectory() as out:
        args = trl.SFTConfig(output_dir=out, max_steps=steps + 1, per_device_train_batch_size=config.train_batch_size,
                             learning_rate=config.learning_rate, max_length=config.max_length, seed=config.seed, report_to=[],
                             use_cpu=loaded.device == "cpu", bf16=config.dtype == "bf16", completion_only_loss=True, save_strategy="no",
                             logging_strategy="no", disable_tqdm=True)
        trainer = trl.SFTTrainer(model=loaded.model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                 processing_class=loaded.tokenizer, peft_config=lora_config(config), callbacks=[Timer()])
        trainer.train()
    return times[1:]


def mfllm_step_times(config: TrainConfig, loaded: LoadedCausalLM, examples: list[TokenizedExample], steps: int) -> list[float]:
    """Seconds per optimizer step of :class:`PolicyTrainer`."""
    trainer = PolicyTrainer(config, loaded, examples)
    times = []
    for _ in range(steps + 1):
        batch = trainer.next_batch()
        start = time.perf_counter()
        trainer.step(batch)
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m", help="embedded model name")
    parser.add_argument("--batch", type=int, default=4, help="sequences per optimizer step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated dtypes to measure (bf16 pays off on GPUs and AVX512-BF16 CPUs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    args = parser.parse_args()
    data = demo_data_path()
    spec = f"embedded:{args.model}"
    base = TrainConfig(task="policy", data=str(data), base_model=spec, output_dir="unused", batch_size=16, train_batch_size=args.batch,
                       device=args.device)
    reader = get_reader(str(data))
    examples = policy_examples([reader.load_event(data, event_id)[0] for event_id in reader.list_events(data)], base, None)
    source = local_source(parse_spec(spec))
    variants: list[tuple[str, str, Callable[..., list[float]]]] = []
    for dtype in args.dtypes.split(","):
        variants += [(f"TRL SFTTrainer, whole sequence, {dtype}", dtype, trl_step_times), (f"mfllm loop, action tokens only, {dtype}", dtype, mfllm_step_times)]
    print(f"{len(examples)} examples ({base.method} contexts, sample event), batch {args.batch}, {args.steps} timed steps per variant")
    reference: dict[str, float] = {}
    for name, dtype, measure in variants:
        config = base.model_copy(update={"dtype": dtype})
        loaded = LoadedCausalLM(source, args.device, dtype)
        tokenized, _ = tokenize_examples(loaded, examples, config.max_length)
        torch.manual_seed(0)
        seconds = statistics.median(measure(config, loaded, tokenized, args.steps))
        reference.setdefault(dtype, seconds)
        print(f"{name:45s} {seconds:7.2f} s/step  {60 / seconds:6.2f} steps/min  x{reference[dtype] / seconds:.2f} vs TRL", flush=True)


if __name__ == "__main__":
    main()
