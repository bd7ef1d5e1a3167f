"""Classification maps on disk: GeoTIFF (with the input's georeferencing and a colour table) or .npy,
and the coloured PNG figure with a legend."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def class_colors(k: int) -> np.ndarray:
    """(k, 3) uint8 RGB, one distinct colour per class (matplotlib's qualitative tables)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    return (np.array([cmap(i % cmap.N)[:3] for i in range(k)]) * 255).round().astype(np.uint8)


def row_bands(r0: int, r1: int, rows: int) -> list[tuple[int, int]]:
    """Rows r0..r1-1 as bands of ``rows`` rows, (start, stop) each: how a large map or scene is read."""
    return [(a, min(a + rows, r1)) for a in range(r0, r1, rows)]


def write_map(values: np.ndarray, stem: Path, profile: dict | None = None, colors: dict[int, tuple] | None = None,
              nodata: float | None = None) -> Path:
    """Write an (H, W) map: ``stem.tif`` when ``profile`` carries georeferencing, else ``stem.npy``.

    The GeoTIFF is a Cloud Optimized GeoTIFF (GDAL's COG driver: tiled, deflate, overviews so that a GIS opens a
    large map at once) with the input's CRS and transform and ``nodata`` as its nodata value. A class map (integers)
    is uint8 where its values fit (int32 otherwise), its overviews take the most frequent class of each block, and,
    given ``colors`` ({value: (r, g, b)}), it embeds a colour table; a float map (a confidence) is float32 with
    averaged overviews. The file appears under its final name only once complete (written to a temporary name first).
    """
    stem = Path(stem)
    if profile and profile.get("crs"):
        import rasterio
        import rasterio.shutil
        from rasterio.windows import Window

        path = stem.with_suffix(".tif")
        tmp = path.with_name(path.name + ".tmp")
        plain = path.with_name(path.name + ".plain.tmp")
        bands = row_bands(0, values.shape[0], 512)  # a memory-mapped map is never read whole
        if values.dtype.kind == "f":
            dtype, resampling = "float32", "average"
        else:
            small = all(values[a:b].max() < 256 and values[a:b].min() >= 0 for a, b in bands)
            dtype, resampling = "uint8" if small else "int32", "mode"
        try:
            with rasterio.open(plain, "w", driver="GTiff", height=values.shape[0], width=values.shape[1], count=1,
                               dtype=dtype, crs=profile["crs"], transform=profile["transform"], tiled=True,
                               nodata=nodata) as dst:
                if colors and dtype == "uint8":  # before the pixels: GDAL sets the photometric tag with it
                    dst.write_colormap(1, {int(v): (*map(int, c), 255) for v, c in colors.items()})
                for a, b in bands:
                    dst.write(np.asarray(values[a:b]).astype(dtype), 1, window=Window(0, a, values.shape[1], b - a))
            rasterio.shutil.copy(plain, tmp, driver="COG", compress="deflate", overview_resampling=resampling)
        finally:
            plain.unlink(missing_ok=True)
    else:
        path = stem.with_suffix(".npy")
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, values)
    tmp.replace(path)
    return path


def rgb_composite(ms: np.ndarray, bands: list[int]) -> np.ndarray:
    """(H, W, 3) float image of three MS bands, each stretched between its 2nd and 98th percentile."""
    rgb = np.stack([ms[b].astype(np.float64) for b in bands], -1)
    lo, hi = np.percentile(rgb, 2, axis=(0, 1)), np.percentile(rgb, 98, axis=(0, 1))
    return np.clip((rgb - lo) / np.where(hi > lo, hi - lo, 1), 0, 1)


MAX_FIGURE_PIXELS = 1500  # a PNG panel shows at most this many pixels along a side


def figure_step(shape: tuple[int, ...]) -> int:
    """Large maps go into a PNG as every step-th pixel along each side (at most MAX_FIGURE_PIXELS a side)."""
    return max(1, -(-max(shape[:2]) // MAX_FIGURE_PIXELS))


def save_map_figure(index_map: np.ndarray, class_names: list[str], colors: np.ndarray, path: Path,
                    truth: np.ndarray | None = None, title: str = "prediction", rgb: np.ndarray | None = None,
                    step: int | None = None) -> None:
    """PNG of a class-index map with a legend, beside the ground truth (-1 = unlabelled, black) and/or
    an RGB composite of the input. ``step``: the arrays are already every step-th pixel of the map
    (said in the figure); None: full-size arrays, subsampled here past MAX_FIGURE_PIXELS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if step is None:
        step = figure_step(index_map.shape)
        if step > 1:
            index_map = index_map[::step, ::step]
            truth = truth[::step, ::step] if truth is not None else None
            rgb = rgb[::step, ::step] if rgb is not None else None
    panels = [(title, index_map)] + ([("ground truth (black: unlabelled)", truth)] if truth is not None else [])
    panels += [("MS input (RGB composite, 2-98% stretch)", rgb)] if rgb is not None else []
    h, w = index_map.shape
    size = 5.0
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels) * w / max(h, w) + 2.2, size * h / max(h, w) + 0.6),
                             squeeze=False)
    palette = np.vstack([colors, [[0, 0, 0]]])  # index -1 -> black
    for ax, (name, m) in zip(axes[0], panels):
        ax.imshow(m if m.ndim == 3 else palette[np.where(m >= 0, m, len(colors))], interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    handles = [Patch(color=c / 255, label=n) for n, c in zip(class_names, colors)]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)  # outside the panels
    if step > 1:
        fig.text(0.01, 0.01, f"shown: 1 pixel of every {step} along each side; the map file keeps every pixel",
                 fontsize=7)
    fig.tight_layout(rect=(0, 0.03 if step > 1 else 0, 1 - 2.0 / fig.get_figwidth(), 1))
    fig.subplots_adjust(wspace=0.08)  # a visible gap between the panels
    fig.savefig(path, dpi=150)
    plt.close(fig)


def save_maps_grid(panels: list[tuple[str, np.ndarray, np.ndarray | None]], class_names: list[str],
                   colors: np.ndarray, path: Path, title: str = "") -> None:
    """One PNG with a row per scene: prediction, and ground truth beside it (-1 = unlabelled, black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    palette = np.vstack([colors, [[0, 0, 0]]])
    cols = 2 if any(t is not None for _, _, t in panels) else 1
    fig, axes = plt.subplots(len(panels), cols, figsize=(2.6 * cols + 1.8, 2.6 * len(panels) + 0.5), squeeze=False)
    for row, (name, pred, truth) in enumerate(panels):
        for col, (label, m) in enumerate([("prediction", pred), ("ground truth", truth)][:cols]):
            ax = axes[row, col]
            ax.set_axis_off()
            if m is None:
                continue
            ax.imshow(palette[np.where(m >= 0, m, len(colors))], interpolation="nearest")
            ax.set_title(f"{name}: {label}", fontsize=8)
    fig.legend(handles=[Patch(color=c / 255, label=n) for n, c in zip(class_names, colors)] +
               ([Patch(color="black", label="unlabelled")] if cols == 2 else []),
               loc="center right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    top = 1 - 0.45 / fig.get_figheight() if title else 1  # the title above the panels, not over them
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), top))
    fig.subplots_adjust(wspace=0.08)
    fig.savefig(path, dpi=150)
    plt.close(fig)
