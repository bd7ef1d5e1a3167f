"""Full-scene prediction: map shape and classes, agreement with the Lightning test pass, map files."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from das2f.data.scenes import load_scene, validate_scene
from das2f.maps.figures import write_map
from das2f.maps.predictor import Predictor, predict
from das2f.runtime.config import CONF_DIR
from das2f.train import run

from .conftest import SHARED, compose_in
from .test_train import make_cfg


def predict_cfg(tmp_path: Path, ckpt: str, *overrides: str):
    return compose_in(tmp_path, "predict", [f"ckpt_path={ckpt}", "dataset.generate.size=48", "num_workers=0", *overrides],
                      output="pred")


# the maps' tests cut 8x8 MS patches (32x32 PAN; a quarter of the default 16's tokens): the windows, the files and
# the agreement with the test pass do not depend on the patch size, and each map runs the network for every pixel
PATCH = ["dataset.ms_patch=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny trained run (no test) whose checkpoints the map tests read: {"best": epoch_*.ckpt, "last": last.ckpt}."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:  # W&B offline: the maps test checks they join the run's W&B run
        mp.delenv("WANDB_API_KEY", raising=False)
        mp.delenv("WANDB_MODE", raising=False)
        metrics = run(make_cfg(root, "logger=wandb", *PATCH))
    ckpts = root / "out" / "checkpoints"
    return {"best": metrics["best_checkpoint"], "last": str(ckpts / "last.ckpt"), "data": root / "data", "root": root}


def beside(tmp_path: Path, trained: dict) -> dict:
    """A test's own directory with the trained run's generated and prepared data (read only) at data/."""
    (tmp_path / "data").symlink_to(trained["data"], target_is_directory=True)
    return trained


def test_a_georeferenced_map_is_a_cloud_optimized_geotiff_with_overviews_and_colours(tmp_path):
    """A map GIS software opens at once: LAYOUT=COG, overviews (by the most frequent class), the colour table,
    the input's CRS and transform."""
    import rasterio
    from rasterio.transform import from_origin

    values = np.repeat(np.arange(4, dtype=np.uint8), 1200 * 300).reshape(1200, 1200)
    profile = {"crs": rasterio.crs.CRS.from_epsg(32650), "transform": from_origin(500000, 4000000, 4, 4)}
    path = write_map(values, tmp_path / "scene_map", profile, colors={0: (0, 0, 255), 3: (255, 0, 0)})
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.overviews(1)
        assert src.colormap(1)[3][:3] == (255, 0, 0) and src.crs.to_epsg() == 32650 and src.transform == profile["transform"]
        assert (src.read(1) == values).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene_map.tif"]  # no temporary file left


