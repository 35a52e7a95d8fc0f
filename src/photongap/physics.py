"""The physics of photon counts as small pure functions.

Tensors (and a ``torch.Generator`` where randomness is involved) in, tensors out.
Images are ``(B, C, Y, X)`` float tensors holding photon counts, or ``(B, C, D, Y, X)``
volumes: every function works on any number of spatial axes, and every per-image quantity
reduces over all the axes after the channel axis (a volume is one image, with one softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

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
