"""Scene specifications from the dataset config, loaded and validated one at a time."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .readers import Raster, SceneError, read_raster


@dataclass
class Scene:
    name: str
    ms: Raster  # (C, H, W)
    pan: Raster  # (1, rH, rW)
    maps: dict[str, np.ndarray]  # "label" (one map to split) or "train"/"test" ready-made maps, (H, W)
    # per label file as read (before any resampling): {path: {value: pixel count}}, for the label checks
    label_values: dict[str, dict[int, int]] = field(default_factory=dict)


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
    maps, found = {}, {}
    if kind == "wald_rgb":
        ms, pan = wald_from_rgb(Path(spec["image"]), ratio)
        lab = read_raster(spec["label"], label=True)
        found[str(lab.path)] = value_counts(lab.data)
        maps["label"] = block_mode(lab.data, ratio)
    elif kind == "files":
        ms = read_raster(spec["ms"], key=spec.get("ms_key"), band_axis=spec.get("band_axis"), bands=spec.get("ms_bands"))
        pan = read_raster(spec["pan"], key=spec.get("pan_key"), band_axis=spec.get("band_axis"))
        for m in ("label", "train", "val", "test"):
            if spec.get(m):
                lab = read_raster(spec[m], key=spec.get(f"{m}_key"), label=True, color_table=spec.get("color_table"))
                found[str(lab.path)] = value_counts(lab.data)
                maps[m] = lab.data
    else:
        raise SceneError(f"scene {spec.get('name')}: unknown kind {kind!r}, expected 'files' or 'wald_rgb'")
    return Scene(spec.get("name", Path(str(ms.path)).stem), ms, pan, maps, found)


def value_counts(label: np.ndarray) -> dict[int, int]:
    """{label value: pixel count} of a label map."""
    values, counts = np.unique(label, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def validate_scene(scene: Scene, ratio: int, require_labels: bool = True) -> None:
    """PAN exactly ratio x the MS size, one PAN band, label maps the MS size (and present, unless not required)."""
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
