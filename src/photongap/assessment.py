"""How good is a denoised image, without the clean image: held-out photons grade the prediction.

Binomial thinning splits one acquisition ``x ~ Poisson(lambda)`` into ``a ~ Binomial(x, p)`` and
``b = x - a``, independent Poisson images of ``p * lambda`` and ``(1 - p) * lambda``. Denoising
``a`` and scoring it against ``b`` (:func:`photongap.physics.held_out_squared_error`) measures,
without bias, the squared error of the denoiser *at exposure p*, in photons² of the full
exposure. The denoised image a user keeps is made from all of ``x`` (``p = 1``), where no
photons are left over; :func:`full_exposure_mse` gets there by extrapolation in ``1/p``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from photongap.errors import PhotongapError
from photongap.heldout import (NLL_FRACTION, Denoiser, Method, SplitSums, controlled, extrapolation_weights,  # noqa: F401 (re-exported)
                               full_exposure_estimates, full_exposure_mse, photon_noise_floor, split_sums)

DEFAULT_FRACTIONS = (0.7, 0.8, 0.9, 0.95)
"""Input fractions of the splits: the top of the default preset's trained range (50-95.5 % of the data's level).

Nearer 1 the extrapolation is shorter, and the true MSE curves of trained models bend up towards
``p = 1`` more than ``A + B/p`` follows (measured on two data sets at 1 and 0.1 photons/px: 0.5-0.9
underestimates by 0.07-0.45 dB, 0.7-0.95 by 0.01-0.13 dB); the control variates keep the split noise of these fractions small."""
DEFAULT_REPEATS = 8
"""Independent splits per fraction."""
DEFAULT_METHOD = "controlled"
"""The estimator :func:`assess_counts` uses (see there); measured in ``benchmarks/bench_assess.py``."""


@dataclass(frozen=True)
class Assessment:
    """The estimated quality of a denoised image, from its own photons.

    Attributes
    ----------
    mse, mse_std : float
        Estimated mean squared error per pixel of the denoised full image against the clean
        image, in photons² at the image's exposure, and its standard error over the splits.
    psnr : float
        ``10 log10(range**2 / mse)``, ``range`` that of the denoised image (nan if ``mse <= 0``).
    nll_per_photon : float
        Negative log-likelihood of the held-out photons under the prediction from the input
        split at :data:`NLL_FRACTION`, nats per photon (the training loss, on this image).
    data_range : float
        ``max - min`` of the denoised full image.
    photons_per_pixel : float
        Mean counts of the image.
    fractions, mse_at_fraction : list of float
        The split fractions and the held-out MSE at each (mean over repeats, after the control variates
        for the ``controlled`` method; full-exposure photons²): what is extrapolated.
    repeats : int
        Independent splits per fraction.
    sums : SplitSums
        What the splits measured (not in :meth:`to_dict`).
    """

    mse: float
    mse_std: float
    psnr: float
    nll_per_photon: float
    data_range: float
    photons_per_pixel: float
    fractions: list[float]
    mse_at_fraction: list[float]
    repeats: int
    sums: SplitSums | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "sums"}


def psnr_from_mse(mse: float, data_range: float) -> float:
    """``10 log10(data_range**2 / mse)``; nan where the MSE estimate is not positive."""
    return 10.0 * math.log10(data_range**2 / mse) if mse > 0 and data_range > 0 else float("nan")


def assess_counts(
    denoise: Denoiser,
    counts: np.ndarray,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    repeats: int = DEFAULT_REPEATS,
    seed: int = 0,
    denoised: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
    method: Method = DEFAULT_METHOD,
    clean: np.ndarray | None = None,
) -> Assessment:
    """Estimate the MSE of ``denoise(counts)`` against the unknown clean image.

    For each fraction ``p`` and repeat, split ``a ~ Binomial(counts, p)``, ``b = counts - a``, and
    score ``f(a) = denoise(a)`` against ``b`` with :func:`~photongap.physics.held_out_squared_error`
    (``H``): an unbiased estimate of ``MSE(p) = mean((lambda - f(a)/p)**2)``. The default
    ``controlled`` method subtracts from ``H`` the part of its split noise explained by two
    control variates whose mean given the image is exactly zero (:class:`SplitSums`,
    :func:`controlled`): ``zero - sum(x**2 - x)``, the held-out photons' own power, which
    dominates at low counts (variance ``~ 2 sum(lambda**2) / (1-p)**2``), and
    ``sum(f(x) (b/(1-p) - x))``, their cross term with the prediction, which dominates at high
    counts (``~ 4 sum(lambda f**2) / (1-p)``). On trained models this cut the split noise 5-20
    fold. Then average the repeats and extrapolate to ``p = 1`` with :func:`full_exposure_mse`.

    Why ``A + B/p``: for a linear denoiser ``MSE(p)`` is exactly squared bias plus a variance
    ``~ 1/p``. For an MMSE denoiser under a Gaussian (Wiener) approximation, each image
    component of signal power ``s`` contributes ``s m / (s p + m)`` (``m`` the mean count): ``m/p``
    where it is resolved, ``s`` where it is suppressed; a sum of such terms is concave in ``1/p``,
    so ``A + B/p`` would overestimate slightly. Trained networks do the opposite near ``p = 1``
    (their error bends up towards the top of their trained range), which is why the default
    fractions are the top of that range, 0.7-0.95: the fit is short and its model error
    measured 0.01-0.13 dB (0.07-0.45 dB over 0.5-0.9).

    Assumptions: ``counts`` are Poisson photon counts (no read noise, which does not thin; see
    :mod:`photongap.exposure`); pixels are independent given ``lambda``; ``denoise`` treats a
    thinned image as it would an acquisition at that exposure (true for GAP, which is trained on
    thinned inputs) and was not trained on these photons; the MSE curve is ``A + B/p`` between the
    fractions and 1. ``mse_std`` adds the randomness of the splits (their spread over repeats)
    and the photon-noise floor of the image itself (:func:`photon_noise_floor`, the error of the
    unbiased estimate for a denoiser insensitive to single photons): at ~0.1 photons/px it is
    15-30% of the MSE, the main uncertainty, and on trained models it was somewhat conservative.

    Other ``method`` values, for comparisons (``benchmarks/bench_assess.py``): ``held_out``
    (``H`` alone), ``control`` (the first control with coefficient 1), ``cross`` (the exact
    ``sum(f(x)**2)`` and ``sum(x**2 - x)``, extrapolating only the cross term) and ``orthogonal``
    (extrapolating the orthogonality defect ``sum((lambda - f/p) f/p)``, zero on average for an
    exact MMSE). With fewer than 3 repeats ``controlled`` is ``held_out``.

    Parameters
    ----------
    denoise : callable
        ``(N, Y, X)`` counts -> ``(N, Y, X)`` estimate of the clean image in the same photon units;
        for a volume, ``(N, D, Y, X)`` -> ``(N, D, Y, X)`` (each volume one image, as a 3D model sees it).
    counts : np.ndarray
        ``(Y, X)`` photon counts, or one ``(D, Y, X)`` volume (every sum and MSE then runs over
        all its voxels).
    fractions : sequence of float
        Split fractions in (0, 1), at least two.
    repeats : int
        Independent splits per fraction (at least 2 for ``mse_std``).
    seed : int
        Same seed, same splits.
    denoised : np.ndarray, optional
        ``denoise(counts)`` if already computed (for the data range).
    progress : callable, optional
        Called with the number of denoised images done.
    clean : np.ndarray, optional
        The clean image at the counts' exposure, for benchmarks: the result's ``sums.truth``.

    Examples
    --------
    >>> result = assess_counts(lambda c: model.denoise(c), counts)  # doctest: +SKIP
    >>> result.mse, result.mse_std, result.psnr  # doctest: +SKIP
    """
    counts = np.asarray(counts, dtype=np.float32)
    if counts.ndim not in (2, 3):
        raise PhotongapError(f"assessment takes one (Y, X) image or one (D, Y, X) volume, got shape {counts.shape}")
    if repeats < 1:
        raise PhotongapError("assessment needs at least one split per fraction")
    extrapolation_weights(fractions)  # refuses unusable fractions before any work
    if counts.sum() <= 0:
        raise PhotongapError("cannot assess an image without photons")
    if denoised is None:
        denoised = denoise(counts[None])[0]
        if progress is not None:
            progress(1)
    generator = torch.Generator().manual_seed(seed)
    sums, nll = split_sums(denoise, counts, fractions, repeats, generator, denoised, progress, clean)
    per_repeat = full_exposure_estimates(sums, method)
    mse = float(per_repeat.mean())
    split_variance = float(per_repeat.var(ddof=1) / repeats) if repeats > 1 else float("nan")
    mse_std = math.sqrt(split_variance + photon_noise_floor(denoised) ** 2)
    data_range = float(np.max(denoised) - np.min(denoised))
    return Assessment(
        mse=mse,
        mse_std=mse_std,
        psnr=psnr_from_mse(mse, data_range),
        nll_per_photon=nll,
        data_range=data_range,
        photons_per_pixel=float(counts.mean(dtype=np.float64)),
        fractions=[float(f) for f in fractions],
        mse_at_fraction=((controlled(sums, extrapolation_weights(fractions)) if method == "controlled" else sums.held_out).mean(axis=1)
                         / sums.pixels).tolist(),
        repeats=repeats,
        sums=sums,
    )


def model_denoiser(model: Any, image: np.ndarray, device: str = "auto") -> Denoiser:
    """``model.denoise`` as the :data:`Denoiser` that grades ``image``: each split told the share of ``image``'s photons it holds.

    A model trained with ``level_input`` reads that share; the whole image holds all of them.
    """
    if not getattr(model.config, "level_input", False):
        return lambda counts: model.denoise(counts, device=device)
    total = max(float(np.sum(image, dtype=np.float64)), 1.0)
    axes = tuple(range(-model.config.dims, 0))
    return lambda counts: model.denoise(counts, device=device, fraction=np.sum(counts, axis=axes, dtype=np.float64) / total)


def assessment_steps(fractions: Sequence[float], repeats: int) -> int:
    """Denoised images per assessed image (for a progress bar)."""
    return len(fractions) * repeats + 1


def plane_hash(plane: np.ndarray) -> str:
    """A short fingerprint of a plane's float32 counts and shape (training-image detection)."""
    plane = np.ascontiguousarray(np.asarray(plane, dtype=np.float32))
    digest = hashlib.sha256(repr(plane.shape).encode() + plane.tobytes())
    return digest.hexdigest()[:24]


