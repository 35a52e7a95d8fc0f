"""BioImage Model Zoo export: validated by bioimageio.core, same answer outside photongap as inside, and back."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from photongap.bioimage_module import PAD_VALUE, exportable, scripted
from photongap.cli import app
from photongap.config import ModelConfig, TrainConfig
from photongap.model import GapModel, load

pytest.importorskip("bioimageio.core")
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny network trained briefly on the embedded sample at 1 photon/px: its model.pt."""
    from photongap.sample_data import load_sample_data, simulate_counts
    from photongap.training import train

    rng = np.random.default_rng(0)
    noisy = [simulate_counts(image, 1.0, rng) for image in load_sample_data().train[:6]]
    config = TrainConfig(steps=15, batch_size=4, patch_size=32, val_fraction=0.0, precision="fp32")
    result = train(noisy, tmp_path_factory.mktemp("bmz") / "run", model_config=ModelConfig(depth=3, start_filters=8, encoding_levels=4),
                   train_config=config, progress=False)
    return Path(result.model_path)


@pytest.fixture(scope="module")
def package(trained: Path) -> tuple[Path, dict]:
    """The exported package (through the CLI) and what the export printed."""
    out = trained.parent / "tiny.bioimage.io.zip"
    result = runner.invoke(app, ["export", str(trained), "-o", str(out), "--author", "Test Person", "--gain", "2", "--offset", "100"])
    assert result.exit_code == 0, result.output
    return out, {"output": result.output}


def _image(shape=(150, 173), level=1.0, seed=1) -> np.ndarray:
    from photongap.sample_data import load_sample_data, simulate_counts

    truth = load_sample_data().test[1][: shape[0], : shape[1]]
    return simulate_counts(truth, level, np.random.default_rng(seed))


def _bioimageio_predict(package: Path, counts: np.ndarray, blocks: int | None = None) -> np.ndarray:
    from bioimageio.core import predict

    sample = predict(model=str(package), inputs=counts[None, None].astype(np.float32), blocksize_parameter=blocks)
    return sample.members["denoised"].data.to_numpy()[0, 0]


@pytest.mark.slow
def test_package_passes_bioimageio_core_test(package):
    from bioimageio.core import test_model

    path, _ = package
    summary = test_model(path)
    assert summary.status == "passed", summary.format()
    tested = {detail.loc[1] for detail in summary.details if len(detail.loc) > 1 and detail.loc[0] == "weights"}
    assert {"torchscript", "pytorch_state_dict"} <= tested


@pytest.mark.slow
def test_package_contents_describe_the_model(package, trained):
    import yaml

    path, printed = package
    with zipfile.ZipFile(path) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        readme = archive.read(rdf["documentation"]["source"]).decode()
        test_input = np.load(archive.open(rdf["inputs"][0]["test_tensor"]["source"]))
    model = load(trained)
    halo = rdf["outputs"][0]["axes"][2]["halo"]
    assert halo >= model.context and halo % model.config.size_multiple == 0
    assert rdf["inputs"][0]["pad"] == {"mode": "constant", "value": PAD_VALUE}
    # A real image at the training level, not zeros.
    assert abs(test_input.mean() - model.info["data"]["photons_per_pixel"]) < 0.1 and test_input.std() > 0.5
    assert "photon" in readme.lower() and "gain 2 ADU/photon and offset 100 ADU" in readme and "2307.06607" in readme
    assert f"{model.trained_range()[0]:.1f} dB" in readme
    assert rdf["authors"][0]["name"] == "Test Person" and rdf["cite"][0]["doi"] == "10.48550/arXiv.2307.06607"
    assert "test passed" in printed["output"]


