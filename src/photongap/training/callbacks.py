"""Callbacks that keep the run folder current and show progress."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np


class RunFiles(L.Callback):
    """Keeps the run folder current: ``last.ckpt`` (resumable, also on Ctrl-C) and ``metrics.csv``."""

    FIELDS = ("step", "elapsed_s", "train_loss", "val_loss", "learning_rate")

    def __init__(self, run_dir: Path, checkpoint_every: int, log_every: int = 10) -> None:
        self.run_dir = run_dir
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.started = time.monotonic()
        self.losses: list[float] = []
        self.elapsed_before = 0.0

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Not on_fit_start: Lightning restores global_step from a checkpoint only after it.
        if not trainer.is_global_zero:
            return
        rows = read_metrics(self.metrics_path) if trainer.global_step > 0 else []
        rows = [row for row in rows if int(row["step"]) <= trainer.global_step]
        self.elapsed_before = max((float(row["elapsed_s"]) for row in rows), default=0.0)
        with open(self.metrics_path, "w", newline="") as file:
            writer = csv.DictWriter(file, self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.started = time.monotonic()

    def _append(self, trainer: L.Trainer, **values: Any) -> None:
        if not trainer.is_global_zero:
            return
        row = {"step": trainer.global_step, "elapsed_s": f"{self.elapsed_before + time.monotonic() - self.started:.2f}"}
        row["learning_rate"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.3g}" if trainer.optimizers else ""
        with open(self.metrics_path, "a", newline="") as file:
            csv.DictWriter(file, self.FIELDS).writerow({**row, **values})

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_index: int) -> None:
        self.losses.append(float(outputs["loss"]))
        if trainer.global_step % self.log_every == 0:
            self._append(trainer, train_loss=f"{np.mean(self.losses):.5f}")
            self.losses.clear()
        if trainer.global_step % self.checkpoint_every == 0:
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val_loss" in trainer.callback_metrics:
            self._append(trainer, val_loss=f"{float(trainer.callback_metrics['val_loss']):.5f}")

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.losses:
            self._append(trainer, train_loss=f"{np.mean(self.losses):.5f}")
            self.losses.clear()
        self.save(trainer)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.world_size == 1:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` atomically (all ranks call this: saving is collective)."""
        partial = self.run_dir / "last.ckpt.partial"
        trainer.save_checkpoint(partial)
        if trainer.is_global_zero:
            os.replace(partial, self.run_dir / "last.ckpt")


class TrainingBar(L.pytorch.callbacks.TQDMProgressBar):
    """Lightning's progress bar, whose total (and so its ETA) is what a time limit will allow."""

    def __init__(self, time_limit_minutes: float | None) -> None:
        super().__init__(refresh_rate=5)
        self.time_limit_s = 60.0 * time_limit_minutes if time_limit_minutes else None
        self.started = time.monotonic()
        self.first_step = 0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_start(trainer, module)
        self.started, self.first_step = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_index: int) -> None:
        steps = trainer.global_step - self.first_step
        if self.time_limit_s and steps >= 10:
            elapsed = time.monotonic() - self.started
            reachable = batch_index + 1 + int(steps / elapsed * (self.time_limit_s - elapsed))
            self.train_progress_bar.total = max(batch_index + 1, min(reachable, self.total_train_batches))
        super().on_train_batch_end(trainer, module, outputs, batch, batch_index)


def read_metrics(path: Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` (empty if it does not exist)."""
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))
