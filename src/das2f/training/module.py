"""Das2fClassifier: the LightningModule around the network, described by plain configs (see the class)."""
from __future__ import annotations

import hydra
import lightning as L
import torch
from torch import nn
from torchmetrics import ConfusionMatrix, MaxMetric, MeanMetric

from ..metrics import metric_collection
from ..models.base import build_net
from ..runtime.config import plain
from ..runtime.errors import ConfigError


class Das2fClassifier(L.LightningModule):
    """The classifier around a network built from its config (DAS²F or a baseline).

    Every argument is a plain config, saved as the module's hyper-parameters: the network's
    (``_target_`` and its arguments), the optimizer's and the scheduler's (``_partial_`` configs,
    instantiated in ``configure_optimizers``). So ``Das2fClassifier.load_from_checkpoint(path)``
    alone rebuilds the model, and the checkpoint holds tensors and plain containers only.
    """

    def __init__(self, net: dict, optimizer: dict | None = None, scheduler: dict | None = None,
                 num_classes: int = 11, class_names: list[str] | None = None, class_weights: list[float] | None = None,
                 label_smoothing: float = 0.0, scheduler_interval: str = "step", compile: bool = False):
        super().__init__()
        net, optimizer, scheduler = plain(net), plain(optimizer), plain(scheduler)
        class_names, class_weights = plain(class_names), plain(class_weights)
        self.save_hyperparameters(logger=False)
        self.saved_rng = None  # a checkpoint's random state, until training starts again (on_train_start)
        self.net = build_net(net)
        if compile:
            # torch.compile of the network in place (its state_dict keys unchanged); the cpu scan backend is
            # traced as two operators, the others stay eager between compiled graphs (ops/scan.py).
            # Compiled at the first batch.
            self.net.compile()
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        # one metric object per stage (nn.ModuleDict keys may not shadow Module.train, hence the suffix)
        self.metrics = nn.ModuleDict({f"{s}_": metric_collection(num_classes, f"{s}/") for s in ("train", "val", "test")})
        self.confusion = nn.ModuleDict({f"{s}_": ConfusionMatrix("multiclass", num_classes=num_classes)
                                        for s in ("val", "test")})
        self.val_oa_best = MaxMetric()
        self.train_loss = MeanMetric()  # the epoch's mean training loss
        for metric in (*self.metrics["train_"].values(), self.train_loss, self.val_oa_best):
            metric.persistent(True)  # in every checkpoint: a resumed run goes on with exactly these metrics' states
        self.test_confusion: torch.Tensor | None = None

    def forward(self, ms, pan):
        return self.net(ms, pan)

    def _step(self, batch, stage: str):
        phased = stage == "train" and hasattr(self.net, "training_loss")
        if phased:  # a net trained in phases (a reconstruction first, say): its phase from the share of steps done
            progress = self.global_step / max(1, self.trainer.estimated_stepping_batches)
            loss, logits, extra = self.net.training_loss(batch["ms"], batch["pan"], batch["label"], self.criterion,
                                                         progress)
            self.log_dict({f"train/{k}": v for k, v in extra.items()}, on_step=False, on_epoch=True,
                          batch_size=len(logits))  # epoch means: train/phase is 1, 2, or between at the switch
        else:
            logits = self(batch["ms"], batch["pan"])
            loss = self.criterion(logits, batch["label"])
        preds = logits.argmax(1)
        self.metrics[f"{stage}_"].update(preds, batch["label"])
        if f"{stage}_" in self.confusion:
            self.confusion[f"{stage}_"].update(preds, batch["label"])
        if stage == "train":
            self.train_loss.update(loss.detach(), len(preds))
            self.log("train/loss_step", loss, prog_bar=True)
        else:
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(preds))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        """A window of a scene (das2f.data.windows) -> its pixels' classes (n,) and confidences (the top class
        probability) with their coordinates, and the coordinates of its nodata pixels (not classified)."""
        if len(batch["ms"]) == 0:  # a window of nodata only
            classes, confidence = batch["coord"].new_zeros(0), batch["ms"].new_zeros(0, dtype=torch.float32)
        else:
            logits = self(batch["ms"], batch["pan"])
            classes, confidence = logits.argmax(1), logits.float().softmax(1).amax(1)
        return {"window": batch["window"], "coord": batch["coord"], "classes": classes, "confidence": confidence,
                "nodata": batch.get("nodata", batch["coord"][:0])}

    def _log_epoch(self, stage: str):
        values = self.metrics[f"{stage}_"].compute()
        per_class = values.pop(f"{stage}/class_acc")
        self.log_dict(values, prog_bar=stage != "train")
        self.log_dict({f"{stage}/acc_{n}": v for n, v in zip(self.class_names, per_class)})
        self.metrics[f"{stage}_"].reset()
        return values

    def on_train_epoch_end(self):
        self._log_epoch("train")
        loss = self.train_loss.compute()
        self.log_dict({"train/loss": loss, "train/loss_epoch": loss})
        self.train_loss.reset()

    def on_load_checkpoint(self, checkpoint):
        """A checkpoint written before the training metrics were saved in it: they start from their initial state.
        Its random state (dropout, augmentation) is set back when training starts again (on_train_start)."""
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if key.startswith(("metrics.train_.", "train_loss.", "val_oa_best.")) and key not in state:
                state[key] = value
        self.saved_rng = checkpoint.get("rng_states")

    def on_save_checkpoint(self, checkpoint):
        """The random state that training draws from (dropout, augmentation), so that a resumed run draws what the
        run that never stopped drew (the data order has its own seeds: das2f.data.datamodule)."""
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(),
                                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_train_start(self):
        """Resumed: the checkpoint's random state, after the sanity check and before the first batch is drawn."""
        saved, self.saved_rng = self.saved_rng, None
        if saved is not None:
            torch.set_rng_state(saved["torch"])
            if saved["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved["cuda"])

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
        if self.hparams.optimizer is None:
            raise ConfigError("model.optimizer is not set: training needs an optimizer config")
        opt = hydra.utils.instantiate(self.hparams.optimizer)(params=self.parameters())
        if self.hparams.scheduler is None:
            return opt
        sched = hydra.utils.instantiate(self.hparams.scheduler)(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.hparams.scheduler_interval}}
