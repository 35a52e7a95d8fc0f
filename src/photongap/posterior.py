"""The posterior's physics: thinning to a level, the Dirichlet predictive, and what a network is worth in photons.

Small pure functions, as in :mod:`photongap.physics` (which they build on): the sampler's
prediction from a network that has only seen dimmer data (:func:`thin_to_level`,
:func:`dirichlet_predictive`) and the estimators of its gain ``g``, the photons of evidence one
input photon is worth to it: on held-out photons (:func:`network_gain`, carried between
levels by :func:`gain_at_level`; spread over the image by its own response to added photons
in :mod:`photongap.robbins`). Shapes as in :mod:`photongap.physics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from photongap.physics import held_out_squared_error, mmse_from_logits, split_counts


class ThinnedCounts(NamedTuple):
    """Counts thinned to a level, and the photons thinned away: ``thinned + removed == counts``."""

    thinned: torch.Tensor
    removed: torch.Tensor


def thin_to_level(counts: torch.Tensor, photons_per_pixel: float | torch.Tensor, generator: torch.Generator | None = None) -> ThinnedCounts:
    """Thin each image to ``photons_per_pixel``: ``thinned ~ Binomial(counts, min(1, level / mean(counts)))``.

    By Poisson thinning the result is a genuine Poisson image of the same clean image at the
    lower level, e.g. one a network has been trained on. Images already at or below the
    level are returned unchanged (``removed`` is zero there). Built on :func:`split_counts`.

    Parameters
    ----------
    counts : torch.Tensor
        ``(B, C, Y, X)`` non-negative integer-valued counts.
    photons_per_pixel : float or torch.Tensor
        The level to thin to (one for all images, or ``(B,)``).
    generator : torch.Generator, optional
        Source of randomness, on the device of ``counts``.

    Examples
    --------
    >>> counts = torch.full((1, 1, 8, 8), 10.0)
    >>> thinned, removed = thin_to_level(counts, 1.0, torch.Generator().manual_seed(0))
    >>> bool((thinned + removed == counts).all())
    True
    """
    batch = counts.shape[0]
    level = torch.as_tensor(photons_per_pixel, dtype=torch.float64, device=counts.device).reshape(-1).expand(batch)
    mean = counts.double().reshape(batch, -1).mean(dim=1)
    fraction = (level / mean.clamp_min(torch.finfo(torch.float64).tiny)).clamp(max=1.0)
    split = split_counts(counts, fraction, generator)
    keep = (fraction >= 1.0).reshape(-1, *([1] * (counts.dim() - 1)))
    thinned = torch.where(keep, counts, split.input_counts)
    return ThinnedCounts(thinned, counts - thinned)


class DirichletPredictive(NamedTuple):
    """Where the next photons land, ``probabilities`` ``(B, C, Y, X)``, and how sure that is: ``strength``.

    The clean image (normalised) is ``Dirichlet(probabilities * strength)`` for a ``strength``
    ``A`` of shape ``(B,)``: concentration ``alpha = probabilities * strength``, each pixel's
    variance ``P_i (1 - P_i) / (A + 1)``. A ``strength`` map ``(B, C, Y, X)`` (a gain that varies
    over the image) generalises it: independent ``Gamma(alpha_i) / A_i`` normalised to one, each
    pixel of relative variance ``1 / alpha_i``; a constant map is the Dirichlet.
    """

    probabilities: torch.Tensor
    strength: torch.Tensor

    @property
    def concentration(self) -> torch.Tensor:
        """``alpha = probabilities * strength``, ``(B, C, Y, X)`` float64."""
        return self.probabilities.double() * self.per_pixel_strength

    @property
    def per_pixel_strength(self) -> torch.Tensor:
        """``A_i``: ``strength`` broadcast to ``(B, C, Y, X)`` (or ``(B, 1, 1, 1)``), float64."""
        strength = self.strength.double()
        if strength.dim() == 1:
            strength = strength.reshape(-1, *([1] * (self.probabilities.dim() - 1)))
        return strength


def dirichlet_predictive(logits: torch.Tensor, thinned: torch.Tensor, removed: torch.Tensor, gain: float | torch.Tensor) -> DirichletPredictive:
    """The network's prediction from ``thinned`` counts, updated pixel by pixel by the ``removed`` photons.

    ``alpha = g * sum(y) * softmax(logits) + z``, ``A = g * sum(y) + sum(z)``, ``P = alpha / A``

    (``y``: thinned, ``z``: removed). Why: the prediction ``m = softmax(net(y))`` is read as a
    Dirichlet prior ``Dir(c m)`` on the normalised clean image ``q``. Its variance in the photon
    units of ``y`` is about ``mu_i / g`` with ``mu = m sum(y)`` and ``c = g sum(y)``: the network is
    worth ``g`` photons per input photon (``g = 1``: a pixel's own photons only, the Polya urn;
    see :func:`network_gain`). Given ``q`` the removed photons ``z`` are multinomial (Poisson
    thinning makes them independent of ``y``), so conjugacy gives the posterior
    ``Dir(c m + z)``; its mean ``P`` is the predictive of the next photon and its strength ``A``
    sets the spread of a step (:func:`photongap.sampling.dirichlet_step`).

    A gain map ``g_i`` (:func:`photongap.robbins.robbins_gain_map`) makes the prior of each pixel's clean value
    ``Gamma(g_i mu_i, rate g_i)`` (mean ``mu_i``, variance ``mu_i / g_i``); the removed photons,
    ``Poisson(r lambda_i)`` with ``r = sum(z) / sum(y)``, update it to ``Gamma(alpha_i, g_i + r)``,
    ``alpha_i = g_i mu_i + z_i``. ``P`` is its mean normalised, ``A_i = alpha_i / P_i`` per pixel;
    a constant ``g`` gives the formulas above.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, C, Y, X)`` the network's logits for ``thinned``.
    thinned, removed : torch.Tensor
        ``(B, C, Y, X)`` from :func:`thin_to_level` (``removed`` may be all zero).
    gain : float or torch.Tensor
        ``g > 0``: one for all images, ``(B,)``, or a map ``(B or 1, C, Y, X)``.

    Returns
    -------
    DirichletPredictive
        ``probabilities`` float32 summing to 1 per image, ``strength`` float64 ``(B,)`` (a map
        ``(B, C, Y, X)`` for a gain map).
    """
    batch = logits.shape[0]
    tiny = torch.finfo(torch.float64).tiny
    shape = (batch, *([1] * (logits.dim() - 1)))
    gain = torch.as_tensor(gain, dtype=torch.float64, device=logits.device)
    photons_y = thinned.double().reshape(batch, -1).sum(dim=1)
    photons_z = removed.double().reshape(batch, -1).sum(dim=1)
    if gain.dim() == logits.dim():
        mu = mmse_from_logits(logits, photons_y).double()
        rate = gain + (photons_z / photons_y.clamp_min(tiny)).reshape(shape)
        mean = (gain * mu + removed.double()) / rate
        total = mean.reshape(batch, -1).sum(dim=1).clamp_min(tiny).reshape(shape)
        return DirichletPredictive((mean / total).float(), rate * total)
    gain = gain.reshape(-1).expand(batch)
    prior = gain * photons_y
    alpha = mmse_from_logits(logits, prior).double() + removed.double()
    strength = prior + photons_z
    probabilities = alpha / strength.clamp_min(tiny).reshape(shape)
    return DirichletPredictive(probabilities.float(), strength)


def local_mean(image: torch.Tensor, side: int) -> torch.Tensor:
    """The mean over a box of odd ``side`` around each pixel (each voxel of a volume), edges replicated.

    ``image`` is ``(B, C, Y, X)`` or ``(B, C, D, Y, X)``; the box spans every axis after the
    channel axis, so one call serves 2D images and 3D volumes alike.

    >>> local_mean(torch.arange(3.0).reshape(1, 1, 1, 3), 3).flatten().tolist()
    [0.3333333432674408, 1.0, 1.6666666269302368]
    """
    spatial = image.dim() - 2
    padded = torch.nn.functional.pad(image, (side // 2,) * (2 * spatial), mode="replicate")
    pool = torch.nn.functional.avg_pool2d if spatial == 2 else torch.nn.functional.avg_pool3d
    return pool(padded, side, stride=1)


class HeldOutError(NamedTuple):
    """The network's squared error estimated on held-out photons, and its standard error (float64 scalars)."""

    error: torch.Tensor
    standard_error: torch.Tensor


