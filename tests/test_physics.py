"""Properties of the photon physics, checked as a physicist would: photons are conserved by
the split, the split is binomial, the loss is the Poisson likelihood, and nothing overflows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from photongap.physics import (
    MAX_SPLIT_FRACTION,
    draw_split_fraction,
    mmse_from_logits,
    photon_loss,
    photons_for_psnr,
    photons_per_pixel,
    pseudo_psnr,
    split_counts,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def poisson_counts(shape: tuple[int, ...], level: float, seed: int = 0) -> torch.Tensor:
    return torch.poisson(torch.full(shape, float(level)), generator=seeded(seed))


# --- splitting ---------------------------------------------------------------------------


def test_split_conserves_photons_exactly():
    counts = poisson_counts((4, 1, 33, 47), 20.0)
    counts[1] = 0.0  # an empty image splits into two empty halves
    fraction = torch.tensor([0.0, 0.3, 0.5, 1.0])
    split = split_counts(counts, fraction, seeded(1))
    assert torch.equal(split.input_counts + split.target_counts, counts)
    assert (split.input_counts >= 0).all() and (split.target_counts >= 0).all()
    assert torch.equal(split.input_counts, split.input_counts.round())
    assert not split.input_counts[0].any()  # p = 0: everything goes to the target
    assert torch.equal(split.input_counts[3], counts[3])  # p = 1: everything to the input
    assert torch.equal(split.split_fraction, fraction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_mean_and_variance_are_binomial(dtype):
    # Per image a different count n and fraction p: input ~ Binomial(n, p) pixel by pixel.
    n = torch.tensor([3.0, 50.0, 400.0])
    p = torch.tensor([0.7, 0.3, 0.05])
    pixels = 200 * 200
    counts = n.to(dtype).reshape(3, 1, 1, 1).expand(3, 1, 200, 200).contiguous()
    split = split_counts(counts, p, seeded(2))
    draws = split.input_counts.double().reshape(3, -1)
    mean, variance = draws.mean(dim=1), draws.var(dim=1)
    expected_mean = (n * p).double()
    expected_variance = (n * p * (1 - p)).double()
    mean_error = (expected_variance / pixels).sqrt()
    # Standard error of a sample variance: sqrt((mu4 - sigma^4) / N), mu4 of the binomial.
    npq = expected_variance
    mu4 = npq * (1 + 3 * (n.double() - 2) * (p * (1 - p)).double())
    variance_error = ((mu4 - npq**2) / pixels).sqrt()
    assert torch.all((mean - expected_mean).abs() < 4 * mean_error), (mean, expected_mean)
    assert torch.all((variance - expected_variance).abs() < 4 * variance_error), (variance, expected_variance)


def test_split_of_poisson_counts_gives_independent_poisson_halves():
    # Poisson thinning: the halves of Poisson(lam) are Poisson(p lam) and Poisson((1-p) lam), independent.
    lam, p, pixels = 8.0, 0.25, 300 * 300
    counts = poisson_counts((1, 1, 300, 300), lam, seed=3)
    split = split_counts(counts, torch.tensor([p]), seeded(4))
    x, y = split.input_counts.double().flatten(), split.target_counts.double().flatten()
    for half, rate in ((x, p * lam), (y, (1 - p) * lam)):
        assert abs(float(half.mean()) - rate) < 4 * math.sqrt(rate / pixels)
        assert abs(float(half.var()) - rate) < 4 * math.sqrt((rate + 2 * rate**2) / pixels)
    correlation = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    assert abs(correlation) < 4 / math.sqrt(pixels)


def test_split_same_seed_same_split_other_seed_other_split():
    counts = poisson_counts((2, 1, 32, 32), 10.0)
    fraction = torch.tensor([0.4, 0.6])
    first = split_counts(counts, fraction, seeded(7)).input_counts
    again = split_counts(counts, fraction, seeded(7)).input_counts
    other = split_counts(counts, fraction, seeded(8)).input_counts
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# --- drawing the split fraction ----------------------------------------------------------


def test_absolute_split_puts_the_input_at_the_drawn_level():
    # Crops from 1e-2 to 1e3 photons/px: the input's expected level p * mean lands in the
    # range of levels whenever p is not capped.
    levels = torch.tensor([0.01, 0.5, 3.0, 40.0, 1000.0]).repeat(200)
    counts = levels.reshape(-1, 1, 1, 1).expand(-1, 1, 16, 16)
    p = draw_split_fraction(counts, -40.0, 20.0, relative=False, generator=seeded(5))
    assert p.shape == (len(levels),) and p.dtype == torch.float32
    assert (p >= 0).all() and (p <= MAX_SPLIT_FRACTION).all()
    uncapped = p < MAX_SPLIT_FRACTION
    psnr = 10 * torch.log10(p[uncapped].double() * levels[uncapped].double())
    assert psnr.min() >= -40.0 - 1e-3 and psnr.max() <= 20.0 + 1e-3
    # Capped fractions are those whose drawn level is above the crop's own.
    assert (p[~uncapped] == MAX_SPLIT_FRACTION).all()
    # For the brightest crops the cap is never hit and the level is uniform in dB.
    bright = levels == 1000.0
    bright_psnr = 10 * torch.log10(p[bright].double() * 1000.0)
    assert abs(float(bright_psnr.mean()) - (-10.0)) < 4 * 60 / math.sqrt(12 * 200)
    assert float(bright_psnr.min()) < -34 and float(bright_psnr.max()) > 14


def test_absolute_split_of_an_empty_crop_is_finite():
    p = draw_split_fraction(torch.zeros(3, 1, 8, 8), -40.0, 20.0, relative=False, generator=seeded(0))
    assert torch.isfinite(p).all() and (p <= MAX_SPLIT_FRACTION).all()


def test_relative_split_does_not_depend_on_brightness():
    counts = poisson_counts((500, 1, 8, 8), 2.0)
    dim = draw_split_fraction(counts, -20.0, 0.0, relative=True, generator=seeded(6))
    bright = draw_split_fraction(counts * 1000, -20.0, 0.0, relative=True, generator=seeded(6))
    assert torch.equal(dim, bright)
    assert (dim >= 10 ** -2.0 - 1e-7).all() and (dim <= MAX_SPLIT_FRACTION).all()
    # The level below the crop's own is uniform in dB over [-20, 0].
    decibels = 10 * torch.log10(dim.double())
    assert abs(float(decibels.mean()) - (-10.0)) < 4 * 20 / math.sqrt(12 * 500)


def test_split_fraction_same_seed_same_draw():
    counts = poisson_counts((8, 1, 8, 8), 5.0)
    first = draw_split_fraction(counts, -30.0, 10.0, relative=False, generator=seeded(1))
    assert torch.equal(first, draw_split_fraction(counts, -30.0, 10.0, relative=False, generator=seeded(1)))
    assert not torch.equal(first, draw_split_fraction(counts, -30.0, 10.0, relative=False, generator=seeded(2)))


# --- the photon loss ---------------------------------------------------------------------


def reference_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-sum target * log softmax / sum target`` per image, by hand in float64."""
    flat_logits = logits.double().flatten(1)
    flat_target = target.double().flatten(1)
    shifted = flat_logits - flat_logits.max(dim=1, keepdim=True).values
    log_p = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    return -(flat_target * log_p).sum(dim=1) / flat_target.sum(dim=1)


