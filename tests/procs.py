"""Running das2f commands as the world does, for the tests: in a process group of their own, signalled from
outside; the tiny training all signal and launcher tests share."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# the smallest sizes the network and the splits take: a process's imports (about 6 s) are most of its time
BASE = ["dataset.generate.size=48", "dataset.ms_patch=8", "dataset.split.train=6", "dataset.split.val=3", "dataset.split.test=4",
        "model.net.d_state=4", "model.net.dt_rank=4", "model.net.hidden=32", "data.num_workers=2",
        "data.batch_size=4", "trainer.max_epochs=2", "threads=1", "trainer.enable_progress_bar=false"]
PAUSE = "+callbacks.pause._target_=tests.helpers.PauseAt"


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])
    return e


def start(cwd: Path, *args: str) -> subprocess.Popen:
    """A das2f command in a session (process group) of its own, as a scheduler or a terminal starts a job, output to
    a file (no pipe to fill): the test signals the group, DataLoader workers included."""
    with open(cwd / "out.txt", "w") as out:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env(), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(p, cwd: Path, timeout: float = 240) -> tuple[int, str]:
    try:
        code = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    return code, (cwd / "out.txt").read_text()


def run(cwd: Path, *args: str) -> tuple[int, str]:
    return finish(start(cwd, *args), cwd)


def wait_for(marker: Path, p: subprocess.Popen, cwd: Path, timeout: float = 180) -> list[psutil.Process]:
    """Waits until the run reaches its pause point; returns its processes besides itself (DataLoader workers)."""
    t0 = time.monotonic()
    while not marker.exists():
        if p.poll() is not None:
            pytest.fail(f"the run ended ({p.returncode}) before its pause point:\n{(cwd / 'out.txt').read_text()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            os.killpg(p.pid, signal.SIGKILL)
            pytest.fail("the run did not reach its pause point")
        time.sleep(0.05)
    return psutil.Process(p.pid).children(recursive=True)


def no_survivors(procs: list[psutil.Process]) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=15)
    return not alive


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
