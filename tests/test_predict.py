"""Full-scene prediction: map shape and classes, agreement with the Lightning test pass, map files."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from das2f.config import CONF_DIR
from das2f.data.scenes import load_scene, validate_scene
from das2f.maps import write_map
from das2f.predictor import Predictor, predict
from das2f.train import run

from .conftest import SHARED
from .test_train import make_cfg


def predict_cfg(tmp_path: Path, ckpt: str, *overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("predict", overrides=[f"ckpt_path={ckpt}", "dataset.generate.size=48", "progress=false",
                                            *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.data_dir = str(tmp_path / "data")
        cfg.paths.output_dir = str(tmp_path / "pred")
        del cfg["hydra"]
    return cfg


def test_predict_maps_every_pixel_like_the_test_pass(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    metrics = run(make_cfg(tmp_path, "logger=wandb"))
    summary = predict(predict_cfg(tmp_path, metrics["best_checkpoint"], "batch_size=100", "wandb=true"))
    entry = summary["scenes"]["synthetic"]
    values = np.load(entry["map"])
    assert values.shape == (48, 48) and set(np.unique(values)) <= set(range(1, 9))  # label values 1..8
    assert (tmp_path / "pred" / "synthetic_map.png").is_file() and (tmp_path / "pred" / "synthetic_confusion.png").is_file()
    assert entry["labelled_pixels"] > 0 and 0 <= entry["oa"] <= 1
    # the map at the test pixels reproduces the Lightning test pass's confusion matrix exactly
    with h5py.File(tmp_path / "data" / "synthetic" / "prepared" / "test.h5", "r") as f:
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


def test_predict_refuses_other_classes_and_unknown_scenes(tmp_path):
    run(make_cfg(tmp_path, "test=false"))
    ckpt = str(tmp_path / "out" / "checkpoints" / "last.ckpt")
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

    import torch

    from das2f.checkpoint import DATAMODULE_KEY, convert, load_checkpoint
    from das2f.errors import CheckpointError
    from das2f.module import Das2fClassifier

    metrics = run(make_cfg(tmp_path))
    best, last = Path(metrics["best_checkpoint"]), tmp_path / "out" / "checkpoints" / "last.ckpt"
    for path in (best, last):  # tensors and plain containers only: torch's safe loader reads them
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt[DATAMODULE_KEY]["class_names"] == ["water", "grass", "crop", "forest", "shrub", "urban",
                                                       "bare_soil", "road"]
        assert ckpt["hyper_parameters"]["net"]["_target_"] == "das2f.models.DAS2F"
    model = Das2fClassifier.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    predictor = Predictor(best)
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
    hp["optimizer"] = functools.partial(torch.optim.Adam, lr=0.001)
    del old[DATAMODULE_KEY]
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match=r"python -m das2f.checkpoint .*old.ckpt NEW.ckpt"):
        load_checkpoint(tmp_path / "old.ckpt")
    convert(tmp_path / "old.ckpt", tmp_path / "new.ckpt")
    with torch.no_grad():
        assert torch.equal(Predictor(tmp_path / "new.ckpt").net(ms, pan), predictor.net(ms, pan))
    assert load_checkpoint(tmp_path / "new.ckpt")["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.adam.Adam"


def test_the_project_never_unpickles_a_checkpoint():
    root = Path(__file__).resolve().parents[1]
    offenders = [str(p) for d in ("src", "tests", "experiments") for p in (root / d).rglob("*") if p.suffix in (".py", ".sh")
                 if "weights_only=" + "False" in p.read_text()]
    assert not offenders
