"""Test-only callbacks (importable by Hydra `_target_` from the tests package)."""
import os
import signal

import lightning as L


class SigtermAtStep(L.Callback):
    """Sends this process SIGTERM after training batch ``step`` (as a scheduler's pre-emption would)."""

    def __init__(self, step: int = 1):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
