"""Image files and output paths: suffixes, finding inputs, naming outputs, writing them atomically."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

from photongap.errors import PhotongapError

IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy", ".png", ".zarr")
"""Known image suffixes; ``.ome.tif``, ``.ome.tiff`` and ``.ome.zarr`` end in one of them."""

_OUTPUT_SUFFIX = {".tif": ".tif", ".tiff": ".tif", ".ome.tif": ".ome.tif", ".ome.tiff": ".ome.tif",
                  ".npy": ".npy", ".png": ".tif", ".zarr": ".zarr", ".ome.zarr": ".ome.zarr"}


def image_suffix(path: Path) -> str | None:
    """The known image suffix of ``path`` in lower case (``".ome.tif"``, ``".zarr"``), or None."""
    name = path.name.lower()
    return next((s for s in (".ome.tiff", ".ome.tif", ".ome.zarr", *IMAGE_SUFFIXES) if name.endswith(s)), None)


def existing_image(path: Path) -> Path:
    """``path``, after checking that it exists and has a known image suffix."""
    if not path.exists():
        raise PhotongapError(f"{path}: no such file or folder")
    if image_suffix(path) is None:
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
            images = sorted(p for p in item.iterdir() if not p.name.startswith(".") and image_suffix(p)
                            and p.is_dir() == p.name.lower().endswith(".zarr"))
            if not images:
                raise PhotongapError(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            found += images
        else:
            found.append(existing_image(item))
    if not found:
        raise PhotongapError("no input images given")
    return list(dict.fromkeys(found))


def check_new_outputs(paths: Sequence[str | Path], overwrite: bool) -> None:
    """Refuse outputs that exist unless ``overwrite``: jobs call this before any work, writers again."""
    for path in paths:
        if Path(path).exists() and not overwrite:
            raise PhotongapError(f"{path}: already exists; pass --overwrite to replace it")


def output_path(input_path: str | Path, out: str | Path, suffix: str = "", n_inputs: int = 1, *,
                extension: str | None = None) -> Path:
    """Where the output for ``input_path`` goes: ``out`` itself, or ``out/NAME{suffix}.EXT``.

    ``out`` is a folder when it is an existing folder (not a ``.zarr``), has no image suffix,
    or several inputs are processed. NAME is the input's name without its image suffix
    (``cell.1.ome.tif`` gives ``cell.1``). EXT is ``extension`` if given, else it keeps the
    input's family: ``.tif`` (also for PNG input, since outputs are floats), ``.ome.tif``,
    ``.npy``, ``.zarr``, ``.ome.zarr``. Several inputs: see :func:`output_paths`.
    """
    input_path, out = Path(input_path), Path(out)
    if not _is_folder(out) and n_inputs > 1:
        raise PhotongapError(f"{out}: {n_inputs} inputs need an output folder, not a file")
    if not _is_folder(out):
        return out
    kind = image_suffix(input_path) or input_path.suffix.lower()
    stem = input_path.name[: len(input_path.name) - len(kind)]
    result = out / f"{stem}{suffix}{_extension(extension) if extension else _OUTPUT_SUFFIX.get(kind, '.tif')}"
    if result.resolve() == input_path.resolve():
        raise PhotongapError(f"{result}: the output would replace its input; choose another folder or a suffix")
    return result


@overload
def output_paths(inputs: Sequence[str | Path], out: str | Path, suffix: str = "", *,
                 extension: str | None = None) -> list[Path]: ...
@overload
def output_paths(inputs: Sequence[str | Path], out: str | Path, suffix: tuple[str, ...], *,
                 extension: str | None = None) -> list[tuple[Path, ...]]: ...
def output_paths(inputs: Sequence[str | Path], out: str | Path, suffix: str | tuple[str, ...] = "", *,
                 extension: str | None = None) -> list[Path] | list[tuple[Path, ...]]:
    """Where the outputs of a batch go, one per input (and suffix), refusing any two alike.

    Each path is :func:`output_path`'s; this checks the batch as a whole, so a command that
    calls it before writing anything either gives distinct inputs distinct outputs or stops.

    Parameters
    ----------
    inputs : sequence of str or Path
        The input images, e.g. from :func:`find_images`.
    out : str or Path
        The output folder, or the output file for a single input and suffix.
    suffix : str or tuple of str
        Added to each input's name: ``"_gap"`` gives ``out/NAME_gap.EXT``. A tuple asks for
        several outputs per input, e.g. ``("_samples", "_mean", "_std")``.
    extension : str, optional
        The outputs' type (``".tif"``, ``".npy"``, ``".ome.zarr"``, ...) instead of the input's
        family; ignored when ``out`` is a file.

    Returns
    -------
    list of Path, or of tuples of Path for a tuple ``suffix``
        In the order of ``inputs``; a tuple holds the paths in the order of ``suffix``.

    Raises
    ------
    PhotongapError
        One line, before anything is written, when two inputs would share an output (naming
        both: ``a/cell.tif`` and ``b/cell.tif`` into one folder, or ``cell.png`` and
        ``cell.tif``), an input is given twice, an output would replace an input, or
        several outputs would go to one file. Names that differ only in case count as the
        same, since they are one file on macOS and Windows.

    Examples
    --------
    >>> output_paths(["in/cell.1.tif", "in/cell.2.tif"], "out", "_gap")
    [PosixPath('out/cell.1_gap.tif'), PosixPath('out/cell.2_gap.tif')]
    >>> output_paths(["in/cell.npy"], "out", ("_mean", "_std"), extension=".tif")
    [(PosixPath('out/cell_mean.tif'), PosixPath('out/cell_std.tif'))]
    """
    sources, out = [Path(p) for p in inputs], Path(out)
    suffixes = (suffix,) if isinstance(suffix, str) else suffix
    if not suffixes or len(set(suffixes)) != len(suffixes):
        raise ValueError(f"suffixes {suffixes!r} must be distinct and at least one")
    if len(suffixes) > 1 and not _is_folder(out):
        raise PhotongapError(f"{out}: {len(suffixes)} outputs per input need an output folder, not a file")
    given: dict[Path, Path] = {}
    for source in sources:
        if source.resolve() in given:
            raise PhotongapError(f"{given[source.resolve()]} and {source}: the same file given twice")
        given[source.resolve()] = source
    inputs_by_key = {_file_key(source): source for source in sources}
    claimed: dict[str, tuple[Path, Path]] = {}
    rows: list[tuple[Path, ...]] = []
    for source in sources:
        rows.append(tuple(output_path(source, out, s, len(sources), extension=extension) for s in suffixes))
        for target in rows[-1]:
            key = _file_key(target)
            if key in inputs_by_key:
                raise PhotongapError(f"{target}: the output of {source} would replace the input {inputs_by_key[key]}; "
                                     "choose another folder or a suffix")
            if key in claimed:
                other, other_target = claimed[key]
                where = (f"{target}" if str(target) == str(other_target) else
                         f"{other_target} and {target}, one file on macOS and Windows")
                raise PhotongapError(f"{other} and {source} would both be written to {where}; "
                                     "rename one, or give them separate output folders")
            claimed[key] = (source, target)
    return [row[0] for row in rows] if isinstance(suffix, str) else rows


def _is_folder(out: Path) -> bool:
    return image_suffix(out) is None or (out.is_dir() and not out.name.lower().endswith(".zarr"))


def _extension(extension: str) -> str:
    normal = "." + extension.lower().lstrip(".")
    if normal not in _OUTPUT_SUFFIX.values():
        raise ValueError(f"extension {extension!r} is not one of {sorted(set(_OUTPUT_SUFFIX.values()))}")
    return normal


def _file_key(path: Path) -> str:
    # Compared case-insensitively: on macOS and Windows cell.tif and Cell.tif are one file.
    return str(path.resolve()).casefold()


def partial_name(path: str | Path) -> Path:
    """The hidden temporary sibling that :func:`atomic_output` writes ``path`` under.

    It keeps the suffix (``.png``, ``.ome.tif``, ``.zarr``) so that writers that choose a format
    by the file name choose the right one, and starts with a dot so that :func:`find_images`
    never takes an unfinished output for an input.
    """
    path = Path(path)
    kind = image_suffix(path) or path.suffix
    stem = path.name[: len(path.name) - len(kind)] if kind and path.name.lower().endswith(kind.lower()) else path.name
    return path.with_name(f".{stem}.partial-{os.getpid()}{kind}")


def remove_partials(path: str | Path) -> None:
    """Remove every :func:`partial_name` of ``path`` that processes left behind (a worker killed mid-write).

    Call it only once nothing is writing ``path`` any more: the temporaries of all processes go.
    """
    path = Path(path)
    head, tail = partial_name(path).name.rsplit(f".partial-{os.getpid()}", 1)
    pattern = f"{glob.escape(head)}.partial-*{glob.escape(tail)}"
    for stale in path.parent.glob(pattern) if path.parent.is_dir() else ():
        _remove(stale)


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
