"""Images on disk: the only module that knows files, paths, formats and axes strings.

Reads TIFF / OME-TIFF / ImageJ TIFF, ``.npy``, greyscale PNG and Zarr / OME-Zarr into an
:class:`Image` whose data stay as stored (memory-mapped or lazy where the format allows, so
a 16384 x 16384 image is never loaded whole), and writes results piece by piece and
atomically with :class:`ImageWriter`. What the values mean (photon counts or camera units)
is :mod:`photongap.camera`'s business.

Axes are strings of one letter per dimension from ``TCZYXS``. Without metadata the
guesses are ``YX`` (2D), ``ZYX`` (3D), ``CZYX`` (4D) and ``TCZYX`` (5D); a 3D time series
or channel stack needs ``axes=`` (``--axes`` on the command line).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from photongap.errors import PhotongapError

AXES = "TCZYXS"
IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy", ".png", ".zarr")
"""Known image suffixes; ``.ome.tif``, ``.ome.tiff`` and ``.ome.zarr`` end in one of them."""

MEMMAP_MIN_BYTES = 1 << 22
"""Uncompressed TIFFs at least this large are memory-mapped; smaller ones are read (a
folder of small files would otherwise hold one open map per image)."""

_GUESSED_AXES = {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}
_OUTPUT_SUFFIX = {".tif": ".tif", ".tiff": ".tif", ".ome.tif": ".ome.tif", ".ome.tiff": ".ome.tif",
                  ".npy": ".npy", ".png": ".tif", ".zarr": ".zarr", ".ome.zarr": ".ome.zarr"}
_NGFF_UNITS = {"µm": "micrometer", "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter",
               "s": "second", "ms": "millisecond", "µs": "microsecond", "min": "minute", "h": "hour"}
_UNIT_ALIASES = {"um": "µm", "micron": "µm", "microns": "µm", "\\u00b5m": "µm", "\u03bcm": "µm",
                 **{ngff: short for short, ngff in _NGFF_UNITS.items()}}


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
    """

    data: Any
    axes: str
    path: Path
    pixel_sizes: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

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


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in (".ome.tiff", ".ome.tif", ".ome.zarr", *IMAGE_SUFFIXES) if name.endswith(s)), None)


