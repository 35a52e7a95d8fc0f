"""Training: a thin Lightning module around the photon loss, and ``train`` to run it.

The Lightning module splits each batch of patches on its device, calls the network and
the photon loss, and nothing else. ``train`` builds the Trainer (devices, nodes and
strategy go straight through, so DDP needs no other code), writes the run folder and
the self-describing ``model.pt``.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from photongap.config import ModelConfig, TrainConfig, dump_yaml, to_dict
from photongap.data import GapDataModule
from photongap.errors import PhotongapError
from photongap.model import GapModel
from photongap.runtime import resolve_device, use_bf16
from photongap.network import GapUNet
from photongap.physics import draw_split_fraction, photon_loss, split_counts


def learning_rate_factor(progress: float, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate at ``progress`` in [0, 1] of the run.

    Constant, or a linear warm-up over the first 5% then a cosine decay to 5% of the peak.
    """
    if config.schedule == "constant":
        return 1.0
    warmup = 0.05
    if progress < warmup:
        return max(progress / warmup, 0.01)
    decay = min(1.0, (progress - warmup) / (1.0 - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * decay))


class RunProgress:
    """How far a run is: steps done over steps, or wall time over the time limit, whichever is further.

    With a time limit the learning-rate schedule thus anneals by the deadline instead of
    being cut off half-way (the schedule then depends on the machine's speed). Only for a
    single process: ranks of a distributed run would read different clocks and apply
    different learning rates, so they follow the steps alone.
    """

    def __init__(self, config: TrainConfig, use_clock: bool = True) -> None:
        self.config = config
        self.use_clock = use_clock
        self.started = time.monotonic()

    def __call__(self, step: int) -> float:
        progress = step / self.config.steps
        if self.config.time_limit_minutes and self.use_clock:
            progress = max(progress, (time.monotonic() - self.started) / (60.0 * self.config.time_limit_minutes))
        return min(progress, 1.0)


