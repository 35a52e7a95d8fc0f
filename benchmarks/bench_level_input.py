"""Level input: what telling the network its input's share of the acquisition does to the MMSE.

A network trained on binomial splits of the data sees inputs holding 50-95.5% of their crop's
photons (the default relative splits) and denoises images holding all of them. Unless told,
it must guess from the photons how dim its input is against the scene. This benchmark trains
the default preset with and without ``model.level_input`` (the share as an input channel), on
each data set and level, with several training seeds, two trainings at a time (one torch
thread each), and reports each model's PSNR on the held-out images (three Poisson draws)
and, as the diagnostic that found the problem, the PSNR when the input is scaled down by
0.85 and 0.7 before the network sees it (which tells an unconditioned network that the image
is dimmer than it is; a model that reads its level right gains nothing from the lie).

    python benchmarks/bench_level_input.py --data demo hubble --levels 0.1 1 --seeds 0 1
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from common import OUTPUT, ground_truth, report
from photongap.model import GapModel
from photongap.physics import mmse_from_logits
from photongap.sample_data import clean_at_level, psnr, simulate_counts

SCALES = (1.0, 0.85, 0.7)
DRAWS = (1, 2, 3)


def run_one(data: str, level: float, level_input: bool, seed: int, steps: int, models: Path) -> dict:
    """Train (or reuse) one model and grade it: PSNR per input scale, mean over images and draws."""
    from photongap.training import train

    torch.set_num_threads(1)
    run = models / f"{data}_{level:g}_{'level' if level_input else 'plain'}_s{seed}_{steps}"
    if not (run / "model.pt").exists():
        rng = np.random.default_rng(0)  # the same noisy training images for every model
        noisy = [simulate_counts(image, level, rng) for image in ground_truth(data)[0]]
        shutil.rmtree(run, ignore_errors=True)
        train(noisy, run, overrides={"steps": steps, "seed": seed}, model_overrides={"level_input": level_input}, progress=False, device="cpu")
    model = GapModel.load(run / "model.pt")
    network = model.logits_fn("cpu")
    clean = [clean_at_level(image, level) for image in ground_truth(data)[1]]
    scores: dict[float, list[float]] = {scale: [] for scale in SCALES}
    for draw in DRAWS:
        rng = np.random.default_rng(draw)
        for truth in clean:
            counts = torch.from_numpy(rng.poisson(truth).astype(np.float32))[None, None]
            for scale in SCALES:
                estimate = mmse_from_logits(network(counts * scale), counts.double().sum().reshape(1))
                scores[scale].append(psnr(truth, estimate[0, 0].numpy()))
    return {"data": data, "level": level, "level_input": level_input, "seed": seed, "steps": steps,
            **{f"psnr_input_x{scale:g}": round(statistics.fmean(values), 3) for scale, values in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=["demo", "hubble"], choices=["demo", "hubble"])
    parser.add_argument("--levels", nargs="+", type=float, default=[0.1, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="training seeds (the noisy data stay the same)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (1000: the default)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time, one torch thread each")
    parser.add_argument("--models", default=str(OUTPUT / "models_level_input"), help="cache of the trained models")
    args = parser.parse_args()
    cases = list(itertools.product(args.data, args.levels, (False, True), args.seeds))
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run_one, *zip(*cases), *([value] * len(cases) for value in (args.steps, Path(args.models)))))
    summary = {}
    for data, level in itertools.product(args.data, args.levels):
        mean = {variant: statistics.fmean(row["psnr_input_x1"] for row in rows if (row["data"], row["level"], row["level_input"]) == (data, level, variant))
                for variant in (False, True)}
        summary[f"{data}_{level:g}"] = {"plain": round(mean[False], 3), "level_input": round(mean[True], 3), "gain_db": round(mean[True] - mean[False], 3)}
    report("level_input", {"steps": args.steps, "seeds": args.seeds, "draws": list(DRAWS), "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
