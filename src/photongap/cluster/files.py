"""Whole files as tasks: one task denoises (or samples) one file, all its planes, on one worker.

The task runs :func:`photongap.pipeline.denoise_file` or :func:`~photongap.pipeline.sample_file`,
the single-process jobs themselves, with the model the worker has cached: results equal the
single-process run's. Outputs are written by the worker under a temporary name and renamed
when complete (:func:`photongap.io.atomic_output`); the caller refuses existing outputs
before the run, so a task that Dask reruns after its worker died may replace its own output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import Client, Future

from photongap.camera import Camera
from photongap.cluster.setup import cached_model, worker_device

if TYPE_CHECKING:
    from photongap.pipeline import SampledFile
    from photongap.posterior_check import CalibrationCheck


def denoise_task(model_path: str, source: Path, target: Path, axes: str | None, camera: Camera, device: str, options: dict[str, Any]) -> Path:
    """On a worker: denoise one file into ``target`` (see :func:`photongap.pipeline.denoise_file`)."""
    from photongap.pipeline import denoise_file, read_images

    image = read_images([source], axes, camera)[0]
    return denoise_file(cached_model(model_path), image, target, camera=camera, device=worker_device(device), overwrite=True, **options)


def sample_task(
    model_path: str, source: Path, targets: Sequence[Path], axes: str | None, camera: Camera, device: str, n: int, check: int, options: dict[str, Any]
) -> tuple[SampledFile, list[tuple[tuple[int, ...], CalibrationCheck]]]:
    """On a worker: posterior samples of one file (see :func:`photongap.pipeline.sample_file`), and the ``--check`` of each plane (volume, for a 3D model) from ``check`` splits (0: none)."""
    from photongap.camera import CountsView
    from photongap.pipeline import read_images, sample_file, units_of
    from photongap.posterior_check import check_calibration

    model, device = cached_model(model_path), worker_device(device)
    image = read_images([source], axes, camera)[0]
    sampled = sample_file(model, image, targets, n=n, camera=camera, overwrite=True, device=device, **options)
    sample_options = {key: value for key, value in options.items() if key != "output_units"}
    coverage = [
        (index, check_calibration(model, CountsView(unit, camera, str(source))[(slice(None),) * unit.ndim], max(n, 4), splits=check, device=device, **sample_options))
        for index, unit in (units_of(model, image) if check else ())
    ]
    return sampled, coverage


@dataclass
class FileJob:
    """One file, one task: ``function(model_path, source, targets, *arguments)`` returns what it wrote."""

    function: Any
    model_path: str
    source: Path
    targets: Sequence[Path]
    arguments: tuple
    samples: int = 0
    """Samples per image, for a sampling job's note."""
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, CalibrationCheck]] = field(default_factory=list)
    """A sampling job's ``--check`` of each plane, named, once finished."""
    tasks: int = 1
    complete: bool = False
    _written: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.source)

    def start(self, client: Client) -> list[Future]:
        return [client.submit(self.function, self.model_path, self.source, self._target_argument(), *self.arguments, pure=False)]

    def _target_argument(self) -> Any:
        return self.targets[0] if self.function is denoise_task else list(self.targets)

    def finished(self, client: Client, future: Future) -> list[Future]:
        value = future.result()
        if self.function is sample_task:
            sampled, coverage = value
            self._written = list(sampled.paths)
            self.notes.append(sampled.summary(self.source.name, self.samples))
            if (note := sampled.note(self.source.name)) is not None:
                self.notes.append(note)
            for index, check in coverage:
                name = f"{self.source.name} plane {index}" if index else self.source.name
                self.notes.append(check.summary(name))
                self.checks.append((name, check))
        else:
            self._written = [value]
        self.complete = True
        return []

    def close(self, error: BaseException | None) -> list[Path]:
        from photongap.io import remove_partials

        for target in self.targets:
            remove_partials(target)  # left by a worker that died while writing it
        return self._written if error is None else []


def denoise_job(model_path: Path, source: Path, target: Path, *, axes: str | None, camera: Camera, device: str, **options: Any) -> FileJob:
    """A job denoising one file in one task; ``options`` go to :func:`photongap.pipeline.denoise_file`."""
    return FileJob(denoise_task, str(model_path), source, [target], (axes, camera, device, options))


def sample_job(model_path: Path, source: Path, targets: Sequence[Path], *, axes: str | None, camera: Camera, device: str, n: int, check: int = 0, **options: Any) -> FileJob:
    """A job sampling one file in one task; ``options`` go to :func:`photongap.pipeline.sample_file`."""
    return FileJob(sample_task, str(model_path), source, list(targets), (axes, camera, device, n, check, options), samples=n)
