"""SS2D: 2D selective scan over a token grid (VMamba), with DAS²F's space-preserving input.

Shapes: tokens x (B, H, W, D); cross-scan sequences xs (L=H*W, B, K=4, D), time-major.
An :class:`SS2DBranch` holds one modality's parameters; :class:`SS2D` is one branch plus an
output LayerNorm. The CMDA core (``cmda.py``) composes two branches and swaps their SSM
parameters, so nothing here is duplicated there.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.scan import selective_scan_time_major
from ..runtime.errors import ConfigError

K_DIRECTIONS = 4


# --------------------------------------------------------------------------- cross scan / merge
# Sequences are time-major, xs (L, B, 4, D): what the torch scan runs on, so that no operand of
# the scan is transposed element by element (ten transposing copies per scan otherwise; README,
# Benchmark). Both maps move whole D-vectors with one gather, and each is the other's adjoint, hence
# its backward.
def _cached(fn):
    """lru_cache for eager calls; under torch.compile the index is traced (dynamo skips the cache anyway,
    with a warning), so the compiled graph computes it itself."""
    cached = functools.lru_cache(maxsize=16)(fn)
    return functools.wraps(fn)(lambda *args: fn(*args) if torch.compiler.is_compiling() else cached(*args))


@_cached
def _orders(h: int, w: int) -> torch.Tensor:
    """(4, L): the token (row-major index) at each position of each direction's sequence."""
    rows = torch.arange(h * w)
    cols = rows.view(h, w).t().reshape(-1)  # column-major walk
    return torch.stack((rows, cols, rows.flip(0), cols.flip(0)))


