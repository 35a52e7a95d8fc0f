"""Photon transfer: noise statistics binned by brightness, and the stack (temporal) estimator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from photongap.calibration.camera import checked_array, note_saturation, saturation_level
from photongap.errors import PhotongapError

TOO_UNIFORM = "provide frames with a range of brightness or dark frames"
MIN_FRAMES = 3
"""Frames the stack method needs: its residual ``x[t] - (x[t-1] + x[t+1]) / 2`` spans three."""

NUM_BINS = 64
MIN_UNITS_PER_BIN = 20
CHUNK = 1 << 22
"""Values processed at once: bounds the float64 working memory to a few tens of MB."""


@dataclass(frozen=True, eq=False)
class PhotonTransfer:
    """Noise statistics binned by brightness: the data behind a calibration fit.

    Attributes
    ----------
    mean, variance, third_cumulant : np.ndarray
        ``(K,)`` per bin: mean signal (ADU), noise variance (ADU^2), third noise cumulant (ADU^3).
    variance_error, third_cumulant_error : np.ndarray
        ``(K,)`` standard errors, from the scatter of the pixels (or blocks) in each bin.
    counts : np.ndarray
        ``(K,)`` pixels (stack) or blocks (single image) in each bin.
    used : np.ndarray
        ``(K,)`` bool: bins eligible for (or, after fitting, kept by) the fit.
    details : dict
        Where the statistics came from: units, exclusions, saturation level.
    """

    mean: np.ndarray
    variance: np.ndarray
    third_cumulant: np.ndarray
    variance_error: np.ndarray
    third_cumulant_error: np.ndarray
    counts: np.ndarray
    used: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


def photon_transfer_from_stack(frames: np.ndarray) -> PhotonTransfer:
    """Temporal noise of each pixel over repeated frames, binned by brightness.

    Per pixel, ``r[t] = x[t] - (x[t-1] + x[t+1]) / 2`` gives ``var = mean(r^2) / 1.5`` and
    ``k3 = mean(r^3) / 0.75``. This second difference cancels any drift that is linear over
    three frames (bleaching, lamp or focus drift, slow motion), which the plain variance about
    the pixel's mean would count as noise, and, unlike a first difference, it keeps the
    skewness that places the offset. Pixels go into bins by the mean of their four
    neighbours, whose noise is independent of theirs (see :func:`binned`). Pixels that reach
    the saturation level in any frame are excluded, with a warning; so is the one-pixel border.

    Parameters
    ----------
    frames : np.ndarray
        ``(T, Y, X)`` raw camera values of the same field, ``T >= 3``, ``Y, X >= 3``.
    """
    frames = checked_array(frames, "frames", (3,))
    if frames.shape[0] < MIN_FRAMES:
        raise PhotongapError(
            f"frames holds {frames.shape[0]} frame(s); the stack method needs at least {MIN_FRAMES} repeats of the same field: "
            "record more frames, or use photon_transfer_from_image"
        )
    if min(frames.shape[1:]) < 3:
        raise PhotongapError(f"frames of {frames.shape[1:]} pixels are too small: provide frames of at least 3x3 pixels")
    level = saturation_level(frames)
    num_frames, height, width = frames.shape
    mean, variance, third = (np.empty((height, width)) for _ in range(3))
    clipped = np.zeros((height, width), dtype=bool)
    rows = max(1, CHUNK // (num_frames * width))
    for start in range(0, height, rows):
        chunk = slice(start, start + rows)
        values = frames[:, chunk].astype(np.float64)
        residual = values[1:-1] - 0.5 * (values[:-2] + values[2:])
        mean[chunk] = values.mean(axis=0)
        variance[chunk] = np.mean(residual**2, axis=0) / 1.5
        third[chunk] = np.mean(residual**3, axis=0) / 0.75
        if level is not None:
            clipped[chunk] = (values >= level).any(axis=0)
    neighbours = 0.25 * (mean[:-2, 1:-1] + mean[2:, 1:-1] + mean[1:-1, :-2] + mean[1:-1, 2:])
    inner = (slice(1, -1), slice(1, -1))
    details = {"source": "stack", "frames": num_frames, "units": "pixels", "units_total": height * width}
    note_saturation(details, level, int(clipped.sum()), "pixels")
    keep = ~clipped[inner]
    return binned(neighbours[keep], mean[inner][keep], variance[inner][keep], third[inner][keep], level, details)


def binned(
    bin_value: np.ndarray, mean: np.ndarray, variance: np.ndarray, third: np.ndarray, level: float | None, details: dict[str, Any]
) -> PhotonTransfer:
    """Average per-unit (pixel or half block) statistics in bins of ``bin_value``.

    ``bin_value`` is a brightness estimate whose noise is independent of the unit's own.
    Binning by the unit's own mean would select its noise: where read noise spreads the
    means more than the scene does, a bin of high means holds pixels whose read noise
    happened to be high, not brighter pixels, and the slope shrinks (errors in variables).
    With independent selection, each bin's average mean and variance both follow the average
    photon level of its units, so the line holds bin by bin. Bin edges are spaced evenly in
    ``sqrt(brightness)`` so that dim levels, which place the offset, get bins of their own.
    """
    num_bins = int(np.clip(len(mean) // (4 * MIN_UNITS_PER_BIN), 1, NUM_BINS))
    low, high = np.quantile(bin_value, [0.001, 0.999]) if len(mean) else (0.0, 0.0)
    inside = (bin_value >= low) & (bin_value <= high)
    bin_value, mean, variance, third = bin_value[inside], mean[inside], variance[inside], third[inside]
    position = np.sqrt((bin_value - low) / max(high - low, 1e-12))
    index = np.minimum((position * num_bins).astype(np.int64), num_bins - 1)
    counts = np.bincount(index, minlength=num_bins)
    keep = counts >= MIN_UNITS_PER_BIN
    safe = np.maximum(counts, 2)

    def average(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centre = np.bincount(index, values, num_bins) / np.maximum(counts, 1)
        scatter = np.bincount(index, (values - centre[index]) ** 2, num_bins) / (safe - 1)
        return centre[keep], np.sqrt(scatter / safe)[keep]

    bin_mean, _ = average(mean)
    bin_variance, variance_error = average(variance)
    bin_third, third_error = average(third)
    # Clipping truncates the noise of bins near saturation before any pixel reaches it.
    used = np.ones(len(bin_mean), dtype=bool) if level is None else bin_mean + 3.0 * np.sqrt(np.maximum(bin_variance, 0.0)) < level
    details = details | {"units_binned": int(counts[keep].sum())}
    return PhotonTransfer(bin_mean, bin_variance, bin_third, variance_error, third_error, counts[keep], used, details)
