"""Prediction over images of any size: tiled logits, stitched, then one softmax.

The softmax of GAP is over the whole image, so tiles are never normalised on their own:
each tile's logits are computed with a margin of context, only the tile's centre is kept
(where the tile sees the most context, so stitched logits match an untiled pass), and
the normaliser is taken over the stitched image. Inputs and outputs may be memory-mapped
arrays or Zarr arrays: they are read and written tile by tile and block by block, and a
memory map's pages are handed back as it goes (:func:`photongap.io.pages.release_pages`), so
the process never holds the whole input or output in memory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from photongap.config import DEFAULT_OVERLAP, MAX_TILE_VOXELS
from photongap.io.pages import release_pages
from photongap.physics import log_normaliser, mmse_from_logits
from photongap.runtime import LogitsFn

ROWS_PER_BLOCK = 1024


@dataclass(frozen=True)
class Tile:
    """One tile: the window read (with margin) and the core it writes, per axis (``(Y, X)`` or ``(D, Y, X)``)."""

    windows: tuple[np.ndarray, ...]
    """The indices read along each axis (reflected at the image's ends)."""
    core: tuple[slice, ...]
    """Where the core lies in the output image."""
    core_in_window: tuple[slice, ...]

    @property
    def window_rows(self) -> np.ndarray:
        return self.windows[-2]

    @property
    def window_cols(self) -> np.ndarray:
        return self.windows[-1]


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


def _per_axis(value: Any, axes: int) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * axes


def plan_tiles(
    shape: tuple[int, ...],
    tile: int | None | tuple[int | None, ...],
    overlap: int,
    multiple: int | tuple[int, ...],
    context: int | tuple[int, ...] = 0,
    region: tuple[slice, ...] | None = None,
) -> list[Tile]:
    """Cut an image of ``shape`` (or the ``region`` of it) into tiles whose cores cover it exactly once.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` of the image, or ``(D, Y, X)`` of a volume.
    tile : int, None, or one per axis
        Tile side in pixels (rounded up to ``multiple``); None means one tile along that axis
        (the whole image). A tile too small for its context is enlarged until its core is at
        least twice its margin (a tile of four margins).
    overlap : int
        Context shared by neighbouring windows beyond ``context``: each side of a core sees
        at least ``overlap // 2`` pixels.
    multiple : int or one per axis
        The network's size multiple; windows are padded (by reflection) to it.
    context : int or one per axis
        The network's receptive radius (:func:`photongap.network.receptive_radii`): with
        at least this much context on each side a core's logits equal an untiled pass's.
    region : tuple of slices, optional
        Only this block of the image (``start:stop`` along each axis): its cores, with
        windows in the whole image's coordinates. What one task of a cluster computes.
    """
    axes = len(shape)
    spans = tuple(region) if region is not None else (None,) * axes
    tiles_per_axis = []
    for size, side, step, reach, span in zip(shape, _per_axis(tile, axes), _per_axis(multiple, axes), _per_axis(context, axes), spans):
        if side is None:
            side, margin = round_up(size, step), 0
        else:
            margin = tile_margin(overlap, reach, step)
            # A core narrower than its margins would cost more in context than it gives: at least 2 margins.
            side = max(round_up(side, step), 4 * margin, step)
        tiles_per_axis.append(list(_axis_windows(size, side, margin, step, span)))
    return [
        Tile(tuple(w[0] for w in combination), tuple(w[1] for w in combination), tuple(w[2] for w in combination))
        for combination in itertools.product(*tiles_per_axis)
    ]


def _read_window(image: Any, windows: tuple[np.ndarray, ...]) -> np.ndarray:
    """Read a reflected window, touching only the block of ``image`` it needs."""
    starts = [int(w.min()) for w in windows]
    block = np.asarray(image[tuple(slice(start, int(w.max()) + 1) for start, w in zip(starts, windows))], dtype=np.float32)
    return block[np.ix_(*(w - start for start, w in zip(starts, windows)))]


def predict_logits(
    logits_fn: LogitsFn,
    counts: Any,
    *,
    tile: int | None | tuple[int | None, ...],
    overlap: int,
    multiple: int | tuple[int, ...],
    context: int | tuple[int, ...] = 0,
    batch_size: int = 4,
    out: Any | None = None,
    progress: Callable[[int], None] | None = None,
    region: tuple[slice, ...] | None = None,
) -> Any:
    """Logits of a whole image or volume (or of a ``region`` of it), computed tile by tile and stitched.

    Parameters
    ----------
    logits_fn : LogitsFn
        The network call (device, precision and memory format are its business).
    counts : array-like
        ``(Y, X)`` photon counts, or a ``(D, Y, X)`` volume for a 3D network; numpy,
        memory-mapped or Zarr.
    tile, overlap, multiple, context
        See :func:`plan_tiles`.
    batch_size : int
        Tiles per network call.
    out : array-like, optional
        Float32 destination of the shape of ``counts`` (e.g. a memory map); a new array if omitted.
    progress : callable, optional
        Called with the number of tiles finished after each batch.
    region : tuple of slices, optional
        Only this block (see :func:`plan_tiles`); ``out`` then has the block's shape.

    Returns
    -------
    array-like
        ``out``, holding the stitched logits.
    """
    shape = tuple(counts.shape)
    spans = tuple(region) if region is not None else tuple(slice(0, size) for size in shape)
    out = np.empty(tuple(span.stop - span.start for span in spans), dtype=np.float32) if out is None else out
    tiles = plan_tiles(shape, tile, overlap, multiple, context, region)
    for first in range(0, len(tiles), batch_size):
        batch = tiles[first : first + batch_size]
        # Windows at the image's edge can be smaller than inner ones: group by shape.
        by_shape: dict[tuple[int, ...], list[Tile]] = {}
        for item in batch:
            by_shape.setdefault(tuple(len(w) for w in item.windows), []).append(item)
        for group in by_shape.values():
            windows = np.stack([_read_window(counts, t.windows) for t in group])
            logits = logits_fn(torch.from_numpy(windows)[:, None]).float().cpu().numpy()[:, 0]
            for item, tile_logits in zip(group, logits):
                out[tuple(slice(core.start - span.start, core.stop - span.start) for core, span in zip(item.core, spans))] = tile_logits[item.core_in_window]
        release_pages(counts)
        release_pages(out)
        if progress is not None:
            progress(len(batch))
    return out


def row_blocks(height: int) -> Iterator[slice]:
    """Slices of at most ``ROWS_PER_BLOCK`` rows covering ``height``: how large planes are read and written."""
    for start in range(0, height, ROWS_PER_BLOCK):
        yield slice(start, min(start + ROWS_PER_BLOCK, height))


def image_blocks(shape: tuple[int, ...]) -> Iterator[tuple[int | slice, ...]]:
    """Keys of blocks covering an image: row blocks of a ``(Y, X)`` plane, or of each plane of a ``(D, Y, X)`` volume."""
    for leading in np.ndindex(*shape[:-2]):
        for rows in row_blocks(shape[-2]):
            yield (*leading, rows)


def image_total(counts: Any) -> float:
    """``sum(counts)`` of a (possibly memory-mapped or lazy) ``(Y, X)`` plane or ``(D, Y, X)`` volume, block by block, in float64."""
    total = 0.0
    for key in image_blocks(tuple(counts.shape)):
        total += float(np.asarray(counts[(*key, slice(None))], dtype=np.float64).sum())
        release_pages(counts)
    return total


def image_log_normaliser(logits: Any) -> float:
    """:func:`photongap.physics.log_normaliser` of a (possibly memory-mapped) ``(Y, X)`` or ``(D, Y, X)`` logits image, block by block."""
    normalisers = []
    for key in image_blocks(logits.shape):
        # Floats, not tensors: a small tensor kept from each block pinned the block's freed float64
        # copy in the C heap, which then grew by a block per block (1.9 GB for 64 x 2048 x 2048).
        normalisers.append(float(log_normaliser(torch.from_numpy(np.asarray(logits[key]))[None])))
        release_pages(logits)
    return float(torch.logsumexp(torch.tensor(normalisers, dtype=torch.float64), dim=0))


def mmse_image(logits: Any, total_photons: float, out: Any | None = None) -> Any:
    """The expected clean image ``softmax(logits) * total_photons`` over a stitched logits image (or volume).

    :func:`photongap.physics.mmse_from_logits` block by block, with the whole image's
    normaliser, so even a 16k x 16k plane needs no second full-size buffer: ``out`` may be
    the ``logits`` array itself (computed in place).
    """
    out = np.empty(logits.shape, dtype=np.float32) if out is None else out
    normaliser = torch.tensor([image_log_normaliser(logits)], dtype=torch.float64)
    total = torch.tensor([total_photons], dtype=torch.float64)
    for key in image_blocks(logits.shape):
        block = torch.from_numpy(np.asarray(logits[key]))[None]
        out[key] = mmse_from_logits(block, total, normaliser)[0].numpy()
        release_pages(logits)
        release_pages(out)
    return out


def padded(logits_fn: LogitsFn, multiple: int | tuple[int, ...], batch_size: int) -> LogitsFn:
    """A logits function for batches of any ``(Y, X)`` (or ``(D, Y, X)``): reflect-padded to ``multiple``, in chunks.

    ``multiple`` is one per spatial axis, or one for ``Y`` and ``X``. Tensors stay on their
    device (the sampler's loop runs there); each network call holds at most ``batch_size`` images.
    """

    def logits(counts: torch.Tensor) -> torch.Tensor:
        sizes = counts.shape[2:]
        steps = _per_axis(multiple, len(sizes))
        pads = [round_up(size, step) - size for size, step in zip(sizes, steps)]
        mode = "reflect" if all(pad < size for pad, size in zip(pads, sizes)) else "replicate"
        if any(pads):
            # F.pad lists the last axis first: (0, pad_x, 0, pad_y[, 0, pad_d]).
            counts = torch.nn.functional.pad(counts, [value for pad in reversed(pads) for value in (0, pad)], mode=mode)
        out = torch.cat([logits_fn(chunk) for chunk in counts.split(batch_size)])
        return out[(..., *(slice(0, size) for size in sizes))]

    return logits


def tiled(logits_fn: LogitsFn, *, tile: Any, overlap: int, multiple: Any, context: Any, batch_size: int) -> LogitsFn:
    """A logits function that stitches each image of a batch from tiles (see :func:`predict_logits`)."""

    def logits(counts: torch.Tensor) -> torch.Tensor:
        planes = counts[:, 0].cpu().numpy()
        stitched = [
            predict_logits(logits_fn, plane, tile=tile, overlap=overlap, multiple=multiple, context=context, batch_size=batch_size) for plane in planes
        ]
        return torch.from_numpy(np.stack(stitched))[:, None].to(counts.device)

    return logits


def image_logits_fn(logits_fn: LogitsFn, shape: tuple[int, ...], *, tile: int | None, multiple: Any, context: Any, batch_size: int) -> LogitsFn:
    """Logits of whole images of ``shape``: in one pass (padded, in batches) up to ``tile``, else tile by tile.

    ``shape`` is ``(Y, X)`` or ``(D, Y, X)``; ``tile`` applies to ``Y`` and ``X`` (volumes are
    tiled in ``D`` only when a plane is tiled: see :func:`plan_tiles`). What the sampler calls:
    its images stay on their device unless they must be tiled.
    """
    side = tile[-1] if isinstance(tile, tuple) else tile
    if side is not None and max(shape[-2:]) > side:
        return tiled(logits_fn, tile=tile, overlap=DEFAULT_OVERLAP, multiple=multiple, context=context, batch_size=batch_size)
    return padded(logits_fn, multiple, batch_size)


def denoise_plane(
    logits_fn: LogitsFn,
    counts: Any,
    *,
    tile: int | None | tuple[int | None, ...],
    overlap: int,
    multiple: int | tuple[int, ...],
    context: int | tuple[int, ...],
    batch_size: int,
    out: Any | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """MMSE denoising of one ``(Y, X)`` plane (or ``(D, Y, X)`` volume) of any size: ``softmax(stitched logits) * sum(counts)``.

    ``counts`` may be memory-mapped or lazy: it is read block by block. A numpy (or
    memory-mapped) ``out`` first holds the logits and is then normalised in place, so even a
    16k x 16k plane needs no second full-size buffer. A volume is one image: one softmax over
    all its voxels, as in training.
    """
    total = image_total(counts)
    target = out if isinstance(out, np.ndarray) else None
    logits = predict_logits(
        logits_fn, counts, tile=tile, overlap=overlap, multiple=multiple, context=context, batch_size=batch_size, out=target, progress=progress
    )
    result = mmse_image(logits, total, out=logits)
    if out is not None and target is None:
        out[...] = result
        return out
    return result


def window_tile(dims: int, tile: int | None, tile_depth: int | None, depth: int) -> Any:
    """The tile of :func:`photongap.tiling.plan_tiles`: ``tile`` in Y and X, ``tile_depth`` (or the whole ``depth``) in D.

    A 3D window holds at most ``MAX_TILE_VOXELS``: the Y X side shrinks to fit (plan_tiles
    then enlarges it to four margins of context if it must), so memory stays bounded.
    """
    if dims == 2 or tile is None:
        return tile
    side = min(tile, int(math.sqrt(MAX_TILE_VOXELS / max(1, min(depth, tile_depth or depth)))))
    return (tile_depth, side, side)
