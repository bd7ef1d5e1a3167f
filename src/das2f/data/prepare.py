"""Scenes -> train.h5 / val.h5 / test.h5, streaming one scene and one block of patches at a time."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..runtime.config import plain
from ..runtime.errors import ConfigError, MissingFileError
from ..runtime.locks import directory_lock
from .hdf5 import FORMAT_VERSION, PatchFileError, PatchWriter, read_attrs
from .patches import PatchCutter
from .readers import SceneError
from .scenes import extent, file_fingerprint, load_scene, pixel_size, validate_scene
from .split import SPLITS, counts_only, map_coords, overlap_shares, split_by_blocks, stratified_split
from .synthetic import write_scene
from .tiles import scene_specs
from .transforms import RunningStats

log = logging.getLogger(__name__)
BLOCK = 2048  # patches cut and written per block: bounds memory next to the scene


def _spec_files(spec: dict) -> list[str]:
    return [str(spec[k]) for k in ("ms", "pan", "image", "label", "train", "val", "test") if spec.get(k)]


SCENE_OPTIONS = ("nodata", "align", "align_resampling", "ms_bands", "band_axis", "ms_key", "pan_key", "label_key")


def _fingerprint(cfg: dict, specs: list[dict], files: list[str]) -> str:
    rule = {k: cfg.get(k) for k in ("classes", "class_values", "ignore_value", "split", "seed", "ms_patch", "ratio",
                                    "split_blocks", "split_folds", "split_fold", "split_sample")}
    rule["scene_splits"] = [s.get("split") for s in specs]  # a split by scene changes the files
    options = [{k: s[k] for k in SCENE_OPTIONS if s.get(k) is not None} for s in specs]
    if any(options):  # so do a scene's nodata value, alignment and band selection
        rule["scene_options"] = options
    rule["shuffle_memory_mb"] = cfg.get("shuffle_memory_mb", 2048)  # so does the shuffle grouping
    h = hashlib.sha256(json.dumps(rule, sort_keys=True, default=str).encode())
    for f in files:
        h.update(f"{f}:{file_fingerprint(f)}".encode())
    return h.hexdigest()[:20]


def split_paths(cfg: dict) -> dict[str, Path]:
    """This preparation's split files: ``<prepared_dir>/<fingerprint>/{train,val,test}.h5``, the fingerprint of the
    inputs (file contents) and of every rule that changes the files. Preparations that differ (another patch size,
    split, seed) have files of their own, so jobs that need different ones run side by side and a sweep over a
    data parameter prepares each value once."""
    folder = _identity(dict(plain(cfg))).folder
    return {s: folder / f"{s}.h5" for s in SPLITS}


class Identity(NamedTuple):
    """A dataset config made concrete: what a preparation is of, and where its files go."""
    classes: list[str]
    values: list[int]        # the class values
    ignore: int | None       # the ignore value
    specs: list[dict]        # the scenes
    blocks: tuple | None     # (side, folds, fold) of a block split, None for the pixel split
    folder: Path             # <prepared_dir>/<fingerprint>


def _identity(cfg: dict) -> Identity:
    """A dataset config made concrete, in place (the generated scene written, class values filled in), checked
    (the block-split settings before the inputs are read and hashed; every input file present)."""
    if cfg.get("generate"):
        write_scene(Path(cfg["raw_dir"]), **cfg["generate"])
    classes, values, ignore = class_rule(cfg)
    cfg["class_values"] = values
    blocks = block_rule(cfg)
    specs = scene_specs(cfg)
    if not specs:
        raise ConfigError(f"dataset {cfg['name']}: no scenes configured (`scenes` or `tiles`)")
    files = [f for s in specs for f in _spec_files(s)]
    for f in files:  # every input exists before any work starts
        if not Path(f).is_file():
            raise MissingFileError(f"dataset {cfg['name']}: input file not found: {f} ({cfg.get('layout', '')})")
    return Identity(classes, values, ignore, specs, blocks, Path(cfg["prepared_dir"]) / _fingerprint(cfg, specs, files))


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


def _count(counts: dict[str, np.ndarray], coords: dict[str, np.ndarray], maps: dict, values: list[int]) -> None:
    """Add a scene's samples per class and split to ``counts``."""
    for s, xy in coords.items():
        if len(xy):
            v = (maps["label"] if "label" in maps else maps[s])[xy[:, 0], xy[:, 1]]
            counts[s] += np.array([(v == x).sum() for x in values])


