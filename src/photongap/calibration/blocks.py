"""The single-image estimator: spatial noise in small flat tiles, binned by brightness."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from photongap.calibration.camera import checked_array, note_saturation, saturation_level
from photongap.calibration.transfer import CHUNK, TOO_UNIFORM, PhotonTransfer, binned
from photongap.errors import PhotongapError


@dataclass(frozen=True, eq=False)
class _BlockModel:
    """Constants for one colour of a checkerboard-split ``block x block`` tile."""

    pixels: np.ndarray  # (n,) flat indices of this colour within the tile
    basis: np.ndarray  # (n, 6) orthonormal basis of quadratic surfaces over these pixels
    neighbours: np.ndarray  # (n, n) symmetric, e' S e = sum of products of diagonal neighbours
    dof: int
    third_weight: float  # E[sum e^3] / k3 for the residual e = (I - H) x
    smooth_mean: float  # mean and sd of the residual's neighbour correlation under white noise
    smooth_std: float


@lru_cache(maxsize=16)
def _block_model(block: int, colour: int) -> _BlockModel:
    y, x = np.mgrid[0:block, 0:block].reshape(2, -1)
    pixels = np.flatnonzero((y + x) % 2 == colour)
    u, v = (x[pixels] / (block - 1) * 2.0 - 1.0), (y[pixels] / (block - 1) * 2.0 - 1.0)
    basis, _ = np.linalg.qr(np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1))
    complement = np.eye(len(pixels)) - basis @ basis.T
    dof = len(pixels) - basis.shape[1]
    diagonal = (np.abs(y[pixels, None] - y[None, pixels]) == 1) & (np.abs(x[pixels, None] - x[None, pixels]) == 1)
    neighbours = 0.5 * diagonal
    # Correlation rho = e'Se / e'e of white-noise residuals: mean tr(SB)/tr(B), and the
    # first-order variance 2 tr(M^2) / tr(B)^2 with M = BSB - mean * B.
    smooth_mean = np.trace(neighbours @ complement) / dof
    centred = complement @ neighbours @ complement - smooth_mean * complement
    smooth_std = math.sqrt(2.0 * np.sum(centred * centred)) / dof
    return _BlockModel(pixels, basis, neighbours, dof, float(np.sum(complement**3)), float(smooth_mean), smooth_std)


def photon_transfer_from_image(image: np.ndarray, block: int = 8) -> PhotonTransfer:
    """Spatial noise in small flat tiles of one image, binned by brightness.

    Each ``block x block`` tile is split like a checkerboard. One colour minus its
    least-squares quadratic surface leaves a residual ``e``; smooth structure (gradients,
    curvature) goes into the surface, so ``var = sum(e^2) / (n - 6)`` and
    ``k3 = sum(e^3) / sum(B_ij^3)`` (``B`` the residual projector) measure noise alone.

    Edges and texture still inflate ``var``. The *other* colour, whose noise is independent,
    judges the tile: it is dropped when that colour's residual is correlated between diagonal
    neighbours (texture) or its variance exceeds the 75th percentile expected from a
    lower-quartile line through all tiles (edges). So strict a cut costs a quarter of the
    flat tiles but no bias, since the judge's noise is not the judged colour's; its own
    variance only vetoes at the 99.99th percentile. The other colour also gives the tile its
    brightness bin (see :func:`~photongap.calibration.transfer.binned`); then the colours swap. Because (almost) nothing about a
    colour's own noise decides whether or where it counts, the kept statistics stay unbiased.
    Tiles touching the saturation level are dropped too. Edges and texture weaker than the noise
    cannot be told from noise: they raise the variance, and so the gain, by a few percent in
    dim images full of sharp edges (smooth structure is harmless).

    Parameters
    ----------
    image : np.ndarray
        ``(Y, X)`` raw camera values; a ``(T, Y, X)`` array pools its frames as separate images.
    block : int
        Tile side in pixels, at least 4. Smaller tiles fit busier images; larger ones
        measure each tile more precisely.
    """
    image = checked_array(image, "image", (2, 3))
    if block < 4:
        raise PhotongapError(f"block must be at least 4 pixels, got {block}")
    images = image.reshape(-1, *image.shape[-2:])
    rows, cols = images.shape[1] // block, images.shape[2] // block
    if rows * cols == 0:
        raise PhotongapError(
            f"image {image.shape[-2:]} is smaller than one {block}x{block} block: provide a larger image or a smaller block"
        )
    level = saturation_level(images)
    tiles = images[:, : rows * block, : cols * block].reshape(-1, rows, block, cols, block).swapaxes(2, 3).reshape(-1, block * block)
    mean, variance, third = (np.empty((2, len(tiles))) for _ in range(3))
    textured, clipped = np.zeros((2, len(tiles)), dtype=bool), np.zeros(len(tiles), dtype=bool)
    step = max(1, CHUNK // (block * block))
    for start in range(0, len(tiles), step):
        chunk = slice(start, start + step)
        values = tiles[chunk].astype(np.float64)
        for colour in (0, 1):
            model = _block_model(block, colour)
            own = values[:, model.pixels]
            residual = own - (own @ model.basis) @ model.basis.T
            squares = np.sum(residual**2, axis=1)
            pairs = np.sum((residual @ model.neighbours) * residual, axis=1)
            correlation = np.divide(pairs, squares, out=np.zeros_like(pairs), where=squares > 0)
            mean[colour, chunk] = own.mean(axis=1)
            variance[colour, chunk] = squares / model.dof
            third[colour, chunk] = np.sum(residual**3, axis=1) / model.third_weight
            textured[colour, chunk] = correlation > model.smooth_mean + 3.0 * model.smooth_std
        if level is not None:
            clipped[chunk] = (values >= level).any(axis=1)
    candidates = ~(textured | clipped)
    if not candidates.any():
        raise PhotongapError(f"no {block}x{block} block of the image is flat and unsaturated: {TOO_UNIFORM}")
    slope, intercept = _quantile_line(mean[candidates], variance[candidates], 0.25)
    quartile, judged, extreme = _chi2_quantiles(_block_model(block, 0).dof, (0.25, 0.75, 0.9999))
    reference = np.maximum(slope * mean + intercept, 1e-12) / quartile
    # Each colour is judged by the other; its own variance only vetoes the extreme (an edge
    # that clips one pixel of this colour), which leaves a bias below 0.02%.
    keep = ~(textured | (variance > judged * reference) | clipped)[::-1] & (variance <= extreme * reference)
    details = {
        "source": "single",
        "block": block,
        "units": "half blocks",
        "units_total": 2 * len(tiles),
        "units_structured": int((~keep).sum() - 2 * clipped.sum()),
    }
    note_saturation(details, level, int(clipped.sum()), f"{block}x{block} blocks")
    return binned(mean[::-1][keep], mean[keep], variance[keep], third[keep], level, details)


def _quantile_line(x: np.ndarray, y: np.ndarray, quantile: float, steps: int = 40) -> tuple[float, float]:
    """Line through the ``quantile`` of ``y`` given ``x`` (IRLS on the pinball loss)."""
    design = np.stack([x, np.ones_like(x)], axis=1)
    theta = np.linalg.lstsq(design, y, rcond=None)[0]
    floor = 1e-6 * (np.abs(y).mean() + 1e-300)
    for _ in range(steps):
        residual = y - design @ theta
        weights = np.where(residual > 0, quantile, 1.0 - quantile) / np.maximum(np.abs(residual), floor)
        theta = np.linalg.lstsq(design * np.sqrt(weights)[:, None], y * np.sqrt(weights), rcond=None)[0]
    return float(theta[0]), float(theta[1])


@lru_cache(maxsize=16)
def _chi2_quantiles(dof: int, quantiles: tuple[float, ...]) -> tuple[float, ...]:
    """Quantiles of ``chi2(dof) / dof`` by integrating its density on a grid (no scipy)."""
    grid = np.linspace(1e-9, 1.0 + 40.0 / math.sqrt(dof), 200_001)
    log_density = (dof / 2.0 - 1.0) * np.log(grid) - dof * grid / 2.0
    cumulative = np.cumsum(np.exp(log_density - log_density.max()))
    return tuple(float(np.interp(q, cumulative / cumulative[-1], grid)) for q in quantiles)
