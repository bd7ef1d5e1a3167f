"""Nodata: pixels of an image that hold no measurement (the black border outside a satellite's swath).

One home for the rule, used by training's preparation and by maps alike. A pixel of an MS or PAN image is
nodata where

- the GeoTIFF says so (its nodata value in every band, its mask band or alpha band: GDAL's dataset mask),
- any band is NaN or infinite,
- every band holds the scene's ``nodata:`` value (any file format).

An MS pixel is nodata on the scene's grid (:func:`on_ms_grid`) where the MS pixel or any PAN pixel under it is
nodata: such a pixel is never a sample centre, never enters the normalisation statistics, and is left
unclassified in a map. Inside a patch that reaches into nodata, a nodata pixel reads as its band's mean over the
image's valid pixels (:func:`fill`), as constant as a border can be and close to 0 after normalisation.
"""
from __future__ import annotations

import numpy as np


def declares_mask(src) -> bool:
    """Whether an open rasterio file declares a mask (nodata value, mask band, alpha), by its flags alone."""
    from rasterio.enums import MaskFlags

    return not all(MaskFlags.all_valid in flags for flags in src.mask_flag_enums)


def declared(src, window=None) -> np.ndarray | None:
    """GDAL's dataset mask of an open rasterio file (nodata value, mask band, alpha) as (h, w) bool, True where
    valid; None when the file declares every pixel valid."""
    return src.dataset_mask(window=window) > 0 if declares_mask(src) else None


def may_hold_nodata(dtype, declares: bool, value) -> bool:
    """Whether an image can hold nodata at all: without a mask, a nodata value or floats, no pixel needs a look."""
    return declares or value is not None or np.dtype(dtype).kind == "f"


def valid_pixels(data: np.ndarray, mask: np.ndarray | None = None, value=None) -> np.ndarray | None:
    """(h, w) True where an image (C, h, w) holds data: the file's ``mask``, every band finite, not ``value`` in
    every band. None when every pixel is valid."""
    valid = mask
    if data.dtype.kind == "f":
        valid = _and(valid, np.isfinite(data).all(0))
    if value is not None:
        valid = _and(valid, (data != value).any(0))
    return None if valid is None or valid.all() else valid


def _and(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    return b if a is None else a & b


def on_ms_grid(ms_valid: np.ndarray | None, pan_valid: np.ndarray | None, ratio: int) -> np.ndarray | None:
    """(H, W) True where the MS pixel and every PAN pixel under it are valid; None when all are."""
    valid = ms_valid
    if pan_valid is not None:
        h, w = pan_valid.shape[0] // ratio, pan_valid.shape[1] // ratio
        valid = _and(valid, pan_valid.reshape(h, ratio, w, ratio).all((1, 3)))
    return None if valid is None or valid.all() else valid


class BandSums:
    """Per-band sums and counts of valid pixels, accumulated region by region; exact for integer images (int64
    sums), so that a scene read whole and one read by windows get the same fill."""

    def __init__(self, bands: int, dtype):
        self.dtype = np.dtype(dtype)
        self.sum = np.zeros(bands, np.int64 if self.dtype.kind in "iu" else np.float64)
        self.count = 0

    def add(self, data: np.ndarray, valid: np.ndarray | None) -> None:
        pixels = data.reshape(data.shape[0], -1) if valid is None else data[:, valid]
        self.sum += pixels.sum(1, dtype=self.sum.dtype)
        self.count += pixels.shape[1]

    def means(self) -> np.ndarray:
        """The fill per band, in the image's dtype (rounded for integers; 0 where no pixel is valid)."""
        mean = self.sum / max(self.count, 1)
        return (np.round(mean) if self.dtype.kind in "iu" else mean).astype(self.dtype)


def fill(data: np.ndarray, valid: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """``data`` (C, h, w) with its nodata pixels set to ``values`` (one per band); ``data`` itself when all valid."""
    if valid is None:
        return data
    out = np.array(data)
    out[:, ~valid] = np.asarray(values, out.dtype)[:, None]
    return out


def filled(data: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """A whole image with its nodata pixels set to the band means over its valid pixels."""
    if valid is None:
        return data
    sums = BandSums(data.shape[0], data.dtype)
    sums.add(data, valid)
    return fill(data, valid, sums.means())


def map_nodata(class_values) -> int:
    """The value a map writes where there is no data: the smallest non-negative integer that is no class value."""
    used = {int(v) for v in class_values}
    return next(v for v in range(len(used) + 1) if v not in used)
