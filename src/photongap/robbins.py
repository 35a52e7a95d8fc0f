"""Where a network is surer and where less: each pixel's posterior variance from its response to one more photon.

For Poisson counts and any prior, Robbins' identity gives a pixel's posterior variance from the
posterior mean alone, ``mu_i (mu_i(y + e_i) - mu_i(y))``, and the network is such a mean. This
module reads that self-response on a grid of pixels from a few network calls: photons added on
sparse lattices split in random halves (:func:`probe_halves`), the self-response read from the
two (:func:`self_response`), and the local gain it implies (:func:`robbins_gain_map`). Pure
tensor functions; the calls are made by :func:`photongap.sampling.gain.spread_gain`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import torch

from photongap.posterior import local_mean

ROBBINS_LATTICE = (6, 6)
"""Spacing of the probes of one network call per axis of an image (a volume's are ``(2, 6, 6)``, D first): :func:`probe_halves`.

Each call adds a photon at one pixel in ``2 * 36 = 72``. The network is read at the image's own
photons only where the probes are few beside them: spread_gain thins the image by as many
photons as the probes add, so at 0.1 photons/px a lattice 3 px apart (one photon in 18 pixels)
replaced 36% of the image's photons by a regular grid and the network saw a flatter image.
On the held-out time-lapse frames of the demo data at 0.1 photons/px the map's coefficient of
variation was 0.60-0.64 from 3 px lattices and 1.01-1.17 from 6 px ones, both reading every pixel
(0.50-0.75 and 0.50-0.89 at 1 photon/px). With this lattice, grid and :data:`ROBBINS_WINDOW` the
samples covered the truth at 84.0, 85.3 and 79.6% (three draws of the demo data at 0.1
photons/px; 86.6, 88.0 and 84.2% from 3 px lattices read at every pixel), 85.6-87.0% on the
Hubble field (86.4-87.5%) and 80.1% on the time-lapse's volumes (89.6%; docs/known-limits.md).
The two halves of each lattice cancel the neighbours' spread from the self-response in
expectation (:func:`self_response`), and fewer neighbours within the network's reach (5-15 px
at 0.1 photons/px) also make each reading less noisy.
"""
ROBBINS_GRID = (2, 2)
"""Pixels read per axis: one in ``2 x 2`` (every plane of a volume, ``(1, 2, 2)``), from ``prod(ROBBINS_LATTICE / ROBBINS_GRID) = 9`` lattice offsets.

Reading every pixel from 6 px lattices takes 36 offsets, 72 network calls; the grid keeps the
18 calls of the 3 px lattices that read every pixel, and :func:`robbins_gain_map` averages the
readings of the grid around each pixel.
"""


def robbins_lattice(dims: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The probes' lattice spacing and the grid of read pixels per axis for images of ``dims`` spatial axes (2 or 3)."""
    if dims == 2:
        return ROBBINS_LATTICE, ROBBINS_GRID
    return (2, *ROBBINS_LATTICE), (1, *ROBBINS_GRID)


