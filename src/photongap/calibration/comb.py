"""Read noise from the photon comb: at high gain, camera values cluster ``gain`` ADU apart.

Photons are whole: ``adu = round(gain * n + offset + read_noise * N(0, 1))``. Where the read
noise is below about 0.4 photon (``gain`` above 2.5 times the read noise, as in qCMOS and
other photon-number-resolving cameras), the values form a comb with teeth ``gain`` apart.
The difference of two values of one pixel (or of two pixels) sits on the same comb whatever
the brightness, so its cosine at the comb's frequency averages to

    C = E[cos(2 pi d / gain)] = exp(-4 pi^2 sigma^2 / gain^2) * sinc(1 / gain)^2,

with ``sigma`` the Gaussian read noise and the sinc the rounding to integers. The photon
variance, the offset and any drift cancel; what is left measures ``sigma`` with a precision
the photon transfer curve cannot reach at high gain, where the read variance is a
sliver under the photon variance. Assumes one gain for all pixels (the comb of bright pixels
blurs with a pixel-to-pixel gain spread) and, for single images, one offset.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from photongap.calibration.transfer import CHUNK

MIN_GAIN = 2.0
"""Below 2 ADU per photon the comb is finer than the integer steps of the values: aliased."""
DETECTION_SIGMAS = 8.0
"""The comb counts as seen when its contrast is this many standard errors above zero (a
high bar: the gain is searched, and a false comb would report a wrong read noise)."""
_GRID_MAX, _GRID_CHUNK, _REFINE_STEPS, _ITERATIONS = 4001, 256, 40, 4


@dataclass(frozen=True)
class PhotonComb:
    """Result of :func:`photon_comb`.

    Attributes
    ----------
    detected : bool
        Whether the comb stands out of the noise; the other numbers mean little otherwise.
    gain : float
        The comb's spacing, ADU per photon (where its contrast peaks).
    contrast, contrast_error : float
        ``C`` above and its standard error.
    read_noise, read_noise_uncertainty : float
        ``sqrt(sigma^2 + 1/12)``, ADU: read noise with the rounding, as the photon transfer
        curve counts it.
    details : dict
        Why the comb was not looked for, or the samples it used.
    """

    detected: bool
    gain: float = math.nan
    contrast: float = 0.0
    contrast_error: float = math.inf
    read_noise: float = math.nan
    read_noise_uncertainty: float = math.inf
    details: dict[str, Any] = field(default_factory=dict)


def photon_comb(data: np.ndarray, gain: float, gain_uncertainty: float, *, temporal: bool, level: float | None = None) -> PhotonComb:
    """Look for the photon comb near ``gain`` and measure the read noise from its contrast.

    Parameters
    ----------
    data : np.ndarray
        Raw camera values: ``(T, Y, X)`` frames of one field when ``temporal`` (differences
        of consecutive frames), else ``(Y, X)`` or ``(T, Y, X)`` images (differences of
        horizontal pixel pairs).
    gain, gain_uncertainty : float
        The photon transfer curve's gain and its 1-sigma error: where to search, ADU/photon.
    level : float, optional
        Saturation level; pixels (or pairs) reaching it, or 0, are left out (clipping flattens
        the noise into a false comb).

    Examples
    --------
    >>> from photongap.calibration import simulate_camera
    >>> frames = simulate_camera(np.full((64, 64), 30.0), gain=8.0, offset=500.0, read_noise=2.0,
    ...                          n_frames=10, generator=np.random.default_rng(0))
    >>> comb = photon_comb(frames, 8.0, 0.05, temporal=True)
    >>> comb.detected, round(comb.read_noise, 1)
    (True, 2.0)
    """
    if gain < MIN_GAIN:
        return PhotonComb(False, details={"comb": f"not looked for: gain below {MIN_GAIN:g} ADU/photon"})
    if data.dtype.kind == "f" and not all(np.array_equal(chunk, np.rint(chunk)) for chunk in _chunks(data)):
        return PhotonComb(False, details={"comb": "not looked for: the values are not whole numbers"})
    histogram, low = _histogram(data, temporal, level)
    values = np.flatnonzero(histogram) + low
    weights = histogram[values - low] / histogram.sum()
    step = int(np.gcd.reduce(np.abs(values)))
    if step > 1 or len(values) < 3:
        return PhotonComb(False, details={"comb": f"not looked for: the values move in steps of {step} ADU"})
    # The comb's peak in gain is about 1 / (2 pi * rms photons in d) wide (relative).
    width = 1.0 / (2.0 * math.pi * max(math.sqrt(np.sum(weights * values**2.0)) / gain, 1.0))
    span = max(5.0 * gain_uncertainty / gain, 5.0 * width)
    candidates = gain * (1.0 + np.linspace(-span, span, min(_GRID_MAX, 2 * math.ceil(span / (0.1 * width)) + 1)))
    gain_precision = 1.0 / max(gain_uncertainty, 1e-12 * gain) ** 2
    comb_gain, variance, comb_gain_error, peak = gain, 0.0, gain_uncertainty, gain
    for _ in range(_ITERATIONS):
        # The damping D(g) = exp(-4 pi^2 sigma^2 / g^2) rises with g, which drags the maximum of
        # a weak comb's C(g) above the gain; C / D, at the current sigma, peaks at the gain itself.
        peak = _peak(values, weights, candidates, variance)
        # Where a weak comb peaks is partly noise: its standard error is the noise of the
        # slope over the curvature. Combined with the photon transfer gain it gives the
        # spacing at which the contrast is read (not the maximum, which noise lifts).
        _, _, slope_error, _ = _contrast_and_error(data, temporal, level, peak)
        step = 0.2 * width * peak
        around = np.array([peak - step, peak, peak + step])
        curvature = -(_corrected(values, weights, around, variance) @ np.array([1.0, -2.0, 1.0])) / step**2
        peak_error = slope_error / _damping(peak, variance) / curvature if curvature > 0 else math.inf
        precision = 1.0 / peak_error**2 + gain_precision
        comb_gain, comb_gain_error = (peak / peak_error**2 + gain * gain_precision) / precision, 1.0 / math.sqrt(precision)
        contrast, contrast_error, _, units = _contrast_and_error(data, temporal, level, comb_gain)
        if not contrast > DETECTION_SIGMAS * contrast_error:
            break
        variance = max(-comb_gain**2 / (4.0 * math.pi**2) * math.log(min(contrast / _damping(comb_gain, 0.0), 1.0)), 0.0)
    details = {
        "comb_gain": comb_gain,
        "comb_gain_uncertainty": comb_gain_error,
        "comb_peak": peak,
        "comb_contrast": contrast,
        "comb_contrast_error": contrast_error,
        "comb_units": units,
    }
    if not contrast > DETECTION_SIGMAS * contrast_error:
        return PhotonComb(False, comb_gain, contrast, contrast_error, details=details | {"comb": "not seen: read noise above ~0.4 photon"})
    read_noise = math.sqrt(variance + 1.0 / 12.0)
    # sigma^2 scales as gain^2 at fixed contrast.
    scale = comb_gain**2 / (4.0 * math.pi**2)
    variance_error = math.hypot(scale * contrast_error / contrast, 2.0 * variance * comb_gain_error / comb_gain)
    return PhotonComb(True, comb_gain, contrast, contrast_error, read_noise, variance_error / (2.0 * read_noise), details | {"comb": "seen"})


def _damping(gain: float | np.ndarray, variance: float) -> float | np.ndarray:
    """``C`` of a perfect comb: Gaussian read noise ``variance`` and rounding, on both values of ``d``."""
    return np.exp(-4.0 * math.pi**2 * variance / gain**2) * (np.sin(math.pi / gain) / (math.pi / gain)) ** 2


def _corrected(values: np.ndarray, weights: np.ndarray, gains: np.ndarray, variance: float) -> np.ndarray:
    return _contrast(values, weights, gains) / _damping(gains, variance)


def _peak(values: np.ndarray, weights: np.ndarray, candidates: np.ndarray, variance: float) -> float:
    """Maximum of ``C / D`` over ``candidates``, refined by golden section between the best one's neighbours."""
    parts = np.array_split(candidates, -(-len(candidates) // _GRID_CHUNK))
    best = int(np.argmax(np.concatenate([_corrected(values, weights, part, variance) for part in parts])))
    low, high = candidates[max(best - 1, 0)], candidates[min(best + 1, len(candidates) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(_REFINE_STEPS):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if _corrected(values, weights, np.array([left, right]), variance) @ np.array([1.0, -1.0]) > 0:
            high = right
        else:
            low = left
    return 0.5 * (low + high)


def _contrast(values: np.ndarray, weights: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """``sum(weights * cos(2 pi values / gain))`` for each gain."""
    return np.cos((2.0 * math.pi / gains)[:, None] * values[None, :]) @ weights


def _chunks(data: np.ndarray) -> Iterator[np.ndarray]:
    """Row chunks of ``(..., Y, X)`` data, a few million values each."""
    frames = data.reshape(-1, *data.shape[-2:])
    rows = max(1, CHUNK // max(1, frames.shape[0] * frames.shape[2]))
    for start in range(0, frames.shape[1], rows):
        yield frames[:, start : start + rows]


def _differences(data: np.ndarray, temporal: bool, level: float | None) -> Iterator[np.ndarray]:
    """``(units, samples)`` whole-number differences of independent units, clipped units left out."""
    for chunk in _chunks(data):
        values = chunk.astype(np.int64)
        if temporal:
            units = values.reshape(len(values), -1).T  # (pixels, T)
            differences = np.diff(units, axis=1)
        else:
            even = values[..., : values.shape[-1] // 2 * 2]
            units = np.stack([even[..., 0::2].ravel(), even[..., 1::2].ravel()], axis=1)  # (pairs, 2)
            differences = units[:, 1:] - units[:, :1]
        clipped = (units <= 0).any(axis=1) | (False if level is None else (units >= level).any(axis=1))
        yield differences[~clipped]


def _histogram(data: np.ndarray, temporal: bool, level: float | None) -> tuple[np.ndarray, int]:
    """Counts of each difference value, from ``low`` up (two passes: range, then counts)."""
    low, high = 0, 0
    for differences in _differences(data, temporal, level):
        if differences.size:
            low, high = min(low, int(differences.min())), max(high, int(differences.max()))
    histogram = np.zeros(high - low + 1, dtype=np.int64)
    for differences in _differences(data, temporal, level):
        histogram += np.bincount((differences - low).ravel(), minlength=len(histogram))
    return histogram, low


def _contrast_and_error(data: np.ndarray, temporal: bool, level: float | None, gain: float) -> tuple[float, float, float, int]:
    """``C`` at ``gain``, its standard error and that of ``dC/dgain``, from the scatter of the units' own means."""
    cosines, slopes = [], []
    for d in _differences(data, temporal, level):
        if d.size:
            phase = 2.0 * math.pi / gain * d
            cosines.append(np.cos(phase).mean(axis=1))
            slopes.append((np.sin(phase) * phase / gain).mean(axis=1))
    if sum(map(len, cosines)) < 2:
        return 0.0, math.inf, math.inf, sum(map(len, cosines))
    means, derivative = np.concatenate(cosines), np.concatenate(slopes)
    root = math.sqrt(len(means))
    return float(means.mean()), float(means.std(ddof=1) / root), float(derivative.std(ddof=1) / root), len(means)
