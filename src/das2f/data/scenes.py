"""Scene specifications from the dataset config, loaded and validated one at a time."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .nodata import on_ms_grid
from .readers import Raster, SceneError, read_raster

SCENE_KEYS = ("name", "kind", "ms", "pan", "image", "label", "train", "val", "test", "ms_key", "pan_key", "label_key",
              "train_key", "val_key", "test_key", "ms_bands", "band_axis", "color_table", "split", "align",
              "align_resampling", "nodata")  # what a scene entry of a dataset config may hold (docs/own-dataset.md)
LABEL_MAPS = ("label", "train", "val", "test")  # a scene's label map keys


@dataclass
class Scene:
    name: str
    ms: Raster  # (C, H, W)
    pan: Raster  # (1, rH, rW)
    maps: dict[str, np.ndarray]  # "label" (one map to split) or "train"/"test" ready-made maps, (H, W)
    # per label file as read (before any resampling): {path: {value: pixel count}}, for the label checks
    label_values: dict[str, dict[int, int]] = field(default_factory=dict)
    labels: dict[str, Raster] = field(default_factory=dict)  # the label files as read (their georeferencing)
    valid: np.ndarray | None = None  # (H, W) True where MS and PAN hold data (das2f.data.nodata); None: everywhere

    def files(self) -> list[Raster]:
        """Every file of the scene: MS, PAN, then the label maps."""
        return [self.ms, self.pan, *self.labels.values()]

    @property
    def nodata_pixels(self) -> int:
        """MS pixels without data (MS or PAN)."""
        return 0 if self.valid is None else int((~self.valid).sum())

    def exclude_nodata(self, values: list[int]) -> int:
        """Set the label maps' nodata pixels to a value that is no class, so that no split draws a sample centre
        there; returns how many labelled pixels (of a class) that took."""
        if self.valid is None:
            return 0
        lost = 0
        for m, lab in self.maps.items():
            lost += int(np.isin(lab[~self.valid], values).sum())
            self.maps[m] = np.where(self.valid, lab, no_class_value(lab.dtype, values)).astype(lab.dtype)
        return lost


def no_class_value(dtype, values: list[int]):
    """A value of ``dtype`` that is no class value (NaN for floats)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.nan
    used, info = {int(v) for v in values}, np.iinfo(dtype)
    return next(v for v in range(int(info.max), int(info.min) - 1, -1) if v not in used)


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def wald_from_rgb(path: Path, ratio: int) -> tuple[Raster, Raster]:
    """Wald's protocol for an RGB tile: PAN = band mean at full resolution, MS = ratio x ratio block mean."""
    rgb = read_raster(path)
    c, h, w = rgb.data.shape
    h, w = h - h % ratio, w - w % ratio
    img = rgb.data[:, :h, :w].astype(np.float32)
    pan = np.round(img.mean(0, keepdims=True)).astype(rgb.data.dtype)
    ms = np.round(img.reshape(c, h // ratio, ratio, w // ratio, ratio).mean((2, 4))).astype(rgb.data.dtype)
    return Raster(ms, path), Raster(pan, path)


def block_mode(label: np.ndarray, ratio: int) -> np.ndarray:
    """Label map at 1/ratio resolution: the most frequent value of each ratio x ratio block (ties: lowest)."""
    h, w = label.shape[0] // ratio, label.shape[1] // ratio
    blocks = label[: h * ratio, : w * ratio].reshape(h, ratio, w, ratio).transpose(0, 2, 1, 3).reshape(h * w, -1)
    counts = np.zeros((h * w, int(label.max()) + 1), np.int32)
    np.add.at(counts, (np.repeat(np.arange(h * w), ratio * ratio), blocks.ravel().astype(np.int64)), 1)
    return counts.argmax(1).astype(label.dtype).reshape(h, w)


def load_scene(spec: dict, ratio: int) -> Scene:
    """Read one scene described by ``spec`` (a dict from the dataset config)."""
    kind = spec.get("kind", "files")
    maps, found, labels = {}, {}, {}
    if kind == "wald_rgb":
        ms, pan = wald_from_rgb(Path(spec["image"]), ratio)
        lab = read_raster(spec["label"], label=True)
        found[str(lab.path)] = value_counts(lab.data)
        maps["label"] = block_mode(lab.data, ratio)
    elif kind == "files":
        nodata = spec.get("nodata")
        ms = read_raster(spec["ms"], key=spec.get("ms_key"), band_axis=spec.get("band_axis"), bands=spec.get("ms_bands"),
                         nodata=nodata)
        pan = read_raster(spec["pan"], key=spec.get("pan_key"), band_axis=spec.get("band_axis"), nodata=nodata)
        for m in LABEL_MAPS:
            if spec.get(m):
                lab = read_label(spec, m)
                found[str(lab.path)] = value_counts(lab.data)
                maps[m], labels[m] = lab.data, lab
    else:
        raise SceneError(f"scene {spec.get('name')}: unknown kind {kind!r}, expected 'files' or 'wald_rgb'")
    if spec.get("align"):
        ms, pan, labels = align(ms, pan, labels, ratio, spec.get("align_resampling", "bilinear"))
        maps = {m: lab.data for m, lab in labels.items()}
    h, w = ms.data.shape[1:]
    fits = pan.data.shape[1:] == (ratio * h, ratio * w)  # (sizes that do not fit are refused by validate_scene)
    valid = on_ms_grid(ms.valid, pan.valid, ratio) if fits else None
    return Scene(spec.get("name", Path(str(ms.path)).stem), ms, pan, maps, found, labels, valid)


def read_label(spec: dict, m: str) -> Raster:
    """A scene's label map ``m`` (one of LABEL_MAPS) as its spec describes it."""
    return read_raster(spec[m], key=spec.get(f"{m}_key"), label=True, color_table=spec.get("color_table"))


def value_counts(label: np.ndarray) -> dict[int, int]:
    """{label value: pixel count} of a label map."""
    values, counts = np.unique(label, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def validate_scene(scene: Scene, ratio: int, require_labels: bool = True) -> None:
    """The same ground (:func:`check_georeferencing`), PAN exactly ratio x the MS size, one PAN band, label maps the
    MS size (and present, unless not required)."""
    check_georeferencing(scene, ratio)  # first: a grid mismatch explains a size mismatch
    c, h, w = scene.ms.data.shape
    if scene.pan.data.shape[0] != 1:
        raise SceneError(f"{scene.pan.path}: PAN has {scene.pan.data.shape[0]} bands, expected 1")
    if scene.pan.data.shape[1:] != (ratio * h, ratio * w):
        raise SceneError(
            f"{scene.pan.path}: PAN size {scene.pan.data.shape[1:]}, expected {(ratio * h, ratio * w)} "
            f"({ratio}x the MS size {(h, w)} of {scene.ms.path})"
        )
    for name, m in scene.maps.items():
        if m.shape != (h, w):
            raise SceneError(f"scene {scene.name}: {name} map has size {m.shape}, expected the MS size {(h, w)}")
    if require_labels and not scene.maps:
        raise SceneError(f"scene {scene.name}: no label map (set `label`, or `train` and `test`)")


def pixel_size(r: Raster) -> tuple[float, float]:
    t = r.profile["transform"]
    return abs(t.a), abs(t.e)


def extent(r: Raster) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) in the file's CRS."""
    from rasterio.transform import array_bounds

    h, w = r.data.shape[-2:]
    west, south, east, north = array_bounds(h, w, r.profile["transform"])
    return west, south, east, north


def check_georeferencing(scene: Scene, ratio: int) -> None:
    """Georeferenced files of a scene must cover the same ground: one CRS, extents within half an MS pixel of the
    MS's, PAN's pixel size the MS's / ratio, label maps on the MS grid (same pixel size and origin). Files without
    georeferencing (.mat, .npy, PNG, a GeoTIFF without CRS) keep the size checks only; a scene may not mix both.
    Each mismatch is one error naming the files, both values and the way out (``align: true``)."""
    files = scene.files()
    plain_files = [str(r.path) for r in files if not r.georeferenced]
    if len(plain_files) == len(files):
        return
    if plain_files:
        geo = [str(r.path) for r in files if r.georeferenced]
        raise SceneError(f"scene {scene.name}: {', '.join(geo)} georeferenced (CRS), {', '.join(plain_files)} not: "
                         "give every file of a scene a CRS, or none")
    ms, fix = scene.ms, "set `align: true` on the scene to resample onto the MS grid"
    px, py = pixel_size(ms)
    for r in files[1:]:
        if r.profile["crs"] != ms.profile["crs"]:
            raise SceneError(f"{r.path}: CRS {r.profile['crs']}, expected the MS's {ms.profile['crs']} ({ms.path}); {fix}")
    want = (px / ratio, py / ratio)
    got = pixel_size(scene.pan)
    if any(abs(g - e) > 1e-6 * e for g, e in zip(got, want)):
        raise SceneError(f"{scene.pan.path}: pixel size {got[0]:g} x {got[1]:g}, expected the MS's / {ratio}: "
                         f"{want[0]:g} x {want[1]:g} ({ms.path}: {px:g} x {py:g}); {fix}")
    for r in files[1:]:
        shift = max(abs(a - b) for a, b in zip(extent(r), extent(ms)))
        if shift > min(px, py) / 2:
            box = lambda r: "(" + ", ".join(f"{v:.2f}" for v in extent(r)) + ")"  # noqa: E731
            raise SceneError(f"{r.path}: extent {box(r)}, expected the MS's {box(ms)} ({ms.path}) within half an MS "
                             f"pixel ({min(px, py) / 2:g}); it is off by {shift:g}; {fix}")
    for r in scene.labels.values():
        if any(abs(g - e) > 1e-6 * e for g, e in zip(pixel_size(r), (px, py))):
            raise SceneError(f"{r.path}: pixel size {pixel_size(r)[0]:g} x {pixel_size(r)[1]:g}, expected the MS "
                             f"grid's {px:g} x {py:g} ({ms.path}): label maps sit on the MS grid; {fix}")


def must_be_georeferenced(r: Raster) -> None:
    if not r.georeferenced:
        raise SceneError(f"{r.path}: `align: true` needs georeferenced files (a CRS and a transform); this one has none")


def warp(r: Raster, shape: tuple[int, ...], transform, crs, how) -> Raster:
    """``r`` resampled onto a grid (``shape``, ``transform``, ``crs``) with rasterio's ``how``; its valid mask (and
    the part the file does not cover) onto it by nearest: None where ``r`` has no mask."""
    from rasterio.warp import Resampling, reproject

    def onto(data: np.ndarray, out: np.ndarray, how) -> np.ndarray:
        reproject(data, out, src_transform=r.profile["transform"], src_crs=r.profile["crs"], dst_transform=transform,
                  dst_crs=crs, resampling=how)
        return out

    out = onto(r.data, np.zeros(shape, r.data.dtype), how)
    valid = None
    if r.valid is not None:
        valid = onto(r.valid.astype(np.uint8), np.zeros(shape[-2:], np.uint8), Resampling.nearest) > 0
    return Raster(out, r.path, {"crs": crs, "transform": transform}, valid)


def labels_onto(spec: dict, profile: dict, shape: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """An aligned scene's label maps on the grid its images were aligned to for a map (``profile``'s crs and
    transform, ``shape``: MS rows, cols), by nearest: [(values, covered)], covered False where a label file does
    not reach (a map covers what MS and PAN cover; its labels may cover less)."""
    from rasterio.warp import Resampling

    out = []
    for m in (m for m in LABEL_MAPS if spec.get(m)):
        lab = read_label(spec, m)
        must_be_georeferenced(lab)
        covered = Raster(lab.data, lab.path, lab.profile, np.ones(lab.data.shape, bool))
        on_grid = warp(covered, shape, profile["transform"], profile["crs"], Resampling.nearest)
        out.append((on_grid.data, on_grid.valid))
    return out


def align(ms: Raster, pan: Raster, labels: dict[str, Raster], ratio: int, resampling: str = "bilinear"
          ) -> tuple[Raster, Raster, dict[str, Raster]]:
    """``align: true`` on a scene: MS, PAN and labels onto one grid. The MS is cropped to the extent all files cover
    (whole MS pixels), PAN is resampled onto that grid at the MS pixel size / ``ratio`` (``resampling``: bilinear or
    cubic; from any CRS), the label maps onto the MS grid (nearest), with rasterio's warp. Logged."""
    import logging

    from rasterio.transform import Affine
    from rasterio.warp import Resampling, transform_bounds

    if resampling not in ("bilinear", "cubic"):
        raise SceneError(f"{pan.path}: align_resampling {resampling!r}, expected 'bilinear' or 'cubic'")
    for r in (ms, pan, *labels.values()):
        must_be_georeferenced(r)
    crs, t = ms.profile["crs"], ms.profile["transform"]
    boxes = [extent(ms)] + [transform_bounds(r.profile["crs"], crs, *extent(r)) for r in (pan, *labels.values())]
    west, south = max(b[0] for b in boxes), max(b[1] for b in boxes)
    east, north = min(b[2] for b in boxes), min(b[3] for b in boxes)
    (c0, r0), (c1, r1) = ~t * (west, north), ~t * (east, south)
    c0, r0, c1, r1 = math.ceil(c0 - 1e-6), math.ceil(r0 - 1e-6), math.floor(c1 + 1e-6), math.floor(r1 + 1e-6)
    if c1 <= c0 or r1 <= r0:
        raise SceneError(f"{pan.path}: covers no whole pixel of the MS {ms.path} (in the MS's CRS {crs}): nothing to "
                         "align")
    grid = t @ Affine.translation(c0, r0)
    h, w = r1 - r0, c1 - c0
    new_ms = Raster(np.ascontiguousarray(ms.data[:, r0:r1, c0:c1]), ms.path, {"crs": crs, "transform": grid},
                    None if ms.valid is None else ms.valid[r0:r1, c0:c1])
    new_pan = warp(pan, (1, ratio * h, ratio * w), grid @ Affine.scale(1 / ratio), crs, Resampling[resampling])
    new_labels = {m: warp(lab, (h, w), grid, crs, Resampling.nearest) for m, lab in labels.items()}
    logging.getLogger("das2f.data").info(
        "align: %s cropped to rows %d:%d, cols %d:%d (the extent every file covers); %s resampled onto it at 1/%d of "
        "its pixel (%s)%s", ms.path.name, r0, r1, c0, c1, pan.path.name, ratio, resampling,
        f"; {', '.join(lab.path.name for lab in labels.values())} onto it (nearest)" if labels else "")
    return new_ms, new_pan, new_labels