def test_loss_matches_the_float64_multinomial_likelihood():
    logits = torch.randn(3, 1, 20, 24, generator=seeded(0)) * 3
    target = poisson_counts((3, 1, 20, 24), 0.7, seed=1)
    loss = photon_loss(logits, target)
    assert loss.shape == (3,) and loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), reference_loss(logits, target), rtol=1e-5, atol=1e-5)


def test_loss_is_invariant_to_a_constant_added_to_the_logits():
    logits = torch.randn(2, 1, 16, 16, generator=seeded(1))
    target = poisson_counts((2, 1, 16, 16), 2.0, seed=2)
    shift = torch.tensor([7.25, -31.5]).reshape(2, 1, 1, 1)
    torch.testing.assert_close(photon_loss(logits + shift, target), photon_loss(logits, target), rtol=1e-5, atol=1e-5)


def test_loss_equals_the_poisson_nll_up_to_terms_without_logits():
    # Poisson NLL of target ~ Poisson(sum(target) * softmax(logits)), summed over pixels:
    #   sum(mu) - sum(t log mu) + sum(log t!) = -sum(t log softmax) + (terms without logits).
    target = poisson_counts((1, 1, 24, 24), 3.0, seed=3)
    total = target.sum()

    def poisson_nll(logits: torch.Tensor) -> float:
        rate = torch.softmax(logits.double().flatten(), 0) * total.double()
        return float(torch.nn.functional.poisson_nll_loss(rate.log(), target.double().flatten(), full=True, reduction="sum"))

    values = []
    for seed in range(4):
        logits = torch.randn(1, 1, 24, 24, generator=seeded(10 + seed))
        values.append((float(photon_loss(logits, target)) * float(total), poisson_nll(logits)))
    offsets = [nll - loss for loss, nll in values]
    assert max(offsets) - min(offsets) < 1e-3 * abs(offsets[0]) + 1e-2, offsets
    assert len({round(loss, 3) for loss, _ in values}) == 4  # the logits did change the loss


