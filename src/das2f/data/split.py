"""Labelled pixels -> train / val / test coordinates: a seeded, stratified per-class split."""
from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def stratified_split(labels: np.ndarray, classes: list[int], rule: dict, seed: int) -> dict[str, np.ndarray]:
    """Split the pixels of ``labels`` (H, W) whose value is in ``classes``.

    ``rule``: {"train": x, "val": x, "test": x} with x a ratio (float <= 1) or a count per class
    (int); "test": "rest" takes what is left. Returns {split: coords (n, 2) int32, sorted row-major}.
    Each class is shuffled with its own generator (seed, class value), so adding a class does not
    change the others' split.
    """
    out = {s: [] for s in SPLITS}
    order = [s for s in SPLITS if s in rule and rule[s] != "rest"] + [s for s in SPLITS if rule.get(s) == "rest"]
    for value in classes:
        idx = np.flatnonzero(labels.ravel() == value)
        np.random.default_rng([seed, int(value)]).shuffle(idx)
        start = 0
        for split in order:
            x = rule[split]
            if x == "rest":
                take = len(idx) - start
            elif isinstance(x, float) or (isinstance(x, int) and x == 0):
                take = int(round(float(x) * len(idx)))
            else:
                take = int(x)
            take = min(take, len(idx) - start)
            out[split].append(idx[start:start + take])
            start += take
    w = labels.shape[1]
    result = {}
    for split, parts in out.items():
        flat = np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)
        result[split] = np.stack((flat // w, flat % w), axis=1).astype(np.int32)
    return result


def map_coords(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """All pixels of a ready-made split map whose value is a class, row-major, (n, 2) int32."""
    flat = np.flatnonzero(np.isin(labels.ravel(), classes))
    w = labels.shape[1]
    return np.stack((flat // w, flat % w), axis=1).astype(np.int32)
