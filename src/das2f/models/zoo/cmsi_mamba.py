"""CMSI-Mamba (CMS²I-Mamba): the cross-modal spatial-spectral interaction Mamba of Ma et al., "A Mamba-aware
spatial spectral cross-modal network for remote sensing classification", IEEE TGRS 63, 2025 (the DAS²F authors'
group). Its modules: multipath selective scans per modality (MPS2M), channel interaction alignment (CIAM: the
former / latter halves and the odd / even channels of the two modalities swapped) and semantic-aware calibration
(SACM: cross-modal scans guided by the fused feature).

Read: github.com/ru-willow/CMSI-Mamba, CMSI.py, commit 24a4881 (the repository's only file; no licence stated, no
training code). Written anew here on das2f's scan backends (das2f.ops.scan; no CUDA-only call).

Inputs: ms (B, C, P, P) with P even, pan (B, 1, rP, rP). MS: two residual blocks (C -> 64 with stride 2, 64 -> 128)
give 128 channel tokens, each the channel's (P/2) x (P/2) map as a vector of d = (P/2)^2; two spectral layers scan
them forward, in a fixed permuted order and reversed (one LayerNorm shared by the layers, one Mamba per layer, the
orders undone and averaged, a ReLU residual). PAN: a patch embedding (kernel and stride 2r) gives the same
(P/2) x (P/2) grid of 64-wide tokens, a zero-initialised positional embedding, two spatial layers scanning the grid
in four directions (row, column, both reversed; one shared Mamba per layer), a linear lift to 128 read as 128
channel tokens of width d. CIAM (4 Mambas): the halves swapped between the modalities, scanned over 2 layers into
the MS feature, then the odd / even channels into the PAN feature. SACM: the fused feature f = a + b normalised, a
second CIAM applied to (a, f) and (b, f), two cross-modal scans (two selective scans, of the branch and of f,
sharing one gate), averaged. Head: flatten, 128 d -> 64, LayerNorm, ReLU, dropout 0.5, linear. Each Mamba is
Mamba-1's mixer (das2f.models.mamba.Mamba1D, expand 2, state 16). 1,301,771 parameters for C=4, P=16, r=4 and 11
classes; the width d grows with P (526,379 at P=8, 8,066,699 at P=32, most of it the head).

Deviations: each multipath layer re-derives its three (four) orders from the current fused feature (the code feeds
layer 2 the previous layer's branch outputs, already restored to natural order, so its second layer mis-orders
them); the PAN's column-major and reversed outputs are mapped back to row-major before they are averaged (the code
adds the column-major output transposed) and the positional embedding reaches every direction (the code adds it to
the row-major copy only); the spectral permutation is one fixed seeded order (the code draws a new one at every
call, evaluation included, so its predictions are not repeatable); the unused modules of the code (three residual
blocks, three convolutions, a channel embedding, four LayerNorms, an output projection and the cross-modal scans'
step-size biases, which get no gradient) are left out (the code's state dict holds 6.73 million parameters, 1.30
million of them live). Kept as the code has them: no SiLU after the cross-modal scans' convolution (the
causal-conv1d call passes its activation in the place of another argument), the LayerNorm on one SACM branch only.
Sizes follow the patch: the code fixes P=16, r=4 (d = 64).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import PatchClassifier
from ..mamba import Mamba1D, ScanStream
from ..ss2d import cross_merge, cross_scan


class ResBlock(nn.Module):
    """conv3x3 (stride s) + BN + ReLU + conv3x3 + BN, plus a 1x1 + BN shortcut where the width changes; ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out))
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))
                         if c_in != c_out else nn.Identity())

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


def scan_stacked(mamba: nn.Module, *sequences: torch.Tensor) -> list[torch.Tensor]:
    """One Mamba over several (B, L, D) sequences at once (stacked on the batch axis), split back."""
    return list(mamba(torch.cat(sequences)).chunk(len(sequences)))


class ChannelInteraction(nn.Module):
    """CIAM: (ms, pan) (B, W, d) each -> (ms, pan). The halves swapped, 2 layers into ms; then the odd / even
    channels of the updated ms and the original pan swapped, 2 layers into pan."""

    def __init__(self, d: int, scan_backend: str):
        super().__init__()
        self.halves = nn.ModuleList(Mamba1D(d, scan_backend=scan_backend) for _ in range(2))
        self.parity = nn.ModuleList(Mamba1D(d, scan_backend=scan_backend) for _ in range(2))

    def forward(self, ms, pan):
        half = ms.shape[1] // 2
        s1 = torch.cat((ms[:, :half], pan[:, half:]), dim=1)
        s2 = torch.cat((pan[:, :half], ms[:, half:]), dim=1)
        for mamba in self.halves:
            s1, s2 = scan_stacked(mamba, s1, s2)
            ms = F.relu((s1 + s2) / 2 + ms)
        even = (torch.arange(ms.shape[1], device=ms.device) % 2 == 0).view(1, -1, 1)
        s3, s4 = torch.where(even, pan, ms), torch.where(even, ms, pan)
        for mamba in self.parity:
            s3, s4 = scan_stacked(mamba, s3, s4)
            pan = F.relu((s3 + s4) / 2 + pan)
        return ms, pan


