"""Callbacks of our own: plain-text progress (bars vanish in batch jobs), a 1-based progress bar for
terminals, last.ckpt (every epoch, every few minutes, on a signal), stopping at a step on a signal."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, RichProgressBar
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary

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


class LastCheckpoint(Checkpoint):
    """The one writer of ``<dirpath>/last.ckpt``, what ``resume=<run dir>`` continues from. Written:

    - at every epoch's end (where Lightning's ModelCheckpoint would save it);
    - every ``every_s`` seconds of training (a SIGKILL, the OOM killer or a lost node loses at most that);
    - at the next training step after SIGUSR1/SIGUSR2 (a scheduler's warning), the run going on;
    - when a stop signal (SIGTERM, Ctrl-C) ends the fit, after the step in hand (das2f.runtime.signals).

    Before each write the previous file is kept as ``last.prev.ckpt`` (a hard link, or a rename where links
    are not supported), so a newest one broken by a kill mid-write still has an intact predecessor; Lightning
    writes each checkpoint to a temporary file and renames it. A Checkpoint subclass, so Lightning runs it
    after the other callbacks (the best-on-validation ModelCheckpoint included) have updated their state.
    """

    def __init__(self, dirpath: str, every_s: float | None = 600.0):
        from ..checkpoint import LAST, PREVIOUS

        self.path, self.previous = Path(dirpath) / LAST, Path(dirpath) / PREVIOUS
        self.every_s = float(every_s) if every_s else None
        self._last = time.monotonic()
        self.saved_on_stop: Path | None = None

    @property
    def state_key(self) -> str:
        return "LastCheckpoint"

    def setup(self, trainer, pl_module, stage):
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from ..runtime import signals

        asked = signals.take_checkpoint_request()
        if asked is not None:
            self.save(trainer, f"{signals.signal_name(asked)} received")
            signals.requeue(asked)  # answered: under submitit the job is requeued now (this process ends)
        elif self.every_s is not None and time.monotonic() - self._last >= self.every_s:
            self.save(trainer, f"every {self.every_s:g} s")

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking and not self._at_train_epoch_end(trainer):
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        if self._at_train_epoch_end(trainer):
            self.save(trainer)

    @staticmethod
    def _at_train_epoch_end(trainer) -> bool:
        """Where Lightning's ModelCheckpoint saves an epoch's end (so the loops' progress resumes exactly): at
        the training epoch's end when validation runs once per epoch or not at all, else after each validation."""
        if trainer.check_val_every_n_epoch != 1:
            return False
        n_val = sum(trainer.num_val_batches) if isinstance(trainer.num_val_batches, list) else trainer.num_val_batches
        return n_val == 0 or trainer.val_check_interval == 1.0

    def on_exception(self, trainer, pl_module, exception):
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from ..runtime import signals

        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            self.save(trainer)
            self.saved_on_stop = self.path
            log.warning("%s: saved %s at epoch %d, step %d", signals.signal_name(signals.received() or 15), self.path,
                        trainer.current_epoch + 1, trainer.global_step)

    def save(self, trainer, why: str | None = None) -> None:
        if trainer.is_global_zero and self.path.is_file():
            keep = self.previous.with_name(self.previous.name + ".tmp")
            try:
                keep.unlink(missing_ok=True)
                os.link(self.path, keep)  # last.ckpt stays in place while the new one is written
                os.replace(keep, self.previous)
            except OSError:  # a filesystem without hard links
                os.replace(self.path, self.previous)
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last = time.monotonic()
        if why:
            log.info("saved %s (%s) at epoch %d, step %d", self.path, why, trainer.current_epoch + 1, trainer.global_step)


class StopOnSignal(L.Callback):
    """While a Lightning loop runs, SIGTERM and Ctrl-C stop it at its next step boundary (das2f.runtime.signals):
    added by das2f to every trainer it builds, never by config."""

    def setup(self, trainer, pl_module, stage):
        from ..runtime import signals

        signals.attach(trainer)

    def _started(self, trainer, pl_module):
        from ..runtime import signals

        signals.loop_started()

    # hooks that run once Lightning has installed its signal handling (after on_fit_start)
    on_sanity_check_start = on_train_start = on_validation_start = on_test_start = on_predict_start = _started

    def teardown(self, trainer, pl_module, stage):
        from ..runtime import signals

        signals.detach()


class ModelSummary(LightningModelSummary):
    """Lightning's model summary with the network's real forward FLOPs per sample (DAS2F.forward_flops):
    Lightning counts FLOPs only from an example input and printed "0 Total Flops"; its per-layer FLOPs
    column (zeros for the same reason) is left out."""

    def on_fit_start(self, trainer, pl_module):
        net = getattr(pl_module, "net", None)
        self._flops = net.forward_flops() if self._max_depth and trainer.is_global_zero and \
            hasattr(net, "forward_flops") else 0
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **kwargs):
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      self._flops, *[c for c in summary_data if c[0] != "FLOPs"])
        log.info("\n%s", table.replace("Total Flops", "FLOPs per sample (forward)"))


class AdaptThreads(L.Callback):
    """Between batches, lets das2f.runtime.threads re-choose torch's thread count from the other processes' load
    (threads=auto; a no-op with a fixed threads=N or outside the das2f entry points)."""

    def _step(self, *args, **kwargs):
        from ..runtime.threads import step

        step()

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _step


class RunRecord(L.Callback):
    """Writes the run's own facts into every checkpoint (key "das2f"): the Hydra overrides it was started
    with (``resume=<run dir>`` composes them again), its W&B run id (a resumed run continues it) and the metrics
    logged so far (a run resumed after its last epoch, stopped while testing, trains no epoch more: its train and
    validation metrics come from there)."""

    def __init__(self, overrides: list[str] | None = None):
        self.overrides = list(overrides or [])
        self.restored: dict[str, float] = {}

    def metrics(self, trainer) -> dict[str, float]:
        """The run's scalar metrics: those logged by this process over those its checkpoint brought."""
        return {**self.restored, **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self.restored = dict(checkpoint.get("das2f", {}).get("metrics", {}))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        info = {"overrides": self.overrides, "metrics": self.metrics(trainer)}
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                info["wandb_run_id"] = lg.experiment.id
        checkpoint["das2f"] = info
