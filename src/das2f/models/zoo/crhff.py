"""CRHFF: Liu, Zhao, Du, Bruzzone et al., "Multispectral and Panchromatic Images Joint Classification by a
Cross-Resolution Hidden-Layer Feature Fusion network" (CRHFF), IEEE TGRS 60, 2022, doi:10.1109/TGRS.2021.3127710.

Read: github.com/SicongLiuRS/Multispectral-and-Panchromatic-Images-Joint-Classification, models.py at 9060fae (Keras;
no training script, no licence stated). Written anew here.

Inputs: ms (B, C, P, P); pan (B, 1, rP, rP) is only the target of the first phase, never an input of the
classifier. A reconstruction network maps the MS patch to the PAN patch: two 3x3 convolutions of width 128 at P,
then for each factor 2 of the ratio a nearest x2 upsampling and two convolutions (3x3; 5x5 at the PAN size), each
conv + BN + ReLU, and a 3x3 conv to one band (MSE to the PAN patch). Classification branches read its hidden
layers at the MS, middle and PAN sizes (the end of the first, middle and last stage): 3x3 convolutions 128 -> 256
-> 512 (BN, LeakyReLU 0.2) with max pooling back to P, global max pooling; the three 512-vectors concatenated ->
dropout 0.4 -> 512 -> 512 -> LeakyReLU -> classes. 8,003,885 parameters for C=4, r=4, 11 classes, any P.

Training, one recipe in one run (the paper's three stages folded into two phases, by the share of training steps):
- phase 1, the first ``recon_share`` of the steps: the reconstruction network alone, on MSE(reconstruction, PAN)
  (logged as train/recon_mse); the classifier is not trained (its logits still give the training metrics);
- phase 2, the rest: the reconstruction network frozen (eval mode, no gradient), the three branches and the fusion
  head trained together on CE(fused) + ``aux_weight`` x the mean CE of a head per branch (the paper trains each
  branch alone first, then the fusion head on the frozen branches).
Validation always scores the classifier, so the best-on-validation checkpoint comes from phase 2; a run stopped in
either phase resumes in it (the phase follows from the step count a checkpoint holds).

Deviations: the paper's EMAP shallow features stacked with the MS bands are not computed (raw MS bands in); the
public code's freezes (Keras ``model.trainable`` on a model built from another's tensors) probably do not take
effect, here the stated intent (frozen); the branch stages (2 and 3 of the paper) are one phase with per-branch
heads; the ratio generalised from a fixed 4 to any power of two (r = 2: two branches, low and high).
Constraint: the ratio is a power of two >= 2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import PatchClassifier


def conv_bn(c_in, c_out, k, act) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.BatchNorm2d(c_out), act]


def branch(width: int, level: int) -> nn.Sequential:
    """A tap at 2**level times the MS size -> a 512-vector: pooled back to the MS size (one pool after the first
    conv, the rest after the second), then a global max."""
    first, second = min(1, level), level - min(1, level)
    act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
    return nn.Sequential(*conv_bn(width, 128, 3, act()), *[nn.MaxPool2d(2, ceil_mode=True)] * first,
                         *conv_bn(128, 256, 3, act()), *[nn.MaxPool2d(2, ceil_mode=True)] * second,
                         *conv_bn(256, 512, 3, act()), nn.AdaptiveMaxPool2d(1), nn.Flatten())


class CRHFF(PatchClassifier):
    """CRHFF: ms -> logits through an MS -> PAN reconstruction network's hidden layers (module docstring).

    Args:
        ms_channels, ms_patch, ratio, num_classes: the dataset's geometry and classes (das2f.models.base).
        width: the reconstruction network's width (128).
        dropout: before the fusion head and each branch head (0.4).
        recon_share: the share of the training steps that trains the reconstruction alone (phase 1).
        aux_weight: the weight of the branch heads' mean cross-entropy in phase 2.
        scan_backend: ignored (no selective scan).
    """

    def __init__(self, ms_channels: int = 4, ms_patch: int = 16, ratio: int = 4, num_classes: int = 11,
                 width: int = 128, dropout: float = 0.4, recon_share: float = 0.3, aux_weight: float = 1.0,
                 scan_backend: str = "auto"):
        self.refuse(ratio < 2 or ratio & (ratio - 1), f"its reconstruction upsamples by 2 per stage: the ratio must "
                    f"be a power of two >= 2; got dataset.ratio={ratio}")
        self.refuse(not 0 <= recon_share < 1, f"recon_share must be in [0, 1); got {recon_share}")
        super().__init__(ms_channels, ms_patch, ratio, num_classes)
        self.recon_share, self.aux_weight = recon_share, aux_weight
        ups = ratio.bit_length() - 1  # the x2 stages
        relu = lambda: nn.ReLU()  # noqa: E731
        stages = [nn.Sequential(*conv_bn(ms_channels, width, 3, relu()), *conv_bn(width, width, 3, relu()))]
        for j in range(1, ups + 1):
            k = 5 if j == ups else 3
            stages.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *conv_bn(width, width, k, relu()),
                                        *conv_bn(width, width, k, relu())))
        self.encoder = nn.ModuleList(stages)
        self.to_pan = nn.Conv2d(width, 1, 3, padding=1)
        self.levels = sorted({0, ups // 2, ups}) if ups > 1 else [0, 1]
        self.branches = nn.ModuleList(branch(width, level) for level in self.levels)
        self.heads = nn.ModuleList(nn.Sequential(nn.Dropout(dropout), nn.Linear(512, 512), nn.Linear(512, num_classes))
                                   for _ in self.levels)
        self.fusion = nn.Sequential(nn.Dropout(dropout), nn.Linear(512 * len(self.levels), 512), nn.Linear(512, 512),
                                    nn.LeakyReLU(0.2), nn.Linear(512, num_classes))

    def hidden(self, ms) -> list[torch.Tensor]:
        """The reconstruction network's stage outputs, (B, width, 2**j P, 2**j P) for j = 0..log2(r)."""
        out = [ms]
        for stage in self.encoder:
            out.append(stage(out[-1]))
        return out[1:]

    def classify(self, hidden) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the fused logits, each branch head's logits)."""
        vectors = [b(hidden[level]) for b, level in zip(self.branches, self.levels)]
        return self.fusion(torch.cat(vectors, dim=1)), [h(v) for h, v in zip(self.heads, vectors)]

    def forward(self, ms, pan):
        self.check_inputs(ms, pan)
        return self.classify(self.hidden(ms))[0]

    def training_loss(self, ms, pan, label, criterion, progress: float):
        """(loss, logits, logs) of one training step in the phase ``progress`` (the share of steps done) is in."""
        self.check_inputs(ms, pan)
        if progress < self.recon_share:
            hidden = self.hidden(ms)
            mse = F.mse_loss(self.to_pan(hidden[-1]), pan)
            with torch.no_grad():
                logits = self.classify([h.detach() for h in hidden])[0]
            return mse, logits, {"recon_mse": mse.detach(), "phase": 1.0}
        self.encoder.eval()  # frozen: its batch norms keep their statistics (Lightning sets train() every epoch)
        with torch.no_grad():
            hidden = self.hidden(ms)
        logits, aux = self.classify(hidden)
        loss = criterion(logits, label) + self.aux_weight * torch.stack([criterion(a, label) for a in aux]).mean()
        return loss, logits, {"phase": 2.0}
