"""Hydra/OmegaConf glue: resolvers used by conf/ and config checks that run before any work."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _gid5_tiles(source_dir: str, categories, per_category: int) -> list[dict]:
    return [
        {"name": f"{cat}_{i}", "kind": "wald_rgb", "image": f"{source_dir}/image/{cat}/{i}.tif",
         "label": f"{source_dir}/label/{cat}/{i}.tif"}
        for cat in categories for i in range(1, int(per_category) + 1)
    ]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda x: len(x))
    if not OmegaConf.has_resolver("gid5_tiles"):
        OmegaConf.register_new_resolver("gid5_tiles", _gid5_tiles)


register_resolvers()
