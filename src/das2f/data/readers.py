"""Scene readers: GeoTIFF (georeferencing kept), MATLAB .mat (v5 and v7.3), NumPy .npy.

Every reader returns a :class:`Raster`: ``data`` as (C, H, W) for images, (H, W) for label maps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..runtime.errors import DataError, MissingFileError
from .nodata import declared, filled, valid_pixels

KNOWN_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.float32, np.float64)


class SceneError(DataError):
    """A scene file that cannot be used; the message names the file, the value and what was expected."""


@dataclass
class Raster:
    data: np.ndarray
    path: Path
    profile: dict = field(default_factory=dict)  # rasterio profile (crs, transform) when georeferenced
    valid: np.ndarray | None = None  # (H, W) True where the image holds data (das2f.data.nodata); None: everywhere

    @property
    def georeferenced(self) -> bool:
        return bool(self.profile.get("crs"))


def _channels_first(arr: np.ndarray, path: Path, band_axis: int | None) -> np.ndarray:
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise SceneError(f"{path}: image has shape {arr.shape}, expected 2 or 3 dimensions")
    if band_axis is None:  # the band axis is the one much smaller than the two spatial ones
        band_axis = int(np.argmin(arr.shape))
        if arr.shape[band_axis] > 64:
            raise SceneError(f"{path}: cannot tell the band axis of shape {arr.shape}; set band_axis explicitly")
    return np.moveaxis(arr, band_axis, 0)


def _read_mat(path: Path, key: str | None) -> np.ndarray:
    try:
        from scipy.io import loadmat

        content = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    except NotImplementedError:  # v7.3 is HDF5; MATLAB stores arrays transposed
        with h5py.File(path, "r") as f:
            content = {k: np.asarray(f[k]).T for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    arrays = {k: v for k, v in content.items() if isinstance(v, np.ndarray) and v.ndim >= 2}
    return arrays[mat_key(path, arrays, key)]


def mat_key(path: Path, arrays, key: str | None) -> str:
    """The array of a .mat file to read: ``key``, or its only array of 2 or more dimensions."""
    if key is None:
        if len(arrays) != 1:
            raise SceneError(f"{path}: holds arrays {sorted(arrays)}; name one with `key`")
        key = next(iter(arrays))
    if key not in arrays:
        raise SceneError(f"{path}: no array {key!r}; it holds {sorted(arrays)}")
    return key


def read_color_labels(path: Path, color_table: dict | None) -> np.ndarray:
    """A colour-coded label PNG -> (H, W) label values.

    Palette PNGs give their palette indices; with ``color_table`` ({value: [r, g, b]}) an RGB(A) PNG
    is mapped colour by colour, and a colour not in the table is an error naming it and its count.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P" and not color_table:
            return np.asarray(im).astype(np.int32)
        if not color_table:
            raise SceneError(f"{path}: a {im.mode} label image needs `color_table` ({{value: [r, g, b]}}) in the "
                             "dataset's scene entry, or a palette (mode P) PNG")
        rgb = np.asarray(im.convert("RGB")).astype(np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    lut = {(int(r) << 16) | (int(g) << 8) | int(b): int(v) for v, (r, g, b) in dict(color_table).items()}
    found, counts = np.unique(codes, return_counts=True)
    unknown = [(tuple(int(x) for x in ((c >> 16) & 255, (c >> 8) & 255, c & 255)), int(n))
               for c, n in zip(found, counts) if int(c) not in lut]
    if unknown:
        raise SceneError(f"{path}: colours {unknown[:5]} (colour, pixels) are not in color_table; "
                         f"expected only {sorted(dict(color_table).items())}")
    out = np.empty(codes.shape, np.int32)
    for code, value in lut.items():
        out[codes == code] = value
    return out


def _read_file(path: Path, key: str | None, label: bool, color_table: dict | None, band_axis: int | None
               ) -> tuple[np.ndarray, dict, int | None, np.ndarray | None]:
    """The array of a file as stored, its georeferencing (crs and transform, or {}), its band axis if known and
    the GeoTIFF's own valid-data mask (das2f.data.nodata.declared; None: every pixel)."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import warnings

        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():  # an image without georeferencing is fine: profile stays empty
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
        with src:
            arr = src.read()  # (C, H, W)
            profile = {"crs": src.crs, "transform": src.transform} if src.crs is not None else {}
            mask = None if label else declared(src)
        return arr, profile, 0, mask
    if suffix == ".mat":
        return _read_mat(path, key), {}, band_axis, None
    if suffix == ".npy":
        return np.load(path, mmap_mode="r"), {}, band_axis, None
    if suffix == ".png" and label:
        return read_color_labels(path, color_table), {}, band_axis, None
    raise SceneError(f"{path}: unknown format {suffix!r}, expected .tif, .tiff, .mat or .npy (or .png for label maps)")


def read_raster(path: str | Path, *, key: str | None = None, band_axis: int | None = None,
                bands: list[int] | None = None, label: bool = False, color_table: dict | None = None,
                nodata: float | None = None) -> Raster:
    """Read an image (-> (C, H, W)) or, with ``label=True``, a label map (-> (H, W)); label maps may
    also be colour-coded PNGs (see :func:`read_color_labels`). An image's nodata pixels (das2f.data.nodata: the
    GeoTIFF's mask, NaN, the ``nodata`` value) are marked in ``valid`` and filled with their band's mean."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"scene file not found: {path}")
    arr, profile, band_axis, mask = _read_file(path, key, label, color_table, band_axis)
    arr = np.asarray(arr)
    if not any(arr.dtype == d for d in KNOWN_DTYPES):
        raise SceneError(f"{path}: dtype {arr.dtype}, expected one of {[np.dtype(d).name for d in KNOWN_DTYPES]}")
    if label:
        arr = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr
        if arr.ndim != 2:
            raise SceneError(f"{path}: label map has shape {arr.shape}, expected (H, W)")
        return Raster(arr, path, profile)
    arr = _channels_first(arr, path, band_axis)
    if bands is not None:
        arr = arr[list(bands)]
    valid = valid_pixels(arr, mask, nodata)
    return Raster(np.ascontiguousarray(filled(arr, valid)), path, profile, valid)
