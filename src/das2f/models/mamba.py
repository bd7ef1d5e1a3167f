"""A 1-D Mamba mixer (Gu and Dao, 2023; mamba-ssm's ``Mamba`` layer, version 1) on das2f's scan backends.

Sequences x (B, L, D) -> (B, L, D): an input projection to the scanned stream u and the gate z (expand 2), a causal
depthwise conv along L (kernel 4) and SiLU on u, the selective scan of u with (delta, B, C) projected from it
(delta through a rank-R projection, R = ceil(D / 16), softplus with a bias), the gate y * SiLU(z), an output
projection. The standard Mamba initialisation (das2f.models.ss2d). Used by the nets that scan 1-D sequences
(das2f.models.zoo.cmsi_mamba); SS2D scans token grids.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.scan import selective_scan
from .ss2d import _init_dt_bias


class ScanStream(nn.Module):
    """The scanned half of a Mamba layer: u (B, L, d_inner) -> y (B, d_inner, L), before any gate.

    ``activation``: SiLU after the causal conv (Mamba's); ``delta_bias``: the step size's bias (Mamba's)."""

    def __init__(self, d_inner: int, d_state: int = 16, dt_rank: int | None = None, d_conv: int = 4,
                 activation: bool = True, delta_bias: bool = True, scan_backend: str = "auto"):
        super().__init__()
        self.dt_rank = dt_rank or math.ceil(d_inner / 32)
        self.d_state, self.activation, self.scan_backend = d_state, activation, scan_backend
        self.conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=delta_bias)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        if delta_bias:
            with torch.no_grad():
                self.dt_proj.bias.copy_(_init_dt_bias(d_inner))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))

    def forward(self, u):
        length = u.shape[1]
        u = self.conv(u.transpose(1, 2))[..., :length]  # causal: the first L outputs
        if self.activation:
            u = F.silu(u)
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        wide = torch.promote_types(u.dtype, torch.float32)
        bias = self.dt_proj.bias.to(wide) if self.dt_proj.bias is not None else None
        return selective_scan(u.contiguous(), delta.contiguous(), -torch.exp(self.A_log.to(wide)),
                              B.transpose(1, 2).unsqueeze(1).contiguous(), C.transpose(1, 2).unsqueeze(1).contiguous(),
                              self.D.to(wide), bias, delta_softplus=True, backend=self.scan_backend)


class Mamba1D(nn.Module):
    """(B, L, d_model) -> (B, L, d_model): Mamba-1's mixer (module docstring); no norm, no residual."""

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4, scan_backend: str = "auto"):
        super().__init__()
        d_inner = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.stream = ScanStream(d_inner, d_state, math.ceil(d_model / 16), d_conv, scan_backend=scan_backend)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x):
        u, z = self.in_proj(x).chunk(2, dim=-1)
        y = self.stream(u).transpose(1, 2)
        return self.out_proj(y * F.silu(z))
