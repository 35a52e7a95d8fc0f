"""``--cluster`` of ``photongap denoise`` and ``photongap sample``: the run on Dask, with a progress bar over tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from photongap.cli.app import console, progress_bar
from photongap.errors import PhotongapError

ClusterOption = Annotated[
    Optional[str],
    typer.Option(help="Run on Dask: tcp://HOST:PORT (a running scheduler; inputs, outputs and the model on a file system its workers see) or local:N (start N worker processes here). Zarr outputs are written chunk by chunk by many tasks."),
]


def cluster_address(cluster: str | None, devices: int = 1) -> str | None:
    """The cluster to run on: ``--cluster``, or ``local:K`` for ``denoise --devices K`` (K > 1), or None (this process)."""
    if devices < 1:
        raise PhotongapError(f"--devices must be at least 1, got {devices}")
    if cluster is not None and devices > 1:
        raise PhotongapError("give --cluster or --devices, not both (--devices K is --cluster local:K)")
    return cluster if cluster is not None else f"local:{devices}" if devices > 1 else None


def _run(address: str, device: str, what: str, count: int, run: Callable[[Any, Callable[[int, int], None]], Any]) -> Any:
    from photongap.cluster import open_cluster

    with progress_bar() as progress:
        task = progress.add_task(what, total=None, status=f"starting {address}")
        with open_cluster(address, device) as client:
            workers = len(client.scheduler_info(n_workers=-1)["workers"])
            progress.update(task, status=f"{count} files, {workers} Dask workers, tasks")

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            result = run(client, advance)
    for note in result.notes:
        console.print(note, highlight=False)
    for failure in result.failures:
        console.print(f"[red]failed:[/] {failure}", highlight=False, soft_wrap=True)
    if result.failures:
        raise PhotongapError(f"{len(result.failures)} of {count} file(s) failed (listed above); the other {count - len(result.failures)} were written")
    return workers


def denoise_on_cluster(address: str, model: Path, paths: Sequence[Path], targets: Sequence[Path], out: Path, *, device: str, **options: Any) -> None:
    """``photongap denoise ... --cluster ADDRESS``."""
    from photongap.cluster import denoise_on_cluster as run

    workers = _run(address, device, "denoising", len(paths), lambda client, advance: run(client, model, paths, targets, device=device, progress=advance, **options))
    console.print(f"[green]denoised[/] {len(paths)} image(s) into {out} on {workers} Dask workers")


def sample_on_cluster(address: str, model: Path, paths: Sequence[Path], targets: Sequence[Sequence[Path]], *, device: str, movie: Path | None, n: int, **options: Any) -> None:
    """``photongap sample ... --cluster ADDRESS``."""
    from photongap.cluster import sample_on_cluster as run

    if movie is not None:
        raise PhotongapError("--movie films sampling in this process; run it without --cluster")
    _run(address, device, "sampling", len(paths), lambda client, advance: run(client, model, paths, targets, n=n, device=device, progress=advance, **options))
