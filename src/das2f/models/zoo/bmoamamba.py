"""BMoAMamba: a Mamba model for MS + PAN classification with a mixture of experts gated by a first-stage model.

Read: github.com/AVKSKVL/BMoAMamba, model_stage1.py, model_stage2.py, train_stage1.py and train_stage2.py at
441728a (no licence, no paper citation in the repository; the code builds on the DAS²F authors' released network).
Cite the repository and its commit until its paper is published. Written anew here.

Inputs: ms (B, C, P, P) upsampled bilinearly by r, pan (B, 1, rP, rP) lifted to 4 channels by a 1x1 conv; each
embedded by an 8x8 stride-8 conv to a (rP/8)^2 grid of 256-wide tokens (stage 1: + LayerNorm). One block per
modality: x + MHSS2D(LN(x)), then + MLP(LN(x)) (one LayerNorm for both, MLP 256 -> 1024 -> 256). MHSS2D is a
4-direction 2-D selective scan with the space-preserving input (the token read as 4 channels of 8x8 pixels, a
depthwise 3x3 + SiLU, an 8x8 stride-8 conv + BN), its 256 channels in 4 heads of 64 with their own SSM parameters
(d_state 6, dt_rank 6), a SiLU gate. The MS and PAN tokens, regrouped into 16-vectors, meet once: a shared
LayerNorm(16), then mean(A sigmoid(W [A; B])) B (DAS²F's attention-linear fuse); flatten -> 1024 (stage 2: 512) ->
classes, no activation between.
Stage 2 (``groups`` set): each modality's block is a mixture of experts, one MHSS2D per group of classes, weighted
one-hot by the frozen stage-1 net's top class over the groups (stage 1 classifies the groups). 18,436,243
parameters (stage 1 alone, 11 classes), 29,854,735 with stage 2 (4 groups), for C=4, P=16, r=4.

Training in one run (``groups`` set): the first ``stage1_share`` of the steps train stage 1 on the class groups
(cross-entropy; logged as train/stage1_loss), the rest train stage 2 on the classes with stage 1 frozen (eval mode,
no gradient). Validation scores the whole model (stage 2 gated by stage 1), so the best-on-validation checkpoint
comes from stage 2; a stop in either phase resumes in it (the phase follows from a checkpoint's step count).
``groups: null`` (the default, for any dataset): stage 1 alone, trained on the classes themselves.

Every scan runs on das2f's scan backends (``scan_backend``). Deviations: the stage-1 code passes a float size to
``view`` (it cannot run; an int here); its head is fixed at 4 outputs (here: the groups, or the classes); its
unused LayerNorm(1024) is not built; the group map is a config key (the original's is hand-made for Xi'an); the
token regrouping before the fusion is the original's buffer reinterpretation written for any grid; both stages in
one run with one optimiser (the original: two scripts, two optimisers); model selection on validation (the
original: on the test set).
Constraint: the PAN patch must be a multiple of 8.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...runtime.errors import ConfigError
from ..base import PatchClassifier
from ..blocks import mlp
from ..fusion import AttentionLinearFuse
from ..ss2d import K_DIRECTIONS, SpacePreservingConv, SSMParams, cross_merge, cross_scan, scan_sequences

WIDTH, PATCH, HEADS = 256, 8, 4  # token width, pixels per token side, scan heads


class MultiHeadSS2D(nn.Module):
    """(B, H, W, 256) -> (B, H, W, 256): a 4-direction selective scan, its channels in heads of their own SSM
    parameters, the space-preserving input of patch 8, a SiLU gate."""

    def __init__(self, d_state: int = 6, dt_rank: int = 6, scan_backend: str = "auto"):
        super().__init__()
        self.in_proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.local = SpacePreservingConv(WIDTH, patch=PATCH)
        self.ssms = nn.ModuleList(SSMParams(WIDTH // HEADS, d_state, dt_rank) for _ in range(HEADS))
        self.out_norm = nn.LayerNorm(WIDTH)
        self.out_proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.scan_backend = scan_backend

    def forward(self, x):
        b, h, w, d = x.shape
        z = F.silu(self.in_proj(x))
        xs = cross_scan(self.local(x).reshape(b, h * w, d), h, w)  # (L, B, 4, 256)
        ys = []
        for head, ssm in zip(xs.chunk(HEADS, dim=-1), self.ssms):
            head = head.contiguous()
            ys.append(scan_sequences(head, ssm(head), self.scan_backend).view(h * w, b, K_DIRECTIONS, -1))
        y = cross_merge(torch.cat(ys, dim=-1), h, w)
        return self.out_proj(self.out_norm(y).view(b, h, w, d) * z)


class Block(nn.Module):
    """x + mixer(LN(x)), then + MLP(LN(x)) with the same LayerNorm; ``experts`` > 1: the mixer is a mixture of that
    many MHSS2D, weighted by ``gate`` (B, experts)."""

    def __init__(self, experts: int, d_state: int, dt_rank: int, scan_backend: str):
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.mixers = nn.ModuleList(MultiHeadSS2D(d_state, dt_rank, scan_backend) for _ in range(experts))
        self.mlp = mlp(WIDTH, 4)

    def forward(self, x, gate=None):
        y = self.norm(x)
        if gate is None:
            x = x + self.mixers[0](y)
        else:  # every expert runs on every sample (their batch norms see the whole batch, as in the original)
            x = x + sum(g.view(-1, 1, 1, 1) * m(y) for g, m in zip(gate.unbind(1), self.mixers))
        return x + self.mlp(self.norm(x))


class Stage(nn.Module):
    """One stage's network: (ms, pan) -> logits (num_outputs); ``experts`` > 1 with a gate: its mixtures."""

    def __init__(self, ms_channels: int, ratio: int, grid: int, num_outputs: int, hidden: int, experts: int,
                 norm: str, d_state: int, dt_rank: int, scan_backend: str):
        super().__init__()
        self.ratio = ratio
        self.pan_expand = nn.Conv2d(1, 4, 1)

        def stem(c):
            layers = [nn.Conv2d(c, WIDTH, PATCH, stride=PATCH)]
            return nn.Sequential(*layers, nn.BatchNorm2d(WIDTH)) if norm == "batch" else (nn.Sequential(*layers),
                                                                                          nn.LayerNorm(WIDTH))

        if norm == "batch":
            self.stem_ms, self.stem_pan, self.norm_ms, self.norm_pan = stem(ms_channels), stem(4), None, None
        else:
            (self.stem_ms, self.norm_ms), (self.stem_pan, self.norm_pan) = stem(ms_channels), stem(4)
        self.block_ms = Block(experts, d_state, dt_rank, scan_backend)
        self.block_pan = Block(experts, d_state, dt_rank, scan_backend)
        self.fuse_norm = nn.LayerNorm(16)
        self.fuse = AttentionLinearFuse(16)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(WIDTH * grid * grid, hidden), nn.Linear(hidden, num_outputs))

    def tokens(self, stem, norm, x):
        x = stem(x).permute(0, 2, 3, 1)
        return norm(x) if norm is not None else x

    def forward(self, ms, pan, gate=None):
        ms = F.interpolate(ms, scale_factor=self.ratio, mode="bilinear", align_corners=False)
        ms = self.block_ms(self.tokens(self.stem_ms, self.norm_ms, ms), gate)
        pan = self.block_pan(self.tokens(self.stem_pan, self.norm_pan, self.pan_expand(pan)), gate)
        b, g = ms.shape[:2]
        regroup = lambda t: t.view(b, g, g, 4, 16, 4).transpose(-1, -2).reshape(b, -1, 16)  # noqa: E731
        return self.classifier(self.fuse(self.fuse_norm(regroup(ms)), self.fuse_norm(regroup(pan))))


