"""The tutorial's scene (docs/tutorial.md): a georeferenced MS + PAN + label GeoTIFF set, made the way real
pairs come.

    python experiments/tutorial/make_scene.py [OUT_DIR]      # default: data/tutorial/raw

From das2f's generated scene (das2f.data.synthetic, 8 land-cover classes), it writes

- ``ms.tif``: 4 bands (B, G, R, NIR), uint16, 160 x 160 pixels of 3.2 m, in UTM zone 49N (EPSG:32649);
- ``pan.tif``: 1 band, uint16, 0.8 m pixels, the same ground but shifted 2 MS pixels east (6.4 m), as a PAN
  image cut by another processing chain comes: it needs aligning;
- ``label.tif``: uint8 class values 1..8 on the MS grid, 0 unlabelled;

and a swath edge: the scene's south-west corner holds no data (0 in every band, declared as the MS's and PAN's
nodata value), as a real scene's black border outside the satellite's swath.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from das2f.data.synthetic import write_scene

SIZE, SHIFT = 160, 2  # MS pixels a side; PAN shifted east by SHIFT MS pixels
MS_PIXEL, RATIO = 3.2, 4
WEST, NORTH, CRS = 307000.0, 3796000.0, "EPSG:32649"


def write(path: Path, data: np.ndarray, pixel: float, west: float, nodata=None) -> None:
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype, crs=CRS, transform=from_origin(west, NORTH, pixel, pixel), nodata=nodata,
                       tiled=True, compress="deflate") as dst:
        dst.write(data)


def main(out: Path) -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        write_scene(Path(tmp), size=SIZE + SHIFT, seed=1)
        ms, pan, label = (np.load(Path(tmp) / f"{k}.npy") for k in ("ms", "pan", "label"))
    ms = np.ascontiguousarray(ms[:SIZE, :SIZE].transpose(2, 0, 1))  # (4, H, W)
    pan = pan.reshape(1, *pan.shape[-2:])[:, :RATIO * SIZE, RATIO * SHIFT:RATIO * (SIZE + SHIFT)]
    label = label[None, :SIZE, :SIZE].astype(np.uint8)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    outside = cols < (rows - 0.65 * SIZE) * 0.9  # the swath edge: the south-west corner
    ms[:, outside] = 0
    pan_rows, pan_cols = np.mgrid[0:RATIO * SIZE, 0:RATIO * SIZE]  # the same ground on the PAN's own grid
    pan[:, (pan_cols / RATIO + SHIFT) < (pan_rows / RATIO - 0.65 * SIZE) * 0.9] = 0
    out.mkdir(parents=True, exist_ok=True)
    write(out / "ms.tif", ms, MS_PIXEL, WEST, nodata=0)
    write(out / "pan.tif", pan, MS_PIXEL / RATIO, WEST + SHIFT * MS_PIXEL, nodata=0)
    write(out / "label.tif", label, MS_PIXEL, WEST)
    return [out / f"{k}.tif" for k in ("ms", "pan", "label")]


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("data/tutorial/raw")):
        print(p)
