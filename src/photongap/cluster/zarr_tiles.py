"""One large image as many tasks: the output Zarr's chunks, in two passes with an exact softmax.

GAP's softmax is over the whole plane, so no chunk can be normalised alone. Pass one: each
task takes one chunk of the output (rows, columns, and the planes the chunk spans), computes
its logits tile by tile with the receptive field as context read from the whole input plane
(:func:`photongap.tiling.predict_logits` with ``region=``: windows, reflection at the image's
edges and the pooling grid are those of the single-process plan), stores them in a temporary
Zarr array and returns the chunk's ``logsumexp`` and photon count per plane. The caller
combines them into each plane's normaliser and total photons. Pass two: each task writes
``total * exp(logits - normaliser)`` (:func:`photongap.physics.mmse_from_logits`) into its
chunk of the output. The result equals :func:`photongap.pipeline.denoise_file`'s to the float
rounding; tasks write whole chunks only, so no two workers ever write one chunk, and a
rerun task writes what it wrote before.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distributed import Client, Future

from photongap.camera import Camera
from photongap.cluster.setup import cached_model, worker_device
from photongap.tiling import round_up

Block = tuple[slice, ...]
"""One chunk of an output laid out as :attr:`photongap.io.Image.plane_axes`: slices of the plane axes, then Y and X."""


def chunk_blocks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[Block]:
    """The blocks of an array's chunk grid, in C order."""
    ranges = [[slice(start, min(start + size, extent)) for start in range(0, extent, size)] for extent, size in zip(shape, chunks)]
    return [tuple(block) for block in itertools.product(*ranges)]


def chunk_tile(tile: int | None, side: int, margin: int, multiple: int) -> int:
    """The tile for a chunk of ``side`` px: no larger than ``tile``, with cores of equal size that cover the chunk.

    A chunk of 1024 px with 1024 px tiles and 80 px margins would otherwise take two cores of
    864 px per axis, the second mostly wasted: 2.5 times the network's work of the whole image.
    ``tile`` None: one window per chunk (the whole plane, if it fits in one chunk).
    """
    if tile is None:
        return side + 2 * margin
    core = max(round_up(tile, multiple), 4 * margin, multiple) - 2 * margin  # plan_tiles' own enlargement
    pieces = -(-side // core)
    return round_up(-(-side // pieces), multiple) + 2 * margin


def _planes(block: Block) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(s.start, s.stop) for s in block[:-2])))


def logits_task(
    model_path: str, source: Path, axes: str | None, camera: Camera, logits: Any, block: Block, device: str, options: dict[str, Any]
) -> list[tuple[tuple[int, ...], float, float]]:
    """Pass one, on a worker: the logits of ``block`` into the ``logits`` array; ``(plane, logsumexp, photons)`` per plane."""
    import torch

    from photongap.camera import CountsView
    from photongap.io import iter_planes, read_image
    from photongap.physics import log_normaliser
    from photongap.pipeline import plane_name
    from photongap.runtime import batch_size_for, resolve_device
    from photongap.tiling import predict_logits, tile_margin

    model = cached_model(model_path)
    image = read_image(source, axes)
    device = resolve_device(worker_device(device))
    network = model.logits_fn(device, options["precision"])
    rows, cols = block[-2:]
    multiple, overlap = model.config.size_multiple, options["overlap"]
    tile = chunk_tile(options["tile"], max(rows.stop - rows.start, cols.stop - cols.start), tile_margin(overlap, model.context, multiple), multiple)
    planes = dict(iter_planes(image))
    out = np.empty(tuple(s.stop - s.start for s in block), dtype=np.float32)
    sums = []
    for number, index in enumerate(_planes(block)):
        counts = CountsView(planes[index], camera, plane_name(image, index))
        target = out.reshape(-1, *out.shape[-2:])[number]
        predict_logits(network, counts, tile=tile, overlap=overlap, multiple=multiple, context=model.context,
                       batch_size=batch_size_for(device, options["batch_size"], on_gpu=4), out=target, region=(rows, cols))
        photons = float(np.asarray(counts[rows, cols], dtype=np.float64).sum())
        sums.append((index, float(log_normaliser(torch.from_numpy(target)[None])[0]), photons))
    logits[block] = out
    return sums


