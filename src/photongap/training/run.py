"""``train``: the run folder, its configuration, the Trainer and the self-describing ``model.pt``.

A run folder holds ``config.yaml`` (what the run is), ``last.ckpt`` (how far it got),
``metrics.csv``, ``loss.png`` and, at the end, ``model.pt``. Only :func:`train` writes it,
and a resumed run reads its configuration back from it, so the command line and the
Python API continue a run alike.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from photongap.config import DEFAULT_PATCH_DEPTH, PLANAR_LEVELS, ModelConfig, TrainConfig, depth_pools_for, dump_yaml, from_dict, load_yaml, to_dict
from photongap.config import preset as preset_configs
from photongap.data import GapDataModule, hold_out
from photongap.errors import PhotongapError
from photongap.io import atomic_output
from photongap.modelfile import save_model
from photongap.runtime import resolve_device, use_bf16
from photongap.training.callbacks import RunClock, RunFiles, TrainingBar, read_metrics
from photongap.training.module import GapLightningModule


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced (``elapsed_s``: this session's wall time)."""

    model_path: Path
    steps: int
    elapsed_s: float
    stopped_early: bool
    main_process: bool = True  # False on the other ranks of a multi-process run


@dataclass(frozen=True)
class RunConfig:
    """A run's configuration and where it came from (``preset``: its name, or ``custom``)."""

    model: ModelConfig
    training: TrainConfig
    preset: str


def data_statistics(images: Sequence[np.ndarray], validation: Sequence[np.ndarray] = ()) -> dict[str, Any]:
    """Photon statistics of the training data, stored with the model.

    ``pseudo_psnr`` is that of all images together; ``min_image_psnr`` and ``max_image_psnr``
    those of the dimmest and the brightest image (dB, ``-inf`` for an image without photons).
    ``plane_hashes`` fingerprint every plane given (:func:`photongap.assessment.plane_hash`) and
    ``validation_hashes`` the held-out ones, so that an assessment can tell a training image.
    """
    from photongap.assessment import plane_hash

    total = float(sum(image.sum(dtype=np.float64) for image in images))
    pixels = int(sum(image.size for image in images))
    mean = total / pixels
    levels = [_pseudo_psnr(float(image.mean(dtype=np.float64))) for image in images]
    return {
        "images": len(images),
        "pixels": pixels,
        "photons_per_pixel": mean,
        "pseudo_psnr": _pseudo_psnr(mean),
        "min_image_psnr": min(levels),
        "max_image_psnr": max(levels),
        "max_count": float(max(image.max() for image in images)),
        "plane_hashes": [plane_hash(image) for image in images],
        "validation_hashes": [plane_hash(image) for image in validation],
    }


def _pseudo_psnr(photons_per_pixel: float) -> float:
    return 10 * math.log10(photons_per_pixel) if photons_per_pixel > 0 else -math.inf


def trained_range(data: Mapping[str, float], config: TrainConfig) -> list[float]:
    """``[low_db, high_db]``: the pseudo-PSNR levels (dB, of whole images) of the inputs the network trained on.

    Splitting only makes inputs dimmer: no input is brighter than the image it was split
    from. A relative split puts it ``split_min_psnr .. split_max_psnr`` dB below its image
    (at most 0 dB), so the range runs from the dimmest image's level plus ``split_min_psnr``
    to the brightest's plus ``min(split_max_psnr, 0)``. An absolute split puts it at
    ``split_min_psnr .. split_max_psnr`` dB, capped at the brightest image's level. Crops of
    an image scatter around its level. ``data`` is :func:`data_statistics`.
    """
    if config.split_mode == "relative":
        return [data["min_image_psnr"] + min(config.split_min_psnr, 0.0), data["max_image_psnr"] + min(config.split_max_psnr, 0.0)]
    high = min(config.split_max_psnr, data["max_image_psnr"])
    return [min(config.split_min_psnr, high), high]


