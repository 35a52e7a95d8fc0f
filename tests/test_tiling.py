"""Tiled prediction: cores cover the image once, stitched logits equal an untiled pass,
one softmax over the stitched image, and memory-mapped outputs work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from photongap.config import ModelConfig
from photongap.errors import PhotongapError
from photongap.network import receptive_radius
from photongap.tiling import image_log_normaliser, mmse_image, padded, plan_tiles, predict_logits, tile_margin, tiled


def pointwise(counts: torch.Tensor) -> torch.Tensor:
    """A logits function without context: tiling must reproduce it (``reference``) to the rounding.

    Not to the bit: torch's vectorised square root on AVX-512 CPUs is accurate to about half
    an ulp, not correctly rounded, so its vector and scalar paths (and numpy) can differ in
    the last bit.
    """
    return torch.sqrt(counts) - 0.5 * counts


def reference(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float32)
    return np.sqrt(counts) - np.float32(0.5) * counts


def checked(multiple: int, calls: list | None = None):
    """``pointwise``, refusing inputs whose sides are not multiples of ``multiple`` (as the U-Net does)."""

    def logits_fn(counts: torch.Tensor) -> torch.Tensor:
        assert counts.dim() == 4 and counts.shape[1] == 1, counts.shape
        assert counts.shape[-2] % multiple == 0 and counts.shape[-1] % multiple == 0, counts.shape
        if calls is not None:
            calls.append(tuple(counts.shape))
        return pointwise(counts)

    return logits_fn


def random_counts(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(3.0, size=shape).astype(np.float32)


def assert_context(item, axis: int, size: int, multiple: int, context: int) -> None:
    """Each side of the core has ``context`` pixels of window, unless the window meets that end of the padded axis."""
    window, core, core_in = (item.window_rows, item.window_cols)[axis], item.core[axis], item.core_in_window[axis]
    first = core.start - core_in.start  # the window's start on the padded axis
    padded_size = -(-size // multiple) * multiple
    assert core_in.start >= context or first == 0
    assert len(window) - core_in.stop >= context or first + len(window) == padded_size


SHAPES = [(1, 1), (3, 2), (17, 300), (300, 17), (64, 64), (513, 1000)]
SETTINGS = [(None, 0, 4, 0), (64, 32, 4, 0), (64, 0, 16, 0), (100, 20, 8, 0), (128, 64, 16, 0), (48, 40, 4, 0), (64, 0, 8, 36), (32, 0, 4, 13)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("tile", "overlap", "multiple", "context"), SETTINGS)
def test_cores_cover_every_pixel_exactly_once_with_their_context(shape, tile, overlap, multiple, context):
    coverage = np.zeros(shape, dtype=np.int32)
    margin = tile_margin(overlap, context, multiple)
    for item in plan_tiles(shape, tile, overlap, multiple, context):
        rows, cols = len(item.window_rows), len(item.window_cols)
        assert rows % multiple == 0 and cols % multiple == 0
        if tile is not None:
            assert rows <= max(-(-tile // multiple) * multiple, 4 * margin, multiple)
            for axis in (0, 1):
                assert_context(item, axis, shape[axis], multiple, context)
        assert item.window_rows.min() >= 0 and item.window_rows.max() < shape[0]
        assert item.window_cols.min() >= 0 and item.window_cols.max() < shape[1]
        # The core reads exactly the pixels it writes.
        core_y, core_x = item.core
        in_y, in_x = item.core_in_window
        np.testing.assert_array_equal(item.window_rows[in_y], np.arange(shape[0])[core_y])
        np.testing.assert_array_equal(item.window_cols[in_x], np.arange(shape[1])[core_x])
        coverage[item.core] += 1
    assert (coverage == 1).all()


def test_untiled_plan_is_one_window_and_small_tiles_grow_to_fit_their_context():
    assert len(plan_tiles((513, 1000), None, 0, 16)) == 1
    assert len(plan_tiles((513, 1000), 512, 64, 16)) == 2 * 3  # cores of 448 px
    assert len(plan_tiles((513, 1000), 512, 0, 8, context=80)) == 2 * 3  # cores of 352 px
    # 32 px tiles cannot hold 32 px of context a side: they grow to four margins, 128 px.
    windows = {len(item.window_rows) for item in plan_tiles((300, 300), 32, 64, 4)}
    assert windows == {128}


@pytest.mark.parametrize("shape", [(1, 1), (17, 300), (300, 17), (150, 170)])
@pytest.mark.parametrize(("tile", "overlap", "batch_size"), [(None, 0, 4), (64, 32, 1), (64, 32, 7), (32, 8, 3)])
def test_pointwise_logits_are_stitched_exactly(shape, tile, overlap, batch_size):
    counts = random_counts(shape)
    finished = []
    logits = predict_logits(
        checked(4), counts, tile=tile, overlap=overlap, multiple=4, batch_size=batch_size, progress=finished.append
    )
    assert logits.dtype == np.float32 and logits.shape == shape
    np.testing.assert_allclose(logits, reference(counts), rtol=2e-7, atol=1e-7)
    assert sum(finished) == len(plan_tiles(shape, tile, overlap, 4))
    assert max(finished) <= batch_size


def test_mmse_image_is_the_softmax_times_the_total():
    logits = np.random.default_rng(1).normal(scale=4.0, size=(70, 90)).astype(np.float32)
    image = mmse_image(logits, 1234.5)
    assert image.dtype == np.float32 and (image >= 0).all()
    assert float(image.sum(dtype=np.float64)) == pytest.approx(1234.5, rel=1e-5)
    expected = torch.softmax(torch.from_numpy(logits).double().flatten(), 0).reshape(70, 90) * 1234.5
    np.testing.assert_allclose(image, expected.numpy(), rtol=1e-5, atol=1e-9)
    # In place on the logits: the same result.
    np.testing.assert_allclose(mmse_image(logits, 1234.5, out=logits), image, rtol=1e-6)


def float64_logsumexp(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    peak = values.max()
    return float(peak + np.log(np.exp(values - peak).sum()))


def test_memory_mapped_logits_and_the_block_wise_normaliser(tmp_path):
    # 2600 rows: three blocks of the row-wise normaliser; the maximum lies in the last.
    shape = (2600, 130)
    counts = random_counts(shape, seed=2) * np.random.default_rng(3).uniform(0, 20, size=shape).round().astype(np.float32)
    counts[2500, 7] = 0.25  # the largest logit, sqrt(x) - x / 2 = 0.375 > 0 for a count, in the last block
    out = np.lib.format.open_memmap(tmp_path / "logits.npy", mode="w+", dtype=np.float32, shape=shape)
    logits = predict_logits(checked(8), counts, tile=512, overlap=64, multiple=8, out=out)
    assert logits is out
    out.flush()
    stored = np.load(tmp_path / "logits.npy")
    np.testing.assert_allclose(stored, reference(counts), rtol=2e-7, atol=1e-7)
    assert image_log_normaliser(out) == pytest.approx(float64_logsumexp(stored), rel=1e-12, abs=1e-9)
    big = np.random.default_rng(4).normal(scale=30.0, size=(3000, 200)).astype(np.float32)
    big[100] += 50.0  # the running maximum rises from block to block: the running sum is rescaled
    big[2900, 3] = 400.0
    assert image_log_normaliser(big) == pytest.approx(float64_logsumexp(big), rel=1e-12)
    # In place on the memory map: softmax over the whole image, one normaliser for all blocks.
    total = float(counts.sum())
    image = mmse_image(out, total, out=out)
    assert image is out
    expected = np.exp(stored.astype(np.float64) - float64_logsumexp(stored)) * total
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (13, 3), (17, 18), (2, 40)])
def test_padded_handles_odd_sizes(shape):
    calls: list = []
    logits_fn = padded(checked(8, calls), multiple=8, batch_size=2)
    counts = torch.from_numpy(np.stack([random_counts(shape, seed) for seed in range(5)]))[:, None]
    logits = logits_fn(counts)
    assert logits.shape == counts.shape
    torch.testing.assert_close(logits, pointwise(counts), rtol=0, atol=0)
    assert [c[0] for c in calls] == [2, 2, 1]  # at most batch_size images per call


def test_tiled_logits_function_stitches_each_image():
    counts = torch.from_numpy(np.stack([random_counts((70, 45), seed) for seed in range(3)]))[:, None]
    logits_fn = tiled(checked(4), tile=32, overlap=8, multiple=4, context=0, batch_size=3)
    logits = logits_fn(counts)
    assert logits.shape == counts.shape
    torch.testing.assert_close(logits, pointwise(counts), rtol=0, atol=0)


# --- with a network ----------------------------------------------------------------------


def scene(shape: tuple[int, int], level: float, seed: int = 0) -> np.ndarray:
    y, x = np.meshgrid(np.linspace(0, 3, shape[0]), np.linspace(0, 4, shape[1]), indexing="ij")
    clean = level * (1 + np.sin(y) * np.cos(x) ** 2)
    return np.random.default_rng(seed).poisson(clean).astype(np.float32)


def untiled_reference(model, counts: np.ndarray) -> np.ndarray:
    """MMSE written out: the network on the reflect-padded image, cropped, ``softmax * sum`` in float64."""
    multiple = model.config.size_multiple
    pad = [(0, -side % multiple) for side in counts.shape]
    padded_counts = torch.from_numpy(np.pad(counts, pad, mode="reflect"))[None, None]
    with torch.no_grad():
        logits = model.network.float()(padded_counts).double()[..., : counts.shape[0], : counts.shape[1]]
    probabilities = torch.softmax(logits.flatten(), 0).reshape(counts.shape)
    return (probabilities * float(counts.sum(dtype=np.float64))).numpy()


def test_receptive_radius_bounds_the_pixels_an_output_depends_on(untrained_model, tiny_config):
    # Perturb one input pixel: no logit farther than the radius may move, and the bound is
    # nearly tight (within one pooling cell of the deepest level).
    for config in (tiny_config, ModelConfig()):
        model = untrained_model(config)
        radius, multiple = receptive_radius(model.network), config.size_multiple
        size = -(-(2 * radius + 40) // multiple) * multiple
        counts = torch.poisson(torch.full((1, 1, size, size), 3.0, dtype=torch.float32), generator=torch.Generator().manual_seed(0))
        farthest = 0
        with torch.no_grad():
            base = model.network(counts)
            for offset in range(multiple):
                centre = size // 2 + offset
                moved = counts.clone()
                moved[0, 0, centre, centre] += 40.0
                changed = ((model.network(moved) - base)[0, 0] != 0).nonzero()
                farthest = max(farthest, int((changed - centre).abs().max()))
        assert radius - multiple <= farthest <= radius, (config, radius, farthest)


def test_untiled_denoising_is_the_written_out_mmse(tiny_model):
    counts = scene((150, 170), 5.0)
    whole = tiny_model.denoise(counts, tile=None, device="cpu", precision="fp32")
    np.testing.assert_allclose(whole, untiled_reference(tiny_model, counts), rtol=2e-4, atol=1e-6 * float(whole.max()))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tiled_and_untiled_mmse_agree_everywhere(tiny_model, precision):
    counts = scene((150, 170), 5.0)
    whole = tiny_model.denoise(counts, tile=None, device="cpu", precision=precision)
    tiles = tiny_model.denoise(counts, tile=64, overlap=0, device="cpu", precision=precision)
    # With the receptive field as context, fp32 tiles reproduce the untiled pass to the
    # rounding; bf16 rounds a batch of tiles and one whole image differently.
    bound = {"fp32": 1e-5, "bf16": 1e-2}[precision]
    difference = float(np.abs(whole - tiles).max())
    assert difference < bound * float(whole.max()), f"max difference {difference:.4g}, image max {whole.max():.4g}"


@pytest.mark.slow
@pytest.mark.parametrize(("tile", "overlap"), [(128, 32), (384, 0)])
def test_a_trained_default_network_tiled_equals_untiled_at_small_tiles(trained_default_model, tile, overlap):
    # A trained network uses its whole receptive field (a margin of 32 px gave 1.2% of the
    # maximum at --tile 128 --overlap 32): the margin must come from the network itself.
    counts = np.random.default_rng(5).poisson(scene_clean := np.kron(np.random.default_rng(6).gamma(2.0, 0.5, (32, 32)), np.ones((16, 16)))).astype(np.float32)
    assert scene_clean.shape == (512, 512)
    whole = trained_default_model.denoise(counts, tile=None, device="cpu", precision="fp32")
    tiles = trained_default_model.denoise(counts, tile=tile, overlap=overlap, device="cpu", precision="fp32")
    difference = float(np.abs(whole - tiles).max())
    assert difference < 1e-5 * float(whole.max()), f"tile {tile}: max difference {difference:.3g} of {whole.max():.3g}"


def test_denoise_stacks_plane_by_plane_into_a_memory_map(tmp_path, tiny_model):
    stack = np.stack([scene((40, 52), level, seed) for seed, level in enumerate((0.5, 20.0))])
    out = np.lib.format.open_memmap(tmp_path / "mmse.npy", mode="w+", dtype=np.float32, shape=stack.shape)
    result = tiny_model.denoise(stack, tile=None, device="cpu", precision="fp32", out=out)
    assert result is out
    for plane, denoised in zip(stack, out):
        np.testing.assert_allclose(denoised, untiled_reference(tiny_model, plane), rtol=2e-4, atol=1e-6 * float(denoised.max()))
    assert tiny_model.tiles_per_plane((40, 52), 32, 8) == len(plan_tiles((40, 52), 32, 8, 4, tiny_model.context))
    with pytest.raises(PhotongapError, match="cannot denoise"):
        tiny_model.denoise(np.zeros((0, 5), np.float32), device="cpu")


def test_memory_mapped_denoising_hands_back_its_pages_and_matches_in_memory(tmp_path, tiny_model, resident_kb):
    # The pages of a memory-mapped input and output leave the process as the tiles and blocks
    # go by (else a 64 x 2048 x 2048 stack kept 1.5 GB of them resident), and bit for bit the
    # same result comes out as from in-memory arrays.
    stack = np.stack([scene((200, 260), level, seed) for seed, level in enumerate((0.5, 20.0, 3.0))])
    np.save(tmp_path / "counts.npy", stack)
    counts = np.load(tmp_path / "counts.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "mmse.npy", mode="w+", dtype=np.float32, shape=stack.shape)
    tiny_model.denoise(counts, tile=64, device="cpu", precision="fp32", out=out)
    assert resident_kb(tmp_path / "counts.npy") < 64 and resident_kb(tmp_path / "mmse.npy") < 64
    in_memory = tiny_model.denoise(stack, tile=64, device="cpu", precision="fp32")
    assert np.array_equal(out, in_memory)