def block_rule(cfg: dict) -> tuple[int, int | None, int | None] | None:
    """(block side, folds, fold) of a block split, checked; None for the pixel split (split_blocks null)."""
    side, folds, fold = cfg.get("split_blocks"), cfg.get("split_folds"), cfg.get("split_fold")
    name = cfg.get("name")
    if side is None:
        for key in ("split_folds", "split_sample"):
            if cfg.get(key) is not None:
                raise ConfigError(f"dataset {name}: {key}={cfg[key]} needs split_blocks (the block side in MS pixels)")
        return None
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ConfigError(f"dataset {name}: split_blocks={side!r}, expected a block side in MS pixels (an integer "
                          f">= 1, e.g. {4 * int(cfg.get('ms_patch', 16))}) or null for the pixel split")
    sample = cfg.get("split_sample")
    if sample is not None and (not isinstance(sample, dict) or set(sample) - set(SPLITS) or any(
            isinstance(x, bool) or not (isinstance(x, int) and x >= 0 or isinstance(x, float) and 0 <= x <= 1)
            for x in sample.values())):
        raise ConfigError(f"dataset {name}: split_sample={sample!r}, expected null or {{train: x, val: x, test: x}} "
                          "with x a share (a float in [0, 1]) or a count (an integer) of each class's pixels")
    if side < int(cfg["ms_patch"]):
        raise ConfigError(f"dataset {name}: split_blocks={side} is smaller than a patch (ms_patch={cfg['ms_patch']}): "
                          "a patch at any pixel of a block would read its neighbours, and the buffer between the splits "
                          f"would leave almost nothing; choose at least {2 * int(cfg['ms_patch'])}")
    if folds is None:
        return side, None, None
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 3:
        raise ConfigError(f"dataset {name}: split_folds={folds!r}, expected an integer >= 3 (test, val and at least "
                          "one training fold) or null")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ConfigError(f"dataset {name}: split_fold={fold!r}, expected the test fold, an integer in 0..{folds - 1}")
    return side, folds, fold


def _protocol(scene, spec: dict, blocks) -> str:
    """How a scene's samples are split: scene (whole, by `split:`), maps (ready-made), blocks or pixels."""
    if spec.get("split") is not None:
        return "scenes"
    if "label" not in scene.maps:
        return "maps"
    return "blocks" if blocks else "pixels"


def _check_block_classes(cfg: dict, classes: list[str], counts: dict[str, np.ndarray]) -> None:
    """A block split leaves no class of the rule's val or test without a sample (blocks too big for the classes)."""
    empty = [f"{s}: {[classes[k] for k in np.flatnonzero(counts[s] == 0)]}" for s in ("val", "test")
             if (cfg.get("split_folds") or (s in cfg["split"] and cfg["split"][s] != 0)) and (counts[s] == 0).any()]
    if empty:
        raise SceneError(f"dataset {cfg['name']}: with split_blocks={cfg['split_blocks']} no sample of classes "
                         f"{'; '.join(empty)}: the blocks are too big for these classes (or the buffer between the "
                         "splits took their pixels); choose smaller split_blocks, another seed, or more labelled data")
    short = [f"{classes[k]} {s} {counts[s][k]} of {x}" for s, x in counts_only(cfg.get("split_sample") or cfg["split"]).items()
             for k in np.flatnonzero(counts[s] < x)]
    if short:
        log.warning("block split: fewer samples than the split's counts ask, the blocks of that split hold no more "
                    "after the buffer: %s", "; ".join(short))


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


def _cut_block(block: np.ndarray, cutters: dict, scenes: dict, split: str, masks: dict
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple | None]:
    """Patches and raw label values of a block of (scene, row, col) rows, in the block's order, and where scenes
    hold nodata, the patches' valid pixels (ms (n, 1, P, P), pan (n, 1, rP, rP) bool; None: all valid)."""
    ms = pan = valid = None
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
        if masks.get(i) is not None:
            if valid is None:
                valid = (np.ones((len(block), 1, *m.shape[2:]), bool), np.ones((len(block), 1, *p.shape[2:]), bool))
            valid[0][sel], valid[1][sel] = (x > 0 for x in masks[i].cut(xy))
    return ms, pan, raw, valid


