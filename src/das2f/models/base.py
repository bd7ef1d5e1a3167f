"""What every network of das2f is: an MS patch and its PAN patch -> class logits.

``forward(ms, pan)`` takes ms (B, ms_channels, ms_patch, ms_patch) and pan (B, 1, ratio * ms_patch,
ratio * ms_patch) and returns logits (B, num_classes). Every net takes ``ms_channels``, ``ms_patch``, ``ratio``,
``num_classes`` and ``scan_backend`` (ignored where it does not scan): evaluation and maps rebuild whatever net a
checkpoint holds with them. A net trained in phases (a reconstruction first, say) defines ``training_loss``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..runtime.errors import ConfigError


class PatchClassifier(nn.Module):
    """The base of every net: its input geometry, the check of its inputs, its forward FLOPs per sample."""

    def __init__(self, ms_channels: int, ms_patch: int, ratio: int, num_classes: int):
        super().__init__()
        self.ms_channels, self.num_classes = ms_channels, num_classes
        self.ms_patch, self.pan_patch, self.ratio = ms_patch, ms_patch * ratio, ratio

    @classmethod
    def refuse(cls, condition: bool, why: str) -> None:
        """A geometry this net cannot take: one line naming the net (raised before any layer is built)."""
        if condition:
            raise ConfigError(f"{cls.__name__}: {why}")

    def check_inputs(self, ms: torch.Tensor, pan: torch.Tensor) -> None:
        p, q, name = self.ms_patch, self.pan_patch, type(self).__name__
        if ms.dim() != 4 or ms.shape[1:] != (self.ms_channels, p, p):
            raise ValueError(f"{name}: ms must be (B, {self.ms_channels}, {p}, {p}), got {tuple(ms.shape)}")
        if pan.dim() != 4 or pan.shape[1:] != (1, q, q) or pan.shape[0] != ms.shape[0]:
            raise ValueError(
                f"{name}: pan must be (B={ms.shape[0]}, 1, {q}, {q}) ({self.ratio}x the MS patch), got {tuple(pan.shape)}"
            )

    def forward_flops(self) -> int:
        """Floating-point operations of one sample's forward pass, counted by torch's FlopCounterMode: matmuls
        and convolutions, and a selective scan only where it runs torch matmuls (the torch backend's; the cpu
        backend's kernels are not torch operations). Counted in eval mode (BatchNorm's running statistics untouched)
        with the parameters frozen (the counter's module tracker cannot hook outputs that are parameters, an SSM's);
        both restored after."""
        from torch.utils.flop_counter import FlopCounterMode

        p, q = self.ms_patch, self.pan_patch
        device = next(self.parameters()).device
        ms, pan = torch.zeros(1, self.ms_channels, p, p, device=device), torch.zeros(1, 1, q, q, device=device)
        wanted, training = [t.requires_grad for t in self.parameters()], self.training
        self.requires_grad_(False)
        self.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                self(ms, pan)
        finally:
            self.train(training)
            for t, w in zip(self.parameters(), wanted):
                t.requires_grad_(w)
        return int(counter.get_total_flops())


def build_net(config: dict) -> nn.Module:
    """A net from its config (``_target_`` and arguments; ``name``, the report's ``net`` column, is not one). A
    geometry the net refuses raises its ConfigError itself, not wrapped in Hydra's InstantiationException."""
    import hydra
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate({k: v for k, v in config.items() if k != "name"})
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise
