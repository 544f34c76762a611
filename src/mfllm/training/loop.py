"""What every training loop does after an optimizer step: log, checkpoint, advance the progress bar."""

from __future__ import annotations

import time
from typing import Any, Callable

from mfllm.training.config import TrainConfig


class Budget:
    """When a training run stops: at ``max_steps``, or at the first step that ends past ``max_minutes`` of
    this process's training time (a later ``--resume`` continues from the checkpoint saved there)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.deadline = None if config.max_minutes is None else time.monotonic() + 60.0 * config.max_minutes

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def last_step(self, step: int) -> bool:
        """Whether ``step`` (just taken) is the run's last in this process."""
        return step >= self.config.max_steps or self.out_of_time()


def after_step(budget: Budget, step: int, stats: dict[str, Any], log: Callable[[dict[str, Any]], None], save: Callable[[], None],
               progress: Any, **postfix: str) -> bool:
    """Log every ``log_every`` steps, save every ``save_every`` steps and at the run's last in this process
    (:meth:`Budget.last_step`), and show ``postfix``; returns whether the step was that last one."""
    config, last = budget.config, budget.last_step(step)
    if step % config.log_every == 0:
        log(stats)
    if step % config.save_every == 0 or last:
        save()
    if progress is not None:
        progress.update(1)
        progress.set_postfix(**postfix)
    return last
