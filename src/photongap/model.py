"""A trained GAP model and what users do with it: denoise, sample, generate, describe.

:class:`GapModel` is a thin API. The file format is :mod:`photongap.modelfile`; device,
precision and batch policy are :mod:`photongap.runtime`; tiling is :mod:`photongap.tiling`;
the sampling loop is :mod:`photongap.sampling`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from photongap.config import DEFAULT_OVERLAP, DEFAULT_SAMPLE_TILE, DEFAULT_TILE, DEFAULT_TILE_DEPTH, ModelConfig, Precision, TrainConfig, to_dict
from photongap.depth_windows import denoise_in_windows, depth_window, warn_thin, window_shapes
from photongap.errors import PhotongapError
from photongap.modelfile import describe, load_model, save_model, trained_range_from_info
from photongap.network import receptive_radii, receptive_radius
from photongap.runtime import LogitsFn, batch_size_for, logits_fn, resolve_device
from photongap.schedule import DEFAULT_TARGET_PSNR, FAST_SCHEDULE, PUBLISHED_SCHEDULE, PhotonSchedule
from photongap.sampling import DirichletPosterior, PosteriorSamples, StepState, StopRule, accumulate_photons, generate
from photongap.sampling.stop import LEVEL_TOLERANCE_DB, warn_level_input, warn_outside_trained
from photongap.sampling.gain import GAIN_FRACTIONS, GAIN_REPEATS, HeldOutGain, SamplerNetwork, held_out_gain, spread_calls, spread_gain
from photongap.tiling import denoise_plane, image_logits_fn, plan_tiles, window_tile

GENERATION_TOLERANCE_DB = 10.0
"""Generation starts from single photons, below any trained range; it warns only if the model
was not trained within this many dB of that start (the published range goes down to -40 dB)."""


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

    @functools.cached_property
    def contexts(self) -> tuple[int, ...]:
        """:attr:`context` per spatial axis: ``(Y, X)``, or ``(D, Y, X)`` for a 3D model."""
        return receptive_radii(self.network)

    @property
    def min_depth(self) -> int:
        """Planes a volume needs for a 3D model: its training patches' depth (what it learnt from)."""
        return self.patch_depth or self.config.size_multiples[0]

    @property
    def patch_depth(self) -> int | None:
        """Planes of the 3D patches the model was trained on, where its file records them."""
        depth = (self.info.get("training") or {}).get("patch_depth")
        return int(depth) if depth else None

    def check_shape(self, shape: tuple[int, ...], axes: str | None = None, name: str = "image") -> None:
        """Refuse what this model cannot denoise, in one line: a 3D model takes ``(..., D, Y, X)`` volumes of at least :attr:`min_depth` planes.

        ``axes`` (e.g. ``"CYX"``), where known, names the axis that is missing.
        """
        if len(shape) < 2 or min(shape) == 0:
            raise PhotongapError(f"{name}: cannot denoise an array of shape {shape}")
        if self.config.dims == 2:
            return
        if len(shape) < 3 or (axes is not None and not any(letter in axes for letter in "ZT")):
            has = f"axes {axes}" if axes is not None else f"shape {shape}"
            raise PhotongapError(f"{name}: a 3D model denoises volumes (a Z or T axis), got {has}; use a 2D model, or --axes to say which axis is Z or T")
        if shape[-3] < self.min_depth:
            raise PhotongapError(f"{name}: a stack of {shape[-3]} planes is thinner than this 3D model's patch depth ({self.min_depth}); use a 2D model or train with a smaller depth")

    def logits_fn(self, device: str | torch.device = "auto", precision: Precision = "auto", fraction: float | None = None) -> LogitsFn:
        """The network as a function ``counts (B,1,Y,X) -> logits`` (see :func:`photongap.runtime.logits_fn`; ``fraction`` there)."""
        return logits_fn(self.network, device, precision, fraction if self.config.level_input else None)

    def trained_range(self) -> tuple[float, float] | None:
        """``(low, high)`` pseudo-PSNR (dB) of the inputs the network saw in training, if recorded."""
        return trained_range_from_info(self.info)

    def describe(self) -> dict[str, Any]:
        """What ``photongap info`` shows: provenance, size, trained range, data statistics and the validation assessment (:func:`photongap.modelfile.describe`)."""
        return describe(self)

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
        tile_depth: int | None = DEFAULT_TILE_DEPTH,
        fraction: float | np.ndarray | None = None,
    ) -> Any:
        """MMSE denoising: ``softmax(net(counts)) * sum(counts)``, plane by plane, or volume by volume for a 3D model.

        Parameters
        ----------
        counts : array-like
            ``(..., Y, X)`` photon counts (numpy, memory-mapped or Zarr); each trailing
            ``(Y, X)`` plane is one image with its own softmax. For a 3D model (``dims=3``)
            each trailing ``(D, Y, X)`` volume is one image (``D``: planes or frames).
        tile, overlap : int
            Tiles of ``tile`` px in Y and X (None: one pass). Each core keeps the network's
            receptive field of context (:attr:`contexts`, per axis), and at least
            ``overlap // 2`` px, so tiled and untiled results agree; a tile too small for that is enlarged.
        tile_depth : int or None
            3D only: windows of this many planes along ``D`` (enlarged to four margins of
            context like ``tile``; None: the whole depth in each window). A model trained on patches
            under 8 planes runs deeper volumes in windows of its patch depth (:mod:`photongap.depth_windows`).
        batch_size : int, optional
            Tiles per network call (default: 1 on a CPU, 4 on a GPU).
        out : array-like, optional
            Where to write the float32 result (e.g. a memory map); new array if omitted.
        progress : callable, optional
            Called with the number of tiles finished, as they finish.
        fraction : float or array, optional
            The share of its acquisition's photons each image (of the leading axes) holds, e.g. a
            split's; None: all. Read by ``level_input`` models (:class:`~photongap.config.ModelConfig`).

        Returns
        -------
        array-like
            float32 of the same shape, in the photon units of ``counts``.
        """
        shape = tuple(counts.shape)
        self.check_shape(shape)
        out = np.empty(shape, dtype=np.float32) if out is None else out
        device = resolve_device(device)
        spatial = self.config.dims
        options = dict(
            tile=window_tile(self.config.dims, tile, tile_depth, shape[-3] if spatial == 3 else 0), overlap=overlap, multiple=self.config.size_multiples, context=self.contexts,
            batch_size=batch_size_for(device, batch_size, on_gpu=4), progress=progress,
        )
        network = self.logits_fn(device, precision)  # a network told each image's share only where it reads one that was given
        shares = None if fraction is None or not self.config.level_input else np.broadcast_to(np.asarray(fraction, dtype=np.float64), shape[:-spatial])
        window = depth_window(self.patch_depth, shape[-3]) if spatial == 3 else None
        for index in np.ndindex(*shape[:-spatial]):
            network = network if shares is None else self.logits_fn(device, precision, float(shares[index]))
            plane = counts[index] if index else counts  # a lazy plane must not be read whole by [()]
            if window is not None:  # a thin-patch model: windows of its patch depth
                denoise_in_windows(lambda volume: denoise_plane(network, volume, **options), plane, window, out, index)
                continue
            target = out[index] if isinstance(out, np.ndarray) else None
            result = denoise_plane(network, plane, out=target, **options)
            if target is None:
                out[index] = result
        return out

    def _sampling_logits_fn(self, device: torch.device, precision: Precision, batch_size: int | None, tile: int | None, shape: tuple[int, ...], fraction: float | None = None) -> LogitsFn:
        batch_size = batch_size_for(device, batch_size, on_gpu=16)
        return image_logits_fn(
            self.logits_fn(device, precision, fraction), shape, tile=window_tile(self.config.dims, tile, None, shape[0] if len(shape) == 3 else 0), multiple=self.config.size_multiples, context=self.contexts, batch_size=batch_size
        )

    def _sampler_network(self, counts: np.ndarray, device: torch.device, precision: Precision, batch_size: int | None, tile: int | None) -> SamplerNetwork:
        """The network the Dirichlet sampler and its gain run, the range it thins to, and a ``level_input`` model's network at a share of the image.

        Such a model learnt shares of its crops up to ``split_max_psnr`` dB: every input is thinned to that share of this image and the network told so."""
        if not self.config.level_input:
            return SamplerNetwork(self._sampling_logits_fn(device, precision, batch_size, tile, counts.shape), self.trained_range(), None)
        training = {**to_dict(TrainConfig()), **(self.info.get("training") or {})}
        level_db, top = 10 * math.log10(max(float(counts.sum(dtype=np.float64)), 1.0) / counts.size), min(training["split_max_psnr"], 0.0)
        at_share = functools.partial(self._sampling_logits_fn, device, precision, batch_size, tile, counts.shape)
        return SamplerNetwork(at_share(10 ** (top / 10)), (level_db + training["split_min_psnr"], level_db + top), at_share)

    def estimate_gain(
        self,
        counts: np.ndarray,
        *,
        fractions: tuple[float, ...] = GAIN_FRACTIONS,
        repeats: int = GAIN_REPEATS,
        seed: int = 0,
        logits: LogitsFn | None = None,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        tile: int | None = DEFAULT_SAMPLE_TILE,
    ) -> float:
        """The network's gain ``g`` on this image, without ground truth: ``len(fractions) * repeats`` network calls.

        Measured on held-out photons at ``fractions`` of the sampler's level and carried to
        it (:func:`photongap.sampling.gain.held_out_gain`, where the derivation is).
        """
        device = resolve_device(device)
        own = self._sampler_network(np.asarray(counts, dtype=np.float32), device, precision, None, tile)
        return held_out_gain(counts, logits or own.logits, own.trained, fractions=fractions, repeats=repeats, seed=seed, device=device, at_share=None if logits else own.at_share).gain

    def gain_map(
        self,
        counts: np.ndarray,
        gain: float | HeldOutGain | None,
        *,
        seed: int = 0,
        logits: LogitsFn | None = None,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        tile: int | None = DEFAULT_SAMPLE_TILE,
    ) -> tuple[torch.Tensor, float]:
        """The gain ``gain`` spread over the image as the network's own variance is: 19 network calls (37 for a volume).

        :func:`photongap.sampling.gain.spread_gain`: the map ``(1, 1, Y, X)`` float64 on
        ``device``, and the overall gain it was scaled to (``gain`` None: the network's own; held-out
        errors: :func:`photongap.sampling.gain.sampler_gain`'s).
        """
        device = resolve_device(device)
        own = self._sampler_network(np.asarray(counts, dtype=np.float32), device, precision, None, tile)
        return spread_gain(counts, gain, logits or own.logits, own.trained, seed=seed, device=device, at_share=None if logits else own.at_share)

    def sample(
        self,
        counts: np.ndarray,
        n: int = 16,
        *,
        target_psnr: float | None = None,
        target_photons: float | None = None,
        schedule: PhotonSchedule | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        tile: int | None = DEFAULT_SAMPLE_TILE,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        on_step: Callable[[StepState], None] | None = None,
        gain: float | None = None,
        final: Literal["draw", "mean"] = "draw",
    ) -> PosteriorSamples:
        """Diversity denoising: ``n`` samples from the posterior of clean images given ``counts``.

        By default (``schedule=None``) the Dirichlet sampler, which never runs the network above
        the top ``T`` of its trained range: each step thins the accumulated counts to ``T``,
        predicts from the thinned copy, updates that prediction pixel by pixel with the photons
        thinned away (:func:`photongap.posterior.dirichlet_predictive`, worth ``gain`` photons per
        input photon) and draws the step's photons from it (FAST_SCHEDULE's photon counts). It
        stops 1 dB above ``T`` (one step: 2 network calls from the data level) and each sample is one
        draw of the clean image from the final predictive, scaled to the input's photons.

        With a ``schedule`` (and no ``gain``) it is the plain GAP loop: ``Poisson(softmax(net(x)) n_t)``
        photons per step, the network run at every level up to the target (default 20 dB), the
        sample the final prediction; ``schedule=PUBLISHED_SCHEDULE`` is the published loop.

        Parameters
        ----------
        counts : np.ndarray
            ``(Y, X)`` photon counts (``(D, Y, X)`` for a 3D model: one volume, one softmax).
        n : int
            Number of samples.
        target_psnr, target_photons
            Stop when the accumulated image reaches this pseudo-PSNR (dB) or photon total.
            Default: 1 dB above the trained top (above the image's level if that is brighter);
            20 dB for a model without a trained range, or for the plain loop.
        schedule : PhotonSchedule, optional
            Photons per step and how they are drawn: the plain loop. None: the Dirichlet sampler
            with FAST_SCHEDULE's photon counts (a schedule together with ``gain``: the Dirichlet
            sampler with this schedule's photon counts; its ``dispersion`` is then unused).
        seed : int
            Same seed, same samples on the same device.
        batch_size : int, optional
            Images per network call (default: 1 on a CPU, where that was fastest per image,
            16 on a GPU).
        tile : int or None
            Images larger than this are predicted tile by tile, logits stitched before the
            softmax (the same method as :meth:`denoise`).
        gain : float, optional
            The Dirichlet sampler's ``g``, one for the whole image. Default: measured on ``counts``
            (:meth:`estimate_gain`; where too noisy, it updates the network's own) and spread over the
            image as the network's own variance is (:meth:`gain_map`): 31 network calls per image (49 per volume), once for all samples, reported as
            ``gain_calls``, and whether the held-out photons resolved it as ``gain_resolved``. (The model file's ``info["posterior_gain"]`` is not used: the gain
            varied up to fivefold between the images of one data set.)
        final : {"draw", "mean"}
            The Dirichlet sampler's sample: a draw from the final predictive, or its mean.

        Examples
        --------
        >>> posterior = model.sample(counts, n=16, seed=1)  # doctest: +SKIP
        >>> posterior.mean, posterior.std  # MMSE-like estimate and uncertainty map  # doctest: +SKIP
        """
        counts = np.asarray(counts, dtype=np.float32)
        if counts.ndim != self.config.dims:
            kind, unit = ("2D image", "plane") if self.config.dims == 2 else ("(D, Y, X) volume (a 3D model)", "volume")
            raise PhotongapError(f"sample takes one {kind}, got shape {counts.shape}; stacks are sampled one {unit} at a time")
        self.check_shape(counts.shape)
        if n < 1:
            raise PhotongapError("the number of samples must be at least 1")
        warn_thin(self.patch_depth, counts.shape, "sample")
        total = float(counts.sum(dtype=np.float64))
        start_db = 10 * math.log10(max(total, 1.0) / counts.size)
        device = resolve_device(device)
        start = torch.from_numpy(counts).to(device)[None, None].expand(n, 1, *counts.shape).contiguous()
        generator = torch.Generator(device=device).manual_seed(seed)
        if schedule is not None and gain is None:
            if target_psnr is None and target_photons is None:
                target_psnr = DEFAULT_TARGET_PSNR
            warn_outside_trained(self.trained_range(), start_db, target_psnr, LEVEL_TOLERANCE_DB, "sampling")
            stop = StopRule(target_psnr=target_psnr, target_photons=target_photons)
            network = self._sampling_logits_fn(device, precision, batch_size, tile, counts.shape)
            result = accumulate_photons(network, start, scale_to=total, schedule=schedule, stop=stop, generator=generator, on_step=on_step)
            return PosteriorSamples.from_result(result)

        network, trained, at_share = self._sampler_network(counts, device, precision, batch_size, tile)
        top = None if trained is None else trained[1]
        if target_psnr is not None or target_photons is not None:
            stop = StopRule(target_psnr=target_psnr, target_photons=target_photons)
        elif top is not None:
            stop = StopRule.above_trained(top, start_db)
        else:
            stop = StopRule(target_psnr=DEFAULT_TARGET_PSNR)
        warn_outside_trained(self.trained_range(), start_db, None, LEVEL_TOLERANCE_DB, "sampling")
        warn_level_input(self.config.level_input)
        gain_calls, resolved = 0, None
        if gain is None:
            # Measured on this image (on one data set's held-out images it ranged from 4 to 20), with its own
            # seed stream, so that the samples of one seed do not depend on whether it was given.
            held_out = held_out_gain(counts, network, trained, seed=seed + 1_000_003, device=device, at_share=at_share)
            spread, gain = spread_gain(counts, held_out, network, trained, seed=seed + 1_000_003, device=device, at_share=at_share)
            resolved = held_out.resolved
            gain_calls = len(GAIN_FRACTIONS) * GAIN_REPEATS + spread_calls(counts.ndim)
        else:
            spread = float(gain)
        posterior = DirichletPosterior(gain=spread, trained_top=top, final=final, centre=True)
        result = accumulate_photons(
            network, start, scale_to=total, schedule=schedule or FAST_SCHEDULE, stop=stop, generator=generator, on_step=on_step, posterior=posterior
        )
        return PosteriorSamples.from_result(result, gain=float(gain), gain_calls=gain_calls, gain_resolved=resolved)

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
        if n < 1 or len(shape) != self.config.dims or min(shape) < 1:
            raise PhotongapError(f"generate needs n >= 1 and a {self.config.dims}D size (the model's), got n={n}, size={tuple(shape)}")
        warn_outside_trained(self.trained_range(), 10 * math.log10(1.0 / math.prod(shape)), target_psnr, GENERATION_TOLERANCE_DB, "generation")
        warn_thin(self.patch_depth, tuple(shape), "generate")
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

    def tiles_per_plane(self, shape: tuple[int, ...], tile: int | None = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                        tile_depth: int | None = DEFAULT_TILE_DEPTH) -> int:
        """How many tiles :meth:`denoise` cuts a plane (a ``(D, Y, X)`` volume for a 3D model) into (for progress bars)."""
        return sum(len(plan_tiles(part, window_tile(self.config.dims, tile, tile_depth, part[0] if len(part) == 3 else 0), overlap, self.config.size_multiples, self.contexts))
                   for part in window_shapes(tuple(shape), self.patch_depth))


def load(path: str | Path) -> GapModel:
    """Load a ``model.pt`` written by :func:`photongap.train` (see :meth:`GapModel.load`)."""
    return GapModel.load(path)
