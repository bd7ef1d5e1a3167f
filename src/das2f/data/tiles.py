"""Tile datasets: a folder of image tiles and a folder of label tiles, matched by relative path.

A dataset config with a ``tiles`` block instead of a ``scenes`` list::

    tiles:
      root: /data/my_gf2          # everything below is relative to it
      kind: wald_rgb              # wald_rgb: one image tile -> MS + PAN by Wald's protocol
                                  # files: separate MS and PAN tiles (ms_dir, pan_dir)
      image_dir: image            # wald_rgb: the image tiles
      ms_dir: null                # files: the MS tiles ...
      pan_dir: null               # ... and the PAN tiles at the same relative paths
      label_dir: label            # the label tile of each image at the same relative path
      pattern: "*/*.tif"          # glob below image_dir (or ms_dir); subfolders are categories
      label_suffix: null          # e.g. .png when labels are PNG and images .tif; null = same name
    tile_split: {train: 0.6, val: 0.15, test: 0.25}   # or tile counts per category; null: pixel split

Every tile is one scene named after its relative path (``farmland/64.tif`` -> ``farmland_64``).
``tile_split`` puts every tile whole into one split, drawn per category folder (stratified) with
the dataset's ``seed``; tiles are ordered naturally (2 before 10) before the draw, so the split
depends only on the file names and the seed.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..runtime.errors import ConfigError, MissingFileError

KINDS = ("wald_rgb", "files")
PER_TILE = ("ms_key", "pan_key", "label_key", "ms_bands", "band_axis", "color_table", "nodata", "align",
            "align_resampling")  # scene keys a tiles block gives every tile
TILE_KEYS = ("root", "kind", "image_dir", "ms_dir", "pan_dir", "label_dir", "pattern", "label_suffix", *PER_TILE)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def _split_counts(rule: dict, n: int, category: str) -> dict[str, int]:
    """Tiles per split for a category of n tiles: counts as given, or ratios (test may be "rest")."""
    rule = {k: v for k, v in dict(rule).items()}
    unknown = set(rule) - {"train", "val", "test"}
    if unknown:
        raise ConfigError(f"tile_split: unknown split(s) {sorted(unknown)}, expected train, val, test")
    ratios = any(isinstance(v, float) for v in rule.values())  # else tile counts
    counts: dict[str, int] = {}
    for split in ("train", "val", "test"):
        x = rule.get(split, 0)
        if x == "rest":
            continue
        if ratios and not 0 <= float(x) <= 1:
            raise ConfigError(f"tile_split: {split}={x}, expected a ratio in [0, 1] (or tile counts throughout)")
        counts[split] = int(round(float(x) * n)) if ratios else int(x)
    if rule.get("test") == "rest":
        counts["test"] = n - counts.get("train", 0) - counts.get("val", 0)
    if sum(counts.values()) > n or min(counts.values()) < 0:
        raise ConfigError(f"tile_split {dict(rule)} takes {counts} tiles of category {category!r}, "
                          f"which has only {n}")
    return counts


def assign_splits(categories: list[str], split_rule: dict, seed: int) -> list[str | None]:
    """The split of each tile (None: left out), drawn per category with generator (seed, category index)."""
    names = sorted(set(categories), key=lambda c: _natural_key(Path(c)))
    out: list[str | None] = [None] * len(categories)
    for c, cat in enumerate(names):
        members = [i for i, x in enumerate(categories) if x == cat]
        counts = _split_counts(split_rule, len(members), cat)
        order = np.random.default_rng([int(seed), c]).permutation(len(members))
        start = 0
        for split in ("train", "val", "test"):
            for k in order[start:start + counts.get(split, 0)]:
                out[members[int(k)]] = split
            start += counts.get(split, 0)
    return out


def _tile_scene(tiles: dict, kind: str, root: Path, rel: Path, path: Path) -> dict:
    """The scene entry of one tile: its name and category from its relative path, its label at the same path."""
    label_suffix = tiles.get("label_suffix")
    label_rel = rel.with_suffix(label_suffix) if label_suffix else rel
    scene = {"name": "_".join(rel.with_suffix("").parts), "category": rel.parent.as_posix(),
             "label": str(root / str(tiles["label_dir"]) / label_rel)}
    if kind == "wald_rgb":
        return dict(scene, kind="wald_rgb", image=str(path))
    scene.update(ms=str(path), pan=str(root / str(tiles["pan_dir"]) / rel))
    for key in PER_TILE:
        if tiles.get(key) is not None:
            scene[key] = tiles[key]
    return scene


def tile_scenes(tiles: dict, tile_split: dict | None = None, seed: int = 0, dataset: str = "dataset") -> list[dict]:
    """The scene list of a tile dataset (see the module docstring)."""
    tiles = dict(tiles)
    kind = tiles.get("kind", "wald_rgb")
    if kind not in KINDS:
        raise ConfigError(f"dataset {dataset}: tiles.kind {kind!r}, expected one of {KINDS}")
    if not tiles.get("root"):
        raise ConfigError(f"dataset {dataset}: tiles.root is not set (the folder holding the tile folders)")
    root = Path(str(tiles["root"])).expanduser()
    first = "image_dir" if kind == "wald_rgb" else "ms_dir"
    needed = [first, "label_dir"] + (["pan_dir"] if kind == "files" else [])
    missing = [k for k in needed if not tiles.get(k)]
    if missing:
        raise ConfigError(f"dataset {dataset}: tiles.kind {kind} needs tiles.{', tiles.'.join(missing)}")
    base = root / str(tiles[first])
    if not base.is_dir():
        raise MissingFileError(f"dataset {dataset}: tile folder not found: {base} (tiles.root/tiles.{first})")
    pattern = str(tiles.get("pattern", "**/*.tif"))
    found = sorted((p for p in base.glob(pattern) if p.is_file()), key=lambda p: _natural_key(p.relative_to(base)))
    if not found:
        raise MissingFileError(f"dataset {dataset}: no file matches {base}/{pattern} (tiles.pattern)")
    scenes = [_tile_scene(tiles, kind, root, path.relative_to(base), path) for path in found]
    if tile_split:
        splits = assign_splits([s["category"] for s in scenes], dict(tile_split), seed)
        scenes = [dict(s, split=sp) for s, sp in zip(scenes, splits) if sp is not None]
    return scenes


def scene_specs(cfg: dict) -> list[dict]:
    """A dataset config's scenes: its ``scenes`` list, or the scenes of its ``tiles`` block."""
    if cfg.get("tiles"):
        if cfg.get("scenes"):
            raise ConfigError(f"dataset {cfg.get('name')}: both `scenes` and `tiles` are set; keep one")
        return tile_scenes(cfg["tiles"], cfg.get("tile_split"), int(cfg.get("seed", 0)), cfg.get("name", "dataset"))
    if cfg.get("tile_split"):
        raise ConfigError(f"dataset {cfg.get('name')}: tile_split needs a `tiles` block (a folder of tiles)")
    return list(cfg.get("scenes") or [])