def _mask_cutter(scene, ms_patch: int, ratio: int) -> PatchCutter | None:
    """A cutter of the scene's valid-pixel masks (MS and PAN), None when the scene holds no nodata."""
    if scene.ms.valid is None and scene.pan.valid is None:
        return None
    ok = [np.ones(r.data.shape[1:], np.uint8) if r.valid is None else r.valid.astype(np.uint8)
          for r in (scene.ms, scene.pan)]
    return PatchCutter(ok[0][None], ok[1][None], ms_patch, ratio)


REQUIRED_KEYS = {
    "name": "the dataset's name",
    "classes": "the class names, in label order",
    "ignore_value": "the label value meaning unlabelled (null when every pixel is labelled)",
    "ratio": "PAN pixels per MS pixel along a side (4)",
    "ms_patch": "the MS patch side (16)",
    "split": "the per-class pixel split, e.g. {train: 0.6, val: 0.1, test: rest}",
    "prepared_dir": "where the prepared files go (<prepared_dir>/<fingerprint>/train.h5, val.h5, test.h5)",
}


def class_rule(cfg: dict) -> tuple[list[str], list[int], int | None]:
    """Class names, their label values and the ignore value, checked against each other."""
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"dataset {cfg.get('name', '?')}: missing key(s) "
                          + "; ".join(f"{k} ({REQUIRED_KEYS[k]})" for k in missing)
                          + " (see conf/dataset/_template.yaml)")
    classes = list(cfg["classes"] or [])
    if not classes:
        raise ConfigError(f"dataset {cfg['name']}: no classes configured")
    values = [int(v) for v in (cfg.get("class_values") or range(1, len(classes) + 1))]
    if len(values) != len(classes):
        raise ConfigError(f"dataset {cfg['name']}: {len(classes)} class names but {len(values)} class_values")
    if len(set(classes)) != len(classes) or len(set(values)) != len(values):
        dup = sorted({c for c in classes if classes.count(c) > 1} | {str(v) for v in values if values.count(v) > 1})
        raise ConfigError(f"dataset {cfg['name']}: class names and class_values must be unique, repeated: {dup}")
    ignore = cfg["ignore_value"]
    if ignore is not None and int(ignore) in values:
        raise ConfigError(f"dataset {cfg['name']}: ignore_value {ignore} is also the value of class "
                          f"{classes[values.index(int(ignore))]!r} (class_values {values}); the ignore value must "
                          "be a label value that is no class")
    return classes, values, None if ignore is None else int(ignore)


def _counts_text(counts: dict[int, int]) -> str:
    return ", ".join(f"{v}: {n}" for v, n in sorted(counts.items()))


def check_label_values(cfg: dict, found: dict[str, dict[int, int]], values: list[int], ignore: int | None,
                       values_given: bool = True) -> None:
    """Every value in the label files is a class value or the ignore value; else stop, naming the files,
    the values found (with pixel counts) and the configured ones. Nothing is ever dropped silently."""
    allowed = set(values) | ({ignore} if ignore is not None else set())
    bad = {path: counts for path, counts in found.items() if set(counts) - allowed}
    if not bad:
        return
    every: dict[int, int] = {}
    for counts in found.values():
        for v, n in counts.items():
            every[v] = every.get(v, 0) + n
    unknown = sorted(set(every) - allowed)
    given = "class_values " if values_given else "class_values null, i.e. 1..K = "
    first = next(iter(bad))
    raise SceneError(
        f"dataset {cfg['name']}: label value(s) {unknown} are neither a class value nor the ignore value, in "
        f"{len(bad)} of {len(found)} label files (first: {first}: {{{_counts_text(bad[first])}}}); "
        f"all label files hold {{{_counts_text(every)}}} (value: pixels); configured: {given}{values}, "
        f"ignore_value {ignore}. Set class_values (and classes) to the values that are classes and "
        "ignore_value to the one meaning unlabelled; `make prepare ARGS=inspect=true` lists each file's values")


