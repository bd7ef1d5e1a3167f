"""Draw the explanation page's figures (docs/explanation.md) into docs/assets/:

- network.png: DAS²F with two stages, from the patch pair to the classes;
- data-flow.png: scene files -> patch pairs -> batches -> network -> checkpoint -> metrics and maps;
- patch-geometry.png: an MS patch and its PAN patch on the generated scene, the same ground.

    python docs/assets/make_figures.py [OUT_DIR]

matplotlib only; the patch figure generates the synthetic scene (das2f.data.synthetic) in a temporary folder.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

COLORS = {"ms": "#cfe3f7", "pan": "#f9dcc4", "common": "#d8ecd0", "fuse": "#eadcf2", "io": "#eeeeee"}


def box(ax, x, y, text, color, w=1.6, h=0.62, size=8.5):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="#444444", lw=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=size)
    return x, y


def arrow(ax, a, b, text=None, color="#333333", rad=0.0, dx=0.0, dy=0.12, shrink=(0.8, 0.8), size=7.5):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=9, lw=0.9, color=color,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0,
                                 patchA=None, patchB=None))
    if text:
        ax.text((a[0] + b[0]) / 2 + dx, (a[1] + b[1]) / 2 + dy, text, ha="center", va="bottom", fontsize=size,
                color=color)


def edge(p, side, w=1.6, h=0.62):
    """The middle of a box's side: l, r, t, b."""
    x, y = p
    return {"l": (x - w / 2, y), "r": (x + w / 2, y), "t": (x, y + h / 2), "b": (x, y - h / 2)}[side]