def assess_validation(network: torch.nn.Module, model_config: ModelConfig, info: dict[str, Any], validation: Sequence[np.ndarray],
                      run_dir: Path, device: str) -> dict[str, Any]:
    """Grade the held-out validation images; write ``assessment.json``; measure the posterior gain.

    Returns what goes into the model's ``info``: ``assessment``, the summary of
    :func:`photongap.assessment.assess_planes`, and ``posterior_gain``, the median over the
    validation planes of :meth:`photongap.model.GapModel.estimate_gain` (shown by ``photongap
    info``; the sampler measures each image's own, which varied up to fivefold between images).
    Validation planes cut from a single image (its bottom rows) are graded as they were held out;
    a 3D model's validation volumes (or the bottom rows of every plane of a single volume) whole.
    """
    import json

    from photongap.assessment import assess_planes
    from photongap.model import GapModel

    model = GapModel(network.eval(), model_config, info)
    names = [f"validation {number}" for number in range(len(validation))]
    report = assess_planes(model, validation, names, device=device)
    with atomic_output(run_dir / "assessment.json") as partial:
        partial.write_text(json.dumps(report, indent=2))
    gains = [model.estimate_gain(plane, repeats=4, device=device) for plane in validation if float(plane.sum()) > 0]
    return {"assessment": {**report["summary"], "file": "assessment.json"}, **({"posterior_gain": float(np.median(gains))} if gains else {})}


def start_from_weights(module: GapLightningModule, path: str | Path) -> None:
    """Copy a model file's weights into the network and its weight average (fine-tuning from a trained model)."""
    from photongap.modelfile import load_model

    network, config, _, _ = load_model(path)
    if config != module.model_config:
        raise PhotongapError(f"{path}: its network ({config}) is not the one this run trains ({module.model_config})")
    with torch.no_grad():
        for target in (module.network, module.average):
            if target is not None:
                target.load_state_dict(network.state_dict())


