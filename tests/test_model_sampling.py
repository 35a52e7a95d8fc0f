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
from photongap.sampling.gain import held_out_gain, sampler_gain, spread_gain


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
    from photongap.modelfile import trained_range_from_info

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


# --- the default sampler: the Dirichlet sampler tied to the trained range -------------------


def recording_logits(model, monkeypatch) -> list[float]:
    """Wrap the model's sampling logits function; return the list the levels (photons/px) of its inputs go to."""
    seen: list[float] = []
    build = model._sampling_logits_fn

    def wrapped(*args, **kwargs):
        inner = build(*args, **kwargs)

        def logits(counts: torch.Tensor) -> torch.Tensor:
            seen.extend(counts.double().mean(dim=(1, 2, 3)).tolist())
            return inner(counts)

        return logits

    monkeypatch.setattr(model, "_sampling_logits_fn", wrapped)
    return seen


def test_the_default_sampler_never_runs_the_network_above_the_trained_top(tiny_model, poisson_image, monkeypatch):
    tiny_model.info = {"trained_range": [-3.0, -0.2]}  # the default preset on data at 0 dB
    seen = recording_logits(tiny_model, monkeypatch)
    counts = poisson_image((128, 128), 1.0)  # 0 dB: above the trained top already
    top = 10 ** (-0.2 / 10)
    for target in (None, 10.0):  # the default stop (2.8 dB) and one far above the trained range
        seen.clear()
        posterior = tiny_model.sample(counts, 3, target_psnr=target, gain=5.0, device="cpu", precision="fp32")
        # Thinned to the top, within 5 binomial sd of its photons.
        assert max(seen) < top * (1 + 5 / math.sqrt(top * counts.size))
        assert len(seen) == 3 * posterior.network_calls and posterior.thinned_calls == posterior.network_calls
    # The plain loop (an explicit schedule) runs it up to the target: what the default avoids.
    seen.clear()
    with pytest.warns(UserWarning, match="beyond the brightest"):
        tiny_model.sample(counts, 1, target_psnr=10.0, schedule=PhotonSchedule(beta=1.0), device="cpu", precision="fp32")
    assert max(seen) > 5.0


def test_the_default_sampler_stops_one_step_above_the_trained_top(tiny_model, poisson_image):
    tiny_model.info = {"trained_range": [-3.0, -0.2]}
    counts = poisson_image((64, 64), 1.0)
    states: list[StepState] = []
    posterior = tiny_model.sample(counts, 2, gain=5.0, device="cpu", precision="fp32", on_step=states.append)
    levels = [float(state.photons_per_pixel.min()) for state in states]
    target = 10 ** (0.8 / 10)
    assert levels[-1] >= target and all(level < target for level in levels[:-1])
    # From 0 dB with FAST_SCHEDULE's photon counts: 1 -> 1.5 photons/px, one step and the final call.
    assert posterior.steps == 1 and posterior.network_calls == 2
    # A model trained over the full range (--preset generative) has nothing to thin below its top.
    tiny_model.info = {"trained_range": [-40.0, 0.0]}
    dim = poisson_image((64, 64), 0.1)  # -10 dB
    states.clear()
    posterior = tiny_model.sample(dim, 2, gain=5.0, device="cpu", precision="fp32", on_step=states.append)
    assert 10 * math.log10(float(states[-1].photons_per_pixel.min())) >= 1.0
    # Thinned are only the calls on counts above 0 dB: those after the level passed 1 photon/px, and the final one.
    before_each_call = [float(dim.mean())] + [float(state.photons_per_pixel.max()) for state in states]
    assert posterior.thinned_calls == sum(level > 1.0 for level in before_each_call) < posterior.network_calls


