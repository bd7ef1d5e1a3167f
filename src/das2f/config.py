"""Hydra/OmegaConf glue: resolvers used by conf/ and config checks that run before any work."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_DIR = str(Path(__file__).resolve().parents[2])
CONF_DIR = str(Path(PROJECT_DIR) / "conf")


def plain(cfg):
    """A config as plain Python containers; anything else unchanged. OmegaConf nodes print differently from
    lists and dicts (the prepare fingerprint of the same config differed between `make prepare` and `make
    train`), and torch's safe loader reads only plain containers in a checkpoint."""
    from omegaconf import DictConfig, ListConfig

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def wandb_offline() -> bool:
    """W&B runs offline (no account, no network) unless an API key is set or WANDB_MODE says otherwise."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    return not os.environ.get("WANDB_API_KEY")


def _run_group(output_dir: str, default: str) -> str:
    """The multirun a job belongs to (its sweep directory's name), else ``default``: one W&B group per sweep."""
    out = Path(output_dir)
    return out.parent.name if out.parent.parent.name == "multiruns" else default


def _run_dir(resume, default: str) -> str:
    """hydra.run.dir: the given run directory when resuming (``resume=DIR``), else a new one."""
    if resume in (None, "", "None", "null"):
        return default
    return str(Path(str(resume)).expanduser().resolve())


def _isatty() -> bool:
    """Live progress bars only on a terminal (a log file gets plain progress lines instead)."""
    return sys.stderr.isatty()


RESOLVERS = {
    "len": lambda x: len(x),
    "wandb_offline": wandb_offline,
    "run_group": _run_group,
    "das2f_cwd": os.getcwd,  # outputs go where the command runs (never needs Hydra's runtime, so sweeps resolve too)
    "das2f_project": lambda: PROJECT_DIR,
    "das2f_run_dir": _run_dir,
    "isatty": _isatty,
}


def register_resolvers() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
