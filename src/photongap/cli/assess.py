"""``photongap assess`` and ``photongap plan-exposure``: quality without the clean image."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from photongap import assessment as defaults
from photongap.cli.app import AxesOption, CalibrationOption, Device, DeviceOption, GainOption, OffsetOption, OverwriteOption, app, camera_from_options, console, progress_bar
from photongap.errors import PhotongapError

FractionsOption = Annotated[Optional[list[float]], typer.Option("--split-fraction", help="Input fractions of the held-out splits, in (0, 1); repeat the option for several.")]
RepeatsOption = Annotated[int, typer.Option(help="Independent splits per fraction.")]


@app.command()
def assess(
    model: Annotated[Path, typer.Argument(help="model.pt from 'photongap train'.")],
    inputs: Annotated[list[Path], typer.Argument(help="Noisy images or folders to grade (each plane is graded on its own; each volume, with a 3D model).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="report.json to write.")],
    plot: Annotated[Optional[Path], typer.Option(help="PNG of the held-out MSE against split fraction, per image.")] = None,
    split_fraction: FractionsOption = None,
    repeats: RepeatsOption = defaults.DEFAULT_REPEATS,
    seed: Annotated[int, typer.Option(help="Seed of the splits.")] = 0,
    device: DeviceOption = Device.auto,
    gain: GainOption = None,
    offset: OffsetOption = None,
    calibration: CalibrationOption = None,
    axes: AxesOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Estimate, without the clean image, how far the denoised images are from it: MSE (photons² per pixel
    at each image's exposure) with its uncertainty, PSNR and the held-out photon likelihood, from binomial
    splits of the images' own photons (see photongap.assessment). A 3D model grades each Z (else T) stack as one volume."""
    from photongap.assessment import assess_planes, assessment_steps
    from photongap.io import atomic_output, check_new_outputs, find_images
    from photongap.model import load
    from photongap.pipeline import model_units
    from photongap.plotting import plot_assessment
    from photongap.runtime import resolve_device

    fractions = tuple(split_fraction) if split_fraction else defaults.DEFAULT_FRACTIONS
    defaults.extrapolation_weights(fractions)  # bad fractions fail before any work
    if repeats < 3:
        raise PhotongapError(f"--repeats must be at least 3 (the control variates and the uncertainty need them), got {repeats}")
    if out.suffix.lower() != ".json":
        raise PhotongapError(f"--out must be a .json file, got {out}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise PhotongapError(f"--plot must be a .png file, got {plot}")
    check_new_outputs([out] + ([plot] if plot else []), overwrite)
    resolve_device(device.value)
    network = load(model)
    planes, names = model_units(network, find_images(inputs), axes, camera_from_options(gain, offset, calibration))
    with progress_bar() as progress, warnings.catch_warnings(record=True):
        task = progress.add_task("assessing", total=len(planes) * assessment_steps(fractions, repeats), status="denoised splits")
        report = assess_planes(network, planes, names, fractions=fractions, repeats=repeats, seed=seed, device=device.value,
                               progress=lambda done: progress.advance(task, done))
    report["model"] = str(model)
    with atomic_output(out) as partial:
        partial.write_text(json.dumps(report, indent=2))
    if plot is not None:
        plot_assessment(report, plot)
    for note in report["warnings"]:
        console.print(f"[yellow]warning:[/] {note}", highlight=False)
    for image in report["images"]:
        console.print(f"  {image['path']}: MSE {image['mse']:.4g} ± {image['mse_std']:.2g} photons²/px, PSNR {image['psnr']:.2f} dB, "
                      f"held-out NLL {image['nll_per_photon']:.4f} nats/photon" + (" [trained on]" if image["trained_on"] else ""), highlight=False)
    console.print(f"[green]assessed[/] {len(planes)} image(s) -> {out}" + (f", {plot}" if plot else ""))


def parse_fractions(values: list[str]) -> list[float]:
    """``["1,0.5", "0.1"]`` -> ``[1.0, 0.5, 0.1]``, each checked to lie in (0, 1]."""
    from photongap.exposure import thin

    try:
        fractions = [float(item) for value in values for item in value.replace(",", " ").split()]
    except ValueError:
        raise PhotongapError(f"--fractions takes numbers in (0, 1], e.g. 1,0.5,0.25,0.1; got {' '.join(values)!r}") from None
    for fraction in fractions:
        thin([], fraction)
    if not fractions:
        raise PhotongapError("--fractions needs at least one light dose")
    return fractions


@app.command("plan-exposure")
def plan_exposure(
    data: Annotated[list[Path], typer.Argument(help="Noisy photon-count images or folders: the last plane(s) are held out for grading, as in 'train'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder: plan.json, plan.png and one training run per fraction.")],
    fractions: Annotated[list[str], typer.Option("--fractions", help="Light doses to plan for, fractions of the data's in (0, 1]: repeat the option or give a list, --fractions 1,0.5,0.25,0.1.")] = ["1,0.5,0.25,0.1"],  # noqa: B006
    time_limit: Annotated[Optional[float], typer.Option(help="Minutes for all the training together (shared equally among the fractions).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML with 'model' and 'training' sections, as for 'train'.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Training preset, as for 'train' (the default preset if omitted).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimiser steps per fraction.")] = None,
    dims: Annotated[Optional[int], typer.Option(help="2: plan with 2D models (planes); 3: with 3D models (volumes along Z, else T), as 'train --dims 3' [default: the config's, else 2].")] = None,
    patch_size: Annotated[Optional[str], typer.Option(help="Patch side (Y and X), or D Y X for 3D, e.g. 16x64x64, as for 'train'.")] = None,
    fine_tune: Annotated[bool, typer.Option("--fine-tune/--from-scratch", help="Start each dimmer fraction from the previous fraction's weights.")] = True,
    fine_tune_steps: Annotated[Optional[int], typer.Option(help="Steps of each fine-tuned fraction (default: as many as the first).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the thinning.")] = 0,
    device: DeviceOption = Device.auto,
    gain: GainOption = None,
    offset: OffsetOption = None,
    calibration: CalibrationOption = None,
    axes: AxesOption = None,
) -> None:
    """Thin the data to each light dose, train and grade a model at each, and plot denoised quality
    against dose (plan.png) with a recommendation. MSEs are in photons² at the ORIGINAL exposure.
    Read noise does not thin: with read noise near a photon or more the plan is optimistic at low doses.
    With a 3D model (--dims 3, or a config with dims 3) each Z (else T) stack is a volume, as in 'train'."""
    from photongap.config import parse_patch_size
    from photongap.exposure import plan_exposure as run_plan
    from photongap.exposure import planned_dims
    from photongap.io import find_images
    from photongap.pipeline import training_planes, training_volumes
    from photongap.runtime import resolve_device

    fractions = parse_fractions(fractions)
    if dims not in (None, 2, 3):
        raise PhotongapError(f"--dims must be 2 or 3, got {dims}")
    dims = planned_dims(dims, preset, config)
    side, depth = parse_patch_size(patch_size) if patch_size is not None else (None, None)
    if depth is not None and dims != 3:
        raise PhotongapError("--patch-size D Y X is for 3D models: add --dims 3")
    if time_limit is not None and time_limit <= 0:
        raise PhotongapError(f"--time-limit must be positive, got {time_limit:g}")
    if (out / "plan.json").exists():
        raise PhotongapError(f"{out / 'plan.json'} already exists; choose another --out")
    resolve_device(device.value)
    read = training_volumes if dims == 3 else training_planes
    planes, _ = read(find_images(data), axes, camera_from_options(gain, offset, calibration))
    if dims == 2 and len(planes) < 2:  # a 3D plan holds out rows of a single volume, as 'train' does
        raise PhotongapError("plan-exposure grades held-out images: give at least two images or planes")
    with progress_bar() as progress:
        task = progress.add_task("planning", total=len(set(fractions)), status="")

        def on_fraction(fraction: float, done: int) -> None:
            progress.update(task, completed=done, status=f"training at {fraction:g} of the light")

        plan = run_plan(planes, out, fractions, time_limit_minutes=time_limit, overrides={"steps": steps, "patch_size": side, "patch_depth": depth}, seed=seed,
                        device=device.value, preset=preset, config_file=config, fine_tune=fine_tune, fine_tune_steps=fine_tune_steps,
                        model_overrides={"dims": dims}, on_fraction=on_fraction)
        progress.update(task, completed=len(set(fractions)), status="done")
    for point in plan["fractions"]:
        console.print(f"  {point['fraction']:g} of the light: denoised PSNR {point['psnr']:.2f} dB (MSE {point['mse']:.4g} ± {point['mse_std']:.2g}), "
                      f"noisy {point['noisy_psnr']:.2f} dB", highlight=False)
    console.print(f"[green]{plan['recommendation']}[/] -> {out / 'plan.json'}, {out / 'plan.png'}", highlight=False)