@pytest.mark.slow
def test_bioimageio_prediction_equals_photongap_denoise(package, trained, tmp_path):
    path, _ = package
    counts = _image()  # 150 x 173: bioimageio.core takes only sizes min + k * step
    tifffile.imwrite(tmp_path / "noisy.tif", counts)
    denoised = {}
    for precision in ("auto", "fp32"):  # auto: bf16 where the CPU has it; the package runs fp32
        result = runner.invoke(app, ["denoise", str(trained), str(tmp_path / "noisy.tif"), "-o", str(tmp_path / f"{precision}.tif"),
                                     "--device", "cpu", "--precision", precision])
        assert result.exit_code == 0, result.output
        denoised[precision] = tifffile.imread(tmp_path / f"{precision}.tif")
    # Padded with the package's -1 to a size it takes, which the module then cuts off again.
    padded = np.pad(counts, [(0, 152 - 150), (0, 176 - 173)], constant_values=PAD_VALUE)
    theirs = _bioimageio_predict(path, padded)[:150, :173]
    # The issue asks for 1% of the maximum; in the same precision padding with -1 makes the two agree to rounding.
    assert np.abs(theirs - denoised["auto"]).max() < 1e-2 * denoised["auto"].max()
    assert np.abs(theirs - denoised["fp32"]).max() < 1e-3 * denoised["fp32"].max()
    assert theirs.sum() == pytest.approx(counts.sum(), rel=1e-4)


@pytest.mark.slow
def test_tiled_prediction_keeps_logits_and_rescales_tiles(package, trained):
    """Under bioimageio.core's tiling each core is the whole-image answer times one factor per tile.

    The factor is the window's photons over its softmax normaliser; how close it stays to the
    whole image's depends on how well the network knows local brightness, which this briefly
    trained network does not (the export measures it per package: 2.8% of the maximum for a
    600-step default model).
    """
    path, _ = package
    model = load(trained)
    halo, step = _halo(path), model.config.size_multiple
    counts = _image((200, 200), level=2.0)
    whole = _bioimageio_predict(path, counts)
    core = 5 * step  # blocks of min + 4 steps: 2 halos + 5 steps
    tiled = _bioimageio_predict(path, counts, blocks=4)
    for y in range(0, 200 - core + 1, core):
        for x in range(0, 200 - core + 1, core):
            ratio = tiled[y : y + core, x : x + core] / whole[y : y + core, x : x + core]
            assert ratio.std() < 1e-4 * ratio.mean(), (y, x)
            window = counts[max(y - halo, 0) : y + core + halo, max(x - halo, 0) : x + core + halo]
            assert tiled[y : y + core, x : x + core].sum() <= window.sum() + 1e-3


def _halo(path: Path) -> int:
    import yaml

    with zipfile.ZipFile(path) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))["outputs"][0]["axes"][2]["halo"]


@pytest.mark.slow
def test_package_loads_back_as_the_model(package, trained, tmp_path):
    path, _ = package
    original, shared = load(trained), load(path)
    assert shared.config == original.config and shared.info == original.info and shared.version == original.version
    counts = _image((96, 80), level=3.0)
    np.testing.assert_array_equal(shared.denoise(counts, device="cpu"), original.denoise(counts, device="cpu"))
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["trained_range_db"] == list(original.trained_range())


