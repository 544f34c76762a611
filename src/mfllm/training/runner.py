"""``mfllm train``: run one training task end to end, with checkpoints, resume, logs and evaluation.

Output directory:
  config.yaml, split.json             what was trained on (events by split)
  train_log.jsonl                     one line per logged step (losses, rewards, gradient norms)
  checkpoints/                        resumable checkpoints
  adapter/                            the final LoRA adapter + mfllm_adapter.json (base fingerprint, task, metrics)
  metrics.json                        NLL of real actions per split (train, validation, test) before and after training
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from mfllm.backends import ModelPool, local_source, parse_spec
from mfllm.backends.hf import ADAPTER_META, LoadedCausalLM, TransformersModel, require
from mfllm.configuration import read_yaml
from mfllm.manifest import base_manifest
from mfllm.training.config import TrainConfig
from mfllm.training.data import completion_target, keep_prompt_end, load_training_events, policy_examples
from mfllm.training.ib_tune import MEAN_FIELD_ADAPTER, MeanFieldTrainer, lora_config


RESUMABLE_CHANGES = {"max_steps", "save_every", "log_every"}
"""Settings a resumed run may change: when to stop and how often to log and save, nothing that alters
the steps already taken or what is measured before and after."""


def _prepare_output(config: TrainConfig, resume: bool) -> Path:
    out = Path(config.output_dir)
    saved = out / "config.yaml"
    if saved.exists():
        if not resume:
            raise FileExistsError(f"{out} already holds a training run; pass --resume to continue it")
        previous = TrainConfig(**read_yaml(saved))
        changed = [k for k in config.model_dump() if getattr(previous, k) != getattr(config, k)]
        if set(changed) - RESUMABLE_CHANGES:
            raise ValueError(f"{out}: cannot resume with a different config (changed: {', '.join(changed)}; only "
                             f"{', '.join(sorted(RESUMABLE_CHANGES))} may change)")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return out


def _adapter_meta(config: TrainConfig, loaded: LoadedCausalLM, split: dict[str, list[str]], metrics: dict[str, Any]) -> dict[str, Any]:
    meta = base_manifest(f"train-{config.task}", config.model_dump(mode="json"))
    meta.update({"task": config.task, "base_model": config.base_model, "fingerprint": loaded.fingerprint(), "split": split,
                 "metrics": metrics})
    return meta


def examples_nll(view: TransformersModel, examples: list[Any]) -> float:
    """Token-weighted NLL of real actions (action tokens only) under ``view``."""
    scores = view.score([e.prompt for e in examples], [e.action for e in examples])
    tokens = sum(s.num_tokens for s in scores)
    return -sum(s.logprob for s in scores) / max(tokens, 1)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train and save the adapter; returns the adapter directory."""
    out = _prepare_output(config, resume)
    events, split = load_training_events(config)
    (out / "split.json").write_text(json.dumps(split, indent=2), encoding="utf-8")
    if config.task == "mean-field":
        return _train_mean_field(config, out, events, split, resume, progress)
    return _train_policy(config, out, events, split, resume)


def _progress_bar(total: int, initial: int, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="step")


