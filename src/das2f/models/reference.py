"""Load weights saved from the authors' released DAS²F code (key layout: architecture.md, appendix).

The translation is a list of (their prefix, our prefix) pairs per block, so it runs both ways:
``to_reference_keys`` gives the authors' names for our parameters (used by the tests to check
the layout against the appendix, and to export weights back).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

_SS2D_BRANCH = [  # their name inside an SPVM `mamba` module -> ours inside SS2DBranch
    ("x_proj_weight", "ssm.x_proj_weight"),
    ("A_logs", "ssm.A_logs"),
    ("Ds", "ssm.Ds"),
    ("dt_projs_weight", "ssm.dt_projs_weight"),
    ("dt_projs_bias", "ssm.dt_projs_bias"),
    ("in_proj.", "in_proj."),
    ("conv2d.", "local.conv2d."),
    ("out_proj.", "out_proj."),
    ("patch.", "local.patch_embed."),
]


def _cmda_pairs(side: str, suffix: str) -> list[tuple[str, str]]:
    """The CMDA core names one modality's parameters with a suffix ('' for MS, '_pan' for PAN)."""
    pairs = []
    for theirs, ours in _SS2D_BRANCH:
        if theirs == "patch.":
            theirs = f"patch_{side}."
        elif theirs.endswith("."):
            theirs = theirs[:-1] + suffix + "."
        else:
            theirs = theirs + suffix
        pairs.append((theirs, f"{side}.{ours}"))
    return pairs


def _key_pairs(stages: int) -> list[tuple[str, str]]:
    if stages not in (1, 2):
        raise ValueError(f"the authors released 1- and 2-stage models only; cannot map stages={stages}")
    pairs = [
        ("R1.conv.", "pan_expand."),
        ("scan_161664_ms.0.", "embed_ms.proj."),
        ("scan_161664_ms.2.", "embed_ms.norm."),
        ("scan_161664_pan.0.", "embed_pan.proj."),
        ("scan_161664_pan.2.", "embed_pan.norm."),
        ("classifier.classifier_1.", "classifier.1."),
        ("classifier.classifier_2.", "classifier.2."),
    ]
    for s in range(1, stages + 1):
        ours = f"stages.{s - 1}."
        for mod in ("ms", "pan"):
            theirs = f"mamba_{mod}_{s}."
            pairs += [(theirs + "norm.", ours + f"{mod}.norm."), (theirs + "mlp.", ours + f"{mod}.mlp."),
                      (theirs + "mamba.out_norm.", ours + f"{mod}.mixer.out_norm.")]
            pairs += [(theirs + "mamba." + t, ours + f"{mod}.mixer.branch." + o) for t, o in _SS2D_BRANCH]
        theirs = f"cromamba_{s}."
        pairs += [(theirs + "norm.", ours + "cross.norm."), (theirs + "mlp_ms.", ours + "cross.mlp_ms."),
                  (theirs + "mlp_pan.", ours + "cross.mlp_pan."),
                  (theirs + "cromamba.out_norm.", ours + "cross.mixer.out_norm.")]
        for side, suffix in (("pan", "_pan"), ("ms", "")):  # the longer PAN names first
            pairs += [(theirs + "cromamba." + t, ours + "cross.mixer." + o) for t, o in _cmda_pairs(side, suffix)]
    fusion_names = ["FusionBlock"] if stages == 1 else ["FusionBlock3", "FusionBlock2"]  # stage 1, stage 2
    for i, name in enumerate(fusion_names):
        pairs += [(f"{name}.fusion_1.get_G.mlp.", f"fusions.{i}.fuse1.gate."),
                  (f"{name}.fusion_2.get_G.mlp.", f"fusions.{i}.fuse2.gate."),
                  (f"{name}.norm.", f"fusions.{i}.norm.")]
    return pairs


def _translate(key: str, pairs: list[tuple[str, str]]) -> str | None:
    best = None
    for src, dst in pairs:
        if key.startswith(src) and (best is None or len(src) > len(best[0])):
            best = (src, dst)
    return None if best is None else best[1] + key[len(best[0]):]


def _check_model(model) -> int:
    cfg = (model.stages[0].ms.mixer.__class__.__name__, model.fusions[0].__class__.__name__)
    if cfg != ("SS2D", "AALFBlock") or not model.stages[0].cross.mixer.swap:
        raise ValueError(f"the authors' weights fit the spvm/aalf/swap model only, got mixer/fusion {cfg}")
    return len(model.stages)


def to_reference_keys(model) -> dict[str, torch.Tensor]:
    """Our model's state dict under the authors' key names."""
    pairs = [(o, t) for t, o in _key_pairs(_check_model(model))]
    out = {}
    for key, value in model.state_dict().items():
        theirs = _translate(key, pairs)
        if theirs is None:
            raise KeyError(f"no reference name for parameter {key!r}")
        out[theirs] = value
    return out


def load_reference_state_dict(model, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict saved from the authors' released model into ``model`` (a DAS2F).

    Raises KeyError listing every missing and unexpected key, ValueError on a shape mismatch.
    """
    pairs = _key_pairs(_check_model(model))
    own = model.state_dict()
    translated, unexpected = {}, []
    for key, value in state_dict.items():
        ours = _translate(key, pairs)
        if ours is None or ours not in own:
            unexpected.append(key)
        else:
            translated[ours] = value
    missing = [_translate(k, [(o, t) for t, o in pairs]) or k for k in own if k not in translated]
    if missing or unexpected:
        raise KeyError(f"reference state dict does not fit: missing keys {sorted(missing)}, "
                       f"unexpected keys {sorted(unexpected)}")
    for ours, value in translated.items():
        if tuple(value.shape) != tuple(own[ours].shape):
            theirs = _translate(ours, [(o, t) for t, o in pairs])
            raise ValueError(f"reference key {theirs!r}: shape {tuple(value.shape)}, expected {tuple(own[ours].shape)}")
    model.load_state_dict(translated, strict=True)
