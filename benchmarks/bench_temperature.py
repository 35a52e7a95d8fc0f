"""How sharp is the MMSE? Its PSNR when its logits are scaled by ``gamma`` (a temperature ``1/gamma``).

Scaling a network's logits by ``gamma`` and taking the softmax again turns the MMSE ``f`` into
``sum(x) * f**gamma / sum(f**gamma)``: ``gamma < 1`` moves photons from the bright structures
to the background (a softer prediction), ``gamma > 1`` the other way. ``gamma = 1`` is the
network as trained. For each data set and level this reports, on the held-out images
(``common.ground_truth``; ``--whole-planes``: the stacks' planes uncropped) drawn as Poisson
counts (a generator seeded ``--seed``):

- ``oracle``: the ``gamma`` that minimises the squared error against the truth, summed over the
  images, and the PSNR it gains (what a perfect estimate of one ``gamma`` per model is worth);
- ``validation_pP``: the ``gamma`` that maximises the likelihood of held-out photons on the
  model's own validation images (the noisy training images that ``train`` held out, drawn as
  ``common.default_model`` drew them), each split 4 times into a fraction ``P`` and the rest, and
  the PSNR it gains or loses on the test images: what a model could learn of its sharpness
  from the data it was trained with;
- ``dark_half``: mean MMSE over mean truth in the darker half of the MMSE's pixels (1 for an
  exact posterior mean), as trained and at the oracle ``gamma``.

Models: ``--models`` (default: bench-output/models1000, the default training of
``common.py D L --steps 1000 --models bench-output/models1000``), or one ``--model`` for one
data set and level.

    .venv/bin/python benchmarks/bench_temperature.py --data demo hubble nuclei timelapse --level 0.1 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from common import DATA_SETS, OUTPUT, PLANE_CROP, ground_truth, report
from photongap.data import hold_out
from photongap.model import GapModel
from photongap.sample_data import clean_at_level, psnr, simulate_counts

GAMMAS = (0.5, 2.0)
"""Bounds of the search."""
FRACTIONS = (0.5, 0.8, 0.95)
SPLITS = 4


def sharpened(mmse: np.ndarray, gamma: float) -> np.ndarray:
    """``mmse**gamma`` rescaled to the photons of ``mmse``: the MMSE of the logits times ``gamma``."""
    logs = np.log(np.maximum(mmse.astype(np.float64), 1e-30)) * gamma
    weights = np.exp(logs - logs.max())
    return weights / weights.sum() * float(mmse.sum(dtype=np.float64))


def fitted_gamma(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The ``gamma`` under which the held-out photons ``b`` are most likely given the predictions ``f(a)``."""

    def negative_log_likelihood(gamma: float) -> float:
        return -sum(float((held_out * np.log(np.maximum(sharpened(prediction, gamma) / prediction.sum(), 1e-300))).sum()) for prediction, held_out in pairs)

    return float(minimize_scalar(negative_log_likelihood, bounds=GAMMAS, method="bounded").x)


def validation_images(model: GapModel, data: str, level: float) -> list[np.ndarray]:
    """The noisy images ``train`` held out for validation, drawn as ``common.default_model`` drew the training set."""
    rng = np.random.default_rng(0)
    noisy = [simulate_counts(image, level, rng) for image in ground_truth(data)[0]]
    training = model.info["training"]
    return hold_out(noisy, training["val_fraction"], training["patch_size"])[1]


def measure(model: GapModel, data: str, level: float, whole: bool, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    clean = [clean_at_level(image, level) for image in ground_truth(data, crop=None if whole else PLANE_CROP)[1]]
    counts = [rng.poisson(image).astype(np.float32) for image in clean]
    mmse = [model.denoise(image, device="cpu") for image in counts]

    def gain(gamma: float) -> float:
        return float(np.mean([psnr(truth, sharpened(f, gamma)) - psnr(truth, f) for truth, f in zip(clean, mmse)]))

    def dark_half(gamma: float) -> float:
        ratios = []
        for truth, f in zip(clean, mmse):
            dark = f <= np.median(f)
            ratios.append(sharpened(f, gamma)[dark].mean() / truth[dark].mean())
        return float(np.mean(ratios))

    oracle = float(minimize_scalar(lambda g: sum(float(((sharpened(f, g) - t) ** 2).mean()) for f, t in zip(mmse, clean)), bounds=GAMMAS, method="bounded").x)
    result = {
        "mmse_psnr": round(float(np.mean([psnr(t, f) for t, f in zip(clean, mmse)])), 2),
        "oracle": {"gamma": round(oracle, 3), "psnr_gain_db": round(gain(oracle), 3)},
        "dark_half": {"trained": round(dark_half(1.0), 3), "oracle": round(dark_half(oracle), 3)},
    }
    validation = validation_images(model, data, level)
    split_rng = np.random.default_rng(seed + 1)
    for fraction in FRACTIONS:
        pairs = []
        for image in validation:
            for _ in range(SPLITS):
                kept = split_rng.binomial(image.astype(np.int64), fraction).astype(np.float32)
                pairs.append((model.denoise(kept, device="cpu"), image - kept))
        gamma = fitted_gamma(pairs)
        result[f"validation_p{fraction:g}"] = {"gamma": round(gamma, 3), "psnr_gain_db": round(gain(gamma), 3)}
    result["validation_images"] = len(validation)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(DATA_SETS), choices=DATA_SETS)
    parser.add_argument("--level", nargs="+", type=float, default=[0.1, 1.0])
    parser.add_argument("--models", default=str(OUTPUT / "models1000"), help="models at MODELS/DATA_LEVEL_default/model.pt")
    parser.add_argument("--model", help="one model file, for one --data and --level")
    parser.add_argument("--whole-planes", action="store_true", help="the stacks' held-out planes uncropped (the time-lapse's 511 px frames)")
    parser.add_argument("--seed", type=int, default=7, help="the test images' noise")
    parser.add_argument("--name", default="temperature", help="the report: bench-output/NAME.json")
    args = parser.parse_args()
    if args.model and len(args.data) * len(args.level) != 1:
        parser.error("--model is for one --data and one --level")
    torch.set_num_threads(1)
    results = {}
    for data in args.data:
        for level in args.level:
            path = Path(args.model) if args.model else Path(args.models) / f"{data}_{level:g}_default" / "model.pt"
            key = f"{data}_{level:g}" + ("_whole" if args.whole_planes else "")
            results[key] = {"model": str(path), **measure(GapModel.load(path), data, level, args.whole_planes, args.seed)}
            print(key, results[key], flush=True)
    report(args.name, results)


if __name__ == "__main__":
    main()