def held_out_error(estimate: torch.Tensor, held_out: torch.Tensor, fraction: float) -> HeldOutError:
    """``sum_i (lambda_y,i - mu_i)**2`` in the photon units of ``y ~ Binomial(x, q)``, from ``z = x - y``: no ground truth.

    ``q**2 * held_out_squared_error(mu, z, q)`` (which estimates ``sum (lambda - mu/q)**2`` in the
    units of ``x``), equal to ``sum[(z - r mu)**2 - z] / r**2`` with ``r = (1 - q) / q``, pooled
    over the batch. Its standard error follows from the spread of the per-pixel terms (taken
    as independent): its relative noise is about ``g q / (1 - q) sqrt(2 / pixels)`` for a
    network worth ``g`` photons per photon (:func:`network_gain`), 100% for ``g = 20`` at
    ``q = 0.9`` on 256 x 256 pixels, so the error of a good network on one dim image is only
    resolved well below ``q = 1``.
    """
    # One "image" per pixel: held_out_squared_error then returns each pixel's term.
    terms = fraction**2 * held_out_squared_error(estimate.reshape(-1, 1), held_out.reshape(-1, 1), fraction)
    return HeldOutError(terms.sum(), terms.std() * math.sqrt(terms.numel()))


def network_gain(estimate: torch.Tensor, thinned: torch.Tensor, held_out: torch.Tensor, fraction: float, error_floor_sd: float = 0.0) -> torch.Tensor:
    """Photons the network is worth per input photon: ``g = sum(y) / sum_i (lambda_y,i - mu_i)**2``, no ground truth.

    Poisson variance over the network's squared error (:func:`held_out_error`), both at the
    level of ``y ~ Binomial(x, q)``, ``mu`` the MMSE of ``y``. The batch is pooled: total
    photons over total error, since a single image's error estimate is noisy and can be
    negative. ``g = 1`` is a denoiser that uses each pixel's own photons only. With
    ``error_floor_sd = k > 0`` the error used is ``max(error, k se)``: never below what the
    held-out photons can resolve, so that an error lost in their noise gives the largest ``g``
    the data allow rather than an infinite or negative one.

    Parameters
    ----------
    estimate : torch.Tensor
        ``(B, ...)`` MMSE of ``thinned``, in its photon units.
    thinned, held_out : torch.Tensor
        ``(B, ...)`` the split ``y`` and ``z``.
    fraction : float
        ``q`` in (0, 1).
    error_floor_sd : float
        ``k`` above (0: the plain ratio).

    Returns
    -------
    torch.Tensor
        A float64 scalar; without a floor, infinite or negative when the error is too small
        to resolve.
    """
    error, standard_error = held_out_error(estimate, held_out, fraction)
    if error_floor_sd > 0:
        error = torch.maximum(error, error_floor_sd * standard_error)
    return thinned.double().sum() / error


GAIN_SLOPE_PRIOR = (0.75, 0.25)
"""Mean and standard deviation of the prior on the slope ``a`` of ``g ~ q**-a`` (:func:`gain_at_level`).

The true slopes between half the data's level and the top of the trained range, measured with
the ground truth on the 24 held-out images of the demo data and the Hubble deep field at 1 and
0.1 photons/px (default-preset models): 0.5-0.9 on 20 of them (median 0.75), 0.92-1.73 on the
rest (dim time-lapse frames); ``a`` itself is bounded to [0, 1].
"""


def gain_at_level(points: Sequence[tuple[float, float, float]], level: float, slope_prior: tuple[float, float] = GAIN_SLOPE_PRIOR) -> float:
    """The gain at ``level`` from gains measured at lower levels, on a power law fitted through them.

    ``points`` are ``(q, g, s)``: a level ``q`` (a fraction of the image's photons), the gain
    measured there (:func:`network_gain`) and the standard error ``s`` of ``ln g``. ``g`` falls
    with the level as ``g ~ q**-a``: ``g = S / err`` with ``S ~ q`` and the network's error in
    photons**2 of ``x``, ``err_x ~ q**-b``, falling with the level at ``b`` in [0, 1] (``b < 0``: a
    brighter input would make a worse estimate; ``b > 1``: the gain would fall below the
    pixel-wise ``g = 1`` as the level grows), so ``a = 1 - b`` lies in [0, 1]. The fit is
    weighted least squares of ``ln g = c - a ln q`` with a normal prior
    ``(mean, sd) = slope_prior`` on ``a``: two gains a few tens of percent apart in noise say
    little about ``a``, and where they don't the prior holds it (the gains fix ``c``). ``a`` is
    then clipped to [0, 1].

    Examples
    --------
    >>> round(gain_at_level([(0.5, 20.0, 1e-3), (0.7, 16.0, 1e-3)], 1.0), 2)  # measured a = 0.663
    12.63
    >>> round(gain_at_level([(0.5, 20.0, 0.3)], 1.0), 2)  # one gain: the prior's a = 0.75
    11.89
    """
    if not points or any(not (0 < q and g > 0 and s > 0) for q, g, s in points) or level <= 0:
        raise ValueError(f"gain_at_level needs levels q > 0 with positive gains and standard errors, got {points}")
    mean, sd = slope_prior
    x = [-math.log(q) for q, _, _ in points]
    y = [math.log(g) for _, g, _ in points]
    w = [1 / s**2 for _, _, s in points]
    sw, swx, swy = sum(w), sum(wi * xi for wi, xi in zip(w, x)), sum(wi * yi for wi, yi in zip(w, y))
    swxx = sum(wi * xi * xi for wi, xi in zip(w, x)) + 1 / sd**2
    swxy = sum(wi * xi * yi for wi, xi, yi in zip(w, x, y)) + mean / sd**2
    slope = (sw * swxy - swx * swy) / (sw * swxx - swx * swx)
    slope = min(max(slope, 0.0), 1.0)
    intercept = (swy - slope * swx) / sw
    return math.exp(intercept - slope * math.log(level))


OWN_GAIN_SD = 0.32
"""Standard deviation of ``ln(g_own / g)``: the network's own gain (its response to added photons,
:func:`photongap.sampling.gain.spread_gain`) against the true one, the prior of
:func:`gain_given_prior`.

The root mean square over 142 held-out images and Poisson draws of four data sets (the demo
data, the Hubble deep field, the planes of a nuclei z-stack and of a time-lapse) at 1 and 0.1
photons/px, default-training models (``benchmarks/bench_gain.py --data demo hubble nuclei
timelapse --steps 1000 --models bench-output/models1000 --level L --seed S``, level 0.1 with
seeds 7, 8, 9 and level 1 with seed 7). Per data set and level the mean of ``ln(g_own / g)``
ranged from -0.37 to +0.46: it is the network's belief, not a measurement.
"""


def gain_given_prior(
    points: Sequence[tuple[float, float, float, float]],
    level: float,
    prior: float,
    prior_sd: float = OWN_GAIN_SD,
    slope_prior: tuple[float, float] = GAIN_SLOPE_PRIOR,
) -> float:
    """The gain at ``level``: a ``prior`` gain updated by held-out errors, however noisy.

    ``points`` are ``(q, S, E, s)``: the held-out error ``E`` of the network's estimate from ``S``
    photons at a level ``q`` (a fraction of the image's photons; :func:`held_out_error`, not
    floored: it may be near zero or negative in noise) and its standard error ``s``. A gain ``g``
    at ``level`` predicts ``E = S / g(q)``, ``g(q) = g (q / level)**-a`` (:func:`gain_at_level`).
    Returns ``exp`` of the posterior mean of ``ln g`` under ``ln g ~ N(ln prior, prior_sd)``, the
    slope's normal prior ``slope_prior`` on ``a`` in [0, 1], and ``E ~ N(S / g(q), s)``, on a grid.
    Where the ratio ``S / E`` is infinite or negative, this reads an error lost in the noise for
    what it is: evidence that the error is small, worth as much as the noise is small.

    Examples
    --------
    >>> round(gain_given_prior([(0.5, 1000.0, 50.0, 0.01)], 0.5, prior=5.0), 1)  # precise: S / E
    20.0
    >>> round(gain_given_prior([(0.5, 1000.0, 50.0, 1e6)], 0.5, prior=5.0), 1)  # noise alone: the prior
    5.0
    """
    if not points or any(not (0 < q and S > 0 and s > 0) for q, S, _, s in points) or not (level > 0 and prior > 0 and prior_sd > 0):
        raise ValueError(f"gain_given_prior needs levels q > 0, photons and standard errors > 0 and a positive prior, got {points}, {prior}")
    centre = math.log(prior)
    ratios = [math.log(S / E * (q / level) ** slope_prior[0]) for q, S, E, s in points if E > s]  # where the errors could pull it far
    low, high = min([centre - 6 * prior_sd, *ratios]), max([centre + 6 * prior_sd, *ratios])
    log_gain = torch.linspace(low - 1, high + 1, 1201, dtype=torch.float64)
    slope = torch.linspace(0, 1, 21, dtype=torch.float64)[:, None]
    log_post = -0.5 * ((slope - slope_prior[0]) / slope_prior[1]) ** 2 - 0.5 * ((log_gain - centre) / prior_sd) ** 2
    for q, S, E, s in points:
        predicted = S * torch.exp(-log_gain) * (q / level) ** slope
        log_post = log_post - 0.5 * ((E - predicted) / s) ** 2
    weights = torch.softmax(log_post.flatten(), 0).reshape(log_post.shape).sum(dim=0)
    return math.exp(float((weights * log_gain).sum()))