def test_the_gain_comes_from_the_argument_else_the_image(tiny_model, poisson_image, monkeypatch):
    tiny_model.info = {"trained_range": [-3.0, -0.2], "posterior_gain": 7.5}
    counts = poisson_image((64, 64), 1.0)
    seen = recording_logits(tiny_model, monkeypatch)
    given = tiny_model.sample(counts, 2, gain=3.0, device="cpu", precision="fp32")
    assert given.gain == 3.0 and given.gain_calls == 0 and len(seen) == 2 * given.network_calls
    seen.clear()
    # The model file's gain (a median over validation images) is not used: the gain varies from image to image.
    estimated = tiny_model.sample(counts, 2, device="cpu", precision="fp32")
    # Six held-out splits at each of q = 0.5 and 0.7 of the trained top, then the gain map: the image
    # thinned to the top less the probes' photons, alone and with each half of the 9 lattices of
    # 6 x 6 px (a photon in 72 pixels each, which brings it back to the top): 12 + 1 + 18 network calls.
    assert estimated.gain_calls == 31 and len(seen) == 31 + 2 * estimated.network_calls
    top = 10 ** (-0.2 / 10)
    assert max(seen[:6]) < 0.5 * top * 1.1 and 0.7 * top * 0.9 < min(seen[6:12]) < 0.7 * top * 1.1
    assert seen[12] == pytest.approx(top * top / (top + 1 / 72), rel=0.05)
    assert all(probed - seen[12] == pytest.approx(1 / 72, rel=0.25) for probed in seen[13:31])
    # The gain is sampler_gain's, from this image's held-out errors (its own seed stream) and the network's own gain.
    logits = tiny_model._sampling_logits_fn(torch.device("cpu"), "fp32", None, None, counts.shape)
    held_out = held_out_gain(counts, logits, tiny_model.trained_range(), seed=1_000_003, device=torch.device("cpu"))
    _, own = spread_gain(counts, None, logits, tiny_model.trained_range(), seed=1_000_003, device=torch.device("cpu"))
    assert estimated.gain == pytest.approx(sampler_gain(held_out, own), rel=1e-6) and estimated.gain != 7.5
    assert estimated.gain_resolved == held_out.resolved
    # The gain sets the spread: a larger g, narrower samples.
    wide = tiny_model.sample(counts, 8, gain=1.0, device="cpu", precision="fp32")
    narrow = tiny_model.sample(counts, 8, gain=100.0, device="cpu", precision="fp32")
    assert float(narrow.std.mean()) < 0.5 * float(wide.std.mean())


def test_the_estimated_gain_of_a_pixelwise_denoiser_is_one(tiny_model, monkeypatch):
    """A "network" predicting each pixel's own counts (softmax = y / sum y) is worth one photon per photon."""
    tiny_model.info = {"trained_range": [-10.0, 30.0]}
    monkeypatch.setattr(tiny_model, "_sampling_logits_fn", lambda *args, **kwargs: lambda counts: torch.log(counts.clamp_min(1e-3)))
    clean = np.linspace(5.0, 60.0, 256 * 256).reshape(256, 256)
    counts = np.random.default_rng(0).poisson(clean).astype(np.float32)
    assert abs(tiny_model.estimate_gain(counts, repeats=4, device="cpu") - 1.0) < 0.05


