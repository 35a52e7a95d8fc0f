"""The posterior gain per image: the truth against what the sampler can measure without it.

The Dirichlet sampler reads the network's prediction from ``x`` as ``g * sum(x)`` photons of
evidence, a per-pixel variance of ``mu / g``; it is calibrated when ``g`` is the true
``sum(x) / sum((lambda - mu)**2)`` (``mu``: the MMSE of ``x``). Per held-out image this prints
that true gain beside the two estimates the sampler has (``photongap.sampling.gain``): the
held-out gain (``held_out_gain``, and whether its photons resolved the network's error), the
network's own variance read from its response to added photons (``spread_gain``'s overall
gain), and the gain the sampler uses (``sampler_gain``: the held-out one where resolved, else
the own one updated by the held-out errors). Default-preset models trained 600 steps (``common.default_model``; ``--steps 1000
--models bench-output/models1000``: the default training), held-out images of a data set
(``common.ground_truth``) simulated at each ``--level`` (seed 100 + image index; ``--seed S``: a generator seeded S draws them in turn, as
``bench_sampling.py --seed S`` does).

    .venv/bin/python benchmarks/bench_gain.py --data demo hubble --level 1 0.1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common import DATA_SETS, OUTPUT, default_model, ground_truth, report
from photongap.runtime import resolve_device
from photongap.sample_data import clean_at_level
from photongap.sampling.gain import held_out_gain, sampler_gain, spread_gain


def gains(name: str, level: float, models: Path, steps: int, seed: int | None) -> list[dict]:
    model = default_model(name, level, models, steps)
    trained, device = model.trained_range(), resolve_device("cpu")
    rows, rng = [], None if seed is None else np.random.default_rng(seed)
    for index, truth in enumerate(ground_truth(name)[1]):
        clean = clean_at_level(truth, level)
        counts = (rng or np.random.default_rng(100 + index)).poisson(clean).astype(np.float32)
        logits = model._sampling_logits_fn(device, "auto", None, None, counts.shape)
        mmse = model.denoise(counts, tile=None, device="cpu")
        true = float(counts.sum() / ((clean - mmse) ** 2).sum())
        held_out = held_out_gain(counts, logits, trained, seed=index, device=device)
        _, own = spread_gain(counts, None, logits, trained, seed=index, device=device)
        used = sampler_gain(held_out, own)
        rows.append({"image": index, "true": round(true, 1), "held_out": round(held_out.gain, 1), "resolved": held_out.resolved, "own": round(own, 1), "used": round(used, 1),
                     "held_out_over_true": round(held_out.gain / true, 2), "own_over_true": round(own / true, 2), "used_over_true": round(used / true, 2)})
        print(f"{name} {level:g} ppx image {index}: true {true:.1f}, held-out {held_out.gain:.1f} ({'resolved' if held_out.resolved else 'not resolved'}), own {own:.1f}, used {used:.1f}", flush=True)
    summary = {key: float(np.exp(np.mean(np.log([row[key] for row in rows])))) for key in ("held_out_over_true", "own_over_true", "used_over_true")}
    own = np.log([row["own"] / row["true"] for row in rows])
    print(f"{name} {level:g} ppx geometric means over true: " + ", ".join(f"{key} {value:.2f}" for key, value in summary.items())
          + f"; ln(own / true) mean {own.mean():+.2f}, root mean square {np.sqrt(np.mean(own**2)):.2f} (posterior.OWN_GAIN_SD)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["demo", "hubble"], choices=DATA_SETS)
    parser.add_argument("--level", nargs="+", type=float, default=[1.0, 0.1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=str(OUTPUT / "models"), help="where the models are cached (bench-output/models1000 with --steps 1000: the default training)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=None, help="draw the noise of all images from one generator of this seed (default: seed 100 + image index)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report("bench_gain" + (f"_seed{args.seed}" if args.seed is not None else ""), {f"{name}_{level:g}ppx": gains(name, level, Path(args.models), args.steps, args.seed) for name in args.data for level in args.level})


if __name__ == "__main__":
    main()
