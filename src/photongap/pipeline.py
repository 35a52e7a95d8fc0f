"""File-level jobs: what the command line does, as library functions.

Each job reads with :mod:`photongap.io`, converts camera units to photon counts,
calls the model, and writes through an :class:`~photongap.io.ImageWriter`, so outputs
appear whole or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photongap.errors import PhotongapError
from photongap.io import Image, ImageWriter, check_counts, iter_planes, read_image, to_counts, write_image
from photongap.model import DEFAULT_OVERLAP, DEFAULT_TILE, GapModel, PosteriorSamples

ROWS_PER_BLOCK = 1024


@dataclass(frozen=True)
class Camera:
    """How stored values become photon counts: ``counts = (value - offset) / gain``.

    The default (no gain, no offset) means the files already hold photon counts.
    """

    gain: float | None = None
    offset: float | None = None

    @property
    def converts(self) -> bool:
        return self.gain is not None or self.offset is not None

    def to_adu(self, photons: np.ndarray) -> np.ndarray:
        """Photon units back to camera units: ``photons * gain + offset``."""
        return photons * (self.gain or 1.0) + (self.offset or 0.0)


class CountsView:
    """A ``(Y, X)`` plane read as float32 photon counts, block by block, checked as it is read."""

    def __init__(self, plane: Any, camera: Camera, name: str) -> None:
        self.plane, self.camera, self.name = plane, camera, name
        self.shape, self.ndim, self.dtype = tuple(plane.shape), 2, np.dtype(np.float32)

    def __getitem__(self, key: Any) -> np.ndarray:
        return to_counts(np.asarray(self.plane[key]), gain=self.camera.gain, offset=self.camera.offset, name=self.name)


def _plane_name(image: Image, index: tuple[int, ...]) -> str:
    return f"{image.path}" + (f" (plane {index})" if index else "")


def read_images(paths: Sequence[Path], axes: str | None, camera: Camera) -> list[Image]:
    """Open every input (lazily) and check its values are counts, unless a camera converts them."""
    images = [read_image(path, axes) for path in paths]
    if not camera.converts:
        for image in images:
            check_counts(image.data, str(image.path))
    return images


def training_planes(paths: Sequence[Path], axes: str | None, camera: Camera) -> tuple[list[np.ndarray], list[str]]:
    """Every 2D plane of the inputs as in-memory float32 counts, with a name for messages."""
    planes, names = [], []
    for image in read_images(paths, axes, camera):
        for index, plane in iter_planes(image):
            name = _plane_name(image, index)
            planes.append(CountsView(plane, camera, name)[:, :])
            names.append(name)
    return planes, names


def total_tiles(model: GapModel, images: Sequence[Image], tile: int | None, overlap: int) -> int:
    """Tiles that denoising these images takes (for a progress bar)."""
    return sum(int(np.prod(image.plane_shape[:-2], dtype=np.int64)) * model.tiles_per_plane(image.plane_shape[-2:], tile, overlap) for image in images)


def denoise_file(
    model: GapModel,
    image: Image,
    out_path: Path,
    *,
    camera: Camera = Camera(),
    output_units: str = "photons",
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """MMSE-denoise every plane of ``image`` into ``out_path`` (same shape and axes, float32).

    Values are in the photon units of the input exposure, or in camera units with
    ``output_units="adu"`` (then ``camera`` must give the gain). Planes are read and
    written piece by piece, so images larger than memory work with memory-mappable or
    Zarr inputs and outputs.
    """
    if output_units not in ("photons", "adu"):
        raise PhotongapError(f"--output-units must be photons or adu, got {output_units!r}")
    if output_units == "adu" and not camera.converts:
        raise PhotongapError("--output-units adu needs the camera's --gain/--offset or --calibration")
    description = f"photongap MMSE denoising (GAP), values in {output_units}" + (
        f" (gain {camera.gain:g} ADU/photon, offset {camera.offset or 0:g} ADU)" if camera.converts else ""
    )
    with ImageWriter(out_path, image.plane_shape, image.plane_axes, like=image, description=description, overwrite=overwrite) as writer:
        for index, plane in iter_planes(image):
            counts = CountsView(plane, camera, _plane_name(image, index))
            target = writer.array[index] if isinstance(writer.array, np.ndarray) else None
            result = model.denoise(
                counts, tile=tile, overlap=overlap, batch_size=batch_size, device=device, precision=precision, out=target, progress=progress
            )
            if output_units == "adu":
                for start in range(0, result.shape[0], ROWS_PER_BLOCK):
                    rows = slice(start, start + ROWS_PER_BLOCK)
                    result[rows] = camera.to_adu(result[rows])
            if target is None:
                writer.array[index] = result
    return out_path


def sample_axis(axes: str) -> str:
    """A letter for the samples axis of a samples file: T, else C, else Z (whichever is free)."""
    return next(letter for letter in "TCZ" if letter not in axes)


def sample_file(
    model: GapModel,
    image: Image,
    out_dir: Path,
    *,
    n: int,
    camera: Camera = Camera(),
    output_units: str = "photons",
    overwrite: bool = False,
    on_plane: Callable[[tuple[int, ...]], None] | None = None,
    **sample_options: Any,
) -> tuple[list[Path], int]:
    """Posterior samples of every plane: ``NAME_samples.tif`` (n, ...), ``NAME_mean.tif``, ``NAME_std.tif``.

    Returns the paths written and the network calls per sample of the last plane.
    """
    shape = image.plane_shape
    samples = np.empty((n, *shape), dtype=np.float32)
    mean = np.empty(shape, dtype=np.float32)
    std = np.empty(shape, dtype=np.float32)
    calls = 0
    for index, plane in iter_planes(image):
        if on_plane is not None:
            on_plane(index)
        posterior: PosteriorSamples = model.sample(CountsView(plane, camera, _plane_name(image, index))[:, :], n, **sample_options)
        samples[(slice(None), *index)] = posterior.samples
        mean[index], std[index], calls = posterior.mean, posterior.std, posterior.network_calls
    if output_units == "adu":
        if not camera.converts:
            raise PhotongapError("--output-units adu needs the camera's --gain/--offset or --calibration")
        samples, mean = camera.to_adu(samples), camera.to_adu(mean)
        std = std * (camera.gain or 1.0)
    stem = image.path.name.split(".")[0]
    description = f"photongap posterior sampling (GAP), {n} samples, values in {output_units}"
    axes = image.plane_axes
    paths = [
        write_image(out_dir / f"{stem}_samples.tif", samples, sample_axis(axes) + axes, description=description + "; first axis: samples", overwrite=overwrite),
        write_image(out_dir / f"{stem}_mean.tif", mean, axes, like=image, description=description + "; mean of the samples", overwrite=overwrite),
        write_image(out_dir / f"{stem}_std.tif", std, axes, like=image, description=description + "; per-pixel standard deviation", overwrite=overwrite),
    ]
    return paths, calls
