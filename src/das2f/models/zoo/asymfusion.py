"""AsymFusion: Wang, Sun, Huang, Rong, Gan, Huang, "Learning Deep Multimodal Feature Representation with Asymmetric
Multi-layer Fusion", ACM Multimedia 2020 (arXiv:2108.05009).

Read: github.com/yikaiw/AsymFusion, models/model.py, models/parallel.py and main.py at 25dbb6f (RGB-D semantic
segmentation, RefineNet-LW on ResNet-101; MIT licence, with RefineNet-LW's non-commercial header on model.py).
Written anew here.

Inputs: ms (B, C, P, P) and pan (B, 1, rP, rP), brought to one size as DAS²F does: the MS bilinearly upsampled to
the PAN size, the PAN repeated to C channels (the original tiles depth to 3 channels for its shared stem). Two
streams, MS and PAN, through ONE network: every convolution is shared by the streams, every batch norm is private to
one. A bottleneck ResNet (stem 3x3 C -> 32, stride 2 from a 128-pixel PAN patch; 4 stages of 2 bottlenecks, mid
widths 16 / 32 / 64 / 128, outputs 64 ... 512, stride 2 from stage 2). The last bottleneck of each stage fuses, with
m its mid width and S = 4 floor(m / 5): the channels from S on are swapped between the streams before and after
its 3x3 conv (channel shuffle), and each stream's first S channels after its first 1x1 conv, in four groups shifted
one pixel down, right, left and up, are added to the OTHER stream after the 3x3 conv (pixel shift). Per stream:
global average pooling, dropout 0.5, one shared linear layer; the prediction is the softmax(alpha)-weighted sum of
the two streams' logits (detached: it trains alpha only), and the training loss is the sum of the three
cross-entropies. 892,685 parameters for C=4 and 11 classes, any P.

Deviations: adapted from segmentation to patch classification (the RefineNet decoder dropped; global pooling and a
linear layer instead); a small bottleneck ResNet from scratch (planes 16-128, 2 blocks per stage) in place of an
ImageNet ResNet-101, whose batch norms the original freezes (here trained); MS and PAN in place of RGB and depth.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import PatchClassifier

STREAMS = 2  # MS, PAN


class PrivateNorm(nn.Module):
    """One batch norm per stream: [x_ms, x_pan] -> [BN_ms(x_ms), BN_pan(x_pan)]."""

    def __init__(self, channels: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(STREAMS))

    def forward(self, xs):
        return [n(x) for n, x in zip(self.norms, xs)]


def shifted(x: torch.Tensor) -> torch.Tensor:
    """(B, 4g, H, W): four channel groups moved one pixel down, right, left, up (zeros shifted in)."""
    padded = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    groups = padded.chunk(4, dim=1)
    moves = ((0, 1), (1, 0), (1, 2), (2, 1))  # (row, col) offset into the padding: down, right, left, up
    return torch.cat([g[:, :, r:r + h, c:c + w] for g, (r, c) in zip(groups, moves)], dim=1)


def swap_tails(a: torch.Tensor, b: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The channels from ``keep`` on exchanged between the two streams."""
    return torch.cat((a[:, :keep], b[:, keep:]), 1), torch.cat((b[:, :keep], a[:, keep:]), 1)


