"""The camera model as the calibration sees it: simulated frames, the clip level, raw-data checks."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from photongap.errors import PhotongapError


def simulate_camera(
    photons_mean: np.ndarray,
    *,
    gain: float,
    offset: float,
    read_noise: float,
    n_frames: int | None,
    generator: np.random.Generator,
    bit_depth: int = 16,
) -> np.ndarray:
    """Camera frames of a clean scene: ``round(gain * Poisson(photons_mean) + offset + N(0, read_noise^2))``.

    Clipped to ``[0, 2**bit_depth - 1]`` and returned as ``uint16``, shape ``(Y, X)`` or
    ``(n_frames, Y, X)``.

    Examples
    --------
    >>> frames = simulate_camera(np.full((4, 4), 10.0), gain=2.0, offset=100.0, read_noise=1.0,
    ...                          n_frames=3, generator=np.random.default_rng(0))
    >>> frames.shape, frames.dtype
    ((3, 4, 4), dtype('uint16'))
    """
    photons_mean = np.asarray(photons_mean, dtype=np.float64)
    if not np.isfinite(photons_mean).all() or (photons_mean < 0).any():
        raise PhotongapError("photons_mean must be finite and non-negative photons per pixel")
    if not 1 <= bit_depth <= 16:
        raise PhotongapError(f"bit_depth must be between 1 and 16, got {bit_depth}")
    if gain <= 0 or read_noise < 0:
        raise PhotongapError("gain must be positive and read_noise non-negative")
    shape = photons_mean.shape if n_frames is None else (n_frames, *photons_mean.shape)
    adu = generator.poisson(np.broadcast_to(photons_mean, shape)) * float(gain) + float(offset)
    if read_noise > 0:
        adu += generator.normal(0.0, float(read_noise), size=shape)
    return np.clip(np.rint(adu), 0, 2**bit_depth - 1).astype(np.uint16)


def saturation_level(values: np.ndarray) -> float | None:
    """Where the camera clips: the dtype's maximum if reached, else a pile-up at the data maximum.

    A pile-up is at least 5 values at the maximum and more than at any of the ten next lower
    values present; a natural tail thins out instead (comparing with several values copes
    with the comb that a gain above 1 ADU/photon leaves in the histogram). None when nothing
    clips.
    """
    values = np.asarray(values).ravel()
    top = values.max()
    if values.dtype.kind in "iu" and top == np.iinfo(values.dtype).max:
        return float(top)
    at_top = int(np.count_nonzero(values == top))
    below = values[values < top]
    if at_top < 5 or below.size == 0:
        return None
    high = below[below >= np.partition(below, max(0, below.size - 10 * at_top))[max(0, below.size - 10 * at_top)]]
    _, counts = np.unique(high, return_counts=True)
    return float(top) if at_top > counts[-10:].max() else None


def checked_array(data: Any, what: str, ndims: tuple[int, ...]) -> np.ndarray:
    """``data`` as a numeric array of one of ``ndims`` dimensions, refusing what raw frames cannot be."""
    array = np.asarray(data)
    if array.dtype.kind not in "iuf":
        raise PhotongapError(f"{what} must be a numeric array, got dtype {array.dtype}: provide raw camera values (ADU)")
    if array.ndim not in ndims:
        shapes = " or ".join({2: "(Y, X)", 3: "(T, Y, X)"}[n] for n in ndims)
        raise PhotongapError(f"{what} must be {shapes}, got shape {array.shape}")
    if array.size == 0:
        raise PhotongapError(f"{what} is empty: provide raw camera frames")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise PhotongapError(
            f"{what} holds {bad} NaN or Inf value(s): provide raw camera frames, without masking, division or background subtraction"
        )
    return array


def note_saturation(details: dict[str, Any], level: float | None, excluded: int, units: str) -> None:
    """Record the clip level and what it excluded in ``details``; warn when anything was."""
    details["saturation_level"] = level
    details["units_saturated"] = excluded
    if excluded:
        warnings.warn(f"{excluded} {units} reach the saturation level {level:g} ADU and were excluded from the calibration", stacklevel=3)
