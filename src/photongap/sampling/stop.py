"""When an image has accumulated enough photons, and how many network calls that takes."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from photongap.errors import PhotongapError
from photongap.physics import pseudo_psnr
from photongap.schedule import DEFAULT_TARGET_PSNR, PUBLISHED_SCHEDULE, PhotonSchedule

LEVEL_TOLERANCE_DB = 3.0
"""How far (dB) sampling may start below or go above the trained range before it warns."""
DB_ABOVE_TRAINED = 1.0
"""Where sampling stops by default: this many dB above the top of the trained range, one step of FAST_SCHEDULE (1.76 dB).

The network is never run above its trained top (the sampler thins to it), so each step beyond
it hides more of the data's own photons from the final prediction: after one step it still
sees two thirds of them, after two (3 dB) half. That loss biased the samples' mean (measured
on two data sets: 2% of the MMSE's squared error after one step, 5-7% after two) until the
samples were centred (:func:`~photongap.sampling.predictive.centred`); the wider chain did not
improve the coverage either way (4 dB above: 1-1.5 points wider at 0.1 photons/px, twice the
calls); the final draw supplies the uncertainty still left."""


@dataclass(frozen=True)
class StopRule:
    """When an image is finished: its pseudo-PSNR or its photon count passed a target.

    An image is done when ``pseudo_psnr(counts) >= target_psnr`` or
    ``sum(counts) >= target_photons`` (whichever targets are set); the loop also ends
    after ``max_steps`` steps whatever the targets.

    Attributes
    ----------
    target_psnr : float or None
        Pseudo-PSNR in dB (20 dB: 100 photons per pixel).
    target_photons : float or None
        Total photons per image.
    max_steps : int
        Cap on the loop's steps (network calls before the final estimate).
    """

    target_psnr: float | None = DEFAULT_TARGET_PSNR
    target_photons: float | None = None
    max_steps: int = 10_000

    def __post_init__(self) -> None:
        if self.target_psnr is not None and not math.isfinite(self.target_psnr):
            raise PhotongapError(f"stop target_psnr must be a finite number of dB, got {self.target_psnr}")
        if self.target_photons is not None and not (math.isfinite(self.target_photons) and self.target_photons > 0):
            raise PhotongapError(f"stop target_photons must be positive, got {self.target_photons}")
        if self.max_steps < 1:
            raise PhotongapError(f"stop max_steps must be at least 1, got {self.max_steps}")

    @classmethod
    def above_trained(cls, trained_top: float, start_psnr: float | None = None, db_above: float = DB_ABOVE_TRAINED, max_steps: int = 10_000) -> StopRule:
        """Stop ``db_above`` dB above the top of the trained range (``trained_top``, dB).

        An image that starts brighter than the trained top (``start_psnr``) stops ``db_above``
        dB above its own level instead, so that it still takes a step.

        Examples
        --------
        >>> StopRule.above_trained(-0.2).target_psnr
        0.8
        """
        if not (math.isfinite(trained_top) and math.isfinite(db_above) and db_above > 0):
            raise PhotongapError(f"above_trained needs a finite trained top and db_above > 0, got {trained_top}, {db_above}")
        base = trained_top if start_psnr is None or not math.isfinite(start_psnr) else max(trained_top, start_psnr)
        return cls(target_psnr=round(base + db_above, 10), target_photons=None, max_steps=max_steps)

    def done(self, counts: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: which images of ``counts`` ``(B, 1, Y, X)`` have reached a target."""
        counts = counts.double()
        done = torch.zeros(counts.shape[0], dtype=torch.bool, device=counts.device)
        if self.target_psnr is not None:
            done |= pseudo_psnr(counts).reshape(-1) >= self.target_psnr
        if self.target_photons is not None:
            done |= counts.flatten(1).sum(dim=1) >= self.target_photons
        return done


def expected_network_calls(
    start_photons: float,
    final_photons: float,
    schedule: PhotonSchedule = PUBLISHED_SCHEDULE,
    *,
    num_pixels: int | None = None,
) -> int:
    """Batched network calls to go from ``start_photons`` to ``final_photons``, without a network.

    Runs the schedule's recursion ``S <- S + max(beta(S / num_pixels) * S, 1)`` on the
    expected totals until ``S >= final_photons``, and adds the final estimate's call:
    for the published schedule about ``log(final / start) / log(1 + beta) + 1``. The
    sampler's photon totals are random, so its count can differ by one near a boundary
    (and more from an empty canvas, where single photons are drawn).

    Parameters
    ----------
    start_photons, final_photons : float
        Photons per image at the start and at the stop target.
    schedule : PhotonSchedule
        The schedule to count.
    num_pixels : int, optional
        Pixels per image; needed when the schedule ramps with the level (``beta_max``).

    Examples
    --------
    >>> expected_network_calls(64 * 64 * 1.0, 64 * 64 * 100.0)  # 1 -> 100 photons/px
    50
    """
    if schedule.beta_max is not None and num_pixels is None:
        raise PhotongapError("expected_network_calls needs num_pixels for a schedule with beta_max")
    if start_photons < 0 or not math.isfinite(final_photons):
        raise PhotongapError("expected_network_calls needs start_photons >= 0 and a finite final_photons")
    total, steps = float(start_photons), 0
    while total < final_photons:
        total += float(schedule.photons_to_add(torch.tensor([total]), num_pixels or 1)[0])
        steps += 1
    return steps + 1


def warn_outside_trained(trained: tuple[float, float] | None, start_db: float, target_db: float | None, tolerance: float, what: str) -> None:
    """Warn where a run starts more than ``tolerance`` dB below the trained range ``trained`` or targets more than LEVEL_TOLERANCE_DB above it."""
    if trained is None:
        return
    low, high = trained
    advice = "train on data at these levels (splitting only makes inputs dimmer), or with --preset generative"
    if target_db is not None and target_db > high + LEVEL_TOLERANCE_DB:
        warnings.warn(
            f"{what} to {target_db:g} dB goes beyond the brightest inputs this model was trained on ({high:.1f} dB): "
            f"its predictions there are extrapolation and samples degrade; {advice}, or lower --target-psnr",
            stacklevel=3,
        )
    if start_db < low - tolerance:
        warnings.warn(
            f"{what} starts at {start_db:.1f} dB, below the dimmest inputs this model was trained on ({low:.1f} dB): "
            f"its first predictions are extrapolation; {advice}",
            stacklevel=3,
        )


def warn_level_input(level_input: bool) -> None:
    """Warn that the posterior samples of a ``level_input`` model are not calibrated (docs/known-limits.md)."""
    if level_input:
        warnings.warn(
            "this model reads its input's share of the acquisition (model.level_input), and its samples' spread was measured too narrow "
            "on dim data (69-75% of pixels inside the samples' central 80% at 0.1 photons/px); for posterior samples use a model without it",
            stacklevel=3,
        )