def stored_preset(checkpoint: Path) -> str:
    """The preset a run was started from, as its ``last.ckpt`` records it (``custom`` if it does not)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    return str(state.get("callbacks", {}).get("RunFiles", {}).get("preset", "custom"))


def run_config(
    run_dir: Path,
    *,
    resume: bool,
    preset_name: str | None,
    config_file: str | Path | None,
    model_config: ModelConfig | None,
    train_config: TrainConfig | None,
    overrides: Mapping[str, Any] | None,
    model_overrides: Mapping[str, Any] | None = None,
) -> RunConfig:
    """The configuration of a run, each source over the one before.

    New run: the preset, then ``config_file``, then the given configs, then ``overrides``.
    Resumed run: ``run_dir/config.yaml`` in place of the preset; the network must stay as it was.
    """
    if resume:
        if preset_name is not None:
            raise PhotongapError(f"a resumed run continues with {run_dir / 'config.yaml'}; a preset applies to new runs only")
        stored = run_dir / "config.yaml"
        if not stored.exists():
            raise PhotongapError(f"cannot resume: {stored} does not exist")
        base, name = load_yaml(stored), stored_preset(run_dir / "last.ckpt")
    else:
        name = preset_name or "default"
        base = preset_configs(name)
    model, training = load_yaml(config_file, base) if config_file is not None else base
    model, training = model_config or model, train_config or training
    changes = {key: value for key, value in (overrides or {}).items() if value is not None}
    if changes:
        training = from_dict(TrainConfig, {**to_dict(training), **changes}, "training overrides")
    model_changes = {key: value for key, value in (model_overrides or {}).items() if value is not None}
    if model_changes:
        model = from_dict(ModelConfig, {**to_dict(model), **model_changes}, "model overrides")
    if resume and model != base[0]:
        changed = ", ".join(f"{f.name} {getattr(model, f.name)!r} (stored {getattr(base[0], f.name)!r})"
                            for f in dataclasses.fields(model) if getattr(model, f.name) != getattr(base[0], f.name))
        raise PhotongapError(f"cannot resume {run_dir} with another network: {changed}; resume it as stored or start a new run")
    if model.level_input and training.split_mode != "relative":
        raise PhotongapError("model.level_input reads the share of its crop's photons an input holds, which only relative splits give; "
                             "set training.split_mode: relative or model.level_input: false")
    given = config_file is not None or model_config is not None or train_config is not None
    return RunConfig(model, training, "custom" if given else name)


def stored_dims(run_dir: str | Path) -> int | None:
    """The ``dims`` of the run stored in ``run_dir/config.yaml`` (None without one): how a resumed run reads its data."""
    stored = Path(run_dir) / "config.yaml"
    return load_yaml(stored)[0].dims if stored.exists() else None


def settle_depth(model: ModelConfig, training: TrainConfig, images: Sequence[np.ndarray]) -> tuple[ModelConfig, TrainConfig]:
    """A 3D run's patch depth, depth poolings and planar levels, where the configuration leaves them open.

    The patch depth defaults to ``DEFAULT_PATCH_DEPTH`` planes, or the thinnest stack's depth
    if less; the network halves ``D`` as often as that depth allows (:func:`photongap.config.depth_pools_for`),
    and ``PLANAR_LEVELS`` of its finest levels convolve within planes. All are stored in the run's
    configuration, so a resumed run and the model file keep them.
    """
    if model.dims == 2:
        return model, training
    thinnest = min((image.shape[0] for image in images if image.ndim == 3), default=DEFAULT_PATCH_DEPTH)
    depth = training.patch_depth or min(DEFAULT_PATCH_DEPTH, thinnest)
    if model.depth_pools is None:
        model = dataclasses.replace(model, depth_pools=depth_pools_for(depth, model.depth))
    if model.planar_levels is None:
        model = dataclasses.replace(model, planar_levels=min(PLANAR_LEVELS, model.depth))
    return model, dataclasses.replace(training, patch_depth=depth)


def check_patch(model: ModelConfig, training: TrainConfig) -> None:
    """Refuse, in one line, a patch side the network's poolings cannot halve evenly (it would fail in the first step)."""
    sides = ((training.patch_depth, "depth"),) if model.dims == 3 else ()
    sides += ((training.patch_size, "size"), (training.patch_size, "size"))
    for (side, what), multiple in zip(sides, model.size_multiples):
        if side % multiple:
            lower, upper = side // multiple * multiple, (side // multiple + 1) * multiple
            nearest = " or ".join(str(value) for value in (lower, upper) if value > 0)
            raise PhotongapError(f"a patch {what} of {side} is not a multiple of {multiple}, which this network's poolings need; use {nearest}")


