"""Export a model as a BioImage Model Zoo package (spec 0.5), tested by bioimageio.core before it is written.

The package holds TorchScript weights (what deepImageJ runs) and ``pytorch_state_dict``
weights whose architecture imports :class:`photongap.bioimage_module.GapBioimageModule`, test
tensors from a real image at the training level, a ``noisy | denoised`` cover, a README and,
under ``config.photongap``, what :func:`photongap.modelfile.load_model` needs to read the
package back as a model. bioimageio is imported here only, when a package is made.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from photongap import bioimage_docs as docs
from photongap.bioimage_module import PAD_VALUE, exportable, scripted
from photongap.config import to_dict
from photongap.errors import PhotongapError
from photongap.io import atomic_output, check_new_outputs
from photongap.modelfile import FORMAT_VERSION, PACKAGE_FORMAT
from photongap.tiling import tile_margin

TAGS = ["photongap", "gap", "denoising", "shot-noise", "photon-counting", "self-supervised", "pytorch"]
DEFAULT_BLOCKS = 10
"""bioimageio.core's default block size parameter ``n`` (blocks of ``min + n * step`` px): what the README's tiling figure uses."""


@dataclass(frozen=True)
class ExportResult:
    """A written package: where, its halo per spatial axis, the tiled-vs-whole difference measured on its test image, the time taken."""

    path: Path
    halo: tuple[int, ...]
    tiling: dict[str, float] | None
    seconds: float
    versions: dict[str, str]


def space_axes(dims: int) -> tuple[str, ...]:
    """The package's spatial axis ids for a model of ``dims`` dimensions: ``("y", "x")`` or ``("z", "y", "x")``."""
    return ("z", "y", "x")[-dims:]


def halo_of(model: Any) -> tuple[int, ...]:
    """Context a consumer's tile needs per spatial axis: the receptive radius, rounded up to the size multiple (:func:`photongap.tiling.tile_margin`)."""
    return tuple(tile_margin(0, context, multiple) for context, multiple in zip(model.contexts, model.config.size_multiples))


def minimum_shape(model: Any) -> tuple[int, ...]:
    """The smallest input a package takes, per spatial axis: a halo on each side of one size multiple."""
    return tuple(2 * halo + multiple for halo, multiple in zip(halo_of(model), model.config.size_multiples))