def trained_on(info: Mapping[str, Any], plane: np.ndarray) -> bool | None:
    """Whether the model with this ``info`` was trained on ``plane`` (None: the file does not record it).

    Matches the exact counts only: a crop, a rescaled copy or another plane of the same
    acquisition is not detected.
    """
    data = info.get("data") or {}
    hashes = data.get("plane_hashes")
    if hashes is None:
        return None
    fingerprint = plane_hash(plane)
    return fingerprint in set(hashes) and fingerprint not in set(data.get("validation_hashes", ()))


def assess_planes(
    model: Any,
    planes: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    repeats: int = DEFAULT_REPEATS,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Assess a :class:`~photongap.model.GapModel` on each plane, or each ``(D, Y, X)`` volume for a 3D model: the report ``photongap assess`` writes.

    ``planes`` are what the model denoises one at a time (:func:`photongap.pipeline.units_of`):
    ``(Y, X)`` planes for a 2D model, ``(D, Y, X)`` volumes for a 3D one; a 3D model's volume is
    split, denoised and scored whole (one softmax, sums over all its voxels).

    Returns ``{"images": [{"path", "mse", "mse_std", "psnr", "nll_per_photon", "trained_on", ...}],
    "summary": {...}, "warnings": [...]}``; MSEs in photons² per pixel at each image's exposure.
    A plane the model was trained on is flagged and warned about: its grade is optimistic.
    """
    dims = model.config.dims
    for plane, name in zip(planes, names):
        if np.ndim(plane) != dims:
            kind = "(Y, X) planes" if dims == 2 else "(D, Y, X) volumes (a 3D model)"
            raise PhotongapError(f"{name}: this model is assessed on {kind}, got shape {np.shape(plane)}")
    images, notes = [], []
    for number, (plane, name) in enumerate(zip(planes, names)):
        result = assess_counts(model_denoiser(model, plane, device), plane, fractions=fractions, repeats=repeats, seed=seed + number, progress=progress)
        seen = trained_on(model.info, plane)
        if seen:
            notes.append(f"{name} was used to train this model: its grade is optimistic (the network has seen these photons)")
        images.append({"path": str(name), **result.to_dict(), "trained_on": seen})
    if any(image["trained_on"] is None for image in images):
        notes.append("this model file does not record its training images (trained before photongap stored their fingerprints): "
                     "a graded image it was trained on would look better than it is")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return {"images": images, "summary": summarise(images), "warnings": notes,
            "method": {"estimator": "held-out binomial splits less their control variates, MSE(p) = A + B/p extrapolated to p = 1",
                       "fractions": [float(f) for f in fractions], "repeats": repeats, "seed": seed}}


def summarise(images: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean MSE, its standard error, mean PSNR and mean held-out NLL over assessed images."""
    if not images:
        return {"images": 0}
    mse = np.array([image["mse"] for image in images])
    std = np.array([image["mse_std"] for image in images])
    psnr = np.array([image["psnr"] for image in images])
    return {
        "images": len(images),
        "mse": float(mse.mean()),
        "mse_std": float(np.sqrt(np.nansum(std**2)) / len(images)),
        "psnr": float(np.nanmean(psnr)) if np.isfinite(psnr).any() else float("nan"),
        "nll_per_photon": float(np.mean([image["nll_per_photon"] for image in images])),
    }
