"""Split protocols and the overlap between the splits' patches: the block split (balanced, buffered, k-fold, over
several scenes), the overlap counted by das2f and, independently, from the prepared files' coordinates."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from das2f.data.hdf5 import read_attrs
from das2f.data.patches import PatchCutter
from das2f.data.prepare import prepare_dataset
from das2f.data.readers import SceneError
from das2f.data.split import SPLITS, assign_blocks, block_counts, footprint_bounds, overlapping, split_by_blocks, stratified_split
from das2f.data.synthetic import write_scene
from das2f.runtime.errors import ConfigError

from .conftest import small_dataset_cfg


def pixels_read(shape: tuple[int, int], coords: np.ndarray, ms_patch: int = 16) -> list[set[int]]:
    """Independently of das2f's footprint arithmetic: the pixels each patch reads, found by cutting the patches
    out of an image whose value is the pixel's index (PatchCutter: the geometry and reflection training uses)."""
    h, w = shape
    index = np.arange(h * w, dtype=np.int64).reshape(1, h, w)
    cutter = PatchCutter(index, np.zeros((1, 4 * h, 4 * w), np.int8), ms_patch, 4)
    return [set(p.ravel().tolist()) for p in cutter.cut(np.asarray(coords, np.int32))[0]]


def independent_overlap(shape, train: np.ndarray, other: np.ndarray, ms_patch: int = 16) -> int:
    """How many patches of ``other`` read a pixel that some training patch reads (sets of pixel indices)."""
    read_by_train = set().union(*pixels_read(shape, train, ms_patch)) if len(train) else set()
    return sum(bool(s & read_by_train) for s in pixels_read(shape, other, ms_patch))


def synthetic_labels(tmp_path, size: int = 192) -> np.ndarray:
    write_scene(tmp_path / "raw", size=size, seed=0)
    return np.load(tmp_path / "raw" / "label.npy")


