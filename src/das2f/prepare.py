"""`python -m das2f.prepare dataset=NAME [force=true] [inspect=true] [store=list|prune]` (make prepare)."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from .runtime.cli import hydra_entry


@hydra_entry("prepare")
def main(cfg: DictConfig) -> None:
    from .data.prepare import inspect_dataset, prepare_dataset
    from .runtime import signals

    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    if cfg.get("store") is not None:
        from .data import store
        from .runtime.errors import ConfigError

        if cfg.store not in ("list", "prune"):
            raise ConfigError(f"store={cfg.store}: expected list (the dataset's preparations) or prune (remove those no "
                              "run reads)")
        (store.show if cfg.store == "list" else store.prune)(dataset, cfg.paths.log_dir)
    elif cfg.get("inspect"):
        inspect_dataset(dataset)
    else:
        prepare_dataset(dataset, force=bool(cfg.force), check=signals.check)


if __name__ == "__main__":
    main()
