"""Callbacks of our own: plain-text progress (bars vanish in batch jobs), a 1-based progress bar for
terminals, a checkpoint on SIGTERM."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from ..metrics import METRICS

log = logging.getLogger("das2f.progress")


class EpochSummary(L.Callback):
    """Logs one line per epoch (epoch, time, samples/s, train loss, validation OA / AA / kappa) and,
    inside a long epoch, a progress line every ``every_s`` seconds. Epochs count from 1 everywhere."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = self._last = time.perf_counter()
        self._n, self._loss = 0, 0.0

    on_train_start = on_train_epoch_start  # a run resumed mid-epoch starts without on_train_epoch_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = len(batch["label"])
        self._n += n
        self._loss += float(outputs["loss"]) * n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            total = trainer.num_training_batches
            log.info("epoch %d/%d: batch %d/%s, %.0f s, %.1f samples/s, train/loss %.4f",
                     trainer.current_epoch + 1, trainer.max_epochs, batch_idx + 1, total, now - self._t0,
                     self._n / (now - self._t0), self._loss / self._n)

    def on_train_epoch_end(self, trainer, pl_module):
        # runs after this epoch's validation loop, so the val metrics are this epoch's
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        dt = time.perf_counter() - self._t0
        val = ", ".join(f"val/{k} {m[f'val/{k}']:.4f}" for k in METRICS if f"val/{k}" in m)
        log.info("epoch %d/%d: %.0f s, %.1f samples/s, train/loss %.4f%s", trainer.current_epoch + 1, trainer.max_epochs,
                 dt, self._n / max(dt, 1e-9), self._loss / max(self._n, 1), f", {val}" if val else "")


class EpochBar(RichProgressBar):
    """Lightning's rich bar, counting epochs from 1 like every log line ("Epoch 5/5", not "Epoch 4/4")."""

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning 2.x hook for the bar's label
        return f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM (a scheduler's pre-emption, `kill`), saves ``<dirpath>/last.ckpt`` before the process exits.

    Lightning's signal connector turns SIGTERM into a SIGTERMException at the next batch boundary;
    this callback writes the checkpoint then, so ``resume=<run dir>`` continues from that very step.
    das2f.train then exits with status 143 (interrupted, resumable), never 0.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename

    def on_exception(self, trainer, pl_module, exception):
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path)
            log.warning("SIGTERM: saved %s at epoch %d, step %d", self.path, trainer.current_epoch + 1,
                        trainer.global_step)


class AdaptThreads(L.Callback):
    """Between batches, lets das2f.runtime.threads re-choose torch's thread count from the other processes' load
    (threads=auto; a no-op with a fixed threads=N or outside the das2f entry points)."""

    def _step(self, *args, **kwargs):
        from ..runtime.threads import step

        step()

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _step


class RunRecord(L.Callback):
    """Writes the run's own facts into every checkpoint (key "das2f"): the Hydra overrides it was started
    with (``resume=<run dir>`` composes them again) and its W&B run id (a resumed run continues it)."""

    def __init__(self, overrides: list[str] | None = None):
        self.overrides = list(overrides or [])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        info = {"overrides": self.overrides}
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                info["wandb_run_id"] = lg.experiment.id
        checkpoint["das2f"] = info