def test_predict_maps_every_pixel_like_the_test_pass(tmp_path, monkeypatch, trained):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tmp_path = trained["root"]  # the run's own directory: its metrics, its W&B run, its prepared test set
    summary = predict(predict_cfg(tmp_path, trained["best"], "window=10", "wandb=true"))
    entry = summary["scenes"]["synthetic"]
    values = np.load(entry["map"])
    assert values.shape == (48, 48) and set(np.unique(values)) <= set(range(1, 9))  # label values 1..8
    assert (tmp_path / "pred" / "synthetic_map.png").is_file() and (tmp_path / "pred" / "synthetic_confusion.png").is_file()
    assert entry["labelled_pixels"] > 0 and 0 <= entry["oa"] <= 1
    # the map at the test pixels reproduces the Lightning test pass's confusion matrix exactly
    (test_file,) = (tmp_path / "data" / "synthetic" / "prepared").glob("*/test.h5")
    with h5py.File(test_file, "r") as f:
        coords, labels = f["coord"][:], f["label"][:]
    pred = values[coords[:, 0], coords[:, 1]] - 1
    conf = np.zeros((8, 8), np.int64)
    np.add.at(conf, (labels, pred), 1)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())["test_confusion"]
    assert conf.tolist() == saved
    # the maps went into the training run's W&B run (same id, resumed offline)
    (train_run,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    (pred_run,) = (tmp_path / "pred" / "wandb").glob("offline-run-*")
    assert pred_run.name.rsplit("-", 1)[1] == train_run.name.rsplit("-", 1)[1]


def test_a_nodata_border_is_left_unclassified_in_a_cog_map_with_a_confidence(tmp_path, trained):
    """The generated scene tiled to 528 x 528 MS pixels as GeoTIFFs whose first 40 columns are nodata (0, declared):
    a stride-16 preview map is a COG with overviews whose border holds the map's nodata value, left out of the
    class fractions and the accuracy; confidence=true writes the top class probability beside it (NaN: nodata)."""
    import rasterio
    from rasterio.transform import from_origin

    trained = beside(tmp_path, trained)
    raw = trained["data"] / "synthetic" / "raw"
    tiles, border = 11, 40
    arrays = {k: np.load(raw / f"{k}.npy") for k in ("ms", "pan", "label")}
    ms = np.tile(arrays["ms"].transpose(2, 0, 1) if arrays["ms"].shape[-1] == 4 else arrays["ms"], (1, tiles, tiles))
    pan = np.tile(arrays["pan"].reshape(1, *arrays["pan"].shape[-2:]), (1, tiles, tiles))
    label = np.tile(arrays["label"], (tiles, tiles))
    ms[:, :, :border], pan[:, :, :4 * border] = 0, 0
    spec = {"name": "geo"}
    for key, arr, pixel in (("ms", ms, 4.0), ("pan", pan, 1.0), ("label", label[None], 4.0)):
        spec[key] = str(tmp_path / f"{key}.tif")
        with rasterio.open(spec[key], "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=len(arr),
                           dtype=arr.dtype, crs="EPSG:32650", transform=from_origin(500000, 4000000, pixel, pixel),
                           nodata=None if key == "label" else 0) as dst:
            dst.write(arr)
    scenes = "[{" + ",".join(f"{k}:'{v}'" for k, v in spec.items()) + "}]"
    run_dir = Path(trained["best"]).parents[1]  # a run directory stands for its best-on-validation checkpoint
    summary = predict(predict_cfg(tmp_path, str(run_dir), f"dataset.scenes={scenes}", "stride=16", "window=32",
                                  "confidence=true", f"out={tmp_path / 'maps'}"))
    assert summary["checkpoint"] == trained["best"]
    from das2f.checkpoint import best_of_run

    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*: a run directory gives .* it holds none: name the file"):
        best_of_run(tmp_path)
    entry = summary["scenes"]["geo"]
    assert entry["nodata_value"] == 0 and entry["nodata_pixels"] >= 528 * (border - 4)
    assert entry["classified_pixels"] == 33 * 33 - 33 * 3  # every 16th pixel, less the 3 nodata columns of them
    with rasterio.open(entry["map"]) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.overviews(1) and src.nodata == 0
        values = src.read(1)
    assert (values[:, :border - 4] == 0).all() and (values[:, border + 4:] >= 1).all()
    assert entry["labelled_pixels"] == int(((values > 0) & (label > 0)).sum()) and 0 <= entry["oa"] <= 1
    with rasterio.open(entry["confidence"]) as src:
        conf = src.read(1)
        assert src.dtypes[0] == "float32" and src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert np.isnan(conf[:, :border - 4]).all() and ((conf[:, border + 4:] > 0) & (conf[:, border + 4:] <= 1)).all()


def test_predict_refuses_other_classes_and_unknown_scenes(tmp_path, trained):
    trained = beside(tmp_path, trained)
    ckpt = trained["last"]
    cfg = predict_cfg(tmp_path, ckpt, "scenes=[nowhere]")
    with pytest.raises(ValueError, match=r"scenes: \['nowhere'\] not in dataset synthetic"):
        predict(cfg)
    cfg = predict_cfg(tmp_path, ckpt, "dataset.classes=[a,b]")
    with pytest.raises(ValueError, match="trained on classes"):
        predict(cfg)
    with pytest.raises(ValueError, match="not a das2f checkpoint"):
        import torch

        bare = tmp_path / "bare.ckpt"
        torch.save({"state_dict": {}}, bare)
        Predictor(bare)


def test_geotiff_map_keeps_georeferencing(tmp_path):
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    profile = {"crs": CRS.from_epsg(32650), "transform": from_origin(500000.0, 4400000.0, 3.2, 3.2)}
    values = np.arange(12, dtype=np.int64).reshape(3, 4) % 5 + 1
    path = write_map(values, tmp_path / "scene_map", profile)
    assert path.suffix == ".tif" and not list(tmp_path.glob("*.tmp*"))
    with rasterio.open(path) as src:
        assert src.crs == profile["crs"] and src.transform == profile["transform"] and src.dtypes[0] == "uint8"
        assert (src.read(1) == values).all()
    assert write_map(values, tmp_path / "plain").suffix == ".npy"
    # the reader keeps an input GeoTIFF's georeferencing, which predict hands to write_map
    from das2f.data.readers import read_raster

    with rasterio.open(tmp_path / "ms.tif", "w", driver="GTiff", height=3, width=4, count=2, dtype="uint16",
                       **profile) as dst:
        dst.write(np.ones((2, 3, 4), np.uint16))
    raster = read_raster(tmp_path / "ms.tif")
    assert raster.georeferenced and raster.profile["transform"] == profile["transform"] and raster.data.shape == (2, 3, 4)


@pytest.mark.skipif(not (SHARED / "wv2" / "imgWV2.mat").is_file(), reason="../shared/data/wv2/imgWV2.mat not present")
def test_wv2_scene_loads_as_four_band_prediction_scene():
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("predict", overrides=["dataset=wv2", "ckpt_path=x"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(SHARED.parents[1] / "main")
        del cfg["hydra"]
    (spec,) = cfg.dataset.scenes
    spec = dict(spec, ms=str(SHARED / "wv2" / "imgWV2.mat"), pan=str(SHARED / "wv2" / "imgWV2.mat"))
    scene = load_scene(spec, 4)
    validate_scene(scene, 4, require_labels=False)
    assert scene.ms.data.shape == (4, 320, 320) and scene.pan.data.shape == (1, 1280, 1280)
    assert scene.ms.data.dtype == np.uint16 and scene.ms.data.max() < 2048  # 11-bit DN, not rescaled
    full = load_scene(dict(spec, ms_bands=None), 4)
    assert (scene.ms.data == full.ms.data[[1, 2, 4, 6]]).all()


def test_checkpoints_describe_themselves_and_load_safely(tmp_path):
    import functools

    import hydra
    import torch

    from das2f.checkpoint import DATAMODULE_KEY, convert, load_checkpoint
    from das2f.runtime.errors import CheckpointError
    from das2f.training.module import Das2fClassifier

    metrics = run(make_cfg(tmp_path))
    best, last = Path(metrics["best_checkpoint"]), tmp_path / "out" / "checkpoints" / "last.ckpt"
    for path in (best, last):  # tensors and plain containers only: torch's safe loader reads them
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt[DATAMODULE_KEY]["class_names"] == ["water", "grass", "crop", "forest", "shrub", "urban",
                                                       "bare_soil", "road"]
        assert ckpt["hyper_parameters"]["net"]["_target_"] == "das2f.models.DAS2F"
    model = Das2fClassifier.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    predictor = Predictor(best)
    check_data_module_restores(tmp_path, best)
    ms, pan = torch.rand(3, 4, 16, 16), torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(ms, pan), predictor.net(ms, pan))  # the checkpoint alone rebuilds the model
    # a checkpoint of the earlier layout (the optimizer as a Python object) is refused, with the conversion
    old = torch.load(best, map_location="cpu", weights_only=True)
    hp = old["hyper_parameters"]
    old["das2f"] = {"net": hp["net"], "class_names": hp["class_names"], "class_values": list(range(1, 9)),
                    "ms_patch": 16, "ratio": 4, "dataset": "synthetic",
                    "normalization": {"kind": old[DATAMODULE_KEY]["normalization"], "shift": old[DATAMODULE_KEY]["shift"],
                                      "scale": old[DATAMODULE_KEY]["scale"]}}
    hp["optimizer"] = hydra.utils.instantiate({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001})
    hp["scheduler"] = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3)  # (older: either kind)
    del old[DATAMODULE_KEY]
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match=r"python -m das2f.checkpoint .*old.ckpt NEW.ckpt"):
        load_checkpoint(tmp_path / "old.ckpt")
    convert(tmp_path / "old.ckpt", tmp_path / "new.ckpt")
    with torch.no_grad():
        assert torch.equal(Predictor(tmp_path / "new.ckpt").net(ms, pan), predictor.net(ms, pan))
    hp = load_checkpoint(tmp_path / "new.ckpt")["hyper_parameters"]
    assert hp["optimizer"] == {"_target_": "torch.optim.adam.Adam", "_partial_": True, "lr": 0.001}
    assert hp["scheduler"] == {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 3}


