"""`python -m das2f.train` (make train): prepare, fit, test the best-on-validation checkpoint.

Start points: nothing (a new run), ``resume=<run dir>`` (continue that run in place, with the
overrides it was started with), or ``ckpt_path=<file>`` (start a new run from a checkpoint's
state). Evaluation (``das2f.eval``) goes through :func:`run` with ``train=false``; the network
is then rebuilt from the checkpoint, never from the config.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .runtime.cli import clear_failure, hydra_entry
from .runtime.errors import ConfigError
from .training.start import (
    Phase,
    check_checkpoint_classes,
    merged_overrides,
    slim_checkpoint,
    start_point,
    stopped,
    task_overrides,
)

__all__ = ["build", "merged_overrides", "run"]

log = logging.getLogger("das2f.train")


def instantiate_list(cfg: DictConfig | None) -> list:
    import hydra

    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


def build(cfg: DictConfig):
    """Data first (prepared and validated), then model, callbacks, loggers, trainer."""
    import hydra
    import lightning as L

    from .runtime.cli import route_lightning_logs
    from .training.callbacks import EpochBar, RunRecord, StopOnSignal

    route_lightning_logs()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    log.info("data: %s -> %s", cfg.dataset.name, cfg.dataset.prepared_dir)
    from .runtime import signals

    datamodule = hydra.utils.instantiate(cfg.data, dataset=OmegaConf.to_container(cfg.dataset, resolve=True),
                                         worker_options=signals.loader_options, stop_check=signals.check)
    datamodule.prepare_data()
    datamodule.setup()
    if datamodule.class_names != list(cfg.dataset.classes):
        raise ConfigError(f"{datamodule.paths['train']}: prepared with classes {datamodule.class_names}, config has "
                          f"{list(cfg.dataset.classes)}; run `make prepare DATASET={cfg.dataset.name} ARGS=force=true`")
    model = hydra.utils.instantiate(cfg.model)
    overrides = [o for o in (task_overrides() or []) if not o.startswith(("resume=", "ckpt_path="))]
    callbacks = [*instantiate_list(cfg.get("callbacks")), RunRecord(overrides), StopOnSignal()]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(EpochBar())
    loggers = instantiate_list(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return datamodule, model, trainer


def log_figures(trainer, out: Path) -> None:
    """The test confusion matrix to W&B (maps go there from das2f.predict, wandb=true)."""
    figure = out / "test_confusion.png"
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger" and figure.is_file():
            lg.log_image(key="test/confusion", images=[str(figure)])


def run(cfg: DictConfig) -> dict:
    """Prepare, fit, test the best-on-validation checkpoint, write the results; returns the metrics. With
    ``train=false`` (das2f.eval): test the given checkpoint."""
    from .runtime import signals

    phase = Phase()
    try:
        return _run(cfg, phase)
    except signals.Stop as err:  # raised where no Lightning loop was running (preparation, writing results, ...)
        raise stopped(cfg, phase.name, phase.trainer) from err


def _run(cfg: DictConfig, at: Phase) -> dict:
    from .training.callbacks import RunRecord
    from .training.results import print_results, write_results

    started = time.perf_counter()
    at("checking the checkpoint")
    cfg, ckpt, saved = start_point(cfg)
    at("preparing the data")
    datamodule, model, trainer = build(cfg)
    if ckpt:
        check_checkpoint_classes(ckpt, saved, datamodule.class_names)
    del saved
    try:
        best = fit(cfg, trainer, model, datamodule, ckpt, at) if cfg.get("train") else ckpt  # eval: the checkpoint given
        record = next((c for c in trainer.callbacks if isinstance(c, RunRecord)), None)
        metrics = record.metrics(trainer) if record else {}
        if cfg.get("test"):
            metrics.update(evaluate(cfg, trainer, model, datamodule, best, at), best_checkpoint=best)
        at("writing the results", trainer)
        split = datamodule.split_record
        out = write_results(cfg, metrics, model, started, split)
        clear_failure(out)
        log_figures(trainer, out)
        title = "test metrics (best-on-validation checkpoint)" if cfg.get("train") else f"test metrics of {Path(str(ckpt)).name}"
        print_results(metrics, model.class_names, out, title=title, split=split)
    finally:
        import sys

        wandb = sys.modules.get("wandb")  # imported only where a W&B logger ran (a GPU machine may have none)
        if wandb is not None and wandb.run is not None:
            wandb.finish()
    return metrics


def fit(cfg: DictConfig, trainer, model, datamodule, ckpt: str | None, at: Phase) -> str:
    """Train (from ``ckpt`` when resumed or started from a checkpoint); the best-on-validation checkpoint, slimmed."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .runtime import signals

    log.info("training: %s", cfg.paths.output_dir)
    at("training", trainer)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    except (SIGTERMException, signals.Stop) as err:
        raise stopped(cfg, "training", trainer) from err
    at("finishing the training", trainer)
    signals.answer_pending()  # a scheduler's warning that came after the last step: requeue now
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if trainer.is_global_zero:
        slim_checkpoint(best)
    if signals.received():  # it came as the last step ended: training is complete, the test not begun
        raise stopped(cfg, "finishing the training", trainer)
    return best


def evaluate(cfg: DictConfig, trainer, model, datamodule, best: str | None, at: Phase) -> dict:
    """The test metrics of ``best`` (the current weights when there is none)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .runtime import signals

    log.info("testing the best-on-validation checkpoint: %s", best or "(current weights)")
    at("testing", trainer)
    try:
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
    except (SIGTERMException, signals.Stop) as err:
        raise stopped(cfg, "testing", trainer) from err
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


@hydra_entry("train")
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
