"""`python -m das2f.eval ckpt_path=...` (make eval): test metrics of a checkpoint."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig, open_dict

from .config import CONF_DIR
from .train import run


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    with open_dict(cfg):
        cfg.train, cfg.test = False, True
    run(cfg)


if __name__ == "__main__":
    main()
