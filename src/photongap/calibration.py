"""Camera calibration: gain, offset and read noise from the noise of the data itself.

A camera reports ``adu = gain * photons + offset + read_noise * N(0, 1)``, rounded; GAP needs
the photons, ``(adu - offset) / gain``. At each brightness the noise cumulants tell the
numbers apart, because Poisson photons are skewed and Gaussian read noise is not:

- variance: ``var = gain * (mean - offset) + read_noise**2`` (the photon transfer curve)
- third cumulant: ``k3 = gain**2 * (mean - offset)``

A robust line through the variances gives the gain; the third cumulants place the offset; the
line's intercept then gives the read noise. Dark frames, when given, measure offset and read
noise directly. Arrays in, small dataclasses out; the only files are the calibration's JSON
and the plot.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

import numpy as np

from photongap.errors import PhotongapError

CalibrationMethod = Literal["stack", "single", "dark+stack", "dark+single", "manual"]
METHODS = ("stack", "single", "dark+stack", "dark+single", "manual")

MIN_FRAMES = 3
"""Frames the stack method needs: its residual ``x[t] - (x[t-1] + x[t+1]) / 2`` spans three."""

NUM_BINS = 64
MIN_UNITS_PER_BIN = 20
BOOTSTRAP_SAMPLES = 200
TOO_UNIFORM = "provide frames with a range of brightness or dark frames"
NEGATIVE_GAIN = "negative gain: is this photon-count data already, or is the background subtracted?"

# Robust line fit: a few Huber steps (convex, so a safe start) then Tukey's biweight,
# which gives outlying bins zero weight. Tuning constants are the usual 95%-efficient ones.
_HUBER, _TUKEY = 1.345, 4.685
_HUBER_STEPS, _TUKEY_STEPS = 6, 14
_CHUNK = 1 << 22


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


@dataclass(frozen=True)
class Calibration:
    """How a camera turns photons into numbers: ``adu = gain * photons + offset + noise``.

    Attributes
    ----------
    gain : float
        ADU per photon (per detected photo-electron).
    offset : float
        ADU recorded with no light.
    read_noise : float
        Standard deviation of the additive noise, ADU (quantisation included).
    method : str
        ``"stack"``, ``"single"``, ``"dark+stack"``, ``"dark+single"`` or ``"manual"``.
    gain_uncertainty, offset_uncertainty, read_noise_uncertainty : float
        1-sigma uncertainties, in the units of each value.
    details : dict
        JSON-able facts about the fit: bins used, exclusions, residual.

    Examples
    --------
    >>> Calibration(gain=2.0, offset=100.0, read_noise=1.5).method
    'manual'
    """

    gain: float
    offset: float
    read_noise: float
    method: CalibrationMethod = "manual"
    gain_uncertainty: float = 0.0
    offset_uncertainty: float = 0.0
    read_noise_uncertainty: float = 0.0
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("gain", "offset", "read_noise", "gain_uncertainty", "offset_uncertainty", "read_noise_uncertainty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise PhotongapError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
            if name == "gain" and value <= 0:
                raise PhotongapError(f"gain must be positive (ADU per photon), got {value}")
            if name != "offset" and value < 0:
                raise PhotongapError(f"{name} must not be negative, got {value}")
        if self.method not in METHODS:
            raise PhotongapError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not isinstance(self.details, dict):
            raise PhotongapError(f"details must be a JSON object, got {type(self.details).__name__}")

    def to_json(self) -> str:
        """The calibration as a JSON object with numeric ``gain``, ``offset``, ``read_noise``."""
        keys = ("gain", "offset", "read_noise", "method", "gain_uncertainty", "offset_uncertainty", "read_noise_uncertainty")
        payload = {key: getattr(self, key) for key in keys} | {"details": _jsonable(self.details)}
        return json.dumps(payload, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, name: str = "calibration") -> Calibration:
        """Parse and validate :meth:`to_json` output; ``name`` labels error messages."""
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise PhotongapError(
                f"{name} is not valid JSON ({error.msg}, line {error.lineno}): provide a file written by Calibration.save"
            ) from None
        if not isinstance(payload, dict):
            raise PhotongapError(f"{name} must hold a JSON object with gain, offset and read_noise")
        missing = [key for key in ("gain", "offset", "read_noise") if key not in payload]
        if missing:
            raise PhotongapError(f"{name} lacks {', '.join(missing)}: provide gain (ADU per photon), offset (ADU) and read_noise (ADU)")
        known = ("gain", "offset", "read_noise", "method", "gain_uncertainty", "offset_uncertainty", "read_noise_uncertainty", "details")
        try:
            return cls(**{key: payload[key] for key in known if key in payload})
        except PhotongapError as error:
            raise PhotongapError(f"{name}: {error}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` atomically (a temporary file, then a rename)."""
        text = self.to_json().encode()
        _atomic_write(path, lambda file: file.write(text))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a calibration written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise PhotongapError(f"calibration file {path} does not exist: run the calibration first or check the path")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PhotongapError(f"{path} is not a text file: provide the JSON written by Calibration.save") from None
        return cls.from_json(text, name=str(path))


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


