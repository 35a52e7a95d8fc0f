"""Images on disk: the only package that knows files, paths, formats and axes strings.

Reads TIFF / OME-TIFF / ImageJ TIFF, ``.npy``, greyscale PNG and Zarr / OME-Zarr into an
:class:`Image` whose data stay as stored (memory-mapped or lazy where the format allows, so
a 16384 x 16384 image is never loaded whole), and writes results piece by piece and
atomically with :class:`ImageWriter`. What the values mean (photon counts or camera units)
is :mod:`photongap.camera`'s business.

Axes are strings of one letter per dimension from ``TCZYXS``. Without metadata the
guesses are ``YX`` (2D), ``ZYX`` (3D), ``CZYX`` (4D) and ``TCZYX`` (5D); a 3D time series
or channel stack needs ``axes=`` (``--axes`` on the command line).

Modules: :mod:`~photongap.io.files` (suffixes, finding inputs, output names,
:func:`atomic_output`), :mod:`~photongap.io.image` (:class:`Image` and its planes),
:mod:`~photongap.io.readers`, :mod:`~photongap.io.metadata` (OME, ImageJ, NGFF) and
:mod:`~photongap.io.writers`. Zarr is imported only when a Zarr file is read or written.
"""

from photongap.io.files import (
    IMAGE_SUFFIXES,
    atomic_output,
    check_new_outputs,
    find_images,
    output_path,
    output_paths,
    partial_name,
    remove_partials,
)
from photongap.io.image import AXES, Image, LazyPlane, LazyVolume, iter_planes, iter_volumes, plane_axes_order, volume_axis
from photongap.io.readers import MEMMAP_MIN_BYTES, read_image
from photongap.io.writers import ImageWriter, write_image

__all__ = [
    "AXES",
    "IMAGE_SUFFIXES",
    "MEMMAP_MIN_BYTES",
    "Image",
    "ImageWriter",
    "LazyPlane",
    "LazyVolume",
    "atomic_output",
    "check_new_outputs",
    "find_images",
    "iter_planes",
    "iter_volumes",
    "output_path",
    "output_paths",
    "partial_name",
    "plane_axes_order",
    "read_image",
    "remove_partials",
    "volume_axis",
    "write_image",
]
