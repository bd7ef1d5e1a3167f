"""Preparation and streaming: geometry, split, statistics, safe writes, errors, workers."""
import os

import h5py
import numpy as np
import pytest
import torch

from das2f.data.datamodule import ChunkBatchSampler, H5PatchDataset, MsPanDataModule
from das2f.data.hdf5 import PatchFileError, read_attrs
from das2f.data.patches import PatchCutter
from das2f.data.prepare import prepare_dataset
from das2f.data.readers import SceneError
from das2f.data.split import stratified_split
from das2f.runtime.errors import ConfigError

from .conftest import SHARED, small_dataset_cfg


def test_patch_geometry_by_hand():
    h, w = 10, 12
    ms = np.arange(h * w, dtype=np.int32).reshape(1, h, w)  # value = r*w + c
    pan = np.arange(16 * h * w, dtype=np.int32).reshape(1, 4 * h, 4 * w)  # value = R*4w + C
    cut = PatchCutter(ms, pan)
    m, p = cut.cut(np.array([[5, 6], [0, 0]], np.int32))
    assert m.shape == (2, 1, 16, 16) and p.shape == (2, 1, 64, 64)
    # centre at index 7; rows r-7..r+8
    assert m[0, 0, 7, 7] == 5 * w + 6
    assert m[0, 0, 0, 0] == 2 * w + 1  # (r-7, c-7) = (-2, -1) reflects to (2, 1)
    assert m[0, 0, 8, 9] == 6 * w + 8
    # PAN patch rows 4r-28..4r+35: pixel (28, 28) of the patch is PAN (4r, 4c), the MS pixel's corner
    assert p[0, 0, 28, 28] == (4 * 5) * (4 * w) + 4 * 6
    assert p[0, 0, 0, 0] == 8 * (4 * w) + 4  # (4r-28, 4c-28) = (-8, -4) reflects to (8, 4)
    # reflect-101 at the border: for r=0, patch row 6 (offset -1) is MS row 1, row 0 (offset -7) is row 7
    assert m[1, 0, 6, 7] == 1 * w + 0
    assert m[1, 0, 0, 0] == 7 * w + 7
    # PAN row offset -28 from 0 reflects to 28; offset -1 to 1
    assert p[1, 0, 0, 28] == 28 * (4 * w)
    assert p[1, 0, 27, 28] == 1 * (4 * w)
    # bottom-right corner: MS r = 9: offset +8 -> 17 reflects to 2*9 - 17 = 1
    m2, p2 = cut.cut(np.array([[9, 11]], np.int32))
    assert m2[0, 0, 15, 7] == 1 * w + 11
    assert p2[0, 0, 63, 28] == (2 * (4 * h - 1) - (36 + 35)) * (4 * w) + 44


def test_stratified_split_deterministic_and_disjoint():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (40, 50))
    a = stratified_split(labels, [1, 2, 3], {"train": 0.5, "val": 10, "test": "rest"}, seed=3)
    b = stratified_split(labels, [1, 2, 3], {"train": 0.5, "val": 10, "test": "rest"}, seed=3)
    c = stratified_split(labels, [1, 2, 3], {"train": 0.5, "val": 10, "test": "rest"}, seed=4)
    for s in a:
        np.testing.assert_array_equal(a[s], b[s])
    assert not np.array_equal(a["train"], c["train"])
    seen = [tuple(x) for s in a for x in a[s]]
    assert len(seen) == len(set(seen)) == int((labels > 0).sum())  # no pixel twice, all labelled used
    for v in (1, 2, 3):
        n = int((labels == v).sum())
        assert (labels[a["train"][:, 0], a["train"][:, 1]] == v).sum() == round(0.5 * n)
        assert (labels[a["val"][:, 0], a["val"][:, 1]] == v).sum() == 10


@pytest.fixture
def prepared(tmp_path):
    cfg = small_dataset_cfg(tmp_path)
    return cfg, prepare_dataset(cfg)


