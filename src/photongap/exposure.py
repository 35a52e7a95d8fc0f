"""Plan the light dose: how good would denoised images be with a fraction of the photons?

Binomial thinning turns an acquisition into one at a lower exposure: ``Binomial(x, f)`` of
``x ~ Poisson(lambda)`` is exactly ``Poisson(f * lambda)``, a real acquisition at ``f`` times
the light. :func:`plan_exposure` thins the user's data to each fraction, trains a model on it,
grades the held-out validation images by held-out splits (:mod:`photongap.assessment`) and
reports the expected error at the ORIGINAL exposure's photon units, so that fractions compare.

Read noise does not thin. Camera counts are ``photons + read noise`` (after gain and offset);
thinning the recorded value keeps only about ``f**2`` of the read-noise variance (and rounding
plus clipping at 0 distort it further), whereas a real acquisition at fraction ``f`` carries
the camera's full read noise. The plan is therefore optimistic at low fractions unless the read
noise is well below one photon (EMCCD, photon counting, good sCMOS at high gain); a thinned
sCMOS image at 0.1 of the light underestimates its noise by up to ``0.99 * sigma_read**2``
photons² per pixel.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photongap.errors import PhotongapError
from photongap.io import atomic_output


def thin(planes: Sequence[np.ndarray], fraction: float, seed: int = 0) -> list[np.ndarray]:
    """Each plane as if acquired with ``fraction`` of the light: ``Binomial(counts, fraction)`` (fraction 1: unchanged)."""
    if not 0 < fraction <= 1:
        raise PhotongapError(f"exposure fractions must be in (0, 1], got {fraction:g}")
    if fraction == 1:
        return [np.asarray(plane, dtype=np.float32) for plane in planes]
    rng = np.random.default_rng(seed)
    return [rng.binomial(np.asarray(plane).astype(np.int64), fraction).astype(np.float32) for plane in planes]


def planned_dims(dims: int | None, preset: str | None = None, config_file: str | Path | None = None) -> int:
    """The network's ``dims`` a plan trains: ``dims`` if given, else the config file's (over the preset), else the preset's."""
    from photongap.config import load_yaml
    from photongap.config import preset as preset_configs

    if dims is not None:
        return dims
    base = preset_configs(preset or "default")
    return (load_yaml(config_file, base) if config_file is not None else base)[0].dims


@dataclass(frozen=True)
class ExposurePoint:
    """The expected quality at one light dose, in photons² per pixel at the ORIGINAL exposure.

    ``mse``/``mse_std``/``psnr``: denoised validation images (held-out estimate, mean over them);
    ``noisy_mse``/``noisy_psnr``: the raw thinned counts scaled to the original exposure
    (``mean(counts) / f**2``, the Poisson variance); PSNRs use one data range for all fractions.
    ``fine_tuned_from``: the model file this fraction's training started from (None: from scratch).
    """

    fraction: float
    mse: float
    mse_std: float
    psnr: float
    noisy_mse: float
    noisy_psnr: float
    steps: int
    run: str
    fine_tuned_from: str | None = None


def point_from_assessment(fraction: float, report: Mapping[str, Any], validation: Sequence[np.ndarray], steps: int, run: str,
                          fine_tuned_from: str | None = None, data_range: float | None = None) -> ExposurePoint:
    """Convert a run's ``assessment.json`` (photon units of the thinned data) to the original exposure.

    ``data_range`` (original exposure) for the PSNRs: give every fraction the same one (the full
    dose's denoised range) so that they compare; by default this fraction's own.
    """
    images = report["images"]
    scale = 1.0 / fraction**2
    mse = float(np.mean([image["mse"] for image in images])) * scale
    mse_std = float(np.sqrt(np.sum([image["mse_std"] ** 2 for image in images])) / len(images)) * scale
    if data_range is None:
        data_range = float(np.mean([image["data_range"] for image in images])) / fraction
    noisy = float(np.mean([plane.mean(dtype=np.float64) for plane in validation])) * scale
    psnr = 10 * math.log10(data_range**2 / mse) if mse > 0 else float("nan")
    return ExposurePoint(fraction, mse, mse_std, psnr, noisy, 10 * math.log10(data_range**2 / noisy), steps, run, fine_tuned_from)


def write_plan(out: Path, runs: Sequence[tuple]) -> dict[str, Any]:
    """``plan.json`` and ``plan.png`` from ``(fraction, assessment report, validation planes, steps, run[, fine_tuned_from])`` per fraction.

    All PSNRs use the data range of the brightest fraction's denoised images.
    """
    from photongap.plotting import plot_exposure_plan

    runs = sorted(runs, key=lambda run: -run[0])
    brightest = runs[0]
    data_range = float(np.mean([image["data_range"] for image in brightest[1]["images"]])) / brightest[0]
    points = [point_from_assessment(*run, data_range=data_range) for run in runs]
    plan = {"fractions": [asdict(point) for point in points], "data_range": data_range, "recommendation": recommendation(points)}
    with atomic_output(out / "plan.json") as partial:
        partial.write_text(json.dumps(plan, indent=2))
    plot_exposure_plan(plan, out / "plan.png")
    return plan