def photon_transfer_from_stack(frames: np.ndarray) -> PhotonTransfer:
    """Temporal noise of each pixel over repeated frames, binned by brightness.

    Per pixel, ``r[t] = x[t] - (x[t-1] + x[t+1]) / 2`` gives ``var = mean(r^2) / 1.5`` and
    ``k3 = mean(r^3) / 0.75``. This second difference cancels any drift that is linear over
    three frames (bleaching, lamp or focus drift, slow motion), which the plain variance about
    the pixel's mean would count as noise, and, unlike a first difference, it keeps the
    skewness that places the offset. Pixels go into bins by the mean of their four
    neighbours, whose noise is independent of theirs (see ``_binned``). Pixels that reach the
    saturation level in any frame are excluded, with a warning; so is the one-pixel border.

    Parameters
    ----------
    frames : np.ndarray
        ``(T, Y, X)`` raw camera values of the same field, ``T >= 3``, ``Y, X >= 3``.
    """
    frames = _checked_array(frames, "frames", (3,))
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
    rows = max(1, _CHUNK // (num_frames * width))
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
    _note_saturation(details, level, int(clipped.sum()), "pixels")
    keep = ~clipped[inner]
    return _binned(neighbours[keep], mean[inner][keep], variance[inner][keep], third[inner][keep], level, details)


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
    brightness bin (see ``_binned``); then the colours swap. Because (almost) nothing about a
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
    image = _checked_array(image, "image", (2, 3))
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
    step = max(1, _CHUNK // (block * block))
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
    _note_saturation(details, level, int(clipped.sum()), f"{block}x{block} blocks")
    return _binned(mean[::-1][keep], mean[keep], variance[keep], third[keep], level, details)


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
    used = np.zeros_like(ptc.used)
    used[eligible] = line_weights[0] > 0
    if not (np.isfinite(gain[0]) and spread[0] <= 0.5 * abs(gain[0])):
        raise PhotongapError(
            f"the photon transfer curve is too flat or too noisy to fit a slope (gain {gain[0]:.3g} ± {spread[0]:.2g} ADU/photon): "
            f"{TOO_UNIFORM}"
        )
    if gain[0] <= 0:
        raise PhotongapError(f"{NEGATIVE_GAIN} (fitted {gain[0]:.3g} ADU/photon)")
    if read_variance[0] < 0:
        warnings.warn(
            f"the fitted read noise variance is negative ({read_variance[0]:.3g} ADU^2); read noise set to 0. "
            "Dark frames would measure it directly.",
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
    }
    if offset is None and read_noise is None:
        details["offset_bins_used"] = int((third_weights[0] > 0).sum())
        details["offset_residual_rms"] = third_scatter
    return PhotonTransferFit(float(gain[0]), float(offsets[0]), float(read_noises[0]), *spread, replace(ptc, used=used), details)


def _residual_rms(residual: np.ndarray, error: np.ndarray, kept: np.ndarray) -> float:
    """Root mean square of the standardised residuals of the kept bins (1 for a good fit)."""
    return float(np.sqrt(np.mean((residual[kept] / error[kept]) ** 2))) if kept.any() else float("inf")


def calibrate(
    frames_or_image: np.ndarray,
    *,
    dark: np.ndarray | None = None,
    method: Literal["auto", "stack", "single"] = "auto",
    block: int = 8,
) -> Calibration:
    """Gain, offset and read noise of the camera that recorded ``frames_or_image``.

    ``(T, Y, X)`` repeats of one field (``T >= 3``) use the temporal noise of every pixel
    (:func:`photon_transfer_from_stack`); one ``(Y, X)`` image uses flat blocks
    (:func:`photon_transfer_from_image`), which is less precise and needs flat regions.
    Dark frames (no light, same settings), ``(Y, X)`` or ``(T, Y, X)``, fix the offset (their
    clipped mean) and the read noise (their temporal noise for a stack, their spatial noise
    for a single image, which then matches what the single-image method measures).

    Parameters
    ----------
    frames_or_image : np.ndarray
        Raw camera values (ADU), not background-subtracted.
    dark : np.ndarray, optional
        Dark frames.
    method : {"auto", "stack", "single"}
        ``"auto"``: stack for 3D input, single image for 2D. ``"single"`` on a stack pools
        its frames as separate images (the fallback for stacks of fewer than 3 frames).
    block : int
        Block side for the single-image method.

    Examples
    --------
    >>> scene = np.linspace(0.0, 10.0, 128)[None, :].repeat(128, axis=0) ** 2  # 0 to 100 photons
    >>> frames = simulate_camera(scene, gain=2.0, offset=100.0, read_noise=2.0, n_frames=20,
    ...                          generator=np.random.default_rng(0))
    >>> calibration = calibrate(frames)
    >>> round(calibration.gain, 1), round(calibration.offset)
    (2.0, 100)
    """
    data = _checked_array(frames_or_image, "frames_or_image", (2, 3))
    if method not in ("auto", "stack", "single"):
        raise PhotongapError(f"method must be 'auto', 'stack' or 'single', got {method!r}")
    if method == "auto":
        method = "stack" if data.ndim == 3 else "single"
    if method == "stack":
        if data.ndim != 3 or data.shape[0] < MIN_FRAMES:
            got = "a single (Y, X) image" if data.ndim == 2 else f"{data.shape[0]} frame(s)"
            raise PhotongapError(
                f"the stack method needs at least {MIN_FRAMES} repeated frames of the same field (T, Y, X), got {got}: "
                "record more frames, or pass method='single' to calibrate from single images"
            )
        ptc = photon_transfer_from_stack(data)
    else:
        ptc = photon_transfer_from_image(data, block=block)
    if dark is None:
        fit = fit_photon_transfer(ptc)
        uncertainties = (fit.offset_uncertainty, fit.read_noise_uncertainty)
        name, extra = method, {}
    else:
        dark_offset, offset_error, dark_noise, noise_error, extra = _dark_statistics(dark, temporal=method == "stack")
        fit = fit_photon_transfer(ptc, offset=dark_offset, read_noise=dark_noise)
        uncertainties = (offset_error, noise_error)
        name = f"dark+{method}"
    details = ptc.details | fit.details | extra
    return Calibration(fit.gain, fit.offset, fit.read_noise, name, fit.gain_uncertainty, *uncertainties, _jsonable(details))


def plot_photon_transfer(ptc: PhotonTransfer, calibration: Calibration, path: str | os.PathLike[str]) -> None:
    """PNG of the photon transfer curve: binned variance against mean, the fitted line, the values.

    Bins in ``ptc.used`` are drawn as dots, rejected ones as red crosses; pass
    ``fit_photon_transfer(ptc).photon_transfer`` to show what the fit kept.
    """
    # Imported here so the estimation stays usable where matplotlib is slow or absent;
    # Figure + FigureCanvasAgg draws without touching the global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 5.0), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for mask, style, label in ((ptc.used, dict(fmt="o", color="C0"), "used"), (~ptc.used, dict(fmt="x", color="C3"), "rejected")):
        if mask.any():
            axes.errorbar(
                ptc.mean[mask],
                ptc.variance[mask],
                yerr=ptc.variance_error[mask],
                ms=4,
                capsize=2,
                label=f"{label} ({mask.sum()} bins)",
                **style,
            )
    line = np.linspace(min(calibration.offset, ptc.mean.min()), ptc.mean.max(), 200)
    axes.plot(
        line, calibration.gain * (line - calibration.offset) + calibration.read_noise**2, "k-", label="gain·(mean − offset) + read noise²"
    )
    axes.axvline(calibration.offset, color="0.6", linestyle=":", label="offset")
    text = (
        f"gain       = {calibration.gain:.4g} ± {calibration.gain_uncertainty:.2g} ADU/photon\n"
        f"offset     = {calibration.offset:.2f} ± {calibration.offset_uncertainty:.2g} ADU\n"
        f"read noise = {calibration.read_noise:.3g} ± {calibration.read_noise_uncertainty:.2g} ADU\n"
        f"method: {calibration.method}"
    )
    axes.text(
        0.02,
        0.98,
        text,
        transform=axes.transAxes,
        va="top",
        ha="left",
        family="monospace",
        fontsize=9,
        bbox=dict(boxstyle="round", facecolor="white", alpha=0.9),
    )
    axes.set_xlabel("mean signal (ADU)")
    axes.set_ylabel("noise variance (ADU²)")
    axes.set_title("Photon transfer curve")
    axes.legend(loc="lower right", fontsize=8)
    _atomic_write(path, lambda file: figure.savefig(file, format="png"))


def _checked_array(data: Any, what: str, ndims: tuple[int, ...]) -> np.ndarray:
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


def _note_saturation(details: dict[str, Any], level: float | None, excluded: int, units: str) -> None:
    details["saturation_level"] = level
    details["units_saturated"] = excluded
    if excluded:
        warnings.warn(f"{excluded} {units} reach the saturation level {level:g} ADU and were excluded from the calibration", stacklevel=3)


def _binned(
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


def _clipped_mean_std(values: np.ndarray, clip: float = 4.0) -> tuple[float, float]:
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


def _dark_statistics(dark: np.ndarray, *, temporal: bool) -> tuple[float, float, float, float, dict[str, Any]]:
    """Offset and read noise (with standard errors) from dark frames.

    The offset is the clipped mean of the per-pixel means. ``temporal`` read noise comes from
    differences of consecutive frames, ``std(x[t+1] - x[t]) / sqrt(2)``, which cancels each
    pixel's fixed offset; otherwise it is the spatial spread of each frame about its median,
    fixed-pattern noise included, as the single-image method sees it.
    """
    dark = _checked_array(dark, "dark", (2, 3))
    frames = dark.reshape(-1, *dark.shape[-2:]).astype(np.float64)
    pixel_means = frames.mean(axis=0)
    offset, pattern = _clipped_mean_std(pixel_means)
    details: dict[str, Any] = {"dark_frames": len(frames), "dark_fixed_pattern": pattern}
    if temporal and len(frames) >= 2:
        difference_std = _clipped_mean_std(frames[1:] - frames[:-1])[1]
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
        read_noise = _clipped_mean_std(frames - np.median(frames, axis=(1, 2), keepdims=True))[1]
        noise_error = read_noise / math.sqrt(2.0 * frames.size)
        details["dark_read_noise_kind"] = "spatial"
    offset_error = math.sqrt(pattern**2 + read_noise**2 / len(frames)) / math.sqrt(pixel_means.size)
    return offset, offset_error, read_noise, noise_error, details


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays converted, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise PhotongapError(f"folder {path.parent} does not exist: create it or choose another path")
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
