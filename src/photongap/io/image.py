"""An image as stored, its axes string, and its ``(Y, X)`` planes read one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

AXES = "TCZYXS"
"""The axis letters: time, channel, depth, rows, columns, colour samples."""


@dataclass(frozen=True)
class Image:
    """An image as stored on disk, with its axes and physical pixel sizes.

    Attributes
    ----------
    data : array-like
        ``np.ndarray``, ``np.memmap`` (large uncompressed TIFF, ``.npy``) or ``zarr.Array``,
        in its stored dtype: not converted to float, possibly not in memory.
    axes : str
        One letter of ``TCZYXS`` per dimension of ``data``, always with ``Y`` and ``X``.
    path : Path
    pixel_sizes, units : dict
        Physical size and unit per axis where known, e.g. ``{"X": 0.1}``, ``{"X": "µm"}``.
    metadata : dict
        Anything else carried to outputs (``channel_names``, ``description``).
    file_format : str
        How it is stored: ``"tiff"``, ``"ome-tiff"``, ``"imagej-tiff"``, ``"npy"``, ``"png"``,
        ``"zarr"`` (a plain array, no axes stored) or ``"ome-zarr"``; empty for images made in
        memory. A ``.zarr`` output written ``like`` a plain Zarr array is a plain array too.
    """

    data: Any
    axes: str
    path: Path
    pixel_sizes: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    file_format: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def plane_axes(self) -> str:
        """The axes with ``Y`` and ``X`` moved last: the layout of :func:`iter_planes` and of outputs."""
        return "".join(self.axes[i] for i in plane_axes_order(self.axes))

    @property
    def plane_shape(self) -> tuple[int, ...]:
        """The shape in :attr:`plane_axes` order."""
        return tuple(self.shape[i] for i in plane_axes_order(self.axes))


def plane_axes_order(axes: str) -> tuple[int, ...]:
    """The permutation putting ``Y`` and ``X`` last: ``plane_axes_order("YXZ") == (2, 0, 1)``."""
    return (*(i for i, a in enumerate(axes) if a not in "YX"), axes.index("Y"), axes.index("X"))


class LazyPlane:
    """A ``(Y, X)`` plane of a lazy array (zarr), read only when sliced or converted.

    ``plane[y0:y1, x0:x1]`` reads that block as an ndarray; ``np.asarray(plane)`` reads it all.
    """

    def __init__(self, data: Any, key: tuple, y_axis: int, x_axis: int) -> None:
        self.data, self.key, self.y_axis, self.x_axis = data, key, y_axis, x_axis
        self.shape = (data.shape[y_axis], data.shape[x_axis])
        self.dtype, self.ndim = np.dtype(data.dtype), 2

    def __getitem__(self, rows_columns: tuple[slice, slice]) -> np.ndarray:
        rows, columns = rows_columns
        key = list(self.key)
        key[self.y_axis], key[self.x_axis] = rows, columns
        block = np.asarray(self.data[tuple(key)])
        return block.T if self.x_axis < self.y_axis else block

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self[:, :] if dtype is None else self[:, :].astype(dtype)


def iter_planes(image: Image) -> Iterator[tuple[tuple[int, ...], np.ndarray | LazyPlane]]:
    """Every ``(Y, X)`` plane with its index over the other axes, in their order.

    The index addresses an output laid out as :attr:`Image.plane_axes` (``writer.array[index]``);
    a 2D image gives one plane with index ``()``. A plane of an ndarray or memmap is a view
    (nothing is read yet); of a zarr array, a :class:`LazyPlane`.
    """
    order = plane_axes_order(image.axes)
    y_axis, x_axis = order[-2:]
    for index in np.ndindex(*(image.shape[i] for i in order[:-2])):
        key: list[Any] = [slice(None)] * len(image.shape)
        for axis, i in zip(order[:-2], index):
            key[axis] = i
        if isinstance(image.data, np.ndarray):
            plane = image.data[tuple(key)]
            yield index, plane.T if x_axis < y_axis else plane
        else:
            yield index, LazyPlane(image.data, tuple(key), y_axis, x_axis)


def volume_axis(axes: str) -> str | None:
    """The third axis a 3D network sees: ``Z`` where the axes have one, else ``T`` (a time-lapse), else None."""
    return next((letter for letter in "ZT" if letter in axes), None)


class LazyVolume:
    """A ``(D, Y, X)`` volume of a lazy array (zarr), read only when sliced.

    ``volume[d, y0:y1, x0:x1]`` (ints or slices for each of the three axes) reads that block
    as an ndarray, its axes in ``(D, Y, X)`` order.
    """

    def __init__(self, data: Any, key: tuple, axes: tuple[int, int, int]) -> None:
        self.data, self.key, self.axes = data, key, axes
        self.shape = tuple(data.shape[axis] for axis in axes)
        self.dtype, self.ndim = np.dtype(data.dtype), 3

    def __getitem__(self, index: tuple) -> np.ndarray:
        key = list(self.key)
        for axis, part in zip(self.axes, index):
            key[axis] = part
        block = np.asarray(self.data[tuple(key)])
        kept = [axis for axis, part in zip(self.axes, index) if isinstance(part, slice)]
        # The block's axes come in stored order; put them in (D, Y, X) order.
        return np.transpose(block, np.argsort(np.argsort(kept))) if kept != sorted(kept) else block

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        block = self[:, :, :]
        return block if dtype is None else block.astype(dtype)


def iter_volumes(image: Image) -> Iterator[tuple[tuple[Any, ...], np.ndarray | LazyVolume]]:
    """Every ``(D, Y, X)`` volume along :func:`volume_axis` with its key into the :attr:`Image.plane_axes` layout.

    The key holds an index for every other axis and ``slice(None)`` for ``D``, so that
    ``writer.array[key]`` is the volume's place in an output laid out as ``plane_axes``.
    A volume of an ndarray or memmap is a view; of a zarr array, a :class:`LazyVolume`.
    """
    letter = volume_axis(image.axes)
    if letter is None:
        raise ValueError(f"axes {image.axes!r} have no Z or T axis")
    order = plane_axes_order(image.axes)
    depth_axis, y_axis, x_axis = image.axes.index(letter), *order[-2:]
    others = [axis for axis in order[:-2] if axis != depth_axis]
    for index in np.ndindex(*(image.shape[axis] for axis in others)):
        by_axis = dict(zip(others, index))
        layout_key = tuple(by_axis.get(axis, slice(None)) for axis in order[:-2])
        key = tuple(by_axis.get(axis, slice(None)) for axis in range(len(image.shape)))
        if isinstance(image.data, np.ndarray):
            kept = [axis for axis in range(len(image.shape)) if axis not in by_axis]
            volume = image.data[key]
            yield layout_key, np.transpose(volume, [kept.index(axis) for axis in (depth_axis, y_axis, x_axis)])
        else:
            yield layout_key, LazyVolume(image.data, key, (depth_axis, y_axis, x_axis))
