"""The checks of a map request that need no checkpoint and no data: made by `das2f predict` before it imports
torch's and Lightning's machinery (a mistake answers in seconds), and again by :func:`das2f.maps.predictor.predict`
for callers from Python."""
from __future__ import annotations

from omegaconf import DictConfig

from ..runtime.errors import ConfigError


def check_request(cfg: DictConfig) -> tuple[int, int]:
    """``(stride, window)`` of a request with a checkpoint, ``stats`` train or scene, whole stride and window >= 1."""
    if not cfg.get("ckpt_path"):
        raise ConfigError("predict needs a checkpoint: ckpt_path=<run dir> (its best-on-validation checkpoint) "
                          "or ckpt_path=<run dir>/checkpoints/<file>.ckpt (written by das2f.train)")
    if cfg.stats not in ("train", "scene"):
        raise ConfigError(f"stats must be 'train' or 'scene', got {cfg.stats!r}")
    stride, window = int(cfg.get("stride", 1)), int(cfg.get("window", 16))
    if stride < 1 or window < 1:
        raise ConfigError(f"stride={stride}, window={window}: expected whole numbers >= 1")
    return stride, window
