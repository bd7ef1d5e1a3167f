"""MRFusion (MultiResoLCC): the two-branch CNN of Gaetano, Ienco, Ose and Cresson, "A Two-Branch CNN Architecture
for Land Cover Classification of PAN and MS Imagery", Remote Sensing 10(11):1746, 2018 (arXiv:1806.11452).

Read: github.com/tanodino/MultiResoLCC, model.py at ea9c325 (TensorFlow 1; no licence stated). Written anew here.

Inputs: ms (B, C, P, P) and pan (B, 1, rP, rP), each at its own resolution (the original: 8x8x4 MS, 32x32 PAN).
A PAN branch (3x3 convolutions 1 -> 128 -> 256 -> 512, 2x2 max pooling after the first two) and an MS branch (3x3
convolutions C -> 256 -> 512 -> 1024, no pooling), each conv 'valid' then ReLU then batch norm; each branch ends in
a global max pool and dropout 0.4; the two vectors (PAN first) are concatenated (1536) into one linear layer.
The global max pool makes the parameter count independent of P and r: 7,408,139 for C=4 and 11 classes.

Deviations from the public code:
- its batch norms are called without a training flag, so they never normalise (a learnable per-channel affine on
  the initial statistics): here they are real batch norms (the paper's intent; the same parameters);
- its unused MLP classifier is not built; the offline rotation augmentation is das2f's ``data.augment`` instead.
Constraint: 'valid' convolutions need a PAN patch of at least 18 pixels and an MS patch of at least 7.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import PatchClassifier


def conv_relu_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(c_out)]


class MRFusion(PatchClassifier):
    """The two-branch CNN: (ms, pan) -> logits (module docstring).

    Args:
        ms_channels, ms_patch, ratio, num_classes: the dataset's geometry and classes (das2f.models.base).
        dropout: the rate on each branch's pooled vector (0.4 in the paper).
        scan_backend: ignored (no selective scan).
    """

    def __init__(self, ms_channels: int = 4, ms_patch: int = 16, ratio: int = 4, num_classes: int = 11,
                 dropout: float = 0.4, scan_backend: str = "auto"):
        self.refuse(ms_patch * ratio < 18 or ms_patch < 7,
                    f"its 'valid' 3x3 convolutions need an MS patch >= 7 and a PAN patch >= 18 pixels; got "
                    f"dataset.ms_patch={ms_patch} (PAN {ms_patch * ratio})")
        super().__init__(ms_channels, ms_patch, ratio, num_classes)
        self.pan = nn.Sequential(*conv_relu_bn(1, 128), nn.MaxPool2d(2), *conv_relu_bn(128, 256), nn.MaxPool2d(2),
                                 *conv_relu_bn(256, 512))
        self.ms = nn.Sequential(*conv_relu_bn(ms_channels, 256), *conv_relu_bn(256, 512), *conv_relu_bn(512, 1024))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(512 + 1024, num_classes)

    def forward(self, ms, pan):
        self.check_inputs(ms, pan)
        pan_vec = self.dropout(self.pan(pan).amax(dim=(2, 3)))
        ms_vec = self.dropout(self.ms(ms).amax(dim=(2, 3)))
        return self.classifier(torch.cat((pan_vec, ms_vec), dim=1))