def _train_mean_field(config: TrainConfig, out: Path, events: dict[str, list[Any]], split: dict[str, list[str]], resume: bool,
                      progress: bool) -> Path:
    torch = require("torch", "hf")
    loaded = LoadedCausalLM(local_source(parse_spec(config.base_model)), config.device, config.dtype)
    trainer = MeanFieldTrainer(config, loaded, events["train"])
    scored = _scored_splits(events, config.eval_events)
    checkpoints = out / "checkpoints"
    latest = checkpoints / "latest"
    metrics: dict[str, Any] = {}
    if resume and latest.is_dir():
        peft = require("peft", "train")
        peft.set_peft_model_state_dict(loaded.model, _load_adapter_weights(latest / MEAN_FIELD_ADAPTER), adapter_name=MEAN_FIELD_ADAPTER)
        trainer.load_state_dict(torch.load(latest / "trainer_state.pt", weights_only=False))
        metrics = json.loads((latest / "metrics.json").read_text())
    else:
        (out / "train_log.jsonl").unlink(missing_ok=True)
        metrics.update(_mean_field_metrics(trainer, scored, None, "before", progress))

    def log(stats: dict[str, Any]) -> None:
        with (out / "train_log.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(stats, ensure_ascii=False) + "\n")

    def save() -> None:
        tmp = checkpoints / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        loaded.model.save_pretrained(tmp, selected_adapters=[MEAN_FIELD_ADAPTER])
        torch.save(trainer.state_dict(), tmp / "trainer_state.pt")
        (tmp / "metrics.json").write_text(json.dumps(metrics))
        shutil.rmtree(latest, ignore_errors=True)
        tmp.rename(latest)

    bar = _progress_bar(config.max_steps, trainer.step_count, "IB-Tune mean field") if progress else None
    trainer.train(log, save, bar)
    if bar is not None:
        bar.close()
    metrics.update(_mean_field_metrics(trainer, scored, MEAN_FIELD_ADAPTER, "after", progress))
    adapter_dir = out / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    loaded.model.save_pretrained(out / "adapter_tmp", selected_adapters=[MEAN_FIELD_ADAPTER])
    (out / "adapter_tmp" / MEAN_FIELD_ADAPTER).rename(adapter_dir)
    shutil.rmtree(out / "adapter_tmp")
    _finish(config, loaded, split, metrics, out, adapter_dir)
    return adapter_dir


def _mean_field_metrics(trainer: MeanFieldTrainer, scored: dict[str, list[Any]], adapter: str | None, when: str,
                        progress: bool) -> dict[str, float]:
    """Next-batch NLL given the mean field on every scored split; the expected reward on the training events."""
    metrics = {}
    for name, group in scored.items():
        result = trainer.evaluate(group, adapter, samples=trainer.config.eval_samples if name == "train" else 0,
                                  progress=f"evaluate {name} ({when})" if progress else None)
        metrics.update({f"{name}_{key}_{when}": value for key, value in result.items()})
    return metrics


def _scored_splits(events: dict[str, list[Any]], per_split: int) -> dict[str, list[Any]]:
    """The events whose NLL is measured before and after training: up to ``per_split`` of each split
    (train shows fit, validation and test show generalisation to unseen events)."""
    return {name: group[:per_split] for name, group in events.items() if group}


def _load_adapter_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def _finish(config: TrainConfig, loaded: LoadedCausalLM, split: dict[str, list[str]], metrics: dict[str, Any], out: Path,
            adapter_dir: Path) -> None:
    meta = _adapter_meta(config, loaded, split, metrics)
    (adapter_dir / ADAPTER_META).write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")


def _policy_examples_by_split(config: TrainConfig, events: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Each split's (prompt, real action) examples; the mean-field model that writes their mean fields
    is loaded here and released on return, before the model to train is loaded."""
    mean_field_model = None
    if config.task == "policy":
        pool = ModelPool(config.device, config.dtype)
        mean_field_model = pool.get(config.base_model, adapter=config.mean_field_adapter, role="mean_field")
    return {name: policy_examples(group, config, mean_field_model, progress=f"mean fields over {name} events")
            for name, group in events.items()}


def _train_policy(config: TrainConfig, out: Path, events: dict[str, list[Any]], split: dict[str, list[str]], resume: bool) -> Path:
    """Policy (given mean fields from the mean-field model) or SFT (no context), with TRL's SFTTrainer."""
    datasets = require("datasets", "train")
    trl = require("trl", "train")
    examples = _policy_examples_by_split(config, events)
    train_examples, eval_examples = examples["train"], examples["validation"]
    scored = {}
    for name, group in _scored_splits(events, config.eval_events).items():
        ids = {event.event_id for event in group}
        scored[name] = [e for e in examples[name] if e.event_id in ids]
    loaded = LoadedCausalLM(local_source(parse_spec(config.base_model)), config.device, config.dtype)
    base_view = TransformersModel(loaded, config.base_model)
    metrics: dict[str, Any] = {"train_examples": len(train_examples), **{f"{name}_scored_examples": len(e) for name, e in scored.items()}}
    if not (resume and (out / "checkpoints").is_dir()):
        metrics.update({f"{name}_nll_before": examples_nll(base_view, e) for name, e in scored.items() if e})
    tokenizer = loaded.tokenizer

    def rows(examples: list[Any]) -> Any:
        records = []
        for e in examples:
            completion = completion_target(e.action, e.language, loaded.is_chat, tokenizer.eos_token)
            prompt, cut = keep_prompt_end(tokenizer, loaded.render(e.prompt), completion, config.max_length)
            metrics["prompts_cut_from_left"] = metrics.get("prompts_cut_from_left", 0) + cut
            records.append({"prompt": prompt, "completion": completion})
        return datasets.Dataset.from_list(records)

    args = trl.SFTConfig(
        output_dir=str(out / "checkpoints"), max_steps=config.max_steps, per_device_train_batch_size=config.train_batch_size,
        learning_rate=config.learning_rate, logging_steps=config.log_every, save_steps=config.save_every, save_total_limit=2,
        max_length=config.max_length, seed=config.seed, report_to=[], use_cpu=loaded.device == "cpu",
        bf16=config.dtype in ("bf16", "bfloat16") or (config.dtype == "auto" and loaded.device.startswith("cuda")),
        gradient_checkpointing=config.gradient_checkpointing, completion_only_loss=True,
        eval_strategy="steps" if eval_examples else "no", eval_steps=config.save_every, disable_tqdm=False,
    )
    trainer = trl.SFTTrainer(model=loaded.model, args=args, train_dataset=rows(train_examples),
                             eval_dataset=rows(eval_examples) if eval_examples else None, processing_class=tokenizer,
                             peft_config=lora_config(config))
    trainer.train(resume_from_checkpoint=resume and any((out / "checkpoints").glob("checkpoint-*")))
    with (out / "train_log.jsonl").open("w", encoding="utf-8") as handle:
        for entry in trainer.state.log_history:
            handle.write(json.dumps(entry) + "\n")
    adapter_dir = out / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    loaded.replace_model(trainer.model)
    tuned_view = TransformersModel(loaded, config.base_model, adapter="default")
    metrics.update({f"{name}_nll_after": examples_nll(tuned_view, e) for name, e in scored.items() if e})
    _finish(config, loaded, split, metrics, out, adapter_dir)
    return adapter_dir
