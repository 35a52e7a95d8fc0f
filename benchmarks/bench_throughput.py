"""Training throughput (patches/s) and denoising throughput (megapixels/s), fp32 vs bf16 + channels_last.

Both precisions are measured side by side in one run, medians of repeats, on the published
network (depth 5, 32 filters, 10 sine levels). Training: one full optimiser step (split on
the batch, forward, photon loss, backward, Adam) at batch 16 of 64 px patches. Denoising:
`GapModel.denoise` on 256 and 512 px images and a tiled 2048 px image (tile 512, overlap 64).

    .venv/bin/python benchmarks/bench_throughput.py [--repeats 7]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import median_time, report
from photongap.config import ModelConfig, TrainConfig
from photongap.model import GapModel
from photongap.network import GapUNet
from photongap.training import GapLightningModule


def training_step_seconds(precision: str, repeats: int) -> float:
    bf16 = precision == "bf16"
    module = GapLightningModule(ModelConfig(), TrainConfig(precision=precision), channels_last=bf16)
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


def published_model() -> GapModel:
    torch.manual_seed(0)
    return GapModel(GapUNet(ModelConfig()).eval(), ModelConfig())


def denoise_seconds(precision: str, size: int, repeats: int) -> float:
    model = published_model()
    counts = np.random.default_rng(0).poisson(1.0, (size, size)).astype(np.float32)
    tile = 512 if size > 512 else None
    return median_time(lambda: model.denoise(counts, tile=tile, overlap=64, precision=precision, device="cpu"), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    results: dict = {"threads": torch.get_num_threads(), "training": {}, "denoising": {}}
    for precision in ("fp32", "bf16"):
        seconds = training_step_seconds(precision, args.repeats)
        results["training"][precision] = {"seconds_per_step": round(seconds, 4), "patches_per_s": round(16 / seconds, 1)}
    for size in (256, 512, 2048):
        for precision in ("fp32", "bf16"):
            seconds = denoise_seconds(precision, size, max(3, args.repeats // (1 if size <= 512 else 3)))
            results["denoising"][f"{size}px_{precision}"] = {"seconds": round(seconds, 4), "megapixels_per_s": round(size * size / seconds / 1e6, 2)}
    results["training"]["bf16_speedup"] = round(results["training"]["fp32"]["seconds_per_step"] / results["training"]["bf16"]["seconds_per_step"], 2)
    report("throughput", results)


if __name__ == "__main__":
    main()
