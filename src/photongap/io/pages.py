"""Memory maps that stay small: handing a map's pages back to the kernel once they are read or written.

A page of a memory-mapped file that this process has touched counts in its resident memory
(RSS) until the map is closed, so reading a 512 MB input and writing a 1 GB output window by
window would otherwise add 1.5 GB to the peak of denoising a 64 x 2048 x 2048 stack. After
``madvise(MADV_DONTNEED)`` a shared file map's pages leave the process but not the file: the
kernel keeps them in its page cache (written ones stay dirty and are written back as usual),
and the next access maps them again from there, so nothing read or written changes.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

SHARED_MODES = ("r", "r+", "w+")
"""The :class:`numpy.memmap` modes that map the file shared; ``c`` (copy-on-write) maps it
privately, and there ``MADV_DONTNEED`` would throw away what was written."""


def file_map(array: Any) -> mmap.mmap | None:
    """The shared map of a file behind ``array`` (a :class:`numpy.memmap` or a view of one), else None."""
    if not isinstance(array, np.memmap) or getattr(array, "mode", None) not in SHARED_MODES:
        return None
    mapped = getattr(array, "_mmap", None)
    return mapped if isinstance(mapped, mmap.mmap) and not mapped.closed else None


def release_pages(array: Any) -> None:
    """Hand back the pages of the memory map behind ``array`` (all of the map, not only the view).

    A no-op for anything else (in-memory arrays, Zarr arrays, copy-on-write maps) and where
    the platform has no ``madvise``. The values stay as they were: what was written is in
    the file's page cache, and what is read next is mapped again from it.

    Examples
    --------
    >>> volume = np.lib.format.open_memmap("out.npy", mode="w+", dtype="float32", shape=(64, 2048, 2048))  # doctest: +SKIP
    >>> volume[0] = 1.0; release_pages(volume)  # doctest: +SKIP
    """
    mapped = file_map(array)
    if mapped is not None and hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)
