"""`python -m das2f.eval ckpt_path=...` (make eval): test metrics of a checkpoint.

The network is rebuilt from the checkpoint (das2f.training.start.net_from_checkpoint); the dataset must be
the one it was trained on (its classes are checked).
"""
from __future__ import annotations

from omegaconf import DictConfig, open_dict

from .runtime.cli import hydra_entry


@hydra_entry("eval")
def main(cfg: DictConfig) -> None:
    from .train import run

    with open_dict(cfg):
        cfg.train, cfg.test = False, True
    run(cfg)


if __name__ == "__main__":
    main()