def check_data_module_restores(tmp_path, ckpt_path):
    """The checkpoint alone restores the data module: its dataset config, classes and training statistics
    (normalising new patches as in training before any file is read), and refuses files prepared otherwise."""
    import hydra
    import torch
    from omegaconf import OmegaConf

    from das2f.data.datamodule import MsPanDataModule
    from das2f.runtime.errors import CheckpointError, ConfigError

    cfg = make_cfg(tmp_path)
    trained = hydra.utils.instantiate(cfg.data, dataset=OmegaConf.to_container(cfg.dataset, resolve=True))
    trained.setup()
    restored = MsPanDataModule.load_from_checkpoint(ckpt_path, weights_only=True)
    assert restored.cfg == trained.cfg and restored.batch_size == trained.batch_size and not restored.sets
    assert restored.class_names == trained.class_names and restored.ms_channels == 4
    raw = next(iter(trained.test_dataloader()))
    a, b = trained.normalize(dict(raw)), restored.normalize(dict(raw))
    assert torch.equal(a["ms"], b["ms"]) and torch.equal(a["pan"], b["pan"])
    restored.setup()  # the prepared files are there: checked against the checkpoint, same batches
    assert torch.equal(next(iter(restored.test_dataloader()))["ms"], raw["ms"])
    assert restored.state_dict() == torch.load(ckpt_path, weights_only=True)["MsPanDataModule"]
    # a checkpoint of the earlier layout (data state, no data module arguments): refused unless dataset= is given
    old = torch.load(ckpt_path, weights_only=True)
    del old[MsPanDataModule.CHECKPOINT_HYPER_PARAMS_KEY]
    torch.save(old, tmp_path / "older.ckpt")
    with pytest.raises(CheckpointError, match=r"older.ckpt: holds the data state .* pass the dataset config"):
        MsPanDataModule.load_from_checkpoint(tmp_path / "older.ckpt")
    assert MsPanDataModule.load_from_checkpoint(tmp_path / "older.ckpt", dataset=trained.cfg).class_names == \
        trained.class_names
    other = {**restored.state_dict(), "class_values": [10, 20, 30, 40, 50, 60, 70, 80]}
    with pytest.raises(ConfigError, match=r"train.h5: prepared with class_values \[1, 2, 3, 4, 5, 6, 7, 8\], the "
                                          r"checkpoint's \[10, 20.*does not match the checkpoint"):
        restored.load_state_dict(other)


