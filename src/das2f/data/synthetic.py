"""The embedded default scene: a procedural MS + PAN scene with a land-cover map, from a seed.

Layout: Voronoi fields (grass, crop, forest, shrub, bare soil), a water body, an urban district
of blocks, and roads. Each class has a 4-band (B, G, R, NIR) reflectance and a PAN texture.
Both modalities matter by construction:
- crop and grass share the spectrum, differ only in PAN texture (row stripes at a 3-pixel
  period that the 4x coarser MS blurs away);
- forest and shrub share the texture and differ only in spectrum (NIR, red);
- urban and bare soil share neither; roads are thin (1-2 MS pixels) and need PAN detail.
Sensor model: a reflectance cube at PAN resolution times the texture; PAN = weighted band sum
+ noise; MS = Gaussian blur (sigma = 0.5 * ratio) + 4x4 decimation + noise. 10-bit uint16 DN.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..runtime.locks import directory_lock

CLASS_NAMES = ["water", "grass", "crop", "forest", "shrub", "urban", "bare_soil", "road"]
#                 B     G     R    NIR
SPECTRA = np.array([
    [0.08, 0.10, 0.06, 0.03],  # water
    [0.05, 0.12, 0.07, 0.40],  # grass
    [0.05, 0.12, 0.07, 0.40],  # crop  (= grass spectrum)
    [0.03, 0.07, 0.04, 0.30],  # forest
    [0.06, 0.10, 0.11, 0.20],  # shrub (forest texture, other spectrum)
    [0.20, 0.21, 0.22, 0.25],  # urban
    [0.17, 0.20, 0.26, 0.31],  # bare soil
    [0.13, 0.13, 0.13, 0.14],  # road
])
PAN_WEIGHTS = np.array([0.2, 0.3, 0.3, 0.2])
RATIO = 4


def _texture(kind: str, shape, rng) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "smooth":
        return 1 + 0.03 * ndimage.gaussian_filter(rng.standard_normal(shape), 4)
    if kind == "stripes":  # crop rows, 3-pixel period, random orientation per scene
        return 1 + 0.35 * np.sign(np.sin(2 * np.pi * (yy + 0.35 * xx) / 3.0))
    if kind == "canopy":  # tree crowns: blobs of 2-3 pixels
        return 1 + 0.45 * np.tanh(2 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.2) * 3)
    if kind == "blocks":  # buildings on an 8-pixel grid with bright roofs and dark gaps
        return np.where((yy % 8 < 6) & (xx % 8 < 6), 1.25, 0.55)
    raise ValueError(kind)


TEXTURES = ["smooth", "smooth", "stripes", "canopy", "canopy", "blocks", "smooth", "smooth"]


def generate_scene(size: int = 192, seed: int = 0, n_fields: int = 70) -> dict[str, np.ndarray]:
    """-> {"ms": (size, size, 4) uint16, "pan": (4 size, 4 size) uint16, "label": (size, size) uint8}.

    Labels are 1..8 (``CLASS_NAMES``), 0 = unlabelled (field borders, as in the field's maps).
    """
    rng = np.random.default_rng(seed)
    h = w = size
    # fields: Voronoi cells with a random field class
    pts = rng.uniform(0, size, (n_fields, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    cell = d.argmin(-1)
    field_classes = np.array([2, 3, 4, 5, 7])  # grass, crop, forest, shrub, bare soil (1-based)
    label = field_classes[rng.integers(0, len(field_classes), n_fields)][cell]
    # water body: a smooth random blob
    blob = ndimage.gaussian_filter(rng.standard_normal((h, w)), size / 10)
    label[blob > np.quantile(blob, 0.88)] = 1
    # urban district: a square region of blocks
    uy, ux = rng.integers(size // 8, size - size // 3, 2)
    label[uy:uy + size // 4, ux:ux + size // 4] = 6
    # roads: straight lines 1-2 pixels wide
    for _ in range(4):
        if rng.random() < 0.5:
            r = rng.integers(0, h)
            label[r:r + rng.integers(1, 3), :] = 8
        else:
            c = rng.integers(0, w)
            label[:, c:c + rng.integers(1, 3)] = 8
    # field borders are unlabelled (mixed pixels), except along roads
    border = ndimage.morphological_gradient(cell, size=2) > 0
    labelled = np.where(border & (label != 8) & (label != 6), 0, label).astype(np.uint8)

    # rendering at PAN resolution
    hi = np.repeat(np.repeat(label, RATIO, 0), RATIO, 1) - 1
    H, W = hi.shape
    refl = SPECTRA[hi] * (1 + 0.05 * rng.standard_normal((n_fields,))[np.repeat(np.repeat(cell, RATIO, 0), RATIO, 1)])[..., None]
    tex = np.ones((H, W))
    for k, kind in enumerate(TEXTURES):
        mask = hi == k
        if mask.any():
            tex[mask] = _texture(kind, (H, W), rng)[mask]
    cube = refl * tex[..., None]  # (H, W, 4)
    pan = cube @ PAN_WEIGHTS + 0.004 * rng.standard_normal((H, W))
    blurred = ndimage.gaussian_filter(cube, sigma=(0.5 * RATIO, 0.5 * RATIO, 0))
    ms = blurred.reshape(h, RATIO, w, RATIO, 4).mean((1, 3)) + 0.004 * rng.standard_normal((h, w, 4))
    to_dn = lambda x: np.clip(np.round(x * 2000), 0, 1023).astype(np.uint16)  # noqa: E731  10-bit
    return {"ms": to_dn(ms), "pan": to_dn(pan), "label": labelled}


def write_scene(out_dir: str | Path, size: int = 192, seed: int = 0) -> dict[str, Path]:
    """Generate the scene once and write ms.npy, pan.npy, label.npy under ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {k: out_dir / f"{k}.npy" for k in ("ms", "pan", "label")}
    stamp, made_by = out_dir / "generate.json", json.dumps({"size": int(size), "seed": int(seed)})

    def ready() -> bool:
        return all(p.exists() for p in paths.values()) and stamp.is_file() and stamp.read_text() == made_by

    if ready():
        return paths  # generated before with the same size and seed (another size or seed regenerates)
    with directory_lock(out_dir, "generating the synthetic scene"):  # jobs started together generate it once
        if ready():
            return paths
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)  # the stamp is written last: files without it are never taken as done
        scene = generate_scene(size, seed)
        for k, p in paths.items():
            tmp = p.with_suffix(".tmp.npy")
            try:
                np.save(tmp, scene[k])
                tmp.rename(p)
            except BaseException:  # an error or a stop signal (das2f.runtime.signals.Stop): no half-written file stays
                tmp.unlink(missing_ok=True)
                raise
        stamp.write_text(made_by)
    return paths
