"""The posterior gain on one image: what a network's prediction is worth in photons, measured without ground truth.

The Dirichlet sampler (:mod:`photongap.sampling.predictive`) reads the network's prediction
from ``y`` photons as ``g * sum(y)`` photons of evidence. ``g`` is measured on the image itself,
on held-out photons (:func:`held_out_gain`), and spread over the image as the network's own
variance is (:func:`spread_gain`). Like the rest of the sampler these call a
:data:`~photongap.runtime.LogitsFn`, never a module: :class:`photongap.model.GapModel` passes
its network (``estimate_gain``, ``gain_map``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from photongap.errors import PhotongapError
from photongap.physics import mmse_from_logits, split_counts
from photongap.posterior import gain_at_level, network_gain, thin_to_level, tweedie_gain_map
from photongap.runtime import LogitsFn

GAIN_FRACTIONS = (0.5, 0.7)
"""Binomial fractions ``q1, q2`` of the held-out splits the posterior gain is measured at (of the sampler's level)."""
GAIN_REPEATS = 2
"""Held-out splits per fraction: ``2 * GAIN_REPEATS`` network calls, once per image."""
GAIN_PROBE_DENSITY = 1 / 16
"""Share of the pixels given one more photon to map the network's variance (:func:`spread_gain`)."""
GAIN_ERROR_FLOOR_SD = 2.0
"""The network's error in the gain is taken as at least this many of its standard errors (see :func:`photongap.posterior.network_gain`)."""


def held_out_gain(
    counts: np.ndarray,
    logits: LogitsFn,
    trained: tuple[float, float] | None,
    *,
    fractions: tuple[float, float] = GAIN_FRACTIONS,
    repeats: int = GAIN_REPEATS,
    seed: int = 0,
    device: torch.device,
) -> tuple[float, bool]:
    """The network's gain ``g`` on ``counts``, and whether the held-out photons resolved its error: ``2 * repeats`` calls.

    The gain is wanted at the level the sampler runs the network at: the image's, or the top
    ``trained[1]`` (dB) of the trained range where the image is brighter (``f``, as a fraction of
    its photons). Measured there directly (``q`` near 1) it is swamped by the noise of the few
    held-out photons (its relative noise grows as ``q / (1 - q)``), so it is measured at two
    lower fractions ``q1 < q2`` (``fractions`` times ``f``: ``y ~ Binomial(x, q)``, ``z = x - y``,
    ``g(q) = sum(y) / (q**2 * held_out_squared_error(mu, z, q))`` pooled over the ``repeats``,
    :func:`photongap.posterior.network_gain`) and carried to ``f`` on the power law through them
    (:func:`photongap.posterior.gain_at_level`). The default fractions keep both inside a
    default-preset model's trained range (its lowest inputs are half the data's photons).
    Where the held-out photons did not resolve the error at both fractions, it was floored at
    what they can resolve and the gain is a lower bound (``resolved`` False).
    """
    counts = np.asarray(counts, dtype=np.float32)
    total = float(counts.sum(dtype=np.float64))
    level = 1.0
    if trained is not None and total > 0:
        level = min(1.0, 10 ** (trained[1] / 10) * counts.size / total)
    generator = torch.Generator(device=device).manual_seed(seed)
    image = torch.from_numpy(counts).to(device)[None, None].expand(repeats, 1, *counts.shape).contiguous()
    gains, resolved = [], True
    for fraction in fractions:
        split = split_counts(image, torch.full((repeats,), fraction * level, device=device), generator)
        estimate = mmse_from_logits(logits(split.input_counts), split.input_counts.double().flatten(1).sum(dim=1))
        arguments = (estimate, split.input_counts, split.target_counts, fraction * level)
        gains.append(float(network_gain(*arguments, error_floor_sd=GAIN_ERROR_FLOOR_SD)))
        resolved &= bool(network_gain(*arguments) == gains[-1])
    if not all(math.isfinite(gain) and gain > 0 for gain in gains):
        raise PhotongapError(f"cannot estimate the posterior gain of an image without photons ({total:g}); pass gain=")
    return gain_at_level((fractions[0] * level, gains[0]), (fractions[1] * level, gains[1]), level), resolved


def spread_gain(
    counts: np.ndarray,
    gain: float,
    logits: LogitsFn,
    trained: tuple[float, float] | None,
    *,
    seed: int = 0,
    device: torch.device,
    at_least: bool = False,
) -> tuple[torch.Tensor, float]:
    """The gain ``gain`` spread over the image as the network's own variance is: 2 network calls.

    ``y``: ``counts`` thinned to the trained top ``trained[1]`` where brighter (what the
    sampler predicts from). The network is run on ``y`` and on ``y`` plus one photon at a random
    ``GAIN_PROBE_DENSITY`` of the pixels; :func:`photongap.posterior.tweedie_gain_map` turns the
    responses into a map ``g_i``, scaled so that ``sum(mu / g_i) = sum(y) / gain``: the total
    posterior variance stays the one measured on held-out photons (:func:`held_out_gain`).
    With ``at_least`` (the held-out photons could not resolve the network's error, so ``gain``
    is only a lower bound) the network's own overall gain is used where it is higher: its
    belief, within what the data allow. Returns the map ``(1, 1, Y, X)`` float64 on ``device``
    and the overall gain it was scaled to.
    """
    counts = np.asarray(counts, dtype=np.float32)
    generator = torch.Generator(device=device).manual_seed(seed)
    image = torch.from_numpy(counts).to(device)[None, None]
    if trained is not None:
        image = thin_to_level(image, 10 ** (trained[1] / 10), generator).thinned
    probes = (torch.rand(image.shape, generator=generator, device=device) < GAIN_PROBE_DENSITY).float()
    both = torch.cat([image, image + probes])
    mean = mmse_from_logits(logits(both), both.double().flatten(1).sum(dim=1)).double()
    shape = tweedie_gain_map(mean[:1], mean[1:], probes)
    own = float(image.double().sum()) / float((mean[:1] / shape).sum())
    used = max(gain, own) if at_least else gain
    return shape * (used / own), used