def normalise_task(logits: Any, out: Any, block: Block, normalisers: list[float], totals: list[float], camera: Camera, output_units: str) -> None:
    """Pass two, on a worker: ``block`` of ``out`` = ``total * softmax`` of its logits, in the units asked for."""
    import torch

    from photongap.physics import mmse_from_logits

    values = np.asarray(logits[block], dtype=np.float32)
    planes = values.reshape(-1, *values.shape[-2:])
    for plane, normaliser, total in zip(planes, normalisers, totals):
        plane[...] = mmse_from_logits(torch.from_numpy(plane)[None], torch.tensor([total], dtype=torch.float64), torch.tensor([normaliser], dtype=torch.float64))[0].numpy()
        if camera.shift or output_units == "adu":
            plane[...] = camera.output(plane, output_units)
    out[block] = values


@dataclass
class ZarrJob:
    """A file denoised into a Zarr output chunk by chunk, in two passes (see the module's docstring).

    ``options``: ``tile``, ``overlap``, ``batch_size``, ``precision``, ``output_units`` and
    ``overwrite``, as for :func:`photongap.pipeline.denoise_file`.
    """

    model_path: str
    source: Path
    target: Path
    axes: str | None
    camera: Camera
    device: str
    options: dict[str, Any]
    tasks: int = 0
    notes: list[str] = field(default_factory=list)
    _writer: Any = None
    _shape: tuple[int, ...] = ()
    _scratch: Path | None = None
    _logits: Any = None
    _blocks: list[Block] = field(default_factory=list)
    _sums: list[tuple[tuple[int, ...], float, float]] = field(default_factory=list)
    _pass: int = 1
    _left: int = 0

    @property
    def name(self) -> str:
        return str(self.source)

    @property
    def complete(self) -> bool:
        return self._writer is not None and self._left == 0

    def plan(self) -> None:
        """Open the input (metadata only) and count the tasks: two per chunk of the output."""
        from photongap.io import ImageWriter, read_image
        from photongap.pipeline import denoise_description

        self.camera.check_units(self.options["output_units"])
        image = read_image(self.source, self.axes)
        self._writer = ImageWriter(self.target, image.plane_shape, image.plane_axes, like=image,
                                   description=denoise_description(self.camera, self.options["output_units"]), overwrite=self.options["overwrite"])
        self._shape = image.plane_shape

    def start(self, client: Client) -> list[Future]:
        import zarr

        if self._writer is None:
            self.plan()
        self._writer.__enter__()
        chunks = tuple(self._writer.array.chunks)
        self._blocks = chunk_blocks(self._shape, chunks)
        self.tasks, self._left = 2 * len(self._blocks), len(self._blocks)
        self._scratch = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.logits-", dir=self.target.parent))
        self._logits = zarr.create_array(str(self._scratch / "logits.zarr"), shape=self._shape, chunks=chunks, dtype="float32", fill_value=0, compressors=None)
        options = {key: self.options[key] for key in ("tile", "overlap", "batch_size", "precision")}
        return [client.submit(logits_task, self.model_path, self.source, self.axes, self.camera, self._logits, block, self.device, options, pure=False)
                for block in self._blocks]

    def finished(self, client: Client, future: Future) -> list[Future]:
        value = future.result()
        self._left -= 1
        if self._pass == 1:
            self._sums += value
        if self._left or self._pass == 2:
            return []
        return self._second_pass(client)

    def _second_pass(self, client: Client) -> list[Future]:
        import torch

        # Each plane's normaliser and photons from its chunks': logsumexp of logsumexps, sum of sums (float64).
        per_plane: dict[tuple[int, ...], list[tuple[float, float]]] = {}
        for index, normaliser, photons in self._sums:
            per_plane.setdefault(index, []).append((normaliser, photons))
        normaliser = {index: float(torch.logsumexp(torch.tensor([p[0] for p in pairs], dtype=torch.float64), dim=0)) for index, pairs in per_plane.items()}
        total = {index: float(np.sum([p[1] for p in pairs], dtype=np.float64)) for index, pairs in per_plane.items()}
        self._pass, self._left = 2, len(self._blocks)
        units = self.options["output_units"]
        return [client.submit(normalise_task, self._logits, self._writer.array, block, [normaliser[i] for i in _planes(block)], [total[i] for i in _planes(block)],
                              self.camera, units, pure=False) for block in self._blocks]

    def close(self, error: BaseException | None) -> list[Path]:
        try:
            if self._writer is not None and self._writer.array is not None:
                self._writer.__exit__(type(error) if error else None, error, None)
        finally:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
        return [self.target] if error is None else []
