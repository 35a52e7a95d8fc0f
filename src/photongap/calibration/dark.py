"""Dark frames (no light, same settings): offset and read noise measured directly."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from photongap.calibration.camera import checked_array


@dataclass(frozen=True)
class DarkStatistics:
    """Offset and read noise of dark frames, ADU, with 1-sigma standard errors."""

    offset: float
    offset_uncertainty: float
    read_noise: float
    read_noise_uncertainty: float
    details: dict[str, Any] = field(default_factory=dict)


def dark_statistics(dark: np.ndarray, *, temporal: bool) -> DarkStatistics:
    """Offset and read noise (with standard errors) from dark frames ``(Y, X)`` or ``(T, Y, X)``.

    The offset is the clipped mean of the per-pixel means. ``temporal`` read noise comes from
    differences of consecutive frames, ``std(x[t+1] - x[t]) / sqrt(2)``, which cancels each
    pixel's fixed offset; otherwise it is the spatial spread of each frame about its median,
    fixed-pattern noise included, as the single-image method sees it.
    """
    dark = checked_array(dark, "dark", (2, 3))
    frames = dark.reshape(-1, *dark.shape[-2:]).astype(np.float64)
    pixel_means = frames.mean(axis=0)
    offset, pattern = clipped_mean_std(pixel_means)
    details: dict[str, Any] = {"dark_frames": len(frames), "dark_fixed_pattern": pattern}
    if temporal and len(frames) >= 2:
        difference_std = clipped_mean_std(frames[1:] - frames[:-1])[1]
        read_noise, samples = difference_std / math.sqrt(2.0), (len(frames) - 1) * pixel_means.size
        # Consecutive differences share a frame (correlation -1/2), which makes their mean
        # square 1.5 times as variable as that of independent differences.
        noise_error = read_noise * math.sqrt(1.5 / (2.0 * samples))
        details["dark_read_noise_kind"] = "temporal"
    else:
        if temporal:
            warnings.warn(
                "a single dark frame's spread includes fixed-pattern noise; a stack of dark frames gives the temporal read noise "
                "that the stack method needs",
                stacklevel=3,
            )
        read_noise = clipped_mean_std(frames - np.median(frames, axis=(1, 2), keepdims=True))[1]
        noise_error = read_noise / math.sqrt(2.0 * frames.size)
        details["dark_read_noise_kind"] = "spatial"
    offset_error = math.sqrt(pattern**2 + read_noise**2 / len(frames)) / math.sqrt(pixel_means.size)
    return DarkStatistics(offset, offset_error, read_noise, noise_error, details)


def clipped_mean_std(values: np.ndarray, clip: float = 4.0) -> tuple[float, float]:
    """Mean and standard deviation after iterative clipping at ``clip`` sigma.

    Clipping at 4 sigma removes hot pixels and cosmic rays and only 0.1% of a Gaussian's
    variance. The start uses the interquartile range; integer data whose noise is below one
    ADU has none, so then the plain standard deviation starts.
    """
    values = values.ravel().astype(np.float64)
    quartiles = np.percentile(values, [25, 50, 75])
    centre, spread = quartiles[1], (quartiles[2] - quartiles[0]) / 1.349 or values.std()
    for _ in range(5):
        if spread == 0:
            break
        kept = values[np.abs(values - centre) <= clip * spread]
        centre, spread = kept.mean(), kept.std(ddof=1) if len(kept) > 1 else 0.0
    return float(centre), float(spread)