def test_prepare_writes_layout_and_train_only_statistics(prepared):
    cfg, paths = prepared
    a = read_attrs(paths["train"])
    with h5py.File(paths["train"], "r") as f:
        assert f["ms"].dtype == np.uint16 and f["ms"].shape[1:] == (4, 16, 16)
        assert f["pan"].shape[1:] == (1, 64, 64) and f["ms"].compression == "lzf"
        assert f["label"].dtype == np.int64 and f["coord"].dtype == np.int32
        ms = f["ms"][:].astype(np.float64)
        assert np.bincount(f["label"][:], minlength=8).tolist() == [12] * 8
    np.testing.assert_allclose(a["ms_mean"], ms.mean((0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(a["ms_max"], ms.max((0, 2, 3)))
    with h5py.File(paths["test"], "r") as f:
        test_ms = f["ms"][:].astype(np.float64)
    assert not np.allclose(a["ms_mean"], test_ms.mean((0, 2, 3)))  # would match if test leaked in
    assert a["class_names"] == cfg["classes"] and a["split_seed"] == 0


def test_rerun_skips_and_is_identical(prepared):
    cfg, paths = prepared
    before = {s: (p.read_bytes(), os.stat(p).st_mtime_ns) for s, p in paths.items()}
    prepare_dataset(cfg)  # skipped: same inputs, same fingerprint
    assert all(os.stat(p).st_mtime_ns == before[s][1] for s, p in paths.items())
    prepare_dataset(cfg, force=True)  # rebuilt, byte-identical
    assert all(p.read_bytes() == before[s][0] for s, p in paths.items())


def test_interrupted_write_leaves_no_valid_file(tmp_path, monkeypatch):
    cfg = small_dataset_cfg(tmp_path)
    from das2f.data import hdf5

    def boom(self, **arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(hdf5.PatchWriter, "append", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(cfg)
    prepared = tmp_path / "prepared"
    assert not list(prepared.rglob("*.h5")) and not list(prepared.rglob("*.tmp"))


def test_truncated_and_foreign_files_are_refused(prepared, tmp_path):
    _, paths = prepared
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(PatchFileError, match="foreign.h5: not a das2f patch file"):
        read_attrs(foreign)
    with h5py.File(paths["val"], "a") as f:
        f["label"].resize(5, axis=0)
    with pytest.raises(PatchFileError, match=r"val.h5: truncated"):
        H5PatchDataset(paths["val"])
    broken = tmp_path / "broken.h5"
    broken.write_bytes(paths["test"].read_bytes()[:2000])
    with pytest.raises(PatchFileError, match="broken.h5: not a readable HDF5 file"):
        read_attrs(broken)


def _files_cfg(tmp_path, scene_dir, **spec):
    cfg = small_dataset_cfg(tmp_path, split={"train": 2, "val": 1, "test": "rest"}, generate=None,
                            classes=["a", "b"])
    cfg["scenes"] = [{"name": "tiny", "ms": str(scene_dir / "ms.npy"), "pan": str(scene_dir / "pan.npy"),
                      "label": str(scene_dir / "label.npy"), **spec}]
    return cfg


def test_wrong_pan_size_names_file_and_sizes(tiny_scene, tmp_path):
    d, ms, pan, label = tiny_scene
    np.save(d / "pan.npy", pan[:, :44])
    with pytest.raises(SceneError, match=r"pan.npy: PAN size \(40, 44\), expected \(40, 48\)"):
        prepare_dataset(_files_cfg(tmp_path, d))
    assert not (tmp_path / "prepared").exists()


def test_absent_class(tiny_scene, tmp_path):
    d, ms, pan, label = tiny_scene
    cfg = _files_cfg(tmp_path, d)
    cfg["classes"], cfg["class_values"] = ["a", "b", "c"], [1, 2, 3]
    with pytest.raises(SceneError, match=r"classes \['c'\] have no training pixel"):
        prepare_dataset(cfg)


def test_missing_file_named(tmp_path):
    cfg = _files_cfg(tmp_path, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere/ms.npy"):
        prepare_dataset(cfg)


def test_two_workers_yield_every_sample_once(prepared):
    cfg, paths = prepared
    dm = MsPanDataModule(cfg, batch_size=5, num_workers=2, window=10, prepare=False)
    dm.setup()
    seen = []
    for batch in dm.train_dataloader():
        assert batch["ms"].dtype == torch.uint16 and batch["pan"].shape[1:] == (1, 64, 64)  # raw: normalize() casts
        seen += [tuple(c) for c in batch["coord"].tolist()]
    with h5py.File(paths["train"], "r") as f:
        expected = sorted(tuple(c) for c in f["coord"][:].tolist())
    assert sorted(seen) == expected


def test_sampler_shuffles_by_epoch_and_splits_ranks():
    s = ChunkBatchSampler(100, 8, window=32, seed=1)
    e0 = [tuple(b) for b in s]
    e1 = [tuple(b) for b in s]
    assert e0 != e1 and sorted(i for b in e0 for i in b) == list(range(100))
    assert all(max(b) - min(b) < 32 for b in e0)  # each batch inside one window: contiguous reads
    r0 = [i for b in ChunkBatchSampler(100, 8, 32, seed=1, rank=0, world_size=2) for i in b]
    r1 = [i for b in ChunkBatchSampler(100, 8, 32, seed=1, rank=1, world_size=2) for i in b]
    assert not set(r0) & set(r1) and set(r0) | set(r1) == set(range(100))
    # 5 windows over 2 ranks: training pads to equal batch counts, evaluation counts each sample once
    train = [list(ChunkBatchSampler(130, 8, 32, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(train[0]) == len(train[1]) and {i for t in train for b in t for i in b} == set(range(130))
    ev = [[i for b in ChunkBatchSampler(130, 8, 32, shuffle=False, rank=r, world_size=2) for i in b] for r in (0, 1)]
    assert sorted(ev[0] + ev[1]) == list(range(130))


def test_normalisation_uses_file_statistics(prepared):
    cfg, paths = prepared
    dm = MsPanDataModule(cfg, batch_size=64, num_workers=0, prepare=False)
    dm.setup()
    batch = dm.normalize(next(iter(dm.train_dataloader())))
    assert 0 <= batch["ms"].min() and batch["ms"].max() <= 1 and batch["ms"].max() > 0.5


def test_pickled_dataset_drops_handle(prepared):
    import pickle

    _, paths = prepared
    ds = H5PatchDataset(paths["train"])
    ds[np.arange(3)]
    assert ds._f is not None
    assert pickle.loads(pickle.dumps(ds))._f is None


def gid5_tiles(pattern: str = "*/*.tif") -> dict:
    return {"root": str(SHARED / "gid5"), "kind": "wald_rgb", "image_dir": "image", "label_dir": "label",
            "pattern": pattern}


@pytest.mark.skipif(not (SHARED / "gid5").is_dir(), reason="../shared/data/gid5 not present")
def test_gid5_prepares_from_shared_data(tmp_path):
    cfg = {"name": "gid5", "classes": ["built_up", "farmland", "forest", "meadow", "water"],
           "class_values": [0, 1, 2, 3, 4], "ignore_value": 5, "ms_channels": 3, "ratio": 4, "ms_patch": 16,
           "seed": 0, "split": {"train": 30, "val": 10, "test": 20}, "prepared_dir": str(tmp_path),
           "tiles": gid5_tiles("*/1.tif")}
    paths = prepare_dataset(cfg)
    a = read_attrs(paths["train"])
    assert a["ms_shape"] == (3, 16, 16) and len(a["scenes"]) == 5
    with h5py.File(paths["train"], "r") as f:
        assert f["ms"].shape[0] == f["label"].shape[0] > 0 and f["pan"].dtype == np.uint8
        assert set(np.unique(f["label"][:])) <= {0, 1, 2, 3, 4}
        counts = np.bincount(f["label"][:], minlength=5)
    # a count rule applies per class and per scene: each of the 5 tiles gives its own class 30 pixels
    assert (counts >= 30).all() and counts.sum() <= 5 * 5 * 30


@pytest.mark.skipif(not (SHARED / "gid5").is_dir(), reason="../shared/data/gid5 not present")
def test_gid5_tile_split_keeps_every_tile_in_one_split(tmp_path):
    from das2f.data.tiles import tile_scenes

    tiles = tile_scenes(gid5_tiles("*/[1-4].tif"), {"train": 2, "val": 1, "test": 1}, seed=3)
    assert tiles == tile_scenes(gid5_tiles("*/[1-4].tif"), {"train": 2, "val": 1, "test": 1}, seed=3)
    assert [t["split"] for t in tiles].count("train") == 10 and len(tiles) == 20
    assert all(sum(t["category"] == c and t["split"] == "test" for t in tiles) == 1 for c in {t["category"] for t in tiles})
    cfg = {"name": "gid5", "classes": ["built_up", "farmland", "forest", "meadow", "water"],
           "class_values": [0, 1, 2, 3, 4], "ignore_value": 5, "ms_channels": 3, "ratio": 4, "ms_patch": 16,
           "seed": 0, "split": {"train": 0.05, "val": 0.05, "test": 0.02}, "prepared_dir": str(tmp_path),
           "scenes": tiles}
    paths = prepare_dataset(cfg)
    seen = {}
    for split, path in paths.items():
        names = [s["name"] for s in read_attrs(path)["scenes"]]
        with h5py.File(path, "r") as f:
            seen[split] = {names[i] for i in np.unique(f["scene"][:])}
        assert seen[split] == {t["name"] for t in tiles if t["split"] == split}, split
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["val"])
    # train is shuffled ACROSS tiles: the first batch already mixes most tiles and every class
    with h5py.File(paths["train"], "r") as f:
        assert len(np.unique(f["scene"][:64])) >= 8 and len(np.unique(f["label"][:64])) == 5
    with pytest.raises(ConfigError, match=r"takes .* tiles of category 'builtup', which has only 24"):
        tile_scenes(gid5_tiles(), {"train": 20, "val": 3, "test": 2})


def test_scene_groups_fit_the_shuffle_budget():
    from das2f.data.prepare import _scene_groups

    groups = _scene_groups([10, 10, 10, 30], budget=45, seed=0)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3] and all(len(g) >= 1 for g in groups)
    assert all(sum(2 * [10, 10, 10, 30][i] for i in g) <= 45 or len(g) == 1 for g in groups)
    assert _scene_groups([10, 10, 10, 30], budget=1e9, seed=0) == [[0, 1, 2, 3]]  # all fit: one global shuffle


def test_colour_coded_label_png(tmp_path):
    from PIL import Image

    from das2f.data.readers import SceneError, read_raster

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[:2] = (255, 0, 0)
    rgb[2:, :3] = (0, 0, 255)  # the rest stays black = unlabelled
    Image.fromarray(rgb).save(tmp_path / "label.png")
    table = {0: [0, 0, 0], 1: [255, 0, 0], 2: [0, 0, 255]}
    lab = read_raster(tmp_path / "label.png", label=True, color_table=table).data
    assert lab.shape == (4, 5) and (lab[:2] == 1).all() and (lab[2:, :3] == 2).all() and (lab[2:, 3:] == 0).all()
    with pytest.raises(SceneError, match=r"colours \[\(\(0, 0, 255\), 6\)\] .* not in color_table"):
        read_raster(tmp_path / "label.png", label=True, color_table={0: [0, 0, 0], 1: [255, 0, 0]})
    with pytest.raises(SceneError, match="needs `color_table`"):
        read_raster(tmp_path / "label.png", label=True)
    pal = Image.fromarray(lab.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    pal.save(tmp_path / "pal.png")
    assert (read_raster(tmp_path / "pal.png", label=True).data == lab).all()


def test_the_store_lists_preparations_and_prunes_those_no_run_reads(tmp_path):
    """Three preparations of one dataset: the current config's, one a run read (its metrics.json names it), one
    nothing reads. `store=list` shows all three and who reads them; `store=prune` removes only the third."""
    import json

    from das2f.data import store

    cfg = small_dataset_cfg(tmp_path, size=48)
    current = prepare_dataset(cfg)["train"].parent
    read = prepare_dataset(dict(cfg, ms_patch=8))["train"].parent
    unused = prepare_dataset(dict(cfg, seed=1))["train"].parent
    run = tmp_path / "logs" / "train" / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"split": {"prepared": str(read)}}))
    found = {p["folder"]: p for p in store.show(cfg, tmp_path / "logs")}
    assert set(found) == {current, read, unused}
    assert found[current]["current"] and found[read]["runs"] == [run] and not found[unused]["runs"]
    assert "patch 8" in found[read]["rule"] and "seed 1" in found[unused]["rule"]
    assert store.prune(cfg, tmp_path / "logs") == [unused]
    assert current.is_dir() and read.is_dir() and not unused.exists()