def inspect_dataset(cfg: dict, console: Console | None = None) -> dict:
    """Print, per scene, the MS / PAN size, dtype and bands and the label values with pixel counts, then
    whether they fit the configured classes: facts to write a dataset config from. Writes nothing."""
    console = console or Console()
    cfg = dict(plain(cfg))
    if cfg.get("generate"):
        write_scene(Path(cfg["raw_dir"]), **cfg["generate"])
    ratio = int(cfg.get("ratio", 4))
    specs = scene_specs(cfg)
    columns = ("scene", "split", "MS (C, H, W)", "PAN (1, H, W)", "dtype MS / PAN", "nodata (MS px)",
               "label values (value: pixels)")
    rows, grids, problems = [], [], []
    every: dict[int, int] = {}
    for spec in specs:
        scene = load_scene(spec, ratio)
        grids += [(scene.name, r.path.name, *grid_cells(r)) for r in scene.files()]
        try:
            validate_scene(scene, ratio, require_labels=False)
        except SceneError as err:
            problems.append(err)
        labels = []
        for path, counts in scene.label_values.items():
            labels.append(f"{Path(path).name}: {_counts_text(counts)}")
            for v, n in counts.items():
                every[v] = every.get(v, 0) + n
        rows.append((scene.name, str(spec.get("split", "")), str(scene.ms.data.shape), str(scene.pan.data.shape),
                     f"{scene.ms.data.dtype} / {scene.pan.data.dtype}",
                     str(scene.nodata_pixels), labels))
    print_table(console, f"{cfg.get('name')}: {len(specs)} scenes", columns,
                [(*cells, "; ".join(labels) or "(no labels)") for *cells, labels in rows])
    print_table(console, "georeferencing per file", ("scene", "file", "CRS", "extent (left, bottom, right, top)",
                                                      "pixel size"), grids)
    console.print(f"label values over all scenes (value: pixels): {_counts_text(every) or 'none'}", soft_wrap=True,
                  highlight=False)
    if problems:  # after the tables: the facts to fix it from
        raise problems[0]
    try:
        _, values, ignore = class_rule(cfg)
        check_label_values(cfg, {"all scenes": every}, values, ignore, bool(cfg.get("class_values")))
        console.print(f"configured class_values {values} and ignore_value {ignore} cover every value found",
                      soft_wrap=True, highlight=False)
    except (ConfigError, SceneError) as err:
        console.print(f"[bold red]does not fit the config yet:[/] {err}")
    return every


def grid_cells(r) -> tuple[str, str, str]:
    """A file's CRS, extent and pixel size as table cells ("none" without georeferencing)."""
    if not r.georeferenced:
        return "none", "-", "-"
    px, py = pixel_size(r)
    return str(r.profile["crs"]), "(" + ", ".join(f"{v:.2f}" for v in extent(r)) + ")", f"{px:g} x {py:g}"


def print_table(console: Console, title: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """A rich table on a terminal; one whole line per row in a log file (rich would squeeze a table into 80
    columns, cutting names)."""
    if console.is_terminal:
        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*map(str, row))
        console.print(table)
    else:
        console.print(f"{title}: {', '.join(columns)}", soft_wrap=True, markup=False, highlight=False)
        for row in rows:
            console.print(" | ".join(map(str, row)), soft_wrap=True, markup=False, highlight=False)


