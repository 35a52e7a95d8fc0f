"""Writing images piece by piece, whole or not at all: TIFF / OME-TIFF, ``.npy``, OME-Zarr."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from photongap.errors import PhotongapError
from photongap.io.files import atomic_output, check_new_outputs, image_suffix, partial_name
from photongap.io.image import AXES, Image, plane_axes_order
from photongap.io.metadata import ngff_attributes, ome_tiff_tags


class ImageWriter:
    """Write an image piece by piece to a temporary sibling, renamed to ``path`` on success.

    The format follows the suffix: ``.tif`` (OME-TIFF for ``.ome.tif`` or when ``like`` has
    pixel sizes; uncompressed, memory-mapped), ``.npy`` (no axes stored) or ``.zarr``: OME-Zarr
    (NGFF 0.4, chunks ``(1, ..., 1024, 1024)``), except that ``like`` a plain Zarr array it is a
    plain array again, in the input's Zarr format and, for the same layout, its chunks per axis
    (``.ome.zarr`` is always OME-Zarr). ``axes`` must end in ``YX``.

    Inside the ``with`` block, ``writer.array`` takes ``writer.array[plane_index] = plane`` or,
    for blocks, ``writer.array[(*plane_index, slice(y0, y1), slice(x0, x1))] = block`` (the
    chained ``array[i][y0:y1]`` form does not write through to zarr). An exception leaves no
    output and keeps any earlier file at ``path``: the renaming is :func:`atomic_output`'s.

    Examples
    --------
    >>> with ImageWriter("out.ome.tif", image.plane_shape, image.plane_axes, like=image) as writer:  # doctest: +SKIP
    ...     for index, plane in iter_planes(image):
    ...         writer.array[index] = denoise(plane)
    """

    def __init__(self, path: str | Path, shape: Sequence[int], axes: str, *, like: Image | None = None,
                 description: str = "", overwrite: bool = False, dtype: Any = "float32") -> None:
        self.path, self.shape, self.axes, self.dtype = Path(path), tuple(int(n) for n in shape), axes, np.dtype(dtype)
        if len(axes) != len(self.shape) or not axes.endswith("YX") or set(axes) - set(AXES):
            raise ValueError(f"axes {axes!r} must end in YX and match shape {self.shape}")
        self.kind = image_suffix(self.path)
        if self.kind in (None, ".png"):
            raise PhotongapError(f"{self.path}: cannot write this type of file; use .tif, .ome.tif, .npy or .zarr")
        check_new_outputs([self.path], overwrite)
        self.like, self.description = like, description
        self.partial = partial_name(self.path)
        self.array: Any = None
        self._output = contextlib.ExitStack()

    def __enter__(self) -> ImageWriter:
        with contextlib.ExitStack() as output:  # an error here unwinds it: no partial file is left
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.partial = output.enter_context(atomic_output(self.path))
                output.push(self._release)
                self.array = self._create()
            except OSError as error:
                raise PhotongapError(f"{self.path}: cannot write it ({error.strerror or error})") from None
            self._output = output.pop_all()
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        try:
            self._output.__exit__(exc_type, exc, traceback)
        except OSError as error:
            raise PhotongapError(f"{self.path}: cannot write it ({error.strerror or error})") from None
        finally:
            self.array = None

    def _release(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        array, self.array = self.array, None  # close the memory map before the rename
        if exc_type is None and hasattr(array, "flush"):
            array.flush()

    def _create(self) -> Any:
        like = self.like or Image(None, "", Path())
        if self.kind == ".npy":
            return np.lib.format.open_memmap(self.partial, mode="w+", dtype=self.dtype, shape=self.shape)
        if self.kind == ".zarr" and like.file_format == "zarr":
            return _create_zarr_array(self.partial, self.shape, self.dtype, like, self.description)
        if self.kind in (".zarr", ".ome.zarr"):
            # The NGFF name is the file's final name: the partial one is gone after the rename.
            return _create_ome_zarr(self.partial, self.path.name, self.shape, self.axes, self.dtype, like, self.description)
        ome = self.kind in (".ome.tif", ".ome.tiff") or bool(like.pixel_sizes)
        metadata = ome_tiff_tags(self.axes, self.shape, like, self.description, ome)
        return tifffile.memmap(self.partial, shape=self.shape, dtype=self.dtype, ome=ome, photometric="minisblack", metadata=metadata)


def _plane_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*(1 for _ in shape[:-2]), *(min(n, 1024) for n in shape[-2:]))


def _create_zarr_array(path: Path, shape: tuple[int, ...], dtype: np.dtype, like: Image, description: str) -> Any:
    import zarr

    chunks = getattr(like.data, "chunks", None)
    if chunks is not None and shape == like.plane_shape:
        chunks = tuple(chunks[i] for i in plane_axes_order(like.axes))
    else:
        chunks = _plane_chunks(shape)
    zarr_format = getattr(getattr(like.data, "metadata", None), "zarr_format", 3)
    array = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0, zarr_format=zarr_format)
    if description:
        array.attrs["description"] = description
    return array


def _create_ome_zarr(path: Path, name: str, shape: tuple[int, ...], axes: str, dtype: np.dtype, like: Image, description: str) -> Any:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    array = group.create_array("0", shape=shape, chunks=_plane_chunks(shape), dtype=dtype, fill_value=0,
                               chunk_key_encoding={"name": "v2", "separator": "/"})
    group.attrs.update(ngff_attributes(name, axes, shape, like, description))
    return array


def write_image(path: str | Path, array: np.ndarray, axes: str, *, like: Image | None = None,
                description: str = "", overwrite: bool = False) -> Path:
    """Write an in-memory array in one go (see :class:`ImageWriter`); returns the path."""
    array = np.asarray(array)
    with ImageWriter(path, array.shape, axes, like=like, description=description, overwrite=overwrite, dtype=array.dtype) as writer:
        writer.array[...] = array
    return writer.path
