"""`python -m das2f.prepare dataset=NAME [force=true]` (make prepare)."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import CONF_DIR, check_config
from .data.prepare import prepare_dataset


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prepare")
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    prepare_dataset(OmegaConf.to_container(cfg.dataset, resolve=True), force=bool(cfg.force))


if __name__ == "__main__":
    main()
