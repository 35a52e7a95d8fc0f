"""Opening images without loading them: TIFF, OME-TIFF, ImageJ TIFF, ``.npy``, PNG, (OME-)Zarr.

Each reader returns the data as stored (memory-mapped or lazy where the format allows) with
whatever axes the file declares; :func:`read_image` then settles the axes, from ``axes=``,
the file, or a guess by the number of dimensions.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile

from photongap.errors import PhotongapError
from photongap.io.files import existing_image, image_suffix
from photongap.io.image import AXES, Image
from photongap.io.metadata import ngff_image, tiff_metadata

MEMMAP_MIN_BYTES = 1 << 22
"""Uncompressed TIFFs at least this large are memory-mapped; smaller ones are read (a
folder of small files would otherwise hold one open map per image)."""

GUESSED_AXES = {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}
"""The axes assumed, by number of dimensions, when neither the file nor the caller gives them."""


def read_image(path: str | Path, axes: str | None = None) -> Image:
    """Open an image without loading it: TIFF, OME-TIFF, ImageJ TIFF, ``.npy``, PNG, (OME-)Zarr.

    Parameters
    ----------
    path : str or Path
    axes : str, optional
        One letter of ``TCZYXS`` per dimension; overrides the file's metadata and the guess.

    Examples
    --------
    >>> image = read_image("cells.ome.tif")  # doctest: +SKIP
    >>> image.axes, image.pixel_sizes  # doctest: +SKIP
    ('TCZYX', {'X': 0.1, 'Y': 0.1, 'Z': 0.5})
    """
    path = existing_image(Path(path))
    kind = image_suffix(path) or ""  # never empty: existing_image checked the suffix
    reader = {".npy": _read_npy, ".png": _read_png, ".zarr": _read_zarr, ".ome.zarr": _read_zarr}.get(kind, _read_tiff)
    try:
        image = reader(path)
    except PhotongapError:
        raise
    except Exception as error:  # corrupt files raise anything from struct.error to KeyError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PhotongapError(f"{path}: cannot read it as a {kind.lstrip('.')} image ({reason})") from None
    resolved = resolve_axes(image, axes)
    return replace(image, axes=resolved, pixel_sizes={a: s for a, s in image.pixel_sizes.items() if a in resolved},
                   units={a: u for a, u in image.units.items() if a in resolved})


def resolve_axes(image: Image, axes: str | None) -> str:
    """The axes of ``image``: ``axes`` if given, else the file's (other letters mapped to the guess's), else the guess.

    Raises a :class:`PhotongapError` naming the file for axes that do not fit the data and
    for colour images.
    """
    shape, path = image.data.shape, image.path
    if axes is not None:
        resolved = axes.upper()
    elif image.axes:
        # Map the file's other letters (tifffile's Q, I, ...; NGFF's custom names) to the guess's unused ones.
        spare = iter(a for a in GUESSED_AXES.get(len(shape), "") if a not in image.axes)
        resolved = "".join(a if a in AXES and image.axes.count(a) == 1 else next(spare, "?") for a in image.axes)
    elif len(shape) >= 3 and shape[-1] in (3, 4) and image.data.dtype == np.uint8:
        raise PhotongapError(f"{path}: looks like an RGB image (shape {shape}); RGB images are not photon counts")
    else:
        resolved = GUESSED_AXES.get(len(shape), "?" * len(shape))
    problem = ("cannot be guessed" if "?" in resolved else
               "has a letter outside TCZYXS" if set(resolved) - set(AXES) else
               f"has {len(resolved)} letters for {len(shape)} dimensions {shape}" if len(resolved) != len(shape) else
               "repeats a letter" if len(set(resolved)) != len(resolved) else
               "lacks Y or X" if not {"Y", "X"} <= set(resolved) else "")
    if problem:
        raise PhotongapError(f"{path}: axes {resolved!r} {problem}; give one letter of TCZYXS per dimension with --axes")
    planar = resolved.find("S") < min(resolved.index("Y"), resolved.index("X"))
    frames = [resolved.replace("S", a) for a in "TZC" if a not in resolved][:2]
    if "S" in resolved and axes is None and planar and frames:
        # tifffile.imwrite stores any (3 or 4, Y, X) stack like this unless told otherwise: often frames, not colours.
        raise PhotongapError(f"{path}: stored as planar RGB (axes {resolved}, shape {shape}) and RGB images are not photon counts; "
                             f"tifffile stores any stack of 3 or 4 frames this way, so if these are frames read them with "
                             f"--axes {' (or '.join(frames)}{')' * (len(frames) - 1)}")
    if "S" in resolved and (axes is None or not planar):
        raise PhotongapError(f"{path}: colour samples (axes {resolved}); RGB images are not photon counts")
    return resolved


def _read_tiff(path: Path) -> Image:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        found = tiff_metadata(tif)
        native = tif.byteorder == ("<" if np.little_endian else ">")
        if series.dataoffset is not None and native and series.nbytes >= MEMMAP_MIN_BYTES:
            data = tifffile.memmap(path, mode="r")
        else:
            data = series.asarray()
        file_format = "ome-tiff" if tif.is_ome else "imagej-tiff" if tif.is_imagej else "tiff"
    return Image(data, found.axes, path, found.pixel_sizes, found.units, found.metadata, file_format)


def _read_npy(path: Path) -> Image:
    return Image(np.load(path, mmap_mode="r", allow_pickle=False), "", path, file_format="npy")


def _read_png(path: Path) -> Image:
    import imageio.v3 as iio  # only PNG needs imageio; keep it off the import path of the rest

    data = iio.imread(path.read_bytes(), extension=".png")  # bytes: imageio leaks handles on failed reads
    if data.ndim != 2:
        raise PhotongapError(f"{path}: colour PNG (shape {data.shape}); RGB images are not photon counts, save greyscale counts")
    return Image(data, "", path, file_format="png")


def _read_zarr(path: Path) -> Image:
    import zarr  # slow to import; only Zarr inputs pay for it

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        description = node.attrs.get("description")
        return Image(node, "", path, metadata={"description": description} if description else {}, file_format="zarr")
    data, found = ngff_image(node, path)
    return Image(data, found.axes, path, found.pixel_sizes, found.units, found.metadata, "ome-zarr")
