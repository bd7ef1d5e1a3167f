"""Callbacks of our own: a plain-text epoch summary (progress bars vanish in batch jobs), a checkpoint on SIGTERM."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L

log = logging.getLogger("das2f.progress")


class EpochSummary(L.Callback):
    """Logs one line per epoch: epoch, time, samples/s, train loss, validation OA / AA / kappa."""

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0, self._n, self._loss = time.perf_counter(), 0, 0.0

    on_train_start = on_train_epoch_start  # a run resumed mid-epoch starts without on_train_epoch_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = len(batch["label"])
        self._n += n
        self._loss += float(outputs["loss"]) * n

    def on_train_epoch_end(self, trainer, pl_module):
        # runs after this epoch's validation loop, so the val metrics are this epoch's
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        dt = time.perf_counter() - self._t0
        log.info("epoch %d/%d: %.0f s, %.1f samples/s, train/loss %.4f, val/oa %.4f, val/aa %.4f, val/kappa %.4f",
                 trainer.current_epoch + 1, trainer.max_epochs, dt, self._n / max(dt, 1e-9),
                 self._loss / max(self._n, 1), m.get("val/oa", float("nan")),
                 m.get("val/aa", float("nan")), m.get("val/kappa", float("nan")))


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM (a scheduler's pre-emption, `kill`), saves ``<dirpath>/last.ckpt`` before the process exits.

    Lightning's signal connector turns SIGTERM into a SIGTERMException at the next batch boundary;
    this callback writes the checkpoint then, so `ckpt_path=last` resumes from that very step.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename

    def on_exception(self, trainer, pl_module, exception):
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path)
            log.warning("SIGTERM: saved %s at epoch %d, step %d; resume with ckpt_path=last",
                        self.path, trainer.current_epoch, trainer.global_step)
