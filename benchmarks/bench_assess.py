"""Accuracy of ``photongap assess`` against ground truth: estimated vs true MSE of the MMSE output.

Simulates held-out test images (never trained on) at each photon level with a seed unlike the
training data's, denoises them with the trained model, and compares the held-out estimate of the
MSE (no ground truth) with the true MSE against the clean image scaled to the same exposure.

    .venv/bin/python benchmarks/bench_assess.py \
        --sets demo hubble --levels 1 0.1 [--models DIR] [--json out.json]

The data sets are the embedded demo sample and the Hubble deep field (benchmarks/data). The
models are the default preset trained 600 steps on each set's training images at each level
(noise seed 0), cached in DIR/{set}_{level:g}_default (bench-output/models; trained if missing).
Prints one table per set and level (true dB, estimated dB, error) and the mean / worst |error|.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from common import OUTPUT, default_model, ground_truth
from photongap.assessment import DEFAULT_FRACTIONS, DEFAULT_REPEATS, assess_counts, photon_noise_floor
from photongap.sample_data import clean_at_level



def power_law(mse_at_fraction: list[float], fractions: list[float]) -> float:
    """Alternative extrapolation: MSE(p) = C p^-alpha fitted on log scale (weights (1-p)^2 m^2)."""
    m, p = np.asarray(mse_at_fraction), np.asarray(fractions)
    if np.any(m <= 0):
        return float("nan")
    w = (1 - p) ** 2
    slope, intercept = np.polyfit(np.log(p), np.log(m), 1, w=np.sqrt(w))
    return float(math.exp(intercept))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=str(OUTPUT / "models"), help="where the default-preset models are cached (trained 600 steps if missing)")
    parser.add_argument("--sets", nargs="+", default=["demo", "hubble"])
    parser.add_argument("--levels", nargs="+", type=float, default=[1.0, 0.1])
    parser.add_argument("--fractions", nargs="+", type=float, default=list(DEFAULT_FRACTIONS))
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--seed", type=int, default=1234, help="noise of the test acquisitions (training used seed 0)")
    parser.add_argument("--methods", nargs="+", default=["held_out"], help="estimators to compare (photongap.assessment.Method)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.sets:
        for level in args.levels:
            model = default_model(name, level, Path(args.models))
            rng = np.random.default_rng(args.seed)
            print(f"\n{name} at {level:g} photons/px: image, true MSE dB, estimated dB, error dB, power-law dB, z, +1 sigma of the photon-noise floor in dB")
            for index, clean_image in enumerate(ground_truth(name)[1]):
                clean = clean_at_level(clean_image, level)
                counts = rng.poisson(clean).astype(np.float32)
                denoised = model.denoise(counts, device="cpu")
                true_mse = float(np.mean((clean.astype(np.float64) - denoised) ** 2))
                for method in args.methods:
                    started = time.monotonic()
                    result = assess_counts(lambda c: model.denoise(c, device="cpu"), counts, fractions=args.fractions,
                                           repeats=args.repeats, seed=args.seed + index, denoised=denoised, method=method)
                    seconds = time.monotonic() - started
                    power = power_law(result.mse_at_fraction, result.fractions)
                    db = lambda v: 10 * math.log10(v) if v > 0 else float("nan")  # noqa: E731
                    row = dict(set=name, level=level, method=method, image=index, true_mse=true_mse, mse=result.mse, mse_std=result.mse_std,
                               power_mse=power, true_db=db(true_mse), est_db=db(result.mse), error_db=db(result.mse) - db(true_mse),
                               power_error_db=db(power) - db(true_mse), z=(result.mse - true_mse) / result.mse_std,
                               at_fraction=result.mse_at_fraction, seconds=seconds,
                               floor_db=db(true_mse + photon_noise_floor(clean)) - db(true_mse))
                    rows.append(row)
                    print(f"  {method:8s} {index}  {row['true_db']:7.2f}  {row['est_db']:7.2f}  {row['error_db']:+6.2f}  {row['power_error_db']:+6.2f}  {row['z']:+5.1f}  floor {row['floor_db']:.2f}  ({seconds:.1f} s)")
            for method in args.methods:
                errors = np.array([r["error_db"] for r in rows if r["set"] == name and r["level"] == level and r["method"] == method])
                power_errors = np.array([r["power_error_db"] for r in rows if r["set"] == name and r["level"] == level and r["method"] == method])
                zs = np.array([r["z"] for r in rows if r["set"] == name and r["level"] == level and r["method"] == method])
                print(f"  {method}: rms z {np.sqrt(np.mean(zs**2)):.2f}; mean error {errors.mean():+.2f} dB, mean |error| {np.abs(errors).mean():.2f} dB, worst |error| {np.abs(errors).max():.2f} dB"
                      f"  (power law: mean |error| {np.nanmean(np.abs(power_errors)):.2f}, worst {np.nanmax(np.abs(power_errors)):.2f})")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