def recommendation(points: Sequence[ExposurePoint], tolerance_db: float = 1.0) -> str:
    """One line: the lowest dose whose estimated PSNR is within ``tolerance_db`` of the full dose's."""
    full = max(points, key=lambda point: point.fraction)
    good = [point for point in points if point.psnr >= full.psnr - tolerance_db]
    best = min(good, key=lambda point: point.fraction)
    if best.fraction == full.fraction:
        lower = [point for point in points if point.fraction < full.fraction]
        if not lower:
            return f"only the full dose was planned ({full.psnr:.1f} dB)"
        nearest = max(lower, key=lambda point: point.fraction)
        return (f"keep the full dose: {nearest.fraction:g} of the light already loses {full.psnr - nearest.psnr:.2f} dB "
                f"(more than {tolerance_db:g} dB)")
    return (f"{best.fraction:g} of the light keeps the denoised PSNR within {tolerance_db:g} dB of the full dose "
            f"({best.psnr:.1f} vs {full.psnr:.1f} dB): {1 / best.fraction:.3g}x less light")


def plan_exposure(
    planes: Sequence[np.ndarray],
    out: str | Path,
    fractions: Sequence[float],
    *,
    time_limit_minutes: float | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    preset: str | None = None,
    config_file: str | Path | None = None,
    fine_tune: bool = True,
    fine_tune_steps: int | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    on_fraction: Callable[[float, int], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train and grade a model at each light dose; write ``plan.json`` and ``plan.png`` into ``out``.

    Each fraction ``f`` (brightest first) gets ``out/fraction_F/``: a run of
    :func:`photongap.training.train` on the thinned planes, whose held-out validation images
    (the last planes, as the run holds them out) are graded at its end (``assessment.json``).
    ``time_limit_minutes`` is shared equally among the fractions. See the module docstring for
    what read noise does to thinning.

    With ``fine_tune`` each fraction after the first starts from the weights of the one before
    (one step dimmer: a close task, so the network needs fewer steps to adapt) and trains
    ``fine_tune_steps`` steps (default: as many as the first). The held-out validation planes
    are the same at every fraction (thinned), so no fraction is graded on photons its
    predecessor trained on.

    3D: with ``model_overrides={"dims": 3}`` (or a ``config_file`` whose model has ``dims: 3``)
    ``planes`` are ``(D, Y, X)`` volumes and every fraction trains a 3D model; the later
    fractions take the first one's patch depth and depth poolings, so that all the fractions'
    networks are the same (and fine-tuning can start from the one before). Their validation
    volumes are graded whole (:func:`photongap.assessment.assess_planes`).

    Returns
    -------
    dict
        ``{"fractions": [{"fraction", "mse", "psnr", "mse_std", "noisy_mse", "noisy_psnr", ...}],
        "recommendation": str}``; MSEs in photons² per pixel at the original exposure.
    """
    from photongap.config import load_yaml
    from photongap.data import hold_out
    from photongap.training import train
    from photongap.training.run import run_config

    fractions = sorted({float(f) for f in fractions}, reverse=True)
    for fraction in fractions:
        thin([], fraction)  # every fraction is checked before any training
    out = Path(out)
    if (out / "plan.json").exists():
        raise PhotongapError(f"{out / 'plan.json'} already exists; choose another --out")
    changes = dict(overrides or {})
    if time_limit_minutes is not None:
        changes["time_limit_minutes"] = time_limit_minutes / len(fractions)
    if fine_tune_steps is not None and fine_tune_steps < 1:
        raise PhotongapError(f"fine-tuning needs at least one step, got {fine_tune_steps}")
    network_changes = dict(model_overrides or {})
    planned = run_config(out, resume=False, preset_name=preset, config_file=config_file, model_config=None, train_config=None,
                         overrides=changes, model_overrides=network_changes)
    if any(np.ndim(plane) != planned.model.dims for plane in planes):
        kind = "(Y, X) planes" if planned.model.dims == 2 else "(D, Y, X) volumes"
        raise PhotongapError(f"this plan trains {planned.model.dims}D models: give {kind}, got shapes {sorted({np.shape(plane) for plane in planes})}")
    if not hold_out(planes, planned.training.val_fraction, planned.training.patch_size)[1]:
        raise PhotongapError("plan-exposure needs validation images: give at least two planes or volumes (or one tall enough to hold rows out)")
    runs, previous = [], None
    for number, fraction in enumerate(fractions):
        if on_fraction is not None:
            on_fraction(fraction, number)
        thinned = thin(planes, fraction, seed=seed + number)
        run_dir = out / f"fraction_{fraction:g}"
        start = previous if fine_tune else None
        steps = {"steps": fine_tune_steps} if start is not None and fine_tune_steps is not None else {}
        result = train(thinned, run_dir, preset=preset, config_file=config_file, overrides={**changes, **steps}, model_overrides=network_changes,
                       device=device, progress=progress, init_from=start)
        previous = result.model_path
        report_path = run_dir / "assessment.json"
        if not report_path.exists():
            raise PhotongapError("plan-exposure needs validation images: give at least two planes or volumes (or one tall enough to hold rows out)")
        network, training = load_yaml(run_dir / "config.yaml")  # the validation planes are those the run held out
        if network.dims == 3 and number == 0:  # every later fraction: the first one's 3D network and patch depth
            network_changes.update(depth_pools=network.depth_pools, planar_levels=network.planar_levels)
            changes["patch_depth"] = training.patch_depth
        validation = hold_out(thinned, training.val_fraction, training.patch_size)[1]
        runs.append((fraction, json.loads(report_path.read_text()), validation, result.steps, str(run_dir), start and str(start)))
    return write_plan(out, runs)
