"""One home for the classification metrics: what each is, its name, how it is printed.

Used by the LightningModule (train / val / test), the epoch log line, the results table, the
sweep report and scene prediction. A new metric is one entry in ``METRICS`` and one in
``metric_collection``.

Definitions (over labelled pixels):
- OA: overall accuracy, correct / all.
- AA: average accuracy, the mean of the per-class accuracies of the classes PRESENT in the
  truth. A class that is only predicted (absent from the truth) has no accuracy to average;
  torchmetrics' macro accuracy counts it as 0, which put a tile with 3 labelled classes of 10
  at a third of its real AA.
- kappa: Cohen's kappa. F1: macro F1 (the field's usual, classes in truth or prediction).
- acc_<class>: each class's accuracy (recall); undefined (NaN; null in JSON files) where the class
  is absent from the truth, never 0 (torchmetrics' 0 read as "every such pixel missed"). kappa is
  undefined as well where truth and prediction hold one and the same class.
"""
from __future__ import annotations

import math

import torch
from torchmetrics import ConfusionMatrix, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCohenKappa, MulticlassF1Score


class ClassAccuracy(MulticlassAccuracy):
    """Each class's accuracy (recall); NaN for a class absent from the target (undefined, not 0)."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(num_classes, average="none", **kwargs)

    def per_class(self) -> torch.Tensor:
        tp, _, _, fn = self._final_state()
        support = tp + fn
        return torch.where(support > 0, tp.double() / support.clamp(min=1), torch.nan)

    def compute(self) -> torch.Tensor:
        return self.per_class().float()


class PresentClassAccuracy(ClassAccuracy):
    """Mean per-class accuracy over the classes present in the target (AA as remote sensing defines it)."""

    def compute(self) -> torch.Tensor:
        acc = self.per_class()
        present = ~acc.isnan()
        if not present.any():
            return torch.tensor(float("nan"), device=acc.device)
        return acc[present].mean().float()


# name -> (label in tables, percent?) ; the order is the order of every table and log line
METRICS = {"oa": ("OA", True), "aa": ("AA", True), "kappa": ("kappa", False), "f1": ("F1", True)}


def metric_collection(num_classes: int, prefix: str = "") -> MetricCollection:
    """OA, AA, kappa, macro F1 and per-class accuracy ("class_acc", a vector) for one stage."""
    return MetricCollection({
        "oa": MulticlassAccuracy(num_classes, average="micro"),
        "aa": PresentClassAccuracy(num_classes),
        "kappa": MulticlassCohenKappa(num_classes),
        "f1": MulticlassF1Score(num_classes, average="macro"),
        "class_acc": ClassAccuracy(num_classes),
    }, prefix=prefix)


def metric_scale(name: str) -> int:
    """100 for the metrics shown as percentages (OA, AA, F1, per-class accuracy), 1 for kappa."""
    return 100 if METRICS.get(name, ("", True))[1] else 1


def format_metric(name: str, value: float, std: float | None = None) -> str:
    """A value as printed everywhere: percentages with 2 decimals, kappa with 4."""
    scale = metric_scale(name)
    digits = 2 if scale == 100 else 4
    text = f"{scale * value:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


class StreamMetrics:
    """The metrics of ``metric_collection`` and the confusion matrix (rows: truth, columns: prediction),
    accumulated batch by batch: a scene's labelled pixels band of rows by band of rows."""

    def __init__(self, class_names: list[str]):
        self.class_names = list(class_names)
        self.collection = metric_collection(len(self.class_names))
        self.confusion_matrix = ConfusionMatrix("multiclass", num_classes=len(self.class_names))

    def update(self, pred: torch.Tensor, truth: torch.Tensor) -> None:
        if len(truth):
            self.collection.update(pred, truth)
            self.confusion_matrix.update(pred, truth)

    @property
    def confusion(self) -> torch.Tensor:
        return self.confusion_matrix.compute()

    def compute(self) -> dict[str, float]:
        """oa, aa, kappa, f1 and acc_<class> as plain floats (NaN where undefined)."""
        values = self.collection.compute()
        per_class = values.pop("class_acc")
        out = {k: float(v) for k, v in values.items()}
        out.update({f"acc_{n}": float(v) for n, v in zip(self.class_names, per_class)})
        return out


def compute_metrics(pred: torch.Tensor, truth: torch.Tensor, class_names: list[str]) -> dict[str, float]:
    """The metrics of a set of predictions (class indices) against the truth, as plain floats:
    oa, aa, kappa, f1 and acc_<class>."""
    metrics = StreamMetrics(class_names)
    metrics.update(pred, truth)
    return metrics.compute()


def json_values(values: dict) -> dict:
    """Metrics for a JSON file: an undefined value (NaN) becomes null (JSON has no NaN)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}
