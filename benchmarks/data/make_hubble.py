"""Derive the benchmarks' second real data set from scikit-image's bundled Hubble deep field.

    pip download --no-deps scikit-image -d /tmp/ski && unzip -o /tmp/ski/scikit_image*.whl 'skimage/data/*' -d /tmp/ski
    python benchmarks/data/make_hubble.py /tmp/ski/skimage/data/hubble_deep_field.jpg

scikit-image is BSD-3-Clause; the image is NASA/ESA's Hubble eXtreme Deep Field (public
domain). A photon-limited scene of sparse point sources, unlike the embedded cells: measured
beside the demo data so that no default is tuned to one data set. Ground truth is the sum of
the three colour channels (integers 0-765, any units); training and test images do not
overlap: rows 0-599 (two halves of the width) train, four 256 px tiles of rows 616-871 test.
"""

import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

image = iio.imread(sys.argv[1]).astype(np.uint16).sum(axis=-1)  # (872, 1000)
train = [image[:600, :500], image[:600, 500:]]
test = [image[616:872, x : x + 256] for x in (0, 250, 500, 744)]
out = Path(__file__).resolve().parent / "hubble_deep_field.npz"
np.savez_compressed(out, **{f"train_{i:02d}": a for i, a in enumerate(train)}, **{f"test_{i:02d}": a for i, a in enumerate(test)})
print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(train)} training, {len(test)} test images")