def prepare_dataset(cfg: dict, force: bool = False, console: Console | None = None, check=None) -> dict[str, Path]:
    """Write the dataset's split files (see hdf5.py); skip when they exist with the same fingerprint. ``check()``:
    called between blocks of work, it raises to stop the preparation (the entry points' signal policy:
    das2f.runtime.signals.check); every file begun is then removed."""
    console = console or Console()
    check = check or (lambda: None)
    cfg = dict(plain(cfg))  # plain containers: the same fingerprint whoever hands the config over
    values_given = bool(cfg.get("class_values"))
    classes, values, ignore, specs, blocks, out = _identity(cfg)
    fingerprint = out.name
    paths = {s: out / f"{s}.h5" for s in SPLITS}
    # one process prepares at a time, whoever starts first; the others wait, then find their files up to date or
    # write their own preparation's folder (the lock beside prepared_dir: a refused preparation leaves no folder)
    with directory_lock(cfg["prepared_dir"], f"preparing dataset {cfg['name']}", float(cfg.get("lock_timeout_s", 7200))):
        reason = _stale(paths, fingerprint, force)
        if reason is None:
            log.info("prepared files up to date, skipping (force=true rebuilds): %s", out)
            return paths
        log.info("preparing %s (%s): %d scenes -> %s", cfg["name"], reason, len(specs), out)
        drawn = _draw(cfg, specs, values, blocks)
        check_label_values(cfg, drawn.found, values, ignore, values_given)  # before anything is cut or written
        _finish_draw(cfg, classes, values, drawn)
        _write(cfg, specs, drawn, paths, {"format_version": FORMAT_VERSION, "dataset": cfg["name"],
                                          "class_names": classes, "fingerprint": fingerprint}, console, check)
        console.print(_counts_table(cfg["name"], classes, drawn.counts))
        if drawn.block_info is not None:
            console.print(block_table(classes, drawn.block_info))
        for line in overlap_lines(drawn.overlap, drawn.protocol):
            console.print(line, soft_wrap=True, highlight=False, markup=False)
        return paths


def _stale(paths: dict[str, Path], fingerprint: str, force: bool) -> str | None:
    """Why the split files must be (re)written, or None when they are up to date."""
    if force:
        return "force=true"
    if not all(p.exists() for p in paths.values()):
        return "no prepared files yet"
    try:
        found = {p.name: read_attrs(p).get("fingerprint") for p in paths.values()}
    except PatchFileError as err:
        return str(err)
    if all(v == fingerprint for v in found.values()):
        return None
    return f"inputs or rules changed (fingerprint {fingerprint}, the files have {sorted(set(found.values()))})"


@dataclass
class Drawn:
    """Pass 1 of a preparation: every scene read and checked, the split drawn; nothing written yet."""
    coords: list = field(default_factory=list)      # per scene: {split: (n, 2) centres}
    meta: list = field(default_factory=list)        # per scene: name, files, sizes (the files' `scenes` attribute)
    shapes: tuple = ()                              # MS and PAN patch shapes, MS and PAN dtypes
    found: dict = field(default_factory=dict)       # label file -> {value: pixels}
    counts: dict = field(default_factory=dict)      # split -> samples per class
    protocols: set = field(default_factory=set)     # pixels, blocks, scenes, maps
    pending: dict = field(default_factory=dict)     # scene -> its label map, for the block split over all scenes
    blocks: tuple | None = None                     # (side, folds, fold) of a block split
    block_info: dict | None = None                  # how the block split came out (das2f.data.split.split_by_blocks)
    overlap: dict = field(default_factory=dict)     # val / test patches overlapping training patches

    @property
    def protocol(self) -> str:
        return "+".join(sorted(self.protocols))


def _draw(cfg: dict, specs: list[dict], values: list[int], blocks: tuple | None) -> Drawn:
    """Read and validate every scene (one at a time), draw the pixel, scene or map splits; the block split is
    drawn afterwards over all scenes (``_finish_draw``)."""
    ratio, seed, patch = int(cfg["ratio"]), int(cfg.get("seed", 0)), int(cfg["ms_patch"])
    drawn = Drawn(counts={s: np.zeros(len(values), np.int64) for s in SPLITS}, blocks=blocks)
    for i, spec in enumerate(specs):
        scene = load_scene(spec, ratio)
        validate_scene(scene, ratio)
        lost = scene.exclude_nodata(values)  # no sample centre in nodata
        if scene.nodata_pixels:
            log.info("scene %s: %d MS pixels are nodata (MS or PAN); %d labelled pixels among them are no sample",
                     scene.name, scene.nodata_pixels, lost)
        drawn.found.update(scene.label_values)
        drawn.protocols.add(_protocol(scene, spec, drawn.blocks))
        if drawn.blocks and spec.get("split") is None and "label" in scene.maps:
            drawn.pending[i] = scene.maps["label"]
            drawn.coords.append(None)
        else:
            drawn.coords.append(_coords_by_split(scene, values, cfg["split"], seed, spec.get("split")))
            _count(drawn.counts, drawn.coords[-1], scene.maps, values)
        shapes = ((scene.ms.data.shape[0], patch, patch), (1, patch * ratio, patch * ratio), scene.ms.data.dtype,
                  scene.pan.data.dtype)
        if drawn.shapes and drawn.shapes[0] != shapes[0]:
            raise SceneError(f"scene {scene.name}: {shapes[0][0]} MS bands, the first scene has {drawn.shapes[0][0]}")
        drawn.shapes = shapes
        drawn.meta.append({"name": scene.name, "files": _spec_files(spec), "ms_size": list(scene.ms.data.shape),
                           "bytes": int(scene.ms.data.nbytes + scene.pan.data.nbytes),
                           "nodata_pixels": scene.nodata_pixels,
                           "georeferenced": scene.ms.georeferenced})
    return drawn