def test_samples_say_whether_the_held_out_photons_resolved_the_gain_and_sample_file_warns_where_not(tiny_model, tmp_path, monkeypatch):
    """A network that knows the clean image makes almost no error: the held-out photons cannot resolve
    it, the samples say so, and sample_file names the planes in a note. One that only counts each
    pixel's own photons makes a Poisson error they resolve."""
    from photongap.io import read_image, write_image
    from photongap.pipeline import sample_file

    tiny_model.info = {"trained_range": [-10.0, 30.0]}
    clean = np.linspace(2.0, 20.0, 64 * 64).reshape(64, 64)
    counts = np.random.default_rng(0).poisson(clean).astype(np.float32)
    knowing = lambda *args, **kwargs: lambda batch: torch.log(torch.from_numpy(clean).float()).expand_as(batch)
    pixelwise = lambda *args, **kwargs: lambda batch: torch.log(batch.clamp_min(1e-3))
    options = dict(target_psnr=30.0, device="cpu")
    monkeypatch.setattr(tiny_model, "_sampling_logits_fn", pixelwise)
    assert tiny_model.sample(counts, 2, **options).gain_resolved is True
    assert tiny_model.sample(counts, 2, gain=5.0, **options).gain_resolved is None
    monkeypatch.setattr(tiny_model, "_sampling_logits_fn", knowing)
    assert tiny_model.sample(counts, 2, **options).gain_resolved is False

    stack = write_image(tmp_path / "stack.tif", np.stack([counts, counts]), "ZYX")
    targets = [tmp_path / f"stack_{kind}.tif" for kind in ("samples", "mean", "std")]
    sampled = sample_file(tiny_model, read_image(stack), targets, n=2, **options)
    assert sampled.paths == targets and sampled.units == 2 and len(sampled.unresolved) == 2
    assert "on 2 of 2 planes the held-out photons were too few" in sampled.note("stack.tif")
    monkeypatch.setattr(tiny_model, "_sampling_logits_fn", pixelwise)
    again = sample_file(tiny_model, read_image(stack), targets, n=2, overwrite=True, **options)
    assert again.unresolved == [] and again.note("stack.tif") is None


def test_final_mean_is_the_mean_of_the_final_predictive(tiny_model, poisson_image):
    tiny_model.info = {"trained_range": [-3.0, -0.2]}
    counts = poisson_image((32, 32), 1.0)
    drawn = tiny_model.sample(counts, 2, gain=5.0, seed=3, device="cpu", precision="fp32")
    mean = tiny_model.sample(counts, 2, gain=5.0, seed=3, final="mean", device="cpu", precision="fp32")
    total = float(counts.sum())
    np.testing.assert_allclose(mean.samples.sum(axis=(1, 2)), total, rtol=1e-4)
    np.testing.assert_allclose(drawn.samples.sum(axis=(1, 2)), total, rtol=1e-4)
    assert not np.allclose(drawn.samples, mean.samples)
    with pytest.raises(PhotongapError, match="final"):
        tiny_model.sample(counts, 1, gain=5.0, final="median", device="cpu")


def test_a_level_input_model_samples_from_inputs_thinned_to_its_top_share_and_told_so(tiny_config, poisson_image):
    """Each prediction comes from the accumulated photons thinned to ``split_max_psnr`` below the image, told that share."""
    import dataclasses

    from photongap.model import GapModel
    from photongap.network import GapUNet

    config = dataclasses.replace(tiny_config, level_input=True)
    torch.manual_seed(0)
    network = GapUNet(config).eval()
    model = GapModel(network, config, {"training": {"split_mode": "relative", "split_min_psnr": -3.0, "split_max_psnr": -1.0}})
    counts = poisson_image((32, 32), 2.0, seed=3)
    seen = []
    forward = network.forward
    def recording(batch, fraction=None):
        seen.append((float(batch.double().sum(dim=(1, 2, 3)).mean()), fraction))
        return forward(batch, fraction)
    network.forward = recording
    own = model._sampler_network(counts, torch.device("cpu"), "fp32", None, None)
    assert own.trained == pytest.approx((level_db(counts) - 3.0, level_db(counts) - 1.0))
    seen.clear()
    with pytest.warns(UserWarning, match="level_input"):
        result = model.sample(counts, n=2, seed=1, device="cpu", precision="fp32", gain=20.0)
    share = 10 ** -0.1
    assert seen and all(fraction == pytest.approx(share) for _, fraction in seen)
    assert all(photons == pytest.approx(share * counts.sum(), rel=0.1) for photons, _ in seen)  # thinned to that share of the image
    assert result.samples.shape == (2, 32, 32)