def _existing_image(path: Path) -> Path:
    if not path.exists():
        raise PhotongapError(f"{path}: no such file or folder")
    if _suffix(path) is None:
        raise PhotongapError(f"{path}: unknown image type {path.suffix or '(no suffix)'!r}; expected {', '.join(IMAGE_SUFFIXES)}")
    return path


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``inputs``: files as given, every image in a folder (sorted).

    A ``*.zarr`` folder is one image. Folders are not searched recursively; hidden files
    (such as unfinished outputs) are skipped.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir() and not item.name.lower().endswith(".zarr"):
            images = sorted(p for p in item.iterdir() if not p.name.startswith(".") and _suffix(p)
                            and p.is_dir() == p.name.lower().endswith(".zarr"))
            if not images:
                raise PhotongapError(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            found += images
        else:
            found.append(_existing_image(item))
    if not found:
        raise PhotongapError("no input images given")
    return list(dict.fromkeys(found))


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
    path = _existing_image(Path(path))
    kind = _suffix(path)
    reader = {".npy": _read_npy, ".png": _read_png, ".zarr": _read_zarr, ".ome.zarr": _read_zarr}.get(kind, _read_tiff)
    try:
        image = reader(path)
    except PhotongapError:
        raise
    except Exception as error:  # corrupt files raise anything from struct.error to KeyError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PhotongapError(f"{path}: cannot read it as a {kind.lstrip('.')} image ({reason})") from None
    resolved = _resolve_axes(image, axes)
    return replace(image, axes=resolved, pixel_sizes={a: s for a, s in image.pixel_sizes.items() if a in resolved},
                   units={a: u for a, u in image.units.items() if a in resolved})


def _resolve_axes(image: Image, axes: str | None) -> str:
    shape, path = image.data.shape, image.path
    if axes is not None:
        resolved = axes.upper()
    elif image.axes:
        # Map the file's other letters (tifffile's Q, I, ...; NGFF's custom names) to the guess's unused ones.
        spare = iter(a for a in _GUESSED_AXES.get(len(shape), "") if a not in image.axes)
        resolved = "".join(a if a in AXES and image.axes.count(a) == 1 else next(spare, "?") for a in image.axes)
    elif len(shape) >= 3 and shape[-1] in (3, 4) and image.data.dtype == np.uint8:
        raise PhotongapError(f"{path}: looks like an RGB image (shape {shape}); RGB images are not photon counts")
    else:
        resolved = _GUESSED_AXES.get(len(shape), "?" * len(shape))
    problem = ("cannot be guessed" if "?" in resolved else
               "has a letter outside TCZYXS" if set(resolved) - set(AXES) else
               f"has {len(resolved)} letters for {len(shape)} dimensions {shape}" if len(resolved) != len(shape) else
               "repeats a letter" if len(set(resolved)) != len(resolved) else
               "lacks Y or X" if not {"Y", "X"} <= set(resolved) else "")
    if problem:
        raise PhotongapError(f"{path}: axes {resolved!r} {problem}; give one letter of TCZYXS per dimension with --axes")
    if "S" in resolved and (axes is None or resolved.index("S") > min(resolved.index("Y"), resolved.index("X"))):
        raise PhotongapError(f"{path}: colour samples (axes {resolved}); RGB images are not photon counts")
    return resolved


def _read_tiff(path: Path) -> Image:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shaped = tif.is_shaped and "axes" in (tif.shaped_metadata or [{}])[0]
        axes = series.axes if tif.is_ome or tif.is_imagej or shaped or "S" in series.axes else ""
        sizes, units, metadata = _ome_metadata(tif) if tif.is_ome else _imagej_metadata(tif) if tif.is_imagej else ({}, {}, {})
        if shaped and tif.shaped_metadata[0].get("description"):
            metadata["description"] = tif.shaped_metadata[0]["description"]
        native = tif.byteorder == ("<" if np.little_endian else ">")
        if series.dataoffset is not None and native and series.nbytes >= MEMMAP_MIN_BYTES:
            data = tifffile.memmap(path, mode="r")
        else:
            data = series.asarray()
    return Image(data, axes, path, sizes, units, metadata)


def _ome_metadata(tif: tifffile.TiffFile) -> tuple[dict, dict, dict]:
    image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    image = image[0] if isinstance(image, list) else image
    pixels = image["Pixels"]
    sizes = {a: float(pixels[f"PhysicalSize{a}"]) for a in "XYZ" if f"PhysicalSize{a}" in pixels}
    # OME's default unit for physical sizes is the micrometre.
    units = {a: _unit(pixels.get(f"PhysicalSize{a}Unit", "µm")) for a in sizes}
    channels = pixels.get("Channel", [])
    names = [c.get("Name") for c in (channels if isinstance(channels, list) else [channels])]
    metadata = {"channel_names": names} if names and all(names) else {}
    if image.get("Description"):
        metadata["description"] = image["Description"]
    return sizes, units, metadata


def _imagej_metadata(tif: tifffile.TiffFile) -> tuple[dict, dict, dict]:
    info = tif.imagej_metadata or {}
    unit = _unit(info.get("unit", ""))
    if not unit or unit == "pixel":
        return {}, {}, {}
    # ImageJ stores pixels per unit as the TIFF resolution and the Z step as 'spacing'.
    x_resolution, y_resolution = tif.pages.first.resolution
    sizes = {"X": 1.0 / x_resolution, "Y": 1.0 / y_resolution}
    if "spacing" in info:
        sizes["Z"] = float(info["spacing"])
    return sizes, dict.fromkeys(sizes, unit), {}


def _unit(name: str) -> str:
    return _UNIT_ALIASES.get(str(name).lower(), str(name))


def _read_npy(path: Path) -> Image:
    return Image(np.load(path, mmap_mode="r", allow_pickle=False), "", path)


def _read_png(path: Path) -> Image:
    import imageio.v3 as iio  # only PNG needs imageio; keep it off the import path of the rest

    data = iio.imread(path.read_bytes(), extension=".png")  # bytes: imageio leaks handles on failed reads
    if data.ndim != 2:
        raise PhotongapError(f"{path}: colour PNG (shape {data.shape}); RGB images are not photon counts, save greyscale counts")
    return Image(data, "", path)


def _read_zarr(path: Path) -> Image:
    import zarr  # slow to import; only Zarr inputs pay for it

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return Image(node, "", path)
    attrs = node.attrs.asdict()
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise PhotongapError(f"{path}: Zarr group without OME-Zarr 'multiscales' metadata; give the path of the array inside it")
    scales, dataset = multiscales[0], multiscales[0]["datasets"][0]
    data = node[dataset["path"]]
    axes = [a if isinstance(a, dict) else {"name": a} for a in scales.get("axes", [])]
    letters = "".join(a["name"].upper() if a["name"].upper() in AXES else "Q" for a in axes)
    factors = np.ones(data.ndim)
    for transform in dataset.get("coordinateTransformations", []) + scales.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            factors = factors * np.asarray(transform["scale"], dtype=float)
    # A scale is mandatory in NGFF: 1 without a unit says nothing about the pixel size.
    sizes = {a: float(f) for a, f, meta in zip(letters, factors, axes) if a in "TZYX" and (f != 1 or "unit" in meta)}
    units = {a: _unit(meta["unit"]) for a, meta in zip(letters, axes) if a in sizes and "unit" in meta}
    names = [c.get("label") for c in attrs.get("omero", {}).get("channels", [])]
    metadata = {"channel_names": names} if names and all(names) else {}
    description = scales.get("metadata", {}).get("description")
    return Image(data, letters, path, sizes, units, {**metadata, **({"description": description} if description else {})})


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


def check_new_outputs(paths: Sequence[str | Path], overwrite: bool) -> None:
    """Refuse outputs that exist unless ``overwrite``: jobs call this before any work, writers again."""
    for path in paths:
        if Path(path).exists() and not overwrite:
            raise PhotongapError(f"{path}: already exists; pass --overwrite to replace it")


class ImageWriter:
    """Write an image piece by piece to a temporary sibling, renamed to ``path`` on success.

    The format follows the suffix: ``.tif`` (OME-TIFF for ``.ome.tif`` or when ``like`` has
    pixel sizes; uncompressed, memory-mapped), ``.npy`` (no axes stored) or ``.zarr`` (OME-Zarr
    NGFF 0.4, chunks ``(1, ..., 1024, 1024)``). ``axes`` must end in ``YX``.

    Inside the ``with`` block, ``writer.array`` takes ``writer.array[plane_index] = plane`` or,
    for blocks, ``writer.array[(*plane_index, slice(y0, y1), slice(x0, x1))] = block`` (the
    chained ``array[i][y0:y1]`` form does not write through to zarr). An exception leaves no
    output and keeps any earlier file at ``path``.

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
        self.kind = _suffix(self.path)
        if self.kind in (None, ".png"):
            raise PhotongapError(f"{self.path}: cannot write this type of file; use .tif, .ome.tif, .npy or .zarr")
        check_new_outputs([self.path], overwrite)
        self.like, self.description = like, description
        self.partial = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self.array: Any = None

    def __enter__(self) -> ImageWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _remove(self.partial)
            self.array = self._create()
        except OSError as error:
            _remove(self.partial)
            raise PhotongapError(f"{self.path}: cannot write it ({error.strerror or error})") from None
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        try:
            if exc_type is None:
                if hasattr(self.array, "flush"):
                    self.array.flush()
                self.array = None  # close the memory map before the rename
                _replace(self.partial, self.path)
        except OSError as error:
            raise PhotongapError(f"{self.path}: cannot write it ({error.strerror or error})") from None
        finally:
            self.array = None
            _remove(self.partial)  # after a successful rename there is nothing left to remove

    def _create(self) -> Any:
        like = self.like or Image(None, "", Path())
        if self.kind == ".npy":
            return np.lib.format.open_memmap(self.partial, mode="w+", dtype=self.dtype, shape=self.shape)
        if self.kind in (".zarr", ".ome.zarr"):
            return _create_ome_zarr(self.partial, self.shape, self.axes, self.dtype, like, self.description)
        metadata: dict[str, Any] = {"axes": self.axes}
        ome = self.kind in (".ome.tif", ".ome.tiff") or bool(like.pixel_sizes)
        if ome:
            for a in "XYZ":
                if a in self.axes and a in like.pixel_sizes:
                    metadata[f"PhysicalSize{a}"] = like.pixel_sizes[a]
                    metadata[f"PhysicalSize{a}Unit"] = _unit(like.units.get(a, "µm"))
            names = like.metadata.get("channel_names")
            if "C" in self.axes and names and len(names) == self.shape[self.axes.index("C")]:
                metadata["Channel"] = {"Name": list(names)}
        metadata["Description" if ome else "description"] = self.description
        return tifffile.memmap(self.partial, shape=self.shape, dtype=self.dtype, ome=ome, photometric="minisblack", metadata=metadata)


def _create_ome_zarr(path: Path, shape: tuple[int, ...], axes: str, dtype: np.dtype, like: Image, description: str) -> Any:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    chunks = (*(1 for _ in shape[:-2]), *(min(n, 1024) for n in shape[-2:]))
    array = group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                               chunk_key_encoding={"name": "v2", "separator": "/"})
    kinds = {"T": "time", "C": "channel"}
    ngff_axes = [{"name": a.lower(), "type": kinds.get(a, "space"),
                  **({"unit": _NGFF_UNITS.get(_unit(like.units[a]), like.units[a])} if a in like.units and a != "C" else {})}
                 for a in axes]
    scale = [float(like.pixel_sizes.get(a, 1.0)) if a != "C" else 1.0 for a in axes]
    group.attrs["multiscales"] = [{
        "version": "0.4", "name": path.name, "axes": ngff_axes, "metadata": {"description": description},
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]
    names = like.metadata.get("channel_names")
    if "C" in axes and names and len(names) == shape[axes.index("C")]:
        group.attrs["omero"] = {"channels": [{"label": str(n)} for n in names]}
    return array


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(partial: Path, path: Path) -> None:
    if path.exists() and (path.is_dir() or partial.is_dir()):
        # os.replace swaps a file for a file atomically but not a folder (zarr): move the old one aside first.
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(partial, path)
        _remove(old)
    else:
        os.replace(partial, path)


def partial_name(path: str | Path) -> Path:
    """The hidden temporary sibling that :func:`atomic_output` writes ``path`` under.

    It keeps the suffix (``.png``, ``.ome.tif``, ``.zarr``) so that writers that choose a format
    by the file name choose the right one, and starts with a dot so that :func:`find_images`
    never takes an unfinished output for an input.
    """
    path = Path(path)
    kind = _suffix(path) or path.suffix
    stem = path.name[: len(path.name) - len(kind)] if kind and path.name.lower().endswith(kind.lower()) else path.name
    return path.with_name(f".{stem}.partial-{os.getpid()}{kind}")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Write ``path`` (a file or a folder such as Zarr) whole or not at all.

    Yields a temporary sibling (:func:`partial_name`) to write to. When the ``with`` block
    ends normally it replaces ``path``; when it raises, the temporary is removed and any
    earlier ``path`` is left as it was. This is the only place that renames outputs into
    place: model files, images, figures, movies, calibrations and checkpoints all go through it.

    Examples
    --------
    >>> with atomic_output("model.pt") as partial:  # doctest: +SKIP
    ...     torch.save(payload, partial)
    """
    path = Path(path)
    partial = partial_name(path)
    _remove(partial)
    try:
        yield partial
        _replace(partial, path)
    finally:
        _remove(partial)


def write_image(path: str | Path, array: np.ndarray, axes: str, *, like: Image | None = None,
                description: str = "", overwrite: bool = False) -> Path:
    """Write an in-memory array in one go (see :class:`ImageWriter`); returns the path."""
    array = np.asarray(array)
    with ImageWriter(path, array.shape, axes, like=like, description=description, overwrite=overwrite, dtype=array.dtype) as writer:
        writer.array[...] = array
    return writer.path


def output_path(input_path: str | Path, out: str | Path, suffix: str = "", n_inputs: int = 1) -> Path:
    """Where the output for ``input_path`` goes: ``out`` itself, or ``out/NAME{suffix}.EXT``.

    ``out`` is a folder when it is an existing folder (not a ``.zarr``), has no image suffix,
    or several inputs are processed. EXT keeps the input's family: ``.tif`` (also for PNG
    input, since outputs are floats), ``.ome.tif``, ``.npy``, ``.zarr``, ``.ome.zarr``.
    """
    input_path, out = Path(input_path), Path(out)
    out_kind = _suffix(out)
    folder = out_kind is None or (out.is_dir() and not out.name.lower().endswith(".zarr"))
    if not folder and n_inputs > 1:
        raise PhotongapError(f"{out}: {n_inputs} inputs need an output folder, not a file")
    if not folder:
        return out
    kind = _suffix(input_path) or input_path.suffix.lower()
    stem = input_path.name[: len(input_path.name) - len(kind)]
    result = out / f"{stem}{suffix}{_OUTPUT_SUFFIX.get(kind, '.tif')}"
    if result.resolve() == input_path.resolve():
        raise PhotongapError(f"{result}: the output would replace its input; choose another folder or a suffix")
    return result
