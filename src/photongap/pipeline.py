"""File-level jobs: what the command line does, as library functions.

Each job reads with :mod:`photongap.io`, converts camera units to photon counts,
calls the model, and writes through an :class:`~photongap.io.ImageWriter`, so outputs
appear whole or not at all. Many files at once, or one image too large for one machine,
go to a Dask cluster: :mod:`photongap.cluster`, which runs these same jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from photongap.errors import PhotongapError
from photongap.camera import Camera, CountsView
from photongap.io import Image, ImageWriter, check_new_outputs, iter_planes, iter_volumes, read_image, volume_axis, write_image
from photongap.io.pages import release_pages
from photongap.config import DEFAULT_OVERLAP, DEFAULT_TILE
from photongap.model import GapModel
from photongap.sampling import PosteriorSamples
from photongap.tiling import image_blocks


def plane_name(image: Image, index: tuple[Any, ...]) -> str:
    """How messages name one plane (or volume) of an image: its path, and the index in a stack."""
    if any(isinstance(part, slice) for part in index):  # a volume's key: its other axes
        others = tuple(part for part in index if not isinstance(part, slice))
        return f"{image.path}" + (f" (volume {others})" if others else "")
    return f"{image.path}" + (f" (plane {index})" if index else "")


def read_images(paths: Sequence[Path], axes: str | None, camera: Camera) -> list[Image]:
    """Open every input (lazily) and check its values are counts, unless a camera converts them."""
    images = [read_image(path, axes) for path in paths]
    for image in images:
        camera.check(image.data, str(image.path))
    return images


def training_planes(paths: Sequence[Path], axes: str | None, camera: Camera) -> tuple[list[np.ndarray], list[str]]:
    """Every 2D plane of the inputs as in-memory float32 counts, with a name for messages."""
    planes, names = [], []
    for image in read_images(paths, axes, camera):
        for index, plane in iter_planes(image):
            name = plane_name(image, index)
            planes.append(CountsView(plane, camera, name)[:, :])
            names.append(name)
    return planes, names


def training_volumes(paths: Sequence[Path], axes: str | None, camera: Camera) -> tuple[list[np.ndarray], list[str]]:
    """Every ``(D, Y, X)`` volume of the inputs (``D``: Z, else T) as in-memory float32 counts, for a 3D model."""
    volumes, names = [], []
    for image in read_images(paths, axes, camera):
        if volume_axis(image.axes) is None:
            raise PhotongapError(f"{image.path}: a 3D model trains on stacks with a Z or T axis, got axes {image.axes}; use --axes, or --dims 2")
        for key, volume in iter_volumes(image):
            name = plane_name(image, key)
            volumes.append(CountsView(volume, camera, name)[:, :, :])
            names.append(name)
    return volumes, names


def units_of(model: GapModel, image: Image) -> list[tuple[tuple[Any, ...], Any]]:
    """What :meth:`GapModel.denoise` takes one at a time: the planes, or for a 3D model the volumes (checked first)."""
    if model.config.dims == 2:
        return list(iter_planes(image))
    depth_axis = volume_axis(image.axes)
    model.check_shape(image.plane_shape if depth_axis is None else (image.shape[image.axes.index(depth_axis)], *image.plane_shape[-2:]), image.axes, str(image.path))
    return list(iter_volumes(image))


def model_units(model: GapModel, paths: Sequence[Path], axes: str | None, camera: Camera) -> tuple[list[np.ndarray], list[str]]:
    """Every unit of :func:`units_of` (planes, or a 3D model's volumes) of the inputs, as in-memory float32 counts, with a name for messages.

    What ``assess`` grades one by one; a 3D model's bad input (no Z or T axis, too thin) fails before any is read.
    """
    images = read_images(paths, axes, camera)
    units = [(image, index, unit) for image in images for index, unit in units_of(model, image)]
    counts, names = [], []
    for image, index, unit in units:
        name = plane_name(image, index)
        counts.append(CountsView(unit, camera, name)[(slice(None),) * unit.ndim])
        names.append(name)
    return counts, names


def total_tiles(model: GapModel, images: Sequence[Image], tile: int | None, overlap: int) -> int:
    """Tiles that denoising these images takes (for a progress bar)."""
    if model.config.dims == 3:
        return sum(model.tiles_per_plane(tuple(volume.shape), tile, overlap) for image in images for _, volume in units_of(model, image))
    return sum(int(np.prod(image.plane_shape[:-2], dtype=np.int64)) * model.tiles_per_plane(image.plane_shape[-2:], tile, overlap) for image in images)


def denoise_description(camera: Camera, output_units: str) -> str:
    """The description a denoised file carries."""
    return f"photongap MMSE denoising (GAP), {camera.describe(output_units)}"


def denoise_file(
    model: GapModel,
    image: Image,
    out_path: Path,
    *,
    camera: Camera = Camera(),
    output_units: str = "photons",
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """MMSE-denoise every plane of ``image`` into ``out_path`` (same shape and axes, float32).

    Values are in the photon units of the input exposure, or in camera units with
    ``output_units="adu"`` (then ``camera`` must give the gain). A camera with read noise
    denoises counts shifted by ``camera.shift`` photons and subtracts it from the result
    (which may then dip slightly below 0 in dark pixels). Planes are read and
    written piece by piece, so images larger than memory work with memory-mappable or
    Zarr inputs and outputs.
    """
    camera.check_units(output_units)
    units = units_of(model, image)  # a 3D model's bad input fails here, before anything is written
    description = denoise_description(camera, output_units)
    if model.config.dims == 3:
        description += f", 3D: volumes along {volume_axis(image.axes)}"
    with ImageWriter(out_path, image.plane_shape, image.plane_axes, like=image, description=description, overwrite=overwrite) as writer:
        for index, plane in units:
            counts = CountsView(plane, camera, plane_name(image, index))
            target = writer.array[index] if isinstance(writer.array, np.ndarray) else None
            result = model.denoise(
                counts, tile=tile, overlap=overlap, batch_size=batch_size, device=device, precision=precision, out=target, progress=progress
            )
            if camera.shift or output_units == "adu":
                for key in image_blocks(tuple(result.shape)):
                    result[key] = camera.output(result[key], output_units)
                    release_pages(result)
            if target is None:
                writer.array[index] = result
    return out_path


def sample_axis(axes: str) -> str:
    """A letter for the samples axis of a samples file: T, else C, else Z (whichever is free)."""
    return next(letter for letter in "TCZ" if letter not in axes)


class SampledFile(NamedTuple):
    """What :func:`sample_file` wrote: the ``paths``, the network ``calls`` per sample (of the last
    plane), and of its ``units`` planes (volumes, for a 3D model) the ``unresolved`` ones, named, whose
    held-out photons were too few to measure the network's error
    (:attr:`photongap.sampling.PosteriorSamples.gain_resolved`)."""

    paths: list[Path]
    calls: int
    unresolved: list[str]
    units: int
    unit: str = "plane"

    def summary(self, name: str, n: int) -> str:
        """One line for a person: what was sampled and written."""
        return f"sampled {name}: {n} samples, {self.calls} network calls each -> {', '.join(path.name for path in self.paths)}"

    def note(self, name: str) -> str | None:
        """A warning line where the samples' spread rests on the network's own belief; None where every plane's was measured."""
        note = unresolved_gain_note(len(self.unresolved), self.units, self.unit)
        return None if note is None else f"note on {name}: {note}"


def unresolved_gain_note(unresolved: int, units: int, unit: str = "plane") -> str | None:
    """What to tell a person when ``unresolved`` of ``units`` planes (or volumes) had too few held-out photons for the gain; None if none."""
    if not unresolved:
        return None
    where = f"{unresolved} of {units} {unit}s" if units > 1 else f"this {unit}"
    return (f"on {where} the held-out photons were too few to measure the network's error alone, so the samples' spread "
            "rests mostly on the network's own estimate of it, which can be off twofold on dim images (a --check pooled over "
            "many planes or images tells whether it holds)")


def sample_file(
    model: GapModel,
    image: Image,
    targets: Sequence[Path],
    *,
    n: int,
    camera: Camera = Camera(),
    output_units: str = "photons",
    overwrite: bool = False,
    on_plane: Callable[[tuple[int, ...]], None] | None = None,
    **sample_options: Any,
) -> SampledFile:
    """Posterior samples of every plane into ``targets``: the samples (n, ...), their mean and their std.

    :func:`photongap.io.output_paths` names them (``NAME_samples.tif``, ``NAME_mean.tif``,
    ``NAME_std.tif``) so that distinct inputs never share outputs.

    A camera with read noise samples from shifted counts; the shift is subtracted from the
    samples and their mean (the std is unchanged). Returns the paths written and the network
    calls per sample of the last plane.
    """
    camera.check_units(output_units)
    if len(targets) != 3:
        raise ValueError("sample_file writes three outputs: samples, mean and std")
    check_new_outputs(targets, overwrite)
    shape = image.plane_shape
    samples = np.empty((n, *shape), dtype=np.float32)
    mean = np.empty(shape, dtype=np.float32)
    std = np.empty(shape, dtype=np.float32)
    calls, unresolved, units = 0, [], 0
    for index, plane in units_of(model, image):
        if on_plane is not None:
            on_plane(index)
        name = plane_name(image, index)
        posterior: PosteriorSamples = model.sample(CountsView(plane, camera, name)[(slice(None),) * plane.ndim], n, **sample_options)
        samples[(slice(None), *index)] = posterior.samples
        mean[index], std[index], calls = posterior.mean, posterior.std, posterior.network_calls
        units += 1
        if posterior.gain_resolved is False:
            unresolved.append(name)
    samples, mean = camera.output(samples, output_units), camera.output(mean, output_units)
    std = camera.output(std, output_units, spread=True)
    description = f"photongap posterior sampling (GAP), {n} samples, {camera.describe(output_units)}"
    axes = image.plane_axes
    paths = [
        write_image(targets[0], samples, sample_axis(axes) + axes, description=description + "; first axis: samples", overwrite=overwrite),
        write_image(targets[1], mean, axes, like=image, description=description + "; mean of the samples", overwrite=overwrite),
        write_image(targets[2], std, axes, like=image, description=description + "; per-pixel standard deviation", overwrite=overwrite),
    ]
    return SampledFile(paths, calls, unresolved, units, "volume" if model.config.dims == 3 else "plane")


def _stacked(paths: Sequence[Path], axes: str | None) -> np.ndarray:
    """One file as it is (a (T, Y, X) stack or a (Y, X) image), or several same-size images stacked."""
    arrays = [np.asarray(read_image(path, axes).data) for path in paths]
    if len(arrays) == 1:
        return arrays[0]
    if len({array.shape for array in arrays}) > 1 or arrays[0].ndim != 2:
        raise PhotongapError("several calibration inputs must be 2D images of one size (frames of the same field); or give one (T, Y, X) stack")
    return np.stack(arrays)


def calibrate_files(inputs: Sequence[Path], *, dark: Sequence[Path] | None = None, axes: str | None = None, plot: Path | None = None):
    """Camera calibration from image files (see :func:`photongap.calibration.calibrate`).

    A ``(T, Y, X)`` stack (or several frames of one field) uses the photon transfer of each
    pixel over time; a single image uses its flat regions. ``plot`` draws the photon
    transfer curve with the fit.
    """
    from photongap.calibration import calibrate, photon_transfer_from_image, photon_transfer_from_stack
    from photongap.plotting import plot_photon_transfer
    from photongap.io import find_images

    data = _stacked(find_images(inputs), axes)
    dark_data = _stacked(find_images(dark), axes) if dark else None
    if data.ndim not in (2, 3):
        raise PhotongapError(f"calibration takes a (T, Y, X) stack or (Y, X) images, got shape {data.shape}; use --axes to say which axis is time")
    calibration = calibrate(data, dark=dark_data)
    if plot is not None:
        transfer = photon_transfer_from_stack(data) if calibration.method.endswith("stack") else photon_transfer_from_image(data)
        plot_photon_transfer(transfer, calibration, plot)
    return calibration
