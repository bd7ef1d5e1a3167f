"""The field's patch geometry, bit for bit.

For a labelled MS pixel (r, c): MS patch rows r-7..r+8, cols c-7..c+8 (16x16, centre index 7);
PAN patch rows 4r-28..4r+35, cols 4c-28..4c+35 (64x64): the same ground. Borders reflect
without repeating the edge pixel (NumPy mode="reflect", OpenCV BORDER_REFLECT_101).
"""
from __future__ import annotations

import numpy as np

MS_PATCH, RATIO = 16, 4
CENTRE = 7  # index of the labelled pixel inside the MS patch


class PatchCutter:
    """Cuts (ms, pan) patch pairs for arrays of MS coordinates from one scene held in memory."""

    def __init__(self, ms: np.ndarray, pan: np.ndarray, ms_patch: int = MS_PATCH, ratio: int = RATIO):
        """ms (C, H, W), pan (1, ratio*H, ratio*W)."""
        self.ms_patch, self.ratio = ms_patch, ratio
        self.pan_patch = ms_patch * ratio
        before = ms_patch // 2 - 1  # 7
        after = ms_patch - before - 1  # 8
        self.before = before
        self.ms = np.pad(ms, ((0, 0), (before, after), (before, after)), mode="reflect")
        # PAN rows 4r-28 .. 4r+35 for r in 0..H-1: 28 rows before, 32 after
        pad = (before * ratio, after * ratio)
        self.pan = np.pad(pan, ((0, 0), pad, pad), mode="reflect")

    @classmethod
    def from_padded(cls, ms: np.ndarray, pan: np.ndarray, ms_patch: int = MS_PATCH, ratio: int = RATIO) -> PatchCutter:
        """A cutter over arrays that already carry the patch margins (a window of a larger scene,
        see das2f.data.windows): ``cut`` then takes coordinates relative to the window."""
        cutter = cls.__new__(cls)
        cutter.ms_patch, cutter.ratio, cutter.pan_patch = ms_patch, ratio, ms_patch * ratio
        cutter.before, cutter.ms, cutter.pan = ms_patch // 2 - 1, ms, pan
        return cutter

    def cut(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """coords (n, 2) MS (row, col) -> ms (n, C, P, P), pan (n, 1, rP, rP) in the scene's dtype."""
        r, c = coords[:, 0], coords[:, 1]
        p, q, k = self.ms_patch, self.pan_patch, self.ratio
        i = np.arange(p)
        ms = self.ms[:, (r[:, None] + i)[:, :, None], (c[:, None] + i)[:, None, :]]  # (C, n, P, P)
        j = np.arange(q)
        pan = self.pan[:, (k * r[:, None] + j)[:, :, None], (k * c[:, None] + j)[:, None, :]]
        return np.ascontiguousarray(ms.transpose(1, 0, 2, 3)), np.ascontiguousarray(pan.transpose(1, 0, 2, 3))
