import os

import torch

# Triton's kernels run in its CPU interpreter on machines without CUDA (the triton scan's tests); the
# mode is read when triton is first imported (Lightning imports it), hence here, before anything else
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def compose_in(tmp_path: Path, name: str, overrides: list[str], output: str = "out"):
    """An entry config composed with its paths under tmp_path (outputs in tmp_path/output), no Hydra runtime."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from das2f.runtime.config import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.data_dir = str(tmp_path / "data")
        cfg.paths.output_dir = str(tmp_path / output)
        cfg.paths.log_dir = str(tmp_path / "logs")
        del cfg["hydra"]
    return cfg


def small_dataset_cfg(tmp_path: Path, size: int = 48, split=None, **extra) -> dict:
    """A synthetic dataset config writing under tmp_path (a 48x48 MS scene)."""
    raw = tmp_path / "raw"
    cfg = {
        "name": "synthetic", "classes": ["water", "grass", "crop", "forest", "shrub", "urban", "bare_soil", "road"],
        "class_values": None, "ignore_value": 0, "ms_channels": 4, "ratio": 4, "ms_patch": 16, "seed": 0,
        "split": split or {"train": 12, "val": 4, "test": 8}, "generate": {"size": size, "seed": 0},
        "raw_dir": str(raw), "prepared_dir": str(tmp_path / "prepared"), "layout": "generated",
        "scenes": [{"name": "synthetic", "ms": str(raw / "ms.npy"), "pan": str(raw / "pan.npy"),
                    "label": str(raw / "label.npy")}],
    }
    cfg.update(extra)
    return cfg


@pytest.fixture
def tiny_scene(tmp_path):
    """A hand-made 10x12 scene: MS value encodes (band, row, col), PAN encodes (row, col)."""
    h, w = 10, 12
    ms = np.zeros((h, w, 3), np.uint16)
    for b in range(3):
        ms[..., b] = b * 1000 + np.arange(h)[:, None] * 20 + np.arange(w)[None, :]
    pan = (np.arange(4 * h)[:, None] * 100 + np.arange(4 * w)[None, :]).astype(np.uint16)
    label = np.zeros((h, w), np.uint8)
    label[1:9, 1:5] = 1
    label[1:9, 6:11] = 2
    for name, arr in (("ms", ms), ("pan", pan), ("label", label)):
        np.save(tmp_path / f"{name}.npy", arr)
    return tmp_path, ms, pan, label


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """One prepared dataset and the final weights of an uninterrupted serial sweep of three 2-epoch runs (seeds 42 to
    44) on it, shared by the signal and launcher tests: {seed: state_dict}. Made once for the whole test run: under
    pytest-xdist the first worker to need it makes it (under a lock) and the others read it."""
    import fcntl

    from tests.procs import BASE, run, weights

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (released when the file closes)
        done = root / "done"
        if not done.exists():
            code, out = run(root, "das2f.train", "-m", "seed=42,43,44", *BASE, "test=false")
            assert code == 0, out[-3000:]
            done.touch()
    (sweep,) = (root / "logs" / "train" / "multiruns").iterdir()
    return root / "data", {seed: weights(sweep / str(job) / "checkpoints" / "last.ckpt")
                           for job, seed in enumerate((42, 43, 44))}


# Run in parallel by `make test` (pytest-xdist, one worker per core, --dist loadfile: a test file runs on one
# worker, in order, so its module fixtures are made once and the README commands build on the ones before them).
# Each worker's own torch work runs one thread (two workers with torch's default threads on 2 cores slow each other
# many times over). The longest files go first (FIRST, below; `--no-loadscope-reorder` keeps this order, where
# pytest-xdist would hand out the files with the most tests first). (pytest-xdist's finer --dist loadgroup does
# not group with pytest 9: its node-id suffix is ignored; the session fixture `shared` shares its work through a
# file lock instead.)
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


FIRST = ("test_signals.py", "test_readme.py", "test_launcher.py", "test_predict.py", "test_configs.py",
         "test_scan_triton.py", "test_train.py", "test_cli.py")


def pytest_collection_modifyitems(config, items):
    order = {name: k for k, name in enumerate(FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(FIRST)))  # (stable: the order within a file kept)
