"""A user's own dataset: label values checked against the files, tile folders of any naming, the
AA definition, one fingerprint for prepare and train. The silent-wrong-label cases come first."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from das2f.data.prepare import inspect_dataset, prepare_dataset
from das2f.data.readers import SceneError
from das2f.data.tiles import tile_scenes
from das2f.metrics import compute_metrics, json_values
from das2f.runtime.errors import ConfigError


def scene_with_labels(tmp_path, label: np.ndarray, name: str = "s") -> dict:
    """A scene (npy files) of the label map's size with random 3-band MS and PAN."""
    h, w = label.shape
    rng = np.random.default_rng(0)
    np.save(tmp_path / f"{name}_ms.npy", rng.integers(0, 1000, (h, w, 3), dtype=np.uint16))
    np.save(tmp_path / f"{name}_pan.npy", rng.integers(0, 1000, (4 * h, 4 * w), dtype=np.uint16))
    np.save(tmp_path / f"{name}_label.npy", label)
    return {"name": name, "ms": str(tmp_path / f"{name}_ms.npy"), "pan": str(tmp_path / f"{name}_pan.npy"),
            "label": str(tmp_path / f"{name}_label.npy")}


def dataset(tmp_path, scenes, **kw) -> dict:
    cfg = {"name": "mine", "classes": ["a", "b", "c", "d"], "class_values": None, "ignore_value": 15,
           "ms_channels": 3, "ratio": 4, "ms_patch": 16, "seed": 0, "split": {"train": 2, "val": 1, "test": "rest"},
           "prepared_dir": str(tmp_path / "prepared"), "scenes": scenes}
    cfg.update(kw)
    return cfg


def labels_0_to_3_and_15() -> np.ndarray:
    label = np.full((12, 12), 15, np.uint8)  # 15 = undefined
    for v in range(4):
        label[3 * v:3 * v + 3, :10] = v  # classes 0..3, 30 pixels each
    return label


def test_class_values_null_with_labels_not_1_to_k_is_refused(tmp_path):
    # labels 0..3 plus 15 = undefined; class_values null means 1..4: 0 would be dropped and every class shifted
    cfg = dataset(tmp_path, [scene_with_labels(tmp_path, labels_0_to_3_and_15())])
    with pytest.raises(SceneError, match=r"label value\(s\) \[0\] are neither a class value nor the ignore value") as err:
        prepare_dataset(cfg)
    msg = str(err.value)
    assert "s_label.npy" in msg and "0: 30, 1: 30, 2: 30, 3: 30, 15: 24" in msg
    assert "class_values null, i.e. 1..K = [1, 2, 3, 4]" in msg
    assert not (tmp_path / "prepared").exists()  # refused before anything was cut or written
    paths = prepare_dataset(dict(cfg, class_values=[0, 1, 2, 3]))  # the right config prepares
    assert all(p.is_file() for p in paths.values())


def test_a_class_left_out_of_the_list_is_refused(tmp_path):
    cfg = dataset(tmp_path, [scene_with_labels(tmp_path, labels_0_to_3_and_15())],
                  classes=["a", "b", "c"], class_values=[0, 1, 2])
    with pytest.raises(SceneError, match=r"label value\(s\) \[3\]"):
        prepare_dataset(cfg)


def test_ignore_value_that_is_a_class_and_missing_keys_are_config_errors(tmp_path):
    scenes = [scene_with_labels(tmp_path, labels_0_to_3_and_15())]
    with pytest.raises(ConfigError, match=r"ignore_value 0 is also the value of class 'a'"):
        prepare_dataset(dataset(tmp_path, scenes, class_values=[0, 1, 2, 3], ignore_value=0))
    cfg = dataset(tmp_path, scenes, class_values=[0, 1, 2, 3])
    del cfg["ignore_value"]
    with pytest.raises(ConfigError, match=r"missing key\(s\) ignore_value \(the label value meaning unlabelled"):
        prepare_dataset(cfg)
    # null: every pixel must be a class, so 15 is then an unknown value
    with pytest.raises(SceneError, match=r"label value\(s\) \[15\]"):
        prepare_dataset(dataset(tmp_path, scenes, class_values=[0, 1, 2, 3], ignore_value=None))


