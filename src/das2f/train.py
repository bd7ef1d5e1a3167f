"""`python -m das2f.train` (make train): prepare, fit, test the best-on-validation checkpoint."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from .config import CONF_DIR, check_config
from .results import print_results, write_results

log = logging.getLogger("das2f.train")


def instantiate_list(cfg: DictConfig | None) -> list:
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


def read_checkpoint(ckpt_path: str) -> dict:
    """A checkpoint's contents, read once (memory-mapped) for the checks before training."""
    import torch

    return torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)  # our own checkpoints


def check_checkpoint_classes(ckpt_path: str, ckpt: dict, class_names: list[str]) -> None:
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
    model.run_info = run_info(cfg, datamodule)
    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return datamodule, model, trainer


def run_info(cfg: DictConfig, datamodule) -> dict:
    """Saved in every checkpoint: enough to rebuild the network and normalise a new scene (das2f.predict)."""
    attrs = datamodule.sets["train"].attrs
    return {
        "net": OmegaConf.to_container(cfg.model.net, resolve=True), "dataset": cfg.dataset.name,
        "class_names": list(datamodule.class_names), "class_values": [int(v) for v in attrs["class_values"]],
        "ms_patch": int(attrs["ms_patch"]), "ratio": int(attrs["ratio"]),
        "normalization": {"kind": datamodule.normalization, "shift": datamodule.shift.tolist(),
                          "scale": datamodule.scale.tolist()},
    }


def resume_wandb_run(cfg: DictConfig, ckpt_path: str, ckpt: dict) -> None:
    """A resumed checkpoint continues its W&B run: the id stored in the checkpoint, never typed by hand."""
    run_id = ckpt.get("das2f", {}).get("wandb_run_id")
    for c in (cfg.get("logger") or {}).values():
        if c is not None and str(c.get("_target_", "")).endswith("WandbLogger") and run_id:
            with open_dict(c):
                c.id, c.resume = run_id, "allow"
            log.info("resuming W&B run %s from %s", run_id, ckpt_path)


def log_figures(trainer, out: Path) -> None:
    """The test confusion matrix to W&B (maps go there from das2f.predict, wandb=true)."""
    figure = out / "test_confusion.png"
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger" and figure.is_file():
            lg.log_image(key="test/confusion", images=[str(figure)])


def resolve_ckpt(cfg: DictConfig) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        ckpt = str(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {ckpt}")
    return ckpt


def run(cfg: DictConfig) -> dict:
    check_config(cfg)
    started = time.perf_counter()
    ckpt = resolve_ckpt(cfg)
    saved = read_checkpoint(ckpt) if ckpt else None
    if ckpt:
        resume_wandb_run(cfg, ckpt, saved)
    datamodule, model, trainer = build(cfg)
    if ckpt:
        check_checkpoint_classes(ckpt, saved, datamodule.class_names)
    del saved
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
        out = write_results(cfg, metrics, model, started)
        log_figures(trainer, out)
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
