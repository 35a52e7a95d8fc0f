"""Training progress for the Train widget: a Lightning callback that reports steps and losses and obeys Cancel.

Cancel stops training the way a time limit does (``trainer.should_stop`` after the current
step), so :func:`photongap.training.train` still writes ``model.pt``: the moving average of the
weights so far, a usable model. A Ctrl-C on the command line instead keeps only ``last.ckpt``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L

from photongap.napari.jobs import CancelToken
from photongap.napari.loss_plot import TrainingReport


class LiveTraining(L.Callback):
    """Reports to the GUI at most every ``every_s`` seconds, and stops the run once Cancel was pressed."""

    def __init__(self, report: Callable[[Any], None], cancel: CancelToken, steps: int, time_limit_minutes: float | None, every_s: float = 0.25) -> None:
        self.report, self.cancel, self.steps = report, cancel, steps
        self.time_limit_s = 60.0 * time_limit_minutes if time_limit_minutes else None
        self.every_s = every_s
        self.started = self.last = time.monotonic()
        self.train_losses: list[tuple[int, float]] = []
        self.val_losses: list[tuple[int, float]] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started = self.last = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_index: int) -> None:
        self.train_losses.append((trainer.global_step, float(outputs["loss"])))
        if self.cancel.cancelled:
            trainer.should_stop = True
        if time.monotonic() - self.last >= self.every_s:
            self.flush(trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val_loss" in trainer.callback_metrics:
            self.val_losses.append((trainer.global_step, float(trainer.callback_metrics["val_loss"])))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.flush(trainer.global_step, phase="grading the validation images and writing model.pt")

    def flush(self, step: int, phase: str = "training") -> None:
        self.last = time.monotonic()
        self.report(TrainingReport(step, self.steps, self.last - self.started, self.time_limit_s, tuple(self.train_losses), tuple(self.val_losses), phase))
        self.train_losses.clear()
        self.val_losses.clear()