def train(
    images: Sequence[np.ndarray],
    run_dir: str | Path,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    names: Sequence[str] | None = None,
    device: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: bool = True,
    callbacks: Sequence[L.Callback] = (),
    extra_info: dict[str, Any] | None = None,
    assess: bool = True,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train a GAP network on noisy photon-count images alone.

    Parameters
    ----------
    images : sequence of np.ndarray
        2D photon-count images (planes of stacks count as separate images); for a model with
        ``dims=3``, ``(D, Y, X)`` volumes (z-stacks, or time-lapses with ``D`` the frames).
    run_dir : path
        Receives ``config.yaml``, ``last.ckpt``, ``metrics.csv``, ``loss.png`` and ``model.pt``.
    preset : str, optional
        Starting configuration of a new run (default ``"default"``; see :func:`photongap.config.preset`).
    config_file : path, optional
        YAML with ``model`` and/or ``training`` sections, over the preset (or the stored configuration).
    model_config, train_config : optional
        Replace the preset's (or the stored) configs.
    overrides : mapping, optional
        Training fields to change last, e.g. ``{"steps": 2000, "time_limit_minutes": 10}``;
        None values are ignored.
    model_overrides : mapping, optional
        Network fields to change last, e.g. ``{"dims": 3}`` (None values are ignored).
    resume : bool
        Continue from ``run_dir/last.ckpt`` with the configuration in ``run_dir/config.yaml``
        (then ``config_file``, configs and overrides over it); the network must not change.
    device, devices, num_nodes, strategy
        Passed to Lightning's Trainer (``device`` is its accelerator: auto, cpu or cuda).
    callbacks : sequence of lightning.Callback
        Extra callbacks for the Trainer (e.g. to evaluate during training).
    extra_info : dict, optional
        Added to the model file's ``info``, which also holds the training configuration,
        ``preset``, ``steps_done``, the data's photon statistics and ``trained_range``.
    assess : bool
        At the end, grade the validation images by held-out splits (:mod:`photongap.assessment`):
        ``run_dir/assessment.json``, and its summary in the model's ``info["assessment"]``.
    init_from : path, optional
        A ``model.pt`` whose weights start a new run (fine-tuning) instead of a random
        initialisation; its network configuration must be the run's. The optimiser and the
        learning-rate schedule start afresh.

    Examples
    --------
    >>> result = train(noisy_images, "runs/cells", overrides={"steps": 600})  # doctest: +SKIP
    >>> result = train(noisy_images, "runs/cells", overrides={"steps": 1200}, resume=True)  # doctest: +SKIP
    >>> denoised = photongap.load(result.model_path).denoise(noisy_images[0])  # doctest: +SKIP
    """
    from photongap.plotting import plot_losses

    run_dir = Path(run_dir)
    checkpoint = run_dir / "last.ckpt"
    if resume and not checkpoint.exists():
        raise PhotongapError(f"cannot resume: {checkpoint} does not exist")
    if not resume and ((run_dir / "model.pt").exists() or checkpoint.exists()):
        raise PhotongapError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    run = run_config(run_dir, resume=resume, preset_name=preset, config_file=config_file, model_config=model_config,
                     train_config=train_config, overrides=overrides, model_overrides=model_overrides)
    model_config, train_config = settle_depth(run.model, run.training, images)
    check_patch(model_config, train_config)

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
        patch_depth=train_config.patch_depth if model_config.dims == 3 else None,
    )
    clock = RunClock()
    module = GapLightningModule(model_config, train_config, channels_last=True, clock=clock)
    if init_from is not None:
        if resume:
            raise PhotongapError("a resumed run continues from its checkpoint; init_from applies to new runs only")
        start_from_weights(module, init_from)
    run_files = RunFiles(run_dir, clock, checkpoint_every=max(1, min(100, train_config.val_every)), preset=run.preset)
    callbacks = [clock, run_files, *callbacks]
    if progress:
        callbacks.append(TrainingBar(clock, train_config.time_limit_minutes))
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
        use_distributed_sampler=False,  # the data module gives each rank its own patches
    )
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)  # only now that the data and the configuration passed their checks
        with atomic_output(run_dir / "config.yaml") as partial:
            partial.write_text(dump_yaml(model_config, train_config))
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
        validation = hold_out(images, train_config.val_fraction, train_config.patch_size)[1]
        data = data_statistics(images, validation)
        info = {
            "preset": run.preset,
            "training": to_dict(train_config),
            "steps_done": trainer.global_step,
            "data": data,
            "trained_range": trained_range(data, train_config),
            **(extra_info or {}),
        }
        if assess and validation:  # planes, or a 3D model's (D, Y, X) validation volumes, each graded whole
            info.update(assess_validation(module.inference_network, model_config, info, validation, run_dir, accelerator))
        save_model(model_path, module.inference_network, model_config, info)
        plot_losses(read_metrics(run_files.metrics_path), run_dir / "loss.png")
    return TrainResult(model_path, trainer.global_step, elapsed, stopped_early=trainer.global_step < train_config.steps, main_process=trainer.is_global_zero)
