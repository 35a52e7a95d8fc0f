"""Check ``photongap plan-exposure`` against truth: the plan's estimate at a fraction vs a model trained on a real acquisition there.

Setup (see the report): demo sample data simulated at 1 photon/px (seed 0) as TIFFs, the 8 test
images last and held out (``val_fraction`` 7.5/23), ``photongap plan-exposure data -o plan
--fractions 1,0.5,0.25,0.1 --config config.yaml`` (600 steps each). This script then compares,
at ``--fraction``, in photons² at the ORIGINAL exposure and averaged over the held-out images:

* the plan's estimate (plan.json),
* the true MSE of the plan's own model on its thinned held-out images,
* the true MSE of a model trained on an actual acquisition at that level (``--actual-model``)
  on fresh acquisitions of the same test images.

    .venv/bin/python benchmarks/bench_plan_exposure.py --plan PLAN_DIR --make [--fine-tune-steps 300 | --from-scratch] \
        --actual-model bench-output/models/demo_0.1_default/model.pt --fraction 0.1

(``--make``: make the plan first, fine-tuning each fraction from the previous one unless
``--from-scratch``; it prints each fraction's wall time.)

(``bench_assess.py`` trains and caches that model: the default preset, 600 steps, on the demo
training images simulated at 0.1 photons/px.)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from photongap.assessment import assess_counts, model_denoiser
from photongap.exposure import plan_exposure, thin
from photongap.model import GapModel
from photongap.sample_data import clean_at_level, load_sample_data, simulate_counts


def make_plan(args: argparse.Namespace) -> None:
    """The plan of the setup above, through the library (as the command line runs it); prints each fraction's wall time."""
    data = load_sample_data()
    rng = np.random.default_rng(args.seed)
    planes = [simulate_counts(g, args.level, rng) for g in data.train + data.test]
    started = time.monotonic()
    timings = []

    def on_fraction(fraction: float, number: int) -> None:
        timings.append((fraction, time.monotonic()))

    plan_exposure(planes, args.plan, [1, 0.5, 0.25, 0.1], overrides={"steps": args.steps, "val_fraction": 7.5 / len(planes)},
                  fine_tune=not args.from_scratch, fine_tune_steps=args.fine_tune_steps, on_fraction=on_fraction, device="cpu")
    ends = [t for _, t in timings[1:]] + [time.monotonic()]
    for (fraction, begun), end in zip(timings, ends):
        print(f"  fraction {fraction:g}: {end - begun:.0f} s (training and grading)")
    print(f"  plan: {time.monotonic() - started:.0f} s wall")


