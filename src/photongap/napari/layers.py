"""napari layers as photon counts, and what a result layer keeps of its source.

NumPy and napari's layer classes only (no Qt), so that these rules are testable alone. A
layer's axes come from its ``axis_labels`` where they name an axis (``t``, ``z``, ``c``, ``y``,
``x``, or ``time``, ``channel``, ``depth``) and are guessed as for files otherwise
(:func:`photongap.io.readers.resolve_axes`: ``YX``, ``ZYX``, ``CZYX``, ``TCZYX``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import napari.layers
import numpy as np

from photongap.camera import Camera
from photongap.errors import PhotongapError
from photongap.io import Image, plane_axes_order
from photongap.io.readers import resolve_axes

AXIS_NAMES = {"t": "T", "time": "T", "c": "C", "channel": "C", "z": "Z", "depth": "Z", "y": "Y", "x": "X"}
"""napari axis labels that name one of photongap's axes (lower case)."""


@dataclass(frozen=True)
class LayerCounts:
    """A layer's data as float32 photon counts, its axes moved so that ``Y`` and ``X`` come last.

    Attributes
    ----------
    counts : np.ndarray
        ``(..., Y, X)`` counts in :attr:`axes` order.
    axes : str
        One letter of ``TCZYX`` per axis of ``counts`` (Y and X last).
    order : tuple of int
        ``counts = layer_data.transpose(order)``; :meth:`to_layer` undoes it.
    """

    counts: np.ndarray
    axes: str
    order: tuple[int, ...]

    def planes(self) -> list[tuple[tuple[int, ...], np.ndarray]]:
        """Every ``(Y, X)`` plane with its index over the leading axes."""
        return [(index, self.counts[index]) for index in np.ndindex(*self.counts.shape[:-2])]

    def to_layer(self, array: np.ndarray, leading: int = 0) -> np.ndarray:
        """``array`` (``leading`` extra axes, then :attr:`counts`' layout) back in the layer's axis order."""
        inverse = np.argsort(self.order)
        return np.transpose(array, (*range(leading), *(leading + int(axis) for axis in inverse)))


def layer_axes(layer: Any) -> str:
    """The axes string of an image layer, from its axis labels where they name axes."""
    labels = [AXIS_NAMES.get(str(label).strip().lower(), "?") for label in layer.axis_labels]
    # Unnamed axes ("?") take the guess's unused letters, as unknown letters in a file do.
    known = "".join(labels) if any(label != "?" for label in labels) else ""
    return resolve_axes(Image(layer.data, known, Path(layer.name)), None)


def layer_counts(layer: Any, camera: Camera = Camera()) -> LayerCounts:
    """An image layer's data as photon counts, checked (or converted by ``camera``) as files are.

    Raises a :class:`PhotongapError` for layers that cannot hold photon counts: not an image,
    RGB, multiscale (pyramids hold resampled values), or values that are not counts.
    """
    if not isinstance(layer, napari.layers.Image):
        raise PhotongapError(f"{layer.name}: not an image layer")
    if getattr(layer, "rgb", False):
        raise PhotongapError(f"{layer.name}: an RGB layer; RGB images are not photon counts")
    if getattr(layer, "multiscale", False):
        raise PhotongapError(f"{layer.name}: a multiscale layer; open its full-resolution level as a layer of its own")
    axes = layer_axes(layer)
    order = plane_axes_order(axes)
    counts = camera.to_counts(np.transpose(np.asarray(layer.data), order), layer.name)
    return LayerCounts(np.ascontiguousarray(counts), "".join(axes[i] for i in order), tuple(order))


def result_layer(source: Any, data: np.ndarray, tag: str, *, leading: str | None = None, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any], str]:
    """Layer data for a result of ``source``: named ``"NAME [tag]"``, in its world coordinates.

    The result keeps the source's ``scale``, ``translate``, ``axis_labels`` and ``units``;
    ``leading`` names one extra first axis (e.g. ``"sample"``), of unit spacing at 0.
    ``kwargs`` are further layer options (``colormap``, ``contrast_limits``, ...).
    """
    scale, translate = list(source.scale), list(source.translate)
    labels, units = list(source.axis_labels), [str(unit) for unit in source.units]
    if leading is not None:
        scale, translate, labels, units = [1.0, *scale], [0.0, *translate], [leading, *labels], ["pixel", *units]
    meta = dict(name=f"{source.name} [{tag}]", scale=scale, translate=translate, axis_labels=labels, units=units)
    return data, {**meta, **kwargs}, "image"


def with_axes(method: Any, axes: str) -> dict[str, Any]:
    """``{"axes": axes}`` if the model method takes the input's axes, else nothing.

    A 2D model treats every ``(Y, X)`` plane alone and needs no axes; a model that sees
    volumes must know which axis is Z and which T, so the layer's axes go with its data
    wherever the API asks for them.
    """
    import inspect

    return {"axes": axes} if "axes" in inspect.signature(method).parameters else {}
