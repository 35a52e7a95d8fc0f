"""The photon transfer fit: gain, offset and read noise from binned noise statistics."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from photongap.calibration.transfer import TOO_UNIFORM, PhotonTransfer
from photongap.errors import PhotongapError

BOOTSTRAP_SAMPLES = 200
NEGATIVE_GAIN = "negative gain: is this photon-count data already, or is the background subtracted?"
RESOLVED_SIGMAS = 2.0
"""The read variance counts as measured when it is this many standard errors above zero; else a bound."""

# Robust line fit: a few Huber steps (convex, so a safe start) then Tukey's biweight,
# which gives outlying bins zero weight. Tuning constants are the usual 95%-efficient ones.
_HUBER, _TUKEY = 1.345, 4.685
_HUBER_STEPS, _TUKEY_STEPS = 6, 14


class PhotonTransferFit(NamedTuple):
    """Result of :func:`fit_photon_transfer` (a tuple); uncertainties are 1-sigma, from a bootstrap."""

    gain: float
    offset: float
    read_noise: float
    gain_uncertainty: float
    offset_uncertainty: float
    read_noise_uncertainty: float
    photon_transfer: PhotonTransfer
    details: dict[str, Any]
    read_noise_upper: float | None = None
    """Set when the read variance is not ``RESOLVED_SIGMAS`` standard errors above zero: the
    upper bound ``sqrt(max(v, 0) + 2 sd(v))`` on the read noise, ADU (97.7% one-sided)."""


def fit_photon_transfer(
    ptc: PhotonTransfer,
    *,
    read_noise: float | None = None,
    offset: float | None = None,
    generator: np.random.Generator | None = None,
) -> PhotonTransferFit:
    """Robust weighted fit of ``var = gain * (mean - offset) + read_noise**2`` to the bins.

    The line alone fixes the slope (gain) and the intercept ``read_noise^2 - gain * offset``,
    not offset and read noise apart. Known values (from dark frames) close that gap: with both,
    only the slope is fitted through the point ``(offset, read_noise^2)``. Without them, the
    offset comes from the third cumulant, ``k3 = gain^2 * (mean - offset)``, to which Gaussian
    read noise adds nothing: each bin gives ``offset = mean - k3 / gain^2`` and a robust
    weighted mean combines them, dim bins weighing most. Unlike the darkest pixels' level, this
    needs no pixel to be truly dark, but it assumes symmetric read noise and an offset well
    above zero (no clipping of the dark level).

    Both fits are iteratively reweighted least squares (Huber, then Tukey's biweight); bins
    given zero weight count as rejected. Uncertainties come from ``BOOTSTRAP_SAMPLES`` refits
    with every bin's variance and third cumulant perturbed by its standard error, enlarged by
    the fit's residual scatter when that exceeds 1 (so a poor fit reports a poor precision).
    Resampling whole bins instead would fail when a few dim bins carry the offset.

    The read variance ``intercept + gain * offset`` inherits the offset's error times the gain:
    at high gain a fraction of an ADU of offset error is more than the read variance itself.
    It is then reported, not clipped: ``details["read_variance"]`` with its standard error,
    the read noise ``sqrt(max(v, 0))`` and, when ``v`` is under two standard errors,
    ``read_noise_upper``. :func:`~photongap.calibration.comb.photon_comb` resolves it when
    photons are resolved.

    Parameters
    ----------
    ptc : PhotonTransfer
        Binned statistics; only ``ptc.used`` bins enter.
    read_noise, offset : float, optional
        Known read noise (ADU) and offset (ADU), e.g. from dark frames.
    generator : np.random.Generator, optional
        For the bootstrap; the default (seed 0) makes the result reproducible.

    Returns
    -------
    PhotonTransferFit
        With ``photon_transfer.used`` set to the bins the variance fit kept.
    """
    eligible = np.flatnonzero(ptc.used)
    both_known = read_noise is not None and offset is not None
    if len(eligible) < (1 if both_known else 3):
        raise PhotongapError(f"only {len(eligible)} brightness level(s) have enough pixels to fit the photon transfer curve: {TOO_UNIFORM}")
    generator = np.random.default_rng(0) if generator is None else generator
    num = len(eligible)
    mean, variance, third, counts = ptc.mean[eligible], ptc.variance[eligible], ptc.third_cumulant[eligible], ptc.counts[eligible]
    known = read_noise**2 if both_known else 0.0
    design = (mean - offset)[:, None] if both_known else np.stack([mean, np.ones(num)], axis=1)
    # A bin's measured error grows with its measured variance, so weighting by it favours bins
    # that came out low and biases the line down. Errors that follow the fitted curve instead,
    # error ~ curve**power / sqrt(count), scaled by the median observed ratio, avoid that.
    data = np.ones((1, num))
    theta, _ = _robust_fit(design, variance - known, ptc.variance_error[eligible], data)
    curve = np.maximum(design @ theta[:, 0] + known, 1e-6 * np.abs(variance).max())
    variance_error = _error_model(ptc.variance_error[eligible], counts, curve, 1.0)
    theta, weights = _robust_fit(design, variance - known, variance_error, data)
    variance_scatter = _residual_rms(variance - known - design @ theta[:, 0], variance_error, weights[0] > 0)
    noise = generator.standard_normal((2, BOOTSTRAP_SAMPLES, num))
    variances = np.vstack([variance, variance + max(1.0, variance_scatter) * variance_error * noise[0]])
    multiplicity = np.ones((BOOTSTRAP_SAMPLES + 1, num))
    if both_known:
        (gain,), line_weights = _robust_fit(design, variances - known, variance_error, multiplicity)
        offsets, read_variance = np.full_like(gain, offset), np.full_like(gain, known)
    else:
        (gain, intercept), line_weights = _robust_fit(design, variances, variance_error, multiplicity)
        if offset is not None:
            offsets = np.full_like(gain, offset)
        elif read_noise is not None:
            offsets = (read_noise**2 - intercept) / gain
        else:
            third_error = _error_model(ptc.third_cumulant_error[eligible], counts, curve, 1.5)
            offset_error = third_error / gain[0] ** 2
            (first,), third_weights = _robust_fit(np.ones((num, 1)), mean - third / gain[0] ** 2, offset_error, line_weights[:1] > 0)
            third_scatter = _residual_rms(mean - third / gain[0] ** 2 - first[0], offset_error, third_weights[0] > 0)
            thirds = np.vstack([third, third + max(1.0, third_scatter) * third_error * noise[1]])
            scale = gain[:, None] ** 2
            (offsets,), third_weights = _robust_fit(
                np.ones((num, 1)), mean - thirds / scale, third_error / scale, multiplicity * (line_weights > 0)
            )
        read_variance = intercept + gain * offsets
    read_noises = np.sqrt(np.maximum(read_variance, 0.0))
    spread = [float(np.nanstd(values[1:])) for values in (gain, offsets, read_noises)]
    read_variance_error = float(np.nanstd(read_variance[1:]))
    resolved = read_noise is not None or read_variance[0] > RESOLVED_SIGMAS * read_variance_error
    upper = None if resolved else float(np.sqrt(max(read_variance[0], 0.0) + RESOLVED_SIGMAS * read_variance_error))
    used = np.zeros_like(ptc.used)
    used[eligible] = line_weights[0] > 0
    if not (np.isfinite(gain[0]) and spread[0] <= 0.5 * abs(gain[0])):
        raise PhotongapError(
            f"the photon transfer curve is too flat or too noisy to fit a slope (gain {gain[0]:.3g} ± {spread[0]:.2g} ADU/photon): "
            f"{TOO_UNIFORM}"
        )
    if gain[0] <= 0:
        raise PhotongapError(f"{NEGATIVE_GAIN} (fitted {gain[0]:.3g} ADU/photon)")
    if read_variance[0] < -3.0 * read_variance_error:
        warnings.warn(
            f"the fitted read noise variance is negative beyond its error ({read_variance[0]:.3g} ± {read_variance_error:.2g} ADU^2): "
            "the noise is below the camera model's, as in processed (filtered, scaled, compressed) data; the calibration is unreliable.",
            stacklevel=2,
        )
    if variance_scatter > 3.0:
        warnings.warn(
            f"the noise does not follow a line in the mean (bins scatter {variance_scatter:.1f} times their errors): the frames may not "
            "repeat a static field, or the data was processed (scaled non-linearly, filtered, compressed); the calibration is unreliable.",
            stacklevel=2,
        )
    if offset is None and read_noise is None and spread[1] > gain[0]:
        warnings.warn(
            f"the offset is poorly constrained (± {spread[1]:.2g} ADU, more than one photon): the data has too few dim pixels; "
            "provide dark frames.",
            stacklevel=2,
        )
    details = {
        "bins": num,
        "bins_used": int(used.sum()),
        "fit_residual_rms": variance_scatter,
        "offset_source": "given" if offset is not None else ("read noise and intercept" if read_noise is not None else "third cumulant"),
        "bootstrap_samples": BOOTSTRAP_SAMPLES,
        "read_variance": float(read_variance[0]),
        "read_variance_uncertainty": read_variance_error,
        "read_noise_resolved": bool(resolved),
    }
    if offset is None and read_noise is None:
        details["offset_bins_used"] = int((third_weights[0] > 0).sum())
        details["offset_residual_rms"] = third_scatter
    fitted = replace(ptc, used=used)
    return PhotonTransferFit(float(gain[0]), float(offsets[0]), float(read_noises[0]), *spread, fitted, details, upper)


def _residual_rms(residual: np.ndarray, error: np.ndarray, kept: np.ndarray) -> float:
    """Root mean square of the standardised residuals of the kept bins (1 for a good fit)."""
    return float(np.sqrt(np.mean((residual[kept] / error[kept]) ** 2))) if kept.any() else float("inf")


def _robust_fit(design: np.ndarray, target: np.ndarray, error: np.ndarray, multiplicity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IRLS for ``target ~ design @ theta``, one fit per row of ``multiplicity`` (bootstrap).

    ``design`` is ``(K, p)``; ``target``, ``error`` are ``(K,)`` or ``(B, K)``;
    ``multiplicity`` is ``(B, K)``. Returns ``theta`` as ``(p, B)`` and the final weights ``(B, K)``.
    """
    target, error = np.broadcast_to(target, multiplicity.shape), np.broadcast_to(error, multiplicity.shape)
    base = multiplicity / np.maximum(error, 1e-300) ** 2
    weights = base
    for step in range(_HUBER_STEPS + _TUKEY_STEPS + 1):
        normal = np.einsum("bk,ki,kj->bij", weights, design, design)
        theta = np.einsum("bij,bj->bi", np.linalg.pinv(normal), np.einsum("bk,ki,bk->bi", weights, design, target))
        if step == _HUBER_STEPS + _TUKEY_STEPS:
            break
        z = np.abs(target - theta @ design.T) / error
        scale = np.maximum(1.4826 * _weighted_median(z, multiplicity), 1e-12)[:, None]
        if step < _HUBER_STEPS:
            weights = base * np.minimum(1.0, _HUBER * scale / np.maximum(z, 1e-300))
        else:
            weights = base * np.clip(1.0 - (z / (_TUKEY * scale)) ** 2, 0.0, None) ** 2
    return theta.T, weights


def _error_model(observed: np.ndarray, counts: np.ndarray, curve: np.ndarray, power: float) -> np.ndarray:
    """Standard errors ``c * curve**power / sqrt(counts)``, ``c`` the median observed ratio."""
    shape = curve**power / np.sqrt(counts)
    return np.median(observed / shape) * shape


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    order = np.argsort(values, axis=1)
    cumulative = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)
    position = np.minimum(np.sum(cumulative < 0.5 * cumulative[:, -1:], axis=1), values.shape[1] - 1)
    return np.take_along_axis(values, order, axis=1)[np.arange(len(values)), position]