def test_inspect_lists_every_scene_and_label_value(tmp_path, capsys):
    from rich.console import Console

    cfg = dataset(tmp_path, [scene_with_labels(tmp_path, labels_0_to_3_and_15())])
    found = inspect_dataset(cfg, console=Console(width=200))
    out = capsys.readouterr().out
    assert found == {0: 30, 1: 30, 2: 30, 3: 30, 15: 24}
    assert "(3, 12, 12)" in out and "(1, 48, 48)" in out and "uint16" in out and "does not fit the config yet" in out
    assert not (tmp_path / "prepared").exists()


def test_inspect_in_a_log_file_keeps_whole_lines(tmp_path):
    """Off a terminal (a log file, a batch job) rich assumes 80 columns: the scene lines are written whole,
    one per scene, never cut ("arbor_wood…") or wrapped."""
    import io

    from rich.console import Console

    name = "arbor_woodland_with_a_long_scene_name_of_a_real_dataset"
    scene = scene_with_labels(tmp_path, labels_0_to_3_and_15(), name=name)
    log = io.StringIO()
    inspect_dataset(dataset(tmp_path, [scene]), console=Console(file=log, width=80))
    lines = log.getvalue().splitlines()
    (line,) = [ln for ln in lines if ln.startswith(name) and "(3, 12, 12)" in ln]
    assert "(3, 12, 12) | (1, 48, 48)" in line and "0: 30" in line and "15: 24" in line and len(line) > 80
    assert "…" not in log.getvalue()


def geotiff(path: Path, arr: np.ndarray, crs: str, origin: tuple[float, float], pixel: float) -> str:
    import rasterio
    from rasterio.transform import from_origin

    arr = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=arr.shape[0],
                       dtype=arr.dtype, crs=crs, transform=from_origin(*origin, pixel, pixel)) as dst:
        dst.write(arr)
    return str(path)


def geo_scene(tmp_path, pan_crs="EPSG:32650", pan_origin=(500000.0, 4000000.0), pan_pixel=1.0, plain_pan=False):
    """A georeferenced MS (4 m pixels, 12 x 12) + PAN (1 m, 48 x 48) + label (on the MS grid); one thing changed."""
    rng, origin = np.random.default_rng(0), (500000.0, 4000000.0)
    pan = rng.integers(0, 1000, (48, 48), dtype=np.uint16)
    if pan_crs != "EPSG:32650":  # the same ground in another CRS (a little more of it: the grids are rotated)
        from rasterio.warp import transform

        (x,), (y,) = transform("EPSG:32650", pan_crs, [origin[0] - 8], [origin[1] + 8])
        pan_origin, pan = (x, y), rng.integers(0, 1000, (64, 64), dtype=np.uint16)
    if plain_pan:
        np.save(tmp_path / "pan.npy", pan)
    return {"name": "geo", "ms": geotiff(tmp_path / "ms.tif", rng.integers(0, 1000, (3, 12, 12), dtype=np.uint16),
                                         "EPSG:32650", origin, 4.0),
            "pan": str(tmp_path / "pan.npy") if plain_pan else geotiff(tmp_path / "pan.tif", pan, pan_crs, pan_origin,
                                                                      pan_pixel),
            "label": geotiff(tmp_path / "label.tif", labels_0_to_3_and_15(), "EPSG:32650", origin, 4.0)}


