"""Where a network is surer and where less: each pixel's posterior variance from its response to one more photon.

For Poisson counts and any prior, Robbins' identity gives a pixel's posterior variance from the
posterior mean alone, ``mu_i (mu_i(y + e_i) - mu_i(y))``, and the network is such a mean. This
module reads that self-response at every pixel from a few network calls: photons added on
lattices split in random halves (:func:`probe_halves`), the self-response read from the two
(:func:`self_response`), and the local gain it implies (:func:`robbins_gain_map`). Pure tensor
functions; the calls are made by :func:`photongap.sampling.gain.spread_gain`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch

from photongap.posterior import local_mean

ROBBINS_STEPS = (3, 3)
"""Lattice spacing of the probes per axis of an image (a volume's are ``(2, 3, 3)``, D first): :func:`probe_halves`.

The network's response to one photon spreads over 5-15 px at 0.1 photons/px; the two halves of
each lattice cancel that spread from the self-response in expectation (:func:`self_response`),
so the spacing sets the calls (two per lattice offset: 18 for an image) and the noise, not a bias.
"""


def robbins_steps(dims: int) -> tuple[int, ...]:
    """The lattice spacing per axis for images of ``dims`` spatial axes (2 or 3)."""
    return ROBBINS_STEPS if dims == 2 else (2, *ROBBINS_STEPS)


def probe_halves(like: torch.Tensor, steps: Sequence[int], generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Complementary probe patterns covering every pixel once: for each offset of a lattice, its points split at random in two.

    ``like`` is ``(1, C, Y, X)`` (or ``(1, C, D, Y, X)``); ``steps`` the lattice spacing per spatial
    axis. Yields ``prod(steps)`` pairs ``(first, second)`` of 0/1 float tensors of ``like``'s
    shape: the points of the lattice at one offset, each in ``first`` or ``second`` with
    probability 1/2. Each pixel is in exactly one pattern over all the pairs.

    >>> pairs = list(probe_halves(torch.zeros(1, 1, 6, 6), (3, 3), torch.Generator().manual_seed(0)))
    >>> len(pairs), float(sum(a + b for a, b in pairs).min()), float(sum(a + b for a, b in pairs).max())
    (9, 1.0, 1.0)
    """
    spatial = like.dim() - 2
    if len(steps) != spatial or any(step < 1 for step in steps):
        raise ValueError(f"steps must give one positive spacing per spatial axis ({spatial}), got {tuple(steps)}")
    for offset in itertools.product(*(range(step) for step in steps)):
        lattice = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
        lattice[(..., *(slice(start, None, step) for start, step in zip(offset, steps)))] = 1
        half = (torch.rand(like.shape, generator=generator, device=like.device) < 0.5).to(like.dtype)
        yield lattice * half, lattice * (1 - half)


def self_response(with_first: torch.Tensor, with_second: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """How much of one added photon the prediction keeps at its own pixel, at the points of one lattice: 0 elsewhere.

    ``with_first`` and ``with_second`` are the MMSE ``mu(y + first)`` and ``mu(y + second)`` in
    photons, for the complementary halves of :func:`probe_halves`. At a point ``i`` of ``first``
    the difference is ``d_i = J_ii + sum_(j in first, j != i) J_ij - sum_(j in second) J_ij``
    (``J_ij`` the response of pixel ``i`` to a photon at ``j``): every other lattice point
    enters with a random sign, so the spread of the neighbours' photons cancels in expectation
    and ``d_i`` is an unbiased reading of ``J_ii``; likewise at the points of ``second``.
    """
    return (with_first.double() - with_second.double()) * (first.double() - second.double())


ROBBINS_WINDOW = 3
"""Side of the box the self-responses are averaged over before :func:`robbins_gain_map` inverts them.

The noise of one halving's reading, from the measured spread of one photon through the networks
at 0.1 photons/px, is 35-80% of the self-response (more where the network pools widely); 13-18% of the pixels of the demo data and 31% of the
time-lapse's read zero or less, which would give them no spread at all (they held the truth
23-58% of the time); averaged over 3 x 3 px the time-lapse frames' samples covered 80% instead of 71%.
"""


def robbins_gain_map(response: torch.Tensor, window: int = ROBBINS_WINDOW) -> torch.Tensor:
    """The local gain ``g_i = 1 / d_i`` from each pixel's self-response ``d`` (:func:`self_response` over all pairs).

    For Poisson counts ``y`` and any prior, Robbins' identity gives each pixel's posterior
    variance from the posterior mean alone: ``Var[lambda_i | y] = mu_i(y) (mu_i(y + e_i) - mu_i(y))
    = mu_i d_i``, ``e_i`` one more photon at pixel ``i``. The Dirichlet sampler's prior has
    variance ``mu_i / g_i`` (:func:`dirichlet_predictive`), so ``g_i = 1 / d_i``: a pixel whose
    estimate one more photon moves by ``d`` counts its data as ``1 / d`` photons per photon
    (a pixel-wise denoiser, ``d = 1``, is worth 1). The readings are averaged over a ``window``
    box in each plane first (:data:`ROBBINS_WINDOW`, :func:`in_plane_mean`; each is unbiased, so
    their mean is too) and floored at a thousandth of the image's mean, so that the map stays
    finite. Only the shape is meant: the
    network's error beyond its own belief is invisible to it, so the caller scales the map to a
    gain measured on held-out photons.
    """
    response = in_plane_mean(response.double(), window) if window > 1 else response.double()
    axes = tuple(range(1, response.dim()))
    floor = 1e-3 * response.clamp_min(0).mean(dim=axes, keepdim=True).clamp_min(1e-12)
    return 1.0 / torch.maximum(response, floor)


def in_plane_mean(image: torch.Tensor, side: int) -> torch.Tensor:
    """The mean over a ``side`` x ``side`` box in Y and X around each pixel, plane by plane for a volume.

    Planes or frames can differ more than neighbouring pixels do (a time-lapse's nuclei move
    about a pixel a frame): on the held-out time-lapse at 0.1 photons/px the samples of a 3D
    model covered 87.2% with a 3 x 3 x 3 box and 85.5% in-plane (benchmarks/bench_3d.py sampling).
    """
    if image.dim() == 4:
        return local_mean(image, side)
    padded = torch.nn.functional.pad(image, (side // 2,) * 4 + (0, 0), mode="replicate")
    return torch.nn.functional.avg_pool3d(padded, (1, side, side), stride=1)