def test_loss_is_minimised_by_the_log_of_the_clean_image():
    # E[loss] = -sum(lambda log P) / sum(lambda) is minimal at P = lambda / sum(lambda) (Gibbs).
    y, x = torch.meshgrid(torch.linspace(0, 3, 16), torch.linspace(0, 3, 16), indexing="ij")
    clean = (0.2 + torch.sin(y) ** 2 * torch.cos(x) ** 2).reshape(1, 1, 16, 16) * 5
    targets = torch.poisson(clean.expand(400, 1, 16, 16).contiguous(), generator=seeded(4))
    best = float(photon_loss(clean.log().expand_as(targets), targets).mean())
    shifted = float(photon_loss((clean.log() + 3.0).expand_as(targets), targets).mean())
    assert best == pytest.approx(shifted, rel=1e-5)
    for seed in range(5):
        noise = 0.3 * torch.randn(1, 1, 16, 16, generator=seeded(20 + seed))
        perturbed = float(photon_loss((clean.log() + noise).expand_as(targets), targets).mean())
        assert perturbed > best, (seed, perturbed, best)
    flat = float(photon_loss(torch.zeros_like(targets), targets).mean())
    assert flat > best


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_target_gives_zero_loss_and_finite_gradients(dtype):
    logits = (torch.randn(2, 1, 16, 16, generator=seeded(5)) * 50).to(dtype).requires_grad_()
    target = torch.zeros(2, 1, 16, 16)
    target[1, 0, 3, 4] = 2.0  # one informative image beside an empty one
    loss = photon_loss(logits, target)
    values = loss.detach()
    assert torch.isfinite(values).all() and float(values[0]) == 0.0 and float(values[1]) > 0
    loss.sum().backward()
    assert logits.grad is not None and logits.grad.dtype == dtype
    assert torch.isfinite(logits.grad.float()).all()
    assert not logits.grad[0].any()  # the empty image teaches nothing
    assert logits.grad[1].any()


