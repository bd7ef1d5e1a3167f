"""Hydra/OmegaConf glue: resolvers used by conf/ and config checks that run before any work."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import OmegaConf


def _locate() -> tuple[str | None, str]:
    """(the checkout, the config directory): the checkout's conf/ when das2f runs from one (an editable install,
    src/ on PYTHONPATH); else the copy a wheel installs inside the package (setup.py), with no checkout."""
    here = Path(__file__).resolve()
    checkout = here.parents[3]  # src/das2f/runtime/config.py -> the checkout
    if (checkout / "conf" / "train.yaml").is_file():
        return str(checkout), str(checkout / "conf")
    return None, str(here.parents[1] / "conf")


CHECKOUT, CONF_DIR = _locate()


def project_dir() -> str:
    """``paths.project_dir``: the checkout (conf/, experiments/, ../shared/data beside it), or for a wheel install
    the working directory."""
    return CHECKOUT or os.getcwd()


def plain(cfg):
    """A config as plain Python containers; anything else unchanged. OmegaConf nodes print differently from
    lists and dicts (the prepare fingerprint of the same config differed between `make prepare` and `make
    train`), and torch's safe loader reads only plain containers in a checkpoint."""
    from omegaconf import DictConfig, ListConfig

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


# Classes that moved when the package was laid out by concern (0.2): a config or checkpoint naming the old
# path still works, with a warning saying the new one (docs/reference/configuration.md lists them).
MOVED = {
    "das2f.module.": "das2f.training.module.", "das2f.callbacks.": "das2f.training.callbacks.",
    "das2f.loggers.": "das2f.training.loggers.", "das2f.results.": "das2f.training.results.",
    "das2f.predictor.": "das2f.maps.predictor.", "das2f.maps.": "das2f.maps.figures.",
    "das2f.cli.": "das2f.runtime.cli.", "das2f.errors.": "das2f.runtime.errors.",
    "das2f.threads.": "das2f.runtime.threads.", "das2f.config.": "das2f.runtime.config.",
    "das2f.data.scene_datamodule.": "das2f.data.windows.",
}


def moved_target(target: str) -> str | None:
    """The new path of a class named by its pre-0.2 path (``das2f.training.callbacks.EpochSummary``), else None."""
    for old, new in MOVED.items():
        if target.startswith(old) and "." not in target[len(old):]:
            return new + target[len(old):]
    return None


def update_moved_targets(cfg, where: str = "config") -> list[str]:
    """Rewrites every ``_target_`` naming a moved class, in place (DictConfig or dict), with a warning each."""
    import logging

    from omegaconf import DictConfig, ListConfig

    changed = []

    def walk(node, path):
        items = node.items() if isinstance(node, (dict, DictConfig)) else \
            enumerate(node) if isinstance(node, (list, ListConfig)) else ()
        for key, value in items:
            if key == "_target_" and isinstance(value, str) and moved_target(value):
                node[key] = moved_target(value)
                changed.append(f"{path}{key}: {value} -> {node[key]}")
            elif isinstance(value, (dict, DictConfig, list, ListConfig)):
                walk(value, f"{path}{key}.")

    walk(cfg, "")
    for c in changed:
        logging.getLogger("das2f").warning("%s names a class by its old path (%s); update it", where, c)
    return changed


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


def _sweep_name(default: str, overrides) -> str:
    """A new sweep directory's name (hydra.sweep.dir): the datasets a sweep runs, joined by ``+``, when it sweeps
    ``dataset``; else ``default`` (the dataset's name)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides([str(x) for x in overrides or []]):
        if o.key_or_group == "dataset" and o.is_sweep_override() and o.is_discrete_sweep():
            return "+".join(o.sweep_string_iterator())
    return default


RESOLVERS = {
    "len": lambda x: len(x),
    "wandb_offline": wandb_offline,
    "run_group": _run_group,
    "das2f_cwd": os.getcwd,  # outputs go where the command runs (never needs Hydra's runtime, so sweeps resolve too)
    "das2f_project": project_dir,
    "das2f_run_dir": _run_dir,
    "das2f_sweep_name": _sweep_name,
    "isatty": _isatty,
}


def register_resolvers() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
