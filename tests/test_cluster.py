"""Denoising and sampling on a real Dask cluster: a LocalCluster of 2 worker processes, one thread each.

The cluster's results must equal the single-process run's: many files one task each, a Zarr
image chunk by chunk with the softmax taken over the whole plane. A failed file is reported
while the others are written; a worker killed mid-run has its tasks rerun and the outputs are
still complete and correct. One cluster serves the whole module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from photongap.camera import Camera
from photongap.errors import PhotongapError
from photongap.io import Image, read_image, write_image
from photongap.pipeline import denoise_file, sample_file
from photongap.tiling import plan_tiles, predict_logits

distributed = pytest.importorskip("distributed")
from photongap.cluster import denoise_on_cluster, model_loads, open_cluster, parse_cluster, sample_on_cluster  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}


@pytest.fixture(scope="module")
def client():
    with open_cluster("local:2", device="cpu") as client:
        yield client


@pytest.fixture()
def model_file(tiny_model, tmp_path):
    return tiny_model.save(tmp_path / "model.pt")


def no_partials(folder: Path) -> bool:
    """No hidden temporaries (partial outputs, logits scratch) left beside the outputs."""
    return not [path for path in folder.iterdir() if path.name.startswith(".")]


def single(model, source: Path, folder: Path, **options) -> np.ndarray:
    """The single-process result of ``denoise_file`` with the same options."""
    target = folder / f"single_{source.name}"
    return np.asarray(read_image(denoise_file(model, read_image(source), target, device="cpu", **options)).data)


def test_region_tiles_cover_the_region_and_give_the_whole_plane_logits(tiny_model, poisson_image):
    counts = poisson_image((150, 200), 2.0, 1)
    network = tiny_model.logits_fn("cpu", "fp32")
    common = dict(tile=48, overlap=0, multiple=tiny_model.config.size_multiple, context=tiny_model.context)
    whole = predict_logits(network, counts, **common)
    for region in [(slice(0, 64), slice(0, 64)), (slice(37, 150), slice(101, 200)), (slice(64, 128), slice(3, 5))]:
        coverage = np.zeros(counts.shape, dtype=int)
        for tile in plan_tiles(counts.shape, 48, 0, common["multiple"], common["context"], region):
            coverage[tile.core] += 1
        expected = np.zeros(counts.shape, dtype=int)
        expected[region] = 1
        np.testing.assert_array_equal(coverage, expected)
        np.testing.assert_allclose(predict_logits(network, counts, region=region, **common), whole[region], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("tile", "side", "margin", "multiple"), [(1024, 1024, 80, 8), (512, 1024, 80, 8), (64, 48, 8, 4), (48, 64, 4, 4), (16, 100, 8, 4)])
def test_a_chunk_is_cut_into_as_few_equal_tiles_as_the_tile_size_allows(tile, side, margin, multiple):
    from photongap.cluster.zarr_tiles import chunk_tile

    largest = max(-(-tile // multiple) * multiple, 4 * margin, multiple)
    fitted = chunk_tile(tile, side, margin, multiple)
    assert fitted <= largest and fitted % multiple == 0
    fewest = -(-side // (largest - 2 * margin))
    assert len(plan_tiles((4 * side, 4 * side), fitted, 0, multiple, margin, (slice(side, 2 * side), slice(0, 1)))) == fewest


def test_addresses_are_checked_in_one_line():
    assert parse_cluster("local:3") == ("local", 3) and parse_cluster("tcp://10.1.2.3:8786") == ("tcp", None)
    for bad in ("local:0", "local:two", "somewhere"):
        with pytest.raises(PhotongapError, match="--cluster"):
            parse_cluster(bad)
    with pytest.raises(PhotongapError, match="cannot reach a Dask scheduler") as error:
        with open_cluster("tcp://127.0.0.1:9", timeout=1):
            pass
    assert "\n" not in str(error.value)


def test_many_files_equal_the_single_process_run_and_each_worker_loads_the_model_once(client, tiny_model, model_file, poisson_image, tmp_path):
    sources = [write_image(tmp_path / f"in{i}.tif", poisson_image((40, 48), 2.0, seed=i).astype(np.uint16), "YX") for i in range(5)]
    sources.append(write_image(tmp_path / "stack.tif", np.stack([poisson_image((40, 48), level, 9) for level in (1.0, 4.0)]), "ZYX"))
    targets = [tmp_path / "out" / source.name for source in sources]
    loads_before = client.run(model_loads)
    ticks: list[tuple[int, int]] = []
    result = denoise_on_cluster(client, model_file, sources, targets, tile=32, overlap=8, device="cpu", progress=lambda *tick: ticks.append(tick))
    assert result.failures == [] and sorted(result.written) == sorted(targets)
    assert ticks[0] == (0, 6) and ticks[-1] == (6, 6)
    loads = {worker: count - loads_before.get(worker, 0) for worker, count in client.run(model_loads).items()}
    assert 1 <= sum(loads.values()) <= 2 and max(loads.values()) <= 1  # 6 tasks, one load per worker at most
    for source, target in zip(sources, targets):
        np.testing.assert_allclose(np.asarray(read_image(target).data), single(tiny_model, source, tmp_path, tile=32, overlap=8), rtol=1e-5, atol=1e-7)
    assert no_partials(tmp_path / "out")


def test_a_zarr_image_tiled_over_the_cluster_equals_the_single_process_run(client, tiny_model, model_file, poisson_image, tmp_path):
    """Chunks of 48 x 64 px as tasks, a softmax over each whole plane, camera units in and out; an OME-Zarr keeps scale and axes."""
    counts = np.stack([poisson_image((150, 200), level, seed) for seed, level in enumerate((1.0, 5.0))]).astype(np.uint16)
    plain = zarr.create_array(str(tmp_path / "raw.zarr"), shape=counts.shape, chunks=(1, 48, 64), dtype="uint16")
    plain[...] = counts * 2 + 10
    like = Image(counts, "ZYX", tmp_path / "x", pixel_sizes={"X": 0.2, "Y": 0.2, "Z": 1.5}, units={"X": "µm", "Y": "µm", "Z": "µm"})
    ome = write_image(tmp_path / "cells.ome.zarr", counts, "ZYX", like=like)
    camera = Camera(gain=2.0, offset=10.0)
    sources, targets = [tmp_path / "raw.zarr", ome], [tmp_path / "out" / "raw.zarr", tmp_path / "out" / "cells.ome.zarr"]
    ticks: list[tuple[int, int]] = []
    result = denoise_on_cluster(client, model_file, sources[:1], targets[:1], camera=camera, output_units="adu", tile=48, overlap=0, device="cpu",
                                progress=lambda *tick: ticks.append(tick))
    assert result.failures == [] and ticks[-1] == (2 * 2 * 4 * 4, 2 * 2 * 4 * 4)  # two passes over 2 planes x 4 x 4 chunks
    assert read_image(targets[0]).data.chunks == (1, 48, 64)
    expected = single(tiny_model, sources[0], tmp_path, camera=camera, output_units="adu", tile=48, overlap=0)
    np.testing.assert_allclose(np.asarray(read_image(targets[0]).data), expected, rtol=1e-5, atol=1e-5)

    result = denoise_on_cluster(client, model_file, sources[1:], targets[1:], tile=None, device="cpu")
    denoised = read_image(targets[1])
    assert result.failures == [] and denoised.axes == "ZYX" and denoised.pixel_sizes == {"X": 0.2, "Y": 0.2, "Z": 1.5}
    np.testing.assert_allclose(np.asarray(denoised.data), single(tiny_model, ome, tmp_path, tile=None), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(denoised.data).sum(axis=(1, 2)), counts.sum(axis=(1, 2)), rtol=1e-4)  # each plane keeps its photons
    assert no_partials(tmp_path / "out")


def test_a_failing_file_is_reported_and_the_others_are_written(client, tiny_model, model_file, poisson_image, tmp_path):
    good = [write_image(tmp_path / f"good{i}.tif", poisson_image((40, 48), 2.0, seed=i), "YX") for i in range(2)]
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    negative = write_image(tmp_path / "negative.zarr", -np.ones((40, 48), np.float32), "YX")
    sources = [good[0], broken, negative, good[1]]
    targets = [tmp_path / "out" / path.name for path in sources]
    result = denoise_on_cluster(client, model_file, sources, targets, tile=None, device="cpu")
    assert sorted(result.written) == sorted([targets[0], targets[3]])
    assert len(result.failures) == 2 and all("\n" not in failure for failure in result.failures)
    assert result.failures[0].startswith(f"{broken}: ") or result.failures[1].startswith(f"{broken}: ")
    assert any(f"{negative}" in failure and "negative values" in failure for failure in result.failures)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["good0.tif", "good1.tif"]  # nothing partial, hidden or not
    np.testing.assert_allclose(read_image(targets[3]).data, single(tiny_model, good[1], tmp_path, tile=None), rtol=1e-5, atol=1e-7)


def test_a_worker_killed_mid_run_has_its_tasks_rerun_and_the_output_is_complete(client, tiny_model, model_file, poisson_image, tmp_path):
    sources = [write_image(tmp_path / f"in{i}.tif", poisson_image((96, 128), 2.0, seed=i), "YX") for i in range(10)]
    chunked = zarr.create_array(str(tmp_path / "big.zarr"), shape=(192, 256), chunks=(64, 64), dtype="float32")
    chunked[...] = poisson_image((192, 256), 1.0, 42)
    sources.append(tmp_path / "big.zarr")
    targets = [tmp_path / "out" / source.name for source in sources]
    pids = client.run(os.getpid)
    killed: list[int] = []

    def kill_one(done: int, total: int) -> None:
        if done == 4 and not killed:
            killed.append(next(iter(pids.values())))
            os.kill(killed[0], signal.SIGKILL)

    result = denoise_on_cluster(client, model_file, sources, targets, tile=64, overlap=0, device="cpu", progress=kill_one)
    client.wait_for_workers(2, timeout=120)
    assert killed and killed[0] not in client.run(os.getpid).values()  # that worker is gone; the nanny started another
    assert result.failures == [] and sorted(result.written) == sorted(targets)
    for source, target in zip(sources, targets):
        np.testing.assert_allclose(np.asarray(read_image(target).data), single(tiny_model, source, tmp_path, tile=64, overlap=0), rtol=1e-5, atol=1e-6)
    assert no_partials(tmp_path / "out")


def test_sampling_on_the_cluster_gives_the_single_process_samples(client, tiny_model, model_file, poisson_image, tmp_path):
    sources = [write_image(tmp_path / f"cell{i}.tif", poisson_image((32, 32), 3.0, seed=i), "YX") for i in range(2)]
    targets = [[tmp_path / "out" / f"cell{i}{suffix}.tif" for suffix in ("_samples", "_mean", "_std")] for i in range(2)]
    options = dict(target_psnr=8.0, seed=3, tile=None)
    result = sample_on_cluster(client, model_file, sources, targets, n=3, device="cpu", **options)
    assert result.failures == [] and len(result.written) == 6
    expected = []
    for source, group in zip(sources, targets):
        alone = sample_file(tiny_model, read_image(source), [tmp_path / name.name for name in group], n=3, device="cpu", **options)
        for cluster_path, single_path in zip(group, alone.paths):
            np.testing.assert_allclose(tifffile.imread(cluster_path), tifffile.imread(single_path), rtol=1e-5, atol=1e-6)
        # Each file's line, and its note where the held-out photons could not measure the gain, as one process prints them.
        expected += [alone.summary(source.name, 3)] + [note for note in [alone.note(source.name)] if note is not None]
    assert sorted(result.notes) == sorted(expected)


def test_the_check_on_the_cluster_is_the_single_process_check_of_each_file_and_of_all_pooled(client, tiny_model, model_file, poisson_image, tmp_path):
    from photongap.posterior_check import check_calibration, pool_checks

    images = [poisson_image((48, 48), 3.0, seed=i) for i in range(2)]
    sources = [write_image(tmp_path / f"cell{i}.tif", image, "YX") for i, image in enumerate(images)]
    targets = [[tmp_path / "out" / f"cell{i}{suffix}.tif" for suffix in ("_samples", "_mean", "_std")] for i in range(2)]
    options = dict(target_psnr=8.0, seed=3, tile=None, gain=4.0)
    result = sample_on_cluster(client, model_file, sources, targets, n=4, device="cpu", check_plot=tmp_path / "check.png", check_splits=2, **options)
    assert result.failures == [] and len(result.notes) == 6, result.notes  # sampled, checked: each file; pooled; the plot
    checks = [check_calibration(tiny_model, image, 4, splits=2, device="cpu", **options) for image in images]
    for index, check in enumerate(checks):
        assert check.summary(f"cell{index}.tif") in result.notes
    assert result.notes[-2] == pool_checks(checks).summary("all 2 images pooled")
    assert result.notes[-1].startswith("check plot written") and (tmp_path / "check.png").read_bytes()[:4] == b"\x89PNG"


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "photongap.cli", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=240)


def test_cli_on_a_local_cluster_writes_the_good_files_lists_the_bad_and_exits_non_zero(tiny_model, model_file, poisson_image, tmp_path):
    inputs = tmp_path / "inputs"
    sources = [write_image(inputs / f"cell{i}.tif", poisson_image((40, 48), 2.0, seed=i), "YX") for i in range(2)]
    (inputs / "broken.tif").write_bytes(b"not a tiff")
    result = run_cli("denoise", model_file, inputs, "-o", tmp_path / "out", "--tile", 0, "--device", "cpu", "--cluster", "local:2")
    assert result.returncode == 2, result.stderr
    assert "broken.tif: cannot read it" in result.stderr and "1 of 3 file(s) failed" in result.stderr and "Traceback" not in result.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["cell0.tif", "cell1.tif"]
    for source in sources:
        np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / source.name), single(tiny_model, source, tmp_path, tile=None), rtol=1e-5, atol=1e-7)


def test_cli_bad_cluster_address_is_one_line_and_plain_commands_never_import_dask(model_file, poisson_image, tmp_path):
    source = write_image(tmp_path / "cell.tif", poisson_image((40, 48), 2.0), "YX")
    result = run_cli("denoise", model_file, source, "-o", tmp_path / "out.tif", "--cluster", "tcp://127.0.0.1:9")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --cluster tcp://127.0.0.1:9: cannot reach a Dask scheduler")
    assert not (tmp_path / "out.tif").exists()
    probe = "import sys, photongap, photongap.cli, photongap.pipeline, photongap.model; print(any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, check=True).stdout.strip() == "False"


def test_torch_threads_of_each_worker_are_its_share_of_the_cores(client):
    threads = client.run(torch.get_num_threads)
    assert set(threads.values()) == {max(1, (os.cpu_count() or 1) // 2)}


def test_a_3d_model_denoises_a_zarr_volume_whole_on_the_cluster(client, poisson_image, tmp_path):
    """A 3D model's Zarr volume is one task (not plane chunks): the cluster gives the single-process volume."""
    from photongap.config import ModelConfig
    from photongap.model import GapModel
    from photongap.network import GapUNet

    torch.manual_seed(0)
    config = ModelConfig(depth=2, start_filters=4, encoding_levels=3, dims=3, depth_pools=1)
    model = GapModel(GapUNet(config).eval(), config, {"note": "untrained 3D test model"})
    path = model.save(tmp_path / "model3d.pt")
    counts = np.stack([poisson_image((48, 64), 2.0, seed) for seed in range(6)]).astype(np.uint16)
    source = zarr.create_array(str(tmp_path / "volume.zarr"), shape=counts.shape, chunks=(1, 48, 64), dtype="uint16")
    source[...] = counts
    target = tmp_path / "out" / "volume.zarr"
    result = denoise_on_cluster(client, path, [tmp_path / "volume.zarr"], [target], axes="ZYX", tile=None, device="cpu")
    assert result.failures == []
    expected = np.asarray(read_image(denoise_file(model, read_image(tmp_path / "volume.zarr", "ZYX"), tmp_path / "single.zarr", device="cpu", tile=None)).data)
    denoised = np.asarray(read_image(target).data)
    np.testing.assert_allclose(denoised, expected, rtol=1e-5, atol=1e-6)
    assert abs(float(denoised.sum()) - float(counts.sum())) < 1e-3 * float(counts.sum())  # one softmax over the whole volume
