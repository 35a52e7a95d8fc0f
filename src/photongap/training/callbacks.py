"""Callbacks that keep the run folder current, time the run and show progress."""

from __future__ import annotations

import csv
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from photongap.io import atomic_output


class RunClock(L.Callback):
    """Seconds the run has trained, the sessions before a resume included.

    Lightning's timer stops a time-limited run by this total (it keeps its own in the
    checkpoint); the learning-rate schedule, the metrics and the progress bar read it here,
    so that after a resume they agree with it instead of starting again from zero.
    """

    def __init__(self) -> None:
        self.before = 0.0
        self.started: float | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started = time.monotonic()

    def session(self) -> float:
        """Seconds of this session (since training started or resumed)."""
        return time.monotonic() - self.started if self.started is not None else 0.0

    def __call__(self) -> float:
        return self.before + self.session()

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = float(state_dict["elapsed_s"])


class RunFiles(L.Callback):
    """Keeps the run folder current: ``last.ckpt`` (resumable, also on Ctrl-C) and ``metrics.csv``.

    The checkpoint also records the run's ``preset`` (see :func:`stored_preset`).
    """

    FIELDS = ("step", "elapsed_s", "train_loss", "val_loss", "learning_rate")

    def __init__(self, run_dir: Path, clock: RunClock, checkpoint_every: int, preset: str, log_every: int = 10) -> None:
        self.run_dir = run_dir
        self.clock = clock
        self.checkpoint_every = checkpoint_every
        self.preset = preset
        self.log_every = log_every
        self.losses: list[float] = []
        self.elapsed_floor = 0.0

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def state_dict(self) -> dict[str, Any]:
        return {"preset": self.preset}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Not on_fit_start: Lightning restores global_step from a checkpoint only after it.
        if not trainer.is_global_zero:
            return
        rows = read_metrics(self.metrics_path) if trainer.global_step > 0 else []
        rows = [row for row in rows if int(row["step"]) <= trainer.global_step]
        # A validation row of the checkpoint's step is written after the checkpoint: the record stays in order.
        self.elapsed_floor = max((float(row["elapsed_s"]) for row in rows), default=0.0)
        with open(self.metrics_path, "w", newline="") as file:
            writer = csv.DictWriter(file, self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def _append(self, trainer: L.Trainer, **values: Any) -> None:
        if not trainer.is_global_zero:
            return
        row = {"step": trainer.global_step, "elapsed_s": f"{max(self.elapsed_floor, self.clock()):.2f}"}
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
        """Write ``last.ckpt`` whole or not at all (:func:`photongap.io.atomic_output`).

        Saving is collective: every rank calls ``save_checkpoint``, rank 0 alone writes.
        """
        path = self.run_dir / "last.ckpt"
        if not trainer.is_global_zero:
            trainer.save_checkpoint(path)
            return
        with atomic_output(path) as partial:
            trainer.save_checkpoint(partial)


@contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block is done, then deliver it.

    A tqdm bar cut short in its constructor lacks attributes its destructor reads, and the
    interpreter prints that failure as a traceback long after the interrupt was handled. Only
    the main thread receives signals, so elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)  # to the handler that was there, as if it came now


class TrainingBar(L.pytorch.callbacks.TQDMProgressBar):
    """Lightning's progress bar, whose total (and so its ETA) is what a time limit will allow.

    Its bars are built with a Ctrl-C held back (:func:`interrupt_deferred`): the validation bar
    is built anew at every validation, so an interrupt can land in its constructor.
    """

    def __init__(self, clock: RunClock, time_limit_minutes: float | None) -> None:
        super().__init__(refresh_rate=5)
        self.clock = clock
        self.time_limit_s = 60.0 * time_limit_minutes if time_limit_minutes else None
        self.first_step = 0

    def init_train_tqdm(self) -> Any:
        with interrupt_deferred():
            return super().init_train_tqdm()

    def init_validation_tqdm(self) -> Any:
        with interrupt_deferred():
            return super().init_validation_tqdm()

    def init_sanity_tqdm(self) -> Any:
        with interrupt_deferred():
            return super().init_sanity_tqdm()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_start(trainer, module)
        self.first_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_index: int) -> None:
        steps = trainer.global_step - self.first_step
        if self.time_limit_s and steps >= 10:
            # This session's pace, for the time the limit leaves after all sessions so far.
            rate = steps / max(self.clock.session(), 1e-9)
            reachable = batch_index + 1 + int(rate * (self.time_limit_s - self.clock()))
            self.train_progress_bar.total = max(batch_index + 1, min(reachable, self.total_train_batches))
        super().on_train_batch_end(trainer, module, outputs, batch, batch_index)


def read_metrics(path: Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` (empty if it does not exist)."""
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))
