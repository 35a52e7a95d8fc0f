"""The posterior's physics: thinning is binomial and keeps every photon, the Dirichlet update of a
pixel-wise network is the Polya urn, and the held-out gain is 1 for a pixel-wise denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from photongap.physics import split_counts


# --- thinning to a trained level and the Dirichlet combination ----------------------------


def test_thinning_keeps_every_photon_and_lands_at_the_level():
    from photongap.posterior import thin_to_level

    clean = torch.linspace(0.5, 20.0, 64 * 64, dtype=torch.float64).reshape(1, 1, 64, 64)
    counts = torch.poisson(clean.expand(3, 1, 64, 64).contiguous() * torch.tensor([1.0, 0.5, 0.05], dtype=torch.float64).reshape(3, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    thinned, removed = thin_to_level(counts, 2.0, torch.Generator().manual_seed(1))
    assert torch.equal(thinned + removed, counts) and (thinned >= 0).all() and (removed >= 0).all()
    level = thinned.mean(dim=(1, 2, 3))
    # Images 0 and 1 are brighter than 2 photons/px: thinned to it, within 5 binomial sd.
    for image in (0, 1):
        p = 2.0 / float(counts[image].mean())
        sd = math.sqrt(float(counts[image].sum()) * p * (1 - p)) / counts[0].numel()
        assert abs(float(level[image]) - 2.0) < 5 * sd
    # Image 2 (0.5 photons/px) is already below it: untouched.
    assert torch.equal(thinned[2], counts[2]) and not removed[2].any()


def test_thinning_is_binomial_in_each_pixel():
    from photongap.posterior import thin_to_level

    counts = torch.full((4000, 1, 2, 2), 30.0)
    thinned, _ = thin_to_level(counts, 6.0, torch.Generator().manual_seed(2))  # p = 0.2
    assert abs(float(thinned.mean()) - 6.0) < 5 * math.sqrt(30 * 0.2 * 0.8 / thinned.numel())
    assert abs(float(thinned.var()) / (30 * 0.2 * 0.8) - 1) < 0.1


def test_the_dirichlet_combination_of_a_polya_network_is_the_polya_urn_whatever_the_thinning():
    """A "network" whose softmax is (y + a0) / (sum y + A0), at g = (sum y + A0) / sum y, is the conjugate prior a0
    updated by y; the photons z thinned away must update it to exactly (x + a0) / (sum x + A0), strength sum x + A0."""
    from photongap.posterior import dirichlet_predictive, thin_to_level

    generator = torch.Generator().manual_seed(3)
    counts = torch.poisson(torch.linspace(0.1, 9.0, 2 * 12 * 10, dtype=torch.float64).reshape(2, 1, 12, 10), generator=generator)
    prior = torch.linspace(0.05, 0.4, 12 * 10, dtype=torch.float64).reshape(1, 1, 12, 10)
    expected = (counts + prior) / (counts.sum(dim=(1, 2, 3), keepdim=True) + prior.sum())
    for level in (4.0, 1.0, 0.2):
        thinned, removed = thin_to_level(counts, level, generator)
        logits = torch.log(thinned + prior)
        total = thinned.sum(dim=(1, 2, 3))
        gain = (total + prior.sum()) / total
        probabilities, strength = dirichlet_predictive(logits, thinned, removed, gain)
        torch.testing.assert_close(probabilities.double(), expected, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(strength, counts.sum(dim=(1, 2, 3)) + prior.sum(), rtol=1e-12, atol=1e-9)


def test_the_dirichlet_combination_weighs_the_prediction_by_the_gain():
    from photongap.posterior import dirichlet_predictive

    thinned = torch.full((1, 1, 2, 2), 5.0)  # 20 photons, predicted flat
    removed = torch.tensor([[[[8.0, 0.0], [0.0, 0.0]]]])
    predictive = dirichlet_predictive(torch.zeros(1, 1, 2, 2), thinned, removed, 3.0)
    # alpha = 3 * 20 * 1/4 + z = [23, 15, 15, 15]; A = 68.
    torch.testing.assert_close(predictive.strength, torch.tensor([68.0], dtype=torch.float64))
    torch.testing.assert_close(predictive.concentration.flatten(), torch.tensor([23.0, 15.0, 15.0, 15.0], dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert abs(float(predictive.probabilities.sum()) - 1) < 1e-6


@pytest.mark.parametrize("q", [0.5, 0.8])
def test_network_gain_is_one_for_a_pixelwise_denoiser_and_the_variance_ratio_for_a_noisy_oracle(q):
    """g = sum(y) / sum (lambda_y - mu)^2: mu = y (each pixel's own photons) has error sum(lambda_y), so g = 1;
    mu = lambda_y plus noise of variance lambda_y / 4 has g = 4. Both from held-out splits alone (the
    estimate's relative sd is about 1% at q = 0.5 and 3% at q = 0.8 here; the bounds are 5 sd)."""
    from photongap.posterior import network_gain

    generator = torch.Generator().manual_seed(4)
    clean = torch.linspace(2.0, 40.0, 4 * 128 * 128, dtype=torch.float64).reshape(4, 1, 128, 128)
    counts = torch.poisson(clean, generator=generator)
    split = split_counts(counts, torch.full((4,), q), generator)
    y, z = split.input_counts, split.target_counts
    tolerance = 0.06 if q == 0.5 else 0.15
    assert abs(float(network_gain(y, y, z, q)) - 1.0) < tolerance
    oracle = q * clean + torch.randn(clean.shape, generator=generator, dtype=torch.float64) * (q * clean / 4).sqrt()
    assert abs(float(network_gain(oracle, y, z, q)) / 4.0 - 1.0) < 2 * tolerance


def test_network_gain_with_an_error_floor_stays_finite_when_the_error_is_unresolved():
    """An oracle (mu = q lambda) has no error: the plain ratio is then noise (negative for this seed); the floor
    of k standard errors gives the largest g the held-out photons allow, and leaves a resolved error alone."""
    from photongap.posterior import network_gain

    generator = torch.Generator().manual_seed(5)
    q = 0.9
    clean = torch.linspace(0.5, 4.0, 64 * 64, dtype=torch.float64).reshape(1, 1, 64, 64)
    split = split_counts(torch.poisson(clean, generator=generator), torch.tensor([q]), generator)
    y, z = split.input_counts, split.target_counts
    assert not 0 < float(network_gain(q * clean, y, z, q)) < 1e3  # unresolved: noise
    floored = float(network_gain(q * clean, y, z, q, error_floor_sd=2.0))
    terms = q**2 * ((z / (1 - q) - q * clean / q) ** 2 - z / (1 - q) ** 2)
    ceiling = float(y.sum()) / (2.0 * float(terms.std()) * 64)  # sum(y) / (2 se), se = sd * sqrt(pixels)
    assert floored == pytest.approx(ceiling, rel=1e-9)
    # The pixel-wise denoiser's error (sum of lambda_y) is resolved: the floor does not change its g.
    assert float(network_gain(y, y, z, q, error_floor_sd=2.0)) == float(network_gain(y, y, z, q))
