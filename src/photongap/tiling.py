"""Prediction over images of any size: tiled logits, stitched, then one softmax.

The softmax of GAP is over the whole image, so tiles are never normalised on their own:
each tile's logits are computed with a margin of context, only the tile's centre is kept
(where the tile sees the most context, so stitched logits match an untiled pass), and
the normaliser is taken over the stitched image. Inputs and outputs may be memory-mapped
arrays or Zarr arrays: they are read and written tile by tile and block by block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from photongap.config import DEFAULT_OVERLAP
from photongap.physics import log_normaliser, mmse_from_logits
from photongap.runtime import LogitsFn

ROWS_PER_BLOCK = 1024


@dataclass(frozen=True)
class Tile:
    """One tile: the window read (with margin) and the core it writes."""

    window_rows: np.ndarray
    window_cols: np.ndarray
    core: tuple[slice, slice]
    """Where the core lies in the output image."""
    core_in_window: tuple[slice, slice]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _reflect(indices: np.ndarray, size: int) -> np.ndarray:
    """Mirror indices into ``[0, size)`` without repeating the edge pixel (numpy's 'reflect')."""
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    folded = np.abs(indices) % period
    return np.where(folded >= size, period - folded, folded)


def _axis_windows(size: int, tile: int, margin: int, multiple: int, span: slice | None = None) -> Iterator[tuple[np.ndarray, slice, slice]]:
    """Windows along one axis: (indices read, core in image, core in window).

    Windows lie inside the axis reflect-padded to ``multiple`` (what an untiled pass sees)
    and start on multiples of ``multiple``, so each window pools on the same grid as the
    untiled pass and border pixels see the same context: tiled logits match untiled ones.
    With ``span``, the cores cover only ``span`` (a block of a larger image, e.g. one chunk of
    a Zarr array), seeing the same context as they would in the whole image's plan.
    """
    low, high = (0, size) if span is None else (span.start, span.stop)
    padded = round_up(size, multiple)
    window = min(tile, padded)
    if window == padded:
        yield _reflect(np.arange(padded), size), slice(low, high), slice(low, high)
        return
    core, start = window - 2 * margin, low
    while start < high:
        first = min(max((start - margin) // multiple * multiple, 0), padded - window)
        # A span that starts off the pooling grid shortens the core so that it keeps its margin on the right.
        limit = padded if first + window == padded else first + window - margin
        stop = min(start + core, high, limit)
        yield _reflect(np.arange(first, first + window), size), slice(start, stop), slice(start - first, stop - first)
        start = stop


def tile_margin(overlap: int, context: int, multiple: int) -> int:
    """Context kept on each side of a tile's core: ``max(overlap // 2, context)``, rounded up to ``multiple``.

    Rounded so that every core starts on the network's pooling grid: its window then starts
    exactly ``margin`` before it, and the core has the full margin of context on both sides.
    """
    return round_up(max(overlap // 2, context, 0), multiple)


def plan_tiles(
    shape: tuple[int, int], tile: int | None, overlap: int, multiple: int, context: int = 0, region: tuple[slice, slice] | None = None
) -> list[Tile]:
    """Cut an image of ``shape`` (or the ``region`` of it) into tiles whose cores cover it exactly once.

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)`` of the image.
    tile : int or None
        Tile side in pixels (rounded up to ``multiple``); None means one tile, the whole image.
        A tile too small for its context is enlarged until its core is at least twice its
        margin (a tile of four margins).
    overlap : int
        Context shared by neighbouring windows beyond ``context``: each side of a core sees
        at least ``overlap // 2`` pixels.
    multiple : int
        The network's size multiple; windows are padded (by reflection) to it.
    context : int
        The network's receptive radius (:func:`photongap.network.receptive_radius`): with
        at least this much context on each side a core's logits equal an untiled pass's.
    region : (slice, slice), optional
        Only this block of the image (``start:stop`` in rows and columns): its cores, with
        windows in the whole image's coordinates. What one task of a cluster computes.
    """
    height, width = shape
    rows_span, cols_span = region if region is not None else (None, None)
    if tile is None:
        tile, margin = round_up(max(height, width), multiple), 0
    else:
        margin = tile_margin(overlap, context, multiple)
        # A core narrower than its margins would cost more in context than it gives: at least 2 margins.
        tile = max(round_up(tile, multiple), 4 * margin, multiple)
    tiles = []
    for rows, core_y, in_y in _axis_windows(height, tile, margin, multiple, rows_span):
        for cols, core_x, in_x in _axis_windows(width, tile, margin, multiple, cols_span):
            tiles.append(Tile(rows, cols, (core_y, core_x), (in_y, in_x)))
    return tiles


def _read_window(image: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Read a reflected window, touching only the block of ``image`` it needs."""
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    block = np.asarray(image[r0:r1, c0:c1], dtype=np.float32)
    return block[np.ix_(rows - r0, cols - c0)]


def predict_logits(
    logits_fn: LogitsFn,
    counts: Any,
    *,
    tile: int | None,
    overlap: int,
    multiple: int,
    context: int = 0,
    batch_size: int = 4,
    out: Any | None = None,
    progress: Callable[[int], None] | None = None,
    region: tuple[slice, slice] | None = None,
) -> Any:
    """Logits of a whole image (or of a ``region`` of it), computed tile by tile and stitched.

    Parameters
    ----------
    logits_fn : LogitsFn
        The network call (device, precision and memory format are its business).
    counts : array-like
        ``(Y, X)`` photon counts; numpy, memory-mapped or Zarr.
    tile, overlap, multiple, context
        See :func:`plan_tiles`.
    batch_size : int
        Tiles per network call.
    out : array-like, optional
        ``(Y, X)`` float32 destination (e.g. a memory map); a new array if omitted.
    progress : callable, optional
        Called with the number of tiles finished after each batch.
    region : (slice, slice), optional
        Only this block (see :func:`plan_tiles`); ``out`` then has the block's shape.

    Returns
    -------
    array-like
        ``out``, holding the stitched logits.
    """
    shape = tuple(counts.shape)
    rows, cols = region if region is not None else (slice(0, shape[0]), slice(0, shape[1]))
    out = np.empty((rows.stop - rows.start, cols.stop - cols.start), dtype=np.float32) if out is None else out
    tiles = plan_tiles(shape, tile, overlap, multiple, context, region)
    for first in range(0, len(tiles), batch_size):
        batch = tiles[first : first + batch_size]
        # Windows at the image's edge can be smaller than inner ones: group by shape.
        by_shape: dict[tuple[int, int], list[Tile]] = {}
        for item in batch:
            by_shape.setdefault((len(item.window_rows), len(item.window_cols)), []).append(item)
        for group in by_shape.values():
            windows = np.stack([_read_window(counts, t.window_rows, t.window_cols) for t in group])
            logits = logits_fn(torch.from_numpy(windows)[:, None]).float().cpu().numpy()[:, 0]
            for item, tile_logits in zip(group, logits):
                core_y, core_x = item.core
                out[core_y.start - rows.start : core_y.stop - rows.start, core_x.start - cols.start : core_x.stop - cols.start] = tile_logits[item.core_in_window]
        if progress is not None:
            progress(len(batch))
    return out


def row_blocks(height: int) -> Iterator[slice]:
    """Slices of at most ``ROWS_PER_BLOCK`` rows covering ``height``: how large planes are read and written."""
    for start in range(0, height, ROWS_PER_BLOCK):
        yield slice(start, min(start + ROWS_PER_BLOCK, height))


def image_log_normaliser(logits: Any) -> float:
    """:func:`photongap.physics.log_normaliser` of a (possibly memory-mapped) ``(Y, X)`` logits image, block by block."""
    blocks = [log_normaliser(torch.from_numpy(np.asarray(logits[rows]))[None]) for rows in row_blocks(logits.shape[0])]
    return float(torch.logsumexp(torch.cat(blocks), dim=0))


def mmse_image(logits: Any, total_photons: float, out: Any | None = None) -> Any:
    """The expected clean image ``softmax(logits) * total_photons`` over a stitched logits image.

    :func:`photongap.physics.mmse_from_logits` block by block, with the whole image's
    normaliser, so even a 16k x 16k plane needs no second full-size buffer: ``out`` may be
    the ``logits`` array itself (computed in place).
    """
    out = np.empty(logits.shape, dtype=np.float32) if out is None else out
    normaliser = torch.tensor([image_log_normaliser(logits)], dtype=torch.float64)
    total = torch.tensor([total_photons], dtype=torch.float64)
    for rows in row_blocks(logits.shape[0]):
        block = torch.from_numpy(np.asarray(logits[rows]))[None]
        out[rows] = mmse_from_logits(block, total, normaliser)[0].numpy()
    return out


def padded(logits_fn: LogitsFn, multiple: int, batch_size: int) -> LogitsFn:
    """A logits function for batches of any ``(Y, X)``: reflect-padded to ``multiple``, in chunks.

    Tensors stay on their device (the sampler's loop runs there); each network call holds at
    most ``batch_size`` images.
    """

    def logits(counts: torch.Tensor) -> torch.Tensor:
        height, width = counts.shape[-2:]
        pad_y, pad_x = round_up(height, multiple) - height, round_up(width, multiple) - width
        mode = "reflect" if pad_y < height and pad_x < width else "replicate"
        if pad_y or pad_x:
            counts = torch.nn.functional.pad(counts, (0, pad_x, 0, pad_y), mode=mode)
        out = torch.cat([logits_fn(chunk) for chunk in counts.split(batch_size)])
        return out[..., :height, :width]

    return logits


def tiled(logits_fn: LogitsFn, *, tile: int, overlap: int, multiple: int, context: int, batch_size: int) -> LogitsFn:
    """A logits function that stitches each image of a batch from tiles (see :func:`predict_logits`)."""

    def logits(counts: torch.Tensor) -> torch.Tensor:
        planes = counts[:, 0].cpu().numpy()
        stitched = [
            predict_logits(logits_fn, plane, tile=tile, overlap=overlap, multiple=multiple, context=context, batch_size=batch_size) for plane in planes
        ]
        return torch.from_numpy(np.stack(stitched))[:, None].to(counts.device)

    return logits


def image_logits_fn(logits_fn: LogitsFn, shape: tuple[int, int], *, tile: int | None, multiple: int, context: int, batch_size: int) -> LogitsFn:
    """Logits of whole images of ``shape``: in one pass (padded, in batches) up to ``tile``, else tile by tile.

    What the sampler calls: its images stay on their device unless they must be tiled.
    """
    if tile is not None and max(shape) > tile:
        return tiled(logits_fn, tile=tile, overlap=DEFAULT_OVERLAP, multiple=multiple, context=context, batch_size=batch_size)
    return padded(logits_fn, multiple, batch_size)


def denoise_plane(
    logits_fn: LogitsFn,
    counts: Any,
    *,
    tile: int | None,
    overlap: int,
    multiple: int,
    context: int,
    batch_size: int,
    out: Any | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """MMSE denoising of one ``(Y, X)`` plane of any size: ``softmax(stitched logits) * sum(counts)``.

    ``counts`` may be memory-mapped or lazy: it is read block by block. A numpy (or
    memory-mapped) ``out`` first holds the logits and is then normalised in place, so even a
    16k x 16k plane needs no second full-size buffer.
    """
    total = float(sum(np.asarray(counts[rows, :], dtype=np.float64).sum() for rows in row_blocks(counts.shape[-2])))
    target = out if isinstance(out, np.ndarray) else None
    logits = predict_logits(
        logits_fn, counts, tile=tile, overlap=overlap, multiple=multiple, context=context, batch_size=batch_size, out=target, progress=progress
    )
    result = mmse_image(logits, total, out=logits)
    if out is not None and target is None:
        out[...] = result
        return out
    return result
