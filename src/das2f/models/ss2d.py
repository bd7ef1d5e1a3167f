"""SS2D: 2D selective scan over a token grid (VMamba), with DAS²F's space-preserving input.

Shapes: tokens x (B, H, W, D); cross-scan sequences xs (B, K=4, D, L=H*W).
An :class:`SS2DBranch` holds one modality's parameters; :class:`SS2D` is one branch plus an
output LayerNorm. The CMDA core (``cmda.py``) composes two branches and swaps their SSM
parameters, so nothing here is duplicated there.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .scan import selective_scan

K_DIRECTIONS = 4


# --------------------------------------------------------------------------- cross scan / merge
def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, H*W): row-major, column-major, and both reversed."""
    b, d, h, w = x.shape
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    fwd = torch.stack((rows, cols), dim=1)
    return torch.cat((fwd, fwd.flip(-1)), dim=1)


def cross_merge(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 4, D, H*W) -> (B, D, H*W): undo each direction's order and sum (adjoint of cross_scan)."""
    b, k, d, length = ys.shape
    if k != K_DIRECTIONS or length != h * w:
        raise ValueError(f"cross_merge: expected (B, 4, D, {h * w}), got {tuple(ys.shape)}")
    # unbind, not slicing: its backward stacks the four gradients instead of zero-filling
    # a full-size tensor per slice
    rows, cols, rows_rev, cols_rev = ys.unbind(1)
    cols = cols + cols_rev.flip(-1)
    return rows + rows_rev.flip(-1) + cols.view(b, d, w, h).transpose(2, 3).reshape(b, d, length)


# --------------------------------------------------------------------------- token <-> image
def tokens_to_image(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, H, W, c*p*p) -> (B, c, H*p, W*p): each token's vector read as c channels of p x p pixels."""
    b, h, w, d = x.shape
    c = d // (patch * patch)
    return x.reshape(b, h, w, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * patch, w * patch)


# --------------------------------------------------------------------------- parameters
def _init_dt_bias(num: int, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4) -> torch.Tensor:
    dt = torch.exp(torch.rand(num) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus


class SSMParams(nn.Module):
    """Per-direction projections to (delta, B, C) and the SSM's A, D, delta bias (standard Mamba init)."""

    def __init__(self, d_model: int, d_state: int, dt_rank: int):
        super().__init__()
        k = K_DIRECTIONS
        self.d_state, self.dt_rank = d_state, dt_rank
        bound = 1.0 / math.sqrt(d_model)
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_model).uniform_(-bound, bound))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_model, dt_rank).uniform_(-dt_rank**-0.5, dt_rank**-0.5))
        self.dt_projs_bias = nn.Parameter(_init_dt_bias(k * d_model).view(k, d_model))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(k * d_model, 1))
        self.Ds = nn.Parameter(torch.ones(k * d_model))

    def forward(self, xs: torch.Tensor) -> dict:
        """xs (B, 4, D, L) -> keyword arguments of ``selective_scan`` except ``u``."""
        b, k, d, length = xs.shape
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        return dict(
            delta=dts.reshape(b, k * d, length),
            A=-torch.exp(self.A_logs.float()),
            B=Bs.contiguous(),
            C=Cs.contiguous(),
            D=self.Ds.float(),
            delta_bias=self.dt_projs_bias.reshape(-1).float(),
        )


class SpacePreservingConv(nn.Module):
    """SPVM input path: tokens -> sub-pixel image -> depthwise 3x3 + SiLU -> patch conv + BN -> (B, D, H, W)."""

    def __init__(self, d_model: int, patch: int = 4):
        super().__init__()
        if d_model % (patch * patch):
            raise ValueError(f"space-preserving SS2D needs d_model divisible by {patch * patch}, got {d_model}")
        self.patch = patch
        c = d_model // (patch * patch)
        self.conv2d = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.patch_embed = nn.Sequential(nn.Conv2d(c, d_model, patch, stride=patch), nn.BatchNorm2d(d_model))

    def forward(self, x):  # (B, H, W, D)
        img = F.silu(self.conv2d(tokens_to_image(x, self.patch)))
        return self.patch_embed(img)


class GridConv(nn.Module):
    """Plain VMamba input path: depthwise 3x3 conv on the token grid + SiLU -> (B, D, H, W)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.conv2d = nn.Conv2d(d_model, d_model, 3, padding=1, groups=d_model)

    def forward(self, x):  # (B, H, W, D)
        return F.silu(self.conv2d(x.permute(0, 3, 1, 2)))


class SS2DBranch(nn.Module):
    """One modality's SS2D parameters: gate, input path, SSM parameters, output projection."""

    def __init__(self, d_model=64, d_state=24, dt_rank=24, space_preserving=True):
        super().__init__()
        self.in_proj = nn.Linear(d_model, d_model, bias=False)
        self.local = SpacePreservingConv(d_model) if space_preserving else GridConv(d_model)
        self.ssm = SSMParams(d_model, d_state, dt_rank)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def prepare(self, x):
        """x (B, H, W, D) -> sequences xs (B, 4, D, L), gate z (B, H, W, D)."""
        z = F.silu(self.in_proj(x))
        return cross_scan(self.local(x)), z

    def finish(self, ys, z, out_norm: nn.LayerNorm):
        """Scan outputs (B, 4*D, L) -> merged, normed, gated, projected (B, H, W, D)."""
        b, h, w, d = z.shape
        y = cross_merge(ys.view(b, K_DIRECTIONS, d, h * w), h, w)
        y = out_norm(y.transpose(1, 2)).view(b, h, w, d)
        return self.out_proj(y * z)


def scan_sequences(xs: torch.Tensor, params: dict, backend: str) -> torch.Tensor:
    """Run all four directions of xs (B, 4, D, L) in one selective scan -> (B, 4*D, L)."""
    b, k, d, length = xs.shape
    return selective_scan(xs.reshape(b, k * d, length), delta_softplus=True, backend=backend, **params)


class SS2D(nn.Module):
    """Single-modality SS2D: (B, H, W, D) -> (B, H, W, D)."""

    def __init__(self, d_model=64, d_state=24, dt_rank=24, space_preserving=True, scan_backend="auto"):
        super().__init__()
        self.branch = SS2DBranch(d_model, d_state, dt_rank, space_preserving)
        self.out_norm = nn.LayerNorm(d_model)
        self.scan_backend = scan_backend

    def forward(self, x):
        xs, z = self.branch.prepare(x)
        ys = scan_sequences(xs, self.branch.ssm(xs), self.scan_backend)
        return self.branch.finish(ys, z, self.out_norm)
