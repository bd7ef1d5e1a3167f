"""Scenes -> train.h5 / val.h5 / test.h5, streaming one scene and one block of patches at a time."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .hdf5 import FORMAT_VERSION, PatchFileError, PatchWriter, RunningStats, read_attrs
from .patches import PatchCutter
from .readers import SceneError
from .scenes import file_fingerprint, load_scene, validate_scene
from .split import SPLITS, map_coords, stratified_split
from .synthetic import write_scene

log = logging.getLogger(__name__)
BLOCK = 2048  # patches cut and written per block: bounds memory next to the scene


def _spec_files(spec: dict) -> list[str]:
    return [str(spec[k]) for k in ("ms", "pan", "image", "label", "train", "val", "test") if spec.get(k)]


def _fingerprint(cfg: dict, files: list[str]) -> str:
    rule = {k: cfg[k] for k in ("classes", "class_values", "ignore_value", "split", "seed", "ms_patch", "ratio")}
    rule["scene_splits"] = [s.get("split") for s in cfg["scenes"]]  # a split by scene changes the files
    rule["shuffle_memory_mb"] = cfg.get("shuffle_memory_mb", 2048)  # so does the shuffle grouping
    h = hashlib.sha256(json.dumps(rule, sort_keys=True, default=str).encode())
    for f in files:
        h.update(f"{f}:{file_fingerprint(f)}".encode())
    return h.hexdigest()[:20]


def split_paths(cfg: dict) -> dict[str, Path]:
    out = Path(cfg["prepared_dir"])
    return {s: out / f"{s}.h5" for s in SPLITS}


def _coords_by_split(scene, values: list[int], split_rule: dict, seed: int, whole: str | None = None
                     ) -> dict[str, np.ndarray]:
    """Coordinates per split. ``whole``: the scene belongs entirely to that split (a split by scene/tile,
    no pixel of it anywhere else); the rule's entry for that split then samples within the scene."""
    if whole is not None:
        if whole not in SPLITS:
            raise SceneError(f"scene {scene.name}: split {whole!r}, expected one of {SPLITS}")
        if "label" not in scene.maps:
            raise SceneError(f"scene {scene.name}: a scene assigned to a split needs one `label` map")
        x = split_rule.get(whole, "rest")
        return stratified_split(scene.maps["label"], values, {whole: "rest" if x in ("rest", 1.0) else x}, seed)
    if "label" in scene.maps:
        return stratified_split(scene.maps["label"], values, split_rule, seed)
    return {s: map_coords(scene.maps[s], values) if s in scene.maps else np.empty((0, 2), np.int32) for s in SPLITS}


def _map_for(scene, split: str) -> np.ndarray:
    return scene.maps["label"] if "label" in scene.maps else scene.maps[split]


def _scene_groups(sizes: list[int], budget: float, seed: int) -> list[list[int]]:
    """Scenes in a seeded random order, cut into consecutive groups whose scenes (with their padded
    copies, about twice their size) fit ``budget`` bytes; a group holds at least one scene."""
    order = np.random.default_rng([seed, 7]).permutation(len(sizes)) if len(sizes) > 1 else np.arange(len(sizes))
    groups, current, used = [], [], 0.0
    for i in order.tolist():
        if current and used + 2 * sizes[i] > budget:
            groups.append(sorted(current))
            current, used = [], 0.0
        current.append(i)
        used += 2 * sizes[i]
    return groups + [sorted(current)] if current else groups


def _split_items(coords: list[dict], group: list[int], split: str) -> np.ndarray:
    """(n, 3) int64 rows (scene index, row, col) of one split for the scenes of a group, scene by scene."""
    parts = [np.column_stack([np.full(len(coords[i][split]), i), coords[i][split]]) for i in group]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty((0, 3), np.int64)


