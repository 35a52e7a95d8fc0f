"""The Lightning module: splits each batch on its device, calls the network and the photon loss.

Also the learning-rate schedule and how far a run has come along it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from photongap.config import ModelConfig, TrainConfig
from photongap.network import GapUNet
from photongap.network import channels_last as memory_format_for
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
    being cut off half-way (the schedule then depends on the machine's speed). ``clock``
    gives the seconds the run has trained, resumes included (:class:`~photongap.training.callbacks.RunClock`),
    as Lightning's timer counts them when it stops the run. None: the steps alone, as for
    the ranks of a distributed run, which would read different clocks and apply different
    learning rates.
    """

    def __init__(self, config: TrainConfig, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.clock = clock

    def __call__(self, step: int) -> float:
        progress = step / self.config.steps
        if self.config.time_limit_minutes and self.clock is not None:
            progress = max(progress, self.clock() / (60.0 * self.config.time_limit_minutes))
        return min(progress, 1.0)


def held_fraction(input_counts: torch.Tensor, target_counts: torch.Tensor, drawn: torch.Tensor | None = None) -> torch.Tensor:
    """The share of each crop's photons its input holds, ``(B,)``: what a ``level_input`` network reads.

    The realised share, ``sum(input) / (sum(input) + sum(target))``, as it will be for an image
    split by ``photongap assess``, or whole (1). A crop without photons takes the ``drawn``
    split fraction (or 1).
    """
    held = input_counts.double().flatten(1).sum(dim=1)
    total = held + target_counts.double().flatten(1).sum(dim=1)
    fallback = torch.ones_like(total) if drawn is None else drawn.double()
    return torch.where(total > 0, held / total.clamp_min(1.0), fallback).float()


class GapLightningModule(L.LightningModule):
    """GAP training: ``loss = photon_loss(net(input_counts), target_counts)`` on fresh splits.

    ``clock``: seconds the run has trained, for a time-limited schedule (see :class:`RunProgress`).
    """

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, channels_last: bool, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.model_config = model_config
        self.train_config = train_config
        self.channels_last = channels_last
        self.network = GapUNet(model_config)
        self.memory_format = memory_format_for(model_config.dims)
        if channels_last:
            self.network = self.network.to(memory_format=self.memory_format)
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
        return counts.contiguous(memory_format=self.memory_format) if self.channels_last else counts

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
        logits = self.network(self._layout(split.input_counts), held_fraction(split.input_counts, split.target_counts, fraction))
        loss = self._mean_loss(logits, split.target_counts)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=counts.shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> None:
        input_counts, target_counts = batch
        logits = self.inference_network(self._layout(input_counts), held_fraction(input_counts, target_counts))
        loss = self._mean_loss(logits, target_counts)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=input_counts.shape[0])

    @staticmethod
    def _mean_loss(logits: torch.Tensor, target_counts: torch.Tensor) -> torch.Tensor:
        """Mean over the images whose target has photons (the others carry no information)."""
        per_image = photon_loss(logits, target_counts)
        informative = (target_counts.flatten(1).sum(dim=1) > 0).float()
        return (per_image * informative).sum() / informative.sum().clamp_min(1.0)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.train_config.learning_rate)
        progress = RunProgress(self.train_config, self.clock if self.trainer.world_size == 1 else None)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(progress(step), self.train_config))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.split_generator is not None:
            checkpoint["split_generator_state"] = self.split_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._generator_state = checkpoint.get("split_generator_state")
