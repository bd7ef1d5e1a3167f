"""Labelled pixels -> train / val / test coordinates, and how far the splits' patches overlap.

Three protocols:
- the pixel split (``stratified_split``): each class's labelled pixels drawn at random, the field's
  protocol; neighbouring pixels share most of their patches, so nearly every test patch overlaps
  training patches;
- the block split (``split_by_blocks``): the scene cut into square blocks, whole blocks drawn into the
  splits (balanced per class), and a buffer so that no val or test patch shares a pixel with a
  training patch;
- a split by scene or tile (a scene's ``split:``): whole scenes; nothing to buffer.

``overlapping`` measures, for any of them, which patches' footprints (the MS pixels a patch reads,
border reflection included) share a pixel with another set's footprints.
"""
from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def _take(x, available: int) -> int:
    """How many of ``available`` pixels a rule entry asks for: a ratio (float, or 0), a count (int), "rest"."""
    if x == "rest":
        return available
    if isinstance(x, float) or (isinstance(x, int) and x == 0):
        return int(round(float(x) * available))
    return int(x)


def _order(rule: dict) -> list[str]:
    return [s for s in SPLITS if s in rule and rule[s] != "rest"] + [s for s in SPLITS if rule.get(s) == "rest"]


def _coords(flat: np.ndarray, width: int) -> np.ndarray:
    flat = np.sort(flat)
    return np.stack((flat // width, flat % width), axis=1).astype(np.int32)


def stratified_split(labels: np.ndarray, classes: list[int], rule: dict, seed: int) -> dict[str, np.ndarray]:
    """Split the pixels of ``labels`` (H, W) whose value is in ``classes``.

    ``rule``: {"train": x, "val": x, "test": x} with x a ratio (float <= 1) or a count per class
    (int); "test": "rest" takes what is left. Returns {split: coords (n, 2) int32, sorted row-major}.
    Each class is shuffled with its own generator (seed, class value), so adding a class does not
    change the others' split.
    """
    out = {s: [] for s in SPLITS}
    for value in classes:
        idx = np.flatnonzero(labels.ravel() == value)
        np.random.default_rng([seed, int(value)]).shuffle(idx)
        start = 0
        for split in _order(rule):
            take = min(_take(rule[split], len(idx)), len(idx) - start)
            out[split].append(idx[start:start + take])
            start += take
    return {s: _coords(np.concatenate(p) if p else np.empty(0, np.int64), labels.shape[1]) for s, p in out.items()}


def map_coords(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """All pixels of a ready-made split map whose value is a class, row-major, (n, 2) int32."""
    return _coords(np.flatnonzero(np.isin(labels.ravel(), classes)), labels.shape[1])


# --- footprints and overlap ------------------------------------------------------------------------

def footprint_bounds(size: int, ms_patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis of ``size`` pixels: the first and last pixel each centre's patch reads (lo, hi per centre).

    A patch reads rows r-(P/2-1) .. r+P/2 reflected at the borders without repeating the edge pixel
    (das2f.data.patches); reflection folds a patch back into the scene, so near the lower border a patch
    reaches one pixel further inward than its unreflected window. The pixels read are always contiguous.
    """
    before = ms_patch // 2 - 1
    index = np.pad(np.arange(size), (before, ms_patch - before - 1), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(index, ms_patch)  # (size, P): the rows of each centre
    return windows.min(1), windows.max(1)


def _footprints(shape: tuple[int, int], xy: np.ndarray, ms_patch: int) -> tuple[np.ndarray, ...]:
    """First and last row and column (inclusive) that the patch of each centre in ``xy`` reads."""
    (rlo, rhi), (clo, chi) = footprint_bounds(shape[0], ms_patch), footprint_bounds(shape[1], ms_patch)
    return rlo[xy[:, 0]], rhi[xy[:, 0]], clo[xy[:, 1]], chi[xy[:, 1]]


def reads_any(mask: np.ndarray, query: np.ndarray, ms_patch: int) -> np.ndarray:
    """For each (row, col) of ``query``: does its patch read a pixel where ``mask`` (H, W) is true? (n,) bool."""
    query = np.asarray(query).reshape(-1, 2)
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)  # summed-area table of the mask
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    r0, r1, c0, c1 = _footprints(mask.shape, query, ms_patch)
    r1, c1 = r1 + 1, c1 + 1
    return (table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]) > 0


def read_by(shape: tuple[int, int], xy: np.ndarray, ms_patch: int) -> np.ndarray:
    """(H, W) bool: the pixels that any of the patches at ``xy`` read."""
    h, w = shape
    r0, r1, c0, c1 = _footprints(shape, xy, ms_patch)
    marks = np.zeros((h + 1, w + 1), np.int64)  # rectangle corners, summed into the number of patches per pixel
    np.add.at(marks, (r0, c0), 1)
    np.add.at(marks, (r0, c1 + 1), -1)
    np.add.at(marks, (r1 + 1, c0), -1)
    np.add.at(marks, (r1 + 1, c1 + 1), 1)
    return marks.cumsum(0).cumsum(1)[:h, :w] > 0


def overlapping(shape: tuple[int, int], fixed: np.ndarray, query: np.ndarray, ms_patch: int) -> np.ndarray:
    """For each (row, col) of ``query``: does its patch read a pixel that a patch at any of ``fixed`` reads?

    Both are MS centres of one scene of ``shape`` (H, W). (n,) bool. Exact, border reflection included;
    time and memory O(H W + n).
    """
    query = np.asarray(query).reshape(-1, 2)
    fixed = np.asarray(fixed).reshape(-1, 2)
    if not len(query) or not len(fixed):
        return np.zeros(len(query), bool)
    return reads_any(read_by(shape, fixed, ms_patch), query, ms_patch)


# --- the block split -------------------------------------------------------------------------------

def block_counts(labels: np.ndarray, classes: list[int], side: int) -> np.ndarray:
    """(blocks, K) labelled pixels of each class in each ``side`` x ``side`` block, blocks row-major
    (the grid starts at pixel (0, 0); the last row and column of blocks may be smaller)."""
    h, w = labels.shape
    ids = block_ids(labels.shape, side)
    out = np.zeros((-(-h // side) * -(-w // side), len(classes)), np.int64)
    for k, value in enumerate(classes):
        out[:, k] = np.bincount(ids[labels == value], minlength=len(out))
    return out


def block_ids(shape: tuple[int, int], side: int) -> np.ndarray:
    """(H, W) the block of each pixel, row-major over the grid of ``side`` x ``side`` blocks."""
    h, w = shape
    return (np.arange(h)[:, None] // side) * -(-w // side) + np.arange(w)[None, :] // side


def block_targets(totals: np.ndarray, rule: dict) -> tuple[np.ndarray, list[str]]:
    """Each bin's target share of each class's labelled pixels: (bins, K) rows summing to 1, and the bins' names.

    Bins: the rule's splits, plus "unused" when the rule's ratios leave pixels over (no "rest"). Ratios
    are the shares; counts assign blocks in proportion to the counts (then ``count`` pixels are drawn
    inside each split's blocks), "rest" takes the remainder of the class's pixels."""
    names = [s for s in SPLITS if s in rule]
    ratios = all(rule[s] == "rest" or isinstance(rule[s], float) or rule[s] == 0 for s in names)
    shares = np.zeros((len(names) + 1, len(totals)))
    for k, n in enumerate(totals):
        left = float(n)
        for s in _order(rule):
            take = left if rule[s] == "rest" else min(float(_take(rule[s], int(n))), left)
            shares[names.index(s), k] = take
            left -= take
        shares[-1, k] = left if ratios else 0.0  # counts without "rest": every block goes to a split
    shares /= np.maximum(shares.sum(0, keepdims=True), 1e-12)
    return shares, names + ["unused"]


def assign_blocks(counts: np.ndarray, shares: np.ndarray, seed: int, passes: int = 30) -> np.ndarray:
    """The bin of each block (-1: a block without labelled pixels), so that each bin's share of every class's
    pixels comes close to ``shares`` (bins, K): blocks in a seeded random order, each to the bin it brings
    closest, then single-block moves while any lowers the squared error (each class weighted alike)."""
    totals = counts.sum(0).astype(float)
    scale = 1.0 / np.maximum(totals, 1.0)
    target = shares * totals[None, :]
    load = np.zeros_like(target)
    out = np.full(len(counts), -1)
    rng = np.random.default_rng([int(seed), 11])
    order = rng.permutation(np.flatnonzero(counts.sum(1) > 0))
    for b in order:
        v = counts[b]
        gain = (((load + v - target) * scale) ** 2 - ((load - target) * scale) ** 2).sum(1)
        out[b] = int(np.argmin(gain))
        load[out[b]] += v
    for _ in range(passes):
        moved = False
        for b in rng.permutation(order):
            v, s = counts[b], out[b]
            leave = (((load[s] - v - target[s]) * scale) ** 2 - ((load[s] - target[s]) * scale) ** 2).sum()
            join = (((load + v - target) * scale) ** 2 - ((load - target) * scale) ** 2).sum(1)
            join[s] = np.inf
            t = int(np.argmin(join))
            if leave + join[t] < -1e-12:
                load[s] -= v
                load[t] += v
                out[b] = t
                moved = True
        if not moved:
            break
    return out


def fold_bins(folds: int, fold: int) -> dict[int, str]:
    """The split of each of ``folds`` spatial folds in round ``fold``: test = fold, val = the next, train = the rest."""
    return {i: "test" if i == fold else "val" if i == (fold + 1) % folds else "train" for i in range(folds)}


def counts_only(rule: dict) -> dict:
    """The count entries of a rule ({split: int > 0}): what is drawn inside a split's blocks when only ``split`` is
    given (a ratio or "rest" takes every pixel), and what a split may fall short of."""
    return {s: x for s, x in rule.items() if isinstance(x, int) and not isinstance(x, bool) and x}


def buffered_split(labels: np.ndarray, classes: list[int], region: np.ndarray, sample: dict, seed: int,
                   ms_patch: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Sample centres of each split inside its blocks, with a buffer so that no two splits' patches share a pixel.

    ``region`` (H, W): the split of each pixel's block ("" for none). The buffer: a centre is kept only if its
    patch reads no pixel of another split's blocks (so each side of a boundary gives up about half a patch);
    then, test first, val, train, a centre whose patch would read a pixel of an earlier split's drawn patches
    is left out as well (possible only across blocks of no split narrower than a patch, or where reflection
    folds a patch back). ``sample``: per split, the share (float) or count (int) of each class's pixels left in
    its blocks that are drawn (seeded per class, as the pixel split); a split not in it takes every pixel left.
    Returns ({split: coords}, {split: (K,) labelled pixels of its blocks that the buffer took})."""
    out, cost = {}, {}
    w = labels.shape[1]
    labelled = np.isin(labels, classes)
    for split in ("test", "val", "train"):
        candidates = _coords(np.flatnonzero(((region == split) & labelled).ravel()), w)
        taken = reads_any((region != split) & (region != ""), candidates, ms_patch)
        drawn = [out[s] for s in out if len(out[s])]
        if drawn:
            taken |= overlapping(labels.shape, np.concatenate(drawn), candidates, ms_patch)
        values = labels[candidates[:, 0], candidates[:, 1]]
        cost[split] = np.array([(taken & (values == v)).sum() for v in classes], np.int64)
        keep, values = candidates[~taken], values[~taken]
        picked = []
        for value in classes:
            idx = np.flatnonzero(values == value)
            if sample.get(split) not in (None, "rest"):
                np.random.default_rng([seed, int(value)]).shuffle(idx)
                idx = np.sort(idx[:_take(sample[split], len(idx))])
            picked.append(keep[idx])
        flat = np.concatenate(picked)
        out[split] = _coords(flat[:, 0].astype(np.int64) * w + flat[:, 1], w)
    return {s: out[s] for s in SPLITS}, {s: cost[s] for s in SPLITS}


def split_by_blocks(label_maps: list[np.ndarray], classes: list[int], rule: dict, seed: int, side: int,
                    ms_patch: int, folds: int | None = None, fold: int | None = None, sample: dict | None = None
                    ) -> tuple[list[dict[str, np.ndarray]], dict]:
    """The block split of several scenes at once (the blocks of all of them balanced together).

    Returns each scene's {split: coords} and what the prepare log shows: per split and class the target and
    the blocks' share of the labelled pixels, the pixels the buffer took, the blocks per split. With ``folds``
    the blocks are balanced over that many equal folds and fold ``fold`` is test, the next one val, the rest
    train. Inside each split's blocks, ``sample`` (per split: a share or a count of each class's pixels, as the
    pixel split) draws the samples; without it, the counts of ``rule`` are drawn and its ratios take every pixel."""
    sample = dict(sample) if sample else counts_only(rule)
    per_scene = [block_counts(m, classes, side) for m in label_maps]
    counts = np.concatenate(per_scene) if per_scene else np.zeros((0, len(classes)), np.int64)
    totals = counts.sum(0)
    if folds:
        bins = assign_blocks(counts, np.full((folds, len(classes)), 1.0 / folds), seed)
        names = [fold_bins(folds, fold)[i] for i in range(folds)]
        target = np.array([[names.count(s) / folds] * len(classes) for s in SPLITS])
    else:
        shares, names = block_targets(totals, rule)
        bins = assign_blocks(counts, shares, seed)
        target = np.array([shares[names.index(s)] if s in names else np.zeros(len(classes)) for s in SPLITS])
    split_of_bin = np.array([*(n if n in SPLITS else "" for n in names), ""], dtype=object)  # bin -1: ""
    scenes, cost, start = [], np.zeros((len(SPLITS), len(classes)), np.int64), 0
    for labels, c in zip(label_maps, per_scene):
        region = split_of_bin[bins[start:start + len(c)]][block_ids(labels.shape, side)]
        start += len(c)
        coords, taken = buffered_split(labels, classes, region, sample, seed, ms_patch)
        scenes.append(coords)
        cost += np.array([taken[s] for s in SPLITS])
    of_split = {s: np.isin(bins, [i for i, n in enumerate(names) if n == s]) for s in SPLITS}  # blocks of each split
    achieved = np.array([counts[of_split[s]].sum(0) for s in SPLITS])
    info = {"side": side, "folds": folds, "fold": fold, "target": target, "blocks_share": achieved / np.maximum(totals, 1),
            "buffer": cost, "labelled": totals, "blocks": {s: int(of_split[s].sum()) for s in SPLITS}}
    return scenes, info


def overlap_shares(shapes: list[tuple[int, int]], coords: list[dict[str, np.ndarray]], ms_patch: int) -> dict:
    """Per split (val, test): patches, and how many of them read a pixel that a training patch of the same scene
    reads. ``shapes`` and ``coords``: each scene's (H, W) and {split: centres}."""
    out = {s: {"patches": 0, "overlapping": 0} for s in ("val", "test")}
    for shape, c in zip(shapes, coords):
        covered = read_by(shape, c["train"], ms_patch) if len(c["train"]) else None  # once per scene, for val and test
        for s in out:
            out[s]["patches"] += len(c[s])
            if covered is not None and len(c[s]):
                out[s]["overlapping"] += int(reads_any(covered, c[s], ms_patch).sum())
    for s in out:
        out[s]["share"] = out[s]["overlapping"] / out[s]["patches"] if out[s]["patches"] else 0.0
    return out