class BMoAMamba(PatchClassifier):
    """BMoAMamba: (ms, pan) -> logits (module docstring).

    Args:
        ms_channels, ms_patch, ratio, num_classes: the dataset's geometry and classes (das2f.models.base).
        groups: null (stage 1 alone, on the classes), or the class indices (0-based) of each group, e.g.
            [[0], [1, 2, 3], [4, 6], [5]]: stage 1 classifies the groups, stage 2 has one expert per group.
        stage1_share: with groups, the share of the training steps that trains stage 1.
        d_state, dt_rank: the scans' state size and step-size rank (6 and 6 in the original).
        scan_backend: the selective scan's backend (das2f.ops.scan).
    """

    def __init__(self, ms_channels: int = 4, ms_patch: int = 16, ratio: int = 4, num_classes: int = 11,
                 groups: list | None = None, stage1_share: float = 0.5, d_state: int = 6, dt_rank: int = 6,
                 scan_backend: str = "auto"):
        self.refuse((ms_patch * ratio) % PATCH, f"its 8x8 token embedding needs a PAN patch that is a multiple of 8; "
                    f"got {ms_patch * ratio} (dataset.ms_patch={ms_patch}, ratio={ratio})")
        super().__init__(ms_channels, ms_patch, ratio, num_classes)
        grid = ms_patch * ratio // PATCH
        common = dict(ms_channels=ms_channels, ratio=ratio, grid=grid, d_state=d_state, dt_rank=dt_rank,
                      scan_backend=scan_backend)
        self.groups = [list(g) for g in groups] if groups else None
        if self.groups is None:
            self.stage1 = Stage(num_outputs=num_classes, hidden=1024, experts=1, norm="layer", **common)
            self.stage2 = None
            return
        flat = sorted(c for g in self.groups for c in g)
        if flat != list(range(num_classes)):
            raise ConfigError(f"BMoAMamba: model.net.groups={self.groups} must hold every class index 0..{num_classes - 1}"
                              f" exactly once (the dataset's classes, in order)")
        self.refuse(not 0 < stage1_share < 1, f"stage1_share must be in (0, 1); got {stage1_share}")
        self.stage1_share = stage1_share
        self.register_buffer("group_of", torch.tensor([next(i for i, g in enumerate(self.groups) if c in g)
                                                       for c in range(num_classes)]), persistent=False)
        self.stage1 = Stage(num_outputs=len(self.groups), hidden=1024, experts=1, norm="layer", **common)
        self.stage2 = Stage(num_outputs=num_classes, hidden=512, experts=len(self.groups), norm="batch", **common)

    def gate(self, ms, pan) -> torch.Tensor:
        """The frozen stage 1's top group, one-hot (B, groups)."""
        with torch.no_grad():
            top = self.stage1(ms, pan).argmax(1)
        return F.one_hot(top, len(self.groups)).to(ms.dtype)

    def forward(self, ms, pan):
        self.check_inputs(ms, pan)
        if self.stage2 is None:
            return self.stage1(ms, pan)
        return self.stage2(ms, pan, self.gate(ms, pan))

    def training_loss(self, ms, pan, label, criterion, progress: float):
        """Stage 1 on the groups for the first ``stage1_share`` of the steps, then stage 2 on the classes."""
        self.check_inputs(ms, pan)
        if self.stage2 is None:
            logits = self.stage1(ms, pan)
            return criterion(logits, label), logits, {}
        if progress < self.stage1_share:
            coarse = self.stage1(ms, pan)
            loss = F.cross_entropy(coarse, self.group_of[label])
            with torch.no_grad():  # the training metrics: the whole model's classes
                logits = self.stage2(ms, pan, F.one_hot(coarse.argmax(1), len(self.groups)).to(ms.dtype))
            return loss, logits, {"stage1_loss": loss.detach(), "phase": 1.0}
        self.stage1.eval()  # frozen (Lightning sets train() every epoch)
        logits = self.stage2(ms, pan, self.gate(ms, pan))
        return criterion(logits, label), logits, {"phase": 2.0}
