"""Jobs that start together prepare a dataset once (runtime/locks.py): several processes at once all
succeed, one cuts, the files are valid; a waiter names the lock it waits for and gives up after its
timeout; a lock held by a killed process is free."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from das2f.data.hdf5 import read_attrs
from das2f.runtime.errors import DataError
from das2f.runtime.locks import directory_lock, lock_path

from .conftest import small_dataset_cfg

SIZE = ["dataset.generate.size=96", "dataset.split.train=6", "dataset.split.val=3", "dataset.split.test=4"]


def test_three_prepares_started_together_all_succeed_and_one_cuts(tmp_path):
    env = {k: v for k, v in os.environ.items()}
    env["OMP_NUM_THREADS"] = "1"
    procs = [subprocess.Popen([sys.executable, "-m", "das2f.prepare", *SIZE, "threads=1"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n\n".join(o[-2000:] for o in outs)
    cut = [o for o in outs if "preparing synthetic (no prepared files yet)" in o]
    assert len(cut) == 1, outs
    assert sum("prepared files up to date, skipping" in o for o in outs) == 2
    (prepared,) = (tmp_path / "data" / "synthetic" / "prepared").iterdir()  # one preparation: <fingerprint>/
    for split in ("train", "val", "test"):
        assert read_attrs(prepared / f"{split}.h5")["n"] > 0
    assert not [f for f in (tmp_path / "data").rglob("*") if ".tmp" in f.name]


def test_a_waiter_names_the_lock_and_gives_up_after_its_timeout(tmp_path):
    from das2f.data.prepare import prepare_dataset

    cfg = small_dataset_cfg(tmp_path, lock_timeout_s=0.5)
    with directory_lock(cfg["prepared_dir"], "holding it in a test"):
        # another process holds it (flock locks are per open file: a second FileLock object in this process waits too)
        t0 = time.monotonic()
        with pytest.raises(DataError, match=rf"{tmp_path / '.prepared.das2f.lock'}: another process has been preparing "
                                            r"dataset synthetic for more than 0 s"):
            prepare_dataset(cfg)
        assert time.monotonic() - t0 < 30
    assert all(p.is_file() for p in prepare_dataset(cfg).values())  # free again: prepares


def test_a_lock_of_a_killed_process_is_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom das2f.runtime.locks import directory_lock\n"
                               f"with directory_lock({str(tmp_path)!r}, 'holding'):\n    print('held', flush=True)\n"
                               "    time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(DataError):
        with directory_lock(tmp_path, "testing", timeout_s=0.2):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with directory_lock(tmp_path, "testing", timeout_s=5) as path:
        assert path == lock_path(tmp_path) == tmp_path.parent / f".{tmp_path.name}.das2f.lock"
