"""The figure of docs/splits.md: the pixel split and the block split of the synthetic scene, side by side.

    .venv/bin/python experiments/protocols/figure.py [OUT.png]     (default: docs/assets/split-protocols.png)

Each panel shows the sample centres of train / val / test over the scene; the block split also shows its blocks
(tinted by split) and the pixels its buffer leaves out. One test patch's footprint (the 16x16 MS pixels it reads)
is outlined with the training patches that share a pixel with it: dozens under the pixel split, none under the
block split. The numbers in the titles are das2f's own overlap count (das2f.data.split.overlap_shares).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from das2f.data.split import SPLITS, block_ids, footprint_bounds, overlap_shares, overlapping, split_by_blocks, stratified_split  # noqa: E402
from das2f.data.synthetic import write_scene  # noqa: E402

COLOURS = {"train": "#1f77b4", "val": "#2ca02c", "test": "#d62728"}
RULE = {"train": 120, "val": 40, "test": 200}  # the main job's split (conf/dataset/synthetic.yaml)
PATCH, SIDE = 16, 32


def panel(ax, label, coords, title, region=None):
    ax.imshow(label > 0, cmap="Greys", vmin=0, vmax=4, interpolation="nearest")
    if region is not None:
        for split, colour in COLOURS.items():
            tint = np.zeros((*label.shape, 4))
            tint[region == split] = matplotlib.colors.to_rgba(colour, 0.18)
            ax.imshow(tint, interpolation="nearest")
        for k in range(0, label.shape[0] + 1, SIDE):
            ax.axhline(k - 0.5, color="white", lw=0.6)
            ax.axvline(k - 0.5, color="white", lw=0.6)
    for split in SPLITS:
        xy = coords[split]
        ax.scatter(xy[:, 1], xy[:, 0], s=2.5, c=COLOURS[split], label=f"{split} ({len(xy)})", linewidths=0)
    # one test patch (the most central one) and the training patches that share a pixel with it
    test = coords["test"]
    centre = test[np.argmin(np.abs(test - np.array(label.shape) / 2).sum(1))]
    (rlo, rhi), (clo, chi) = footprint_bounds(label.shape[0], PATCH), footprint_bounds(label.shape[1], PATCH)
    hits = coords["train"][overlapping(label.shape, centre[None], coords["train"], PATCH)]
    for r, c in hits:
        ax.add_patch(mpatches.Rectangle((clo[c] - 0.5, rlo[r] - 0.5), chi[c] - clo[c] + 1, rhi[r] - rlo[r] + 1,
                                        fill=False, ec=COLOURS["train"], lw=0.5, alpha=0.8))
    r, c = centre
    ax.add_patch(mpatches.Rectangle((clo[c] - 0.5, rlo[r] - 0.5), chi[c] - clo[c] + 1, rhi[r] - rlo[r] + 1,
                                    fill=False, ec="black", lw=1.6))
    share = overlap_shares([label.shape], [coords], PATCH)["test"]
    ax.set_title(f"{title}\ntest patches overlapping training patches: {100 * share['share']:.0f} %\n"
                 f"training patches overlapping the outlined test patch: {len(hits)}", fontsize=9)
    ax.legend(loc="lower left", fontsize=7, markerscale=3, framealpha=0.9)
    ax.set_xticks([])
    ax.set_yticks([])


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_scene(Path(tmp), size=192, seed=0)
        label = np.load(Path(tmp) / "label.npy")
    classes = list(range(1, 9))
    pixel = stratified_split(label, classes, RULE, seed=0)
    (blocks,), info = split_by_blocks([label], classes, RULE, 0, SIDE, PATCH)
    # the blocks' splits, for the tint (the same draw split_by_blocks made: its blocks per split)
    region = np.full(label.shape, "", dtype=object)
    ids = block_ids(label.shape, SIDE)
    for split in SPLITS:
        for b in np.unique(ids[tuple(blocks[split].T)]):
            region[ids == b] = split
    fig, axes = plt.subplots(1, 2, figsize=(11, 6))
    panel(axes[0], label, pixel, "pixel split (the field's protocol)")
    panel(axes[1], label, blocks, f"block split (split_blocks={SIDE}, buffer between splits)", region)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    print(f"written: {out}; block split buffer left out {int(info['buffer'].sum())} labelled pixels")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/assets/split-protocols.png"))