def network(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(13, 5.2))
    ax.set_xlim(0, 17.1)
    ax.set_ylim(0.2, 5.4)
    ax.axis("off")
    ms_in = box(ax, 1.0, 4.4, "MS patch\nC x 16 x 16", COLORS["io"], w=1.5)
    pan_in = box(ax, 1.0, 1.2, "PAN patch\n1 x 64 x 64", COLORS["io"], w=1.5)
    ms_emb = box(ax, 3.0, 4.4, "upsample x4,\npatch embed", COLORS["ms"], w=1.6)
    pan_emb = box(ax, 3.0, 1.2, "1x1 conv,\npatch embed", COLORS["pan"], w=1.6)
    arrow(ax, edge(ms_in, "r", 1.5), edge(ms_emb, "l"))
    arrow(ax, edge(pan_in, "r", 1.5), edge(pan_emb, "l"))
    ax.text(3.0, 3.85, "tokens 16 x 16 x 64", fontsize=7, ha="center", color="#555555")
    ax.text(3.0, 0.65, "tokens 16 x 16 x 64", fontsize=7, ha="center", color="#555555")
    inputs = (ms_emb, pan_emb)
    for s, x in ((1, 5.8), (2, 9.0)):
        ax.add_patch(Rectangle((x - 1.05, 0.55), 2.9, 4.55, fc="none", ec="#999999", ls="--", lw=0.8))
        ax.text(x + 0.4, 5.22, f"stage {s}", ha="center", fontsize=9, color="#555555")
        spvm_ms = box(ax, x, 4.4, "SPVM (MS)", COLORS["ms"], w=1.5)
        spvm_pan = box(ax, x, 1.2, "SPVM (PAN)", COLORS["pan"], w=1.5)
        box(ax, x, 2.8, "CMDA\nswap the SSM\nparameters", COLORS["common"], w=1.5, h=1.0)
        arrow(ax, edge(inputs[0], "r", 1.6 if s == 1 else 1.5), edge(spvm_ms, "l", 1.5))
        arrow(ax, edge(inputs[1], "r", 1.6 if s == 1 else 1.5), edge(spvm_pan, "l", 1.5))
        arrow(ax, edge(inputs[0], "r", 1.6 if s == 1 else 1.5), (x - 0.75, 3.05), rad=0.0)
        arrow(ax, edge(inputs[1], "r", 1.6 if s == 1 else 1.5), (x - 0.75, 2.55), rad=0.0)
        minus_ms = box(ax, x + 1.3, 3.65, f"dominant\nMS {s}", COLORS["ms"], w=0.9, h=0.5, size=7)
        minus_pan = box(ax, x + 1.3, 1.95, f"dominant\nPAN {s}", COLORS["pan"], w=0.9, h=0.5, size=7)
        arrow(ax, edge(spvm_ms, "r", 1.5), edge(minus_ms, "t", 0.9, 0.5), "full", dx=0.25, dy=0.0)
        arrow(ax, edge(spvm_pan, "r", 1.5), edge(minus_pan, "b", 0.9, 0.5), "full", dx=0.25, dy=-0.2)
        arrow(ax, (x + 0.75, 3.0), edge(minus_ms, "l", 0.9, 0.5))
        arrow(ax, (x + 0.75, 2.6), edge(minus_pan, "l", 0.9, 0.5))
        inputs = ((x + 0.75, 3.1), (x + 0.75, 2.5))  # the common features feed the next stage
        if s == 1:
            ax.text(x + 1.95, 2.8, "common", fontsize=7.5, ha="center", va="center", color="#2e6b2e")
    fu = box(ax, 11.9, 2.8, "fu = mean of\nthe commons", COLORS["common"], w=1.5, h=0.8)
    arrow(ax, inputs[0], (11.15, 2.95))
    arrow(ax, inputs[1], (11.15, 2.65))
    aalf2 = box(ax, 13.8, 4.4, "AALF 2\n(dominant MS 2, PAN 2)", COLORS["fuse"], w=2.2, h=0.75, size=7.5)
    aalf1 = box(ax, 13.8, 1.2, "AALF 1\n(dominant MS 1, PAN 1)", COLORS["fuse"], w=2.2, h=0.75, size=7.5)
    arrow(ax, edge(fu, "t", 1.5, 0.8), edge(aalf2, "l", 2.2), "f", rad=-0.25, dx=-0.3, dy=0.05)
    arrow(ax, edge(aalf2, "b", 2.2, 0.75), edge(aalf1, "t", 2.2, 0.75), "f", dx=0.15, dy=0.0)
    head = box(ax, 16.1, 1.2, "Linear 16384->1024\nLinear 1024->K", COLORS["io"], w=1.9, h=0.75, size=7.5)
    arrow(ax, edge(aalf1, "r", 2.2), edge(head, "l", 1.9))
    ax.text(16.1, 0.65, "class scores", ha="center", fontsize=8)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def data_flow(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(13, 3.4))
    ax.set_xlim(0, 16.2)
    ax.set_ylim(0, 3.6)
    ax.axis("off")
    steps = [
        (1.2, 2.6, "scene files\nMS, PAN, labels\n(GeoTIFF, .mat, .npy)", COLORS["io"]),
        (4.0, 2.6, "inspect, prepare\nchecks, split, cut\npatch pairs", COLORS["common"]),
        (6.8, 2.6, "train.h5 val.h5 test.h5\n<prepared_dir>/\n<fingerprint>/", COLORS["io"]),
        (9.6, 2.6, "MsPanDataModule\nchunk-shuffled batches,\nnormalised on device", COLORS["ms"]),
        (12.4, 2.6, "DAS²F in Lightning\ntrain, validate,\ncheckpoints", COLORS["fuse"]),
        (15.0, 2.6, "test\nmetrics.json,\nconfusion", COLORS["io"]),
    ]
    pts = [box(ax, x, y, t, c, w=2.2, h=1.0, size=8) for x, y, t, c in steps]
    for a, b in zip(pts, pts[1:]):
        arrow(ax, edge(a, "r", 2.2), edge(b, "l", 2.2))
    pred = box(ax, 12.4, 0.75, "predict: the scene window by\nwindow -> map (COG), PNG", COLORS["pan"], w=2.9, h=0.8,
               size=8)
    report = box(ax, 15.0, 0.75, "sweeps -> report\n(mean, paired CI)", COLORS["io"], w=2.2, h=0.8, size=8)
    arrow(ax, edge(pts[4], "b", 2.2, 1.0), edge(pred, "t", 2.9, 0.8), "checkpoint", dx=0.55, dy=-0.1)
    arrow(ax, edge(pts[5], "b", 2.2, 1.0), edge(report, "t", 2.2, 0.8))
    arrow(ax, (1.2, 2.1), (10.95, 0.75), rad=0.12, color="#888888")
    ax.text(5.5, 0.85, "the scene again, read by windows", fontsize=7.5, color="#666666")
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def patch_geometry(path: Path) -> None:
    from das2f.data.synthetic import write_scene

    with tempfile.TemporaryDirectory() as tmp:
        write_scene(Path(tmp), size=64, seed=0)
        ms, pan = np.load(Path(tmp) / "ms.npy"), np.load(Path(tmp) / "pan.npy")
    r, c = 20, 26  # the labelled MS pixel
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4))
    rgb = ms[..., [2, 1, 0]].astype(float)
    lo, hi = np.percentile(rgb, 2, (0, 1)), np.percentile(rgb, 98, (0, 1))
    axes[0].imshow(np.clip((rgb - lo) / (hi - lo), 0, 1), extent=(-0.5, ms.shape[1] - 0.5, ms.shape[0] - 0.5, -0.5))
    axes[0].add_patch(Rectangle((c - 7 - 0.5, r - 7 - 0.5), 16, 16, fc="none", ec="yellow", lw=2))
    axes[0].add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fc="red", ec="red"))
    axes[0].set_title(f"MS: the 16 x 16 patch of pixel (r, c) = ({r}, {c})\nrows r-7..r+8, cols c-7..c+8; "
                      "the pixel at index 7", fontsize=9)
    axes[1].imshow(pan[0] if pan.ndim == 3 else pan, cmap="gray",
                   extent=(-0.5, 4 * ms.shape[1] - 0.5, 4 * ms.shape[0] - 0.5, -0.5))
    axes[1].add_patch(Rectangle((4 * c - 28 - 0.5, 4 * r - 28 - 0.5), 64, 64, fc="none", ec="yellow", lw=2))
    axes[1].add_patch(Rectangle((4 * c - 0.5, 4 * r - 0.5), 4, 4, fc="red", ec="red"))
    axes[1].set_title("PAN: the 64 x 64 patch of the same ground\nrows 4r-28..4r+35, cols 4c-28..4c+35; "
                      "the pixel's 4 x 4 block in red", fontsize=9)
    for ax in axes:
        ax.set_xlabel("column")
        ax.set_ylabel("row")
    fig.suptitle("A patch pair: the label of one MS pixel, the MS and PAN patches around it (ratio 4). At the scene's "
                 "edge, patches reflect without repeating the edge pixel.", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "network.png", out / "data-flow.png", out / "patch-geometry.png"]
    for draw, p in zip((network, data_flow, patch_geometry), paths):
        draw(p)
    return paths


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent):
        print(p)
