"""Denoising and sampling on a Dask cluster: many files as tasks, large Zarr images chunk by chunk.

:func:`open_cluster` connects to a scheduler (``tcp://HOST:PORT``) or starts a local cluster
(``local:N``); :func:`denoise_on_cluster` and :func:`sample_on_cluster` run the same jobs as
the single-process :mod:`photongap.pipeline`, one task per file, except that an image
written to Zarr is denoised chunk by chunk (:mod:`photongap.cluster.zarr_tiles`). Files that
fail are reported and the others finish (:class:`ClusterResult`).

Examples
--------
>>> with open_cluster("local:2", device="cpu") as client:  # doctest: +SKIP
...     result = denoise_on_cluster(client, "model.pt", ["a.tif", "b.tif"], ["out/a.tif", "out/b.tif"])
>>> result.written, result.failures  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distributed import Client

from photongap.camera import Camera
from photongap.cluster.engine import ClusterJob, ClusterResult, run_jobs
from photongap.cluster.files import denoise_job, sample_job
from photongap.cluster.setup import TorchSetup, cached_model, model_loads, open_cluster, parse_cluster
from photongap.cluster.zarr_tiles import ZarrJob
from photongap.config import DEFAULT_OVERLAP, DEFAULT_TILE
from photongap.io.files import image_suffix
from photongap.modelfile import load_model

__all__ = [
    "ClusterJob", "ClusterResult", "TorchSetup", "ZarrJob", "cached_model", "denoise_on_cluster", "model_loads",
    "open_cluster", "parse_cluster", "run_jobs", "sample_on_cluster",
]


def denoise_on_cluster(
    client: Client,
    model_path: str | Path,
    sources: Sequence[str | Path],
    targets: Sequence[str | Path],
    *,
    axes: str | None = None,
    camera: Camera = Camera(),
    output_units: str = "photons",
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ClusterResult:
    """MMSE-denoise ``sources`` into ``targets`` on the cluster (see :func:`photongap.pipeline.denoise_file`).

    One task per file; with a 2D model a Zarr target is written chunk by chunk by two tasks per
    chunk, with the image-wide softmax taken exactly. Existing targets are refused before anything runs
    unless ``overwrite``. Inputs, outputs and the model must be on a file system the workers see.
    """
    from photongap.io import check_new_outputs

    sources, targets = [Path(p) for p in sources], [Path(p) for p in targets]
    check_new_outputs(targets, overwrite)
    options = dict(output_units=output_units, tile=tile, overlap=overlap, batch_size=batch_size, precision=precision)
    model_path = str(Path(model_path).resolve())
    jobs: list[ClusterJob] = []
    # Chunk tasks tile planes; a 3D model's volumes go whole, one task per file, as denoise_file writes them.
    planes = load_model(model_path)[1].dims == 2
    for source, target in zip(sources, targets):
        if planes and image_suffix(target) in (".zarr", ".ome.zarr"):
            jobs.append(ZarrJob(model_path, source, target, axes, camera, device, {**options, "overwrite": overwrite}))
        else:
            jobs.append(denoise_job(Path(model_path), source, target, axes=axes, camera=camera, device=device, **options))
    return run_jobs(client, jobs, progress)


def sample_on_cluster(
    client: Client,
    model_path: str | Path,
    sources: Sequence[str | Path],
    targets: Sequence[Sequence[str | Path]],
    *,
    n: int,
    axes: str | None = None,
    camera: Camera = Camera(),
    device: str = "auto",
    check: bool = False,
    check_splits: int | None = None,
    check_plot: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> ClusterResult:
    """Posterior samples of each file in one task (see :func:`photongap.pipeline.sample_file`).

    ``targets`` holds each file's three outputs (samples, mean, std); ``check`` adds the
    ``--check`` coverage of each plane (``check_splits`` splits each, default
    :data:`photongap.posterior_check.CHECK_SPLITS`) to the result's notes, and that of all the
    planes pooled; ``check_plot`` (a PNG path) implies ``check`` and draws it
    (:func:`photongap.plotting.plot_calibration_check`); ``options`` (``seed``, ``target_psnr``,
    ``schedule``, ``output_units``, ...) go to ``sample_file``.
    """
    from photongap.io import check_new_outputs
    from photongap.posterior_check import CHECK_SPLITS, pooled_check

    groups = [[Path(p) for p in group] for group in targets]
    check_new_outputs([path for group in groups for path in group] + ([Path(check_plot)] if check_plot else []), overwrite)
    model_path = Path(model_path).resolve()
    splits = (CHECK_SPLITS if check_splits is None else check_splits) if check or check_plot else 0
    jobs = [sample_job(model_path, Path(source), group, axes=axes, camera=camera, device=device, n=n, check=splits, **options) for source, group in zip(sources, groups)]
    result = run_jobs(client, jobs, progress)
    named = [pair for job in jobs for pair in job.checks]
    if (pooled := pooled_check(named, "images" if len(named) == len(jobs) else "planes")) is not None:
        result.notes.append(pooled[1].summary(pooled[0]))
    if check_plot is not None and named:
        from photongap.plotting import plot_calibration_check

        plot_calibration_check(named, check_plot, pooled)
        result.notes.append(f"check plot written to {check_plot}")
    return result
