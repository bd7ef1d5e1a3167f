"""Transforms of patch pairs, one home for training and prediction: per-band statistics, the
normalisation they define, and the joint augmentation of MS and PAN."""
from __future__ import annotations

import numpy as np
import torch


class RunningStats:
    """Per-band min, max, mean, std accumulated over blocks of patches (n, C, h, w)."""

    def __init__(self, bands: int):
        self.n = 0
        self.sum = np.zeros(bands)
        self.sumsq = np.zeros(bands)
        self.min = np.full(bands, np.inf)
        self.max = np.full(bands, -np.inf)

    def update(self, x: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add a block of patches; ``valid`` (n, 1, h, w) bool: only those pixels count (nodata left out)."""
        x = x.astype(np.float64)
        if valid is not None:
            valid = np.broadcast_to(valid, x.shape)
            self.n += int(valid[:, 0].sum())
            self.sum += np.where(valid, x, 0).sum((0, 2, 3))
            self.sumsq += np.where(valid, x * x, 0).sum((0, 2, 3))
            self.min = np.minimum(self.min, np.where(valid, x, np.inf).min((0, 2, 3)))
            self.max = np.maximum(self.max, np.where(valid, x, -np.inf).max((0, 2, 3)))
            return
        self.n += x.shape[0] * x.shape[2] * x.shape[3]
        self.sum += x.sum((0, 2, 3))
        self.sumsq += (x * x).sum((0, 2, 3))
        self.min = np.minimum(self.min, x.min((0, 2, 3)))
        self.max = np.maximum(self.max, x.max((0, 2, 3)))

    def as_attrs(self, prefix: str) -> dict:
        mean = self.sum / max(self.n, 1)
        std = np.sqrt(np.maximum(self.sumsq / max(self.n, 1) - mean**2, 0))
        return {f"{prefix}_min": self.min, f"{prefix}_max": self.max, f"{prefix}_mean": mean, f"{prefix}_std": std}


def shift_scale(kind: str, stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-band shift and scale (MS bands, then PAN) from patch-file-style statistics
    (``ms_min``, ``pan_max``, ``ms_mean``, ``pan_std``, ...): min-max or z-score; a constant band keeps scale 1."""
    if kind == "minmax":
        shift = np.concatenate([stats["ms_min"], stats["pan_min"]])
        scale = np.concatenate([stats["ms_max"], stats["pan_max"]]) - shift
    else:
        shift = np.concatenate([stats["ms_mean"], stats["pan_mean"]])
        scale = np.concatenate([stats["ms_std"], stats["pan_std"]])
    return shift, np.where(scale > 0, scale, 1.0)


def normalize_pair(ms: torch.Tensor, pan: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
    """(x - shift) / scale per band, as float32, for an MS batch (n, C, h, w) and its PAN batch (n, 1, H, W)."""
    c = ms.shape[1]
    shift, scale = shift.to(ms.device), scale.to(ms.device)
    return ((ms.float() - shift[:c, None, None]) / scale[:c, None, None],
            (pan.float() - shift[c:, None, None]) / scale[c:, None, None])


def joint_flip_rotate(batch: dict, generator: torch.Generator | None = None) -> dict:
    """The same random horizontal flip and k*90° rotation for MS and PAN of each sample."""
    ms, pan = batch["ms"], batch["pan"]
    n = ms.shape[0]
    k = torch.randint(0, 4, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    ms_out, pan_out = ms.clone(), pan.clone()
    for turns in range(4):
        for flipped in (False, True):
            sel = ((k == turns) & (flip == flipped)).nonzero().flatten().to(ms.device)
            if len(sel):
                m, p = ms[sel], pan[sel]
                if flipped:
                    m, p = m.flip(-1), p.flip(-1)
                ms_out[sel], pan_out[sel] = torch.rot90(m, turns, (-2, -1)), torch.rot90(p, turns, (-2, -1))
    batch["ms"], batch["pan"] = ms_out, pan_out
    return batch