def test_the_project_never_unpickles_a_checkpoint():
    """No load of a checkpoint with torch's unsafe unpickler (torch.load, load_from_checkpoint, ... with
    weights_only=False). Saving is not loading: Lightning's save_checkpoint(weights_only=False) means "the
    full state, not only the weights"."""
    import re

    root = Path(__file__).resolve().parents[1]
    unsafe = re.compile(r"load\w*\((?:[^()]|\([^()]*\))*weights_only\s*=\s*" + "False")
    offenders = [str(p) for d in ("src", "tests", "experiments") for p in (root / d).rglob("*") if p.suffix in (".py", ".sh")
                 if unsafe.search(p.read_text())]
    assert not offenders
    assert unsafe.search("torch.load(path, map_location='cpu', weights_only=" + "False)")
    assert not unsafe.search("trainer.save_checkpoint(self.path, weights_only=" + "False)")


def test_windows_cut_exactly_the_whole_scene_patches_and_read_only_their_region(tmp_path, monkeypatch):
    from das2f.data.patches import PatchCutter
    from das2f.data.windows import LazyImage, SceneWindows, window_patches

    rng = np.random.default_rng(0)
    ms = rng.integers(0, 1000, (23, 29, 3), dtype=np.uint16)  # H x W x C, as users store .npy scenes
    pan = rng.integers(0, 1000, (92, 116), dtype=np.uint16)
    np.save(tmp_path / "ms.npy", ms)
    np.save(tmp_path / "pan.npy", pan)
    whole = PatchCutter(ms.transpose(2, 0, 1), pan[None], 16, 4)
    lazy_ms, lazy_pan = LazyImage(tmp_path / "ms.npy"), LazyImage(tmp_path / "pan.npy")
    for r0, r1, c0, c1 in ((0, 5, 0, 7), (9, 17, 11, 29), (18, 23, 0, 29)):  # borders and interior
        m, p, coords, _ = window_patches(lazy_ms, lazy_pan, r0, r1, c0, c1, 16, 4)
        wm, wp = whole.cut(coords)
        assert np.array_equal(m, wm) and np.array_equal(p, wp)
    # a window reads only its region plus the patch margins, never the scene
    reads = []
    original = LazyImage.read_masked  # every read of an image goes through it
    monkeypatch.setattr(LazyImage, "read_masked", lambda self, r0, r1, c0, c1: reads.append((r1 - r0) * (c1 - c0))
                        or original(self, r0, r1, c0, c1))
    ds = SceneWindows({"name": "s", "ms": str(tmp_path / "ms.npy"), "pan": str(tmp_path / "pan.npy")}, 4, 16, size=4)
    item = ds[9]  # rows 4..7, cols 4..7
    assert len(item["coord"]) == 16 and max(reads) <= (4 * (4 + 15)) ** 2


