"""The posterior gain per image: the truth against what the sampler can measure without it.

The Dirichlet sampler reads the network's prediction from ``x`` as ``g * sum(x)`` photons of
evidence, a per-pixel variance of ``mu / g``; it is calibrated when ``g`` is the true
``sum(x) / sum((lambda - mu)**2)`` (``mu``: the MMSE of ``x``). Per held-out image this prints
that true gain beside the two estimates the sampler has (``photongap.sampling.gain``): the
held-out gain (``held_out_gain``, and whether its photons resolved the network's error or the
value is the floor of two standard errors) and the network's own variance read from its
response to added photons (``spread_gain``'s overall gain, the fallback where the held-out one
is a floor). Default-preset models trained 600 steps (``common.default_model``; ``--steps 1000
--models bench-output/models1000``: the default training), held-out images of a data set
(``common.ground_truth``) simulated at each ``--level`` (seed 100 + image index).

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
from photongap.sampling.gain import held_out_gain, spread_gain


def gains(name: str, level: float, models: Path, steps: int) -> list[dict]:
    model = default_model(name, level, models, steps)
    trained, device = model.trained_range(), resolve_device("cpu")
    rows = []
    for index, truth in enumerate(ground_truth(name)[1]):
        clean = clean_at_level(truth, level)
        counts = np.random.default_rng(100 + index).poisson(clean).astype(np.float32)
        logits = model._sampling_logits_fn(device, "auto", None, None, counts.shape)
        mmse = model.denoise(counts, tile=None, device="cpu")
        true = float(counts.sum() / ((clean - mmse) ** 2).sum())
        held_out, resolved = held_out_gain(counts, logits, trained, seed=index, device=device)
        _, own = spread_gain(counts, 0.0, logits, trained, seed=index, device=device, at_least=True)
        rows.append({"image": index, "true": round(true, 1), "held_out": round(held_out, 1), "resolved": resolved, "own": round(own, 1),
                     "held_out_over_true": round(held_out / true, 2), "own_over_true": round(own / true, 2)})
        print(f"{name} {level:g} ppx image {index}: true {true:.1f}, held-out {held_out:.1f} ({'resolved' if resolved else 'floor'}), own {own:.1f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["demo", "hubble"], choices=DATA_SETS)
    parser.add_argument("--level", nargs="+", type=float, default=[1.0, 0.1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=str(OUTPUT / "models"), help="where the models are cached (bench-output/models1000 with --steps 1000: the default training)")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report("bench_gain", {f"{name}_{level:g}ppx": gains(name, level, Path(args.models), args.steps) for name in args.data for level in args.level})


if __name__ == "__main__":
    main()
