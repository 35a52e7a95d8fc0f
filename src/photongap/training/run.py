"""``train``: the run folder, the Trainer and the self-describing ``model.pt``.

``train`` builds the Trainer (devices, nodes and strategy go straight through, so DDP
needs no other code), writes the run folder and the model file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from photongap.config import ModelConfig, TrainConfig, dump_yaml, to_dict
from photongap.data import GapDataModule
from photongap.errors import PhotongapError
from photongap.model import GapModel, resolve_device, use_bf16
from photongap.training.callbacks import RunFiles, TrainingBar, read_metrics
from photongap.training.module import GapLightningModule


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
