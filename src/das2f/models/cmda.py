"""CMDA: cross-modal diff-attention. Two SS2D branches whose SSM parameters are swapped.

With ``swap=True`` the MS sequences are scanned with PAN's (delta, A, B, C, D, delta bias)
and the PAN sequences with MS's: what survives is what the modalities share (the *common*
feature). ``swap=False`` is the ablation: each branch scans with its own parameters.
"""
from __future__ import annotations

from torch import nn

from .ss2d import SS2DBranch, scan_sequences


class CMDACore(nn.Module):
    """(ms, pan) tokens (B, H, W, D) each -> (ms', pan') of the same shapes."""

    def __init__(self, d_model=64, d_state=24, dt_rank=24, space_preserving=True, swap=True, scan_backend="auto"):
        super().__init__()
        self.ms = SS2DBranch(d_model, d_state, dt_rank, space_preserving)
        self.pan = SS2DBranch(d_model, d_state, dt_rank, space_preserving)
        self.out_norm = nn.LayerNorm(d_model)  # shared by both modalities, as released
        self.swap = swap
        self.scan_backend = scan_backend

    def forward(self, ms, pan):
        xs_ms, z_ms = self.ms.prepare(ms)
        xs_pan, z_pan = self.pan.prepare(pan)
        p_ms, p_pan = self.ms.ssm(xs_ms), self.pan.ssm(xs_pan)
        if self.swap:
            p_ms, p_pan = p_pan, p_ms
        y_ms = scan_sequences(xs_ms, p_ms, self.scan_backend)
        y_pan = scan_sequences(xs_pan, p_pan, self.scan_backend)
        return self.ms.finish(y_ms, z_ms, self.out_norm), self.pan.finish(y_pan, z_pan, self.out_norm)