@pytest.mark.slow
def test_photongap_does_not_import_bioimageio(package):
    path, _ = package
    code = (
        "import sys, numpy as np, photongap, photongap.cli\n"
        f"model = photongap.load({str(path)!r})\n"
        "model.denoise(np.ones((32, 32), np.float32), device='cpu')\n"
        "assert not [m for m in sys.modules if m.startswith('bioimageio')], 'bioimageio imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _main(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """Run the command line as a user does (``photongap.cli.main``): exit code and stderr."""
    from photongap.cli import main

    monkeypatch.setattr(sys, "argv", ["photongap", *args])
    with pytest.raises(SystemExit) as exit:
        main()
    return int(exit.value.code or 0), capsys.readouterr().err


def _no_package_written(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if "bioimage" in p.name and p.name != "existing.bioimage.io.zip"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["existing", "no-folder", "unwritable", "not-zip"])
def test_bad_targets_fail_in_one_line(trained, tmp_path, target, capsys, monkeypatch):
    existing = tmp_path / "existing.bioimage.io.zip"
    existing.write_bytes(b"keep")
    out = {
        "existing": existing,
        "no-folder": tmp_path / "missing" / "m.bioimage.io.zip",
        "unwritable": Path("/proc/m.bioimage.io.zip"),
        "not-zip": tmp_path / "m.bioimage.io",
    }[target]
    code, error = _main(["export", str(trained), "-o", str(out)], capsys, monkeypatch)
    assert code == 2 and error.startswith("error:") and error.count("\n") == 1
    assert existing.read_bytes() == b"keep" and _no_package_written(tmp_path)


@pytest.mark.slow
def test_failing_package_is_not_written(trained, tmp_path, monkeypatch, capsys):
    import photongap.bioimage as bioimage

    def wrong_torchscript(module, example):
        module = bioimage.exportable(module.network, load(trained).config)
        with torch.no_grad():
            module.network.head.bias += 1.0  # logits shift: softmax unchanged, so
            module.network.head.weight *= 2.0  # change their scale too
        return scripted(module, example)

    monkeypatch.setattr(bioimage, "scripted", wrong_torchscript)
    monkeypatch.setattr(bioimage, "measure_tiling", lambda package, counts: None)  # not what this test is about
    out = tmp_path / "bad.bioimage.io.zip"
    code, error = _main(["export", str(trained), "-o", str(out)], capsys, monkeypatch)
    assert code == 2 and "test of the package failed" in error and "torchscript" in error
    assert not list(tmp_path.iterdir())


def test_module_matches_denoise_and_scripts(tiny_model: GapModel, poisson_image):
    counts = poisson_image((37, 50), 2.0)
    module = exportable(tiny_model.network, tiny_model.config)
    halo = 12
    padded = torch.from_numpy(np.pad(counts, halo, constant_values=PAD_VALUE))[None, None]
    batch = torch.cat([padded, torch.from_numpy(np.pad(counts[::-1].copy(), halo, mode="symmetric"))[None, None]])
    with torch.no_grad():
        eager = module(batch)
        compiled = scripted(module, torch.zeros(1, 1, 16, 16))(batch)
    np.testing.assert_allclose(eager[0, 0, halo:-halo, halo:-halo].numpy(), tiny_model.denoise(counts, tile=None, device="cpu", precision="fp32"), rtol=1e-5, atol=1e-6)
    assert float(eager[0, 0, :halo].abs().max()) == 0  # padding gives no photons
    torch.testing.assert_close(compiled, eager)


# -- 3D models ----------------------------------------------------------------------------------

TINY_3D = ModelConfig(depth=2, start_filters=4, encoding_levels=3, dims=3, depth_pools=1)


def _volume(level: float, seed: int) -> np.ndarray:
    from photongap.sample_data import load_sample_volume, simulate_counts

    return simulate_counts(load_sample_volume(), level, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def package_3d(tmp_path_factory) -> tuple[Path, Path, str]:
    """A tiny 3D network trained briefly on the embedded nuclei volume at 1 photon/px, exported through the CLI."""
    import photongap

    folder = tmp_path_factory.mktemp("bmz3d")
    result = photongap.train([_volume(1.0, 0)], folder / "run", model_config=TINY_3D, progress=False,
                             overrides=dict(steps=12, batch_size=2, patch_size=32, patch_depth=8, val_fraction=0.0, precision="fp32"))
    out = folder / "tiny3d.bioimage.io.zip"
    printed = runner.invoke(app, ["export", str(result.model_path), "-o", str(out), "--author", "Test Person"])
    assert printed.exit_code == 0, printed.output
    return Path(result.model_path), out, printed.output


@pytest.mark.slow
def test_3d_package_has_3d_axes_and_a_real_test_volume(package_3d):
    import yaml

    trained, path, printed = package_3d
    model = load(trained)
    with zipfile.ZipFile(path) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        readme = archive.read(rdf["documentation"]["source"]).decode()
        test_input = np.load(archive.open(rdf["inputs"][0]["test_tensor"]["source"]))
    assert [axis["type"] for axis in rdf["inputs"][0]["axes"]] == ["batch", "channel", "space", "space", "space"]
    assert [axis["id"] for axis in rdf["inputs"][0]["axes"][2:]] == ["z", "y", "x"]
    halos = [axis["halo"] for axis in rdf["outputs"][0]["axes"][2:]]
    for halo, context, multiple, axis in zip(halos, model.contexts, model.config.size_multiples, rdf["inputs"][0]["axes"][2:]):
        assert halo >= context and halo % multiple == 0 and axis["size"] == {"min": 2 * halo + multiple, "step": multiple}
    # The real 24 planes, and planes of the package's padding (-1) up to its smallest input.
    assert test_input.shape[2] == rdf["inputs"][0]["axes"][2]["size"]["min"] == 30
    data, padding = test_input[0, 0, :24], test_input[0, 0, 24:]
    assert (padding == PAD_VALUE).all() and data.min() >= 0
    assert abs(data.mean() - model.info["data"]["photons_per_pixel"]) < 0.1 and data.std() > 0.5
    assert "3d" in rdf["tags"] and "`b, c, z, y, x`" in readme and "test passed" in printed
    # The volume is longer than one block in y and x: the export measured its tiling there.
    assert "blocks of" in readme and "vs whole" in printed


@pytest.mark.slow
def test_3d_bioimageio_prediction_equals_photongap_denoise(package_3d, tmp_path):
    trained, path, _ = package_3d
    counts = _volume(1.5, 3)[:, :61, :47]  # not a size the package takes: pad with -1, then crop
    ours = load(trained).denoise(counts, tile=None, device="cpu", precision="fp32")
    minimum, step = 30, 2  # the tiny network's halo of 14 on each side of one step
    shape = [minimum + -(-max(size - minimum, 0) // step) * step for size in counts.shape]
    padded = np.pad(counts, [(0, target - size) for target, size in zip(shape, counts.shape)], constant_values=PAD_VALUE)
    theirs = _bioimageio_predict(path, padded)[: counts.shape[0], : counts.shape[1], : counts.shape[2]]
    assert np.abs(theirs - ours).max() < 1e-3 * ours.max()
    assert theirs.sum() == pytest.approx(counts.sum(), rel=1e-4)
    shared = load(path)
    assert shared.config == load(trained).config
    np.testing.assert_array_equal(shared.denoise(counts, tile=None, device="cpu", precision="fp32"), ours)


def test_3d_module_matches_denoise_and_scripts():
    from photongap.network import GapUNet

    torch.manual_seed(0)
    model = GapModel(GapUNet(TINY_3D).eval(), TINY_3D)
    counts = _volume(2.0, 1)[:9, :21, :26]
    module = exportable(model.network, model.config)
    padded = torch.from_numpy(np.pad(counts, [(3, 2), (4, 5), (6, 1)], constant_values=PAD_VALUE))[None, None]
    with torch.no_grad():
        eager = module(padded)
        compiled = scripted(module, torch.zeros(1, 1, 30, 30, 30))(padded)
    ours = model.denoise(counts, tile=None, device="cpu", precision="fp32")
    np.testing.assert_allclose(eager[0, 0, 3:-2, 4:-5, 6:-1].numpy(), ours, rtol=1e-5, atol=1e-6)
    outside = torch.ones_like(eager, dtype=torch.bool)
    outside[0, 0, 3:-2, 4:-5, 6:-1] = False
    assert float(eager[outside].abs().max()) == 0  # padding gives no photons
    torch.testing.assert_close(compiled, eager)