class CrossScan(nn.Module):
    """The cross-modal scan: x, guide (B, L, d) -> (B, L, d). Two selective scans, of x and of the guide, each with
    its own conv and projections, summed under one gate SiLU(z) from x; no SiLU after the convs, no step bias."""

    def __init__(self, d: int, scan_backend: str, d_state: int = 16):
        super().__init__()
        d_inner, rank = 2 * d, math.ceil(d / 16)
        self.in_proj = nn.Linear(d, 2 * d_inner, bias=False)
        self.guide_proj = nn.Linear(d, d_inner, bias=False)
        self.stream, self.guide_stream = (ScanStream(d_inner, d_state, rank, activation=False, delta_bias=False,
                                                     scan_backend=scan_backend) for _ in range(2))
        self.out_proj = nn.Linear(d_inner, d, bias=False)

    def forward(self, x, guide):
        u, z = self.in_proj(x).chunk(2, dim=-1)
        y = self.stream(u) + self.guide_stream(self.guide_proj(guide))
        return self.out_proj(y.transpose(1, 2) * F.silu(z))


class Calibration(nn.Module):
    """SACM: (a, b, f) -> (B, W, d). f normalised; one CIAM applied to (a, f) and to (b, f); a cross-modal scan
    per branch guided by f (a LayerNorm before branch a's only, as the code has it); the branches averaged."""

    def __init__(self, d: int, scan_backend: str):
        super().__init__()
        self.norm_f, self.norm_a = nn.LayerNorm(d), nn.LayerNorm(d)
        self.interaction = ChannelInteraction(d, scan_backend)
        self.cross_a, self.cross_b = CrossScan(d, scan_backend), CrossScan(d, scan_backend)

    def forward(self, a, b, f):
        f = self.norm_f(f)
        a1, a2 = self.interaction(a, f)
        b1, b2 = self.interaction(b, f)
        a = F.relu(self.cross_a(self.norm_a((a1 + a2) / 2), f) + a)
        b = F.relu(self.cross_b((b1 + b2) / 2, f) + b)
        return (a + b) / 2


class CMSIMamba(PatchClassifier):
    """CMSI-Mamba for MS + PAN patches: (ms, pan) -> logits (module docstring).

    Args:
        ms_channels, ms_patch, ratio, num_classes: the dataset's geometry and classes (das2f.models.base); the MS
            patch must be even.
        width: the channel tokens (128; even, for the halves and the odd / even channels); embed: the PAN tokens'
            width (64); layers: multipath layers per modality (2); hidden: the head's width (64); dropout: 0.5.
        seed: the seed of the fixed spectral permutation.
        scan_backend: the selective scan's backend (das2f.ops.scan).
    """

    def __init__(self, ms_channels: int = 4, ms_patch: int = 16, ratio: int = 4, num_classes: int = 11,
                 width: int = 128, embed: int = 64, layers: int = 2, hidden: int = 64, dropout: float = 0.5,
                 seed: int = 0, scan_backend: str = "auto"):
        self.refuse(ms_patch % 2 != 0, f"the MS patch must be even (the MS stem halves it), got ms_patch={ms_patch}")
        self.refuse(width % 2 != 0, f"width must be even (its halves are swapped), got {width}")
        super().__init__(ms_channels, ms_patch, ratio, num_classes)
        self.grid = ms_patch // 2
        d = self.grid ** 2
        self.ms_stem = nn.Sequential(ResBlock(ms_channels, 64, 2), ResBlock(64, width, 1))
        self.register_buffer("order", torch.randperm(width, generator=torch.Generator().manual_seed(seed)))
        self.ms_norm = nn.LayerNorm(d)
        self.ms_layers = nn.ModuleList(Mamba1D(d, scan_backend=scan_backend) for _ in range(layers))
        self.pan_embed = nn.Conv2d(1, embed, 2 * ratio, stride=2 * ratio)
        self.position = nn.Parameter(torch.zeros(1, d, embed))
        self.pan_norm = nn.LayerNorm(embed)
        self.pan_layers = nn.ModuleList(Mamba1D(embed, scan_backend=scan_backend) for _ in range(layers))
        self.pan_lift = nn.Linear(embed, width)
        self.interaction = ChannelInteraction(d, scan_backend)
        self.calibration = Calibration(d, scan_backend)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * d, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def spectral(self, ms):
        """(B, W, d) channel tokens scanned forward, permuted and reversed per layer; the orders undone, averaged."""
        undo = torch.argsort(self.order)
        for mamba in self.ms_layers:
            x = self.ms_norm(ms)
            fwd, perm, rev = scan_stacked(mamba, x, x[:, self.order], x.flip(1))
            ms = F.relu((fwd + perm[:, undo] + rev.flip(1)) / 3 + ms)
        return ms

    def spatial(self, pan):
        """(B, L, embed) grid tokens scanned in four directions per layer; each mapped back to row-major, averaged."""
        g = self.grid
        x = pan + self.position
        for mamba in self.pan_layers:
            xs = cross_scan(self.pan_norm(x), g, g)  # (L, B, 4, embed)
            length, b, k, e = xs.shape
            ys = mamba(xs.permute(1, 2, 0, 3).reshape(b * k, length, e))
            pan = F.relu(cross_merge(ys.view(b, k, length, e).permute(2, 0, 1, 3), g, g) / k + pan)
            x = pan
        return pan

    def forward(self, ms, pan):
        self.check_inputs(ms, pan)
        m = self.spectral(self.ms_stem(ms).flatten(2))  # (B, W, d)
        p = self.spatial(self.pan_embed(pan).flatten(2).transpose(1, 2))  # (B, d, embed)
        a, b = self.interaction(m, self.pan_lift(p).transpose(1, 2))
        return self.head(self.calibration(a, b, a + b))