@pytest.mark.parametrize(("change", "expected"), [
    ({}, None),
    ({"pan_crs": "EPSG:32651"}, r"pan.tif: CRS EPSG:32651, expected the MS's EPSG:32650 \(.*ms.tif\); set `align: true`"),
    ({"pan_origin": (500010.0, 4000000.0)}, r"pan.tif: extent \(500010.00, 3999952.00, 500058.00, 4000000.00\), "
                                            r"expected the MS's \(500000.00, .*within half an MS pixel \(2\); it is off by 10"),
    ({"pan_pixel": 1.5}, r"pan.tif: pixel size 1.5 x 1.5, expected the MS's / 4: 1 x 1 \(.*ms.tif: 4 x 4\)"),
    ({"plain_pan": True}, r"scene geo: .*ms.tif, .*label.tif georeferenced \(CRS\), .*pan.npy not"),
])
def test_files_that_do_not_cover_the_same_ground_are_refused_at_inspect(tmp_path, capsys, change, expected):
    """MS, PAN and label of a georeferenced scene: one CRS, extents within half an MS pixel, PAN's pixel size the
    MS's / ratio, no mix with plain files. Inspect prints each file's CRS, extent and pixel size, then refuses."""
    from rich.console import Console

    cfg = dataset(tmp_path, [geo_scene(tmp_path, **change)], class_values=[0, 1, 2, 3])
    if expected is None:
        inspect_dataset(cfg, console=Console(width=250))
        assert "EPSG:32650" in capsys.readouterr().out
        return
    with pytest.raises(SceneError, match=expected):
        inspect_dataset(cfg, console=Console(width=250))
    out = capsys.readouterr().out
    assert "(500000.00, 3999952.00, 500048.00, 4000000.00) | 4 x 4" in out.replace("│", "|").replace("  ", " ") or \
        ("500000.00, 3999952.00, 500048.00, 4000000.00" in out and "4 x 4" in out), out  # the table came first
    with pytest.raises(SceneError, match=expected):
        prepare_dataset(cfg)
    from das2f.data.windows import open_scene  # a map refuses the scene alike, from the files' headers

    with pytest.raises(SceneError, match=r"ms.tif georeferenced \(CRS\), .*pan.npy not" if change.get("plain_pan")
                       else expected):  # (a map reads no label file to check)
        open_scene(cfg["scenes"][0], 4)
    if change.get("plain_pan"):
        return
    # align: true resamples PAN (and the label) onto the MS grid, cropped to the extent all files cover
    cfg = dataset(tmp_path, [dict(geo_scene(tmp_path, **change), align=True)], class_values=[0, 1, 2, 3],
                  split={"train": 1, "val": 1, "test": "rest"}, ms_patch=4)
    inspect_dataset(cfg, console=Console(width=250))
    assert all(p.is_file() for p in prepare_dataset(cfg).values())
    ms, pan = open_scene(cfg["scenes"][0], 4)
    assert pan.shape == (1, 4 * ms.shape[1], 4 * ms.shape[2]) and ms.profile["crs"].to_epsg() == 32650
    assert ms.shape[1:] == ((12, 9) if "pan_origin" in change else (12, 12) if "pan_pixel" in change else ms.shape[1:])


def write_tiles(root, names: dict[str, list[int]], size: int = 32) -> None:
    """RGB image tiles and label tiles image/<category>/<n>.tif, label/<category>/<n>.png: category c has value c."""
    for c, (cat, numbers) in enumerate(names.items()):
        for n in numbers:
            for sub in ("image", "label"):
                (root / sub / cat).mkdir(parents=True, exist_ok=True)
            rgb = np.random.default_rng(n).integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / "image" / cat / f"{n}.tif")
            label = np.full((size, size), c, np.uint8)
            label[:4] = 9  # undefined
            np.save(root / "label" / cat / f"{n}.npy", label)