def test_map_resumes_preview_fills_and_bad_requests_are_refused(tmp_path, trained):
    trained = beside(tmp_path, trained)
    from das2f.runtime.errors import ConfigError

    ckpt = trained["best"]
    out = tmp_path / "maps"
    full = predict(predict_cfg(tmp_path, ckpt, f"out={out}", "region=[8,40,4,36]", "window=8"))
    map_path = out / "synthetic_map.npy"
    done = np.load(map_path)
    assert full["scenes"]["synthetic"]["shape"] == [32, 32] and (done[8:40, 4:36] >= 1).all()
    with pytest.raises(ConfigError, match="already holds a finished map of this job; overwrite=true"):
        predict(predict_cfg(tmp_path, ckpt, f"out={out}", "region=[8,40,4,36]", "window=8"))
    # an interrupted map: half of its windows never written -> the next run writes exactly those
    progress = np.load(out / "synthetic_map.progress.npy")
    progress[::2] = 0
    np.save(out / "synthetic_map.progress.npy", progress)
    values = np.load(map_path, mmap_mode="r+")
    for i in range(0, 16, 2):  # the 4 x 4 windows of 8 x 8 pixels marked undone lose their pixels
        gi, gj = divmod(i, 4)
        values[8 + 8 * gi:16 + 8 * gi, 4 + 8 * gj:12 + 8 * gj] = -1
    values.flush()
    predict(predict_cfg(tmp_path, ckpt, f"out={out}", "region=[8,40,4,36]", "window=8"))
    assert np.array_equal(np.load(map_path), done)  # identical to the uninterrupted map
    # a stride-2 preview agrees with the full map where it classified, and fills every other pixel
    preview = predict(predict_cfg(tmp_path, ckpt, f"out={tmp_path / 'preview'}", "region=[8,40,4,36]", "window=8",
                                  "stride=2"))
    fast = np.load(tmp_path / "preview" / "synthetic_map.npy")
    assert np.array_equal(fast[8:40:2, 4:36:2], done[8:40:2, 4:36:2]) and (fast[8:40, 4:36] >= 1).all()
    assert preview["scenes"]["synthetic"]["classified_pixels"] == 16 * 16
    with pytest.raises(ConfigError, match=r"region=\[0, 99, 0, 10\] .* is not inside scene synthetic of 48 x 48"):
        predict(predict_cfg(tmp_path, ckpt, "region=[0,99,0,10]"))
    with pytest.raises(ConfigError, match="3 MS bands, the checkpoint's network expects 4"):
        predict(predict_cfg(tmp_path, ckpt, "+dataset.scenes.0.ms_bands=[0,1,2]"))


