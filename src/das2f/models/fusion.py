"""Fusion of dominant and common features on the sub-pixel grid (B, P, c), P = 4*H*W, c = D/4.

``AALFBlock`` is the paper's attention-aware linear fusion; ``sum``, ``mean`` and ``concat``
are the simple alternatives for the ablation. Every block maps (ms_dom, pan_dom, f) -> f'.
"""
from __future__ import annotations

import torch
from torch import nn

from ..runtime.errors import ConfigError


def tokens_to_subpixels(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, D) -> (B, 4*H*W, D/4): each token becomes D/4 channels at 2x2 sub-pixels."""
    b, h, w, d = x.shape
    return x.reshape(b, h, w, d // 4, 2, 2).permute(0, 1, 4, 2, 5, 3).reshape(b, 4 * h * w, d // 4)


class AttentionLinearFuse(nn.Module):
    """Fuse(A, B) = mean_c(A * sigmoid(W [A; B])) * B: a per-pixel 'influence coefficient' scaling B."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Linear(2 * channels, channels)

    def forward(self, a, b):
        g = torch.sigmoid(self.gate(torch.cat((a, b), dim=-1)))
        return (a * g).mean(dim=-1, keepdim=True) * b


class AALFBlock(nn.Module):
    """x = Fuse1(LN(ms_dom), LN(pan_dom)); out = Fuse2(LN(x), LN(f)); one shared LayerNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.fuse1 = AttentionLinearFuse(channels)
        self.fuse2 = AttentionLinearFuse(channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, ms_dom, pan_dom, f):
        x = self.fuse1(self.norm(ms_dom), self.norm(pan_dom))
        return self.fuse2(self.norm(x), self.norm(f))


class SumFusion(nn.Module):
    """f + ms_dom + pan_dom (no parameters)."""

    def __init__(self, channels: int):
        super().__init__()

    def forward(self, ms_dom, pan_dom, f):
        return f + ms_dom + pan_dom


class MeanFusion(nn.Module):
    """(f + ms_dom + pan_dom) / 3 (no parameters)."""

    def __init__(self, channels: int):
        super().__init__()

    def forward(self, ms_dom, pan_dom, f):
        return (f + ms_dom + pan_dom) / 3


class ConcatFusion(nn.Module):
    """Linear(concat(LN(ms_dom), LN(pan_dom), LN(f))) back to c channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(3 * channels, channels)

    def forward(self, ms_dom, pan_dom, f):
        return self.proj(torch.cat((self.norm(ms_dom), self.norm(pan_dom), self.norm(f)), dim=-1))


# The registry of fusions: config name -> module class (a new fusion: a class above, a line here,
# and conf/fusion/<name>.yaml).
FUSIONS: dict[str, type[nn.Module]] = {"aalf": AALFBlock, "sum": SumFusion, "mean": MeanFusion, "concat": ConcatFusion}


def check_fusion(kind: str) -> None:
    if kind not in FUSIONS:
        raise ConfigError(f"fusion must be one of {sorted(FUSIONS)}, got {kind!r}")


def make_fusion(kind: str, channels: int) -> nn.Module:
    check_fusion(kind)
    return FUSIONS[kind](channels)
