"""What files say beside the pixels: OME-TIFF, ImageJ and OME-Zarr (NGFF 0.4) metadata in and out.

Physical units are kept in their short form (``µm``, ``s``) whatever the file spelt
(``um``, ``micron``, NGFF's ``micrometer``), and written back in each format's own spelling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from photongap.errors import PhotongapError
from photongap.io.image import AXES

if TYPE_CHECKING:
    from photongap.io.image import Image

_NGFF_UNITS = {"µm": "micrometer", "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter",
               "s": "second", "ms": "millisecond", "µs": "microsecond", "min": "minute", "h": "hour"}
_UNIT_ALIASES = {"um": "µm", "micron": "µm", "microns": "µm", "\\u00b5m": "µm", "\u03bcm": "µm",
                 **{ngff: short for short, ngff in _NGFF_UNITS.items()}}


@dataclass(frozen=True)
class FileMetadata:
    """The axes, pixel sizes, units and other metadata (see :class:`~photongap.io.Image`) a file declares.

    ``axes`` is empty where the file says nothing; letters outside ``TCZYXS`` (tifffile's
    ``Q``, NGFF's custom axis names) are left for the reader to resolve.
    """

    axes: str = ""
    pixel_sizes: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def normalize_unit(name: str) -> str:
    """The short spelling of a unit: ``normalize_unit("micrometer") == normalize_unit("um") == "µm"``."""
    return _UNIT_ALIASES.get(str(name).lower(), str(name))


# --- reading -----------------------------------------------------------------------------


def tiff_metadata(tif: tifffile.TiffFile) -> FileMetadata:
    """The metadata of the first series of an OME, ImageJ or tifffile-"shaped" TIFF."""
    series = tif.series[0]
    shaped = tif.is_shaped and "axes" in (tif.shaped_metadata or [{}])[0]
    axes = series.axes if tif.is_ome or tif.is_imagej or shaped or "S" in series.axes else ""
    found = _ome_metadata(tif) if tif.is_ome else _imagej_metadata(tif) if tif.is_imagej else FileMetadata()
    metadata = dict(found.metadata)
    if shaped and tif.shaped_metadata[0].get("description"):
        metadata["description"] = tif.shaped_metadata[0]["description"]
    return FileMetadata(axes, found.pixel_sizes, found.units, metadata)


def _ome_metadata(tif: tifffile.TiffFile) -> FileMetadata:
    image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    image = image[0] if isinstance(image, list) else image
    pixels = image["Pixels"]
    sizes = {a: float(pixels[f"PhysicalSize{a}"]) for a in "XYZ" if f"PhysicalSize{a}" in pixels}
    # OME's default unit for physical sizes is the micrometre.
    units = {a: normalize_unit(pixels.get(f"PhysicalSize{a}Unit", "µm")) for a in sizes}
    channels = pixels.get("Channel", [])
    names = [c.get("Name") for c in (channels if isinstance(channels, list) else [channels])]
    metadata = {"channel_names": names} if names and all(names) else {}
    if image.get("Description"):
        metadata["description"] = image["Description"]
    return FileMetadata("", sizes, units, metadata)


def _imagej_metadata(tif: tifffile.TiffFile) -> FileMetadata:
    info = tif.imagej_metadata or {}
    unit = normalize_unit(info.get("unit", ""))
    if not unit or unit == "pixel":
        return FileMetadata()
    # ImageJ stores pixels per unit as the TIFF resolution and the Z step as 'spacing'.
    x_resolution, y_resolution = tif.pages.first.resolution
    sizes = {"X": 1.0 / x_resolution, "Y": 1.0 / y_resolution}
    if "spacing" in info:
        sizes["Z"] = float(info["spacing"])
    return FileMetadata("", sizes, dict.fromkeys(sizes, unit))


def ngff_image(group: Any, path: Path) -> tuple[Any, FileMetadata]:
    """The full-resolution array of an OME-Zarr group and what its NGFF metadata say about it."""
    attrs = group.attrs.asdict()
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise PhotongapError(f"{path}: Zarr group without OME-Zarr 'multiscales' metadata; give the path of the array inside it")
    scales, dataset = multiscales[0], multiscales[0]["datasets"][0]
    data = group[dataset["path"]]
    axes = [a if isinstance(a, dict) else {"name": a} for a in scales.get("axes", [])]
    letters = "".join(a["name"].upper() if a["name"].upper() in AXES else "Q" for a in axes)
    factors = np.ones(data.ndim)
    for transform in dataset.get("coordinateTransformations", []) + scales.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            factors = factors * np.asarray(transform["scale"], dtype=float)
    # A scale is mandatory in NGFF: 1 without a unit says nothing about the pixel size.
    sizes = {a: float(f) for a, f, meta in zip(letters, factors, axes) if a in "TZYX" and (f != 1 or "unit" in meta)}
    units = {a: normalize_unit(meta["unit"]) for a, meta in zip(letters, axes) if a in sizes and "unit" in meta}
    names = [c.get("label") for c in attrs.get("omero", {}).get("channels", [])]
    metadata: dict[str, Any] = {"channel_names": names} if names and all(names) else {}
    description = scales.get("metadata", {}).get("description")
    if description:
        metadata["description"] = description
    return data, FileMetadata(letters, sizes, units, metadata)


# --- writing -----------------------------------------------------------------------------


def _channel_names(like: Image, axes: str, shape: tuple[int, ...]) -> list[str] | None:
    names = like.metadata.get("channel_names")
    return list(names) if "C" in axes and names and len(names) == shape[axes.index("C")] else None


def ome_tiff_tags(axes: str, shape: tuple[int, ...], like: Image, description: str, ome: bool) -> dict[str, Any]:
    """tifffile's ``metadata=`` for an output shaped ``shape`` with ``axes``, carrying ``like``'s metadata.

    With ``ome`` it holds OME pixel sizes, units and channel names; without, only the axes
    and the description (tifffile's "shaped" TIFF).
    """
    metadata: dict[str, Any] = {"axes": axes}
    if ome:
        for a in "XYZ":
            if a in axes and a in like.pixel_sizes:
                metadata[f"PhysicalSize{a}"] = like.pixel_sizes[a]
                metadata[f"PhysicalSize{a}Unit"] = normalize_unit(like.units.get(a, "µm"))
        names = _channel_names(like, axes, shape)
        if names:
            metadata["Channel"] = {"Name": names}
    metadata["Description" if ome else "description"] = description
    return metadata


def ngff_attributes(name: str, axes: str, shape: tuple[int, ...], like: Image, description: str) -> dict[str, Any]:
    """The group attributes of a one-level OME-Zarr (NGFF 0.4) whose array ``"0"`` has ``axes``.

    ``name`` is the image's name (the final file name, never a temporary one); pixel sizes,
    units and channel names come from ``like``.
    """
    kinds = {"T": "time", "C": "channel"}
    ngff_axes = [{"name": a.lower(), "type": kinds.get(a, "space"),
                  **({"unit": _NGFF_UNITS.get(normalize_unit(like.units[a]), like.units[a])} if a in like.units and a != "C" else {})}
                 for a in axes]
    scale = [float(like.pixel_sizes.get(a, 1.0)) if a != "C" else 1.0 for a in axes]
    attributes: dict[str, Any] = {"multiscales": [{
        "version": "0.4", "name": name, "axes": ngff_axes, "metadata": {"description": description},
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]}
    names = _channel_names(like, axes, shape)
    if names:
        attributes["omero"] = {"channels": [{"label": str(n)} for n in names]}
    return attributes
