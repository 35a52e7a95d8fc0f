"""Peak memory and time of `photongap denoise` on one large image, tiled, read and written piece by piece.

The input is an uncompressed uint16 TIFF (memory-mapped when read); the output an uncompressed
float32 TIFF written through a memory map. The command runs in a child process; its peak
resident memory is the child's ``ru_maxrss``. The network is the default architecture with
random weights (memory and speed do not depend on the weights). ``--depth D`` makes the
input a ``(D, size, size)`` z-stack and the model the default-size 3D network (``dims=3``),
which denoises it as one volume in tiles of at most ``MAX_TILE_VOXELS``.

    .venv/bin/python benchmarks/bench_memory.py --size 4096 [--size 16384]
    .venv/bin/python benchmarks/bench_memory.py --depth 64 --size 2048
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from common import OUTPUT, report
from photongap.config import ModelConfig
from photongap.model import GapModel
from photongap.network import GapUNet


def make_input(path: Path, size: int, depth: int | None = None) -> None:
    """A ~1 photon/px image (or ``depth``-plane stack) written in row blocks, so making it takes little memory too."""
    rng = np.random.default_rng(0)
    image = tifffile.memmap(path, shape=(size, size) if depth is None else (depth, size, size), dtype=np.uint16)
    planes = [image] if depth is None else list(image)
    for plane in planes:
        for start in range(0, size, 1024):
            plane[start : start + 1024] = rng.poisson(1.0, (min(1024, size - start), size))
    image.flush()
    del image, planes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, action="append", help="image side; repeat for several (default 4096)")
    parser.add_argument("--depth", type=int, default=None, help="planes of a z-stack, denoised by the default-size 3D model")
    args = parser.parse_args()
    work = OUTPUT / "memory"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = ModelConfig() if args.depth is None else ModelConfig(dims=3)
    model_path = GapModel(GapUNet(config), config).save(work / "default-random.pt")
    photongap = Path(sys.executable).with_name("photongap")
    results = {}
    for size in sorted(args.size or [4096]):  # ru_maxrss is a maximum over children: smallest first
        source, target = work / f"input_{size}.tif", work / f"denoised_{size}.tif"
        make_input(source, size, args.depth)
        target.unlink(missing_ok=True)
        started = time.perf_counter()
        completed = subprocess.run([str(photongap), "denoise", str(model_path), str(source), "-o", str(target), "--device", "cpu"], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if completed.returncode != 0:
            sys.exit(f"denoise failed: {completed.stderr[-2000:]}")
        # ru_maxrss of the largest child so far (kilobytes on Linux); children run one at a time, largest last.
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        with tifffile.TiffFile(target) as tif:
            shape = tif.series[0].shape
        voxels = size * size * (args.depth or 1)
        key = f"{size}px" if args.depth is None else f"{args.depth}x{size}x{size}"
        results[key] = {"peak_rss_gb": round(peak_gb, 2), "seconds": round(seconds, 1), "megapixels_per_s": round(voxels / seconds / 1e6, 3), "output_shape": list(shape)}
        source.unlink()
        target.unlink()
    shutil.rmtree(work, ignore_errors=True)
    report("memory" if args.depth is None else "memory_3d", results)


if __name__ == "__main__":
    main()
