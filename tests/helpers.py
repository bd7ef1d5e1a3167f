"""Test-only callbacks (importable by Hydra `_target_` from the tests package)."""
import os
from pathlib import Path

import lightning as L


class PauseAt(L.Callback):
    """Test-only: at a known point (after training step ``step``, or validation / test batch ``step``) writes
    ``marker`` and waits until a stop or warning signal has arrived (at most ``seconds``), so that a test can signal the
    whole process group from outside, DataLoader workers running, at a point it knows. ``slow_s``: every
    training step also sleeps this long (a long epoch in little time, for the periodic last.ckpt)."""

    def __init__(self, marker: str, stage: str = "train", step: int = 1, seconds: float = 60.0, slow_s: float = 0.0,
                 hold_s: float = 0.0, jobs: list | None = None):
        self.marker, self.stage, self.step, self.seconds, self.slow_s = marker, stage, step, seconds, slow_s
        self.hold_s = hold_s  # after the signal, the step in hand goes on this long (a long step)
        self.jobs = None if jobs is None else [str(j) for j in jobs]  # in a sweep: pause only in these jobs,
        # each writing <marker>-<job>

    def setup(self, trainer, pl_module, stage):
        if self.jobs is not None:
            from hydra.core.hydra_config import HydraConfig

            job = Path(HydraConfig.get().runtime.output_dir).name
            self.marker = f"{self.marker}-{job}" if job in self.jobs else None

    def _pause(self):
        import time
        from pathlib import Path

        from das2f.runtime import signals

        if self.marker is None or Path(self.marker).exists():  # not this job, or paused once already (a resumed
            return                                              # run carries the same callback)
        Path(self.marker).write_text(str(os.getpid()))
        t0 = time.monotonic()
        while signals.received() is None and signals._state.checkpoint is None and time.monotonic() - t0 < self.seconds:
            time.sleep(0.02)
        time.sleep(self.hold_s)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.slow_s:
            import time

            time.sleep(self.slow_s)
        if self.stage == "train" and trainer.global_step == self.step:
            self._pause()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.stage == "val" and not trainer.sanity_checking and batch_idx == self.step:
            self._pause()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.stage == "test" and batch_idx == self.step:
            self._pause()


class Barrier(L.Callback):
    """Test-only: at the start of training, each run of a sweep announces itself in ``folder`` and waits until
    ``n`` runs have: the runs of a parallel sweep all pass; a sweep that runs its jobs one after another fails
    here (its first job waits alone for ``seconds``)."""

    def __init__(self, folder: str, n: int = 2, seconds: float = 120.0):
        self.folder, self.n, self.seconds = folder, n, seconds

    def on_train_start(self, trainer, pl_module):
        import time
        from pathlib import Path

        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(os.getpid())).write_text("")
        t0 = time.monotonic()
        while len(list(folder.iterdir())) < self.n:
            if time.monotonic() - t0 > self.seconds:
                raise RuntimeError(f"Barrier: {len(list(folder.iterdir()))} of {self.n} runs started together")
            time.sleep(0.05)


class StopAfterEpoch(L.Callback):
    """Test-only: stops training at the end of epoch ``epoch`` (after its validation and checkpoint), as a stop
    between epochs would."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True
