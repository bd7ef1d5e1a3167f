"""`python -m das2f.train` (make train): prepare, fit, test the best-on-validation checkpoint."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from .config import CONF_DIR
from .results import print_results, write_results

log = logging.getLogger("das2f.train")


def instantiate_list(cfg: DictConfig | None) -> list:
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


def check_checkpoint_classes(ckpt_path: str, class_names: list[str]) -> None:
    import torch

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    saved = ckpt.get("hyper_parameters", {}).get("class_names")
    if saved is not None and list(saved) != list(class_names):
        raise ValueError(f"checkpoint {ckpt_path} was trained on classes {list(saved)}, "
                         f"the dataset has {list(class_names)}: choose the matching dataset")


def build(cfg: DictConfig):
    """Data first (prepared and validated), then model, callbacks, loggers, trainer."""
    L.seed_everything(cfg.seed, workers=True)
    log.info("data: %s -> %s", cfg.dataset.name, cfg.dataset.prepared_dir)
    datamodule = hydra.utils.instantiate(cfg.data, dataset=OmegaConf.to_container(cfg.dataset, resolve=True))
    datamodule.prepare_data()
    datamodule.setup()
    if datamodule.class_names != list(cfg.dataset.classes):
        raise ValueError(f"{datamodule.paths['train']}: prepared with classes {datamodule.class_names}, config has "
                         f"{list(cfg.dataset.classes)}; run `make prepare DATASET={cfg.dataset.name} ARGS=force=true`")
    model = hydra.utils.instantiate(cfg.model)
    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return datamodule, model, trainer


def resolve_ckpt(cfg: DictConfig) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        ckpt = str(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {ckpt}")
    return ckpt


def run(cfg: DictConfig) -> dict:
    ckpt = resolve_ckpt(cfg)
    datamodule, model, trainer = build(cfg)
    if ckpt:
        check_checkpoint_classes(ckpt, datamodule.class_names)
    try:
        if cfg.get("train"):
            log.info("training: %s", cfg.paths.output_dir)
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)  # our own checkpoints
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if cfg.get("test"):
            if cfg.get("train"):
                best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            else:
                best = ckpt  # eval: exactly the given checkpoint
            log.info("testing the best-on-validation checkpoint: %s", best or "(current weights)")
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
            metrics["best_checkpoint"] = best
        out = write_results(cfg, metrics, model)
        print_results(metrics, model.class_names, out)
    finally:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    value = metrics.get(cfg.get("optimized_metric"))
    return value


if __name__ == "__main__":
    main()
