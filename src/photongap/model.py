"""A trained GAP model: one self-describing file, and what users do with it.

``model.pt`` holds the weights, the :class:`ModelConfig` that rebuilds the network, the
package version, the training configuration and the data's photon statistics. It loads
with ``torch.load(weights_only=True)``: no code is unpickled.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from photongap.config import ModelConfig, Precision, from_dict, to_dict
from photongap.errors import PhotongapError
from photongap.io import atomic_output
from photongap.network import GapUNet
from photongap.sampling import FAST_SCHEDULE, PhotonSchedule, SamplingResult, StepState, StopRule, accumulate_photons, generate
from photongap.tiling import LogitsFn, mmse_image, padded, plan_tiles, predict_logits, row_blocks, tiled

@dataclass(frozen=True)
class PosteriorSamples:
    """Samples of clean images, and their per-pixel summary.

    Attributes
    ----------
    samples : np.ndarray
        ``(n, Y, X)`` float32 in the photon units of the input (for generation: photons
        of the final level).
    mean, std : np.ndarray
        ``(Y, X)`` per-pixel mean and standard deviation over the samples (the std is the
        uncertainty map).
    steps : int
        Photon-adding steps of the longest sample.
    network_calls : int
        Network calls per sample, including the final estimate.
    """

    samples: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    steps: int
    network_calls: int

    @classmethod
    def from_result(cls, result: SamplingResult) -> PosteriorSamples:
        samples = result.samples[:, 0].float().cpu().numpy()
        std = samples.std(axis=0, ddof=1) if len(samples) > 1 else np.zeros_like(samples[0])
        return cls(samples, samples.mean(axis=0), std.astype(np.float32), result.steps, result.network_calls)


FORMAT = "photongap-model"
FORMAT_VERSION = 3  # 2: sine_levels became encoding_levels, next to encoding; 3: log_channel
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PhotongapError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise PhotongapError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device


def batch_size_for(device: torch.device, requested: int | None, on_gpu: int) -> int:
    """Images per network call: ``requested``, else 1 on a CPU and ``on_gpu`` on a GPU.

    On a CPU, oneDNN ran one 256 or 512 px image at a time faster per image than batches of
    4 or 16 (benchmarks/bench_throughput.py): larger batches only spill out of the caches.
    """
    if requested is None:
        return on_gpu if device.type == "cuda" else 1
    if requested < 1:
        raise PhotongapError(f"the batch size must be at least 1, got {requested}")
    return requested


def use_bf16(precision: Precision, device_type: str) -> bool:
    """Whether to run under bf16 autocast: ``auto`` picks it where the hardware has bf16 arithmetic.

    That is GPUs that support it, and CPUs with AMX tiles or AVX-512 BF16. On an AVX-512 BF16
    CPU without AMX, the default network ran 1.6 times the training steps per second in bf16
    and denoised 1.7-2.1 times faster (benchmarks/bench_throughput.py), for the same PSNR
    (0.02 dB less at 1 photon/px, none at 0.1). Elsewhere bf16 is emulated and slow.
    """
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


class GapModel:
    """A GAP network with its configuration and provenance.

    Examples
    --------
    >>> model = photongap.load("runs/cells/model.pt")  # doctest: +SKIP
    >>> denoised = model.denoise(counts)  # same shape, photon units of `counts`  # doctest: +SKIP
    """

    def __init__(self, network: nn.Module, config: ModelConfig, info: dict[str, Any] | None = None) -> None:
        self.network = network
        self.config = config
        self.info = dict(info or {})

    # -- file format -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the model file atomically (a temporary name, then a rename)."""
        from photongap import __version__

        path = Path(path)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.network.state_dict().items()}
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "photongap_version": __version__,
            "model_config": to_dict(self.config),
            "state_dict": state,
            "info": self.info,
        }
        with atomic_output(path) as partial:
            torch.save(payload, partial)
        return path

    @classmethod
    def load(cls, path: str | Path) -> GapModel:
        """Read a model file, with a clear error for anything that is not one we can use."""
        path = Path(path)
        if not path.is_file():
            raise PhotongapError(f"{path}: model file not found")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # torch raises many types for foreign or truncated files
            raise PhotongapError(f"{path}: not a photongap model file (unreadable or truncated)") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise PhotongapError(f"{path}: not a photongap model file (a Lightning checkpoint? use RUN_DIR/model.pt)")
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise PhotongapError(
                f"{path}: model format {version} from photongap {payload.get('photongap_version')} is not supported by this version (format {FORMAT_VERSION})"
            )
        config = from_dict(ModelConfig, payload["model_config"], f"{path}, model_config")
        network = GapUNet(config)
        try:
            network.load_state_dict(payload["state_dict"])
        except (RuntimeError, KeyError) as error:
            raise PhotongapError(f"{path}: weights do not fit the stored configuration ({str(error).splitlines()[0]})") from None
        return cls(network.eval(), config, payload.get("info"))

    # -- prediction --------------------------------------------------------------------------
    def logits_fn(self, device: str | torch.device = "auto", precision: Precision = "auto") -> LogitsFn:
        """The network as a function ``counts (B,1,Y,X) -> logits``, on ``device``, under inference mode.

        The network runs in channels_last layout (on a CPU, oneDNN's convolutions ran 1.3-1.8x
        faster so, in fp32 too), under bf16 autocast where chosen; the output convolution and
        the logits stay float32.
        """
        device = resolve_device(device)
        bf16 = use_bf16(precision, device.type)
        network = self.network.to(device).eval().to(memory_format=torch.channels_last)

        def logits(counts: torch.Tensor) -> torch.Tensor:
            counts = counts.to(device, torch.float32).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return network(counts).float()

        return logits

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
            Tiles of ``tile`` px with ``overlap`` px of shared context (None: one pass).
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
        batch_size = batch_size_for(device, batch_size, on_gpu=4)
        logits_fn = self.logits_fn(device, precision)
        for index in np.ndindex(*shape[:-2]):
            plane = counts[index] if index else counts  # a lazy plane must not be read whole by [()]
            total = float(sum(np.asarray(plane[rows, :], dtype=np.float64).sum() for rows in row_blocks(shape[-2])))
            # A numpy (or memory-mapped) output plane holds the logits and is then normalised in
            # place, so even a 16k x 16k plane needs no second full-size buffer.
            target = out[index] if isinstance(out, np.ndarray) else None
            logits = predict_logits(
                logits_fn, plane, tile=tile, overlap=overlap, multiple=self.config.size_multiple, batch_size=batch_size, out=target, progress=progress
            )
            result = mmse_image(logits, total, out=logits)
            if target is None:
                out[index] = result
        return out

    def trained_level(self) -> float | None:
        """Highest pseudo-PSNR (dB) of the inputs the network saw in training, if recorded.

        Splitting only thins photons, so no training input is brighter than the training
        data; with a relative split range, none is brighter than ``split_max_psnr`` below it.
        """
        training, data = self.info.get("training"), self.info.get("data")
        if not training or not data or "pseudo_psnr" not in data:
            return None
        if training.get("split_mode") == "relative":
            return data["pseudo_psnr"] + min(training["split_max_psnr"], 0.0)
        return min(training["split_max_psnr"], data["pseudo_psnr"])

    def _check_target(self, target_psnr: float | None) -> None:
        level = self.trained_level()
        if target_psnr is not None and level is not None and target_psnr > level + 3.0:
            warnings.warn(
                f"sampling to {target_psnr:g} dB goes beyond the brightest inputs this model was trained on "
                f"({level:.1f} dB): its predictions there are extrapolation and samples degrade; train on "
                "brighter data (splitting only makes inputs dimmer) or lower --target-psnr",
                stacklevel=3,
            )

    def _sampling_logits_fn(self, device: torch.device, precision: Precision, batch_size: int | None, tile: int | None, shape: tuple[int, int]) -> LogitsFn:
        """Images up to ``tile`` go through the network whole, in batches; larger ones tile by tile."""
        base = self.logits_fn(device, precision)
        batch_size = batch_size_for(device, batch_size, on_gpu=16)
        multiple = self.config.size_multiple
        if tile is not None and max(shape) > tile:
            return tiled(base, tile=tile, overlap=min(DEFAULT_OVERLAP, tile // 4), multiple=multiple, batch_size=batch_size)
        return padded(base, multiple, batch_size)

    def sample(
        self,
        counts: np.ndarray,
        n: int = 16,
        *,
        target_psnr: float | None = 20.0,
        target_photons: float | None = None,
        schedule: PhotonSchedule = FAST_SCHEDULE,
        seed: int = 0,
        batch_size: int | None = None,
        tile: int | None = 1024,
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
            Photons per step and how they are drawn. Default: :data:`photongap.sampling.FAST_SCHEDULE`
            (6 network calls from 1 to 100 photons/px, better calibrated than the published
            schedule); ``PhotonSchedule()`` is the published one (beta 0.1, 50 calls).
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
        self._check_target(target_psnr)
        counts = np.asarray(counts, dtype=np.float32)
        if counts.ndim != 2:
            raise PhotongapError(f"sample takes one 2D image, got shape {counts.shape}; sample stacks plane by plane")
        if n < 1:
            raise PhotongapError("the number of samples must be at least 1")
        device = resolve_device(device)
        start = torch.from_numpy(counts).to(device)[None, None].expand(n, 1, *counts.shape).contiguous()
        generator = torch.Generator(device=device).manual_seed(seed)
        result = accumulate_photons(
            self._sampling_logits_fn(device, precision, batch_size, tile, counts.shape),
            start,
            scale_to=float(counts.sum(dtype=np.float64)),
            schedule=schedule,
            stop=StopRule(target_psnr=target_psnr, target_photons=target_photons),
            generator=generator,
            on_step=on_step,
        )
        return PosteriorSamples.from_result(result)

    def generate(
        self,
        n: int,
        shape: tuple[int, int],
        *,
        target_psnr: float | None = 20.0,
        target_photons: float | None = None,
        schedule: PhotonSchedule = PhotonSchedule(),
        seed: int = 0,
        batch_size: int | None = None,
        tile: int | None = 1024,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        on_step: Callable[[StepState], None] | None = None,
    ) -> PosteriorSamples:
        """New images from an empty canvas: the sampling loop started from zero photons.

        A model trained with ``split_mode="absolute"`` over the full range of levels
        (``preset("generative")``) generates best: it has seen nearly empty inputs.
        """
        if n < 1 or len(shape) != 2 or min(shape) < 1:
            raise PhotongapError(f"generate needs n >= 1 and a 2D size, got n={n}, size={tuple(shape)}")
        self._check_target(target_psnr)
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
        return len(plan_tiles(shape, tile, overlap, self.config.size_multiple))


def load(path: str | Path) -> GapModel:
    """Load a ``model.pt`` written by :func:`photongap.train` (see :meth:`GapModel.load`)."""
    return GapModel.load(path)
