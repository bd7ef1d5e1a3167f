"""Full-scene classification maps (the work of `python -m das2f.predict`, make predict).

Every MS pixel of every selected scene is classified: patches are cut on the fly in batches
with the training geometry, normalised with the checkpoint's training statistics (or the
scene's own, ``stats=scene``, for a scene from another sensor), and classified. Per scene:
``<scene>_map.tif`` (georeferenced input) or ``<scene>_map.npy`` holding the training
dataset's label values, ``<scene>_map.png`` (coloured, with a legend, next to the ground
truth where the scene has labels) and, for labelled scenes, ``<scene>_confusion.png`` and
the labelled-pixel metrics in ``predict.json``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from omegaconf import DictConfig, OmegaConf, open_dict

from ..data.nodata import map_nodata
from ..data.scenes import LABEL_MAPS, labels_onto, load_scene, read_label
from ..data.tiles import scene_specs
from ..data.transforms import RunningStats, shift_scale
from ..data.windows import LazyImage, SceneDataModule, SceneWindows, open_scene
from ..metrics import StreamMetrics, json_values
from ..runtime import threads
from ..runtime.errors import CheckpointError, ConfigError, Interrupted
from ..training.results import save_confusion_figure
from .figures import class_colors, figure_step, rgb_composite, row_bands, save_map_figure, save_maps_grid, write_map
from .request import check_request

log = logging.getLogger("das2f.predict")


class Predictor:
    """A trained network and everything needed to apply it to a scene, read from one checkpoint."""

    def __init__(self, ckpt_path: str | Path, scan_backend: str | None = None, compile: bool = False):
        from ..checkpoint import data_state, load_checkpoint
        from ..training.module import Das2fClassifier

        ckpt = load_checkpoint(ckpt_path)  # read once: the model, the data state and the provenance come from it
        data = data_state(ckpt, ckpt_path)
        self.info = {**data, **ckpt.get("das2f", {})}
        net_cfg = dict(ckpt["hyper_parameters"]["net"])
        if scan_backend:
            net_cfg["scan_backend"] = scan_backend
        self.net_config = net_cfg
        self.model = Das2fClassifier(**{**ckpt["hyper_parameters"], "net": net_cfg, "compile": compile})
        self.model.load_state_dict(ckpt["state_dict"])
        self.model.eval()
        self.class_names: list[str] = list(data["class_names"])
        self.class_values = np.asarray(data["class_values"])
        self.ms_channels = int(net_cfg["ms_channels"])
        self.ms_patch, self.ratio = int(data["ms_patch"]), int(data["ratio"])
        self.normalization = data["normalization"]
        self.train_shift, self.train_scale = np.asarray(data["shift"]), np.asarray(data["scale"])

    @property
    def net(self):
        """The trained network (the classifier's)."""
        return self.model.net

    def scene_stats(self, ms: LazyImage, pan: LazyImage, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Shift and scale (MS bands then PAN) of a scene itself, with the checkpoint's normalisation,
        accumulated band of rows by band of rows (memory: one band)."""
        stats_ms, stats_pan = RunningStats(ms.shape[0]), RunningStats(1)
        h, w = ms.shape[1:]
        for r, r1 in row_bands(0, h, rows):  # valid pixels only: nodata never enters the statistics
            for stats, img, k in ((stats_ms, ms, 1), (stats_pan, pan, self.ratio)):
                data, valid = img.read_masked(k * r, k * r1, 0, k * w)
                stats.update(data[None], None if valid is None else valid[None, None])
        return shift_scale(self.normalization, {**stats_ms.as_attrs("ms"), **stats_pan.as_attrs("pan")})


class MapWriter(BasePredictionWriter):
    """Writes each predicted window into the scene's map on disk as it comes (a ``.npy`` memory map of
    label values, -1 where nothing is written yet) and marks the window done in ``<map>.progress.npy``:
    memory is bounded by a window, and an interrupted map continues from the windows already written.
    Every rank of a DDP run writes its own windows into the same files."""

    def __init__(self, map_path: Path, progress_path: Path, class_values: np.ndarray, flush_every: int = 32,
                 total: int = 0, every_s: float = 60.0, confidence_path: Path | None = None):
        """``confidence_path``: a float32 ``.npy`` memory map that takes each pixel's top class probability."""
        super().__init__(write_interval="batch")
        self.map_path, self.progress_path, self.confidence_path = map_path, progress_path, confidence_path
        self.class_values = torch.as_tensor(np.asarray(class_values), dtype=torch.int32)
        self.flush_every, self._map, self._done, self._conf, self._n = flush_every, None, None, None, 0
        self.total, self.every_s, self._t0, self._last, self._px = total, every_s, None, None, 0

    def __getstate__(self):  # spawned DDP workers open the files themselves
        return {**self.__dict__, "_map": None, "_done": None, "_conf": None}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if self._map is None:
            self._map = np.load(self.map_path, mmap_mode="r+")
            self._done = np.load(self.progress_path, mmap_mode="r+")
            if self.confidence_path is not None:
                self._conf = np.load(self.confidence_path, mmap_mode="r+")
        coords, nodata = prediction["coord"].cpu().numpy(), prediction["nodata"].cpu().numpy()
        self._map[coords[:, 0], coords[:, 1]] = self.class_values[prediction["classes"].cpu()].numpy()
        self._map[nodata[:, 0], nodata[:, 1]] = NODATA_MARK
        if self._conf is not None:
            self._conf[coords[:, 0], coords[:, 1]] = prediction["confidence"].cpu().numpy()
        self._done[int(prediction["window"])] = 1
        self._n += 1
        self._px += len(coords)
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = self._last = now
        elif now - self._last >= self.every_s:  # a plain progress line: batch jobs have no progress bar
            self._last = now
            rate = self._px / (now - self._t0)
            left = (self.total - self._n) * self._px / self._n / max(rate, 1e-9) / 60 if self.total else float("nan")
            log.info("%s: %d/%d windows, %.0f px/s, about %.0f min left", self.map_path.stem, self._n, self.total,
                     rate, left)
        if self._n % self.flush_every == 0:
            self.flush()
        threads.step()
        if trainer.received_sigterm:  # set on SIGTERM and Ctrl-C (das2f.runtime.signals); the predict loop only notes it
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException

    def flush(self):
        if self._map is not None:
            self._map.flush()
            self._done.flush()
            if self._conf is not None:
                self._conf.flush()

    def on_predict_end(self, trainer, pl_module):
        self.flush()

    def on_exception(self, trainer, pl_module, exception):
        self.flush()  # SIGTERM or an error: what is written stays written and marked


class TruthReader:
    """The ground truth of a scene as class indices (-1 where unlabelled or not a class of the model), read
    region by region: GeoTIFF and .npy label maps through windowed reads; other formats (MATLAB v5 .mat,
    the RGB label tiles of ``wald_rgb`` scenes) are read whole once. ``None`` from ``of`` for a scene
    without labels."""

    def __init__(self, sources: list, class_values: np.ndarray):
        self.sources, self.class_values = sources, np.asarray(class_values)  # [(image or array, covered or None)]

    @classmethod
    def of(cls, spec: dict, ratio: int, class_values: np.ndarray, grid: LazyImage) -> TruthReader | None:
        """``grid``: the scene's MS image the map is made on (an aligned scene's labels are resampled onto it)."""
        sources = []
        if not any(spec.get(k) for k in LABEL_MAPS):
            return None
        if spec.get("kind") == "wald_rgb":  # made whole
            sources += [(m, None) for m in load_scene(spec, ratio).maps.values()]
        elif spec.get("align"):  # the labels alone onto the map's grid (the images were aligned once, for the windows)
            sources += labels_onto(spec, grid.profile, grid.shape[1:])
        else:
            for k in ("label", "test", "train", "val"):
                if not spec.get(k):
                    continue
                if Path(spec[k]).suffix.lower() in (".npy", ".tif", ".tiff"):
                    sources.append((LazyImage(spec[k]), None))
                else:
                    sources.append((read_label(spec, k).data, None))
        return cls(sources, class_values) if sources else None

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        truth = np.full((r1 - r0, c1 - c0), -1, np.int64)
        for src, covered in self.sources:
            m = src.read(r0, r1, c0, c1)[0] if isinstance(src, LazyImage) else src[r0:r1, c0:c1]
            where = None if covered is None else covered[r0:r1, c0:c1]
            for i, v in enumerate(self.class_values):
                truth[(m == v) if where is None else (m == v) & where] = i
        return truth


FINISH_ROWS = 256  # MS rows per band when a finished map is filled, checked, counted, scored and drawn
NODATA_MARK = -2  # in a map being written: a nodata pixel (-1: not written yet); the finished map has its nodata value


def _map_files(out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    base = out_dir / f"{name}_map"
    return base.with_suffix(".npy"), base.with_name(base.name + ".progress.npy"), base.with_suffix(".json")


def confidence_file(map_path: Path) -> Path:
    """Where a map's confidence (top class probability) is written, beside the map."""
    return map_path.with_name(map_path.name.replace("_map", "_confidence"))


def start_map(out_dir: Path, name: str, shape: tuple[int, int], n_windows: int, meta: dict, overwrite: bool
              ) -> tuple[Path, Path, np.ndarray]:
    """The map files of a scene: new ones, or those of an interrupted run of the same job (continued), or
    an error when they hold another or a finished map (unless overwrite). With ``meta["confidence"]`` also the
    confidence's memory map (NaN where not written)."""
    map_path, progress_path, meta_path = _map_files(out_dir, name)
    if map_path.exists() and not overwrite:
        same = meta_path.is_file() and json.loads(meta_path.read_text()) == meta and progress_path.is_file()
        done = np.load(progress_path) if same else None
        if same and not done.all():
            todo = np.flatnonzero(done == 0)
            log.info("scene %s: continuing an interrupted map, %d of %d windows done", name, n_windows - len(todo),
                     n_windows)
            return map_path, progress_path, todo
        what = "a finished map of this job" if same else "a map of another checkpoint, scene or setting"
        raise ConfigError(f"{map_path}: already holds {what}; overwrite=true replaces it (or choose another out=)")
    np.lib.format.open_memmap(map_path, mode="w+", dtype=np.int32, shape=shape)[:] = -1
    if meta.get("confidence"):
        np.lib.format.open_memmap(confidence_file(map_path), mode="w+", dtype=np.float32, shape=shape)[:] = np.nan
    np.save(progress_path, np.zeros(n_windows, np.uint8))
    meta_path.write_text(json.dumps(meta))
    return map_path, progress_path, np.arange(n_windows)


def fill_from_stride(values: np.ndarray, region: tuple[int, int, int, int], k: int) -> None:
    """Pixels not classified by a stride-k preview take the class of the nearest classified pixel; band of
    rows by band of rows, in place (a classified pixel is its own nearest, so no source changes)."""
    r0, r1, c0, c1 = region
    rows, cols = np.arange(r0, r1), np.arange(c0, c1)
    last_r, last_c = r0 + (r1 - 1 - r0) // k * k, c0 + (c1 - 1 - c0) // k * k
    near_r = np.minimum(r0 + np.round((rows - r0) / k).astype(int) * k, last_r)
    near_c = np.minimum(c0 + np.round((cols - c0) / k).astype(int) * k, last_c)
    for a, b in row_bands(r0, r1, FINISH_ROWS):
        values[a:b, c0:c1] = values[np.ix_(near_r[a - r0:b - r0], near_c)]


def finish_scene(values: np.ndarray, map_path: Path, region: tuple[int, int, int, int], class_values: np.ndarray,
                 class_names: list[str], truth: TruthReader | None, ms: LazyImage | None = None,
                 rgb_bands: list[int] | None = None) -> tuple[dict, dict]:
    """A finished map, read band of rows by band of rows (memory: a band, not the scene): every pixel
    checked written, nodata pixels given the map's nodata value (das2f.data.nodata.map_nodata), class
    fractions, the metrics over labelled pixels with data, with the confusion matrix, and the figure's arrays at
    every ``step``-th pixel. Returns (summary entries, figure arrays)."""
    r0, r1, c0, c1 = region
    step = figure_step((r1 - r0, c1 - c0))
    rows = step * max(1, FINISH_ROWS // step)  # bands start on a shown row: the figure is every step-th pixel
    counts = np.zeros(len(class_values), np.int64)
    metrics = StreamMetrics(class_names) if truth is not None else None
    shown: dict[str, list] = {"index": [], "truth": [], "ms": []}
    labelled = nodata = 0
    nodata_value = map_nodata(class_values)
    for a, b in row_bands(r0, r1, rows):
        v = np.array(values[a:b, c0:c1])
        if (v == -1).any():
            raise RuntimeError(f"{map_path}: {(v == -1).sum()} pixels in rows {a}..{b - 1} were not written")  # a bug
        ok = v != NODATA_MARK
        if not ok.all():
            nodata += int((~ok).sum())
            v[~ok] = nodata_value
            values[a:b, c0:c1] = v
        index = np.where(ok, np.searchsorted(class_values, v), -1)
        counts += np.bincount(index[ok].ravel(), minlength=len(class_values))
        shown["index"].append(index[::step, ::step].astype(np.int16))
        if truth is not None:
            t = truth.read(a, b, c0, c1)
            sel = (t >= 0) & ok
            labelled += int(sel.sum())
            metrics.update(torch.from_numpy(index[sel]), torch.from_numpy(t[sel]))
            shown["truth"].append(t[::step, ::step].astype(np.int16))
        if rgb_bands:
            shown["ms"].append(ms.read(a, b, c0, c1)[:, ::step, ::step])
    total = max(int(counts.sum()), 1)
    entry = {"class_fractions": {n: float(c / total) for n, c in zip(class_names, counts)},
             "nodata_pixels": nodata, "nodata_value": nodata_value}
    if labelled:
        entry.update({"labelled_pixels": labelled, **json_values(metrics.compute()),
                      "confusion": metrics.confusion.tolist()})
    figure = {"index_map": np.concatenate(shown["index"]), "step": step,
              "truth": np.concatenate(shown["truth"]) if truth is not None else None,
              "rgb": rgb_composite(np.concatenate(shown["ms"], axis=1), rgb_bands) if rgb_bands else None}
    return entry, figure


def predict(cfg: DictConfig) -> dict:
    """Maps of the dataset's scenes through ``trainer.predict`` (any trainer: cpu, gpu, ddp; precision)."""
    from ..checkpoint import best_of_run
    from ..runtime.cli import route_lightning_logs

    route_lightning_logs()
    stride, window = check_request(cfg)
    with open_dict(cfg):
        cfg.ckpt_path = best_of_run(cfg.ckpt_path)  # a run directory: its best-on-validation checkpoint
    predictor = Predictor(cfg.ckpt_path, scan_backend=cfg.get("scan_backend"), compile=bool(cfg.get("compile")))
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    if dataset.get("classes") and list(dataset["classes"]) != predictor.class_names:
        raise CheckpointError(f"{cfg.ckpt_path}: trained on classes {predictor.class_names}, dataset "
                              f"{dataset['name']} has {list(dataset['classes'])}; choose the matching checkpoint")
    opened = open_scenes(cfg, dataset, predictor)  # every scene checked before any work
    out_dir = Path(cfg.get("out") or cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = class_colors(len(predictor.class_names))
    summary: dict = {"checkpoint": str(cfg.ckpt_path), "stats": cfg.stats, "stride": stride, "window": window,
                     "scenes": {}}
    grid: list = []  # (name, prediction, truth) of the first scenes, for one combined figure
    for spec, name, ms, pan, region in opened:
        entry, figure = map_scene(cfg, predictor, dataset, out_dir, (spec, name, ms, pan, region), stride, window)
        save_map_figure(figure["index_map"], predictor.class_names, colors, out_dir / f"{name}_map.png",
                        truth=figure["truth"], title=f"{name}: prediction", rgb=figure["rgb"], step=figure["step"])
        summary["scenes"][name] = entry
        if len(opened) > 1 and len(grid) < cfg.grid_max_scenes:
            grid.append((name, figure["index_map"], figure["truth"]))
    if grid:
        save_maps_grid(grid, predictor.class_names, colors, out_dir / "maps.png",
                       title=f"{dataset['name']}: {Path(cfg.ckpt_path).name}")
    (out_dir / "predict.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    if cfg.get("wandb"):
        log_to_wandb(predictor.info, out_dir, summary, dataset["name"])
    log.info("outputs: %s", out_dir)
    return summary


def open_scenes(cfg: DictConfig, dataset: dict, predictor: Predictor) -> list[tuple]:
    """The scenes to map (``scenes=``, default all), each opened and checked against the checkpoint and the
    region: (spec, name, ms, pan, region)."""
    specs = scene_specs(dataset)
    if cfg.get("scenes"):
        wanted = list(cfg.scenes)
        names = [s.get("name") for s in specs]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ConfigError(f"scenes: {unknown} not in dataset {dataset['name']} (it has {names})")
        specs = [s for s in specs if s.get("name") in wanted]
    ratio = int(dataset["ratio"])
    opened = []
    for spec in specs:
        ms, pan = open_scene(spec, ratio)
        name = spec.get("name", Path(str(ms.path)).stem)
        if ms.shape[0] != predictor.ms_channels:
            raise ConfigError(f"{ms.path}: {ms.shape[0]} MS bands, the checkpoint's network expects "
                              f"{predictor.ms_channels} (select bands with `ms_bands` in the dataset's scene list)")
        if pan.shape != (1, ratio * ms.shape[1], ratio * ms.shape[2]):
            raise ConfigError(f"{pan.path}: PAN {pan.shape[1:]}, expected {(ratio * ms.shape[1], ratio * ms.shape[2])} "
                              f"({ratio}x the MS size {ms.shape[1:]} of {ms.path})")
        region = tuple(int(v) for v in cfg.region) if cfg.get("region") else (0, ms.shape[1], 0, ms.shape[2])
        r0, r1, c0, c1 = region
        if not (0 <= r0 < r1 <= ms.shape[1] and 0 <= c0 < c1 <= ms.shape[2]):
            raise ConfigError(f"region={list(region)} (rows r0, r1, cols c0, c1) is not inside scene {name} "
                              f"of {ms.shape[1]} x {ms.shape[2]} MS pixels")
        opened.append((spec, name, ms, pan, region))
    return opened


def map_scene(cfg: DictConfig, predictor: Predictor, dataset: dict, out_dir: Path, scene: tuple, stride: int,
              window: int) -> tuple[dict, dict]:
    """One scene's map, window by window through ``trainer.predict`` (continuing a map left in ``out_dir``),
    scored against its labels: (its predict.json entry, the figure's arrays)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ..runtime import signals
    from ..training.callbacks import AdaptThreads, StopOnSignal

    spec, name, ms, pan, region = scene
    ratio = int(dataset["ratio"])
    windows = SceneWindows(spec, ratio, predictor.ms_patch, window, stride, region, images=(ms, pan))
    confidence = bool(cfg.get("confidence"))
    meta = {"checkpoint": str(Path(cfg.ckpt_path).resolve()), "files": [str(ms.path), str(pan.path)],
            "region": list(region), "stride": stride, "window": window, "stats": cfg.stats, "confidence": confidence}
    map_path, progress_path, todo = start_map(out_dir, name, ms.shape[1:], len(windows), meta, bool(cfg.get("overwrite")))
    shift, scale = (predictor.train_shift, predictor.train_scale) if cfg.stats == "train" else \
        predictor.scene_stats(ms, pan)
    log.info("scene %s: MS %s, PAN %s, region %s, %d windows of %dx%d px%s", name, ms.shape, pan.shape,
             list(region), len(todo), window, window, f", every {stride}-th pixel" if stride > 1 else "")
    writer = MapWriter(map_path, progress_path, predictor.class_values, total=len(todo),
                       confidence_path=confidence_file(map_path) if confidence else None)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[writer, AdaptThreads(), StopOnSignal()], logger=False,
                                      enable_model_summary=False, default_root_dir=str(out_dir))
    t0 = time.perf_counter()
    try:
        trainer.predict(predictor.model, return_predictions=False,
                        datamodule=SceneDataModule(windows, todo, shift, scale, cfg.num_workers, signals.loader_options))
    except (SIGTERMException, signals.Stop) as err:
        done = int(np.load(progress_path).sum())
        sig = signals.received() or 15
        raise Interrupted(f"scene {name}: stopped by {signals.signal_name(sig)} with {done} of {len(windows)} windows "
                          f"written to {map_path}; the same command with out={out_dir} continues from there",
                          status=signals.exit_status(sig)) from err
    seconds = time.perf_counter() - t0
    values = np.load(map_path, mmap_mode="r+")
    r0, r1, c0, c1 = region
    skipped = int((values[r0:r1:stride, c0:c1:stride] == NODATA_MARK).sum())  # nodata pixels: not classified
    if stride > 1:
        fill_from_stride(values, region, stride)
        values.flush()
        if confidence:
            conf = np.load(confidence_file(map_path), mmap_mode="r+")
            fill_from_stride(conf, region, stride)
            conf.flush()
    scores, figure = finish_scene(values, map_path, region, predictor.class_values, predictor.class_names,
                                  TruthReader.of(spec, ratio, predictor.class_values, ms), ms, dataset.get("rgb_bands"))
    colors = dict(zip(predictor.class_values, map(tuple, class_colors(len(predictor.class_values)))))
    # outside a region: nodata too
    for rows, cols in ((slice(0, r0), slice(None)), (slice(r1, None), slice(None)), (slice(r0, r1), slice(0, c0)),
                       (slice(r0, r1), slice(c1, None))):
        values[rows, cols] = scores["nodata_value"]
    values.flush()
    final = write_map(values, out_dir / f"{name}_map", ms.profile, colors, scores["nodata_value"]) \
        if ms.profile else map_path
    if confidence:
        scores["confidence"] = str(write_map(np.load(confidence_file(map_path), mmap_mode="r"),
                                             out_dir / f"{name}_confidence", ms.profile, nodata=float("nan"))
                                   if ms.profile else confidence_file(map_path))
    pixels = len(range(r0, r1, stride)) * len(range(c0, c1, stride)) - skipped
    entry = {"map": str(final), "shape": [r1 - r0, c1 - c0], "region": list(region), "seconds": round(seconds, 2),
             "classified_pixels": pixels, "pixels_per_s": round(pixels / seconds, 1), **scores}
    if "confusion" in entry:
        save_confusion_figure(torch.tensor(entry["confusion"]), predictor.class_names, out_dir / f"{name}_confusion.png")
    log.info("scene %s: %d px in %.1f s (%.0f px/s) -> %s", name, pixels, seconds, pixels / seconds, final)
    return entry, figure


def log_to_wandb(info: dict, out_dir: Path, summary: dict, dataset: str) -> None:
    """Maps and per-scene figures into the checkpoint's own W&B run (resumed by the id stored in it)."""
    import wandb

    from ..runtime.config import wandb_offline

    run_id = info.get("wandb_run_id")
    run = wandb.init(project="das2f", id=run_id, resume="allow" if run_id else None, dir=str(out_dir),
                     mode="offline" if wandb_offline() else "online", job_type="predict",
                     group=None if run_id else f"{dataset}-predict")
    try:
        images = {f"predict/{p.stem}": wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))}
        scalars = {f"predict/{name}/{k}": v for name, e in summary["scenes"].items()
                   for k, v in e.items() if k in ("oa", "aa", "kappa", "pixels_per_s")}
        run.log({**images, **scalars})
    finally:
        run.finish()
