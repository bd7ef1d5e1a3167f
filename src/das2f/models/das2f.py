"""DAS²F: diff-attention aware state space fusion of an MS and a PAN patch (Ma et al., 2025).

Input  ms (B, C_ms, P, P), pan (B, 1, ratio*P, ratio*P); output logits (B, num_classes).
Defaults reproduce the authors' released model: 17,416,531 parameters at ``stages=2``,
17,107,315 at ``stages=1`` (11 classes, 4 MS bands).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..ops.scan import check_backend
from ..runtime.errors import ConfigError
from .base import PatchClassifier
from .blocks import CrossBlock, MixerBlock, backbone_kind
from .fusion import check_fusion, make_fusion, tokens_to_subpixels


class PatchEmbed(nn.Module):
    """(B, c, S, S) -> tokens (B, S/p, S/p, D): conv with kernel = stride = p, then LayerNorm."""

    def __init__(self, in_channels: int, d_model: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, d_model, patch, stride=patch)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Stage(nn.Module):
    """One stage: per-modality blocks (full features) and a cross block (common features)."""

    def __init__(self, backbone, d_model, d_state, dt_rank, mlp_ratio, swap, scan_backend):
        super().__init__()
        kw = dict(backbone=backbone, d_model=d_model, d_state=d_state, dt_rank=dt_rank, mlp_ratio=mlp_ratio,
                  scan_backend=scan_backend)
        self.ms = MixerBlock(**kw)
        self.pan = MixerBlock(**kw)
        self.cross = CrossBlock(swap=swap, **kw)

    def forward(self, ms, pan):
        """-> (ms_full, pan_full, ms_common, pan_common), each (B, H, W, D)."""
        ms_common, pan_common = self.cross(ms, pan)
        return self.ms(ms), self.pan(pan), ms_common, pan_common


class DAS2F(PatchClassifier):
    """The DAS²F network: an MS patch and its PAN patch -> class logits.

    ``forward(ms, pan)`` takes ms (B, ms_channels, ms_patch, ms_patch) and pan (B, 1, ms_patch * ratio,
    ms_patch * ratio) and returns logits (B, num_classes). Each stage computes each modality's full features
    (SPVM blocks) and their common features (the CMDA block); AALF fuses the dominant features (full minus
    common) from the deepest stage to the first, starting from the mean of the last stage's common features.
    The defaults are the authors' released 2-stage model; das2f's configs (``conf/model/das2f.yaml``) default
    to 1 stage.

    Args:
        ms_channels: MS bands.
        num_classes: classes (the last layer's outputs).
        stages: stages of SPVM + CMDA blocks; 1 is the authors' Xi'an model, 2 their Nanjing model.
        d_model: token width.
        d_state: the state size N of the selective scan.
        dt_rank: the rank R of the scan's step-size projection.
        mlp_ratio: the blocks' MLP width / d_model.
        ms_patch: MS patch side; the PAN patch is ``ms_patch * ratio``.
        ratio: PAN pixels per MS pixel along a side.
        embed_patch: side of the patch embedding's convolution (kernel = stride).
        pan_channels: channels of the PAN's 1x1 expansion before its embedding.
        hidden: width of the classifier's hidden layer.
        backbone: ``spvm`` (space-preserving SS2D), ``vmamba`` (plain SS2D) or ``cnn`` (das2f.models.blocks).
        fusion: ``aalf``, ``sum``, ``mean`` or ``concat`` (das2f.models.fusion).
        swap: CMDA scans each modality with the other's SSM parameters; False: with its own.
        dominant: fuse full minus common (the dominant features); False: the full features.
        scan_backend: the selective scan's backend (das2f.ops.scan): ``auto``, ``cpu``, ``torch``, ``triton``,
            ``reference`` or ``mamba_ssm``.

    Raises:
        ConfigError: an unknown backbone, fusion or backend, ``stages < 1``, a ``d_model`` not divisible by 4,
            or a PAN patch that is not a multiple of ``embed_patch``; before any layer is built.
    """

    def __init__(
        self,
        ms_channels: int = 4,
        num_classes: int = 11,
        stages: int = 2,
        d_model: int = 64,
        d_state: int = 24,
        dt_rank: int = 24,
        mlp_ratio: int = 4,
        ms_patch: int = 16,
        ratio: int = 4,
        embed_patch: int = 4,
        pan_channels: int = 4,
        hidden: int = 1024,
        backbone: str = "spvm",
        fusion: str = "aalf",
        swap: bool = True,
        dominant: bool = True,
        scan_backend: str = "auto",
    ):
        super().__init__(ms_channels, ms_patch, ratio, num_classes)
        backbone_kind(backbone), check_fusion(fusion), check_backend(scan_backend)  # every choice, before any work
        if stages < 1:
            raise ConfigError(f"model.net.stages must be >= 1, got {stages}")
        if d_model % 4:
            raise ConfigError(f"model.net.d_model must be divisible by 4 (2x2 sub-pixels), got {d_model}")
        if (ms_patch * ratio) % embed_patch:
            raise ConfigError(f"the PAN patch ({ms_patch * ratio}) must be a multiple of embed_patch ({embed_patch})")
        self.dominant = dominant
        self.pan_expand = nn.Conv2d(1, pan_channels, 1)
        self.embed_ms = PatchEmbed(ms_channels, d_model, embed_patch)
        self.embed_pan = PatchEmbed(pan_channels, d_model, embed_patch)
        self.stages = nn.ModuleList(
            Stage(backbone, d_model, d_state, dt_rank, mlp_ratio, swap, scan_backend) for _ in range(stages)
        )
        channels = d_model // 4
        self.fusions = nn.ModuleList(make_fusion(fusion, channels) for _ in range(stages))  # index = stage
        grid = ms_patch * ratio // embed_patch  # token grid side (16)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * grid * grid * channels, hidden),
                                        nn.Linear(hidden, num_classes))

    def features(self, ms, pan):
        """Fused sub-pixel features (B, 4*H*W, D/4) before the classifier."""
        self.check_inputs(ms, pan)
        ms = F.interpolate(ms, scale_factor=self.ratio, mode="bilinear", align_corners=False)
        ms, pan = self.embed_ms(ms), self.embed_pan(self.pan_expand(pan))
        per_stage = []  # the features each stage hands its fusion: dominant (full - common) or full
        for stage in self.stages:
            ms_full, pan_full, ms, pan = stage(ms, pan)
            if self.dominant:
                ms_full, pan_full = ms_full - ms, pan_full - pan
            per_stage.append((tokens_to_subpixels(ms_full), tokens_to_subpixels(pan_full)))
        f = tokens_to_subpixels((ms + pan) / 2)
        for fusion, (ms_dom, pan_dom) in zip(reversed(self.fusions), reversed(per_stage)):
            f = fusion(ms_dom, pan_dom, f)
        return f

    def forward(self, ms, pan):
        return self.classifier(self.features(ms, pan))
