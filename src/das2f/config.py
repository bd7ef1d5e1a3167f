"""Hydra/OmegaConf glue: resolvers used by conf/ and config checks that run before any work."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _gid5_tiles(source_dir: str, categories, per_category: int, tile_split=None, seed: int = 0) -> list[dict]:
    """The Gaofen-2 tiles as scenes. ``tile_split`` ({train: n, val: n, test: n} tiles per category):
    each tile goes whole into one split, drawn per category with ``seed`` (no tile in two splits)."""
    per_category = int(per_category)
    assign: dict[tuple[str, int], str] = {}
    if tile_split:
        counts = {k: int(v) for k, v in dict(tile_split).items()}
        if sum(counts.values()) > per_category:
            raise ValueError(f"gid5 tile_split {counts} takes {sum(counts.values())} tiles per category, "
                             f"only {per_category} configured (tiles_per_category)")
        for c, cat in enumerate(categories):
            order = np.random.default_rng([int(seed), c]).permutation(np.arange(1, per_category + 1))
            start = 0
            for split in ("train", "val", "test"):
                for i in order[start:start + counts.get(split, 0)]:
                    assign[(cat, int(i))] = split
                start += counts.get(split, 0)
    tiles = []
    for cat in categories:
        for i in range(1, per_category + 1):
            if tile_split and (cat, i) not in assign:
                continue
            tile = {"name": f"{cat}_{i}", "kind": "wald_rgb", "image": f"{source_dir}/image/{cat}/{i}.tif",
                    "label": f"{source_dir}/label/{cat}/{i}.tif"}
            if tile_split:
                tile["split"] = assign[(cat, i)]
            tiles.append(tile)
    return tiles


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


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda x: len(x))
    if not OmegaConf.has_resolver("gid5_tiles"):
        OmegaConf.register_new_resolver("gid5_tiles", _gid5_tiles)
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("run_group"):
        OmegaConf.register_new_resolver("run_group", _run_group)


register_resolvers()


def check_config(cfg) -> None:
    """Config mistakes Hydra lets through, refused before any work.

    ``+experiments=NAME`` composes experiments/NAME.yaml only when run from the project root
    (hydra.searchpath file://.); elsewhere Hydra silently adds a string key ``experiments`` and the
    recipe would not apply at all.
    """
    recipe = cfg.get("experiments") if hasattr(cfg, "get") else None
    if isinstance(recipe, str):
        raise ValueError(f"+experiments={recipe}: no experiments/{recipe}.yaml found from {os.getcwd()}; "
                         "run from the project root (where experiments/ is), e.g. through make")