def test_huge_logits_do_not_overflow():
    logits = torch.randn(2, 1, 16, 16, generator=seeded(6)) * 1e4
    logits[0, 0, 0, 0] = 1e4
    target = poisson_counts((2, 1, 16, 16), 1.0, seed=7)
    loss = photon_loss(logits, target)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), reference_loss(logits, target), rtol=1e-5, atol=1e-2)
    image = mmse_from_logits(logits, torch.tensor([100.0, 3.0]))
    assert torch.isfinite(image).all()
    torch.testing.assert_close(image.sum(dim=(1, 2, 3)), torch.tensor([100.0, 3.0]))
    # A constant of 1e4 on every logit changes nothing.
    flat = torch.full((1, 1, 8, 8), 1e4)
    torch.testing.assert_close(mmse_from_logits(flat, torch.tensor([64.0])), torch.ones(1, 1, 8, 8))
    assert torch.isfinite(photon_loss(flat, torch.ones(1, 1, 8, 8))).all()
    assert float(photon_loss(flat, torch.ones(1, 1, 8, 8))) == pytest.approx(math.log(64), rel=1e-5)


# --- MMSE, camera units, pseudo-PSNR -----------------------------------------------------


def test_mmse_is_the_softmax_in_the_units_of_the_total():
    logits = torch.randn(3, 1, 12, 10, generator=seeded(8)).to(torch.bfloat16)
    totals = torch.tensor([0.0, 1.0, 12345.0])
    image = mmse_from_logits(logits, totals)
    assert image.shape == logits.shape and image.dtype == torch.float32 and (image >= 0).all()
    torch.testing.assert_close(image.sum(dim=(1, 2, 3)), totals, rtol=1e-5, atol=1e-4)
    expected = torch.softmax(logits.double().flatten(1), 1).reshape(logits.shape) * totals.double().reshape(3, 1, 1, 1)
    torch.testing.assert_close(image.double(), expected, rtol=1e-5, atol=1e-6)


def test_pseudo_psnr_levels():
    for level, decibels in ((100.0, 20.0), (1.0, 0.0), (1e-4, -40.0), (1e4, 40.0)):
        counts = torch.full((1, 1, 8, 8), level, dtype=torch.float64)
        assert float(pseudo_psnr(counts)) == pytest.approx(decibels, abs=1e-9)
        assert float(photons_for_psnr(decibels, 64)) == pytest.approx(64 * level, rel=1e-9)
    counts = torch.zeros(2, 1, 4, 4)
    counts[1] = 100.0
    psnr = pseudo_psnr(counts)
    assert psnr.shape == (2, 1) and psnr[0, 0] == -math.inf and float(psnr[1, 0]) == pytest.approx(20.0)
    assert photons_per_pixel(counts).flatten().tolist() == [0.0, 100.0]
    assert np.isclose(float(pseudo_psnr(poisson_counts((1, 1, 64, 64), 100.0))), 20.0, atol=0.05)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_held_out_squared_error_is_unbiased_for_a_fixed_denoiser(fraction):
    # A fixed "denoiser" whose error is computable: a 3x3 box filter of the input split. The
    # held-out estimate, averaged over many splits, must match its true squared error against
    # the clean image in full-exposure units.
    from photongap.physics import held_out_squared_error

    generator = torch.Generator().manual_seed(3)
    y, x = torch.meshgrid(torch.linspace(0, 3, 48), torch.linspace(0, 4, 40), indexing="ij")
    clean = (2.0 + torch.sin(y) * torch.cos(x) ** 2 * 2.0)[None, None].double()
    box = lambda image: torch.nn.functional.avg_pool2d(torch.nn.functional.pad(image, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # noqa: E731
    estimates, truths = [], []
    for _ in range(1500):
        counts = torch.poisson(clean.float(), generator=generator)
        split = split_counts(counts, torch.tensor([fraction]), generator)
        estimate = box(split.input_counts.double())
        estimates.append(float(held_out_squared_error(estimate, split.target_counts, fraction)[0]))
        truths.append(float(((clean - estimate / fraction) ** 2).sum()))
    mean_estimate, mean_truth = np.mean(estimates), np.mean(truths)
    standard_error = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(mean_estimate - mean_truth) < 4 * standard_error, (mean_estimate, mean_truth, standard_error)
    assert standard_error < 0.1 * mean_truth  # the test has the power to see a 10% bias
