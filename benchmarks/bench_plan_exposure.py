"""Check ``photongap plan-exposure`` against truth: the plan's estimate at a fraction vs a model trained on a real acquisition there.

Setup (see the report): demo sample data simulated at 1 photon/px (seed 0) as TIFFs, the 8 test
images last and held out (``val_fraction`` 7.5/23), ``photongap plan-exposure data -o plan
--fractions 1,0.5,0.25,0.1 --config config.yaml`` (600 steps each). This script then compares,
at ``--fraction``, in photons² at the ORIGINAL exposure and averaged over the held-out images:

* the plan's estimate (plan.json),
* the true MSE of the plan's own model on its thinned held-out images,
* the true MSE of a model trained on an actual acquisition at that level (``--actual-model``)
  on fresh acquisitions of the same test images.

    .venv/bin/python benchmarks/bench_plan_exposure.py --plan PLAN_DIR \
        --actual-model bench-output/models/demo_0.1_default/model.pt --fraction 0.1

(``bench_assess.py`` trains and caches that model: the default preset, 600 steps, on the demo
training images simulated at 0.1 photons/px.)
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from photongap.exposure import thin
from photongap.model import GapModel
from photongap.sample_data import clean_at_level, load_sample_data, simulate_counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", required=True)
    parser.add_argument("--actual-model", required=True)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--level", type=float, default=1.0, help="photons/px of the planned data")
    parser.add_argument("--seed", type=int, default=0, help="the simulation seed of the planned data")
    args = parser.parse_args()
    torch.set_num_threads(1)
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


if __name__ == "__main__":
    main()
