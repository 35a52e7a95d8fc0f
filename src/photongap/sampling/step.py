"""One sampling step: add the photons the network predicts, with the spread a large step would lose."""

from __future__ import annotations

import torch

from photongap.physics import mmse_from_logits
from photongap.posterior import DirichletPredictive


def draw_photons(counts: torch.Tensor, rates: torch.Tensor, excess: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``counts + Poisson(G)``, ``G ~ Gamma`` of mean ``rates`` and variance ``rates * excess`` (``G = rates`` without excess).

    The step's photons then have variance ``rates * (1 + excess)``: the Gamma-Poisson
    (negative binomial) form that every step below shares.

    Parameters
    ----------
    counts : torch.Tensor
        ``(B, 1, Y, X)`` photons so far.
    rates : torch.Tensor
        ``(B, 1, Y, X)`` expected photons to add per pixel.
    excess : torch.Tensor or None
        ``(B,)`` relative extra variance per image, or ``(B, 1, Y, X)`` per pixel (0 or None: a plain Poisson draw).
    generator : torch.Generator, optional
        Source of randomness, on the device of ``counts``.
    """
    if excess is not None:
        excess = excess.to(rates.device, torch.float32)
        if excess.dim() == 1:  # one value per image; else a map of the shape of rates
            ones = [1] * (rates.dim() - 1)  # (B, 1, Y, X) or a volume's (B, 1, D, Y, X)
            excess = excess.reshape(-1, *ones).expand(rates.shape[0], *ones)
        if bool((excess > 0).any()):
            # Gamma(shape = rate / e, scale = e) has mean rate and variance rate * e. (The private
            # _standard_gamma is what torch.distributions.Gamma samples with; it alone takes a
            # generator.) Images without excess keep their rates.
            safe = torch.where(excess > 0, excess, torch.ones_like(excess))
            shape = (rates.float() / safe).clamp_min(torch.finfo(torch.float32).tiny)
            dispersed = torch._standard_gamma(shape, generator=generator) * safe
            rates = torch.where(excess > 0, dispersed, rates.float())
    return counts.float() + torch.poisson(rates.float(), generator=generator)


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
    It is :func:`dirichlet_step` with the strength ``A = S / kappa`` fixed by hand.

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
    excess = None
    if dispersion > 0:
        # An empty canvas counts as one photon so far.
        excess = dispersion * photons_to_add / counts.double().flatten(1).sum(dim=1).clamp_min(1.0)
    return draw_photons(counts, mmse_from_logits(logits, photons_to_add), excess, generator)


def dirichlet_step(
    predictive: DirichletPredictive,
    counts: torch.Tensor,
    photons_to_add: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add ``n`` photons drawn from the Dirichlet-multinomial predictive ``Dir(alpha) -> Poisson``.

    Given the clean image ``q ~ Dir(alpha)`` (``alpha = P * A``) the ``n`` photons land as
    ``Poisson(n q)``; marginally pixel ``i`` gains photons of mean ``n P_i`` and variance
    ``n P_i (1 + n / A)`` (for ``P_i`` small), a Gamma-Poisson draw with excess ``n / A``.
    That is what drawing the photons one at a time from the updated prediction would give,
    in one network call. Today's ``dispersion = kappa`` is the case ``A = S / kappa``.

    Parameters
    ----------
    predictive : DirichletPredictive
        ``probabilities`` ``(B, 1, Y, X)`` and ``strength`` ``A`` ``(B,)`` from
        :func:`photongap.posterior.dirichlet_predictive`.
    counts : torch.Tensor
        ``(B, 1, Y, X)`` photons so far.
    photons_to_add : torch.Tensor
        ``(B,)`` expected photons ``n`` per image.
    generator : torch.Generator, optional
        Source of randomness, on the device of ``counts``.

    Returns
    -------
    torch.Tensor
        ``(B, 1, Y, X)`` float32 new counts.
    """
    photons_to_add = photons_to_add.to(counts.device, torch.float64)
    rates = predictive.probabilities.double() * photons_to_add.reshape(-1, *([1] * (counts.dim() - 1)))
    # A strength below one photon (an empty canvas) is read as one, as in sample_step.
    # Per pixel ``n P_i / alpha_i = n / A_i``: one value per image for the Dirichlet.
    strength = predictive.strength.to(counts.device)
    if strength.dim() > 1:
        photons_to_add = photons_to_add.reshape(-1, *([1] * (strength.dim() - 1)))
    excess = photons_to_add / strength.clamp_min(1.0)
    return draw_photons(counts, rates, excess, generator)
