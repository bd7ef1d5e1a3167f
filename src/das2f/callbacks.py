"""Callbacks of our own: a plain-text epoch summary in the log (progress bars vanish in batch jobs)."""
from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger("das2f.progress")


class EpochSummary(L.Callback):
    """Logs one line per epoch: epoch, time, samples/s, train loss, validation OA / AA / kappa."""

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0, self._n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._n += len(batch["label"])

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not hasattr(self, "_t0"):
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        dt = time.perf_counter() - self._t0
        log.info("epoch %d/%d: %.0f s, %.1f samples/s, train/loss %.4f, val/oa %.4f, val/aa %.4f, val/kappa %.4f",
                 trainer.current_epoch + 1, trainer.max_epochs, dt, self._n / max(dt, 1e-9),
                 m.get("train/loss_epoch", float("nan")), m.get("val/oa", float("nan")),
                 m.get("val/aa", float("nan")), m.get("val/kappa", float("nan")))
