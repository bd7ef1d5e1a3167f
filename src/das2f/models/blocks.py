"""Residual blocks of the backbone: one-modality blocks and cross-modal blocks.

Every block keeps the released code's quirk of ONE LayerNorm module for all its pre-norms.
The backbone kind (``spvm``, ``vmamba``, ``cnn``) only changes the token mixer inside.
Tokens are (B, H, W, D) throughout.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..runtime.errors import ConfigError
from .cmda import CMDACore
from .ss2d import SS2D


def mlp(d_model: int, ratio: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, ratio * d_model), nn.GELU(), nn.Linear(ratio * d_model, d_model))


class ConvMixer(nn.Module):
    """CNN token mixer: 3x3 conv on the token grid (one modality)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.conv = nn.Conv2d(d_model, d_model, 3, padding=1)

    def forward(self, x):
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class CrossConvMixer(nn.Module):
    """CNN cross-modal mixer: each modality's update is a 3x3 conv of both modalities."""

    def __init__(self, d_model: int):
        super().__init__()
        self.to_ms = nn.Conv2d(2 * d_model, d_model, 3, padding=1)
        self.to_pan = nn.Conv2d(2 * d_model, d_model, 3, padding=1)

    def forward(self, ms, pan):
        both = torch.cat((ms, pan), dim=-1).permute(0, 3, 1, 2)
        return self.to_ms(both).permute(0, 2, 3, 1), self.to_pan(both).permute(0, 2, 3, 1)


@dataclass(frozen=True)
class Backbone:
    """A backbone kind: its one-modality token mixer and its cross-modal mixer, built from
    (d_model, d_state, dt_rank, swap, scan_backend)."""

    mixer: Callable[..., nn.Module]
    cross: Callable[..., nn.Module]


# The registry of backbones: config name -> mixers (a new backbone: its mixers, a line here, and
# conf/backbone/<name>.yaml). spvm and vmamba differ only in SS2D's input path (space-preserving or not).
BACKBONES: dict[str, Backbone] = {
    "spvm": Backbone(lambda d, n, r, swap, be: SS2D(d, n, r, True, be),
                     lambda d, n, r, swap, be: CMDACore(d, n, r, True, swap, be)),
    "vmamba": Backbone(lambda d, n, r, swap, be: SS2D(d, n, r, False, be),
                       lambda d, n, r, swap, be: CMDACore(d, n, r, False, swap, be)),
    "cnn": Backbone(lambda d, n, r, swap, be: ConvMixer(d), lambda d, n, r, swap, be: CrossConvMixer(d)),
}


def backbone_kind(kind: str) -> Backbone:
    if kind not in BACKBONES:
        raise ConfigError(f"backbone must be one of {sorted(BACKBONES)}, got {kind!r}")
    return BACKBONES[kind]


class MixerBlock(nn.Module):
    """x + mixer(LN(x)), then + MLP(LN(.)). With an SS2D mixer this is the SPVM block."""

    def __init__(self, backbone="spvm", d_model=64, d_state=24, dt_rank=24, mlp_ratio=4, scan_backend="auto"):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = backbone_kind(backbone).mixer(d_model, d_state, dt_rank, True, scan_backend)
        self.mlp = mlp(d_model, mlp_ratio)

    def forward(self, x):
        x = x + self.mixer(self.norm(x))
        return x + self.mlp(self.norm(x))


class CrossBlock(nn.Module):
    """(ms, pan) -> common features (msc, panc). With an SS2D backbone this is the CMDA block."""

    def __init__(self, backbone="spvm", d_model=64, d_state=24, dt_rank=24, mlp_ratio=4, swap=True,
                 scan_backend="auto"):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = backbone_kind(backbone).cross(d_model, d_state, dt_rank, swap, scan_backend)
        self.mlp_ms = mlp(d_model, mlp_ratio)
        self.mlp_pan = mlp(d_model, mlp_ratio)

    def forward(self, ms, pan):
        d_ms, d_pan = self.mixer(self.norm(ms), self.norm(pan))
        ms, pan = ms + d_ms, pan + d_pan
        return ms + self.mlp_ms(self.norm(ms)), pan + self.mlp_pan(self.norm(pan))
