"""The demo: train on simulated photon-limited real images, denoise held-out ones, show and score.

Ground truth: high-SNR fluorescence images embedded in the package (see
:mod:`photongap.sample_data`). Training sees only their Poisson-noisy versions at the chosen
photons per pixel (one by default); the ground truth is used for scoring alone.
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from photongap.io import write_image
from photongap.model import GapModel
from photongap.plotting import plot_comparison
from photongap.sample_data import clean_at_level, load_sample_data, psnr, simulate_counts
from photongap.training import train


@dataclass(frozen=True)
class DemoResult:
    """Scores of the demo (PSNR in dB against ground truth, in the input's photon units)."""

    out_dir: str
    photons_per_pixel: float
    steps: int
    train_seconds: float
    psnr_noisy: float
    psnr_photongap: float
    psnr_per_image: list[tuple[float, float]]


def comparison_titles(photons_per_pixel: float) -> list[str]:
    """Column titles of the comparison figure, e.g. ``noisy (0.1 photons/px) | photongap | ground truth``."""
    unit = "photon/px" if photons_per_pixel == 1 else "photons/px"
    return [f"noisy ({photons_per_pixel:g} {unit})", "photongap", "ground truth"]


def run_demo(
    out_dir: str | Path = "demo-output",
    *,
    photons_per_pixel: float = 1.0,
    minutes: float = 3.0,
    steps: int = 2000,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> DemoResult:
    """Train for at most ``minutes`` (or ``steps``), denoise the 8 held-out images, write the results.

    Writes ``OUT/run/`` (the model and its training record), ``OUT/noisy/`` and
    ``OUT/denoised/`` (TIFFs of the test images), ``OUT/comparison.png`` (noisy | photongap |
    ground truth) and ``OUT/metrics.json``.
    """
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir / "run", ignore_errors=True)
    data = load_sample_data()
    rng = np.random.default_rng(seed)
    noisy_train = [simulate_counts(image, photons_per_pixel, rng) for image in data.train]
    clean = [clean_at_level(image, photons_per_pixel) for image in data.test]
    noisy_test = [rng.poisson(image).astype(np.float32) for image in clean]

    overrides = {"steps": steps, "time_limit_minutes": minutes, "seed": seed}
    result = train(noisy_train, out_dir / "run", preset="default", overrides=overrides, device=device, progress=progress)

    model = GapModel.load(result.model_path)
    denoised = [model.denoise(image, device=device) for image in noisy_test]
    for i, (noisy, estimate) in enumerate(zip(noisy_test, denoised)):
        write_image(out_dir / "noisy" / f"test_{i:02d}.tif", noisy.astype(np.uint16), "YX", overwrite=True)
        write_image(out_dir / "denoised" / f"test_{i:02d}.tif", estimate, "YX", overwrite=True, description="photongap MMSE, photons")
    scores = [(psnr(c, n), psnr(c, d)) for c, n, d in zip(clean, noisy_test, denoised)]
    plot_comparison([[n, d, c] for n, d, c in zip(noisy_test[::2], denoised[::2], clean[::2])], comparison_titles(photons_per_pixel), out_dir / "comparison.png")
    summary = DemoResult(
        out_dir=str(out_dir),
        photons_per_pixel=photons_per_pixel,
        steps=result.steps,
        train_seconds=round(result.elapsed_s, 1),
        psnr_noisy=round(statistics.fmean(s[0] for s in scores), 2),
        psnr_photongap=round(statistics.fmean(s[1] for s in scores), 2),
        psnr_per_image=[(round(a, 2), round(b, 2)) for a, b in scores],
    )
    (out_dir / "metrics.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary
