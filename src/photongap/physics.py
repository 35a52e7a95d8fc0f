"""The physics of photon counts as small pure functions.

Tensors (and a ``torch.Generator`` where randomness is involved) in, tensors out.
Images are ``(B, C, Y, X)`` float tensors holding photon counts, or ``(B, C, D, Y, X)``
volumes: every function works on any number of spatial axes, and every per-image quantity
reduces over all the axes after the channel axis (a volume is one image, with one softmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

MAX_SPLIT_FRACTION = 0.99
"""Cap on the input fraction so that every split leaves some photons for the target."""


def photons_per_pixel(counts: torch.Tensor) -> torch.Tensor:
    """Mean photon count per pixel (voxel) of each image, shape ``(B, C)`` (``counts.shape[:-2]`` below 4 axes)."""
    spatial = tuple(range(2, counts.dim())) if counts.dim() >= 4 else (-2, -1)
    return counts.mean(dim=spatial)


def pseudo_psnr(counts: torch.Tensor) -> torch.Tensor:
    """Pseudo-PSNR in dB of each image: ``10 log10(mean photons per pixel)``.

    -40 dB is 1e-4 photons/px, 0 dB one photon/px, 20 dB 100 photons/px. An empty
    image gives ``-inf``.

    Examples
    --------
    >>> float(pseudo_psnr(torch.full((1, 1, 4, 4), 100.0)))
    20.0
    """
    return 10.0 * torch.log10(photons_per_pixel(counts))


def photons_for_psnr(psnr_db: float | torch.Tensor, num_pixels: int) -> torch.Tensor:
    """Total photons in an image of ``num_pixels`` pixels at pseudo-PSNR ``psnr_db``."""
    return torch.as_tensor(10.0 ** (torch.as_tensor(psnr_db, dtype=torch.float64) / 10.0)) * num_pixels


@dataclass(frozen=True)
class PhotonSplit:
    """A binomial split of photon counts into two independent Poisson images.

    Attributes
    ----------
    input_counts, target_counts : torch.Tensor
        ``(B, C, Y, X)``; ``input_counts + target_counts == counts``.
    split_fraction : torch.Tensor
        ``(B,)`` probability with which each photon went to the input.
    """

    input_counts: torch.Tensor
    target_counts: torch.Tensor
    split_fraction: torch.Tensor


def split_counts(counts: torch.Tensor, split_fraction: torch.Tensor, generator: torch.Generator | None = None) -> PhotonSplit:
    """Split each photon independently: ``input ~ Binomial(counts, p)``, ``target = counts - input``.

    By Poisson thinning, the input and the target are independent Poisson images of the
    same clean image, scaled by ``p`` and ``1 - p``.

    Parameters
    ----------
    counts : torch.Tensor
        ``(B, C, Y, X)`` non-negative integer-valued counts (any float dtype).
    split_fraction : torch.Tensor
        ``(B,)`` fraction ``p`` per image, in [0, 1].
    generator : torch.Generator, optional
        Source of randomness, on the device of ``counts``.
    """
    p = split_fraction.to(counts.dtype).reshape(-1, *([1] * (counts.dim() - 1))).expand_as(counts)
    input_counts = torch.binomial(counts, p.contiguous(), generator=generator)
    return PhotonSplit(input_counts, counts - input_counts, split_fraction)


def draw_split_fraction(
    counts: torch.Tensor,
    min_psnr: float,
    max_psnr: float,
    relative: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one split fraction per image from a uniform pseudo-PSNR level.

    ``s ~ U(min_psnr, max_psnr)``; ``p = min(10**(s/10) / mean(counts), 0.99)`` for an
    absolute level (the published choice: the input lands at pseudo-PSNR ``s`` whatever
    the crop's brightness) or ``p = min(10**(s/10), 0.99)`` for a level relative to the
    crop's own (``s <= 0`` dB below it).

    Returns
    -------
    torch.Tensor
        ``(B,)`` split fractions in float32.
    """
    batch = counts.shape[0]
    u = torch.rand(batch, generator=generator, device=counts.device, dtype=torch.float32)
    level = 10.0 ** ((min_psnr + (max_psnr - min_psnr) * u) / 10.0)
    if not relative:
        mean = photons_per_pixel(counts.float()).reshape(batch, -1).mean(dim=1)
        # An empty crop has no photons to split; any p gives the same (empty) halves.
        level = level / mean.clamp_min(torch.finfo(torch.float32).tiny)
    return level.clamp(max=MAX_SPLIT_FRACTION)


def photon_loss(logits: torch.Tensor, target_counts: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the target photons, per photon, one value per image.

    ``L = -sum_i target[i] * log_softmax(logits)[i] / sum_i target[i]``, the softmax
    taken over all pixels (and channels) of each image. Computed in float32 whatever
    the logits' dtype. An image whose target holds no photons gives 0, not NaN.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, C, Y, X)`` unnormalised log-probabilities of where the next photon lands.
    target_counts : torch.Tensor
        ``(B, C, Y, X)`` photons held out from the input.

    Returns
    -------
    torch.Tensor
        ``(B,)`` loss per image.
    """
    batch = logits.shape[0]
    log_p = torch.log_softmax(logits.float().reshape(batch, -1), dim=1)
    target = target_counts.float().reshape(batch, -1)
    total = target.sum(dim=1)
    return -(target * log_p).sum(dim=1) / total.clamp_min(1.0)


def log_normaliser(logits: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` of each image's logits over all its pixels (and channels), in float64: ``(B,)``.

    Together with :func:`mmse_from_logits` it lets an image too large to hold whole be
    normalised exactly: take the normaliser of each block, combine them with
    ``torch.logaddexp`` (or another ``logsumexp``), then normalise each block with it.
    """
    return torch.logsumexp(logits.double().reshape(logits.shape[0], -1), dim=1)


def mmse_from_logits(logits: torch.Tensor, total_photons: torch.Tensor, normaliser: torch.Tensor | None = None) -> torch.Tensor:
    """The expected clean image: ``softmax(logits) * total_photons`` per image.

    The softmax is over every pixel (and channel) of each image: this is GAP's one
    normalisation, used for denoising, for each sampling step and for movies alike. With
    ``total_photons = 1`` it is the distribution of where the next photon lands.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, ...)`` any float dtype; computed in float64, returned in float32.
    total_photons : torch.Tensor
        ``(B,)`` photons of each image (``sum(counts)``: the input's photon units).
    normaliser : torch.Tensor, optional
        ``(B,)`` :func:`log_normaliser` of the *whole* image when ``logits`` is one block of
        it; by default the normaliser of ``logits`` itself.

    Examples
    --------
    >>> mmse_from_logits(torch.zeros(1, 1, 2, 2), torch.tensor([8.0])).flatten().tolist()
    [2.0, 2.0, 2.0, 2.0]
    """
    batch = logits.shape[0]
    normaliser = log_normaliser(logits) if normaliser is None else normaliser.to(logits.device, torch.float64)
    flat = torch.exp(logits.double().reshape(batch, -1) - normaliser.reshape(batch, 1))
    return (flat * total_photons.to(logits.device, torch.float64).reshape(batch, 1)).float().reshape(logits.shape)


def held_out_squared_error(estimate: torch.Tensor, held_out: torch.Tensor, fraction: float | torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of an estimate's squared error against the unknown clean image, from a held-out split.

    Split counts ``x ~ Poisson(lambda)`` into ``a ~ Binomial(x, p)`` and ``b = x - a``: ``a`` and
    ``b`` are independent Poisson images of ``p * lambda`` and ``(1 - p) * lambda``. If
    ``estimate`` was computed from ``a`` alone (e.g. the MMSE of ``a``, in ``a``'s photon units),
    ``b / (1 - p)`` is an unbiased, independent measurement of ``lambda``, and

    ``E[(b/(1-p) - estimate/p)**2 - b/(1-p)**2] = (lambda - estimate/p)**2``

    pixel by pixel (the second term removes ``b``'s own Poisson variance). Summed per image it
    estimates ``sum_i (lambda_i - estimate_i / p)**2``: the squared error of the estimate
    scaled to the full exposure, in photons² of the full exposure. It needs no ground truth.

    Parameters
    ----------
    estimate : torch.Tensor
        ``(B, ...)`` estimate of ``p * lambda`` made from ``a`` alone.
    held_out : torch.Tensor
        ``(B, ...)`` the held-out counts ``b = x - a``.
    fraction : float or torch.Tensor
        ``p`` (per image, ``(B,)``, or one for all), in (0, 1).

    Returns
    -------
    torch.Tensor
        ``(B,)`` float64 sums over each image's pixels; single values can be negative (it is
        unbiased, not positive).
    """
    batch = estimate.shape[0]
    p = torch.as_tensor(fraction, dtype=torch.float64, device=estimate.device).reshape(-1, 1).expand(batch, 1)
    b = held_out.double().reshape(batch, -1)
    terms = (b / (1 - p) - estimate.double().reshape(batch, -1) / p) ** 2 - b / (1 - p) ** 2
    return terms.sum(dim=1)


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

    A gain map ``g_i`` (:func:`tweedie_gain_map`) makes the prior of each pixel's clean value
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


def tweedie_gain_map(mean: torch.Tensor, probed: torch.Tensor, probes: torch.Tensor, window: int = 15) -> torch.Tensor:
    """Where the network is surer and where less: a local gain from its response to added photons.

    For Poisson counts ``y`` and any prior, Robbins' identity gives the posterior variance of each
    pixel from the posterior mean alone: ``Var[lambda_i | y] = mu_i(y) (mu_i(y + e_i) - mu_i(y))``,
    ``e_i`` one more photon at pixel ``i``. So the network's own MMSE, run once more on ``y`` plus
    one photon at each of a sparse random set of ``probes``, says how its variance is spread over
    the image: the response ``d_i`` at a probe, less the response around it from the other
    probes (the mean over the unprobed pixels of its 7 x 7 neighbourhood), and
    ``g_i = sum_w mu / sum_w mu d`` over the probes in a ``window`` around ``i``. Windows with
    little signal are drawn to the image's overall ratio (a tenth of a typical window's weight).
    Only the shape is meant: the network's error beyond its own belief (a misfit to the data) is
    invisible to it, and the probe's own spread leaks into the ring it is compared with (for box
    smoothers of 3 x 3 and 9 x 9 pixels both gains read about 1.5 times high), so the caller
    scales the map to a gain measured on held-out photons.

    Parameters
    ----------
    mean : torch.Tensor
        ``(B, 1, Y, X)`` ``mu(y)`` in photons of ``y``.
    probed : torch.Tensor
        ``(B, 1, Y, X)`` ``mu(y + probes)`` in photons of ``y + probes``.
    probes : torch.Tensor
        ``(B, 1, Y, X)`` 0/1, the pixels given one more photon.
    window : int
        Odd side of the pooling window.

    Returns
    -------
    torch.Tensor
        ``(B, 1, Y, X)`` float64, positive.
    """
    mean, probes = mean.double(), probes.double()
    response = probed.double() - mean

    def box(image: torch.Tensor, side: int) -> torch.Tensor:
        padded = torch.nn.functional.pad(image, (side // 2,) * 4, mode="replicate")
        return torch.nn.functional.avg_pool2d(padded, side, stride=1)

    around = box(response * (1 - probes), 7) / box(1 - probes, 7).clamp_min(1e-12)
    delta = ((response - around) * probes).clamp_min(0)
    weight, spread = box(mean * probes, window), box(mean * delta, window)
    overall = weight.sum(dim=(1, 2, 3), keepdim=True) / spread.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-300)
    floor = 0.1 * weight.mean(dim=(1, 2, 3), keepdim=True)
    return (weight + floor) / (spread + floor / overall)


def network_gain(estimate: torch.Tensor, thinned: torch.Tensor, held_out: torch.Tensor, fraction: float, error_floor_sd: float = 0.0) -> torch.Tensor:
    """Photons the network is worth per input photon: ``g = sum(y) / sum_i (lambda_y,i - mu_i)**2``, no ground truth.

    ``g = sum(y) / (q**2 * held_out_squared_error(mu, z, q))`` for ``y ~ Binomial(x, q)``,
    ``z = x - y`` and ``mu`` the MMSE of ``y`` (photon units of ``y``): Poisson variance over the
    network's squared error, both at the level of ``y``. (:func:`held_out_squared_error`
    estimates ``sum (lambda - mu/q)**2`` in the units of ``x``; times ``q**2`` it is in those of
    ``y``, equal to ``sum[(z - r mu)**2 - z] / r**2`` with ``r = (1 - q) / q``.) The batch is
    pooled: total photons over total error, since a single image's error estimate is noisy
    and can be negative. ``g = 1`` is a denoiser that uses each pixel's own photons only.

    The error's standard error ``se`` follows from the spread of its per-pixel terms (taken as
    independent); with ``error_floor_sd = k > 0`` the error used is ``max(error, k se)``: never
    below what the held-out photons can resolve, so that an error lost in their noise gives
    the largest ``g`` the data allow rather than an infinite or negative one. (Its relative
    noise is about ``g q / (1 - q) sqrt(2 / pixels)``: 100% for ``g = 20`` at ``q = 0.9`` on
    256 x 256 pixels.)

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
    # One "image" per pixel: held_out_squared_error then returns each pixel's term.
    terms = fraction**2 * held_out_squared_error(estimate.reshape(-1, 1), held_out.reshape(-1, 1), fraction)
    error = terms.sum()
    if error_floor_sd > 0:
        error = torch.maximum(error, error_floor_sd * terms.std() * math.sqrt(terms.numel()))
    return thinned.double().sum() / error


def gain_at_level(low: tuple[float, float], high: tuple[float, float], level: float) -> float:
    """The gain at ``level`` from gains measured at two lower levels, on the power law through them.

    ``low = (q1, g1)`` and ``high = (q2, g2)`` with ``q1 < q2`` (levels as fractions of the image's
    photons, gains of :func:`network_gain`). ``g`` falls with the level as ``g ~ q**-a``: ``g = S / err``
    with ``S ~ q`` and the network's error ``err ~ q**b`` in photons**2 of the input; ``b`` lies in
    [0, 1] (``b < 0``: a brighter input would make a worse estimate; ``b > 1``: the gain would fall
    below the pixel-wise ``g = 1`` as the level grows), so ``a = 1 - b`` is clipped to [0, 1]:
    the clip bounds what two noisy gains can do to the extrapolation (at most a factor
    ``level / q2`` from ``g2``).

    Examples
    --------
    >>> round(gain_at_level((0.5, 20.0), (0.7, 16.0), 1.0), 2)  # a = 0.663
    12.63
    """
    (q1, g1), (q2, g2) = low, high
    if not (0 < q1 < q2 and g1 > 0 and g2 > 0 and level > 0):
        raise ValueError(f"gain_at_level needs 0 < q1 < q2 and positive gains, got {low}, {high}")
    slope = min(max(math.log(g1 / g2) / math.log(q2 / q1), 0.0), 1.0)
    return g2 * (level / q2) ** -slope