def tune_check(args: argparse.Namespace) -> None:
    """Fine-tuning alone, without the plan's grading: the true quality at ``--fraction`` of a model fine-tuned there.

    Thins the planned data to ``--fraction`` (as the plan does), trains ``--tune-steps`` steps from
    ``--tune-from`` (a model of the full dose: the cached default model of the same training images
    at ``--level``), holding the test images out, and prints its true PSNR on them next to the
    model trained on an actual acquisition at that dose, with both wall times.
    """
    from photongap.training import train

    data = load_sample_data()
    rng = np.random.default_rng(args.seed)
    planes = [simulate_counts(g, args.level, rng) for g in data.train + data.test]
    thinned = thin(planes, args.fraction, seed=3)  # the seed the plan 1, 0.5, 0.25, 0.1 thins this fraction with
    model_path = Path(args.tune_out, "model.pt")
    if not model_path.exists():  # a second call only grades
        started = time.monotonic()
        start = None if args.tune_from == "scratch" else args.tune_from  # 'scratch': the same run without the weights, to compare
        result = train(thinned, args.tune_out, init_from=start, overrides={"steps": args.tune_steps, "val_fraction": 7.5 / len(planes)},
                       progress=False, assess=False, device="cpu")
        print(f"trained {result.steps} steps from {args.tune_from}: {time.monotonic() - started:.0f} s (training alone)")
    cleans = [clean_at_level(g, args.level) for g in data.test]
    tuned, actual = GapModel.load(model_path), GapModel.load(args.actual_model)
    fresh = np.random.default_rng(999)
    scale = 1 / args.fraction
    tuned_mse, actual_mse = [], []
    for clean, low in zip(cleans, thinned[len(data.train):]):
        tuned_mse.append(np.mean((clean - tuned.denoise(low, device="cpu") * scale) ** 2))
        acquisition = fresh.poisson(clean * args.fraction).astype(np.float32)
        actual_mse.append(np.mean((clean - actual.denoise(acquisition, device="cpu") * scale) ** 2))
    data_range = float(np.mean([np.ptp(clean) for clean in cleans]))
    psnr = lambda value: 10 * math.log10(data_range**2 / value)  # noqa: E731
    print(f"  this run, true PSNR {psnr(np.mean(tuned_mse)):.2f} dB; actual acquisition, from scratch, true PSNR {psnr(np.mean(actual_mse)):.2f} dB")
    if args.grade:  # as the plan grades its held-out images (assess_planes: seed = plane number), in original photons²
        graded = np.mean([assess_counts(model_denoiser(tuned, low, "cpu"), low, seed=number).mse * scale**2
                          for number, low in enumerate(thinned[len(data.train):])])
        print(f"  plan estimate (default estimator) PSNR {psnr(graded):.2f} dB: estimate - actual {psnr(graded) - psnr(np.mean(actual_mse)):+.2f} dB, "
              f"estimate - own true {psnr(graded) - psnr(np.mean(tuned_mse)):+.2f} dB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan")
    parser.add_argument("--actual-model", required=True)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--level", type=float, default=1.0, help="photons/px of the planned data")
    parser.add_argument("--seed", type=int, default=0, help="the simulation seed of the planned data")
    parser.add_argument("--make", action="store_true", help="first make the plan (the setup above) if PLAN_DIR has none")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--fine-tune-steps", type=int, help="steps of the fine-tuned fractions (default: --steps)")
    parser.add_argument("--from-scratch", action="store_true", help="train every fraction from scratch")
    parser.add_argument("--regrade", nargs="*", default=[], help="also grade the plan's held-out images with these assessment methods")
    parser.add_argument("--tune-from", help="only fine-tune from this model at --fraction (tune_check) and stop; 'scratch': the same from scratch")
    parser.add_argument("--tune-steps", type=int, default=300)
    parser.add_argument("--grade", action="store_true", help="tune_check: also grade the tuned model as the plan would")
    parser.add_argument("--tune-out", default="bench-output/plans/tuned")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.tune_from:
        return tune_check(args)
    if args.make and not Path(args.plan, "plan.json").exists():
        make_plan(args)
    plan = json.load(open(f"{args.plan}/plan.json"))
    fractions = [point["fraction"] for point in plan["fractions"]]
    point = plan["fractions"][fractions.index(args.fraction)]
    data = load_sample_data()
    truths = data.train + data.test
    rng = np.random.default_rng(args.seed)
    counts = [simulate_counts(g, args.level, rng) for g in truths]
    thinned = thin(counts, args.fraction, seed=fractions.index(args.fraction))[len(data.train):]
    cleans = [clean_at_level(g, args.level) for g in data.test]  # original exposure
    own = GapModel.load(f"{args.plan}/fraction_{args.fraction:g}/model.pt")
    actual = GapModel.load(args.actual_model)
    fresh = np.random.default_rng(999)
    scale = 1 / args.fraction
    own_mse, actual_mse, ranges = [], [], []
    for clean, low in zip(cleans, thinned):
        own_mse.append(np.mean((clean - own.denoise(low, device="cpu") * scale) ** 2))
        acquisition = fresh.poisson(clean * args.fraction).astype(np.float32)
        actual_mse.append(np.mean((clean - actual.denoise(acquisition, device="cpu") * scale) ** 2))
        ranges.append(float(np.ptp(clean)))
    db = lambda value: 10 * math.log10(value)  # noqa: E731
    data_range = float(np.mean(ranges))
    psnr = lambda value: db(data_range**2 / value)  # noqa: E731
    print(f"fraction {args.fraction:g} of {args.level:g} photons/px, {len(cleans)} held-out images, MSE in photons² at the original exposure")
    print(f"  plan estimate          MSE {point['mse']:.4g} ({db(point['mse']):.2f} dB)  PSNR (ground-truth range) {psnr(point['mse']):.2f} dB")
    print(f"  plan's model, true     MSE {np.mean(own_mse):.4g} ({db(np.mean(own_mse)):.2f} dB)  PSNR {psnr(np.mean(own_mse)):.2f} dB")
    print(f"  actual acquisition     MSE {np.mean(actual_mse):.4g} ({db(np.mean(actual_mse)):.2f} dB)  PSNR {psnr(np.mean(actual_mse)):.2f} dB")
    print(f"  estimate - actual: {psnr(point['mse']) - psnr(np.mean(actual_mse)):+.2f} dB PSNR")
    for method in args.regrade:  # the same held-out planes and seeds as the plan's own grading, another estimator
        graded = [assess_counts(model_denoiser(own, low, "cpu"), low, seed=number, method=method).mse * scale**2
                  for number, low in enumerate(thinned)]
        print(f"  regraded ({method}): MSE {np.mean(graded):.4g}  PSNR {psnr(np.mean(graded)):.2f} dB, "
              f"estimate - actual {psnr(np.mean(graded)) - psnr(np.mean(actual_mse)):+.2f} dB")


if __name__ == "__main__":
    main()
