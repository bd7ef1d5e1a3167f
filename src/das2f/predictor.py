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
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import threads
from .data.patches import PatchCutter
from .data.scenes import Scene, load_scene, validate_scene
from .data.tiles import scene_specs
from .data.transforms import RunningStats, normalize_pair, shift_scale
from .errors import CheckpointError, ConfigError
from .maps import class_colors, rgb_composite, save_map_figure, save_maps_grid, write_map

log = logging.getLogger("das2f.predict")


class Predictor:
    """A trained network and everything needed to apply it to a scene, read from one checkpoint."""

    def __init__(self, ckpt_path: str | Path, device: str = "cpu", scan_backend: str | None = None):
        from .checkpoint import data_state, load_checkpoint

        ckpt = load_checkpoint(ckpt_path)
        data = data_state(ckpt, ckpt_path)
        self.info = {**data, **ckpt.get("das2f", {})}
        net_cfg = dict(ckpt["hyper_parameters"]["net"])
        if scan_backend:
            net_cfg["scan_backend"] = scan_backend
        self.net = hydra.utils.instantiate(net_cfg)
        state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        self.net.load_state_dict(state)
        self.net.eval().to(device)
        self.device = device
        self.class_names: list[str] = list(data["class_names"])
        self.class_values = np.asarray(data["class_values"])
        self.ms_channels = int(net_cfg["ms_channels"])
        self.ms_patch, self.ratio = int(data["ms_patch"]), int(data["ratio"])
        self.normalization = data["normalization"]
        self.train_shift, self.train_scale = np.asarray(data["shift"]), np.asarray(data["scale"])

    def scene_stats(self, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
        """Shift and scale (MS bands then PAN) of the scene itself, with the checkpoint's normalisation."""
        ms, pan = RunningStats(scene.ms.data.shape[0]), RunningStats(1)
        ms.update(scene.ms.data[None])
        pan.update(scene.pan.data[None])
        return shift_scale(self.normalization, {**ms.as_attrs("ms"), **pan.as_attrs("pan")})

    def check_scene(self, scene: Scene) -> None:
        c = scene.ms.data.shape[0]
        if c != self.ms_channels:
            raise ConfigError(f"{scene.ms.path}: {c} MS bands, the checkpoint's network expects {self.ms_channels} "
                             "(select bands with `ms_bands` in the dataset's scene list)")

    @torch.inference_mode()
    def classify(self, scene: Scene, stats: str = "train", batch_size: int = 256, progress: Progress | None = None
                 ) -> np.ndarray:
        """Class indices 0..K-1 for every MS pixel of the scene, (H, W) uint8."""
        self.check_scene(scene)
        if stats == "train":
            shift, scale = self.train_shift, self.train_scale
        elif stats == "scene":
            shift, scale = self.scene_stats(scene)
        else:
            raise ConfigError(f"stats must be 'train' or 'scene', got {stats!r}")
        h, w = scene.ms.data.shape[1:]
        shift_t = torch.tensor(shift, dtype=torch.float32, device=self.device)
        scale_t = torch.tensor(scale, dtype=torch.float32, device=self.device)
        cutter = PatchCutter(scene.ms.data, scene.pan.data, self.ms_patch, self.ratio)
        rows, cols = np.divmod(np.arange(h * w), w)
        coords = np.stack([rows, cols], 1)
        out = np.empty(h * w, np.uint8)
        task = progress.add_task(scene.name, total=h * w) if progress else None
        t0 = last = time.perf_counter()
        for s in range(0, h * w, batch_size):
            if time.perf_counter() - last > 60:  # a plain log line too: progress bars vanish in batch jobs
                last = time.perf_counter()
                rate = s / (last - t0)
                log.info("scene %s: %d/%d px, %.0f px/s, about %.0f min left", scene.name, s, h * w, rate,
                         (h * w - s) / rate / 60)
            threads.step()  # threads=auto: follow the free cores
            ms, pan = cutter.cut(coords[s:s + batch_size])
            ms, pan = normalize_pair(torch.from_numpy(ms).to(self.device), torch.from_numpy(pan).to(self.device),
                                     shift_t, scale_t)
            out[s:s + batch_size] = self.net(ms, pan).argmax(1).cpu().numpy()
            if progress:
                progress.advance(task, len(ms))
        return out.reshape(h, w)


def labelled_truth(scene: Scene, class_values: np.ndarray) -> np.ndarray | None:
    """Ground truth as class indices (-1 where unlabelled or not a class of the model), or None."""
    maps = [scene.maps[k] for k in ("label", "test", "train", "val") if k in scene.maps]
    if not maps:
        return None
    truth = np.full(maps[0].shape, -1, np.int64)
    for m in maps:
        for i, v in enumerate(class_values):
            truth[m == v] = i
    return truth


def predict(cfg: DictConfig) -> dict:
    if not cfg.get("ckpt_path"):
        raise ConfigError("predict needs a checkpoint: ckpt_path=<run dir>/checkpoints/epoch_NNN.ckpt (written by das2f.train)")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = Predictor(cfg.ckpt_path, device=device, scan_backend=cfg.get("scan_backend"))
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    if dataset.get("classes") and list(dataset["classes"]) != predictor.class_names:
        raise CheckpointError(f"{cfg.ckpt_path}: trained on classes {predictor.class_names}, dataset "
                         f"{dataset['name']} has {list(dataset['classes'])}; choose the matching checkpoint")
    specs = scene_specs(dataset)
    if cfg.get("scenes"):
        wanted = list(cfg.scenes)
        names = [s.get("name") for s in specs]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ConfigError(f"scenes: {unknown} not in dataset {dataset['name']} (it has {names})")
        specs = [s for s in specs if s.get("name") in wanted]
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = class_colors(len(predictor.class_names))
    summary: dict = {"checkpoint": str(cfg.ckpt_path), "stats": cfg.stats, "device": device, "scenes": {}}
    grid: list = []  # (name, prediction, truth) of the first scenes, for one combined figure
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} px"),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=not cfg.progress) as progress:
        for spec in specs:
            scene = load_scene(spec, dataset["ratio"])
            validate_scene(scene, dataset["ratio"], require_labels=False)
            log.info("scene %s: MS %s, PAN %s", scene.name, scene.ms.data.shape, scene.pan.data.shape)
            t0 = time.perf_counter()
            index_map = predictor.classify(scene, cfg.stats, cfg.batch_size, progress)
            seconds = time.perf_counter() - t0
            value_map = predictor.class_values[index_map]
            map_path = write_map(value_map, out_dir / f"{scene.name}_map", scene.ms.profile)
            truth = labelled_truth(scene, predictor.class_values)
            entry = {"map": str(map_path), "shape": list(index_map.shape), "seconds": round(seconds, 2),
                     "pixels_per_s": round(index_map.size / seconds, 1),
                     "class_fractions": {n: float((index_map == i).mean()) for i, n in enumerate(predictor.class_names)}}
            if truth is not None and (truth >= 0).any():
                entry.update(scene_metrics(index_map, truth, predictor.class_names, out_dir / f"{scene.name}_confusion.png"))
            rgb = rgb_composite(scene.ms.data, dataset["rgb_bands"]) if dataset.get("rgb_bands") else None
            save_map_figure(index_map, predictor.class_names, colors, out_dir / f"{scene.name}_map.png",
                            truth=truth, title=f"{scene.name}: prediction", rgb=rgb)
            summary["scenes"][scene.name] = entry
            if len(specs) > 1 and len(grid) < cfg.grid_max_scenes:
                grid.append((scene.name, index_map, truth))
            log.info("scene %s: %d px in %.1f s (%.0f px/s) -> %s", scene.name, index_map.size, seconds,
                     index_map.size / seconds, map_path)
    if grid:
        save_maps_grid(grid, predictor.class_names, colors, out_dir / "maps.png",
                       title=f"{dataset['name']}: {Path(cfg.ckpt_path).name}")
    (out_dir / "predict.json").write_text(json.dumps(summary, indent=2))
    if cfg.get("wandb"):
        log_to_wandb(predictor.info, out_dir, summary, dataset["name"])
    log.info("outputs: %s", out_dir)
    return summary


def log_to_wandb(info: dict, out_dir: Path, summary: dict, dataset: str) -> None:
    """Maps and per-scene figures into the checkpoint's own W&B run (resumed by the id stored in it)."""
    import wandb

    from .config import wandb_offline

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


def scene_metrics(pred: np.ndarray, truth: np.ndarray, class_names: list[str], figure: Path) -> dict:
    """The metrics of das2f.metrics over the labelled pixels of a scene, and its confusion figure."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    from .metrics import compute_metrics
    from .results import save_confusion_figure

    sel = truth >= 0
    p, t = torch.from_numpy(pred[sel].astype(np.int64)), torch.from_numpy(truth[sel])
    conf = multiclass_confusion_matrix(p, t, len(class_names))
    save_confusion_figure(conf, class_names, figure)
    return {"labelled_pixels": int(sel.sum()), **compute_metrics(p, t, class_names), "confusion": conf.tolist()}
