"""GapModel.sample and GapModel.generate: shapes, photon units, reproducibility, large images."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from photongap.errors import PhotongapError
from photongap.runtime import batch_size_for
from photongap.schedule import PhotonSchedule
from photongap.sampling import StepState


def level_db(counts: np.ndarray) -> float:
    return 10 * math.log10(float(counts.mean()))


def written_out_mmse(model, counts: torch.Tensor, total: float) -> np.ndarray:
    """``softmax(net(counts)) * total`` over each whole image, the network on reflect-padded counts, in float64."""
    multiple = model.config.size_multiple
    height, width = counts.shape[-2:]
    padded = torch.nn.functional.pad(counts.float(), (0, -width % multiple, 0, -height % multiple), mode="reflect")
    with torch.no_grad():
        logits = model.network.float()(padded).double()[..., :height, :width]
    return (torch.softmax(logits.flatten(1), 1).reshape(logits.shape) * total).numpy()[:, 0]


def test_each_sample_is_the_mmse_of_its_accumulated_photons_in_the_input_units(tiny_model, poisson_image):
    counts = poisson_image((30, 26), 2.0)  # sides not multiples of 4: padded for the network
    states: list[StepState] = []
    posterior = tiny_model.sample(
        counts, n=3, target_psnr=level_db(counts) + 3, schedule=PhotonSchedule(), device="cpu", precision="fp32", on_step=states.append
    )
    assert posterior.samples.shape == (3, 30, 26) and posterior.samples.dtype == np.float32
    final_counts = states[-1].counts
    assert (final_counts >= torch.from_numpy(counts)).all()  # photons are only added
    expected = written_out_mmse(tiny_model, final_counts, float(counts.sum()))
    np.testing.assert_allclose(posterior.samples, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(posterior.mean, posterior.samples.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(posterior.std, posterior.samples.std(axis=0, ddof=1), rtol=1e-5, atol=1e-7)
    assert posterior.std.max() > 0  # the samples differ
    # 3 dB is a doubling; at beta = 0.1 each step adds ~0.41 dB.
    assert 5 <= posterior.steps <= 10 and posterior.network_calls == posterior.steps + 1


def test_same_seed_same_samples_other_seed_other_samples(tiny_model, poisson_image):
    counts = poisson_image((24, 24), 1.0)
    run = lambda seed: tiny_model.sample(counts, n=2, target_psnr=2.0, seed=seed, device="cpu", precision="fp32")  # noqa: E731
    first, again, other = run(5), run(5), run(6)
    np.testing.assert_array_equal(first.samples, again.samples)
    assert not np.array_equal(first.samples, other.samples)


def test_one_sample_has_zero_std_and_steps_are_reported(tiny_model, poisson_image):
    counts = poisson_image((16, 20), 1.0)
    states: list[StepState] = []
    posterior = tiny_model.sample(
        counts, n=1, target_psnr=3.0, schedule=PhotonSchedule(beta=0.5), device="cpu", precision="fp32", on_step=states.append
    )
    assert posterior.samples.shape == (1, 16, 20)
    assert not posterior.std.any()
    assert len(states) == posterior.steps >= 1
    totals = [float(state.counts.sum()) for state in states]
    assert totals == sorted(totals) and totals[0] >= float(counts.sum())  # photons are only added
    assert bool(states[-1].done.all())


def test_tiled_sampling_equals_untiled_sampling(tiny_model, poisson_image):
    # Tiles keep the network's receptive field as context: their logits, and so the draws of
    # the same seed, are those of one pass over the whole image.
    counts = poisson_image((100, 120), 1.0)
    for tile in (96, 64):
        tiled = tiny_model.sample(counts, n=2, target_psnr=0.5, tile=tile, device="cpu", precision="fp32")
        whole = tiny_model.sample(counts, n=2, target_psnr=0.5, tile=None, device="cpu", precision="fp32")
        np.testing.assert_allclose(tiled.samples, whole.samples, rtol=1e-5, atol=1e-7)


def test_sample_rejects_bad_input(tiny_model, poisson_image):
    counts = poisson_image((16, 16), 1.0)
    with pytest.raises(PhotongapError, match="2D image"):
        tiny_model.sample(np.stack([counts, counts]), n=2, device="cpu")
    with pytest.raises(PhotongapError, match="at least 1"):
        tiny_model.sample(counts, n=0, device="cpu")
    with pytest.raises(PhotongapError, match="not above"):
        tiny_model.sample(counts * 1000, n=1, target_psnr=20.0, device="cpu")


def test_generate_returns_images_of_any_size(tiny_model):
    posterior = tiny_model.generate(3, (40, 50), target_psnr=-10.0, seed=1, device="cpu", precision="fp32")
    assert posterior.samples.shape == (3, 40, 50) and posterior.mean.shape == (40, 50)
    # From an empty canvas to 0.1 photons/px: the samples hold the final photons.
    for sample in posterior.samples:
        assert (sample >= 0).all()
        assert 10 * math.log10(float(sample.mean(dtype=np.float64))) >= -10.0 - 1e-3
    again = tiny_model.generate(3, (40, 50), target_psnr=-10.0, seed=1, device="cpu", precision="fp32")
    np.testing.assert_array_equal(posterior.samples, again.samples)
    with pytest.raises(PhotongapError, match="generate needs"):
        tiny_model.generate(0, (40, 50), device="cpu")
    with pytest.raises(PhotongapError, match="generate needs"):
        tiny_model.generate(1, (40,), device="cpu")


def test_a_1024_square_sample_runs_on_cpu(tiny_model):
    counts = np.random.default_rng(0).poisson(1.0, size=(1024, 1024)).astype(np.float32)
    # 0 dB in, 0.3 dB out: one step of beta = 0.1 (+0.41 dB), two network calls.
    states: list[StepState] = []
    posterior = tiny_model.sample(counts, n=2, target_psnr=0.3, schedule=PhotonSchedule(), device="cpu", on_step=states.append)
    assert posterior.samples.shape == (2, 1024, 1024) and posterior.std.shape == (1024, 1024)
    assert posterior.steps == 1 and posterior.network_calls == 2
    added = (states[-1].counts[:, 0] - torch.from_numpy(counts)).sum(dim=(1, 2))
    # One step adds Poisson(0.1 * total) photons: within 5 standard deviations of it.
    expected = 0.1 * float(counts.sum())
    assert ((added - expected).abs() < 5 * math.sqrt(expected)).all()


def test_sampling_warns_outside_the_trained_range_at_both_ends(tiny_model, poisson_image):
    """Splitting never makes inputs brighter than the training data: sampling above it, or far below it, is extrapolation."""
    tiny_model.info = {"trained_range": [-3.0, -0.2]}  # the default preset on data at 0 dB
    assert tiny_model.trained_range() == (-3.0, -0.2)
    counts = poisson_image((32, 32), 0.5, 0)  # -3 dB
    plain = PhotonSchedule(beta=0.5, beta_max=4.0, dispersion=1.0)  # an explicit schedule: the plain loop
    with pytest.warns(UserWarning, match=r"beyond the brightest inputs this model was trained on \(-0.2 dB\)"):
        tiny_model.sample(counts, 2, target_psnr=10.0, schedule=plain, device="cpu")
    with warnings.catch_warnings():  # the default sampler thins to the trained top instead of extrapolating
        warnings.simplefilter("error")
        tiny_model.sample(counts, 2, target_psnr=10.0, gain=5.0, device="cpu")
    dim = poisson_image((32, 32), 0.02, 0)  # -17 dB
    with pytest.warns(UserWarning, match=r"below the dimmest inputs this model was trained on \(-3.0 dB\)"):
        tiny_model.sample(dim, 2, target_psnr=-1.0, schedule=plain, device="cpu")
    with pytest.warns(UserWarning, match=r"below the dimmest inputs this model was trained on \(-3.0 dB\)"):
        tiny_model.sample(dim, 2, target_psnr=-1.0, gain=5.0, device="cpu")
    with pytest.warns(UserWarning, match=r"generation starts at -3[0-9.]+ dB, below the dimmest"):
        tiny_model.generate(1, (32, 32), target_psnr=-3.0, device="cpu")
    tiny_model.info = {"trained_range": [-40.0, 20.0]}  # the generative preset
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_model.sample(counts, 2, target_psnr=3.0, schedule=plain, device="cpu")
        tiny_model.sample(dim, 2, target_psnr=-12.0, gain=5.0, device="cpu")
        tiny_model.generate(1, (32, 32), target_psnr=-20.0, device="cpu")


def test_the_trained_range_of_files_without_it_is_derived_from_the_training_record():
    from photongap.model import trained_range_from_info

    relative = {"training": {"split_mode": "relative", "split_min_psnr": -3.0, "split_max_psnr": -0.2}, "data": {"pseudo_psnr": 0.0}}
    assert trained_range_from_info(relative) == (-3.0, -0.2)
    absolute = {"training": {"split_mode": "absolute", "split_min_psnr": -40.0, "split_max_psnr": 20.0}, "data": {"pseudo_psnr": 5.0}}
    assert trained_range_from_info(absolute) == (-40.0, 5.0)  # no input is brighter than the data
    assert trained_range_from_info({}) is None


def test_sampling_defaults_to_the_fast_dispersed_schedule(tiny_model, poisson_image):
    from photongap.schedule import FAST_SCHEDULE
    from photongap.sampling import expected_network_calls

    counts = poisson_image((32, 32), 1.0)
    posterior = tiny_model.sample(counts, n=2, target_psnr=20.0, device="cpu", precision="fp32")
    fast = expected_network_calls(float(counts.sum()), 100.0 * counts.size, FAST_SCHEDULE, num_pixels=counts.size)
    published = expected_network_calls(float(counts.sum()), 100.0 * counts.size)
    assert FAST_SCHEDULE.dispersion == 1.0 and abs(posterior.network_calls - fast) <= 1 and fast < published / 5


def test_one_image_per_network_call_on_a_cpu_unless_asked():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert batch_size_for(cpu, None, on_gpu=16) == 1
    assert batch_size_for(gpu, None, on_gpu=16) == 16
    assert batch_size_for(cpu, 5, on_gpu=16) == 5
    with pytest.raises(PhotongapError, match="batch size must be at least 1"):
        batch_size_for(cpu, 0, on_gpu=16)


def test_the_network_runs_channels_last_with_the_same_logits(tiny_model, poisson_image):
    counts = torch.from_numpy(poisson_image((32, 40), 3.0))[None, None]
    with torch.no_grad():
        reference = tiny_model.network(counts.contiguous())
    logits = tiny_model.logits_fn("cpu", "fp32")(counts)
    assert tiny_model.network.down[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)


def test_auto_precision_is_bf16_where_the_cpu_has_bf16_arithmetic(monkeypatch):
    from photongap.runtime import use_bf16

    assert use_bf16("bf16", "cpu") and not use_bf16("fp32", "cpu")
    for amx, avx512_bf16 in [(False, False), (True, False), (False, True)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx=avx512_bf16: avx)
        assert use_bf16("auto", "cpu") == (amx or avx512_bf16)
