"""Das2fClassifier: the LightningModule around an injected network (DAS²F or a baseline)."""
from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import ConfusionMatrix, MaxMetric

from .metrics import metric_collection


class Das2fClassifier(L.LightningModule):
    def __init__(self, net: nn.Module, optimizer: Callable, scheduler: Callable | None = None,
                 num_classes: int = 11, class_names: list[str] | None = None, class_weights: list[float] | None = None,
                 label_smoothing: float = 0.0, scheduler_interval: str = "step"):
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        # one metric object per stage (nn.ModuleDict keys may not shadow Module.train, hence the suffix)
        self.metrics = nn.ModuleDict({f"{s}_": metric_collection(num_classes, f"{s}/") for s in ("train", "val", "test")})
        self.confusion = nn.ModuleDict({f"{s}_": ConfusionMatrix("multiclass", num_classes=num_classes)
                                        for s in ("val", "test")})
        self.val_oa_best = MaxMetric()
        self.test_confusion: torch.Tensor | None = None
        # what `das2f.predict` and a resumed W&B run need, saved in every checkpoint (set by das2f.train)
        self.run_info: dict = {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        info = dict(self.run_info)
        for lg in self.loggers:
            if type(lg).__name__ == "WandbLogger":
                info["wandb_run_id"] = lg.experiment.id  # resuming this checkpoint resumes this W&B run
        checkpoint["das2f"] = info

    def forward(self, ms, pan):
        return self.net(ms, pan)

    def _step(self, batch, stage: str):
        logits = self(batch["ms"], batch["pan"])
        loss = self.criterion(logits, batch["label"])
        preds = logits.argmax(1)
        self.metrics[f"{stage}_"].update(preds, batch["label"])
        if f"{stage}_" in self.confusion:
            self.confusion[f"{stage}_"].update(preds, batch["label"])
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=len(preds))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log_epoch(self, stage: str):
        values = self.metrics[f"{stage}_"].compute()
        per_class = values.pop(f"{stage}/class_acc")
        self.log_dict(values, prog_bar=stage != "train")
        self.log_dict({f"{stage}/acc_{n}": v for n, v in zip(self.class_names, per_class)})
        self.metrics[f"{stage}_"].reset()
        return values

    def on_train_epoch_end(self):
        self._log_epoch("train")

    def on_validation_epoch_end(self):
        values = self._log_epoch("val")
        self.confusion["val_"].reset()
        if not self.trainer.sanity_checking:
            self.val_oa_best.update(values["val/oa"])
            self.log("val/oa_best", self.val_oa_best.compute(), prog_bar=True)

    def on_test_epoch_end(self):
        self._log_epoch("test")
        self.test_confusion = self.confusion["test_"].compute().cpu()
        self.confusion["test_"].reset()

    def configure_optimizers(self):
        opt = self.hparams.optimizer(params=self.parameters())
        if self.hparams.scheduler is None:
            return opt
        sched = self.hparams.scheduler(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.hparams.scheduler_interval}}
