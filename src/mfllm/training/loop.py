"""What every training loop does after an optimizer step: log, checkpoint, advance the progress bar."""

from __future__ import annotations

from typing import Any, Callable

from mfllm.training.config import TrainConfig


def after_step(config: TrainConfig, step: int, stats: dict[str, Any], log: Callable[[dict[str, Any]], None], save: Callable[[], None],
               progress: Any, **postfix: str) -> None:
    """Log every ``log_every`` steps, save every ``save_every`` steps and at the last, and show ``postfix``."""
    if step % config.log_every == 0:
        log(stats)
    if step % config.save_every == 0 or step == config.max_steps:
        save()
    if progress is not None:
        progress.update(1)
        progress.set_postfix(**postfix)
