"""One sampling step: add the photons the network predicts, with the spread a large step would lose."""

from __future__ import annotations

import torch

from photongap.physics import mmse_from_logits


def sample_step(
    logits: torch.Tensor,
    counts: torch.Tensor,
    photons_to_add: torch.Tensor,
    generator: torch.Generator | None = None,
    dispersion: float = 0.0,
) -> torch.Tensor:
    """Add predicted photons: ``counts + Poisson(softmax(logits) * n)``.

    The softmax is over all pixels of each image, so each image gains ``Poisson(n)``
    photons in total, spread as the network predicts. Photons are never removed. With
    ``dispersion = kappa > 0`` the Poisson rates are first drawn from a Gamma distribution
    of the same mean and ``kappa * n / S`` times the variance (``S``: photons in ``counts``),
    which gives the step the spread of the posterior predictive (see :class:`PhotonSchedule`).

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, 1, Y, X)`` any float dtype; the softmax runs in float32.
    counts : torch.Tensor
        ``(B, 1, Y, X)`` photons so far.
    photons_to_add : torch.Tensor
        ``(B,)`` expected photons ``n`` to add per image.
    generator : torch.Generator, optional
        Source of randomness, on the device of ``counts`` (None: torch's global one).
    dispersion : float
        ``kappa``: 0 draws from the plug-in Poisson, as published.

    Returns
    -------
    torch.Tensor
        ``(B, 1, Y, X)`` float32 new counts (a new tensor; ``counts`` is unchanged).
    """
    photons_to_add = photons_to_add.to(counts.device)
    rates = mmse_from_logits(logits, photons_to_add)
    if dispersion > 0:
        # Gamma(shape = rate / e, scale = e) has mean rate and variance rate * e. (The private
        # _standard_gamma is what torch.distributions.Gamma samples with; it alone takes a
        # generator.) An empty canvas counts as one photon so far.
        excess = (dispersion * photons_to_add / counts.double().sum(dim=(1, 2, 3)).clamp_min(1.0)).float().reshape(-1, 1, 1, 1)
        rates = torch._standard_gamma(rates / excess, generator=generator) * excess
    return counts.float() + torch.poisson(rates, generator=generator)