def _versions() -> dict[str, str]:
    import bioimageio.core
    import bioimageio.spec

    return {"bioimageio.core": bioimageio.core.__version__, "bioimageio.spec": bioimageio.spec.__version__}


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, a target that is not a .zip, exists (without ``overwrite``) or cannot be written."""
    if not out.name.lower().endswith(".zip"):
        raise PhotongapError(f"{out}: a BioImage Model Zoo package is a .zip file, e.g. NAME.bioimage.io.zip")
    check_new_outputs([out], overwrite)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise PhotongapError(f"{out}: the folder {folder} does not exist")
    if not _writable(folder):
        raise PhotongapError(f"{out}: cannot write to the folder {folder}")


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _description(model: Any, files: dict[str, Path], *, name: str, authors: list[str], license: str, halo: tuple[int, ...],
                 camera: dict[str, float] | None) -> Any:
    from bioimageio.spec.model import v0_5 as spec

    multiples = model.config.size_multiples
    axes = space_axes(model.config.dims)
    counts, denoised = spec.TensorId("counts"), spec.TensorId("denoised")
    inputs = spec.InputTensorDescr(
        id=counts,
        description="photon counts (whole numbers >= 0); pad with -1",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("counts")])]
        + [spec.SpaceInputAxis(id=spec.AxisId(axis), size=spec.ParameterizedSize(min=2 * width + multiple, step=multiple))
           for axis, width, multiple in zip(axes, halo, multiples)],
        test_tensor=spec.FileDescr(source=files["test_input"]),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        pad=spec.ConstantPadding(mode="constant", value=PAD_VALUE),
    )
    outputs = spec.OutputTensorDescr(
        id=denoised,
        description="MMSE denoised image, expected photons per pixel at the input's exposure",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("denoised")])]
        + [spec.SpaceOutputAxisWithHalo(id=spec.AxisId(axis), size=spec.SizeReference(tensor_id=counts, axis_id=spec.AxisId(axis)), halo=width)
           for axis, width in zip(axes, halo)],
        test_tensor=spec.FileDescr(source=files["test_output"]),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
    )
    pytorch_version = spec.Version(torch.__version__.split("+")[0])
    weights = spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=files["state_dict"],
            architecture=spec.ArchitectureFromLibraryDescr(
                callable=spec.Identifier("GapBioimageModule"), import_from="photongap.bioimage_module", kwargs={"model_config": to_dict(model.config)}
            ),
            pytorch_version=pytorch_version,
        ),
        torchscript=spec.TorchscriptWeightsDescr(source=files["torchscript"], pytorch_version=pytorch_version, parent="pytorch_state_dict"),
    )
    photongap_config = {
        "format": PACKAGE_FORMAT,
        "format_version": FORMAT_VERSION,
        "photongap_version": model.version,
        "model_config": to_dict(model.config),
        "info": model.info,
        "halo": list(halo),
        "camera": camera,
    }
    return spec.ModelDescr(
        name=name,
        description=f"GAP shot-noise removal for photon counts (photongap {model.version}); output in the input's photon units.",
        authors=[spec.Author(name=author) for author in authors],
        cite=[spec.CiteEntry(text=docs.GAP_CITATION, doi=spec.Doi(docs.GAP_DOI))],
        license=spec.LicenseId(license),
        tags=TAGS + [f"{len(axes)}d"],
        documentation=spec.FileDescr(source=files["readme"]),
        covers=[spec.FileDescr(source=files["cover"])],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        config=spec.Config(photongap=photongap_config),
    )


def _validation_message(error: ValueError) -> str:
    details = error.errors() if callable(getattr(error, "errors", None)) else []
    if not details:
        return str(error).splitlines()[0]
    where = ".".join(str(part) for part in details[0].get("loc", ()))
    return f"{where + ': ' if where else ''}{details[0].get('msg', 'invalid')}"


def _first_error(summary: Any) -> str:
    for detail in summary.details:
        for error in detail.errors:
            where = ".".join(map(str, error.loc))
            return f"{detail.name}{f' ({where})' if where else ''}: {error.msg.strip().splitlines()[0] if error.msg.strip() else 'failed'}"
    return f"status {summary.status}"


def block_parameters(descr: Any, shape: tuple[int, ...], blocks: int = DEFAULT_BLOCKS) -> tuple[dict[tuple[Any, Any], int], list[bool]]:
    """bioimageio.core's block size parameter ``n`` per spatial axis for tiling an image of ``shape``, and which axes it cuts.

    bioimageio.core's block of ``min + n * step`` is a window (it may not exceed the image): its
    core, without the halo on each side, is ``step * (n + 1)``, and each axis is cut into cores.
    An axis longer than the smallest input is cut, with ``n`` at most ``blocks`` and one step
    short of the whole axis. An axis of the smallest size gets ``n = 0``: bioimageio.core still
    runs it in cores of one step, but every window spans the whole axis, so it changes nothing
    there but the work.
    """
    tensor = descr.inputs[0]
    space = [axis for axis in tensor.axes if hasattr(axis.size, "step")]
    parameters, cut = {}, []
    for axis, size in zip(space, shape):
        steps = (size - axis.size.min) // axis.size.step
        cut.append(steps >= 1)
        parameters[(tensor.id, axis.id)] = max(0, min(blocks, steps - 1))
    return parameters, cut


def measure_tiling(package: Path, counts: np.ndarray, blocks: int = DEFAULT_BLOCKS) -> dict[str, float] | None:
    """bioimageio.core's prediction of ``counts`` whole and in blocks of ``min + n * step`` per axis (:func:`block_parameters`), compared.

    Returns the image's and a block's smallest side and a core's (block less two halos), the
    largest absolute difference over the whole-image maximum, and the PSNR of the tiled result
    against the whole one (peak: that maximum); None where no axis is longer than the smallest input.
    """
    from bioimageio.core import create_prediction_pipeline, load_description, predict

    descr = load_description(package)
    parameters, cut = block_parameters(descr, counts.shape, blocks)
    space = [axis for axis in descr.inputs[0].axes if hasattr(axis.size, "step")]
    halos = [axis.halo for axis in descr.outputs[0].axes if hasattr(axis, "halo")]
    block = [axis.size.min + parameters[(descr.inputs[0].id, axis.id)] * axis.size.step for axis in space]
    if not any(cut):
        return None
    image = counts[None, None].astype(np.float32)
    # predict() loads and unloads the pipeline itself: entering it here as well deadlocks (core 0.11).
    pipeline = create_prediction_pipeline(descr, weight_format="pytorch_state_dict", devices=["cpu"])
    whole = predict(model=pipeline, inputs=image).members["denoised"].data.to_numpy()
    tiled = predict(model=pipeline, inputs=image, blocksize_parameter=parameters).members["denoised"].data.to_numpy()
    peak = float(whole.max())
    mse = float(np.mean((tiled.astype(np.float64) - whole) ** 2))
    return {
        "side": float(min(counts.shape)),
        "block": float(min(side for side, tiles in zip(block, cut) if tiles)),
        "core": float(min(side - 2 * halo for side, halo, tiles in zip(block, halos, cut) if tiles)),
        "max_abs_diff_over_max": float(np.abs(tiled - whole).max()) / peak,
        "psnr": 10 * math.log10(peak**2 / mse) if mse > 0 else math.inf,
    }


def export_package(
    model: Any,
    out: str | Path,
    *,
    name: str | None = None,
    authors: list[str] | None = None,
    license: str = "CC-BY-4.0",
    camera: dict[str, float] | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write ``model`` as a BioImage Model Zoo package, only if bioimageio.core's model test passes.

    Parameters
    ----------
    model : GapModel
        The model to share, 2D or 3D (the package's axes are then ``b, c, z, y, x``).
    out : path
        ``NAME.bioimage.io.zip``; written whole or not at all.
    name, authors, license
        The package's name (default: from ``out``), authors and SPDX licence of the weights.
    camera : dict, optional
        ``{"gain": ..., "offset": ...}`` of the conversion the training data went through, for the README.
    progress : callable, optional
        Called with the name of each stage as it starts.

    Examples
    --------
    >>> export_package(photongap.load("runs/cells/model.pt"), "cells.bioimage.io.zip", authors=["A. Person"])  # doctest: +SKIP
    """
    started = time.monotonic()
    report = progress or (lambda stage: None)
    out = Path(out)
    check_target(out, overwrite)
    try:
        versions = _versions()
        from bioimageio.core import test_model
        from bioimageio.spec import save_bioimageio_package
    except ImportError:
        raise PhotongapError("export needs bioimageio.core: pip install 'photongap[bioimage]'") from None
    from photongap.bioimage_compat import ensure_serialisable

    ensure_serialisable()
    name = name or f"photongap {out.name.split('.')[0]}"
    halo, minimum = halo_of(model), minimum_shape(model)
    shape = docs.test_shape(minimum, model.config.size_multiples)
    with tempfile.TemporaryDirectory(prefix="photongap-export-") as folder:
        root = Path(folder)
        report("test tensors")
        level = docs.test_level(model.info, model.trained_range())
        data = docs.test_counts(shape, level)
        counts = np.pad(data, [(0, size - side) for size, side in zip(shape, data.shape)], constant_values=PAD_VALUE)
        module = exportable(model.network, model.config)
        with torch.no_grad():
            expected = module(torch.from_numpy(counts)[None, None]).numpy()
        files = {key: root / file for key, file in (("test_input", "test_input.npy"), ("test_output", "test_output.npy"), ("state_dict", "weights.pt"),
                                                     ("torchscript", "weights_torchscript.pt"), ("readme", "README.md"), ("cover", "cover.png"))}
        np.save(files["test_input"], counts[None, None])
        np.save(files["test_output"], expected)
        torch.save(module.state_dict(), files["state_dict"])
        scripted(module, torch.zeros(1, 1, *minimum)).save(str(files["torchscript"]))
        docs.write_cover(data, model.denoise(data, tile=None, device="cpu"), files["cover"])
        files["readme"].write_text(docs.readme(name=name, model=model, halo=halo, camera=camera, test_photons=level, tiling=None, versions=versions))
        report("packaging")
        package = root / "package.bioimage.io.zip"
        try:
            descr = _description(model, files, name=name, authors=authors or ["unknown"], license=license, halo=halo, camera=camera)
        except ValueError as error:  # pydantic's ValidationError: a bad name, author or licence
            raise PhotongapError(f"the package description is invalid: {_validation_message(error)}") from None
        save_bioimageio_package(descr, output_path=package)
        report("measuring tiling")
        tiling = measure_tiling(package, counts)
        files["readme"].write_text(docs.readme(name=name, model=model, halo=halo, camera=camera, test_photons=level, tiling=tiling, versions=versions))
        descr = _description(model, files, name=name, authors=authors or ["unknown"], license=license, halo=halo, camera=camera)
        package.unlink()
        save_bioimageio_package(descr, output_path=package)
        report("testing with bioimageio.core")
        summary = test_model(package)
        if summary.status != "passed":
            raise PhotongapError(f"bioimageio.core's test of the package failed, nothing written: {_first_error(summary)}")
        report("writing")
        try:
            with atomic_output(out) as partial:
                shutil.copyfile(package, partial)
        except OSError as error:
            raise PhotongapError(f"{out}: cannot write the package ({error.strerror or error})") from None
    return ExportResult(out, halo, tiling, time.monotonic() - started, versions)