@pytest.mark.slow
def test_ddp_map_is_identical_to_one_process(tmp_path, trained):
    trained = beside(tmp_path, trained)
    ckpt = trained["best"]
    predict(predict_cfg(tmp_path, ckpt, f"out={tmp_path / 'one'}", "region=[0,24,0,24]", "window=8"))
    predict(predict_cfg(tmp_path, ckpt, f"out={tmp_path / 'two'}", "region=[0,24,0,24]", "window=8", "trainer=ddp_sim"))
    one, two = (np.load(tmp_path / d / "synthetic_map.npy") for d in ("one", "two"))
    assert (one[:24, :24] >= 1).all() and np.array_equal(one, two)


def test_a_region_of_a_large_scene_reads_only_that_region(tmp_path, monkeypatch, trained):
    trained = beside(tmp_path, trained)
    from das2f.data.windows import LazyImage

    ckpt = trained["best"]
    h = 1000  # 1000 x 1000 MS, 4000 x 4000 PAN on disk
    rng = np.random.default_rng(0)
    np.save(tmp_path / "big_ms.npy", rng.integers(0, 1000, (h, h, 4), dtype=np.uint16))
    np.save(tmp_path / "big_pan.npy", rng.integers(0, 1000, (4 * h, 4 * h), dtype=np.uint16))
    np.save(tmp_path / "big_label.npy", rng.integers(0, 9, (h, h), dtype=np.uint8))
    reads = []
    original = LazyImage.read_masked  # every read of an image goes through it
    monkeypatch.setattr(LazyImage, "read_masked", lambda self, r0, r1, c0, c1: reads.append((r1 - r0) * (c1 - c0))
                        or original(self, r0, r1, c0, c1))
    scene = f"{{name: big, ms: {tmp_path}/big_ms.npy, pan: {tmp_path}/big_pan.npy, label: {tmp_path}/big_label.npy}}"
    summary = predict(predict_cfg(tmp_path, ckpt, f"dataset.scenes=[{scene}]", "region=[500,516,700,716]",
                                  "stats=train"))
    assert summary["scenes"]["big"]["shape"] == [16, 16]
    assert reads and max(reads) <= (4 * (16 + 15)) ** 2  # a window's PAN with its margins, never the scene
    values = np.load(tmp_path / "pred" / "big_map.npy", mmap_mode="r")
    assert (values[500:516, 700:716] >= 1).all() and (values[:500] == 0).all()  # outside the region: nodata (0)


