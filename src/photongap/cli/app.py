"""The command line's shared parts: the Typer app, option types, progress bars and the error boundary."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NamedTuple, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from photongap import schedule as schedules
from photongap.errors import PhotongapError

app = typer.Typer(
    help="Remove shot noise from photon-limited images with GAP (Generative Accumulation of Photons).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
_state = {"debug": False}


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Units(str, Enum):
    photons = "photons"
    adu = "adu"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


DeviceOption = Annotated[Device, typer.Option(help="Where to run: auto (CUDA if available), cpu or cuda.")]
GainOption = Annotated[Optional[float], typer.Option(help="Camera gain in ADU per photon: counts = (value - offset) / gain.")]
OffsetOption = Annotated[Optional[float], typer.Option(help="Camera offset in ADU (see --gain).")]
CalibrationOption = Annotated[Optional[Path], typer.Option(help="calibration.json from 'photongap calibrate' (gain and offset).")]
AxesOption = Annotated[Optional[str], typer.Option(help="Axes of ambiguous inputs, one letter of TCZYX per dimension, e.g. TYX.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
PrecisionOption = Annotated[Precision, typer.Option(help="auto (bf16 where the hardware has it: GPUs, CPUs with AMX or AVX-512 BF16), fp32 or bf16.")]
TileOption = Annotated[int, typer.Option(help="Tile side in pixels; 0 = whole planes at once. Tiles keep the network's receptive field as context, so results do not depend on it.")]
OverlapOption = Annotated[int, typer.Option(help="Extra context shared by neighbouring tiles beyond the network's receptive field, in pixels.")]
BetaMaxOption = Annotated[
    Optional[str], typer.Option(help="Let beta grow up to this once the image is bright; 'none' keeps beta fixed (the published loop: --beta 0.1 --beta-max none --dispersion 0).")
]
TargetPsnrOption = Annotated[float, typer.Option(help="Stop at this pseudo-PSNR (dB) of the accumulated photons (20 dB: 100 photons/px).")]
DispersionOption = Annotated[
    float,
    typer.Option(help="Give each step's photons the spread a pixel-wise posterior adds within the step (0: published Poisson draw, 1: full); keeps large steps from narrowing the samples."),
]


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def camera_from_options(gain: float | None, offset: float | None, calibration: Path | None):
    from photongap.camera import Camera

    if calibration is None:
        return Camera(gain=gain, offset=offset)
    if gain is not None or offset is not None:
        raise PhotongapError("give either --calibration or --gain/--offset, not both")
    return Camera.from_calibration(calibration)


def schedule_from_options(beta: float, beta_max: str | None, dispersion: float) -> schedules.PhotonSchedule:
    if beta_max is None or beta_max.strip().lower() == "none":
        ceiling = None
    else:
        try:
            ceiling = float(beta_max)
        except ValueError:
            raise PhotongapError(f"--beta-max must be a number or 'none', got {beta_max!r}") from None
    return schedules.PhotonSchedule(beta=beta, beta_max=ceiling, dispersion=dispersion)


def beta_max_default(schedule: schedules.PhotonSchedule) -> str:
    return "none" if schedule.beta_max is None else f"{schedule.beta_max:g}"


class SamplingBar(NamedTuple):
    """The callbacks of :func:`sampling_progress`: ``on_step`` for the sampler, ``on_plane`` for :func:`photongap.pipeline.sample_file`."""

    on_step: Callable[[Any], None]
    on_plane: Callable[[Any], None]


@contextlib.contextmanager
def sampling_progress(label: str, target_psnr: float | None, recorder: Any = None, planes: int | None = None) -> Iterator[SamplingBar]:
    """A progress bar over the ``planes`` (volumes) being sampled, or without them over the sampling steps (generation), showing photons per pixel.

    With a :class:`~photongap.movie.MovieRecorder`, each step is also filmed.
    """
    with progress_bar() as progress:
        task = progress.add_task(label, total=planes, status="")
        started = [0]

        def on_step(state: Any) -> None:
            level = float(state.photons_per_pixel.min())
            goal = f" / {10 ** (target_psnr / 10):.3g}" if target_psnr is not None else ""
            progress.update(task, completed=state.step if planes is None else None, status=f"{level:.3g}{goal} photons/px")
            if recorder is not None:
                recorder(state)

        def on_plane(index: Any) -> None:
            progress.update(task, completed=started[0], status="")
            started[0] += 1

        yield SamplingBar(on_step, on_plane)
        if planes is not None:
            progress.update(task, completed=planes, status="done")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
    """Warnings for people: one ``warning:`` line, without the source file and line (``--debug`` keeps them)."""
    console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2; warnings one line each."""
    import warnings

    if not _state["debug"] and "--debug" not in sys.argv:
        warnings.showwarning = _show_warning
    try:
        app()
    except PhotongapError as error:
        if _state["debug"]:
            raise
        console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except SystemExit as exit:
        # Typer turns Ctrl-C into a silent exit with code 130.
        if exit.code == 130:
            console.print("interrupted: no partial outputs were kept (continue a training run with --resume)")
        raise
