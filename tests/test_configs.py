"""Every option of every config group, every experiment and every variant composes AND runs one
training + test batch (fast_dev_run) on generated data; options that need a GPU, a cluster or files
that are absent are composed and their reason stated. Datasets of the user's own files (xian,
nanjing) run on generated stand-in files of their configured layout."""
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from das2f.runtime.checks import check_config
from das2f.runtime.config import CONF_DIR
from das2f.train import run

from .conftest import SHARED, compose_in

CONF = Path(CONF_DIR)
DAS2F_NARROW = ["model.net.d_state=4", "model.net.dt_rank=4", "model.net.hidden=32"]  # DAS²F's sizes, narrowed
NARROW = ["data.num_workers=0", "data.batch_size=16", "debug=fast"]
SYNTH = ["dataset.generate.size=48", "dataset.split.train=6", "dataset.split.val=3", "dataset.split.test=4"]
GROUPS = ["dataset", "data", "model", "net", "backbone", "fusion", "cmda", "trainer", "logger", "callbacks", "experiment",
          "variant", "hparams_search", "debug"]
NOT_RUN = {  # composed only
    ("trainer", "gpu"): "needs a CUDA device (tests/test_gpu.py)",
    ("trainer", "ddp"): "needs CUDA devices",
    ("trainer", "ddp_sim"): "2 processes: the slow test test_train.test_ddp_sim_metrics_match_single_process",
    ("dataset", "wv2"): "prediction only (no labels): test_predict.test_wv2_scene_loads_as_four_band_prediction_scene",
    **{("net", p.stem): "trained and tested through the entry point: test_zoo.test_a_short_training_through_the_entry_point"
       for p in (CONF / "net").glob("[!_]*.yaml")},
}


def options() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml")) if not p.stem.startswith("_")]


def stand_in_files(raw: Path, cfg) -> None:
    """Files of a user-file dataset's configured layout: ms4.tif (H x W x 4), pan.tif (4H x 4W), label.npy
    (H x W, classes 1..K, 0 unlabelled), with every class present."""
    import rasterio

    raw.mkdir(parents=True, exist_ok=True)
    k, h = len(cfg.dataset.classes), 40
    rng = np.random.default_rng(0)
    label = np.zeros((h, h), np.uint8)
    label[:, :] = 1 + (np.arange(h)[None, :] * k // h)
    label[:2] = 0
    ms = rng.integers(0, 1000, (4, h, h), dtype=np.uint16)
    pan = rng.integers(0, 1000, (1, 4 * h, 4 * h), dtype=np.uint16)
    for name, arr in (("ms4.tif", ms), ("pan.tif", pan)):
        with rasterio.open(raw / name, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                           count=arr.shape[0], dtype="uint16") as dst:
            dst.write(arr)
    np.save(raw / "label.npy", label)


def config(tmp_path: Path, group: str, option: str):
    sizes = [] if group == "net" and option != "das2f" else DAS2F_NARROW  # another net keeps its own sizes
    over = [f"{group}={option}", *sizes, *NARROW]
    gid5 = group == "experiment" and option.startswith("gid5")  # gid5 (tiles), gid5_pixels, gid5_blocks
    dataset = option if group == "dataset" else ("gid5" if gid5 else "synthetic")
    if dataset == "synthetic":
        over += SYNTH
    if dataset == "gid5":  # 1 tile per category (3 for the experiments: a split by tile, by pixel, by block)
        over += ["dataset.tiles.pattern=*/1.tif"] if group == "dataset" else ["dataset.tiles.pattern='*/[1-3].tif'"]
        if (group, option) == ("experiment", "gid5"):
            over += ["dataset.tile_split={train:1,val:1,test:1}"]
        if option == "gid5_blocks":  # every pixel of the blocks: the experiment's thin sample is for 120 tiles
            over += ["dataset.split_sample=null"]
    if dataset in ("xian", "nanjing"):
        over += [f"dataset.raw_dir={tmp_path / 'raw'}", "dataset.split.train=0.3", "dataset.split.val=0.2"]
    return compose_in(tmp_path, "train", over), dataset


RAN: dict[str, str] = {}  # resolved config (paths aside) -> the option that ran it (this file runs in one worker)


def _key(cfg, tmp_path: Path) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True).replace(str(tmp_path), "<tmp>")


@pytest.mark.parametrize("group,option", options(), ids=[f"{g}={o}" for g, o in options()])
def test_every_config_option_composes_and_runs_a_batch(group, option, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    if (group, option) == ("dataset", "wv2"):  # prediction only: its entry config is das2f.predict's
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose("predict", overrides=["dataset=wv2", "ckpt_path=x", "paths.output_dir=."])
        OmegaConf.to_container(cfg.dataset, resolve=True)
        pytest.skip(f"composed; not run here: {NOT_RUN[(group, option)]}")
    cfg, dataset = config(tmp_path, group, option)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    check_config(cfg)  # and its values pass the checks every entry point makes first
    if (group, option) in NOT_RUN:
        pytest.skip(f"composed; not run here: {NOT_RUN[(group, option)]}")
    if dataset == "gid5" and not (SHARED / "gid5").is_dir():
        pytest.skip("composed; ../shared/data/gid5 not present")
    if dataset in ("xian", "nanjing"):
        stand_in_files(tmp_path / "raw", cfg)
    same = RAN.get(_key(cfg, tmp_path))
    if same:  # an option that composes exactly another one's config (a group's default, a variant = its override)
        pytest.skip(f"composed and checked; the config is {same}'s, which ran a batch")
    RAN[_key(cfg, tmp_path)] = f"{group}={option}"
    if dataset == "tutorial":  # its GeoTIFF set, made as the tutorial makes it
        import runpy

        runpy.run_path(str(Path(CONF_DIR).parent / "experiments" / "tutorial" / "make_scene.py"))["main"](
            Path(cfg.dataset.raw_dir))
    metrics = run(cfg)
    key = "test/oa" if cfg.test else "val/oa"  # hparams_search trials compare on validation only
    assert key in metrics and 0 <= metrics[key] <= 1, metrics


def test_dataset_patch_geometry_reaches_the_network():
    from das2f.models.base import build_net

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["dataset.ms_patch=8", "dataset.ratio=2", "model.net.hidden=8"])
    net = build_net(cfg.model.net)
    assert (net.ms_patch, net.pan_patch, net.ratio) == (8, 16, 2)  # were the network's own defaults 16 and 4


def test_a_bad_choice_is_refused_when_the_model_is_built():
    from das2f.models import DAS2F
    from das2f.runtime.errors import ConfigError

    for kw, listed in (({"scan_backend": "fast"}, "'auto', 'torch'"), ({"fusion": "max"}, "'aalf'"),
                       ({"backbone": "rnn"}, "'cnn'")):
        with pytest.raises(ConfigError, match=listed):
            DAS2F(hidden=8, **kw)
