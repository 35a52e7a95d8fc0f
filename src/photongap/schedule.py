"""How many photons each sampling step adds, and how they are drawn: the sampler's configuration.

Torch-free (the maths below uses tensor methods only), so that the command line reads the
schedules' values for its defaults without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from photongap.errors import PhotongapError

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class PhotonSchedule:
    """How many photons each step adds, ``n = max(beta(level) * total, 1)``, and how they are drawn.

    The published schedule is the default: ``beta(level) = beta = 0.1``, so the photon
    count grows geometrically and a run from ``S0`` to ``S`` photons takes about
    ``log(S / S0) / log(1 + beta)`` network calls (49 from 1 to 100 photons/px).

    With ``beta_max`` set, the relative step grows with the level (photons per pixel)
    above ``ramp_level``: ``beta(level) = clip(beta * level / ramp_level, beta, beta_max)``.
    ``PhotonSchedule(beta=0.1, beta_max=1.0, ramp_level=1.0)`` takes 15 instead of 49 steps
    from 1 to 100 photons/px, and 63 instead of 97 from 0.01 photons/px (see
    :func:`expected_network_calls`).

    Why large steps narrow the samples, and what ``dispersion`` does about it. Adding ``n``
    photons one at a time, each from the prediction given all photons before it, draws them
    from the posterior predictive: given the clean image ``q`` (normalised) they land as
    ``Poisson(n q)``, with ``q`` itself uncertain. Pixel ``i`` then gains photons with variance
    ``n E[q_i] + n**2 Var(q_i)``. A step that draws all ``n`` from the current prediction
    ``E[q]`` keeps only the first term: the posterior's spread within the step is lost, the
    more so the larger ``n``. ``dispersion`` (``kappa``) puts it back, drawing the step as
    ``Poisson(G)`` with ``G ~ Gamma`` of mean ``n E[q_i]`` and variance
    ``kappa * n E[q_i] * n / S`` (``S``: photons so far), i.e. the step's variance is
    ``n E[q_i] (1 + kappa * n / S)``. ``kappa = 1`` is exact for a posterior that knows each
    pixel from its own photons alone (``Var(q_i) = E[q_i] / S``: a Polya urn); a network that
    also learns from neighbours has a narrower posterior, so ``0 <= kappa <= 1``, and 0 is the
    published plug-in draw. At ``beta = 0.1`` the loss is about 10% of each step's variance; at
    ``beta = 4``, 80%.

    Attributes
    ----------
    beta : float
        Photons added per step, as a fraction of the photons so far (published: 0.1).
    beta_max : float or None
        Largest fraction per step once the level has ramped up; None keeps ``beta``.
    ramp_level : float
        Photons per pixel above which ``beta`` grows (only with ``beta_max``).
    dispersion : float
        ``kappa`` above: 0 (published) draws each step's photons from the plug-in Poisson,
        1 restores the spread a pixel-wise posterior would lose within the step.

    Examples
    --------
    >>> PUBLISHED_SCHEDULE.photons_to_add(torch.tensor([0.0, 5.0, 1000.0]), num_pixels=100).tolist()
    [1.0, 1.0, 100.0]
    """

    beta: float = 0.1
    beta_max: float | None = None
    ramp_level: float = 1.0
    dispersion: float = 0.0

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise PhotongapError(f"schedule beta must be positive, got {self.beta}")
        if self.beta_max is not None and not self.beta_max >= self.beta:
            raise PhotongapError(f"schedule beta_max ({self.beta_max}) must be at least beta ({self.beta})")
        if not self.ramp_level > 0:
            raise PhotongapError(f"schedule ramp_level must be positive photons per pixel, got {self.ramp_level}")
        if not (math.isfinite(self.dispersion) and self.dispersion >= 0):
            raise PhotongapError(f"schedule dispersion must be a non-negative number, got {self.dispersion}")

    def beta_at(self, level: Tensor) -> Tensor:
        """The fraction ``beta(level)`` at ``level`` photons per pixel: a float64 tensor like ``level``."""
        level = level.double()
        if self.beta_max is None:
            return level * 0.0 + self.beta
        return (self.beta * level / self.ramp_level).clamp(self.beta, self.beta_max)

    def photons_to_add(self, total: Tensor, num_pixels: int) -> Tensor:
        """Expected photons to add to images holding ``total`` photons: ``max(beta * total, 1)``.

        Parameters
        ----------
        total : torch.Tensor
            ``(B,)`` photons so far per image (any float tensor).
        num_pixels : int
            Pixels per image (sets the level in photons per pixel).

        Returns
        -------
        torch.Tensor
            ``(B,)`` float64; at least one photon, so that an empty canvas starts filling.
        """
        total = total.double()
        return (self.beta_at(total / num_pixels) * total).clamp_min(1.0)


#: photongap's default for diversity denoising: beta 0.5 growing to 4 once bright, with the
#: within-step spread restored. From 1 to 100 photons/px on the demo data it took 6 network
#: calls per sample instead of 50, and its samples were closer to the truth (+1.4 dB single,
#: +1.9 dB mean of 16) and better calibrated (60% of true pixels inside the central 80%
#: interval, against 49%) than the published schedule's on the same network
#: (benchmarks/bench_sampling.py, settings ``fast_d1`` and ``loop``).
FAST_SCHEDULE = PhotonSchedule(beta=0.5, beta_max=4.0, dispersion=1.0)



PUBLISHED_SCHEDULE = PhotonSchedule()
"""The published loop: 10% more photons per step, drawn from the plug-in Poisson (50 network calls from 1 to 100 photons/px)."""

#: photongap's default for diversity denoising: beta 0.5 growing to 4 once bright, with the
#: within-step spread restored. From 1 to 100 photons/px on the demo data it took 6 network
#: calls per sample instead of 50, and its samples were closer to the truth (+1.4 dB single,
#: +1.9 dB mean of 16) and better calibrated (60% of true pixels inside the central 80%
#: interval, against 49%) than the published schedule's on the same network
#: (benchmarks/bench_sampling.py, settings ``fast_d1`` and ``loop``).
FAST_SCHEDULE = PhotonSchedule(beta=0.5, beta_max=4.0, dispersion=1.0)

DEFAULT_TARGET_PSNR = 20.0
"""Where sampling and generation stop by default: 20 dB pseudo-PSNR, 100 photons per pixel."""