@_cached
def _scan_index(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Rows of x (B*L, D) that make xs (L*B*4, D): xs[l, b, k] = x[b, orders[k, l]]."""
    orders = _orders(h, w)
    return (torch.arange(b)[None, :, None] * (h * w) + orders.t()[:, None, :]).reshape(-1).to(device)


@_cached
def _merge_index(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Rows of ys (L*B*4, D) that make (B*L*4, D): entry (b, token, k) is where direction k saw that token."""
    positions = _orders(h, w).argsort(dim=1)  # (4, L): position of each token in each sequence
    k = torch.arange(K_DIRECTIONS)
    idx = (positions.t()[None] * b + torch.arange(b)[:, None, None]) * K_DIRECTIONS + k  # (B, L, 4)
    return idx.reshape(-1).to(device)


def _gather_scan(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, length, d = x.shape
    return x.reshape(b * length, d).index_select(0, _scan_index(b, h, w, x.device)).view(length, b, K_DIRECTIONS, d)


def _gather_merge(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    length, b, k, d = ys.shape
    rows = ys.reshape(length * b * k, d).index_select(0, _merge_index(b, h, w, ys.device))
    return rows.view(b, length, k, d).sum(dim=2)


class _CrossMap(torch.autograd.Function):
    """Cross-scan (``merge=False``) or cross-merge (``merge=True``); the backward is the other one."""

    @staticmethod
    def forward(ctx, t, h, w, merge):
        ctx.hw, ctx.merge = (h, w), merge
        return (_gather_merge if merge else _gather_scan)(t, h, w)

    @staticmethod
    def backward(ctx, grad):
        return (_gather_scan if ctx.merge else _gather_merge)(grad.contiguous(), *ctx.hw), None, None, None


def cross_scan(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Tokens (B, L=H*W, D) in row-major order -> time-major sequences xs (L, B, 4, D): row-major,
    column-major, and both reversed."""
    b, length, d = x.shape
    if length != h * w:
        raise ValueError(f"cross_scan: expected (B, {h * w}, D) for a {h}x{w} grid, got {tuple(x.shape)}")
    return _CrossMap.apply(x.contiguous(), h, w, False)


def cross_merge(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(L, B, 4, D) -> (B, L, D): undo each direction's order and sum (adjoint of cross_scan)."""
    length, b, k, d = ys.shape
    if k != K_DIRECTIONS or length != h * w:
        raise ValueError(f"cross_merge: expected ({h * w}, B, 4, D), got {tuple(ys.shape)}")
    return _CrossMap.apply(ys.contiguous(), h, w, True)


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
        """xs (L, B, 4, D) -> keyword arguments of ``selective_scan_time_major`` except ``u``."""
        length, b, k, d = xs.shape
        x_dbl = torch.einsum("lbkd,kcd->lbkc", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=3)
        dts = torch.einsum("lbkr,kdr->lbkd", dts, self.dt_projs_weight)
        # A, D and the delta bias stay in float32 or wider when the activations are half precision
        # (the released code casts them with .float(), which would also narrow a float64 model)
        wide = torch.promote_types(xs.dtype, torch.float32)
        return dict(
            delta=dts.reshape(length, b, k * d),
            A=-torch.exp(self.A_logs.to(wide)),
            B=Bs.contiguous(),
            C=Cs.contiguous(),
            D=self.Ds.to(wide),
            delta_bias=self.dt_projs_bias.reshape(-1).to(wide),
        )


class SpacePreservingConv(nn.Module):
    """SPVM input path: tokens -> sub-pixel image -> depthwise 3x3 + SiLU -> patch conv + BN -> (B, H, W, D)."""

    def __init__(self, d_model: int, patch: int = 4):
        super().__init__()
        if d_model % (patch * patch):
            raise ConfigError(f"space-preserving SS2D needs d_model divisible by {patch * patch}, got {d_model}")
        self.patch = patch
        c = d_model // (patch * patch)
        self.conv2d = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.patch_embed = nn.Sequential(nn.Conv2d(c, d_model, patch, stride=patch), nn.BatchNorm2d(d_model))

    def forward(self, x):  # (B, H, W, D)
        img = F.silu(self.conv2d(tokens_to_image(x, self.patch)))
        # channels-last, so that the tokens come out as contiguous D-vectors
        return self.patch_embed(img.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)


class GridConv(nn.Module):
    """Plain VMamba input path: depthwise 3x3 conv on the token grid + SiLU -> (B, H, W, D)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.conv2d = nn.Conv2d(d_model, d_model, 3, padding=1, groups=d_model)

    def forward(self, x):  # (B, H, W, D)
        return F.silu(self.conv2d(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class SS2DBranch(nn.Module):
    """One modality's SS2D parameters: gate, input path, SSM parameters, output projection."""

    def __init__(self, d_model=64, d_state=24, dt_rank=24, space_preserving=True):
        super().__init__()
        self.in_proj = nn.Linear(d_model, d_model, bias=False)
        self.local = SpacePreservingConv(d_model) if space_preserving else GridConv(d_model)
        self.ssm = SSMParams(d_model, d_state, dt_rank)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def prepare(self, x):
        """x (B, H, W, D) -> sequences xs (L, B, 4, D), gate z (B, H, W, D)."""
        b, h, w, d = x.shape
        z = F.silu(self.in_proj(x))
        return cross_scan(self.local(x).reshape(b, h * w, d), h, w), z

    def finish(self, ys, z, out_norm: nn.LayerNorm):
        """Scan outputs (L, B, 4*D) -> merged, normed, gated, projected (B, H, W, D)."""
        b, h, w, d = z.shape
        y = cross_merge(ys.view(h * w, b, K_DIRECTIONS, d), h, w)
        y = out_norm(y).view(b, h, w, d)
        return self.out_proj(y * z)


def scan_sequences(xs: torch.Tensor, params: dict, backend: str) -> torch.Tensor:
    """Run all four directions of xs (L, B, 4, D) in one selective scan -> (L, B, 4*D)."""
    length, b, k, d = xs.shape
    return selective_scan_time_major(xs.reshape(length, b, k * d), delta_softplus=True, backend=backend, **params)


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
