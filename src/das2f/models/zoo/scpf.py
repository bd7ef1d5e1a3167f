"""SCPF-ResNet: Zhu, Ma, Jiao, Hou et al., "Spatial-Channel Progressive Fusion ResNet for Remote Sensing
Classification", Information Fusion 70:72-87, 2021.

Read: github.com/ru-willow/Spatial-Channel-Progressive-Fusion-ResNet, SCPF.py at 8cfe95e (the model only; no
licence stated, no training script). Written anew here.

Inputs: ms (B, C, P, P), pan (B, 1, rP, rP) and a third image made from both, all at their own resolution (the
original: 16x16x4 MS, 64x64 PAN). Three branches meet at a ceil(P/2) grid: PAN (a 5x5 and a 3x3 conv with max
pooling by r in all, a stride-2 conv), the MS/PAN fusion (the same stem) and MS (a 3x3 and a stride-2 conv); each
then ResBlk 16 -> 24 -> 32. Spatial attention (ASA: four scales of a 1x1-reduced map, each weighted by a spatial
map from its channel mean, the two scales of highest mean weight concatenated) on the PAN side, channel attention
(ACA: the two channel halves weighted by a parameter-free and a learned softmax over the halves) on the MS side;
the fusion branch gets both. Progressive fusion by concatenation: PAN + fusion -> ASA(64) -> ResBlk(64), fusion +
MS -> ACA(64) -> ResBlk(64), then both -> ResBlk(128); flatten -> 512 -> 128 -> classes.
4,905,022 parameters for C=4, P=16, 11 classes (the first dense layer, 128 ceil(P/2)^2 inputs, holds 87 %).

The third input (IDFS: a GIHS + DWT fusion of MS and PAN) is precomputed offline in the paper; its code is not
published. Here it is computed in the forward pass, parameter-free: the GIHS intensity I (the band mean of the
bicubically upsampled MS), the PAN matched to I's mean and std per sample, and a one-level Haar DWT fusion that keeps
the PAN's detail bands and I's approximation: PAN' - up(avgpool2(PAN')) + up(avgpool2(I)) (our reading of the paper).

Deviations, where the public code does not do what the paper describes (the paper's intent implemented):
- its ASA block rebuilds the batch by prepending each sample, reversing the batch order; the reversals do not cancel
  along the two paths, so each sample's PAN-side features are fused with another sample's MS side: order kept here;
- its ASA concatenates the top-scored scale with itself, ignoring the second branch: the top two are concatenated;
- its ASA sorts the scale scores along a size-1 dimension, so it always takes the first scale: top-2 over the four;
- its ACA rebinds a list to a tensor and then reads element 1 of it (batch sample 1): x2 (a2 + b2) here;
- it applies single ASA / ACA / ResBlk instances to different branches and uses ASA(64) where the MS side should have
  channel attention (its ACA(64) is never used): separate instances, ACA(64) on the MS side;
- the ACA's batch norm on a 1x1 map cannot take a training batch of one: such a batch uses its running statistics;
- PAN pooling by r in all (2, then an adaptive max pool to P; the original's two pools of 2 for r = 4).
Constraints: ratio >= 2, and an even PAN patch (the Haar level).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import PatchClassifier


def conv_bn(c_in, c_out, k=3, stride=1, bias=True) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=bias), nn.BatchNorm2d(c_out)]


class ResBlock(nn.Module):
    """Two 3x3 conv + BN, ReLU between; a 1x1 conv + BN shortcut where the width changes; ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(c_in, c_out), nn.ReLU(), *conv_bn(c_out, c_out))
        self.skip = nn.Identity() if c_in == c_out else nn.Sequential(*conv_bn(c_in, c_out, k=1))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class SpatialAttention(nn.Module):
    """ASA: (B, p, H, W) -> (B, p, H, W)."""

    def __init__(self, p: int):
        super().__init__()
        h = p // 2
        self.reduce = nn.Conv2d(p, h, 1)
        self.scales = nn.ModuleList([nn.Conv2d(h, h, 1), nn.Conv2d(h, h, 3, padding=1), nn.Conv2d(h, h, 5, padding=2)])
        self.weight = nn.Sequential(nn.Conv2d(1, p // 4, 3, padding=1), nn.ReLU(), nn.Conv2d(p // 4, 1, 3, padding=1),
                                    nn.Sigmoid())  # one pair for the four scales
        self.out = nn.Sequential(nn.Conv2d(p, p, 3, padding=1), nn.ReLU())

    def forward(self, x):
        f0 = self.reduce(x)
        f = torch.stack([f0, *(s(f0) for s in self.scales)], dim=1)  # (B, 4, p/2, H, W)
        b, k, c, h, w = f.shape
        a = self.weight(f.mean(dim=2).reshape(b * k, 1, h, w)).view(b, k, 1, h, w)
        weighted = f * a
        top = a.mean(dim=(2, 3, 4)).topk(2, dim=1).indices  # (B, 2): the two scales of highest mean weight
        picked = weighted.gather(1, top.view(b, 2, 1, 1, 1).expand(b, 2, c, h, w))
        return self.out(picked.reshape(b, 2 * c, h, w))


class ChannelAttention(nn.Module):
    """ACA: (B, c, H, W) -> (B, c, H, W); the two channel halves weighted by softmaxes over the halves."""

    def __init__(self, c: int, hidden: int = 8):
        super().__init__()
        self.squeeze = nn.Conv2d(c, hidden, 1, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.excite = nn.Conv2d(hidden, c, 1, bias=False)

    def forward(self, x):
        b, c = x.shape[:2]
        v = x.mean(dim=(2, 3), keepdim=True)
        s = self.squeeze(v)
        one = self.training and b == 1  # batch statistics of one 1x1 map do not exist: its running statistics
        s = F.batch_norm(s, self.norm.running_mean, self.norm.running_var, self.norm.weight, self.norm.bias,
                         training=self.training and not one, momentum=self.norm.momentum, eps=self.norm.eps)
        halves = lambda t: t.view(b, 2, c // 2, 1, 1).softmax(dim=1)  # noqa: E731
        weights = halves(v) + halves(self.excite(F.relu(s)))
        return F.relu(x * weights.view(b, c, 1, 1))


class SCPF(PatchClassifier):
    """SCPF-ResNet: (ms, pan) -> logits (module docstring); the fused third input is made in ``forward``.

    Args:
        ms_channels, ms_patch, ratio, num_classes: the dataset's geometry and classes (das2f.models.base).
        scan_backend: ignored (no selective scan).
    """

    def __init__(self, ms_channels: int = 4, ms_patch: int = 16, ratio: int = 4, num_classes: int = 11,
                 scan_backend: str = "auto"):
        self.refuse(ratio < 2, f"its PAN stem pools by the ratio (>= 2); got dataset.ratio={ratio}")
        self.refuse((ms_patch * ratio) % 2, f"its Haar fusion needs an even PAN patch; got {ms_patch * ratio}")
        super().__init__(ms_channels, ms_patch, ratio, num_classes)

        def pan_stem():
            return nn.Sequential(*conv_bn(1, 4, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                                 *conv_bn(4, 8, bias=False), nn.ReLU(), nn.AdaptiveMaxPool2d(ms_patch),
                                 *conv_bn(8, 16, stride=2), ResBlock(16, 24), ResBlock(24, 32))

        self.pan, self.fused = pan_stem(), pan_stem()
        self.ms = nn.Sequential(*conv_bn(ms_channels, 8, bias=False), nn.ReLU(), *conv_bn(8, 16, stride=2),
                                ResBlock(16, 24), ResBlock(24, 32))
        self.pan_asa, self.fused_asa = SpatialAttention(32), SpatialAttention(32)
        self.fused_aca, self.ms_aca = ChannelAttention(32), ChannelAttention(32)
        self.top = nn.Sequential(SpatialAttention(64), ResBlock(64, 64))
        self.bottom = nn.Sequential(ChannelAttention(64), ResBlock(64, 64))
        self.deep = ResBlock(128, 128)
        side = (ms_patch + 1) // 2
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * side * side, 512), nn.ReLU(),
                                        nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def fusion_image(self, ms, pan):
        """The third input: PAN with the GIHS intensity of the MS as its Haar approximation (module docstring)."""
        intensity = F.interpolate(ms, size=pan.shape[-2:], mode="bicubic", align_corners=False).mean(1, keepdim=True)
        mean = lambda t: t.mean(dim=(2, 3), keepdim=True)  # noqa: E731
        std = lambda t: t.std(dim=(2, 3), keepdim=True)  # noqa: E731
        matched = (pan - mean(pan)) * std(intensity) / (std(pan) + 1e-6) + mean(intensity)
        low = lambda t: F.interpolate(F.avg_pool2d(t, 2), scale_factor=2, mode="nearest")  # noqa: E731
        return matched - low(matched) + low(intensity)

    def forward(self, ms, pan):
        self.check_inputs(ms, pan)
        fused = self.fused(self.fusion_image(ms, pan))
        pan, ms = self.pan(pan), self.ms(ms)
        top = self.top(torch.cat((self.pan_asa(pan), self.fused_asa(fused)), dim=1))
        bottom = self.bottom(torch.cat((self.fused_aca(fused), self.ms_aca(ms)), dim=1))
        return self.classifier(self.deep(torch.cat((top, bottom), dim=1)))