class Bottleneck(nn.Module):
    """A ResNet bottleneck (1x1, 3x3 with the stride, 1x1 to 4m) on both streams, shared convolutions and private
    norms; ``fuse``: the channel shuffle and the pixel shift between the streams (module docstring)."""

    def __init__(self, c_in: int, planes: int, stride: int = 1, fuse: bool = False):
        super().__init__()
        out = 4 * planes
        self.conv1, self.bn1 = nn.Conv2d(c_in, planes, 1, bias=False), PrivateNorm(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), PrivateNorm(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), PrivateNorm(out)
        self.down = None
        if stride != 1 or c_in != out:
            self.down, self.down_bn = nn.Conv2d(c_in, out, 1, stride, bias=False), PrivateNorm(out)
        self.keep = 4 * (planes // 5) if fuse else None

    def forward(self, xs):
        u = [F.relu(x) for x in self.bn1([self.conv1(x) for x in xs])]
        if self.keep is not None:
            shifts = [shifted(t[:, :self.keep]) for t in u]
            u = list(swap_tails(*u, self.keep))
        w = [F.relu(x) for x in self.bn2([self.conv2(x) for x in u])]
        if self.keep is not None:
            k = self.keep
            w = [torch.cat((t[:, :k] + s, t[:, k:]), 1) for t, s in zip(w, reversed(shifts))]  # the other's shift
            w = list(swap_tails(*w, k))
        y = self.bn3([self.conv3(x) for x in w])
        skip = xs if self.down is None else self.down_bn([self.down(x) for x in xs])
        return [F.relu(a + b) for a, b in zip(y, skip)]


class AsymFusion(PatchClassifier):
    """AsymFusion for MS + PAN patches: (ms, pan) -> the ensemble's logits (module docstring).

    Args:
        ms_channels, ms_patch, ratio, num_classes: the dataset's geometry and classes (das2f.models.base).
        planes: the mid widths of the four stages (each >= 5: the shuffle keeps 4 floor(m / 5) channels).
        blocks: bottlenecks per stage (>= 2: the last one fuses, never the first).
        stem: the stem's width.
        dropout: before the linear layer (0.5).
        scan_backend: ignored (no selective scan).
    """

    def __init__(self, ms_channels: int = 4, ms_patch: int = 16, ratio: int = 4, num_classes: int = 11,
                 planes: tuple = (16, 32, 64, 128), blocks: int = 2, stem: int = 32, dropout: float = 0.5,
                 scan_backend: str = "auto"):
        self.refuse(min(planes) < 5, f"every stage's width must be >= 5 (the channel shuffle); got planes={list(planes)}")
        self.refuse(blocks < 2, f"each stage needs >= 2 blocks (its last one fuses); got blocks={blocks}")
        super().__init__(ms_channels, ms_patch, ratio, num_classes)
        self.stem = nn.Conv2d(ms_channels, stem, 3, 2 if self.pan_patch >= 128 else 1, 1, bias=False)
        self.stem_bn = PrivateNorm(stem)
        layers, c = [], stem
        for i, m in enumerate(planes):
            for j in range(blocks):
                layers.append(Bottleneck(c, m, stride=2 if i > 0 and j == 0 else 1, fuse=j == blocks - 1))
                c = 4 * m
        self.layers = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, num_classes)
        self.alpha = nn.Parameter(torch.ones(STREAMS))

    def streams(self, ms, pan) -> list[torch.Tensor]:
        """Each stream's logits, [MS, PAN]."""
        self.check_inputs(ms, pan)
        ms = F.interpolate(ms, size=pan.shape[-2:], mode="bilinear", align_corners=False)
        xs = [F.relu(x) for x in self.stem_bn([self.stem(x) for x in (ms, pan.expand_as(ms))])]
        for layer in self.layers:
            xs = layer(xs)
        return [self.classifier(self.dropout(x.mean(dim=(2, 3)))) for x in xs]

    def ensemble(self, logits: list[torch.Tensor]) -> torch.Tensor:
        weights = self.alpha.softmax(0)
        return sum(w * o.detach() for w, o in zip(weights, logits))

    def forward(self, ms, pan):
        return self.ensemble(self.streams(ms, pan))

    def training_loss(self, ms, pan, label, criterion, progress: float):
        """The sum of the cross-entropies of each stream and of their ensemble (which trains alpha only)."""
        logits = self.streams(ms, pan)
        ens = self.ensemble(logits)
        return sum(criterion(o, label) for o in (*logits, ens)), ens, {}
