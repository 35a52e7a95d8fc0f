"""File-level jobs: OME-Zarr in and out, piece by piece, keeping metadata and photon units."""

from __future__ import annotations

import numpy as np

from photongap.io import Image, read_image, write_image
from photongap.camera import Camera
from photongap.pipeline import denoise_file


def test_ome_zarr_stack_is_denoised_into_ome_zarr_keeping_scale_and_photons(tiny_model, poisson_image, tmp_path):
    stack = np.stack([poisson_image((40, 56), level, seed) for seed, level in enumerate((1.0, 3.0))]).astype(np.uint16)
    like = Image(stack, "ZYX", tmp_path / "x", pixel_sizes={"X": 0.2, "Y": 0.2, "Z": 1.5}, units={"X": "µm", "Y": "µm", "Z": "µm"})
    source = write_image(tmp_path / "cells.ome.zarr", stack, "ZYX", like=like)
    target = denoise_file(tiny_model, read_image(source), tmp_path / "out.ome.zarr", tile=32, overlap=16, device="cpu")

    result = read_image(target)
    assert result.axes == "ZYX" and result.shape == stack.shape
    assert result.pixel_sizes == {"X": 0.2, "Y": 0.2, "Z": 1.5}
    denoised = np.asarray(result.data)
    np.testing.assert_allclose(denoised, tiny_model.denoise(stack.astype(np.float32), tile=32, overlap=16, device="cpu"), rtol=1e-5, atol=1e-6)


def test_adu_input_and_output_round_trip_through_the_camera(tiny_model, poisson_image, tmp_path):
    counts = poisson_image((40, 40), 2.0, 3)
    camera = Camera(gain=2.0, offset=100.0)
    source = write_image(tmp_path / "raw.tif", (counts * 2 + 100).astype(np.uint16), "YX")
    photons = read_image(denoise_file(tiny_model, read_image(source), tmp_path / "p.tif", camera=camera, device="cpu")).data
    adu = read_image(denoise_file(tiny_model, read_image(source), tmp_path / "a.tif", camera=camera, output_units="adu", device="cpu")).data
    np.testing.assert_allclose(photons, tiny_model.denoise(counts, device="cpu"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adu, camera.to_adu(np.asarray(photons)), rtol=1e-5)

