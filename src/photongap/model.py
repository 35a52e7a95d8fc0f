"""A trained GAP model and what users do with it: denoise, sample, generate, describe.

:class:`GapModel` is a thin API. The file format is :mod:`photongap.modelfile`; device,
precision and batch policy are :mod:`photongap.runtime`; tiling is :mod:`photongap.tiling`;
the sampling loop is :mod:`photongap.sampling`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from photongap.config import DEFAULT_OVERLAP, DEFAULT_SAMPLE_TILE, DEFAULT_TILE, ModelConfig, Precision
from photongap.errors import PhotongapError
from photongap.modelfile import FORMAT_VERSION, load_model, save_model
from photongap.network import receptive_radius
from photongap.runtime import LogitsFn, batch_size_for, logits_fn, resolve_device
from photongap.schedule import DEFAULT_TARGET_PSNR, FAST_SCHEDULE, PUBLISHED_SCHEDULE, PhotonSchedule
from photongap.sampling import PosteriorSamples, StepState, StopRule, accumulate_photons, generate
from photongap.tiling import denoise_plane, image_logits_fn, plan_tiles

LEVEL_TOLERANCE_DB = 3.0
"""How far (dB) sampling may start below or go above the trained range before it warns."""
GENERATION_TOLERANCE_DB = 10.0
"""Generation starts from single photons, below any trained range; it warns only if the model
was not trained within this many dB of that start (the published range goes down to -40 dB)."""


def trained_range_from_info(info: dict[str, Any]) -> tuple[float, float] | None:
    """``(low, high)`` pseudo-PSNR in dB of whole training inputs, from a model file's ``info``.

    Splitting only thins photons, so no training input is brighter than its training image:
    with a relative split range the inputs lie ``split_min_psnr .. min(split_max_psnr, 0)`` dB
    below each image's level, with an absolute one at ``split_min_psnr .. split_max_psnr``
    capped by the brightest image. Files written since the trained range was stored carry it
    as ``info["trained_range"]``; for older ones it is derived from the training record.
    """
    stored = info.get("trained_range")
    if stored is not None:
        return float(stored[0]), float(stored[1])
    training, data = info.get("training"), info.get("data")
    if not training or not data or "pseudo_psnr" not in data:
        return None
    low_image, high_image = data.get("min_image_psnr", data["pseudo_psnr"]), data.get("max_image_psnr", data["pseudo_psnr"])
    if training.get("split_mode") == "relative":
        return low_image + training["split_min_psnr"], high_image + min(training["split_max_psnr"], 0.0)
    return training["split_min_psnr"], min(training["split_max_psnr"], high_image)


class GapModel:
    """A GAP network with its configuration and provenance.

    Examples
    --------
    >>> model = photongap.load("runs/cells/model.pt")  # doctest: +SKIP
    >>> denoised = model.denoise(counts)  # same shape, photon units of `counts`  # doctest: +SKIP
    """

    def __init__(self, network: nn.Module, config: ModelConfig, info: dict[str, Any] | None = None, version: str | None = None) -> None:
        self.network = network
        self.config = config
        self.info = dict(info or {})
        self.version = version

    def save(self, path: str | Path) -> Path:
        """Write the model file (see :mod:`photongap.modelfile`)."""
        return save_model(path, self.network, self.config, self.info)

    @classmethod
    def load(cls, path: str | Path) -> GapModel:
        """Read a model file, with a clear error for anything that is not one we can use."""
        network, config, info, version = load_model(path)
        return cls(network, config, info, version)

    @functools.cached_property
    def context(self) -> int:
        """Input pixels on each side that can change one output pixel (:func:`photongap.network.receptive_radius`)."""
        return receptive_radius(self.network)

    def logits_fn(self, device: str | torch.device = "auto", precision: Precision = "auto") -> LogitsFn:
        """The network as a function ``counts (B,1,Y,X) -> logits`` (see :func:`photongap.runtime.logits_fn`)."""
        return logits_fn(self.network, device, precision)

    def trained_range(self) -> tuple[float, float] | None:
        """``(low, high)`` pseudo-PSNR (dB) of the inputs the network saw in training, if recorded."""
        return trained_range_from_info(self.info)

    def describe(self) -> dict[str, Any]:
        """What ``photongap info`` shows: provenance, size, trained range, data statistics and the validation assessment."""
        trained = self.trained_range()
        return {
            "photongap_version": self.version,
            "format_version": FORMAT_VERSION,
            "preset": self.info.get("preset", "unknown"),
            "weights": sum(parameter.numel() for parameter in self.network.parameters()),
            "network": self.config.__dict__,
            "receptive_radius_px": self.context,
            "trained_range_db": list(trained) if trained else None,
            "trained_range_photons_per_px": [10 ** (level / 10) for level in trained] if trained else None,
            "steps_done": self.info.get("steps_done"),
            "data": self.info.get("data"),
            "training": self.info.get("training"),
            "assessment": self.info.get("assessment"),
        }

    def _warn_outside(self, start_db: float, target_db: float | None, tolerance: float, what: str) -> None:
        trained = self.trained_range()
        if trained is None:
            return
        low, high = trained
        advice = "train on data at these levels (splitting only makes inputs dimmer), or with --preset generative"
        if target_db is not None and target_db > high + LEVEL_TOLERANCE_DB:
            warnings.warn(
                f"{what} to {target_db:g} dB goes beyond the brightest inputs this model was trained on ({high:.1f} dB): "
                f"its predictions there are extrapolation and samples degrade; {advice}, or lower --target-psnr",
                stacklevel=3,
            )
        if start_db < low - tolerance:
            warnings.warn(
                f"{what} starts at {start_db:.1f} dB, below the dimmest inputs this model was trained on ({low:.1f} dB): "
                f"its first predictions are extrapolation; {advice}",
                stacklevel=3,
            )

    def denoise(
        self,
        counts: Any,
        *,
        tile: int | None = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        batch_size: int | None = None,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        out: Any | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Any:
        """MMSE denoising: ``softmax(net(counts)) * sum(counts)``, plane by plane.

        Parameters
        ----------
        counts : array-like
            ``(..., Y, X)`` photon counts (numpy, memory-mapped or Zarr); each trailing
            ``(Y, X)`` plane is one image with its own softmax.
        tile, overlap : int
            Tiles of ``tile`` px (None: one pass). Each core keeps the network's receptive
            field of context (:attr:`context`), and at least ``overlap // 2`` px, so tiled
            and untiled results agree; a tile too small for that is enlarged.
        batch_size : int, optional
            Tiles per network call (default: 1 on a CPU, 4 on a GPU).
        out : array-like, optional
            Where to write the float32 result (e.g. a memory map); new array if omitted.
        progress : callable, optional
            Called with the number of tiles finished, as they finish.

        Returns
        -------
        array-like
            float32 of the same shape, in the photon units of ``counts``.
        """
        shape = tuple(counts.shape)
        if len(shape) < 2 or min(shape) == 0:
            raise PhotongapError(f"cannot denoise an array of shape {shape}")
        out = np.empty(shape, dtype=np.float32) if out is None else out
        device = resolve_device(device)
        options = dict(
            tile=tile, overlap=overlap, multiple=self.config.size_multiple, context=self.context,
            batch_size=batch_size_for(device, batch_size, on_gpu=4), progress=progress,
        )
        network = self.logits_fn(device, precision)
        for index in np.ndindex(*shape[:-2]):
            plane = counts[index] if index else counts  # a lazy plane must not be read whole by [()]
            target = out[index] if isinstance(out, np.ndarray) else None
            result = denoise_plane(network, plane, out=target, **options)
            if target is None:
                out[index] = result
        return out

    def _sampling_logits_fn(self, device: torch.device, precision: Precision, batch_size: int | None, tile: int | None, shape: tuple[int, int]) -> LogitsFn:
        batch_size = batch_size_for(device, batch_size, on_gpu=16)
        return image_logits_fn(self.logits_fn(device, precision), shape, tile=tile, multiple=self.config.size_multiple, context=self.context, batch_size=batch_size)

    def sample(
        self,
        counts: np.ndarray,
        n: int = 16,
        *,
        target_psnr: float | None = DEFAULT_TARGET_PSNR,
        target_photons: float | None = None,
        schedule: PhotonSchedule = FAST_SCHEDULE,
        seed: int = 0,
        batch_size: int | None = None,
        tile: int | None = DEFAULT_SAMPLE_TILE,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        on_step: Callable[[StepState], None] | None = None,
    ) -> PosteriorSamples:
        """Diversity denoising: ``n`` samples from the posterior of clean images given ``counts``.

        Each sample starts from the noisy counts and adds ``Poisson(softmax(net(x)) * n_t)``
        photons per step until the stop rule; the sample is the final prediction scaled to
        the input's photons. The ``n`` samples run through the network together.

        Parameters
        ----------
        counts : np.ndarray
            ``(Y, X)`` photon counts.
        n : int
            Number of samples.
        target_psnr, target_photons
            Stop when the accumulated image reaches this pseudo-PSNR (dB) or photon total.
        schedule : PhotonSchedule
            Photons per step and how they are drawn. Default: :data:`photongap.schedule.FAST_SCHEDULE`
            (6 network calls from 1 to 100 photons/px); :data:`~photongap.schedule.PUBLISHED_SCHEDULE`
            is the published one (beta 0.1, 50 calls).
        seed : int
            Same seed, same samples on the same device.
        batch_size : int, optional
            Images per network call (default: 1 on a CPU, where that was fastest per image,
            16 on a GPU).
        tile : int or None
            Images larger than this are predicted tile by tile, logits stitched before the
            softmax (the same method as :meth:`denoise`).

        Examples
        --------
        >>> posterior = model.sample(counts, n=16, seed=1)  # doctest: +SKIP
        >>> posterior.mean, posterior.std  # MMSE-like estimate and uncertainty map  # doctest: +SKIP
        """
        counts = np.asarray(counts, dtype=np.float32)
        if counts.ndim != 2:
            raise PhotongapError(f"sample takes one 2D image, got shape {counts.shape}; sample stacks plane by plane")
        if n < 1:
            raise PhotongapError("the number of samples must be at least 1")
        total = float(counts.sum(dtype=np.float64))
        self._warn_outside(10 * math.log10(max(total, 1.0) / counts.size), target_psnr, LEVEL_TOLERANCE_DB, "sampling")
        device = resolve_device(device)
        start = torch.from_numpy(counts).to(device)[None, None].expand(n, 1, *counts.shape).contiguous()
        result = accumulate_photons(
            self._sampling_logits_fn(device, precision, batch_size, tile, counts.shape),
            start,
            scale_to=total,
            schedule=schedule,
            stop=StopRule(target_psnr=target_psnr, target_photons=target_photons),
            generator=torch.Generator(device=device).manual_seed(seed),
            on_step=on_step,
        )
        return PosteriorSamples.from_result(result)

    def generate(
        self,
        n: int,
        shape: tuple[int, int],
        *,
        target_psnr: float | None = DEFAULT_TARGET_PSNR,
        target_photons: float | None = None,
        schedule: PhotonSchedule = PUBLISHED_SCHEDULE,
        seed: int = 0,
        batch_size: int | None = None,
        tile: int | None = DEFAULT_SAMPLE_TILE,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        on_step: Callable[[StepState], None] | None = None,
    ) -> PosteriorSamples:
        """New images from an empty canvas: the sampling loop started from zero photons.

        A model trained with ``split_mode="absolute"`` over the full range of levels
        (``preset("generative")``) generates best: it has seen nearly empty inputs. The
        published schedule is the default here: faster ones were not measured for generation.
        """
        if n < 1 or len(shape) != 2 or min(shape) < 1:
            raise PhotongapError(f"generate needs n >= 1 and a 2D size, got n={n}, size={tuple(shape)}")
        self._warn_outside(10 * math.log10(1.0 / (shape[0] * shape[1])), target_psnr, GENERATION_TOLERANCE_DB, "generation")
        device = resolve_device(device)
        result = generate(
            self._sampling_logits_fn(device, precision, batch_size, tile, tuple(shape)),
            tuple(shape),
            n,
            schedule=schedule,
            stop=StopRule(target_psnr=target_psnr, target_photons=target_photons),
            generator=torch.Generator(device=device).manual_seed(seed),
            on_step=on_step,
            device=device,
        )
        return PosteriorSamples.from_result(result)

    def tiles_per_plane(self, shape: tuple[int, int], tile: int | None = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> int:
        """How many tiles :meth:`denoise` cuts a plane into (for progress bars)."""
        return len(plan_tiles(shape, tile, overlap, self.config.size_multiple, self.context))


def load(path: str | Path) -> GapModel:
    """Load a ``model.pt`` written by :func:`photongap.train` (see :meth:`GapModel.load`)."""
    return GapModel.load(path)
