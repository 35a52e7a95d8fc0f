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
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from photongap.errors import PhotongapError
from photongap.physics import held_out_squared_error, split_counts

DEFAULT_FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9)
"""Input fractions of the splits: inside the default preset's trained range (50-95 % of the data's level)."""
DEFAULT_REPEATS = 16
"""Independent splits per fraction."""
NLL_FRACTION = 0.5
"""The split whose held-out photon likelihood is reported (the nearest fraction to it)."""

Method = Literal["held_out", "control", "cross"]
Denoiser = Callable[[np.ndarray], np.ndarray]
"""``(N, Y, X)`` counts -> ``(N, Y, X)`` estimate of their clean image, in the counts' photon units."""


def extrapolation_weights(fractions: Sequence[float]) -> np.ndarray:
    """Weights ``w`` with ``sum(w) = 1`` and ``sum(w / p) = 1``: ``sum(w * m(p))`` is the fit ``A + B/p`` at ``p = 1``.

    Weighted least squares with weights ``(1 - p)**2``: the held-out estimate's variance is
    dominated by the held-out photons' own shot noise, ``~ 2 sum(lambda**2) / (1 - p)**2``.
    """
    p = np.asarray(fractions, dtype=np.float64)
    if p.ndim != 1 or len(np.unique(p)) < 2 or np.any((p <= 0) | (p >= 1)):
        raise PhotongapError(f"assessment needs at least two distinct split fractions in (0, 1), got {list(fractions)}")
    design = np.stack([np.ones_like(p), 1.0 / p], axis=1)
    weights = (1.0 - p) ** 2
    # Least squares: coefficients = (X^T W X)^-1 X^T W m; the prediction at 1/p = 1 is linear in m.
    solve = np.linalg.solve(design.T @ (weights[:, None] * design), design.T * weights)
    return np.array([1.0, 1.0]) @ solve