def test_footprints_match_the_patches_cut_border_reflection_included():
    """Per axis, the pixels a patch reads are [lo, hi] as das2f computes them; at the lower border reflection
    folds the patch one pixel further inward than its unreflected window (so centres a patch side apart can
    still share a pixel there), and on a scene smaller than a patch it reflects more than once."""
    for size in (5, 23, 40):
        lo, hi = footprint_bounds(size, 16)
        for r in range(size):
            rows = {i // 1 for i in pixels_read((size, 1), np.array([[r, 0]]))[0]}
            assert rows == set(range(lo[r], hi[r] + 1)), (size, r)
    lo, hi = footprint_bounds(40, 16)
    assert (lo[39], hi[39]) == (31, 39) and hi[39 - 16] == 31  # centres 16 apart share row 31 (H-9)


def test_overlapping_agrees_with_the_independent_count():
    rng = np.random.default_rng(1)
    shape = (70, 90)
    for _ in range(5):
        train = np.stack([rng.integers(0, shape[0], 3), rng.integers(0, shape[1], 3)], 1)
        query = np.stack([rng.integers(0, shape[0], 40), rng.integers(0, shape[1], 40)], 1)
        ours = overlapping(shape, train, query, 16)
        read_by_train = set().union(*pixels_read(shape, train))
        theirs = np.array([bool(s & read_by_train) for s in pixels_read(shape, query)])
        np.testing.assert_array_equal(ours, theirs)
        assert 0 < theirs.sum() < len(theirs)  # both answers occur


def test_block_assignment_reaches_the_shares_per_class():
    """Blocks with unequal class mixes: each split's share of every class's pixels close to the target."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.uniform(5, 200, (400, 1)) * rng.dirichlet(np.ones(5) * 0.5, 400)).astype(np.int64)
    shares = np.array([[0.6] * 5, [0.1] * 5, [0.3] * 5])
    bins = assign_blocks(counts, shares, seed=3)
    got = np.array([counts[bins == b].sum(0) for b in range(3)]) / counts.sum(0)
    assert np.abs(got - shares).max() < 0.02, got
    other = assign_blocks(counts, shares, seed=4)
    assert (other != bins).mean() > 0.3  # the seed draws another split


def test_block_split_of_the_synthetic_scene_is_disjoint_and_keeps_every_class(tmp_path):
    """The done-when: split_blocks=32 on the synthetic scene: 0 % overlap for val and test by das2f's count (in the
    files' attributes) AND by the independent count from the files' coordinates, every class in every split.
    The pixel split of the same scene: 100 % (the main job's scene), recorded alike."""
    cfg = small_dataset_cfg(tmp_path, size=192, split={"train": 120, "val": 40, "test": 200}, split_blocks=32)
    paths = prepare_dataset(cfg)
    label = np.load(tmp_path / "raw" / "label.npy")
    coords, classes = {}, {}
    for s, p in paths.items():
        with h5py.File(p, "r") as f:
            coords[s], classes[s] = f["coord"][:], f["label"][:]
        assert set(np.unique(classes[s])) == set(range(8)), s
    for s in ("val", "test"):
        assert independent_overlap(label.shape, coords["train"], coords[s]) == 0
    attrs = read_attrs(paths["train"])
    assert attrs["split_protocol"] == "blocks"
    assert attrs["overlap"] == {"val": {"patches": len(coords["val"]), "overlapping": 0, "share": 0.0},
                                "test": {"patches": 1600, "overlapping": 0, "share": 0.0}}

    pixel = small_dataset_cfg(tmp_path, size=192, split={"train": 120, "val": 40, "test": 200})
    pixel["prepared_dir"] = str(tmp_path / "pixel")
    paths = prepare_dataset(pixel)
    with h5py.File(paths["train"], "r") as f:
        train = f["coord"][:]
    with h5py.File(paths["test"], "r") as f:
        test = f["coord"][:]
    assert independent_overlap(label.shape, train, test) == len(test) == 1600
    attrs = read_attrs(paths["train"])
    assert attrs["split_protocol"] == "pixels" and attrs["overlap"]["test"] == {"patches": 1600, "overlapping": 1600,
                                                                                 "share": 1.0}


def test_each_preparation_has_its_own_files_and_is_made_once(tmp_path, caplog):
    """Preparations that differ (here: split_blocks, part of the fingerprint; a patch size alike) are written side by
    side into <prepared_dir>/<fingerprint>/ and never replace each other; preparing one again finds it up to date."""
    cfg = small_dataset_cfg(tmp_path, size=192, split={"train": 20, "val": 5, "test": 10})
    pixel = prepare_dataset(cfg)
    blocks = prepare_dataset(dict(cfg, split_blocks=32))
    patch8 = prepare_dataset(dict(cfg, ms_patch=8))
    folders = {p["train"].parent for p in (pixel, blocks, patch8)}
    assert len(folders) == 3 and all(f.parent == tmp_path / "prepared" for f in folders)
    assert read_attrs(pixel["train"])["split_protocol"] == "pixels" and read_attrs(patch8["train"])["ms_shape"][1] == 8
    with caplog.at_level("INFO"):
        assert prepare_dataset(cfg) == pixel
    assert "prepared files up to date, skipping" in caplog.text


def test_ratios_take_whole_blocks_and_the_buffer_is_reported(tmp_path):
    """Ratios: every pixel of a split's blocks (less the buffer) is a sample; the blocks' shares are close to the
    ratios, and the buffer took exactly the pixels whose patch reads another split's blocks."""
    label = synthetic_labels(tmp_path)
    values = list(range(1, 9))
    rule = {"train": 0.5, "val": 0.2, "test": "rest"}
    (c,), info = split_by_blocks([label], values, rule, 0, 16, 16)
    assert np.abs(info["blocks_share"] - info["target"]).max() < 0.12
    for s in SPLITS:
        assert len(c[s]) > 0
    labelled = int(np.isin(label, values).sum())
    assert sum(len(c[s]) for s in SPLITS) + int(info["buffer"].sum()) == labelled  # every labelled pixel accounted
    for s in ("val", "test"):
        assert not overlapping(label.shape, c["train"], c[s], 16).any()
    assert not overlapping(label.shape, c["val"], c["test"], 16).any()


def test_split_sample_draws_inside_the_blocks(tmp_path):
    """split_sample thins each split's blocks (a share or a count per class, as the pixel split): the same blocks
    as without it, a tenth of the training pixels, 20 test pixels per class."""
    label = synthetic_labels(tmp_path)
    values = list(range(1, 9))
    rule = {"train": 0.6, "val": 0.1, "test": "rest"}
    (full,), _ = split_by_blocks([label], values, rule, 0, 32, 16)
    (thin,), _ = split_by_blocks([label], values, rule, 0, 32, 16, sample={"train": 0.1, "test": 20})
    count = lambda c, s, v: int((label[c[s][:, 0], c[s][:, 1]] == v).sum())  # noqa: E731
    for v in values:
        assert count(thin, "train", v) == round(0.1 * count(full, "train", v))
        assert count(thin, "test", v) == min(20, count(full, "test", v))
        assert count(thin, "val", v) == count(full, "val", v)  # not in split_sample: every pixel
    assert {tuple(x) for x in thin["train"]} <= {tuple(x) for x in full["train"]}


def test_spatial_folds_rotate_every_block_through_test_once(tmp_path):
    label = synthetic_labels(tmp_path)
    values = list(range(1, 9))
    tested = []
    for k in range(4):
        (c,), info = split_by_blocks([label], values, {"train": 0.6, "val": 0.2, "test": "rest"}, 0, 24, 16, 4, k)
        assert info["blocks"]["test"] > 0 and not overlapping(label.shape, c["train"], c["test"], 16).any()
        tested.append({tuple(x) for x in c["test"]})
    for a in range(4):
        for b in range(a + 1, 4):
            assert not tested[a] & tested[b]  # each pixel is test in at most one fold


def test_block_split_over_several_scenes_keeps_whole_scene_splits(tmp_path):
    """Two scenes split by blocks together, a third assigned whole to test (a split by scene) stays whole."""
    write_scene(tmp_path / "raw", size=96, seed=0)
    raw = tmp_path / "raw"
    scene = {"ms": str(raw / "ms.npy"), "pan": str(raw / "pan.npy"), "label": str(raw / "label.npy")}
    cfg = small_dataset_cfg(tmp_path, split={"train": 0.5, "val": 0.2, "test": "rest"}, split_blocks=24,
                            scenes=[dict(scene, name="a"), dict(scene, name="b"), dict(scene, name="c", split="test")])
    del cfg["generate"]
    paths = prepare_dataset(cfg)
    with h5py.File(paths["test"], "r") as f:
        scene_of, n_test = f["scene"][:], len(f["label"])
        protocol = f.attrs["split_protocol"]
    assert protocol == "blocks+scenes"
    labels = np.load(raw / "label.npy")
    assert (scene_of == 2).sum() == int((labels > 0).sum())  # the whole scene c
    assert {0, 1} <= set(scene_of.tolist()) and n_test > (scene_of == 2).sum()


def test_bad_block_settings_are_clear_errors(tmp_path):
    cfg = small_dataset_cfg(tmp_path, size=96)
    for key, value, expected in (("split_blocks", 0, "split_blocks=0, expected a block side"),
                                 ("split_blocks", 12, "split_blocks=12 is smaller than a patch"),
                                 ("split_blocks", "big", "split_blocks='big'"),
                                 ("split_folds", 5, "split_folds=5 needs split_blocks"),
                                 ("split_sample", {"train": 0.1}, "split_sample=.* needs split_blocks")):
        with pytest.raises(ConfigError, match=expected):
            prepare_dataset(dict(cfg, **{key: value}))
    with pytest.raises(ConfigError, match=r"split_fold=None, expected the test fold, an integer in 0..3"):
        prepare_dataset(dict(cfg, split_blocks=24, split_folds=4))
    with pytest.raises(ConfigError, match=r"split_sample=\{'train': 2.5\}, expected null or"):
        prepare_dataset(dict(cfg, split_blocks=24, split_sample={"train": 2.5}))


def test_blocks_too_big_for_a_class_stop_with_the_classes_named(tmp_path):
    """One block per split is not enough for the synthetic scene's eight classes: an error naming the split and
    the classes, before any file is written, never a split with a silently empty class."""
    cfg = small_dataset_cfg(tmp_path, size=96, split={"train": 0.5, "val": 0.2, "test": "rest"}, split_blocks=48)
    with pytest.raises(SceneError, match=r"split_blocks=48 no sample of classes (val|test): \['"):
        prepare_dataset(cfg)
    assert not (tmp_path / "prepared").exists() or not any((tmp_path / "prepared").rglob("*.h5"))


def test_pixel_split_unchanged(tmp_path):
    """The pixel split is the field's: stratified_split as before (the paper's configs reproduce its tables)."""
    label = synthetic_labels(tmp_path, 96)
    a = stratified_split(label, list(range(1, 9)), {"train": 10, "val": 5, "test": "rest"}, 0)
    assert [len(a[s]) for s in SPLITS][:2] == [80, 40]
    assert block_counts(label, [1, 2], 32).shape == (9, 2)
