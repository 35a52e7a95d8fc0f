"""Stored values to photon counts and back: the one place that knows camera units.

GAP's model is Poisson, so everything downstream needs photon counts. A file holds either
counts already (photon-counting detectors, simulations), which are only checked, or camera
values in ADU, which a :class:`Camera` converts: ``counts = round((adu - offset) / gain + s**2)``,
clipped at 0, where ``s = read_noise / gain`` is the read noise in photons (0 without read
noise). NumPy only (no torch), so reading and checking files stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from photongap.errors import PhotongapError
from photongap.io.pages import release_pages

Units = Literal["photons", "adu"]

_BLOCK_ELEMENTS = 1 << 22
_GAIN_HINT = "camera data in ADU? convert them with --gain/--offset: counts = (adu - offset) / gain"


def _blocks(shape: tuple[int, ...]) -> Iterator[tuple]:
    """Index tuples cutting an array into contiguous pieces of at most ``_BLOCK_ELEMENTS``."""
    axis = next(k for k in range(len(shape)) if math.prod(shape[k + 1 :]) <= _BLOCK_ELEMENTS)
    step = max(1, _BLOCK_ELEMENTS // math.prod(shape[axis + 1 :]))
    for outer in np.ndindex(*shape[:axis]):
        for start in range(0, shape[axis], step):
            yield (*outer, slice(start, start + step))


def _check_array(shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
    if not shape or math.prod(shape) == 0:
        raise PhotongapError(f"{name}: the image is empty (shape {shape})")
    if dtype.kind not in "biuf":
        raise PhotongapError(f"{name}: data type {dtype} cannot hold photon counts (expected integers or floats)")


def _check_finite(block: np.ndarray, name: str) -> None:
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        what = "NaN" if np.isnan(block).any() else "infinite"
        raise PhotongapError(f"{name}: contains {what} values; photon counts must be finite")


def check_counts(data: Any, name: str) -> None:
    """Raise a :class:`PhotongapError` unless ``data`` holds photon counts: whole numbers >= 0.

    Reads ``data`` (any array-like: ndarray, memmap, zarr) block by block, never whole.
    Unsigned integers pass without reading; floats must be finite and integer-valued.
    """
    shape, dtype = tuple(data.shape), np.dtype(data.dtype)
    _check_array(shape, dtype, name)
    if dtype.kind in "bu":
        return
    for key in _blocks(shape):
        block = np.asarray(data[key])
        _check_finite(block, name)
        if block.min() < 0:
            raise PhotongapError(f"{name}: contains negative values (min {block.min():g}); photon counts are >= 0; {_GAIN_HINT}")
        if dtype.kind == "f":
            fraction = block != np.rint(block)
            if fraction.any():
                example = block[fraction].flat[0]
                raise PhotongapError(f"{name}: contains non-integer values (e.g. {example:g}); photon counts are whole numbers; {_GAIN_HINT}")


@dataclass(frozen=True)
class Camera:
    """How stored values become photon counts: ``counts = round((value - offset) / gain + shift)``.

    The default (no gain, no offset) means the files already hold photon counts, which are
    checked but not changed. ``gain`` is in ADU per photon, ``offset`` and ``read_noise`` in
    ADU.

    Gaussian read noise makes ``(adu - offset) / gain = Poisson(lambda) + Normal(0, s**2)``,
    whose variance ``lambda + s**2`` exceeds its mean: outside GAP's Poisson model. Adding
    :attr:`shift` ``= s**2`` photons makes mean and variance both ``lambda + s**2``, so the
    shifted counts are nearly ``Poisson(lambda + s**2)`` (an Anscombe-style remedy for sCMOS
    data); :meth:`output` subtracts the shift from results again.

    Examples
    --------
    >>> Camera(gain=2.0, offset=100.0, read_noise=4.0).to_counts(np.array([100.0, 104.0]))
    array([4., 6.], dtype=float32)
    """

    gain: float | None = None
    offset: float | None = None
    read_noise: float | None = None

    def __post_init__(self) -> None:
        if self.gain is not None and not (math.isfinite(self.gain) and self.gain > 0):
            raise PhotongapError(f"--gain must be positive (ADU per photon), got {self.gain:g}")
        if self.offset is not None and not math.isfinite(self.offset):
            raise PhotongapError(f"--offset must be a finite number of ADU, got {self.offset}")
        if self.read_noise is not None and (self.gain is None or not self.read_noise >= 0):
            raise PhotongapError(
                f"read noise must be non-negative ADU and comes with the camera gain, got read noise {self.read_noise} and gain {self.gain}"
            )

    @classmethod
    def from_calibration(cls, path: str | Path) -> Camera:
        """The camera of a ``calibration.json`` written by ``photongap calibrate``."""
        from photongap.calibration import Calibration

        calibration = Calibration.load(path)
        return cls(gain=calibration.gain, offset=calibration.offset, read_noise=calibration.read_noise)

    @property
    def converts(self) -> bool:
        """Whether stored values are camera units (else they are photon counts already)."""
        return self.gain is not None or self.offset is not None

    @property
    def shift(self) -> float:
        """Photons added to every pixel before denoising: ``(read_noise / gain)**2``, 0 without read noise.

        The read-noise variance in photon units: adding it gives the counts a variance equal
        to their mean, as for Poisson data.
        """
        return (self.read_noise / self.gain) ** 2 if self.read_noise else 0.0

    def check(self, data: Any, name: str) -> None:
        """Check a whole stored array before any work: counts must be counts (converted data are checked as read)."""
        if self.converts:
            _check_array(tuple(data.shape), np.dtype(data.dtype), name)
        else:
            check_counts(data, name)

    def to_counts(self, values: Any, name: str = "image") -> np.ndarray:
        """Float32 photon counts of an in-memory block of stored values.

        Without a gain or offset the values must already be counts (:func:`check_counts`).
        """
        values = np.asarray(values)
        if not self.converts:
            check_counts(values, name)
            return values.astype(np.float32, copy=False)
        _check_array(values.shape, values.dtype, name)
        _check_finite(values, name)
        photons = (values.astype(np.float32) - np.float32(self.offset or 0.0)) / np.float32(self.gain or 1.0)
        return np.clip(np.rint(photons + np.float32(self.shift)), 0.0, None).astype(np.float32, copy=False)

    def to_adu(self, photons: np.ndarray) -> np.ndarray:
        """Photon units back to camera units: ``photons * gain + offset``."""
        return photons * (self.gain or 1.0) + (self.offset or 0.0)

    def output(self, estimate: np.ndarray, units: Units = "photons", *, spread: bool = False) -> np.ndarray:
        """A result computed from :meth:`to_counts` counts, in the units asked for.

        ``estimate`` is an image in (shifted) photon units: the shift is subtracted, then it is
        converted to ADU if ``units="adu"``. With ``spread=True`` it is a spread (a standard
        deviation), which only scales by the gain.
        """
        self.check_units(units)
        if spread:
            return estimate * (self.gain or 1.0) if units == "adu" else estimate
        photons = estimate - self.shift if self.shift else estimate
        return self.to_adu(photons) if units == "adu" else photons

    def check_units(self, units: str) -> None:
        """Refuse output units this camera cannot give (jobs call it before any work)."""
        if units not in ("photons", "adu"):
            raise PhotongapError(f"--output-units must be photons or adu, got {units!r}")
        if units == "adu" and not self.converts:
            raise PhotongapError("--output-units adu needs the camera's --gain/--offset or --calibration")

    def describe(self, units: Units) -> str:
        """What an output file's values mean, for its description."""
        text = f"values in {units}"
        if self.converts:
            text += f" (gain {self.gain or 1:g} ADU/photon, offset {self.offset or 0:g} ADU)"
        if self.shift:
            text += f"; read noise {self.read_noise:g} ADU: {self.shift:.4g} photons added before denoising, subtracted after"
        return text


class CountsView:
    """A ``(Y, X)`` plane (or ``(D, Y, X)`` volume) read as float32 photon counts, block by block, checked as it is read."""

    def __init__(self, plane: Any, camera: Camera, name: str) -> None:
        self.plane, self.camera, self.name = plane, camera, name
        self.shape, self.dtype = tuple(plane.shape), np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        counts = self.camera.to_counts(self.plane[key], self.name)
        release_pages(self.plane)  # a memory-mapped input's pages leave the process once read
        return counts
