"""Camera calibration: gain, offset and read noise from the noise of the data itself.

A camera reports ``adu = gain * photons + offset + read_noise * N(0, 1)``, rounded; GAP needs
the photons, ``(adu - offset) / gain``. At each brightness the noise cumulants tell the
numbers apart, because Poisson photons are skewed and Gaussian read noise is not:

- variance: ``var = gain * (mean - offset) + read_noise**2`` (the photon transfer curve)
- third cumulant: ``k3 = gain**2 * (mean - offset)``

A robust line through the variances gives the gain (:mod:`.fitting`); the third cumulants
place the offset; the line's intercept then gives the read noise. At high gain that
intercept is too uncertain, and the photon comb (:mod:`.comb`) measures the read noise
instead, which then places the offset through the intercept. Dark frames, when given,
measure offset and read noise directly (:mod:`.dark`). The statistics come from a stack
(:mod:`.transfer`) or one image (:mod:`.blocks`); :mod:`.model` holds the result and its JSON.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np

from photongap.calibration.blocks import photon_transfer_from_image
from photongap.calibration.camera import checked_array, saturation_level, simulate_camera
from photongap.calibration.comb import PhotonComb, photon_comb
from photongap.calibration.dark import DarkStatistics, dark_statistics
from photongap.calibration.fitting import PhotonTransferFit, fit_photon_transfer
from photongap.calibration.model import METHODS, Calibration, CalibrationMethod, jsonable
from photongap.calibration.transfer import MIN_FRAMES, PhotonTransfer, photon_transfer_from_stack
from photongap.errors import PhotongapError

__all__ = [
    "METHODS",
    "MIN_FRAMES",
    "Calibration",
    "CalibrationMethod",
    "DarkStatistics",
    "PhotonComb",
    "PhotonTransfer",
    "PhotonTransferFit",
    "calibrate",
    "dark_statistics",
    "fit_photon_transfer",
    "photon_comb",
    "photon_transfer_from_image",
    "photon_transfer_from_stack",
    "saturation_level",
    "simulate_camera",
]


def calibrate(
    frames_or_image: np.ndarray,
    *,
    dark: np.ndarray | None = None,
    method: Literal["auto", "stack", "single"] = "auto",
    block: int = 8,
) -> Calibration:
    """Gain, offset and read noise of the camera that recorded ``frames_or_image``.

    ``(T, Y, X)`` repeats of one field (``T >= 3``) use the temporal noise of every pixel
    (:func:`photon_transfer_from_stack`); one ``(Y, X)`` image uses flat blocks
    (:func:`photon_transfer_from_image`), which is less precise and needs flat regions.
    Dark frames (no light, same settings), ``(Y, X)`` or ``(T, Y, X)``, fix the offset (their
    clipped mean) and the read noise (their temporal noise for a stack, their spatial noise
    for a single image, which then matches what the single-image method measures).

    Without dark frames, ``read_noise^2 = intercept + gain * offset`` carries the offset's
    error times the gain. Where the photon comb is seen (:func:`photon_comb`, read noise under
    ~0.4 photon) it measures the read noise and the intercept then places the offset; else,
    when the read variance is not two standard errors above zero, the result holds the best
    guess and ``read_noise_upper``, with a warning.

    Parameters
    ----------
    frames_or_image : np.ndarray
        Raw camera values (ADU), not background-subtracted.
    dark : np.ndarray, optional
        Dark frames.
    method : {"auto", "stack", "single"}
        ``"auto"``: stack for 3D input, single image for 2D. ``"single"`` on a stack pools
        its frames as separate images (the fallback for stacks of fewer than 3 frames).
    block : int
        Block side for the single-image method.

    Examples
    --------
    >>> scene = np.linspace(0.0, 10.0, 128)[None, :].repeat(128, axis=0) ** 2  # 0 to 100 photons
    >>> frames = simulate_camera(scene, gain=2.0, offset=100.0, read_noise=2.0, n_frames=20,
    ...                          generator=np.random.default_rng(0))
    >>> calibration = calibrate(frames)
    >>> round(calibration.gain, 1), round(calibration.offset)
    (2.0, 100)
    """
    data = checked_array(frames_or_image, "frames_or_image", (2, 3))
    if method not in ("auto", "stack", "single"):
        raise PhotongapError(f"method must be 'auto', 'stack' or 'single', got {method!r}")
    if method == "auto":
        method = "stack" if data.ndim == 3 else "single"
    if method == "stack":
        if data.ndim != 3 or data.shape[0] < MIN_FRAMES:
            got = "a single (Y, X) image" if data.ndim == 2 else f"{data.shape[0]} frame(s)"
            raise PhotongapError(
                f"the stack method needs at least {MIN_FRAMES} repeated frames of the same field (T, Y, X), got {got}: "
                "record more frames, or pass method='single' to calibrate from single images"
            )
        ptc = photon_transfer_from_stack(data)
    else:
        ptc = photon_transfer_from_image(data, block=block)
    if dark is not None:
        measured = dark_statistics(dark, temporal=method == "stack")
        fit = fit_photon_transfer(ptc, offset=measured.offset, read_noise=measured.read_noise)
        details = ptc.details | fit.details | measured.details
        return Calibration(
            fit.gain,
            fit.offset,
            fit.read_noise,
            f"dark+{method}",  # type: ignore[arg-type]
            fit.gain_uncertainty,
            measured.offset_uncertainty,
            measured.read_noise_uncertainty,
            jsonable(details),
        )
    fit = fit_photon_transfer(ptc)
    comb = photon_comb(data, fit.gain, fit.gain_uncertainty, temporal=method == "stack", level=ptc.details["saturation_level"])
    if not comb.detected:
        details = ptc.details | fit.details | comb.details | {"read_noise_source": "photon transfer intercept"}
        if fit.read_noise_upper is not None:
            warnings.warn(
                f"the read noise is below what the data can resolve (read variance {fit.details['read_variance']:.3g} "
                f"± {fit.details['read_variance_uncertainty']:.2g} ADU^2 under the photon noise): read noise < {fit.read_noise_upper:.3g} ADU. "
                "Dark frames would measure it directly.",
                stacklevel=2,
            )
        return Calibration(
            fit.gain, fit.offset, fit.read_noise, method, fit.gain_uncertainty, fit.offset_uncertainty,  # type: ignore[arg-type]
            fit.read_noise_uncertainty, jsonable(details), fit.read_noise_upper,
        )
    return _with_comb(ptc, fit, comb, method)


def _with_comb(ptc: PhotonTransfer, third: PhotonTransferFit, comb: PhotonComb, method: str) -> Calibration:
    """Read noise from the comb; the offset from the intercept, ``(read_noise^2 - intercept) / gain``."""
    fit = fit_photon_transfer(ptc, read_noise=comb.read_noise)
    # The comb's read variance error moves the intercept's offset by itself over the gain.
    offset_uncertainty = math.hypot(fit.offset_uncertainty, 2.0 * comb.read_noise * comb.read_noise_uncertainty / fit.gain)
    apart = abs(fit.offset - third.offset) / math.hypot(offset_uncertainty, third.offset_uncertainty)
    if apart > 4.0:
        warnings.warn(
            f"the offset from the photon comb's read noise ({fit.offset:.2f} ADU) and from the third cumulant "
            f"({third.offset:.2f} ADU) disagree by {apart:.1f} standard errors: pixels may differ in gain or offset, "
            "which the camera model leaves out; dark frames would measure the offset directly.",
            stacklevel=3,
        )
    details = ptc.details | fit.details | comb.details | {
        "read_noise_source": "photon comb",
        "offset_source": "read noise and intercept",
        "offset_third_cumulant": third.offset,
        "offset_third_cumulant_uncertainty": third.offset_uncertainty,
        "read_variance_photon_transfer": third.details["read_variance"],
        "read_variance_photon_transfer_uncertainty": third.details["read_variance_uncertainty"],
    }
    return Calibration(
        fit.gain, fit.offset, comb.read_noise, method, fit.gain_uncertainty, offset_uncertainty,  # type: ignore[arg-type]
        comb.read_noise_uncertainty, jsonable(details),
    )
