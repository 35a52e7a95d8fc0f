"""``photongap export``: a model as a BioImage Model Zoo package, tested before it is written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from photongap.cli.app import CalibrationOption, GainOption, OffsetOption, OverwriteOption, app, camera_from_options, console, progress_bar

STAGES = ("test tensors", "packaging", "measuring tiling", "testing with bioimageio.core", "writing")


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="model.pt from 'photongap train' (or a package made by export).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The package to write: NAME.bioimage.io.zip.")],
    name: Annotated[Optional[str], typer.Option(help="The package's name [default: NAME of --out].")] = None,
    author: Annotated[Optional[list[str]], typer.Option(help="An author of the model; repeat for several.")] = None,
    license: Annotated[str, typer.Option(help="SPDX licence of the weights.")] = "CC-BY-4.0",
    gain: GainOption = None,
    offset: OffsetOption = None,
    calibration: CalibrationOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Write a BioImage Model Zoo package (spec 0.5: TorchScript and PyTorch weights, test tensors, cover, README)
    that gives photongap's denoised image, in PHOTON UNITS OF THE INPUT, in Fiji (deepImageJ), napari or Python.
    bioimageio.core tests the package first; one that fails is not written. --gain/--offset/--calibration
    document the camera conversion the training data went through."""
    from photongap.bioimage import check_target, export_package
    from photongap.model import load

    check_target(out, overwrite)
    camera = camera_from_options(gain, offset, calibration)
    conversion = {"gain": camera.gain, "offset": camera.offset or 0.0} if camera.gain is not None else None
    network = load(model)
    with progress_bar() as progress:
        task = progress.add_task("exporting", total=len(STAGES), status="")

        def on_stage(stage: str) -> None:
            progress.update(task, completed=STAGES.index(stage), status=stage)

        result = export_package(network, out, name=name, authors=author, license=license, camera=conversion, overwrite=overwrite, progress=on_stage)
        progress.update(task, completed=len(STAGES), status="done")
    tiling = result.tiling
    console.print(
        f"[green]exported[/] {result.path} in {result.seconds:.0f} s (bioimageio.core {result.versions['bioimageio.core']}, "
        f"spec {result.versions['bioimageio.spec']}: test passed); halo {' x '.join(map(str, result.halo))} px"
        + (f"; tiled in {tiling['block']:.0f} px blocks vs whole: max diff {tiling['max_abs_diff_over_max']:.2%} of max, "
           f"PSNR {tiling['psnr']:.1f} dB" if tiling else ""),
        highlight=False,
    )