def lattice_offsets(spacing: Sequence[int], grid: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """The offsets of the lattices :func:`probe_halves` runs: every grid point within one lattice cell.

    >>> lattice_offsets((6, 6), (2, 2))[:4], len(lattice_offsets((6, 6), (2, 2))), len(lattice_offsets((3, 3)))
    ([(0, 0), (0, 2), (0, 4), (2, 0)], 9, 9)
    """
    grid = tuple(grid) if grid is not None else (1,) * len(spacing)
    if len(grid) != len(spacing) or any(step < 1 or size < 1 or size % step for size, step in zip(spacing, grid)):
        raise ValueError(f"the lattice spacing {tuple(spacing)} must be positive multiples of the grid {grid}, one per spatial axis")
    return list(itertools.product(*(range(0, size, step) for size, step in zip(spacing, grid))))


def probes_per_pixel(spacing: Sequence[int]) -> float:
    """Photons one half-lattice of :func:`probe_halves` adds per pixel: ``1 / (2 prod(spacing))``."""
    return 1.0 / (2 * math.prod(spacing))


def probe_halves(
    like: torch.Tensor, spacing: Sequence[int], generator: torch.Generator | None = None, grid: Sequence[int] | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Complementary probe patterns covering every pixel of a grid once: for each offset of a lattice, its points split at random in two.

    ``like`` is ``(1, C, Y, X)`` (or ``(1, C, D, Y, X)``); ``spacing`` the lattice spacing per
    spatial axis; ``grid`` the pixels read per axis (default every pixel; each spacing a multiple
    of it). Yields one pair ``(first, second)`` of 0/1 float tensors of ``like``'s shape per offset
    of :func:`lattice_offsets`: the points of the lattice at that offset, each in ``first`` or
    ``second`` with probability 1/2. Each pixel of the grid is in exactly one pattern over all the
    pairs, and no other pixel is in any.

    >>> pairs = list(probe_halves(torch.zeros(1, 1, 6, 6), (3, 3), torch.Generator().manual_seed(0)))
    >>> len(pairs), float(sum(a + b for a, b in pairs).min()), float(sum(a + b for a, b in pairs).max())
    (9, 1.0, 1.0)
    >>> covered = sum(a + b for a, b in probe_halves(torch.zeros(1, 1, 12, 12), (6, 6), grid=(2, 2)))
    >>> float(covered.sum()), bool((covered == read_grid(covered, (2, 2))).all())
    (36.0, True)
    """
    spatial = like.dim() - 2
    if len(spacing) != spatial:
        raise ValueError(f"the lattice needs one spacing per spatial axis ({spatial}), got {tuple(spacing)}")
    for offset in lattice_offsets(spacing, grid):
        lattice = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
        lattice[(..., *(slice(start, None, step) for start, step in zip(offset, spacing)))] = 1
        half = (torch.rand(like.shape, generator=generator, device=like.device) < 0.5).to(like.dtype)
        yield lattice * half, lattice * (1 - half)


def read_grid(like: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """1 at the pixels :func:`probe_halves` reads with this ``grid`` (every ``grid[k]``-th along each spatial axis), 0 elsewhere; ``like``'s shape, float64."""
    mask = torch.zeros(like.shape, dtype=torch.float64, device=like.device)
    mask[(..., *(slice(None, None, step) for step in grid))] = 1
    return mask


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


ROBBINS_WINDOW = 5
"""Side of the box (in pixels, each plane of a volume) the grid's readings are averaged over before :func:`robbins_gain_map` inverts them.

One reading is noisy (its neighbours' responses with random signs): from 3 px lattices read at
every pixel, 13-18% of the pixels of the demo data and 31% of the time-lapse's read zero or
less at 0.1 photons/px, which would give them no spread at all (they held the truth 23-58% of
the time). On the 2 px grid a 5 x 5 box holds four to nine readings; a 3 x 3 box would hold one
to four (a quarter of the pixels only their own), and its noise made the map too sharp: the
samples of a 2D model on crops of the held-out time-lapse at 0.1 photons/px covered 73.8%
with it and 77.3% with 5 x 5 (82.6% and 84.0% on the demo data; benchmarks/bench_3d.py
sampling, benchmarks/bench_sampling.py).
"""


def robbins_gain_map(response: torch.Tensor, window: int = ROBBINS_WINDOW, grid: Sequence[int] | None = None) -> torch.Tensor:
    """The local gain ``g_i = 1 / d_i`` from the self-responses ``d`` read on a ``grid`` (:func:`self_response` over all pairs).

    For Poisson counts ``y`` and any prior, Robbins' identity gives each pixel's posterior
    variance from the posterior mean alone: ``Var[lambda_i | y] = mu_i(y) (mu_i(y + e_i) - mu_i(y))
    = mu_i d_i``, ``e_i`` one more photon at pixel ``i``. The Dirichlet sampler's prior has
    variance ``mu_i / g_i`` (:func:`dirichlet_predictive`), so ``g_i = 1 / d_i``: a pixel whose
    estimate one more photon moves by ``d`` counts its data as ``1 / d`` photons per photon
    (a pixel-wise denoiser, ``d = 1``, is worth 1). ``d`` at each pixel is the mean of the
    readings of the ``grid`` (:func:`read_grid`; default every pixel) within a ``window`` box in
    its plane (:data:`ROBBINS_WINDOW`, :func:`in_plane_mean`; each reading is unbiased, so their
    mean is too), floored at a thousandth of the image's mean so that the map stays finite. Only
    the shape is meant: the network's error beyond its own belief is invisible to it, so the
    caller scales the map to a gain measured on held-out photons.
    """
    response = response.double()
    grid = tuple(grid) if grid is not None else (1,) * (response.dim() - 2)
    if any(step != 1 for step in grid[:-2]) or window < max(grid[-2:]):
        raise ValueError(f"a {window} px box in each plane misses pixels of the grid {grid}: read every plane, and a box at least as wide as the grid")
    mask = read_grid(response, grid)
    response = in_plane_mean(response * mask, window) / in_plane_mean(mask, window)
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
