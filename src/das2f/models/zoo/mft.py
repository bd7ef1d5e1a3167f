"""MFT: the multimodal fusion transformer of Roy, Deria, Hong, Rasti, Plaza, Chanussot, "Multimodal Fusion
Transformer for Remote Sensing Image Classification", IEEE TGRS 61:5515620, 2023, doi:10.1109/TGRS.2023.3286826.

Read: github.com/AnkurDeria/MFT, Model/MFT.ipynb (the channel-tokenisation model and its training loop) at de214e5
(no licence stated). Written anew here.

Inputs: ms (B, C, P, P) gives the tokens (the hyperspectral role of the paper), pan (B, 1, rP, rP) the CLS token
(the LiDAR / SAR role: the paper's idea, a CLS token computed from the other modality instead of a learned one).
MS stem: 3x3 conv C -> 64 + BN + ReLU, then a HetConv (a 4-group 3x3 and a 1x1 conv, summed) + BN + ReLU; PAN stem:
3x3 conv 1 -> 32 + BN + GELU at the PAN size, a conv of kernel and stride r to 64 at the MS grid + BN + GELU. Soft
tokenisers (a softmax over the positions of a learned projection weights the projected features): 4 MS tokens, 1
PAN token as CLS; a positional embedding over the 5, dropout 0.1; 2 pre-LN blocks whose attention takes its query
from the CLS token only, with keys and values from all 5 tokens (8 heads), its output added to every token, then an
MLP 64 -> 512 -> 64 (GELU); LayerNorm, the CLS token, a linear layer. 224,715 parameters for C=4 and 11 classes,
any P (the tokenisers pool every position).

Deviations: a 2-D stem for a few MS bands in place of the 3-D hyperspectral one (a spectral kernel of 9 needs more
than 8 bands); the PAN stem's stride-r conv brings the PAN to the MS grid (the original's second modality has the
hyperspectral image's size); the paper's attention (64x64 query, key and value projections; 8 heads of 8) where the
code shares one 8 -> 64 projection across heads and projects 512 -> 64; the positional embedding initialised with
std 0.02 (the code: N(0, 1)); checkpoints selected on validation (the code selects on the test set).
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import PatchClassifier


class Tokenizer(nn.Module):
    """(B, D, H, W) -> (B, n, D): n softmax-over-positions weightings of the projected features."""

    def __init__(self, width: int, tokens: int):
        super().__init__()
        self.attend = nn.Parameter(nn.init.xavier_normal_(torch.empty(width, tokens)))
        self.value = nn.Parameter(nn.init.xavier_normal_(torch.empty(width, width)))

    def forward(self, x):
        f = x.flatten(2).transpose(1, 2)  # (B, HW, D)
        weights = (f @ self.attend).softmax(dim=1)  # (B, HW, n)
        return weights.transpose(1, 2) @ (f @ self.value)


class HetConv(nn.Module):
    """A grouped 3x3 and a 1x1 convolution in parallel, summed."""

    def __init__(self, c_in: int, c_out: int, groups: int = 4):
        super().__init__()
        self.group = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups)
        self.point = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return self.group(x) + self.point(x)


class ClsAttention(nn.Module):
    """Attention with the CLS token (token 0) as the only query over all tokens: (B, n, D) -> (B, 1, D)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width, bias=False) for _ in range(3))
        self.out = nn.Sequential(nn.Linear(width, width), nn.Dropout(dropout))

    def forward(self, x):
        b, n, d = x.shape
        split = lambda t: t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        y = nn.functional.scaled_dot_product_attention(split(self.q(x[:, :1])), split(self.k(x)), split(self.v(x)))
        return self.out(y.transpose(1, 2).reshape(b, 1, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
        self.attn = ClsAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp, width),
                                 nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))  # the CLS token's update, added to every token
        return x + self.mlp(self.norm2(x))


class MFT(PatchClassifier):
    """MFT for MS + PAN patches: (ms, pan) -> logits (module docstring).

    Args:
        ms_channels, ms_patch, ratio, num_classes: the dataset's geometry and classes (das2f.models.base).
        width: the token width (64); heads: attention heads (8); depth: blocks (2); mlp: the MLP width (512);
        tokens: MS tokens (4); dropout: 0.1.
        scan_backend: ignored (no selective scan).
    """

    def __init__(self, ms_channels: int = 4, ms_patch: int = 16, ratio: int = 4, num_classes: int = 11,
                 width: int = 64, heads: int = 8, depth: int = 2, mlp: int = 512, tokens: int = 4,
                 dropout: float = 0.1, scan_backend: str = "auto"):
        self.refuse(width % heads or width % 4, f"width ({width}) must be divisible by heads ({heads}) and by 4")
        super().__init__(ms_channels, ms_patch, ratio, num_classes)
        self.ms_stem = nn.Sequential(nn.Conv2d(ms_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                     HetConv(width, width), nn.BatchNorm2d(width), nn.ReLU())
        self.pan_stem = nn.Sequential(nn.Conv2d(1, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2), nn.GELU(),
                                      nn.Conv2d(width // 2, width, ratio, stride=ratio), nn.BatchNorm2d(width), nn.GELU())
        self.ms_tokens, self.cls_token = Tokenizer(width, tokens), Tokenizer(width, 1)
        self.position = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, tokens + 1, width), std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(width, heads, mlp, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, ms, pan):
        self.check_inputs(ms, pan)
        x = torch.cat((self.cls_token(self.pan_stem(pan)), self.ms_tokens(self.ms_stem(ms))), dim=1)
        x = self.blocks(self.dropout(x + self.position))
        return self.classifier(self.norm(x)[:, 0])