def _cut_block(block: np.ndarray, cutters: dict, scenes: dict, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches and raw label values of a block of (scene, row, col) rows, in the block's order."""
    ms = pan = None
    raw = np.empty(len(block), np.int64)
    for i in np.unique(block[:, 0]):
        sel = np.flatnonzero(block[:, 0] == i)
        xy = block[sel, 1:]
        m, p = cutters[i].cut(xy)
        if ms is None:
            ms = np.empty((len(block), *m.shape[1:]), m.dtype)
            pan = np.empty((len(block), *p.shape[1:]), p.dtype)
        ms[sel], pan[sel] = m, p
        raw[sel] = _map_for(scenes[i], split)[xy[:, 0], xy[:, 1]]
    return ms, pan, raw


def prepare_dataset(cfg: dict, force: bool = False, console: Console | None = None) -> dict[str, Path]:
    """Write the dataset's split files (see hdf5.py); skip when they exist with the same fingerprint."""
    console = console or Console()
    cfg = dict(cfg)
    if cfg.get("generate"):
        write_scene(Path(cfg["raw_dir"]), **cfg["generate"])
    classes = list(cfg["classes"])
    values = list(cfg.get("class_values") or range(1, len(classes) + 1))
    cfg["class_values"] = values
    if len(values) != len(classes):
        raise ValueError(f"dataset {cfg['name']}: {len(classes)} class names but {len(values)} class_values")
    ratio, seed = int(cfg["ratio"]), int(cfg["seed"])
    specs = list(cfg["scenes"])
    if not specs:
        raise ValueError(f"dataset {cfg['name']}: no scenes configured")
    files = [f for s in specs for f in _spec_files(s)]
    for f in files:  # every input exists before any work starts
        if not Path(f).is_file():
            raise FileNotFoundError(f"dataset {cfg['name']}: input file not found: {f} ({cfg.get('layout', '')})")
    fingerprint = _fingerprint(cfg, files)
    paths = split_paths(cfg)
    if not force and all(p.exists() for p in paths.values()):
        try:
            if all(read_attrs(p).get("fingerprint") == fingerprint for p in paths.values()):
                log.info("prepared files up to date, skipping (force=true rebuilds): %s", cfg["prepared_dir"])
                return paths
        except PatchFileError as err:
            log.warning("rebuilding: %s", err)

    # pass 1: read and validate every scene, draw the split, count classes; nothing written yet
    coords, shapes, meta = [], None, []
    counts = {s: np.zeros(len(values), np.int64) for s in SPLITS}
    for spec in specs:
        scene = load_scene(spec, ratio)
        validate_scene(scene, ratio)
        c = _coords_by_split(scene, values, cfg["split"], seed, spec.get("split"))
        coords.append(c)
        for s, xy in c.items():
            if len(xy):
                v = _map_for(scene, s)[xy[:, 0], xy[:, 1]]
                counts[s] += np.array([(v == x).sum() for x in values])
        ms_shape = (scene.ms.data.shape[0], cfg["ms_patch"], cfg["ms_patch"])
        if shapes and shapes[0] != ms_shape:
            raise SceneError(f"scene {scene.name}: {ms_shape[0]} MS bands, the first scene has {shapes[0][0]}")
        shapes = (ms_shape, (1, cfg["ms_patch"] * ratio, cfg["ms_patch"] * ratio), scene.ms.data.dtype, scene.pan.data.dtype)
        meta.append({"name": scene.name, "files": _spec_files(spec), "ms_size": list(scene.ms.data.shape),
                     "bytes": int(scene.ms.data.nbytes + scene.pan.data.nbytes),
                     "georeferenced": scene.ms.georeferenced})
    absent = [classes[k] for k in range(len(values)) if counts["train"][k] == 0]
    if absent:
        raise SceneError(f"dataset {cfg['name']}: classes {absent} have no training pixel; "
                         f"every configured class must be present in train (labels {values})")

    # pass 2: cut and write. Train and val go in a seeded random order ACROSS scenes (any window of
    # the chunk-shuffling sampler is then a random sample of the whole split, not of one scene or
    # tile); scenes are loaded in groups that fit `shuffle_memory_mb`, one group at a time.
    Path(cfg["prepared_dir"]).mkdir(parents=True, exist_ok=True)
    budget = float(cfg.get("shuffle_memory_mb", 2048)) * 2**20
    groups = _scene_groups([m["bytes"] for m in meta], budget, seed)
    if len(groups) > 1:
        log.warning("%d scenes (%.0f MB) exceed shuffle_memory_mb=%.0f: train/val are shuffled within %d groups "
                    "of scenes, not across all", len(specs), sum(m["bytes"] for m in meta) / 2**20, budget / 2**20,
                    len(groups))
    writers = {s: PatchWriter(paths[s], *shapes) for s in SPLITS}
    stats = {"ms": RunningStats(shapes[0][0]), "pan": RunningStats(1)}
    total = sum(len(c[s]) for c in coords for s in SPLITS)
    try:
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task(f"cutting {cfg['name']}", total=total)
            for g, group in enumerate(groups):
                scenes = {i: load_scene(specs[i], ratio) for i in group}
                cutters = {i: PatchCutter(sc.ms.data, sc.pan.data, cfg["ms_patch"], ratio) for i, sc in scenes.items()}
                for s in SPLITS:
                    items = _split_items(coords, group, s)  # (n, 3): scene, row, col
                    if s != "test":
                        items = items[np.random.default_rng([seed, g, SPLITS.index(s)]).permutation(len(items))]
                    for b in range(0, len(items), BLOCK):
                        block = items[b:b + BLOCK]
                        ms, pan, raw = _cut_block(block, cutters, scenes, s)
                        writers[s].append(ms=ms, pan=pan, label=np.searchsorted(np.array(values), raw),
                                          coord=block[:, 1:].astype(np.int32), scene=block[:, 0].astype(np.int16))
                        if s == "train":
                            stats["ms"].update(ms)
                            stats["pan"].update(pan)
                        progress.advance(task, len(block))
                del scenes, cutters
        attrs = {"format_version": FORMAT_VERSION, "dataset": cfg["name"], "class_names": classes,
                 "class_values": values, "ms_patch": cfg["ms_patch"], "pan_patch": cfg["ms_patch"] * ratio,
                 "ratio": ratio, "scenes": meta, "split_seed": seed, "split_rule": dict(cfg["split"]),
                 "fingerprint": fingerprint, **stats["ms"].as_attrs("ms"), **stats["pan"].as_attrs("pan")}
        for s in SPLITS:
            writers[s].close(attrs)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    table = Table(title=f"{cfg['name']}: samples per class and split")
    for col in ("class", *SPLITS):
        table.add_column(col, justify="right" if col != "class" else "left")
    for k, name in enumerate(classes):
        table.add_row(name, *(str(counts[s][k]) for s in SPLITS))
    table.add_row("total", *(str(counts[s].sum()) for s in SPLITS))
    console.print(table)
    return paths
