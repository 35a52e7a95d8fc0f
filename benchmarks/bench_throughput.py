"""Training throughput (patches/s) and denoising throughput (megapixels/s): networks and precisions.

Measured side by side in one run, medians of repeats: the published network (depth 5, 32
filters, 11 M weights) in fp32 and the default (contiguous) memory layout, as published: the
baseline; against photongap's default network (depth 4, 16 filters doubling to 128, 0.69 M
weights) in channels_last layout, in fp32 and in bf16 autocast.
Training: one full optimiser step (split on the batch, forward, photon loss, backward,
Adam) at batch 16 of 64 px patches. Denoising: `GapModel.denoise` on 256 and 512 px images
and a tiled 2048 px image (tile 512, each tile with the network's receptive field of context),
one image or tile per network call on the CPU (photongap's default there).
Start-up: wall time of `python -c "import torch"` (the floor) and of whole `photongap denoise`
commands with the default network in fresh processes: on a 64 px image (almost all start-up,
an upper bound on the time to the first tile) and on a 2048 px TIFF (against the tiling loop
alone above).

    .venv/bin/python benchmarks/bench_throughput.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from common import ContiguousModel, median_time, report
from photongap.config import ModelConfig, TrainConfig, preset
from photongap.model import GapModel
from photongap.network import GapUNet
from photongap.training import GapLightningModule


NETWORKS = {"published": preset("paper")[0], "default": ModelConfig()}
CASES = [("published", "fp32"), ("default", "fp32"), ("default", "bf16")]


def training_step_seconds(network: str, precision: str, repeats: int) -> float:
    bf16 = precision == "bf16"
    module = GapLightningModule(NETWORKS[network], TrainConfig(precision=precision), channels_last=network != "published")
    module.split_generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(module.network.parameters(), lr=1e-4)
    counts = torch.poisson(torch.full((16, 1, 64, 64), 1.0), generator=torch.Generator().manual_seed(1))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(counts, 0)
        loss.backward()
        optimizer.step()

    module.log = lambda *args, **kwargs: None  # outside a Trainer
    return median_time(step, repeats)


def denoise_seconds(network: str, precision: str, size: int, repeats: int) -> float:
    torch.manual_seed(0)
    config = NETWORKS[network]
    model = (ContiguousModel if network == "published" else GapModel)(GapUNet(config).eval(), config)
    counts = np.random.default_rng(0).poisson(1.0, (size, size)).astype(np.float32)
    tile = 512 if size > 512 else None
    return median_time(lambda: model.denoise(counts, tile=tile, precision=precision, device="cpu"), repeats)


def command_seconds(args: list[str], repeats: int) -> float:
    """Median wall time of a command in a fresh process (start-up included)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def startup(repeats: int) -> dict:
    """Start-up of the command line: torch's import alone, then whole denoise commands."""
    photongap = str(Path(sys.executable).with_name("photongap"))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        torch.manual_seed(0)
        GapModel(GapUNet(ModelConfig()).eval(), ModelConfig()).save(root / "model.pt")
        rng = np.random.default_rng(0)
        for size in (64, 2048):
            tifffile.imwrite(root / f"image{size}.tif", rng.poisson(1.0, (size, size)).astype(np.uint16))
        results = {"import_torch_s": command_seconds([sys.executable, "-c", "import torch"], repeats)}
        for size in (64, 2048):
            run = [photongap, "denoise", str(root / "model.pt"), str(root / f"image{size}.tif"), "-o", str(root / f"out{size}.tif"), "--overwrite"]
            seconds = command_seconds(run, repeats if size == 64 else max(1, repeats // 3))
            results[f"denoise_{size}px_command_s"] = seconds
            if size == 2048:
                results["denoise_2048px_command_megapixels_per_s"] = size * size / seconds / 1e6
    return {key: round(value, 3) for key, value in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    results: dict = {"threads": torch.get_num_threads(), "training": {}, "denoising": {}}
    for network, precision in CASES:
        seconds = training_step_seconds(network, precision, args.repeats)
        results["training"][f"{network}_{precision}"] = {"seconds_per_step": round(seconds, 4), "patches_per_s": round(16 / seconds, 1)}
    for size in (256, 512, 2048):
        baseline = None
        for network, precision in CASES:
            seconds = denoise_seconds(network, precision, size, max(3, args.repeats // (1 if size <= 512 else 3)))
            baseline = baseline or seconds
            results["denoising"][f"{size}px_{network}_{precision}"] = {
                "seconds": round(seconds, 4),
                "megapixels_per_s": round(size * size / seconds / 1e6, 2),
                "speedup_vs_published_fp32": round(baseline / seconds, 2),
            }
    results["startup"] = startup(args.repeats)
    report("throughput", results)


if __name__ == "__main__":
    main()