def test_tile_folder_of_any_naming_with_a_stratified_tile_split(tmp_path):
    write_tiles(tmp_path, {"farmland": [64, 65, 68, 70, 101], "water": [3, 12, 7, 200, 9]})
    tiles = {"root": str(tmp_path), "kind": "wald_rgb", "image_dir": "image", "label_dir": "label",
             "pattern": "*/*.tif", "label_suffix": ".npy"}
    scenes = tile_scenes(tiles, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    assert [s["name"] for s in scenes][:5] == ["farmland_64", "farmland_65", "farmland_68", "farmland_70", "farmland_101"]
    for cat in ("farmland", "water"):  # stratified: 3 / 1 / 1 tiles of each category
        splits = [s["split"] for s in scenes if s["category"] == cat]
        assert sorted(splits) == ["test", "train", "train", "train", "val"]
    assert scenes == tile_scenes(tiles, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)  # seeded
    assert scenes != tile_scenes(tiles, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=2)
    cfg = dataset(tmp_path, None, classes=["farmland", "water"], class_values=[0, 1], ignore_value=9,
                  split={"train": 0.2, "val": 0.2, "test": 0.2}, tiles=tiles, tile_split={"train": 3, "val": 1, "test": 1})
    del cfg["scenes"]
    paths = prepare_dataset(cfg)
    from das2f.data.hdf5 import read_attrs

    assert len(read_attrs(paths["train"])["scenes"]) == 10
    with pytest.raises(ConfigError, match="tiles.image_dir"):
        tile_scenes({"root": str(tmp_path), "kind": "wald_rgb", "label_dir": "label"})


def test_aa_averages_over_the_classes_present_in_the_truth():
    truth = torch.tensor([0, 0, 1, 1, 2, 2])  # 3 of 5 classes labelled
    pred = torch.tensor([0, 3, 1, 4, 2, 2])  # errors go to classes absent from the truth
    m = compute_metrics(pred, truth, ["a", "b", "c", "d", "e"])
    assert m["aa"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)  # torchmetrics' macro accuracy gives 2/5
    assert m["oa"] == pytest.approx(4 / 6) and m["acc_b"] == 0.5
    # a class absent from the truth has no accuracy (torchmetrics says 0, as if its pixels were all missed)
    assert math.isnan(m["acc_d"]) and math.isnan(m["acc_e"])
    one = compute_metrics(torch.tensor([1, 1]), torch.tensor([1, 1]), ["a", "b"])  # one class in truth and prediction
    assert one["oa"] == one["aa"] == 1.0 and math.isnan(one["kappa"])
    # JSON files get null for what is undefined (JSON has no NaN; strict readers refuse it)
    text = json.dumps(json_values(m), allow_nan=False)
    assert json.loads(text)["acc_d"] is None and json.loads(text)["acc_a"] == 0.5


def test_report_averages_the_defined_values_only():
    from das2f.report import table

    def run(seed, oa, acc_b):
        metrics = {"test/oa": oa, "test/aa": oa, "test/kappa": 0.5, "test/f1": oa, "test/acc_a": oa, "test/acc_b": acc_b}
        return {"dir": Path(f"/runs/{seed}"), "seed": seed, "config": {"seed": str(seed), "fusion": "aalf"},
                "class_names": ["a", "b"], "metrics": metrics}

    keys, rows = table([run(1, 0.8, None), run(2, 0.9, 0.6)])  # class b absent from the first run's test truth
    (row,) = rows
    assert keys == [] and row["seeds"] == [1, 2]
    assert row["stats"]["test/oa"][0] == pytest.approx(0.85) and row["stats"]["test/acc_b"] == (0.6, None)


def test_prepare_then_train_prepares_once(tmp_path):
    import hydra
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from das2f.runtime.config import CONF_DIR

    over = ["dataset.generate.size=48", f"paths.data_dir={tmp_path}", "paths.output_dir=."]
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        prep = compose("prepare", overrides=over)
        train = compose("train", overrides=over)
    paths = prepare_dataset(OmegaConf.to_container(prep.dataset, resolve=True))  # as `make prepare`
    stamp = {p: p.stat().st_mtime_ns for p in paths.values()}
    dm = hydra.utils.instantiate(train.data, dataset=OmegaConf.to_container(train.dataset, resolve=True))
    dm.prepare_data()  # as `make train`: the same fingerprint, nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == stamp


def test_generated_scene_follows_its_size(tmp_path):
    from das2f.data.synthetic import write_scene

    assert np.load(write_scene(tmp_path, size=48)["label"]).shape == (48, 48)
    assert np.load(write_scene(tmp_path, size=32)["label"]).shape == (32, 32)


def test_tile_folders_of_separate_ms_and_pan_tiles(tmp_path):
    rng = np.random.default_rng(0)
    for cat, value in (("a", 1), ("b", 2)):
        for n in (5, 12):
            for sub in ("ms", "pan", "label"):
                (tmp_path / sub / cat).mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / "ms" / cat / f"{n}.npy", rng.integers(0, 900, (20, 20, 3), dtype=np.uint16))
            np.save(tmp_path / "pan" / cat / f"{n}.npy", rng.integers(0, 900, (80, 80), dtype=np.uint16))
            np.save(tmp_path / "label" / cat / f"{n}.npy", np.full((20, 20), value, np.uint8))
    tiles = {"root": str(tmp_path), "kind": "files", "ms_dir": "ms", "pan_dir": "pan", "label_dir": "label",
             "pattern": "*/*.npy"}
    scenes = tile_scenes(tiles, {"train": 1, "test": 1}, seed=0)
    assert [s["name"] for s in scenes] == ["a_5", "a_12", "b_5", "b_12"]
    assert scenes[0]["pan"].endswith("pan/a/5.npy") and scenes[0]["label"].endswith("label/a/5.npy")
    cfg = dataset(tmp_path, None, classes=["a", "b"], class_values=[1, 2], ignore_value=0,
                  split={"train": 0.3, "val": 0.0, "test": 0.3}, tiles=tiles, tile_split={"train": 1, "test": 1})
    del cfg["scenes"]
    from das2f.data.hdf5 import read_attrs

    paths = prepare_dataset(cfg)
    assert read_attrs(paths["train"])["ms_shape"] == (3, 16, 16) and len(read_attrs(paths["test"])["scenes"]) == 4