def _finish_draw(cfg: dict, classes: list[str], values: list[int], drawn: Drawn) -> None:
    """The block split over all its scenes, the class checks, the overlap between the splits' patches."""
    if drawn.pending:
        side, folds, fold = drawn.blocks
        coords, drawn.block_info = split_by_blocks(list(drawn.pending.values()), values, cfg["split"],
                                                   int(cfg.get("seed", 0)), side, int(cfg["ms_patch"]), folds, fold,
                                                   cfg.get("split_sample"))
        for i, c in zip(drawn.pending, coords):
            drawn.coords[i] = c
            _count(drawn.counts, c, {"label": drawn.pending[i]}, values)
    absent = [classes[k] for k in range(len(values)) if drawn.counts["train"][k] == 0]
    if absent:
        raise SceneError(f"dataset {cfg['name']}: classes {absent} have no training pixel; "
                         f"every configured class must be present in train (labels {values})")
    if drawn.block_info is not None:
        _check_block_classes(cfg, classes, drawn.counts)
    drawn.overlap = overlap_shares([tuple(m["ms_size"][1:]) for m in drawn.meta], drawn.coords, int(cfg["ms_patch"]))


def _write(cfg: dict, specs: list[dict], drawn: Drawn, paths: dict[str, Path], attrs: dict, console: Console,
           check) -> None:
    """Pass 2: cut and write. Train and val go in a seeded random order ACROSS scenes (any window of the
    chunk-shuffling sampler is then a random sample of the whole split, not of one scene or tile); scenes are
    loaded in groups that fit `shuffle_memory_mb`, one group at a time. An error or a stop signal removes every
    file this preparation created."""
    ratio, seed = int(cfg["ratio"]), int(cfg.get("seed", 0))
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    budget = float(cfg.get("shuffle_memory_mb", 2048)) * 2**20
    groups = _scene_groups([m["bytes"] for m in drawn.meta], budget, seed)
    if len(groups) > 1:
        log.warning("%d scenes (%.0f MB) exceed shuffle_memory_mb=%.0f: train/val are shuffled within %d groups "
                    "of scenes, not across all", len(specs), sum(m["bytes"] for m in drawn.meta) / 2**20,
                    budget / 2**20, len(groups))
    stats = {"ms": RunningStats(drawn.shapes[0][0]), "pan": RunningStats(1)}
    writers: dict[str, PatchWriter] = {}
    closed: list[Path] = []  # the splits renamed into place by this preparation
    try:  # from the first file created: an error or a stop signal removes every half-written file
        for s in SPLITS:
            writers[s] = PatchWriter(paths[s], *drawn.shapes)
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task(f"cutting {cfg['name']}", total=sum(len(c[s]) for c in drawn.coords for s in SPLITS))
            for g, group in enumerate(groups):
                _cut_group(cfg, specs, drawn, group, g, writers, stats, lambda n: progress.advance(task, n), check)
        attrs = {**attrs, "class_values": cfg["class_values"], "ms_patch": cfg["ms_patch"],
                 "pan_patch": cfg["ms_patch"] * ratio, "ratio": ratio, "scenes": drawn.meta, "split_seed": seed,
                 "split_rule": dict(cfg["split"]), "split_protocol": drawn.protocol,
                 "split_blocks": dict(zip(("side", "folds", "fold"), drawn.blocks)) if drawn.blocks else {},
                 "overlap": drawn.overlap, **stats["ms"].as_attrs("ms"), **stats["pan"].as_attrs("pan")}
        check()
        for s in SPLITS:
            closed.append(writers[s].close(attrs))
    except BaseException:
        try:
            for w in writers.values():
                w.abort()
        finally:  # also a writer whose construction the signal cut short (its .tmp created, the writer not kept),
            # and the splits already renamed when the set was cut short: no half of a preparation stays
            for s in SPLITS:
                paths[s].with_name(paths[s].name + ".tmp").unlink(missing_ok=True)
            for done in closed:
                done.unlink(missing_ok=True)
        raise


