"""Image files and output paths: suffixes, finding inputs, naming outputs, writing them atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

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


def output_path(input_path: str | Path, out: str | Path, suffix: str = "", n_inputs: int = 1) -> Path:
    """Where the output for ``input_path`` goes: ``out`` itself, or ``out/NAME{suffix}.EXT``.

    ``out`` is a folder when it is an existing folder (not a ``.zarr``), has no image suffix,
    or several inputs are processed. EXT keeps the input's family: ``.tif`` (also for PNG
    input, since outputs are floats), ``.ome.tif``, ``.npy``, ``.zarr``, ``.ome.zarr``.
    """
    input_path, out = Path(input_path), Path(out)
    out_kind = image_suffix(out)
    folder = out_kind is None or (out.is_dir() and not out.name.lower().endswith(".zarr"))
    if not folder and n_inputs > 1:
        raise PhotongapError(f"{out}: {n_inputs} inputs need an output folder, not a file")
    if not folder:
        return out
    kind = image_suffix(input_path) or input_path.suffix.lower()
    stem = input_path.name[: len(input_path.name) - len(kind)]
    result = out / f"{stem}{suffix}{_OUTPUT_SUFFIX.get(kind, '.tif')}"
    if result.resolve() == input_path.resolve():
        raise PhotongapError(f"{result}: the output would replace its input; choose another folder or a suffix")
    return result


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