def test_a_finished_map_is_checked_scored_and_drawn_band_by_band(tmp_path, monkeypatch):
    """After the windows, a map is filled (stride), checked, counted, scored and drawn band of rows by band of
    rows: memory is a band plus the figure's arrays (at most 1,500 pixels a side), not the scene; the numbers
    are those of the whole-array computation."""
    import tracemalloc

    import torch

    import das2f.maps.predictor as P
    from das2f.metrics import compute_metrics

    h, w, values_ = 4000, 3000, np.arange(1, 6) * 10  # 12 M pixels; label values 10..50, 0 unlabelled
    rng = np.random.default_rng(0)
    m = np.lib.format.open_memmap(tmp_path / "map.npy", mode="w+", dtype=np.int32, shape=(h, w))
    m[:] = rng.choice(values_, (h, w)).astype(np.int32)
    m.flush()
    del m
    np.save(tmp_path / "label.npy", rng.choice(np.arange(6) * 10, (h, w)).astype(np.uint8))
    monkeypatch.setattr(P, "FINISH_ROWS", 64)
    names = ["a", "b", "c", "d", "e"]
    values = np.load(tmp_path / "map.npy", mmap_mode="r")
    truth = P.TruthReader.of({"label": str(tmp_path / "label.npy")}, 4, values_, None)
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    entry, figure = P.finish_scene(values, tmp_path / "map.npy", (0, h, 0, w), values_, names, truth)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < h * w * 8 / 4, f"{peak / 2**20:.1f} MB"  # one int64 copy of the map alone would be 92 MB
    # the same numbers as the whole map at once
    whole, label = np.load(tmp_path / "map.npy"), np.load(tmp_path / "label.npy")
    index, t = np.searchsorted(values_, whole), np.where(label > 0, label.astype(np.int64) // 10 - 1, -1)
    sel = t >= 0
    ref = compute_metrics(torch.from_numpy(index[sel]), torch.from_numpy(t[sel]), names)
    assert entry["labelled_pixels"] == int(sel.sum())
    assert all(entry[k] == pytest.approx(v, rel=1e-6) for k, v in ref.items())
    assert entry["confusion"] == np.bincount(t[sel] * 5 + index[sel], minlength=25).reshape(5, 5).tolist()
    assert entry["class_fractions"]["c"] == pytest.approx((index == 2).mean())
    assert figure["step"] == 3 and np.array_equal(figure["index_map"], index[::3, ::3])
    assert np.array_equal(figure["truth"], t[::3, ::3])
    # a pixel never written is a bug, said with its rows
    broken = np.load(tmp_path / "map.npy", mmap_mode="r+")
    broken[130, 7] = -1
    with pytest.raises(RuntimeError, match=r"1 pixels in rows 126..188 were not written"):
        P.finish_scene(broken, tmp_path / "map.npy", (0, h, 0, w), values_, names, truth)


def test_matlab_v73_scenes_are_read_window_by_window(tmp_path):
    from das2f.data.readers import read_raster
    from das2f.data.windows import LazyImage

    rng = np.random.default_rng(0)
    ms = rng.integers(0, 2000, (30, 40, 4), dtype=np.uint16)  # MATLAB's (H, W, C)
    path = tmp_path / "scene.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("I_MS", data=ms.T)  # MATLAB v7.3 stores arrays transposed
        f.create_dataset("I_PAN", data=rng.integers(0, 2000, (120, 160), dtype=np.uint16).T)
    with open(path, "r+b") as f:  # the MAT-file header MATLAB writes into the user block
        text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
        f.write(text.ljust(116) + bytes(8) + b"\x00\x02IM")  # text, subsystem offset, version 2.0, endianness
    whole = read_raster(path, key="I_MS").data  # (C, H, W), the reader's reading
    lazy = LazyImage(path, key="I_MS", bands=[0, 2])
    assert lazy.shape == (2, 30, 40) and np.array_equal(lazy.read(5, 17, 9, 33), whole[[0, 2], 5:17, 9:33])
    assert LazyImage(path, key="I_PAN").read(0, 120, 10, 20).shape == (1, 120, 10)


def test_a_map_reads_its_checkpoint_once_and_builds_the_network_once(tmp_path, monkeypatch, trained):
    import torch

    from das2f.models import DAS2F

    trained = beside(tmp_path, trained)
    loads, builds = [], []
    real_load, real_init = torch.load, DAS2F.__init__
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(DAS2F, "__init__", lambda self, *a, **k: builds.append(1) or real_init(self, *a, **k))
    predict(predict_cfg(tmp_path, trained["best"], *PATCH, "region=[0,8,0,8]", "window=8"))
    assert len(loads) == 1 and len(builds) == 1, (loads, builds)


def test_an_aligned_scene_is_warped_once_and_scored_on_its_own_grid(tmp_path, monkeypatch, trained):
    """`align: true` resamples the scene in memory: the map's windows (main process and two DataLoader workers)
    share one resampled copy, warped once. The map covers what MS and PAN cover; a label file that covers less is
    resampled alone onto the map's grid (not the scene again, which cropped it to the labels' extent: the truth was
    off the map's grid), unlabelled where it does not reach."""
    import rasterio
    from rasterio.transform import from_origin

    import das2f.data.scenes as scenes

    trained = beside(tmp_path, trained)
    raw = trained["data"] / "synthetic" / "raw"
    ms, pan, label = np.load(raw / "ms.npy").transpose(2, 0, 1), np.load(raw / "pan.npy")[None], np.load(raw / "label.npy")
    spec = {"name": "shifted", "align": True}
    # PAN 1 MS pixel east; the labels from MS row 4 and column 3 on
    for key, arr, pixel, west, north in (("ms", ms, 4.0, 0, 0), ("pan", pan[:, :, 4:], 1.0, 4, 0),
                                         ("label", label[None, 4:, 3:], 4.0, 12, 16)):
        spec[key] = str(tmp_path / f"{key}.tif")
        with rasterio.open(spec[key], "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=len(arr),
                           dtype=arr.dtype, crs="EPSG:32650",
                           transform=from_origin(500000 + west, 4000000 - north, pixel, pixel)) as dst:
            dst.write(arr)
    calls = tmp_path / "align-calls"
    real = scenes.align
    monkeypatch.setattr(scenes, "align", lambda *a, **k: calls.open("a").write("x") and real(*a, **k))
    scene = "[{" + ",".join(f"{k}:'{v}'" for k, v in spec.items()) + "}]"
    out = tmp_path / "maps"
    summary = predict(predict_cfg(tmp_path, trained["best"], *PATCH, f"dataset.scenes={scene}", "num_workers=2",
                                  "region=[0,16,0,16]", "window=8", f"out={out}"))
    entry = summary["scenes"]["shifted"]
    assert entry["shape"] == [16, 16]
    assert calls.read_text() == "x"  # the windows' copy, in the main process only; the labels alone for the truth
    # the map's grid starts at MS column 1 (PAN's west edge): the truth is label[r, c + 1] where the file reaches
    with rasterio.open(out / "shifted_map.tif") as src:
        mapped = src.read(1)[:16, :16]
    truth = np.zeros((16, 16), label.dtype)
    truth[4:, 2:] = label[4:16, 3:17]
    values = list(map(int, Predictor(trained["best"]).class_values))
    want = np.zeros((len(values), len(values)), int)
    for t, m in zip(truth.ravel(), mapped.ravel()):
        if t in values:
            want[values.index(t), values.index(m)] += 1
    assert entry["labelled_pixels"] == want.sum() > 100 and entry["confusion"] == want.tolist()