class GapLightningModule(L.LightningModule):
    """GAP training: ``loss = photon_loss(net(input_counts), target_counts)`` on fresh splits."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, channels_last: bool) -> None:
        super().__init__()
        self.model_config = model_config
        self.train_config = train_config
        self.channels_last = channels_last
        self.network = GapUNet(model_config)
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        # The moving average of the weights (a submodule, so checkpoints and devices follow it).
        self.average: GapUNet | None = None
        if train_config.average_decay is not None:
            self.average = copy.deepcopy(self.network).requires_grad_(False)
        self.split_generator: torch.Generator | None = None
        self._generator_state: torch.Tensor | None = None

    @property
    def inference_network(self) -> GapUNet:
        """The network to predict with and to save: the weight average if kept, else the last weights."""
        return self.average if self.average is not None else self.network

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_index: int) -> None:
        if self.average is None:
            return
        step = self.trainer.global_step
        decay = min(self.train_config.average_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.average.parameters()), list(self.network.parameters()), 1.0 - decay)

    def _layout(self, counts: torch.Tensor) -> torch.Tensor:
        return counts.contiguous(memory_format=torch.channels_last) if self.channels_last else counts

    def on_fit_start(self) -> None:
        self.split_generator = torch.Generator(device=self.device)
        self.split_generator.manual_seed(self.train_config.seed * 1_000_003 + self.global_rank)
        if self._generator_state is not None:
            self.split_generator.set_state(self._generator_state)

    def training_step(self, counts: torch.Tensor, batch_index: int) -> torch.Tensor:
        config = self.train_config
        fraction = draw_split_fraction(
            counts, config.split_min_psnr, config.split_max_psnr, relative=config.split_mode == "relative", generator=self.split_generator
        )
        split = split_counts(counts, fraction, self.split_generator)
        loss = self._mean_loss(self.network(self._layout(split.input_counts)), split.target_counts)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=counts.shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> None:
        input_counts, target_counts = batch
        loss = self._mean_loss(self.inference_network(self._layout(input_counts)), target_counts)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=input_counts.shape[0])

    @staticmethod
    def _mean_loss(logits: torch.Tensor, target_counts: torch.Tensor) -> torch.Tensor:
        """Mean over the images whose target has photons (the others carry no information)."""
        per_image = photon_loss(logits, target_counts)
        informative = (target_counts.flatten(1).sum(dim=1) > 0).float()
        return (per_image * informative).sum() / informative.sum().clamp_min(1.0)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.train_config.learning_rate)
        progress = RunProgress(self.train_config, use_clock=self.trainer.world_size == 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(progress(step), self.train_config))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.split_generator is not None:
            checkpoint["split_generator_state"] = self.split_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._generator_state = checkpoint.get("split_generator_state")


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


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    model_path: Path
    steps: int
    elapsed_s: float
    stopped_early: bool
    main_process: bool = True  # False on the other ranks of a multi-process run


def data_statistics(images: Sequence[np.ndarray]) -> dict[str, float]:
    """Photon statistics of the training data, stored with the model."""
    total = float(sum(image.sum(dtype=np.float64) for image in images))
    pixels = int(sum(image.size for image in images))
    mean = total / pixels
    return {
        "images": len(images),
        "pixels": pixels,
        "photons_per_pixel": mean,
        "pseudo_psnr": 10 * math.log10(mean) if mean > 0 else -math.inf,
        "max_count": float(max(image.max() for image in images)),
    }


def train(
    images: Sequence[np.ndarray],
    run_dir: str | Path,
    *,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    names: Sequence[str] | None = None,
    device: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[L.Callback] = (),
    extra_info: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a GAP network on noisy photon-count images alone.

    Parameters
    ----------
    images : sequence of np.ndarray
        2D photon-count images (planes of stacks count as separate images).
    run_dir : path
        Receives ``model.pt``, ``last.ckpt``, ``metrics.csv`` and ``loss.png``.
    model_config, train_config : optional
        Defaults: photongap's default preset.
    device, devices, num_nodes, strategy
        Passed to Lightning's Trainer (``device`` is its accelerator: auto, cpu or cuda).
    resume : bool
        Continue from ``run_dir/last.ckpt``.
    callbacks : sequence of lightning.Callback
        Extra callbacks for the Trainer (e.g. to evaluate during training).

    Examples
    --------
    >>> result = train(noisy_images, "runs/cells", train_config=TrainConfig(steps=600))  # doctest: +SKIP
    >>> denoised = photongap.load(result.model_path).denoise(noisy_images[0])  # doctest: +SKIP
    """
    from photongap.plotting import plot_losses

    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    run_dir = Path(run_dir)
    checkpoint = run_dir / "last.ckpt"
    if resume and not checkpoint.exists():
        raise PhotongapError(f"cannot resume: {checkpoint} does not exist")
    if not resume and ((run_dir / "model.pt").exists() or checkpoint.exists()):
        raise PhotongapError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")

    accelerator = resolve_device(device).type
    bf16 = use_bf16(train_config.precision, accelerator)
    L.seed_everything(train_config.seed, workers=True, verbose=False)
    datamodule = GapDataModule(
        images,
        patch_size=train_config.patch_size,
        batch_size=train_config.batch_size,
        steps=train_config.steps,
        val_fraction=train_config.val_fraction,
        split_range=(train_config.split_min_psnr, train_config.split_max_psnr),
        split_relative=train_config.split_mode == "relative",
        seed=train_config.seed,
        names=names,
    )
    run_dir.mkdir(parents=True, exist_ok=True)  # only now that the data passed its checks
    (run_dir / "config.yaml").write_text(dump_yaml(model_config, train_config))
    module = GapLightningModule(model_config, train_config, channels_last=True)
    run_files = RunFiles(run_dir, checkpoint_every=max(1, min(100, train_config.val_every)))
    callbacks = [run_files, *callbacks]
    if progress:
        callbacks.append(TrainingBar(train_config.time_limit_minutes))
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision="bf16-mixed" if bf16 else "32-true",
        max_steps=train_config.steps,
        max_epochs=-1,
        max_time={"minutes": train_config.time_limit_minutes} if train_config.time_limit_minutes else None,
        val_check_interval=min(train_config.val_every, train_config.steps),
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=run_dir,
    )
    started = time.monotonic()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint if resume else None)
    except SystemExit:
        # Lightning turns Ctrl-C into exit(1) after its graceful shutdown; callers see an interrupt.
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt
    elapsed = time.monotonic() - started
    model_path = run_dir / "model.pt"
    if trainer.is_global_zero:
        info = {
            "training": to_dict(train_config),
            "steps_done": trainer.global_step,
            "data": data_statistics(images),
            **(extra_info or {}),
        }
        GapModel(module.inference_network, model_config, info).save(model_path)
        plot_losses(read_metrics(run_files.metrics_path), run_dir / "loss.png")
    return TrainResult(model_path, trainer.global_step, elapsed, stopped_early=trainer.global_step < train_config.steps, main_process=trainer.is_global_zero)
