"""The default sampler on a scene whose posterior is known exactly: gain, coverage and the check.

Pixels are independent, ``lambda_i ~ Gamma(k, theta)``. Given counts ``y`` of a ``q``-thinned
exposure the posterior of ``lambda_i`` is ``Gamma(k + y_i)`` with one scale for all pixels, so the
normalised clean image is exactly ``Dirichlet(k + y)``: the "network" ``logits = log(k + y)`` is
the MMSE, worth ``g = 1 + k / mean(y)`` photons per photon (``g = 1 + 1 / (q theta)``, falling with
the level as a real network's does), and the Dirichlet sampler with that gain is exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from photongap.posterior import GAIN_SLOPE_PRIOR, OWN_GAIN_SD, dirichlet_predictive, gain_at_level, gain_given_prior
from photongap.robbins import ROBBINS_WINDOW, in_plane_mean, probe_halves, read_grid, robbins_gain_map, robbins_lattice, self_response
from photongap.sampling.gain import HeldOutGain, sampler_gain, spread_gain
from photongap.posterior_check import spread_skill
from photongap.sample_data import psnr

K, THETA = 4.0, 0.5  # 2 photons/px on average; g = 3 at the full level


def rank_coverage(samples: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> float:
    below = (samples < truth[None]).sum(axis=0)
    ties = (samples == truth[None]).sum(axis=0)
    u = (below + rng.random(truth.shape) * (ties + 1)) / (samples.shape[0] + 1)
    return float(np.mean((u >= 0.1) & (u <= 0.9)))


@pytest.fixture
def exact_model(tiny_model, monkeypatch):
    tiny_model.info = {"trained_range": [-3.0, 10 * math.log10(K * THETA)]}
    monkeypatch.setattr(tiny_model, "_sampling_logits_fn", lambda *args, **kwargs: lambda counts: torch.log(K + counts))
    return tiny_model


def scene(seed: int, shape=(96, 96)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = rng.gamma(K, THETA, shape)
    return clean, rng.poisson(clean).astype(np.float32)


def test_gain_at_level_follows_well_measured_gains_and_clips_to_physical_slopes():
    sharp = 1e-4  # standard error of ln g: the gains decide, not the prior
    assert gain_at_level([(0.25, 40.0, sharp), (0.5, 20.0, sharp)], 1.0) == pytest.approx(10.0, rel=1e-3)  # g ~ 1/q: slope 1
    assert gain_at_level([(0.25, 8.0, sharp), (0.5, 8.0, sharp)], 1.0) == pytest.approx(8.0, rel=1e-3)  # flat
    # Slopes outside [0, 1] are clipped, the line still through the gains' (weighted) centre.
    assert gain_at_level([(0.25, 80.0, sharp), (0.5, 20.0, sharp)], 1.0) == pytest.approx(math.sqrt(80.0 * 0.25 * 20.0 * 0.5), rel=1e-3)  # slope 2 to 1
    assert gain_at_level([(0.25, 10.0, sharp), (0.5, 20.0, sharp)], 1.0) == pytest.approx(math.sqrt(10.0 * 20.0), rel=1e-3)  # rising gain to flat
    with pytest.raises(ValueError):
        gain_at_level([(0.5, 10.0, 0.0)], 1.0)
    with pytest.raises(ValueError):
        gain_at_level([], 1.0)


def test_gain_at_level_weighs_gains_by_their_noise_and_falls_back_on_the_prior_slope():
    mean, _ = GAIN_SLOPE_PRIOR
    # Gains too noisy to tell a slope: the prior's slope through their weighted mean level.
    noisy = gain_at_level([(0.5, 20.0, 5.0), (0.7, 20.0 * 1.4**-mean, 5.0)], 1.0)
    assert noisy == pytest.approx(20.0 * 2**-mean, rel=1e-3)
    # A precise gain at 0.5 and a wild one at 0.7 (four times too high): the precise one decides.
    trusted = gain_at_level([(0.5, 20.0, 0.05), (0.7, 4 * 20.0 * 1.4**-mean, 2.0)], 1.0)
    assert trusted == pytest.approx(20.0 * 2**-mean, rel=0.1)
    # The same pair, equally weighted, is pulled far up: the weights matter.
    assert gain_at_level([(0.5, 20.0, 0.05), (0.7, 4 * 20.0 * 1.4**-mean, 0.05)], 1.0) > 1.5 * trusted


def held_out_points(gain: float, slope: float, noise: float, rng: np.random.Generator | None = None, level: float = 0.95, typical: float | None = None) -> tuple:
    """``(q, S, E, s)`` at q = 0.5 and 0.7 of ``level`` for a network of ``gain`` at ``level``.

    ``s`` is ``noise`` times the error of a network of gain ``typical`` (default ``gain``): the
    held-out photons' noise, which does not depend on the network's error."""
    points = []
    for q in (0.5 * level, 0.7 * level):
        photons = 6000.0 * q
        error, scale = (photons / (value * (q / level) ** -slope) for value in (gain, typical or gain))
        points.append((q, photons, error + (0.0 if rng is None else rng.normal(0, noise * scale)), noise * scale))
    return tuple(points)


def test_a_prior_gain_follows_precise_held_out_errors_and_stays_where_they_are_noise():
    precise = held_out_points(20.0, GAIN_SLOPE_PRIOR[0], 1e-4)
    assert gain_given_prior(precise, 0.95, prior=5.0) == pytest.approx(20.0, rel=0.01)
    assert gain_given_prior(precise, 0.95, prior=80.0) == pytest.approx(20.0, rel=0.01)
    assert gain_given_prior(held_out_points(20.0, 0.75, 1e4), 0.95, prior=5.0) == pytest.approx(5.0, rel=0.01)
    # Errors lost in noise of their own size, even negative ones, say the error is small: the gain rises
    # above the prior, but stays finite, where their ratio S / E would be infinite or negative.
    lost = tuple((q, S, -0.5 * s, s) for q, S, _, s in held_out_points(5.0, 0.75, 1.0))
    assert 5.0 < gain_given_prior(lost, 0.95, prior=5.0) < 5.0 * math.exp(3 * OWN_GAIN_SD)
    # An error a hair above zero says no more than one a little larger: its huge ratio S / E must not
    # stretch the grid until it is too coarse to resolve the posterior (it did: 1.9% off at 1e-300).
    hair, small = (tuple((q, S, error, s) for q, S, _, s in lost) for error in (1e-300, 1e-30))
    assert gain_given_prior(hair, 0.95, prior=5.0) == pytest.approx(gain_given_prior(small, 0.95, prior=5.0), rel=1e-3)
    with pytest.raises(ValueError, match="positive prior"):
        gain_given_prior(precise, 0.95, prior=0.0)


def test_on_dim_images_the_sampler_gain_beats_both_the_held_out_and_the_own_gain_without_bias():
    """Draws as on a dim image: the network's own gain off by OWN_GAIN_SD, held-out errors with noise 0.6 of their size.
    The held-out gain alone is then noisier than the own (its floor at one standard error biases it), and
    sampler_gain, which weighs the two, has the smaller error of the three, and no bias (the posterior mean)."""
    rng = np.random.default_rng(0)
    errors = {"used": [], "held_out": [], "own": []}
    for _ in range(300):
        own, slope = 30.0, float(np.clip(rng.normal(*GAIN_SLOPE_PRIOR), 0, 1))
        true = own * math.exp(rng.normal(0, OWN_GAIN_SD))
        held_out = HeldOutGain(held_out_points(true, slope, 0.6, rng, typical=own), 0.95)
        errors["used"].append(math.log(sampler_gain(held_out, own) / true))
        errors["held_out"].append(math.log(held_out.gain / true))
        errors["own"].append(math.log(own / true))
    rms = {key: float(np.sqrt(np.mean(np.square(values)))) for key, values in errors.items()}
    assert rms["used"] < 0.9 * min(rms["held_out"], rms["own"]), rms  # 0.26 against 0.39 and 0.30
    assert abs(np.mean(errors["used"])) < 3 * np.std(errors["used"]) / math.sqrt(300), np.mean(errors["used"])
    # A resolved held-out gain is used alone.
    resolved = HeldOutGain(held_out_points(20.0, 0.75, 0.1), 0.95)
    assert resolved.resolved and sampler_gain(resolved, 80.0) == resolved.gain


def test_the_gain_is_measured_at_the_level_the_sampler_runs_the_network(exact_model):
    clean, counts = scene(0, (128, 128))
    expected = 1 + K / float(counts.mean())  # at the full level: the top of the trained range
    estimates = [exact_model.estimate_gain(counts, seed=seed, device="cpu") for seed in range(3)]
    # Unbiased on average; single estimates scatter by tens of percent (the held-out photons' noise).
    assert abs(np.mean(estimates) / expected - 1) < 0.1 and all(abs(g / expected - 1) < 0.3 for g in estimates), (estimates, expected)
    # Measured at q = 0.5 alone it would be about 1 + 1/(0.5 theta) = 5: far too high.
    assert max(estimates) < 0.8 * (1 + K / (0.5 * float(counts.mean())))


def test_default_samples_cover_the_truth_at_80_percent_and_their_mean_is_the_mmse(exact_model):
    rng = np.random.default_rng(1)
    coverage, gaps = [], []
    for seed in range(2):
        clean, counts = scene(seed)
        posterior = exact_model.sample(counts, 16, seed=seed, device="cpu")
        assert posterior.network_calls == 2 and posterior.gain_calls == 12 + 19  # one step above the trained top and the final draw; the gain, and its map
        mmse = (K + counts) * THETA / (1 + THETA)
        coverage.append(rank_coverage(posterior.samples, clean, rng))
        gaps.append(psnr(clean, posterior.mean) - psnr(clean, mmse))
    assert 0.75 <= np.mean(coverage) <= 0.85, coverage
    # Exact samples: E[MSE of the mean of 16] = MSE(MMSE) (1 + 1/16), 0.26 dB below it.
    assert -0.5 < np.mean(gaps) < 0.0, gaps


def test_the_check_tracks_the_coverage_of_a_calibrated_and_of_a_too_narrow_sampler(exact_model):
    from photongap.physics import split_counts

    rng = np.random.default_rng(2)
    clean, counts = scene(3)
    split = split_counts(torch.from_numpy(counts)[None, None], torch.tensor([0.5]), torch.Generator().manual_seed(0))
    kept, held_out = split.input_counts[0, 0].numpy(), split.target_counts[0, 0].numpy()
    right = exact_model.estimate_gain(kept, device="cpu")
    readings = {}
    for name, gain in (("calibrated", right), ("narrow", 6 * right)):
        samples = exact_model.sample(kept, 16, gain=gain, seed=4, device="cpu").samples
        readings[name] = (spread_skill(samples, held_out, 0.5).implied_coverage, rank_coverage(samples, 0.5 * clean, rng))
    check, truth = readings["calibrated"]
    assert abs(check - truth) < 0.05 and 0.77 < truth < 0.87, readings
    # Six times too narrow, the draw adds little to the spread of the final predictives, whose
    # shape is further from the check's Gaussian: over scenes 3-8 the check read 2-8 points
    # above the truth (mean 5). It still says plainly that the samples are too narrow.
    check, truth = readings["narrow"]
    assert truth < check < truth + 0.09 and check < 0.6, readings


def test_the_gain_map_of_the_exact_network_is_its_true_gain_everywhere(exact_model):
    """Robbins' identity: the network's response to one more photon gives its posterior variance."""
    _, counts = scene(5, (128, 128))
    gain_map, gain = exact_model.gain_map(counts, None, device="cpu")  # None: the network's own
    expected = 1 + K / float(counts.mean())
    assert gain == pytest.approx(expected, rel=0.05)
    assert float(gain_map.min()) > 0.85 * expected and float(gain_map.max()) < 1.15 * expected
    # Scaled to a given gain otherwise, with the same (flat) shape.
    scaled, given = exact_model.gain_map(counts, 10.0, device="cpu")
    assert given == 10.0 and float(scaled.mean()) == pytest.approx(10.0, rel=0.05)


def box(y: torch.Tensor, side: int) -> torch.Tensor:
    """A box smoother of odd ``side`` over every spatial axis: posterior-mean-like, ``J_ii = 1 / side**dims``."""
    spatial = y.dim() - 2
    pool = torch.nn.functional.avg_pool2d if spatial == 2 else torch.nn.functional.avg_pool3d
    return pool(torch.nn.functional.pad(y, (side // 2,) * (2 * spatial), mode="replicate"), side, stride=1)


def robbins_map(smoother, counts: torch.Tensor, steps, window: int = 3, grid=None) -> torch.Tensor:
    response = torch.zeros_like(counts, dtype=torch.float64)
    for first, second in probe_halves(counts, steps, torch.Generator().manual_seed(1), grid):
        response += self_response(smoother(counts + first), smoother(counts + second), first, second)
    return robbins_gain_map(response, window, grid)


def test_the_gain_map_is_higher_where_the_network_pools_more_photons():
    counts = torch.poisson(torch.full((1, 1, 96, 96), 3.0), generator=torch.Generator().manual_seed(0)).double()

    def smoother(y):  # 3 x 3 box on the left, 5 x 5 in the middle, 9 x 9 on the right: g = 9, 25, 81
        return torch.cat([box(y, 3)[..., :32], box(y, 5)[..., 32:64], box(y, 9)[..., 64:]], dim=-1)

    gain_map = robbins_map(smoother, counts, (3, 3))
    # Boxes narrower than the lattice see no other probe: the map is exact there.
    # (Away from the edges, where the replicated border counts a photon twice.)
    torch.testing.assert_close(gain_map[..., 4:92, 4:28], torch.full_like(gain_map[..., 4:92, 4:28], 9.0))
    torch.testing.assert_close(gain_map[..., 4:92, 36:60], torch.full_like(gain_map[..., 4:92, 36:60], 25.0))
    # The 9 x 9 box holds eight other lattice points, each added to or taken from the reading at
    # random: unbiased but noisy, so the mean of the self-responses 1 / g. Probing each lattice
    # whole instead (the halves' complement left out) would read 9 / 81 here, where the truth is 1 / 81.
    assert float((1 / gain_map[..., 8:88, 70:90]).mean()) == pytest.approx(1 / 81, rel=0.2)
    # A reading of zero or less is a pixel without spread; averaged over 3 x 3 readings, fewer
    # pixels read so (a single reading is 1/81 plus noise of sd sqrt(8)/81: 36% of pixels).
    single = robbins_map(smoother, counts, (3, 3), window=1)[..., 8:88, 70:90]
    floored = lambda gains: float((gains > 1000).double().mean())  # noqa: E731
    assert floored(single) > 0.25 and floored(gain_map[..., 8:88, 70:90]) < 0.5 * floored(single)


def test_the_self_response_of_one_lattice_cancels_the_spread_of_its_neighbours():
    """Each lattice point's reading is ``J_ii`` plus its neighbours' responses with random signs: over many halvings, ``J_ii``."""
    counts = torch.poisson(torch.full((1, 1, 48, 48), 3.0), generator=torch.Generator().manual_seed(0)).double()
    generator = torch.Generator().manual_seed(2)
    readings = []
    for _ in range(40):
        first, second = next(probe_halves(counts, (3, 3), generator))
        readings.append(self_response(box(counts + first, 9), box(counts + second, 9), first, second)[..., 9:39:3, 9:39:3])
    readings = torch.stack(readings)
    assert float(readings.mean()) == pytest.approx(1 / 81, rel=0.15)
    # A single halving is noisy: eight neighbours of 1/81 each with a random sign.
    assert float(readings.std()) == pytest.approx(math.sqrt(8) / 81, rel=0.15)


def test_a_flat_gain_map_is_the_dirichlet_and_a_higher_gain_narrows_its_pixels():
    generator = torch.Generator().manual_seed(0)
    thinned = torch.poisson(torch.full((2, 1, 16, 16), 4.0), generator=generator)
    removed = torch.poisson(torch.full((2, 1, 16, 16), 2.0), generator=generator)
    logits = torch.randn(2, 1, 16, 16, generator=generator)
    scalar = dirichlet_predictive(logits, thinned, removed, 5.0)
    flat = dirichlet_predictive(logits, thinned, removed, torch.full((1, 1, 16, 16), 5.0, dtype=torch.float64))
    torch.testing.assert_close(flat.probabilities, scalar.probabilities)
    torch.testing.assert_close(flat.concentration, scalar.concentration, rtol=1e-6, atol=1e-9)  # probabilities are float32
    varying = torch.full((1, 1, 16, 16), 5.0, dtype=torch.float64)
    varying[..., 8:] = 50.0
    relative_variance = 1 / dirichlet_predictive(logits, thinned, removed, varying).concentration
    assert float(relative_variance[..., 8:].mean()) < 0.5 * float(relative_variance[..., :8].mean())


def test_the_gain_map_of_a_volume_reads_its_planes_too():
    """The same map on a (D, Y, X) volume with the lattice of volumes: a 3 x 3 x 3 box against a 7 x 7 x 7 one (g = 27 and 343)."""
    counts = torch.poisson(torch.full((1, 1, 20, 48, 48), 3.0), generator=torch.Generator().manual_seed(0)).double()

    def smoother(y):
        return torch.cat([box(y, 3)[..., :24], box(y, 7)[..., 24:]], dim=-1)

    spacing, grid = robbins_lattice(3)
    assert (spacing, grid) == ((2, 6, 6), (1, 2, 2))
    gain_map = robbins_map(smoother, counts, spacing, ROBBINS_WINDOW, grid)
    assert gain_map.shape == counts.shape
    # Planes 2 apart: the narrow box sees no other probe, the wide one the probes 2 planes above
    # and below, and in Y and X the next lattice points 6 px away.
    torch.testing.assert_close(gain_map[..., 2:18, 4:44, 4:20], torch.full_like(gain_map[..., 2:18, 4:44, 4:20], 27.0))
    assert float((1 / gain_map[..., 4:16, 8:40, 30:42]).mean()) == pytest.approx(1 / 343, rel=0.2)


def test_the_readings_of_a_volume_are_averaged_within_its_planes():
    planes = torch.arange(4.0, dtype=torch.float64).reshape(1, 1, 4, 1, 1).expand(1, 1, 4, 6, 6)
    torch.testing.assert_close(in_plane_mean(planes, 3), planes)  # a box across planes would mix them
    image = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    image[..., 2, 2] = 9.0
    assert float(in_plane_mean(image, 3)[..., 1:4, 1:4].min()) == 1.0 and float(in_plane_mean(image, 3)[..., 0, 0]) == 0.0


def test_the_lattices_read_the_grid_once_and_the_map_averages_its_readings():
    like = torch.zeros(1, 1, 24, 30)
    pairs = list(probe_halves(like, (6, 6), torch.Generator().manual_seed(0), (2, 2)))
    assert len(pairs) == 9 and all(float(first.sum() + second.sum()) == 20.0 for first, second in pairs)  # (24/6) x (30/6) points each
    covered = sum(first + second for first, second in pairs)
    torch.testing.assert_close(covered.double(), read_grid(like, (2, 2)))  # every grid pixel once, no other
    # Box smoothers no wider than the lattice see no other probe: exact at every pixel, read or not.
    counts = torch.poisson(torch.full((1, 1, 96, 96), 3.0), generator=torch.Generator().manual_seed(0)).double()

    def smoother(y):  # 3 x 3 on the left, 5 x 5 in the middle, 9 x 9 on the right: g = 9, 25, 81
        return torch.cat([box(y, 3)[..., :32], box(y, 5)[..., 32:64], box(y, 9)[..., 64:]], dim=-1)

    spacing, grid = robbins_lattice(2)
    gain_map = robbins_map(smoother, counts, spacing, ROBBINS_WINDOW, grid)
    torch.testing.assert_close(gain_map[..., 4:92, 4:28], torch.full_like(gain_map[..., 4:92, 4:28], 9.0))
    torch.testing.assert_close(gain_map[..., 4:92, 36:60], torch.full_like(gain_map[..., 4:92, 36:60], 25.0))
    # Within 9 px a lattice point has its 8 neighbours 6 px away, with random signs: unbiased, noisy.
    assert float((1 / gain_map[..., 8:88, 70:90]).mean()) == pytest.approx(1 / 81, rel=0.2)
    with pytest.raises(ValueError, match="grid"):
        robbins_gain_map(torch.zeros(1, 1, 8, 8), 1, (2, 2))  # a 1 px box misses the pixels between


def test_sparse_probes_read_a_dim_image_as_it_is_and_dense_ones_flatten_it(monkeypatch):
    """At 0.1 photons/px the probes' photons are a good part of the image the network reads.

    The "network" pools more photons where the image is dim (a 9 x 9 box on the dark
    background, 3 x 3 on a bright disc, blended by the photons within 15 px): its self-response
    is about 5 times higher on the disc. spread_gain thins the image by the probes' photons, so
    a lattice 3 px apart replaces a third of them by a uniform grid: the background looks
    brighter, pools less, and the map is flatter than the network's response to one photon at
    the image itself. The 6 px lattices (a photon in 72 pixels per call) keep it.
    """
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 < 10**2
    clean = np.where(disc, 2.0, 0.03)  # 0.1 photons/px over the image
    counts = np.random.default_rng(0).poisson(clean).astype(np.float32)

    def smoother(y):
        share = (box(y, 15) / 0.3).clamp(0, 1)
        return share * box(y, 3) + (1 - share) * box(y, 9)

    def logits(y):
        return torch.log(smoother(y.double()) + 1e-12).float()

    def contrast(response: np.ndarray) -> float:  # self-response on the disc over the background's
        return float(response[40:57, 40:57].mean() / response[np.ix_(range(5, 91), range(5, 25))].mean())

    # The truth: one photon added at a time to the image itself, at the points of a 4 px grid
    # inside the disc and on the background left of it.
    image = torch.from_numpy(counts).double()[None, None]
    exact = np.full(counts.shape, np.nan)
    for y, x in [(y, x) for y in range(4, 92, 4) for x in range(4, 92, 4) if disc[y, x] and (y - 48) ** 2 + (x - 48) ** 2 < 8**2 or x < 25]:
        added = image.clone()
        added[..., y, x] += 1
        exact[y, x] = float(smoother(added)[..., y, x] - smoother(image)[..., y, x])
    truth = float(np.nanmean(np.where(disc, exact, np.nan)[40:57, 40:57]) / np.nanmean(exact[5:91, 5:25]))

    def measured(spacing, grid) -> float:
        monkeypatch.setattr("photongap.sampling.gain.robbins_lattice", lambda dims: (spacing, grid))
        gain_map, _ = spread_gain(counts, 1.0, logits, None, seed=3, device=torch.device("cpu"))
        return contrast(1 / gain_map[0, 0].numpy())

    assert truth > 4
    assert measured((6, 6), (2, 2)) == pytest.approx(truth, rel=0.25)
    assert measured((3, 3), (1, 1)) < 0.7 * truth
