"""Reading, checking and writing images: round trips keep data, axes and pixel sizes; bad input gives one clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from photongap import io
from photongap.camera import check_counts
from photongap.errors import PhotongapError
from photongap.io.pages import release_pages
from photongap.io import (
    Image,
    ImageWriter,
    find_images,
    iter_planes,
    output_path,
    output_paths,
    plane_axes_order,
    read_image,
    write_image,
)


def counts(shape: tuple[int, ...], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(3.0, size=shape).astype(dtype)


def is_ome(path: Path) -> bool:
    with tifffile.TiffFile(path) as tif:
        return tif.is_ome


def denoise_like(image: Image, out: Path) -> Path:
    """Write what ``photongap denoise`` writes for ``image``: plane by plane, ``like=image``."""
    with ImageWriter(out, image.plane_shape, image.plane_axes, like=image, description="gap") as writer:
        for index, plane in iter_planes(image):
            writer.array[index] = np.asarray(plane, dtype="float32") / 2
    return out


# --- round trips -------------------------------------------------------------------------


def test_plain_tiff_round_trip_keeps_axes_and_description(tmp_path: Path) -> None:
    data = counts((3, 20, 30))
    path = write_image(tmp_path / "a.tif", data, "TYX", description="denoised by photongap")
    image = read_image(path)
    assert image.axes == "TYX" and image.path == path
    np.testing.assert_array_equal(image.data, data)
    assert image.data.dtype == np.uint16
    assert image.pixel_sizes == {} and image.metadata["description"] == "denoised by photongap"
    assert not is_ome(path)


def test_ome_tiff_tczyx_metadata_is_read_and_written_back(tmp_path: Path) -> None:
    data = counts((2, 3, 4, 16, 24))
    source = tmp_path / "cells.ome.tif"
    metadata = {"axes": "TCZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 0.5,
                "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeZUnit": "µm",
                "Channel": {"Name": ["dapi", "gfp", "rfp"]}}
    tifffile.imwrite(source, data, metadata=metadata)
    image = read_image(source)
    assert image.axes == "TCZYX" and image.shape == data.shape
    assert image.pixel_sizes == {"X": 0.1, "Y": 0.1, "Z": 0.5}
    assert image.units == {"X": "µm", "Y": "µm", "Z": "µm"}
    assert image.metadata["channel_names"] == ["dapi", "gfp", "rfp"]
    np.testing.assert_array_equal(image.data, data)

    # A plain .tif output of an input with pixel sizes becomes OME-TIFF carrying them.
    out = write_image(tmp_path / "out.tif", data.astype("float32"), "TCZYX", like=image, description="gap mmse")
    back = read_image(out)
    assert is_ome(out)
    assert (back.axes, back.pixel_sizes, back.units) == (image.axes, image.pixel_sizes, image.units)
    assert back.metadata == {"channel_names": ["dapi", "gfp", "rfp"], "description": "gap mmse"}
    assert back.data.dtype == np.float32


def test_ome_suffix_forces_ome_without_pixel_sizes(tmp_path: Path) -> None:
    out = write_image(tmp_path / "x.ome.tiff", np.zeros((2, 8, 8), "float32"), "CYX")
    assert is_ome(out) and read_image(out).axes == "CYX"


def test_imagej_tiff_resolution_and_spacing(tmp_path: Path) -> None:
    path = tmp_path / "ij.tif"
    data = counts((5, 16, 16))
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.13, 1 / 0.13),
                     metadata={"axes": "ZYX", "spacing": 0.4, "unit": "um"})
    image = read_image(path)
    assert image.axes == "ZYX"
    assert image.pixel_sizes == pytest.approx({"X": 0.13, "Y": 0.13, "Z": 0.4}, rel=1e-5)
    assert image.units == {"X": "µm", "Y": "µm", "Z": "µm"}
    np.testing.assert_array_equal(image.data, data)


def test_npy_round_trip_is_memory_mapped(tmp_path: Path) -> None:
    data = counts((4, 10, 12), "int32")
    path = write_image(tmp_path / "a.npy", data, "ZYX")
    image = read_image(path)
    assert isinstance(image.data, np.memmap) and image.axes == "ZYX"
    np.testing.assert_array_equal(image.data, data)
    assert read_image(path, axes="tyx").axes == "TYX"


def test_png_greyscale_round_trip_and_rgb_refused(tmp_path: Path) -> None:
    data = counts((12, 14), "uint16")
    iio.imwrite(tmp_path / "a.png", data)
    image = read_image(tmp_path / "a.png")
    assert image.axes == "YX"
    np.testing.assert_array_equal(image.data, data)
    iio.imwrite(tmp_path / "rgb.png", np.zeros((12, 14, 3), "uint8"))
    with pytest.raises(PhotongapError, match=r"rgb\.png.*RGB images are not photon counts"):
        read_image(tmp_path / "rgb.png")


def test_plain_zarr_is_lazy_with_guessed_axes(tmp_path: Path) -> None:
    data = counts((3, 20, 25), "float32")
    array = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=data.shape, chunks=(1, 8, 8), dtype=data.dtype)
    array[:] = data
    image = read_image(tmp_path / "plain.zarr")
    assert isinstance(image.data, zarr.Array) and image.axes == "ZYX"
    planes = list(iter_planes(image))
    assert [index for index, _ in planes] == [(0,), (1,), (2,)]
    plane = planes[1][1]
    assert plane.shape == (20, 25) and plane.dtype == np.float32
    np.testing.assert_array_equal(plane[3:9, 5:11], data[1, 3:9, 5:11])
    np.testing.assert_array_equal(np.asarray(plane), data[1])
    transposed = dict(iter_planes(read_image(tmp_path / "plain.zarr", axes="ZXY")))[(2,)]
    assert transposed.shape == (25, 20)
    np.testing.assert_array_equal(transposed[2:5, 1:4], data[2].T[2:5, 1:4])
    check_counts(image.data, "plain.zarr")
    array[2, 19, 24] = -1.0
    with pytest.raises(PhotongapError, match="plain.zarr: contains negative values"):
        check_counts(image.data, "plain.zarr")


def test_ome_zarr_round_trip(tmp_path: Path) -> None:
    data = counts((2, 3, 40, 50))
    like = Image(data, "CZYX", tmp_path / "in.tif", {"X": 0.2, "Y": 0.2, "Z": 1.5}, {"X": "µm", "Y": "µm", "Z": "µm"},
                 {"channel_names": ["a", "b"]})
    path = write_image(tmp_path / "out.ome.zarr", data.astype("float32"), "CZYX", like=like, description="gap")
    image = read_image(path)
    assert isinstance(image.data, zarr.Array)
    assert (image.axes, image.pixel_sizes, image.units) == ("CZYX", like.pixel_sizes, like.units)
    assert image.metadata == {"channel_names": ["a", "b"], "description": "gap"}
    np.testing.assert_array_equal(image.data[:], data)
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    assert attrs["multiscales"][0]["version"] == "0.4"
    assert attrs["multiscales"][0]["axes"][0] == {"name": "c", "type": "channel"}


def test_ome_zarr_reads_the_full_resolution_level(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "pyramid.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=(1, 32, 32), dtype="uint8")[:] = 1
    group.create_array("1", shape=(1, 16, 16), dtype="uint8")[:] = 2
    axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    datasets = [{"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.3 * 2**level, 0.3 * 2**level]}]}
                for level in range(2)]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    image = read_image(tmp_path / "pyramid.zarr")
    assert image.shape == (1, 32, 32) and int(image.data[0, 0, 0]) == 1
    assert image.axes == "TYX" and image.pixel_sizes == {"T": 2.0, "Y": 0.3, "X": 0.3}
    assert image.units == {"T": "s", "Y": "µm", "X": "µm"}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_zarr_array_in_gives_plain_array_out(tmp_path: Path, zarr_format: int) -> None:
    data = counts((3, 20, 25))
    source = zarr.open_array(str(tmp_path / "in" / "plain.zarr"), mode="w", shape=data.shape, chunks=(1, 8, 16),
                             dtype=data.dtype, zarr_format=zarr_format)
    source[:] = data
    image = read_image(tmp_path / "in" / "plain.zarr")
    out = denoise_like(image, output_path(image.path, tmp_path / "out"))
    assert out == tmp_path / "out" / "plain.zarr"
    array = zarr.open(str(out), mode="r")
    assert isinstance(array, zarr.Array), "a plain array in must give a plain array out"
    assert array.shape == data.shape and array.chunks == (1, 8, 16) and array.dtype == np.float32
    assert array.metadata.zarr_format == zarr_format
    np.testing.assert_array_equal(array[:], data / 2)
    back = read_image(out)
    assert back.axes == "ZYX" and back.file_format == "zarr" and image.file_format == "zarr"
    assert back.metadata == {"description": "gap"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["plain.zarr"]


def test_plain_zarr_in_other_axis_order_keeps_chunks_per_axis(tmp_path: Path) -> None:
    data = counts((20, 25, 3))
    source = zarr.open_array(str(tmp_path / "yxz.zarr"), mode="w", shape=data.shape, chunks=(4, 16, 1), dtype=data.dtype)
    source[:] = data
    out = denoise_like(read_image(tmp_path / "yxz.zarr", axes="YXZ"), tmp_path / "out.zarr")
    array = zarr.open(str(out), mode="r")
    assert isinstance(array, zarr.Array) and array.shape == (3, 20, 25) and array.chunks == (1, 4, 16)
    np.testing.assert_array_equal(array[:], data.transpose(2, 0, 1) / 2)


@pytest.mark.parametrize("name", ["out.ome.zarr", "out.zarr"])
def test_ome_zarr_in_gives_ome_zarr_out_with_its_metadata_and_final_name(tmp_path: Path, name: str) -> None:
    data = counts((2, 2, 3, 16, 24))
    group = zarr.open_group(str(tmp_path / "cells.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=data.shape, chunks=(1, 1, 1, 16, 24), dtype=data.dtype)[:] = data
    axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
            *({"name": a, "type": "space", "unit": "micrometer"} for a in "zyx")]
    scale = [5.0, 1.0, 0.5, 0.1, 0.1]
    group.attrs["multiscales"] = [{"version": "0.4", "name": "cells", "axes": axes,
                                   "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]
    group.attrs["omero"] = {"channels": [{"label": "dapi"}, {"label": "gfp"}]}
    image = read_image(tmp_path / "cells.ome.zarr")
    out = denoise_like(image, tmp_path / name)

    written = zarr.open(str(out), mode="r")
    assert isinstance(written, zarr.Group)
    multiscales = written.attrs["multiscales"][0]
    assert multiscales["name"] == name, "the NGFF name is the final name, not the temporary one"
    assert multiscales["axes"] == axes
    assert multiscales["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": scale}]
    assert [c["label"] for c in written.attrs["omero"]["channels"]] == ["dapi", "gfp"]
    np.testing.assert_array_equal(written["0"][:], data / 2)
    back = read_image(out)
    assert (back.axes, back.pixel_sizes, back.units) == (image.axes, image.pixel_sizes, image.units) == (
        "TCZYX", {"T": 5.0, "Z": 0.5, "Y": 0.1, "X": 0.1}, {"T": "s", "Z": "µm", "Y": "µm", "X": "µm"})
    assert back.metadata == {"channel_names": ["dapi", "gfp"], "description": "gap"}
    assert image.file_format == back.file_format == "ome-zarr"


def test_large_uncompressed_tiff_is_memory_mapped_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    data = np.zeros((2048, 2048), "uint16")
    data[-1, -1] = 7
    tifffile.imwrite(path, data)
    image = read_image(path)
    assert isinstance(image.data, np.memmap) and image.axes == "YX"
    assert int(image.data[-1, -1]) == 7
    (index, plane), = iter_planes(image)
    assert index == () and isinstance(plane, np.memmap)


# --- finding inputs ----------------------------------------------------------------------


def test_folder_expands_to_its_images_sorted(tmp_path: Path) -> None:
    for name in ("b.tif", "a.npy", "c.ome.tif", ".hidden.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d.zarr").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.tif").write_bytes(b"x")
    assert [p.name for p in find_images([tmp_path])] == ["a.npy", "b.tif", "c.ome.tif", "d.zarr"]
    assert find_images([tmp_path / "b.tif", tmp_path / "d.zarr", tmp_path / "b.tif"]) == [tmp_path / "b.tif", tmp_path / "d.zarr"]


def test_find_images_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(PhotongapError, match="missing.tif: no such file"):
        find_images([tmp_path / "missing.tif"])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(PhotongapError, match=r"notes\.txt: unknown image type '\.txt'"):
        find_images([tmp_path / "notes.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PhotongapError, match="empty: no images"):
        find_images([tmp_path / "empty"])
    with pytest.raises(PhotongapError, match="no input images"):
        find_images([])


# --- bad files ---------------------------------------------------------------------------


def test_truncated_and_garbage_files_give_one_line_errors(tmp_path: Path) -> None:
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, counts((4, 64, 64)), photometric="minisblack")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (tmp_path / "garbage.tif").write_bytes(np.random.default_rng(1).bytes(500))
    (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG nothing")
    (tmp_path / "garbage.zarr").mkdir()
    for name in ("cut.tif", "garbage.tif", "garbage.npy", "garbage.png", "garbage.zarr"):
        with pytest.raises(PhotongapError, match=f"{name}: cannot read it as a") as error:
            read_image(tmp_path / name)
        assert "\n" not in str(error.value)
    with pytest.raises(PhotongapError, match="no such file"):
        read_image(tmp_path / "nothere.tif")


def test_axes_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((3, 8, 8), "uint16"))
    with pytest.raises(PhotongapError, match=r"a\.npy: axes 'YX' has 2 letters for 3 dimensions.*--axes"):
        read_image(tmp_path / "a.npy", axes="YX")
    with pytest.raises(PhotongapError, match="lacks Y or X"):
        read_image(tmp_path / "a.npy", axes="TCZ")
    with pytest.raises(PhotongapError, match="RGB images are not photon counts"):
        read_image(tmp_path / "a.npy", axes="YXS")
    np.save(tmp_path / "line.npy", np.zeros(8, "uint16"))
    with pytest.raises(PhotongapError, match="line.npy: axes .* cannot be guessed"):
        read_image(tmp_path / "line.npy")
    np.save(tmp_path / "rgb.npy", np.zeros((8, 8, 3), "uint8"))
    with pytest.raises(PhotongapError, match="rgb.npy: looks like an RGB image"):
        read_image(tmp_path / "rgb.npy")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), "uint16"), photometric="rgb")
    with pytest.raises(PhotongapError, match="rgb.tif: colour samples"):
        read_image(tmp_path / "rgb.tif")


@pytest.mark.parametrize("frames", [3, 4])
def test_planar_rgb_stack_error_says_how_to_read_it_as_frames(tmp_path: Path, frames: int) -> None:
    path = tmp_path / "stack.tif"
    data = counts((frames, 64, 64))
    tifffile.imwrite(path, data)  # tifffile stores 3 or 4 frames as planar RGB(A)
    with pytest.raises(PhotongapError, match=r"stack\.tif: .*RGB images are not photon counts.*--axes TYX \(or ZYX\)") as error:
        read_image(path)
    assert "\n" not in str(error.value)
    for axes in ("TYX", "ZYX"):
        image = read_image(path, axes=axes)
        assert image.axes == axes and image.shape == data.shape
        np.testing.assert_array_equal(image.data, data)


# --- planes ------------------------------------------------------------------------------


def test_iter_planes_any_axis_order(tmp_path: Path) -> None:
    data = counts((6, 7, 2, 3))  # Y, X, C, Z
    image = Image(data, "YXCZ", tmp_path / "a.npy")
    assert plane_axes_order("YXCZ") == (2, 3, 0, 1)
    assert image.plane_axes == "CZYX" and image.plane_shape == (2, 3, 6, 7)
    planes = dict(iter_planes(image))
    assert sorted(planes) == [(c, z) for c in range(2) for z in range(3)]
    np.testing.assert_array_equal(planes[(1, 2)], data[:, :, 1, 2])
    assert np.shares_memory(planes[(1, 2)], data)  # a view, nothing copied
    single = list(iter_planes(Image(data[:, :, 0, 0], "YX", Path("a"))))
    assert len(single) == 1 and single[0][0] == ()
    transposed = dict(iter_planes(Image(data[:, :, 0, 0], "XY", Path("a"))))
    np.testing.assert_array_equal(transposed[()], data[:, :, 0, 0].T)


# --- writing -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.tif", "out.ome.tif", "out.npy", "out.zarr"])
def test_writer_takes_planes_and_blocks(tmp_path: Path, name: str) -> None:
    data = np.random.default_rng(3).random((2, 30, 40)).astype("float32")
    with ImageWriter(tmp_path / name, data.shape, "ZYX") as writer:
        writer.array[(0,)] = data[0]
        for y0 in range(0, 30, 16):
            writer.array[(1, slice(y0, y0 + 16), slice(0, 40))] = data[1, y0:y0 + 16]
        assert not (tmp_path / name).exists()
        assert writer.partial == io.partial_name(tmp_path / name) and writer.partial.exists()  # atomic_output's
    assert writer.array is None
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / name).data[:]), data)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_writer_failure_leaves_nothing_and_keeps_existing_output(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with ImageWriter(tmp_path / "new.tif", (8, 8), "YX"):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    existing = write_image(tmp_path / "out.tif", np.ones((8, 8), "float32"), "YX")
    before = existing.read_bytes()
    with pytest.raises(PhotongapError, match=r"out\.tif: already exists; pass --overwrite"):
        ImageWriter(existing, (8, 8), "YX")
    with pytest.raises(RuntimeError):
        with ImageWriter(existing, (8, 8), "YX", overwrite=True) as writer:
            writer.array[...] = 5
            raise RuntimeError("half written")
    assert existing.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]
    write_image(existing, np.full((8, 8), 2, "float32"), "YX", overwrite=True)
    assert float(read_image(existing).data[0, 0]) == 2.0


def test_overwriting_a_zarr_folder_replaces_it(tmp_path: Path) -> None:
    path = write_image(tmp_path / "o.zarr", np.ones((4, 4), "float32"), "YX")
    write_image(path, np.full((3, 5), 2, "float32"), "YX", overwrite=True)
    image = read_image(path)
    assert image.shape == (3, 5) and float(image.data[0, 0]) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]


def test_writer_creates_the_parent_folder_and_refuses_png(tmp_path: Path) -> None:
    path = write_image(tmp_path / "deep" / "er" / "a.npy", np.zeros((2, 2)), "YX")
    assert path.exists()
    with pytest.raises(PhotongapError, match="a.png: cannot write this type"):
        ImageWriter(tmp_path / "a.png", (2, 2), "YX")


def test_released_pages_leave_the_process_and_keep_their_values(tmp_path: Path, resident_kb) -> None:
    values = np.arange(1 << 22, dtype=np.float32).reshape(64, 256, 256)  # 16 MB
    written = np.lib.format.open_memmap(tmp_path / "w.npy", mode="w+", dtype=np.float32, shape=values.shape)
    written[...] = values
    assert resident_kb(tmp_path / "w.npy") > 15_000
    release_pages(written[3])  # a view hands back the whole map
    assert resident_kb(tmp_path / "w.npy") < 100
    assert np.array_equal(written, values)  # mapped again from the page cache
    release_pages(written)
    written.flush()
    del written
    assert np.array_equal(np.load(tmp_path / "w.npy"), values)
    read = np.load(tmp_path / "w.npy", mmap_mode="r")
    assert float(read[10:20].sum()) == float(values[10:20].sum()) and resident_kb(tmp_path / "w.npy") > 2_000
    release_pages(read[10:20])
    assert resident_kb(tmp_path / "w.npy") < 100
    private = np.load(tmp_path / "w.npy", mmap_mode="c")
    private[0] = -1.0  # copy-on-write: releasing would lose this, so it is left alone
    release_pages(private)
    assert float(private[0].max()) == -1.0 and np.array_equal(np.load(tmp_path / "w.npy"), values)
    release_pages(values)  # in memory: nothing to do
    release_pages(zarr.zeros((4, 4)))


def test_writer_memory_map_hands_back_pages(tmp_path: Path, resident_kb) -> None:
    with ImageWriter(tmp_path / "out.tif", (16, 512, 512), "ZYX") as writer:
        for z in range(16):
            writer.array[z] = z
            release_pages(writer.array[z])
        assert resident_kb(writer.partial) < 100
    assert np.array_equal(tifffile.imread(tmp_path / "out.tif")[:, 0, 0], np.arange(16, dtype=np.float32))


# --- output paths ------------------------------------------------------------------------


def test_output_path_keeps_the_extension_family(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert output_path(Path("in/a.tiff"), out, "_gap", 3) == out / "a_gap.tif"
    assert output_path(Path("in/a.OME.TIF"), out, "_gap", 3) == out / "a_gap.ome.tif"
    assert output_path(Path("in/a.npy"), out, n_inputs=2) == out / "a.npy"
    assert output_path(Path("in/a.png"), out) == out / "a.tif"
    assert output_path(Path("in/a.ome.zarr"), out, "_s") == out / "a_s.ome.zarr"
    assert output_path(Path("in/a.tif"), tmp_path / "b.npy") == tmp_path / "b.npy"
    with pytest.raises(PhotongapError, match="b.tif: 2 inputs need an output folder"):
        output_path(Path("in/a.tif"), tmp_path / "b.tif", n_inputs=2)
    (tmp_path / "a.tif").write_bytes(b"")
    with pytest.raises(PhotongapError, match="would replace its input"):
        output_path(tmp_path / "a.tif", tmp_path)


def test_output_paths_keep_dotted_names_distinct(tmp_path: Path) -> None:
    out = tmp_path / "out"
    inputs = [Path("in/cell.1.tif"), Path("in/cell.2.tif"), Path("in/cell.ome.tiff")]
    assert output_paths(inputs, out, "_mean") == [out / "cell.1_mean.tif", out / "cell.2_mean.tif", out / "cell_mean.ome.tif"]
    assert output_paths(inputs[:1], tmp_path / "x.npy") == [tmp_path / "x.npy"]
    assert output_paths(inputs[:2], out, ("_samples", "_mean"), extension=".tif") == [
        (out / "cell.1_samples.tif", out / "cell.1_mean.tif"), (out / "cell.2_samples.tif", out / "cell.2_mean.tif")]
    assert output_paths([Path("in/a.zarr")], out, "_s", extension="npy") == [out / "a_s.npy"]


def test_output_paths_refuse_two_inputs_with_one_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(PhotongapError, match=r"a/cell\.tif and .*b/cell\.tif would both be written to .*out/cell_gap\.tif") as error:
        output_paths([Path("a/cell.tif"), Path("b/cell.tif")], out, "_gap")
    assert "\n" not in str(error.value)
    with pytest.raises(PhotongapError, match=r"cell\.png and .*cell\.tiff would both be written to .*cell\.tif"):
        output_paths([Path("a/cell.png"), Path("a/cell.tiff")], out)
    with pytest.raises(PhotongapError, match="given twice"):
        output_paths([Path("a/cell.tif"), Path("a/../a/cell.tif")], out)
    with pytest.raises(PhotongapError, match=r"x\.tif: 2 outputs per input need an output folder"):
        output_paths([Path("a/cell.tif")], tmp_path / "x.tif", ("_mean", "_std"))
    with pytest.raises(PhotongapError, match="b.tif: 2 inputs need an output folder"):
        output_paths([Path("a.tif"), Path("c.tif")], tmp_path / "b.tif")


def test_output_paths_refuse_to_replace_another_input(tmp_path: Path) -> None:
    # a.png denoised into its own folder would become a.tif: the other input.
    with pytest.raises(PhotongapError, match=r"a\.tif: the output of .*a\.png would replace the input .*a\.tif"):
        output_paths([tmp_path / "a.png", tmp_path / "a.tif"], tmp_path, "")
    with pytest.raises(PhotongapError, match="would replace"):
        output_paths([tmp_path / "a.tif", tmp_path / "a_mean.tif"], tmp_path, "_mean")
    assert output_paths([tmp_path / "a.tif", tmp_path / "b.tif"], tmp_path, "_gap") == [tmp_path / "a_gap.tif", tmp_path / "b_gap.tif"]


# --- imports -----------------------------------------------------------------------------


def test_io_imports_no_torch_and_zarr_only_for_zarr_files(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", counts((8, 8)))
    np.save(tmp_path / "b.npy", counts((8, 8)))
    script = """
import sys
import photongap.io as io
heavy = lambda: sorted(m for m in ("torch", "lightning", "matplotlib", "zarr") if m in sys.modules)
for name in sys.argv[1:]:
    io.write_image(name + ".out.tif", io.read_image(name).data, "YX")
print(heavy())
io.read_image(io.write_image(sys.argv[1] + ".zarr", io.read_image(sys.argv[1]).data, "YX"))
print(heavy())
"""
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.tif"), str(tmp_path / "b.npy")],
                            capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["[]", "['zarr']"]

