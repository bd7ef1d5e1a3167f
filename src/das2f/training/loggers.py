"""Lightning's loggers with two fixes for how das2f runs them (referenced from conf/logger/*.yaml).

- CSVLogger: a run resumed in place (``resume=<run dir>``) APPENDS to its csv/metrics.csv.
  Lightning's writer deletes an existing metrics.csv when it starts ("Previous log files ...
  will be deleted"), which lost the metrics of every epoch before an interruption.
- WandbLogger: Lightning passes W&B a deprecated ``anonymous`` setting on every run, which made
  W&B print a warning each time; it is left out.
"""
from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):  # keep the rows; later rows are appended under its header
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class CSVLogger(_CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class WandbLogger(_WandbLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
