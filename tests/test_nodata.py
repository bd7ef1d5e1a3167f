"""Nodata (das2f.data.nodata): a GeoTIFF's nodata value or mask, NaN and a scene's `nodata:` value mark pixels that
are never sample centres, never enter the statistics, and read as their band's mean inside a patch; a map read
window by window sees the same."""
import h5py
import numpy as np
import pytest

from das2f.data.prepare import prepare_dataset
from das2f.data.readers import read_raster
from das2f.data.windows import LazyImage, open_scene, window_patches

from .test_labels import dataset, geotiff

ORIGIN = (500000.0, 4000000.0)
BORDER = 4  # MS columns of nodata on the left of the scene


def bordered_scene(tmp_path, nodata_in_file: bool = True) -> dict:
    """A georeferenced 16 x 16 MS (values >= 100) + PAN scene whose first BORDER MS columns (and their PAN columns)
    are 0, declared nodata in the GeoTIFFs (or not: then the scene's `nodata: 0` says it); every pixel labelled."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    ms = rng.integers(100, 1000, (3, 16, 16), dtype=np.uint16)
    pan = rng.integers(100, 1000, (1, 64, 64), dtype=np.uint16)
    ms[:, :, :BORDER], pan[:, :, :4 * BORDER] = 0, 0
    label = np.repeat(np.arange(4, dtype=np.uint8), 64).reshape(16, 16)  # classes 0..3, 4 rows each, border too
    files = {}
    for name, arr, pixel in (("ms", ms, 4.0), ("pan", pan, 1.0)):
        files[name] = str(tmp_path / f"{name}.tif")
        with rasterio.open(files[name], "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2],
                           count=arr.shape[0], dtype=arr.dtype, crs="EPSG:32650", transform=from_origin(*ORIGIN, pixel, pixel),
                           nodata=0 if nodata_in_file else None) as dst:
            dst.write(arr)
    files["label"] = geotiff(tmp_path / "label.tif", label, "EPSG:32650", ORIGIN, 4.0)
    return {"name": "border", **files, **({} if nodata_in_file else {"nodata": 0})}


def test_readers_mark_and_fill_nodata(tmp_path):
    """A GeoTIFF's nodata value, NaN, and the scene's value each mark their pixels and read as the band's mean."""
    spec = bordered_scene(tmp_path)
    ms = read_raster(spec["ms"])
    assert ms.valid.shape == (16, 16) and not ms.valid[:, :BORDER].any() and ms.valid[:, BORDER:].all()
    with __import__("rasterio").open(spec["ms"]) as src:
        raw = src.read()
    means = np.round(raw[:, :, BORDER:].reshape(3, -1).mean(1)).astype(np.uint16)
    assert (ms.data[:, :, :BORDER] == means[:, None, None]).all() and (ms.data[:, :, BORDER:] == raw[:, :, BORDER:]).all()
    # NaN (refused before) is nodata in any format; so is a scene's value, in every band
    data = np.full((2, 5, 5), 7.0, np.float32)
    data[1, 0, 0], data[:, 4, 4] = np.nan, 3.0
    np.save(tmp_path / "f.npy", data)
    nan = read_raster(tmp_path / "f.npy", band_axis=0)
    assert not nan.valid[0, 0] and nan.valid.sum() == 24 and np.isfinite(nan.data).all()
    assert read_raster(tmp_path / "f.npy", band_axis=0, nodata=3.0).valid.sum() == 23
    assert np.argwhere(read_raster(tmp_path / "f.npy", band_axis=0, nodata=7.0).valid).tolist() == [[4, 4]]


@pytest.mark.parametrize("nodata_in_file", [True, False])
def test_no_sample_centre_and_no_statistic_in_nodata(tmp_path, nodata_in_file):
    """Every pixel is labelled, the border too: no split draws a centre there, the training statistics leave it out
    (min >= 100), and patches reaching into it read the band's mean, never the raw 0."""
    cfg = dataset(tmp_path, [bordered_scene(tmp_path, nodata_in_file)], class_values=[0, 1, 2, 3], ignore_value=None,
                  split={"train": 0.5, "val": 0.2, "test": "rest"}, ms_patch=8)
    import io

    from rich.console import Console

    from das2f.data.prepare import inspect_dataset

    log = io.StringIO()
    inspect_dataset(cfg, console=Console(file=log))  # a log file: one line per scene, the nodata count in it
    assert "uint16 / uint16 | 64 |" in log.getvalue()
    paths = prepare_dataset(cfg)
    for split, path in paths.items():
        with h5py.File(path, "r") as f:
            assert len(f["coord"]) and (f["coord"][:, 1] >= BORDER).all(), split
            assert (f["ms"][:] > 0).all() and (f["pan"][:] > 0).all(), split
            if split == "train":
                assert (f.attrs["ms_min"] >= 100).all() and (f.attrs["pan_min"] >= 100).all()
                assert (f.attrs["ms_mean"] > 400).all()  # the 0s would pull the mean of U(100, 1000) to ~410
                assert f.attrs["scenes"] and "nodata_pixels" in f.attrs["scenes"]
    # the number of samples is that of the valid pixels: 16 x 12 of 16 x 16
    assert sum(len(h5py.File(p, "r")["coord"]) for p in paths.values()) == 16 * (16 - BORDER)


def test_a_map_sees_the_nodata_the_preparation_sees(tmp_path):
    """Window by window (a GeoTIFF read through windows) or whole (align: the scene in memory): the same patches
    as the preparation, the same valid pixels."""
    spec = bordered_scene(tmp_path)
    for s in (spec, dict(spec, align=True)):
        ms, pan = open_scene(s, 4)
        for img in (ms, pan):
            img.fill = img.fill_values() if img.may_hold_nodata else None
        m, p, _, valid = window_patches(ms, pan, 0, 16, 0, 16, 8, 4)
        assert valid is not None and not valid[:, :BORDER].any() and valid[:, BORDER:].all()
        whole = read_raster(spec["ms"])
        assert (m > 0).all() and (p > 0).all() and (m[0, :, 3, 3] == whole.data[:, 0, 0]).all()
    assert LazyImage(spec["label"]).may_hold_nodata is False  # a plain file needs no look at its pixels
