"""The ``photongap`` commands: parse options, build configs, call the library. No logic lives here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from photongap import config as defaults
from photongap import schedule as schedules
from photongap.cli.app import (
    AxesOption,
    BetaMaxOption,
    CalibrationOption,
    Device,
    DeviceOption,
    DispersionOption,
    GainOption,
    OffsetOption,
    OverlapOption,
    OverwriteOption,
    Precision,
    PrecisionOption,
    TargetPsnrOption,
    TileOption,
    Units,
    app,
    beta_max_default,
    camera_from_options,
    console,
    progress_bar,
    sampling_progress,
    schedule_from_options,
)
from photongap.cli.cluster import ClusterOption, cluster_address
from photongap.errors import PhotongapError


@app.command()
def train(
    data: Annotated[list[Path], typer.Argument(help="Noisy photon-count images or folders (TIFF, OME-TIFF, .npy, PNG, Zarr).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: model.pt, last.ckpt, metrics.csv, loss.png.")],
    config: Annotated[Optional[Path], typer.Option(help="YAML with 'model' and 'training' sections; flags override it.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Starting configuration of a new run: default (denoising), generative (sampling and generation: every photon level) or paper (the published one) [default: default].")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimiser steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Patches per step.")] = None,
    patch_size: Annotated[Optional[str], typer.Option(help="Patch side in pixels (Y and X), or D Y X for --dims 3, e.g. 16x64x64 [default: 64; depth 16, or the thinnest stack's].")] = None,
    dims: Annotated[Optional[int], typer.Option(help="2: the network sees planes; 3: volumes along Z, else T (time-lapses) [default: 2].")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    time_limit: Annotated[Optional[float], typer.Option(help="Stop after this many minutes and save the model as if done.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Share of images (or rows of a single image) held out for validation.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of patches, splits and initial weights.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 where the hardware has it: GPUs, CPUs with AMX or AVX-512 BF16), fp32 or bf16.")] = None,
    device: DeviceOption = Device.auto,
    devices: Annotated[str, typer.Option(help="Devices (processes) per node, passed to Lightning.")] = "1",
    num_nodes: Annotated[int, typer.Option(help="Nodes, passed to Lightning.")] = 1,
    strategy: Annotated[str, typer.Option(help="Lightning strategy, e.g. ddp.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.ckpt.")] = False,
    gain: GainOption = None,
    offset: OffsetOption = None,
    calibration: CalibrationOption = None,
    axes: AxesOption = None,
) -> None:
    """Train a GAP model on noisy photon counts alone (self-supervised)."""
    from photongap.io import find_images
    from photongap.pipeline import training_planes, training_volumes
    from photongap.training import train as run_training

    if dims not in (None, 2, 3):
        raise PhotongapError(f"--dims must be 2 or 3, got {dims}")
    if resume and dims is None:
        from photongap.training.run import stored_dims

        dims = stored_dims(out)  # a resumed 3D run reads its stacks as volumes again
    side, depth = defaults.parse_patch_size(patch_size) if patch_size is not None else (None, None)
    if depth is not None and dims != 3:
        raise PhotongapError("--patch-size D Y X is for 3D models: add --dims 3")
    read = training_volumes if dims == 3 else training_planes
    planes, names = read(find_images(data), axes, camera_from_options(gain, offset, calibration))
    overrides = dict(steps=steps, batch_size=batch_size, patch_size=side, patch_depth=depth, learning_rate=learning_rate, time_limit_minutes=time_limit,
                     val_fraction=val_fraction, seed=seed, precision=precision)
    result = run_training(
        planes,
        out,
        preset=preset,
        config_file=config,
        overrides=overrides,
        model_overrides=dict(dims=dims),
        resume=resume,
        names=names,
        device=device.value,
        devices=int(devices) if devices.isdigit() else devices,
        num_nodes=num_nodes,
        strategy=strategy,
    )
    if result.main_process and result.model_path.exists():
        how = "stopped at the time limit" if result.stopped_early else "done"
        console.print(f"[green]{how}[/]: {result.steps} steps in {result.elapsed_s / 60:.1f} min; model written to {result.model_path}")


@app.command()
def denoise(
    model: Annotated[Path, typer.Argument(help="model.pt from 'photongap train'.")],
    inputs: Annotated[list[Path], typer.Argument(help="Images or folders to denoise.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (one input) or folder.")],
    tile: TileOption = defaults.DEFAULT_TILE,
    overlap: OverlapOption = defaults.DEFAULT_OVERLAP,
    batch_size: Annotated[Optional[int], typer.Option(help="Tiles per network call [default: 1 on a CPU (fastest there), 4 on a GPU].")] = None,
    device: DeviceOption = Device.auto,
    devices: Annotated[int, typer.Option(help="Worker processes sharing the files here: --devices K is --cluster local:K.")] = 1,
    cluster: ClusterOption = None,
    precision: PrecisionOption = Precision.auto,
    gain: GainOption = None,
    offset: OffsetOption = None,
    calibration: CalibrationOption = None,
    output_units: Annotated[Units, typer.Option(help="photons (the input exposure's photon units) or adu (needs gain/offset).")] = Units.photons,
    axes: AxesOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """MMSE-denoise images. Output: float32 TIFF (or .npy/.zarr) of the same shape and axes as each
    input, in the PHOTON UNITS OF THE INPUT (expected photons per pixel at the input's exposure),
    or in camera units with --output-units adu. Stacks (ZYX, TYX, ...) are denoised plane by plane, or as volumes by a 3D model (--dims 3)."""
    from photongap.io import check_new_outputs, find_images, output_paths
    from photongap.model import load
    from photongap.pipeline import denoise_file, read_images, total_tiles
    from photongap.runtime import resolve_device

    camera = camera_from_options(gain, offset, calibration)
    address = cluster_address(cluster, devices)
    resolve_device(device.value)
    network = load(model)
    paths = find_images(inputs)
    targets = output_paths(paths, out)
    check_new_outputs(targets, overwrite)
    options = dict(camera=camera, output_units=output_units.value, tile=tile or None, overlap=overlap, batch_size=batch_size, precision=precision.value, overwrite=overwrite)
    if address is not None:
        from photongap.cli.cluster import denoise_on_cluster

        return denoise_on_cluster(address, model, paths, targets, out, axes=axes, device=device.value, **options)
    images = read_images(paths, axes, camera)
    with progress_bar() as progress:
        task = progress.add_task("denoising", total=total_tiles(network, images, tile or None, overlap), status="tiles")
        for image, target in zip(images, targets):
            progress.update(task, status=image.path.name)
            denoise_file(network, image, target, device=device.value, progress=lambda done: progress.advance(task, done), **options)
    console.print(f"[green]denoised[/] {len(images)} image(s) into {out}")


@app.command()
def sample(
    model: Annotated[Path, typer.Argument(help="model.pt from 'photongap train'.")],
    inputs: Annotated[list[Path], typer.Argument(help="Noisy images or folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    n: Annotated[int, typer.Option("-n", help="Samples per image.")] = 16,
    target_psnr: Annotated[
        Optional[float], typer.Option(help="Stop at this pseudo-PSNR (dB) of the accumulated photons (default: 3 dB above the model's trained range; 20 dB with --beta/--beta-max/--dispersion).")
    ] = None,
    target_photons: Annotated[Optional[float], typer.Option(help="Or stop at this many photons per image.")] = None,
    beta: Annotated[
        Optional[float], typer.Option(help=f"Photons added per step, as a fraction of those so far (published: 0.1; default: {schedules.FAST_SCHEDULE.beta:g}). Any of --beta/--beta-max/--dispersion runs the plain GAP loop (the network at every level) instead of the Dirichlet sampler.")
    ] = None,
    beta_max: BetaMaxOption = None,
    dispersion: Annotated[Optional[float], typer.Option(help=f"With the plain loop: the spread a pixel-wise posterior adds within each step (0: published Poisson draw; default: {schedules.FAST_SCHEDULE.dispersion:g}).")] = None,
    posterior_gain: Annotated[
        Optional[float], typer.Option(help="The Dirichlet sampler's gain g (photons the network is worth per input photon), one for the whole image; default: measured on each image from held-out photons and spread over it as the network's own variance is, 31 network calls per image (49 per volume).")
    ] = None,
    final: Annotated[str, typer.Option(help="The Dirichlet sampler's sample: 'draw' (one draw of the clean image given the final photons) or 'mean'.")] = "draw",
    check: Annotated[
        bool,
        typer.Option("--check", help="Also print the coverage of the samples' central 80% implied by held-out photons (0.8: calibrated; no ground truth), for each plane and pooled over all: --check-splits more sampling runs, each on four fifths of the photons."),
    ] = False,
    check_splits: Annotated[Optional[int], typer.Option(min=1, help="Held-out splits of each plane the --check pools [default: 4; fewer: faster, noisier].")] = None,
    check_plot: Annotated[Optional[Path], typer.Option(help="PNG of the --check (implied): the implied coverage of each tenth of the pixels by predicted variance, per plane and pooled.")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same samples (on the same device).")] = 0,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per network call [default: 1 on a CPU (fastest there), 16 on a GPU].")] = None,
    tile: Annotated[int, typer.Option(help="Images larger than this are sampled tile by tile (logits stitched before each softmax); 0 = never.")] = defaults.DEFAULT_SAMPLE_TILE,
    device: DeviceOption = Device.auto,
    cluster: ClusterOption = None,
    precision: PrecisionOption = Precision.auto,
    movie: Annotated[Optional[Path], typer.Option(help="GIF/MP4 of the first sample of the first image accumulating photons.")] = None,
    gain: GainOption = None,
    offset: OffsetOption = None,
    calibration: CalibrationOption = None,
    output_units: Annotated[Units, typer.Option(help="photons or adu.")] = Units.photons,
    axes: AxesOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Diversity denoising: posterior samples, their mean and per-pixel std (NAME_samples/_mean/_std.tif),
    in the photon units of the input. Stacks are sampled plane by plane (volume by volume with a 3D model)."""
    from photongap.camera import CountsView
    from photongap.io import check_new_outputs, find_images, output_paths
    from photongap.model import load
    from photongap.movie import MovieRecorder
    from photongap.pipeline import read_images, sample_file, units_of
    from photongap.posterior_check import CHECK_SPLITS, check_calibration, pooled_check

    check_splits = CHECK_SPLITS if check_splits is None else check_splits
    check = check or check_plot is not None
    if check_plot is not None and check_plot.suffix.lower() != ".png":
        raise PhotongapError(f"--check-plot must be a .png file, got {check_plot}")
    if target_photons is not None:
        target_psnr = None
    camera = camera_from_options(gain, offset, calibration)
    schedule = None
    if beta is not None or beta_max is not None or dispersion is not None:
        fast = schedules.FAST_SCHEDULE
        schedule = schedule_from_options(
            fast.beta if beta is None else beta, beta_max_default(fast) if beta_max is None else beta_max, fast.dispersion if dispersion is None else dispersion
        )
    options = dict(target_psnr=target_psnr, target_photons=target_photons, schedule=schedule, gain=posterior_gain, final=final)
    common = dict(seed=seed, batch_size=batch_size, tile=tile or None, device=device.value, precision=precision.value)
    paths = find_images(inputs)
    targets = output_paths(paths, out, ("_samples", "_mean", "_std"), extension=".tif")
    check_new_outputs([path for group in targets for path in group] + ([check_plot] if check_plot else []), overwrite)
    network = load(model)
    if cluster is not None:
        from photongap.cli.cluster import sample_on_cluster

        return sample_on_cluster(cluster, model, paths, targets, axes=axes, camera=camera, device=device.value, movie=movie, n=n, check=check, check_splits=check_splits, check_plot=check_plot, overwrite=overwrite,
                                 output_units=output_units.value, **options, **{key: value for key, value in common.items() if key != "device"})
    images = read_images(paths, axes, camera)
    recorder = MovieRecorder() if movie else None
    checks = []
    for number, (image, outputs) in enumerate(zip(images, targets)):
        units = units_of(network, image)
        with sampling_progress(f"sampling {image.path.name}", target_psnr, recorder if number == 0 else None, planes=len(units)) as bar:
            sampled = sample_file(
                network,
                image,
                outputs,
                n=n,
                camera=camera,
                output_units=output_units.value,
                overwrite=overwrite,
                on_step=bar.on_step,
                on_plane=bar.on_plane,
                **options,
                **common,
            )
        console.print(f"[green]{sampled.summary(image.path.name, n)}[/]")
        if (note := sampled.note(image.path.name)) is not None:
            console.print(f"[yellow]{note}[/]")
        if check:
            with progress_bar() as progress:
                task = progress.add_task(f"checking {image.path.name}", total=len(units), status=f"{check_splits} splits each")
                for index, unit in units:
                    result = check_calibration(network, CountsView(unit, camera, str(image.path))[(slice(None),) * unit.ndim], max(n, 4), splits=check_splits, **options, **common)
                    position = tuple(key for key in index if not isinstance(key, slice))
                    where = f" {'volume' if network.config.dims == 3 else 'plane'} {position}" if position else ""
                    progress.console.print(result.summary(f"{image.path.name}{where}"))
                    checks.append((f"{image.path.name}{where}", result))
                    progress.advance(task)
    what = "volumes" if network.config.dims == 3 else "images" if len(checks) == len(paths) else "planes"
    if (pooled := pooled_check(checks, what)) is not None:
        console.print(pooled[1].summary(pooled[0]))
    if check_plot is not None:
        from photongap.plotting import plot_calibration_check

        plot_calibration_check(checks, check_plot, pooled)
        console.print(f"check plot written to {check_plot}")
    if recorder is not None:
        recorder.save(movie)
        console.print(f"movie written to {movie}")


@app.command()
def generate(
    model: Annotated[Path, typer.Argument(help="model.pt (best trained with --preset generative: every photon level).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: generated.tif (n, Y, X).")],
    size: Annotated[tuple[int, int], typer.Option(help="Image size Y X.")] = (256, 256),
    depth: Annotated[int, typer.Option(help="Planes of each generated volume (3D models only).")] = 16,
    n: Annotated[int, typer.Option("-n", help="Images to generate.")] = 8,
    target_psnr: TargetPsnrOption = schedules.DEFAULT_TARGET_PSNR,
    beta: Annotated[float, typer.Option(help="Photons added per step, as a fraction of those so far.")] = schedules.PUBLISHED_SCHEDULE.beta,
    beta_max: BetaMaxOption = beta_max_default(schedules.PUBLISHED_SCHEDULE),
    dispersion: DispersionOption = schedules.PUBLISHED_SCHEDULE.dispersion,
    seed: Annotated[int, typer.Option(help="Same seed, same images.")] = 0,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per network call [default: 1 on a CPU (fastest there), 16 on a GPU].")] = None,
    device: DeviceOption = Device.auto,
    precision: PrecisionOption = Precision.auto,
    movie: Annotated[Optional[Path], typer.Option(help="GIF/MP4 of the first image accumulating photons, beside its prediction.")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Generate images from an empty canvas by accumulating predicted photons."""
    from photongap.io import check_new_outputs, write_image
    from photongap.model import load
    from photongap.movie import MovieRecorder

    target = out / "generated.tif"
    check_new_outputs([target], overwrite)
    schedule = schedule_from_options(beta, beta_max, dispersion)
    network = load(model)
    recorder = MovieRecorder() if movie else None
    with sampling_progress("generating", target_psnr, recorder) as bar:
        shape = (depth, *size) if network.config.dims == 3 else size
        result = network.generate(
            n, shape, target_psnr=target_psnr, schedule=schedule, seed=seed, batch_size=batch_size, device=device.value, precision=precision.value, on_step=bar.on_step
        )
    axes = "TZYX" if network.config.dims == 3 else "TYX"
    path = write_image(target, result.samples, axes, description=f"photongap generation, {n} images, first axis: images", overwrite=overwrite)
    if recorder is not None:
        recorder.save(movie)
    console.print(f"[green]generated[/] {n} images ({result.network_calls} network calls each) -> {path}")


@app.command()
def info(
    model: Annotated[Path, typer.Argument(help="model.pt from 'photongap train'.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """What a model file holds: version, preset, weights, trained range of photon levels, training data."""
    import json

    from photongap.model import load

    description = load(model).describe()
    if json_output:
        typer.echo(json.dumps(description, indent=2, default=str))
        return
    trained = description["trained_range_db"]
    photons = description["trained_range_photons_per_px"]
    data = description["data"] or {}
    lines = [
        f"[bold]{model}[/]",
        f"  photongap {description['photongap_version']}, model format {description['format_version']}, preset {description['preset']}",
        f"  network   depth {description['network']['depth']}, {description['network']['start_filters']} filters, "
        f"{description['network']['encoding']} encoding{', level input' if description['network'].get('level_input') else ''}; "
        f"{description['weights']:,} weights; receptive radius {description['receptive_radius_px']} px",
        "  trained   " + (f"inputs from {trained[0]:.1f} to {trained[1]:.1f} dB ({photons[0]:.3g} to {photons[1]:.3g} photons/px)" if trained else "range not recorded"),
        f"  steps     {description['steps_done']}",
    ]
    if data:
        lines.append(
            f"  data      {data.get('images')} image(s), {data.get('pixels'):,} px, {data.get('photons_per_pixel', float('nan')):.3g} photons/px "
            f"({data.get('pseudo_psnr', float('nan')):.1f} dB), brightest pixel {data.get('max_count', float('nan')):g}"
        )
    assessment = description.get("assessment")
    if assessment and assessment.get("images"):
        lines.append(
            f"  assessed  {assessment['images']} validation image(s) by held-out photons: MSE {assessment['mse']:.4g} ± {assessment['mse_std']:.2g} "
            f"photons²/px, PSNR {assessment['psnr']:.2f} dB, held-out NLL {assessment['nll_per_photon']:.4f} nats/photon"
        )
    if description.get("posterior_gain") is not None:
        lines.append(f"  sampling  posterior gain {description['posterior_gain']:.3g} (the network is worth that many photons per input photon; measured on the validation images)")
    console.print("\n".join(lines), highlight=False)


@app.command()
def calibrate(
    inputs: Annotated[list[Path], typer.Argument(help="A stack of frames of one field (T, Y, X), or single images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="calibration.json to write.")],
    dark: Annotated[Optional[list[Path]], typer.Option(help="Dark frames (shutter closed): offset and read noise.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="PNG of the photon transfer curve and the fit.")] = None,
    axes: AxesOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Estimate camera gain (ADU/photon), offset (ADU) and read noise (ADU) from the data itself."""
    from photongap.io import check_new_outputs
    from photongap.pipeline import calibrate_files

    check_new_outputs([out], overwrite)
    result = calibrate_files(inputs, dark=dark, axes=axes, plot=plot)
    result.save(out)
    if result.read_noise_upper is not None:
        read_noise = f"read noise < {result.read_noise_upper:.3g} ADU (not resolved; best guess {result.read_noise:.3g} ADU, dark frames would measure it)"
    else:
        read_noise = f"read noise {result.read_noise:.3g} ± {result.read_noise_uncertainty:.2g} ADU"
    console.print(
        f"gain {result.gain:.4g} ± {result.gain_uncertainty:.2g} ADU/photon, offset {result.offset:.1f} ± {result.offset_uncertainty:.1f} ADU, "
        f"{read_noise} ({result.method}) -> {out}"
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo-output"),
    minutes: Annotated[float, typer.Option(help="Training time budget.")] = 3.0,
    steps: Annotated[int, typer.Option(help="Most training steps (the time budget may stop earlier).")] = 2000,
    photons: Annotated[float, typer.Option(help="Simulated photons per pixel.")] = 1.0,
    device: DeviceOption = Device.auto,
) -> None:
    """Train on the embedded real fluorescence sample at ~1 photon/px, denoise held-out images, score them."""
    from photongap.demo import run_demo

    result = run_demo(out, photons_per_pixel=photons, minutes=minutes, steps=steps, device=device.value)
    console.print(
        f"\n[bold]photongap demo[/] ({result.photons_per_pixel:g} photons/px, {result.steps} steps in {result.train_seconds / 60:.1f} min)\n"
        f"  PSNR noisy input : {result.psnr_noisy:.2f} dB\n"
        f"  PSNR photongap   : {result.psnr_photongap:.2f} dB\n"
        f"  figure  {out / 'comparison.png'}\n  metrics {out / 'metrics.json'}\n  model   {out / 'run' / 'model.pt'}"
    )
