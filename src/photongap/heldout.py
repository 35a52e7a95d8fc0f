"""The held-out splits of one image and the estimators of its full-exposure MSE built on them.

:func:`split_sums` splits, denoises and keeps only image sums (:class:`SplitSums`);
:func:`full_exposure_estimates` turns them into estimates, by :func:`controlled` (control
variates) and :func:`full_exposure_mse` (the ``A + B/p`` extrapolation). The whole assessment,
its assumptions and its measured accuracy are in :mod:`photongap.assessment`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from photongap.errors import PhotongapError
from photongap.physics import held_out_squared_error, split_counts

NLL_FRACTION = 0.5
"""The split whose held-out photon likelihood is reported (the nearest fraction to it)."""

Method = Literal["held_out", "control", "cross", "orthogonal", "controlled"]
Denoiser = Callable[[np.ndarray], np.ndarray]
"""``(N, Y, X)`` counts -> ``(N, Y, X)`` estimate of their clean image, in the counts' photon units
(``(N, D, Y, X)`` volumes for a 3D model: each volume one image)."""


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


def photon_noise_floor(clean: np.ndarray) -> float:
    """Standard error below which no unbiased estimate of an image's MSE can go: ``sqrt(2 sum(lambda**2)) / N``.

    Even for a perfect denoiser, the minimum-variance unbiased estimate of ``sum((lambda - c)**2)``
    from Poisson counts is ``sum((x - c)**2 - x)``, whose variance at ``c = lambda`` is
    ``2 sum(lambda**2)``; ``clean`` (the denoised image) stands in for ``lambda``.
    """
    clean = np.asarray(clean, dtype=np.float64)
    return float(math.sqrt(2.0 * np.sum(clean**2)) / clean.size)


@dataclass(frozen=True)
class SplitSums:
    """What an assessment measures on its splits: image sums, ``(F, R)`` arrays (fraction, repeat).

    ``held_out``: :func:`~photongap.physics.held_out_squared_error` of ``f(a)`` against ``b``;
    ``zero``: the same for the zero image (an estimate of ``sum(lambda**2)`` from ``b`` alone);
    ``power``: ``sum((f(a)/p)**2)``; ``linear``: ``sum(f(x) * (b/(1-p) - x))``; ``signal``:
    ``sum(x**2 - x)`` of the whole image (unbiased for ``sum(lambda**2)``); ``full_power``:
    ``sum(f(x)**2)``; ``truth``: ``sum((lambda - f(a)/p)**2)`` where the clean image was given
    (benchmarks only). All in photons² of the full exposure.

    Given the image ``x``, ``zero - signal`` and ``linear`` have mean exactly zero over the splits
    (``E[b | x] = (1-p) x`` and ``E[zero | x] = sum(x**2 - x)``): control variates that can
    take out the split noise without bias (:func:`full_exposure_estimates`).
    """

    fractions: tuple[float, ...]
    held_out: np.ndarray
    zero: np.ndarray
    power: np.ndarray
    linear: np.ndarray
    signal: float
    full_power: float
    pixels: int
    truth: np.ndarray | None = None

    @property
    def cross(self) -> np.ndarray:
        """Unbiased estimates of ``sum(lambda * f(a) / p)``: the held-out error minus its two known parts."""
        return (self.power - (self.held_out - self.zero)) / 2


def split_sums(
    denoise: Denoiser,
    counts: np.ndarray,
    fractions: Sequence[float],
    repeats: int,
    generator: torch.Generator,
    denoised: np.ndarray,
    progress: Callable[[int], None] | None = None,
    clean: np.ndarray | None = None,
) -> tuple[SplitSums, float]:
    """Split ``counts`` ``repeats`` times at each fraction, denoise each input, sum what :class:`SplitSums` holds.

    ``counts``: one ``(Y, X)`` image or one ``(D, Y, X)`` volume; ``denoise`` gets ``(repeats, *counts.shape)``.

    Returns the sums and the held-out photon NLL per photon at the fraction nearest :data:`NLL_FRACTION`.
    One fraction's denoised splits are in memory at a time.
    """
    shape = (len(fractions), repeats)
    held_out, zero, power, linear = np.empty(shape), np.empty(shape), np.empty(shape), np.empty(shape)
    full = torch.from_numpy(np.asarray(denoised, dtype=np.float64)).reshape(1, -1)
    truth = np.empty(shape) if clean is not None else None
    nearest = int(np.argmin(np.abs(np.asarray(fractions) - NLL_FRACTION)))
    whole = torch.from_numpy(counts)[None, None].expand(repeats, 1, *counts.shape).contiguous()
    nll = float("nan")
    for row, fraction in enumerate(fractions):
        p = torch.full((repeats,), float(fraction))
        split = split_counts(whole, p, generator)
        estimate = torch.from_numpy(np.asarray(denoise(split.input_counts[:, 0].numpy()), dtype=np.float32))[:, None]
        held_out[row] = held_out_squared_error(estimate, split.target_counts, p).numpy()
        zero[row] = held_out_squared_error(torch.zeros_like(estimate), split.target_counts, p).numpy()
        scaled = estimate.double().reshape(repeats, -1) / fraction
        power[row] = (scaled**2).sum(dim=1).numpy()
        linear[row] = (full * (split.target_counts.double().reshape(repeats, -1) / (1 - fraction) - whole[:1].double().reshape(1, -1))).sum(dim=1).numpy()
        if truth is not None:
            truth[row] = ((torch.from_numpy(np.asarray(clean, dtype=np.float64)).reshape(1, -1) - scaled) ** 2).sum(dim=1).numpy()
        if row == nearest:
            # One distribution per image: over every axis after the channel axis (a volume's too).
            probability = estimate.double() / estimate.double().sum(dim=tuple(range(2, estimate.dim())), keepdim=True)
            target = split.target_counts.double()
            nll = float(-(target * probability.clamp_min(1e-300).log()).sum() / target.sum().clamp_min(1.0))
        if progress is not None:
            progress(repeats)
    counts64 = counts.astype(np.float64)
    sums = SplitSums(tuple(float(f) for f in fractions), held_out, zero, power, linear, float(np.sum(counts64**2 - counts64)),
                     float(np.sum(np.asarray(denoised, dtype=np.float64) ** 2)), counts.size, truth)
    return sums, nll


def controlled(sums: SplitSums, weights: np.ndarray) -> np.ndarray:
    """``held_out - c (zero - signal) - d linear``: the held-out errors less their split noise that the control variates explain.

    ``(c, d)`` minimise the variance of the extrapolated estimate: least squares of ``held_out``
    on the two controls, within each fraction (about its own mean), each fraction weighted by
    its extrapolation weight squared. Both controls have mean zero given the image, whatever
    ``(c, d)``, so the result stays unbiased (up to the O(1/splits) of fitting them on the same splits).
    """
    def centred(values: np.ndarray) -> np.ndarray:
        return (values - values.mean(axis=1, keepdims=True)) * np.abs(weights)[:, None]

    controls = np.stack([sums.zero - sums.signal, sums.linear], axis=-1)  # (F, R, 2)
    if sums.held_out.shape[1] < 3:
        return sums.held_out  # too few splits to fit the coefficients
    design = np.stack([centred(controls[..., k]) for k in range(2)], axis=-1).reshape(-1, 2)
    coefficients = np.linalg.lstsq(design, centred(sums.held_out).reshape(-1), rcond=None)[0]
    return sums.held_out - controls @ coefficients


def full_exposure_estimates(sums: SplitSums, method: Method = "held_out") -> np.ndarray:
    """``(R,)`` estimates of the full-exposure MSE per pixel, one per repeat (each an extrapolation of its splits).

    See :func:`assess_counts` for the methods.
    """
    weights = extrapolation_weights(sums.fractions)
    if method == "held_out":
        total = weights @ sums.held_out
    elif method == "control":
        total = sums.signal + weights @ (sums.held_out - sums.zero)
    elif method == "cross":
        total = sums.signal + sums.full_power - 2 * weights @ sums.cross
    elif method == "orthogonal":
        total = sums.signal - sums.full_power - 2 * weights @ (sums.cross - sums.power)
    elif method == "controlled":
        total = weights @ controlled(sums, weights)
    else:
        raise PhotongapError(f"unknown assessment method {method!r}")
    return total / sums.pixels