def _cut_group(cfg: dict, specs: list[dict], drawn: Drawn, group: list[int], g: int, writers: dict, stats: dict,
               advance, check) -> None:
    """Cut and append the samples of one group of scenes, block by block; train's update the statistics."""
    ratio, seed, values = int(cfg["ratio"]), int(cfg.get("seed", 0)), np.array(cfg["class_values"])
    scenes = {i: load_scene(specs[i], ratio) for i in group}
    cutters = {i: PatchCutter(sc.ms.data, sc.pan.data, cfg["ms_patch"], ratio) for i, sc in scenes.items()}
    masks = {i: _mask_cutter(sc, cfg["ms_patch"], ratio) for i, sc in scenes.items()}
    for s in SPLITS:
        items = _split_items(drawn.coords, group, s)  # (n, 3): scene, row, col
        if s != "test":
            items = items[np.random.default_rng([seed, g, SPLITS.index(s)]).permutation(len(items))]
        for b in range(0, len(items), BLOCK):
            check()  # a stop signal whose Stop was lost (see das2f.runtime.signals.check)
            block = items[b:b + BLOCK]
            ms, pan, raw, valid = _cut_block(block, cutters, scenes, s, masks)
            writers[s].append(ms=ms, pan=pan, label=np.searchsorted(values, raw), coord=block[:, 1:].astype(np.int32),
                              scene=block[:, 0].astype(np.int16))
            if s == "train":  # over valid pixels only: nodata never enters the statistics
                stats["ms"].update(ms, valid and valid[0])
                stats["pan"].update(pan, valid and valid[1])
            advance(len(block))


def _counts_table(name: str, classes: list[str], counts: dict[str, np.ndarray]) -> Table:
    table = Table(title=f"{name}: samples per class and split")
    for col in ("class", *SPLITS):
        table.add_column(col, justify="right" if col != "class" else "left")
    for k, cls in enumerate(classes):
        table.add_row(cls, *(str(counts[s][k]) for s in SPLITS))
    table.add_row("total", *(str(counts[s].sum()) for s in SPLITS))
    return table


def block_table(classes: list[str], info: dict) -> Table:
    """How close the block split came to the rule, per class: each split's share of the class's labelled pixels
    in its blocks (the target in brackets), and the labelled pixels the buffer left out."""
    fold = f", fold {info['fold']} of {info['folds']}" if info["folds"] else ""
    blocks = ", ".join(f"{s} {n}" for s, n in info["blocks"].items())
    table = Table(title=f"block split, {info['side']}x{info['side']} MS-pixel blocks ({blocks}{fold}): % of each class's "
                        "labelled pixels in each split's blocks (target); pixels the buffer left out")
    for col in ("class", "labelled", *SPLITS, "left out"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for k, name in enumerate(classes):
        shares = [f"{100 * info['blocks_share'][j, k]:.1f} ({100 * info['target'][j, k]:.1f})" for j in range(len(SPLITS))]
        left = int(info["buffer"][:, k].sum())
        table.add_row(name, str(int(info["labelled"][k])), *shares,
                      f"{left} ({100 * left / max(int(info['labelled'][k]), 1):.0f}%)")
    return table


def overlap_lines(overlap: dict, protocol: str) -> list[str]:
    """What the prepare log says of the overlap between the splits' patches."""
    lines = [f"{s} patches overlapping training patches (a pixel read by both): {v['overlapping']} of {v['patches']} "
             f"({100 * v['share']:.1f} %)" for s, v in overlap.items()]
    if "pixels" in protocol.split("+") and any(v["overlapping"] for v in overlap.values()):
        lines.append(PIXEL_SPLIT_NOTE)
    return lines


PIXEL_SPLIT_NOTE = ("pixel split: test patches share pixels with training patches, so the test accuracy is optimistic; "
                    "dataset.split_blocks=<block side> gives a spatially disjoint split")