def full_exposure_mse(mse_at_fraction: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """Extrapolate held-out MSEs at fractions ``p`` to ``p = 1`` with ``MSE(p) = A + B / p``.

    ``A + B/p`` is exact for any linear denoiser (squared bias plus a variance that scales with
    the inverse exposure) and for the raw counts (``A = 0``); a nonlinear denoiser's curve is
    close to it over ``p`` in [0.5, 1]. The result is a fixed linear combination of the
    inputs (:func:`extrapolation_weights`), so it stays unbiased where the model holds.

    Parameters
    ----------
    mse_at_fraction : np.ndarray
        ``(..., F)`` held-out mean squared errors, one per fraction (last axis).
    """
    return np.asarray(mse_at_fraction, dtype=np.float64) @ extrapolation_weights(fractions)


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
        The split fractions and the held-out MSE at each (mean over repeats, full-exposure photons²).
    repeats : int
        Independent splits per fraction.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def psnr_from_mse(mse: float, data_range: float) -> float:
    """``10 log10(data_range**2 / mse)``; nan where the MSE estimate is not positive."""
    return 10.0 * math.log10(data_range**2 / mse) if mse > 0 and data_range > 0 else float("nan")


def photon_noise_floor(clean: np.ndarray) -> float:
    """Standard error below which no unbiased estimate of an image's MSE can go: ``sqrt(2 sum(lambda**2)) / N``.

    Even for a perfect denoiser, the minimum-variance unbiased estimate of ``sum((lambda - c)**2)``
    from Poisson counts is ``sum((x - c)**2 - x)``, whose variance at ``c = lambda`` is
    ``2 sum(lambda**2)``; ``clean`` (the denoised image) stands in for ``lambda``.
    """
    clean = np.asarray(clean, dtype=np.float64)
    return float(math.sqrt(2.0 * np.sum(clean**2)) / clean.size)


def assess_counts(
    denoise: Denoiser,
    counts: np.ndarray,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    repeats: int = DEFAULT_REPEATS,
    seed: int = 0,
    denoised: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
    method: Method = "held_out",
) -> Assessment:
    """Estimate the MSE of ``denoise(counts)`` against the unknown clean image.

    For each fraction ``p`` and repeat, split ``a ~ Binomial(counts, p)``, ``b = counts - a``, and
    score ``denoise(a)`` against ``b`` with :func:`~photongap.physics.held_out_squared_error`:
    an unbiased estimate of ``MSE(p) = mean((lambda - denoise(a)/p)**2)``. Average the repeats,
    then extrapolate to the full exposure with :func:`full_exposure_mse` (``MSE(p) = A + B/p``).
    ``mse_std`` is the standard error of the same linear combination over the repeats.

    Assumptions: ``counts`` are Poisson photon counts (no read noise, which does not thin; see
    :mod:`photongap.exposure`); pixels are independent given ``lambda``; ``denoise`` treats a
    thinned image as it would an acquisition at that exposure (true for GAP, which is trained on
    thinned inputs) and was not trained on these photons; the MSE curve is ``A + B/p`` between the
    fractions and 1. The estimate is of the *expected* MSE over the image's shot noise; for images
    of many pixels it is close to the realised one. ``mse_std`` adds the randomness of the splits
    (their spread over repeats) and the photon-noise floor of any unbiased estimate
    (:func:`photon_noise_floor`): at ~0.1 photons/px that floor can be as large as the MSE.

    ``method`` (for comparisons; measured in ``benchmarks/bench_assess.py``): ``held_out`` grades
    each split on its held-out photons alone; ``control`` replaces their estimate of
    ``sum(lambda**2)`` by the whole image's ``sum(x**2 - x)``; ``cross`` also uses the exact
    ``sum(denoise(x)**2)`` and extrapolates only the cross term.

    Parameters
    ----------
    denoise : callable
        ``(N, Y, X)`` counts -> ``(N, Y, X)`` estimate of the clean image in the same photon units.
    counts : np.ndarray
        ``(Y, X)`` photon counts.
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

    Examples
    --------
    >>> result = assess_counts(lambda c: model.denoise(c), counts)  # doctest: +SKIP
    >>> result.mse, result.mse_std, result.psnr  # doctest: +SKIP
    """
    counts = np.asarray(counts, dtype=np.float32)
    if counts.ndim != 2:
        raise PhotongapError(f"assessment takes one 2D image, got shape {counts.shape}")
    if repeats < 1:
        raise PhotongapError("assessment needs at least one split per fraction")
    extrapolation_weights(fractions)  # refuses unusable fractions before any work
    if counts.sum() <= 0:
        raise PhotongapError("cannot assess an image without photons")
    generator = torch.Generator().manual_seed(seed)
    p = torch.tensor([f for f in fractions for _ in range(repeats)], dtype=torch.float32)
    whole = torch.from_numpy(counts)[None, None].expand(len(p), 1, *counts.shape).contiguous()
    split = split_counts(whole, p, generator)
    estimates = np.empty((len(p), *counts.shape), dtype=np.float32)
    for start in range(0, len(p), repeats):
        estimates[start : start + repeats] = denoise(split.input_counts[start : start + repeats, 0].numpy())
        if progress is not None:
            progress(repeats)
    if denoised is None:
        denoised = denoise(counts[None])[0]
        if progress is not None:
            progress(1)
    estimate = torch.from_numpy(estimates)[:, None]
    pixels = counts.size
    held_out = held_out_squared_error(estimate, split.target_counts, p).numpy()
    if method == "held_out":
        errors = held_out / pixels
    else:
        # The same held-out photons grade the zero image: an estimate of sum(lambda**2) that shares
        # their shot noise, which the whole image's sum(x**2 - x) estimates far more precisely.
        zero = held_out_squared_error(torch.zeros_like(estimate), split.target_counts, p).numpy()
        counts64 = counts.astype(np.float64)
        signal_power = float(np.sum(counts64**2 - counts64))
    if method == "control":
        errors = (held_out - zero + signal_power) / pixels
    elif method != "held_out":
        scaled = (estimate.double().reshape(len(p), -1) / p.double()[:, None]) ** 2
        cross = (scaled.sum(dim=1).numpy() - (held_out - zero)) / 2  # estimates sum(lambda * estimate / p)
        errors = (signal_power + float(np.sum(np.asarray(denoised, dtype=np.float64) ** 2)) - 2 * cross) / pixels
    errors = errors.reshape(len(fractions), repeats)
    per_repeat = full_exposure_mse(errors.T, fractions)  # (repeats,): the extrapolation of each repeat's splits
    mse = float(per_repeat.mean())
    split_variance = float(per_repeat.var(ddof=1) / repeats) if repeats > 1 else float("nan")
    mse_std = math.sqrt(split_variance + photon_noise_floor(denoised) ** 2)

    nearest = int(np.argmin(np.abs(np.asarray(fractions) - NLL_FRACTION)))
    rows = slice(nearest * repeats, (nearest + 1) * repeats)
    probability = estimate[rows].double() / estimate[rows].double().sum(dim=(-2, -1), keepdim=True)
    held_out = split.target_counts[rows].double()
    nll = float((-(held_out * probability.clamp_min(1e-300).log()).sum() / held_out.sum().clamp_min(1.0)))

    data_range = float(np.max(denoised) - np.min(denoised))
    return Assessment(
        mse=mse,
        mse_std=mse_std,
        psnr=psnr_from_mse(mse, data_range),
        nll_per_photon=nll,
        data_range=data_range,
        photons_per_pixel=float(counts.mean(dtype=np.float64)),
        fractions=[float(f) for f in fractions],
        mse_at_fraction=errors.mean(axis=1).tolist(),
        repeats=repeats,
    )


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
    """Assess a :class:`~photongap.model.GapModel` on each plane: the report ``photongap assess`` writes.

    Returns ``{"images": [{"path", "mse", "mse_std", "psnr", "nll_per_photon", "trained_on", ...}],
    "summary": {...}, "warnings": [...]}``; MSEs in photons² per pixel at each image's exposure.
    A plane the model was trained on is flagged and warned about: its grade is optimistic.
    """
    def denoise(counts: np.ndarray) -> np.ndarray:
        return model.denoise(counts, device=device)

    images, notes = [], []
    for number, (plane, name) in enumerate(zip(planes, names)):
        result = assess_counts(denoise, plane, fractions=fractions, repeats=repeats, seed=seed + number, progress=progress)
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
            "method": {"estimator": "held-out binomial splits, MSE(p) = A + B/p extrapolated to p = 1",
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
