"""The entry points as a user meets them: run through the real CLI in a temporary working directory,
with size limits only (never path overrides): exit codes, one-line errors, resume, quiet consoles."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from das2f.runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# size limits only: a 48x48 scene, a few samples per class, a narrow network, one epoch
SIZE = ["dataset.generate.size=48", "dataset.split.train=6", "dataset.split.val=3", "dataset.split.test=4",
        "model.net.d_state=4", "model.net.dt_rank=4", "model.net.hidden=32", "data.num_workers=0",
        "data.batch_size=16", "trainer.max_epochs=1"]


def das2f(cwd: Path, task: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", f"das2f.{task}", *args], cwd=cwd, capture_output=True, text=True,
                          env=e, timeout=600)


def runs(cwd: Path, task: str = "train") -> list[Path]:
    return sorted((cwd / "logs" / task / "runs").glob("*")) if (cwd / "logs" / task / "runs").is_dir() else []


def test_user_mistakes_are_one_line_exit_2_and_leave_no_run_dir(tmp_path):
    """As processes: a training entry and the preparation (the exit status, the one line, no run directory). The
    other mistakes raise the same user errors in-process (test_config_values_are_checked_before_any_work,
    test_a_bad_map_request_is_refused_before_lightning_is_imported, test_signals' broken checkpoints)."""
    cases = [
        (("train", *SIZE, "ckpt_path=nowhere.ckpt"), "ckpt_path: no checkpoint at nowhere.ckpt"),
        (("prepare", "dataset=xian"), "input file not found: "),
    ]
    for args, expected in cases:
        r = das2f(tmp_path, *args)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if "[ERROR]" in ln]
        assert len(errors) == 1 and expected in errors[0], (args, r.stdout[-1000:], r.stderr[-1000:])
        assert "Traceback" not in r.stderr and "HYDRA_FULL_ERROR" not in r.stderr, args
    assert not any((tmp_path / "logs").rglob("*.log")), list((tmp_path / "logs").rglob("*"))  # no empty run dirs
    from omegaconf import OmegaConf

    from das2f.runtime.errors import ConfigError
    from das2f.training.start import start_point

    with pytest.raises(ConfigError, match="evaluation needs a checkpoint: ckpt_path="):  # das2f eval without one
        start_point(OmegaConf.create({"train": False, "ckpt_path": None}))


def test_config_values_are_checked_before_any_work(tmp_path):
    """A value of the wrong type or range is one line naming the key, the value and what is expected, exit 2,
    before any data is generated, prepared or read."""
    from das2f.runtime.checks import check_config
    from tests.conftest import compose_in

    cases = {"data.batch_size=abc": "data.batch_size='abc': expected an integer >= 1",
             "model.optimizer.lr=abc": "model.optimizer.lr='abc': expected a number > 0",
             "data.num_workers=-1": "data.num_workers=-1: expected an integer >= 0",
             "threads=0": "threads=0: expected 'auto' or an integer >= 1",
             "dataset.split.train=1.5": "dataset.split.train=1.5: expected a ratio in (0, 1]",
             "+dataset.scenes.0.nodata=black": "dataset.scenes[0].nodata='black': expected null or a number",
             "+dataset.scenes.0.alig=true": "dataset.scenes[0]: unknown key(s) ['alig']; expected some of"}
    for override, expected in cases.items():
        with pytest.raises(ConfigError, match=re.escape(expected)):
            check_config(compose_in(tmp_path, "train", [override]))
    check_config(compose_in(tmp_path, "train", []))
    r = das2f(tmp_path, "train", "data.batch_size=abc")
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(out) == 1 and "data.batch_size='abc': expected an integer >= 1" in out[0], out
    assert not (tmp_path / "data").exists()


@pytest.mark.slow  # two processes of training and evaluation (in-process: test_train.test_resume_and_eval_reproduce)
def test_eval_rebuilds_the_network_from_the_checkpoint(tmp_path):
    r = das2f(tmp_path, "train", *SIZE, "model.net.stages=2", "fusion=sum", "trainer.max_epochs=2",
              "callbacks.epoch_summary.every_s=0")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    # progress lines without a terminal, epochs counted from 1; no third-party noise, Lightning's messages once
    assert "epoch 1/2: batch 1/3" in out and "epoch 2/2:" in out and "Epoch 1/1" not in out
    noise = ("litlogger", "LeafSpec", "anonymous setting", "weights_only` was not set", "smaller than the logging")
    assert not [n for n in noise if n in out]
    assert out.count("`Trainer.fit` stopped") <= 1
    (run,) = runs(tmp_path)
    (best,) = (run / "checkpoints").glob("epoch_*.ckpt")
    r = das2f(tmp_path, "eval", *SIZE, f"ckpt_path={best}")  # the config's defaults: 1 stage, aalf
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    (ev,) = runs(tmp_path, "eval")
    trained, evaluated = (json.loads((d / "metrics.json").read_text()) for d in (run, ev))
    assert (evaluated["stages"], evaluated["fusion"]) == (2, "sum")
    for k in ("test/oa", "test/aa", "test/kappa"):
        assert evaluated["metrics"][k] == pytest.approx(trained["metrics"][k], abs=1e-6)
    # each metric printed once (our table), not again by Lightning's; no progress bar outside a terminal
    assert "Test metric" not in r.stdout and r.stdout.count("test metrics of") == 1
    assert "it/s" not in r.stdout + r.stderr and "Testing" not in r.stdout
    assert "checkpoints/" not in r.stdout.split("outputs:")[1]  # eval writes none, so it lists none
    # the best checkpoint holds the weights only; last.ckpt the full state for resume
    import torch

    assert "optimizer_states" not in torch.load(best, weights_only=True)
    assert "optimizer_states" in torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow  # by default: a map continued from the windows written (test_predict), SIGTERM in training
def test_a_map_stopped_by_sigterm_exits_143_and_the_same_command_finishes_it_identically(tmp_path):
    import signal
    import time

    import numpy as np

    from tests import procs

    r = das2f(tmp_path, "train", *SIZE, "test=false")
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = runs(tmp_path)
    (ckpt,) = (run / "checkpoints").glob("epoch_*.ckpt")
    # one pixel per window: 128 windows, so the map is still running when the signal comes; two DataLoader workers
    # get the group's SIGTERM too (before the fix a worker died of it and the map ended with exit 1)
    args = [f"ckpt_path={ckpt}", "dataset.generate.size=48", "num_workers=2", "region=[0,8,0,16]", "window=1"]
    whole = das2f(tmp_path, "predict", *args, f"out={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = tmp_path / "cut"
    proc = procs.start(tmp_path, "das2f.predict", *args, f"out={cut}")  # in a process group of its own
    progress, deadline, written = cut / "synthetic_map.progress.npy", time.time() + 300, 0
    while written < 3:  # a few windows written, then SIGTERM to the whole group (as a scheduler sends it)
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "out.txt").read_text()[-3000:]
        try:
            written = int(np.load(progress).sum())
        except (FileNotFoundError, ValueError, EOFError):  # not created yet, or being created
            pass
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    code, output = procs.finish(proc, tmp_path, timeout=300)
    assert code == 143, output[-3000:]
    written = int(np.load(progress).sum())
    assert 3 <= written < 128 and f"stopped by SIGTERM with {written} of 128 windows" in output
    assert f"the same command with out={cut} continues" in output and "Traceback" not in output
    again = das2f(tmp_path, "predict", *args, f"out={cut}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing an interrupted map, {written} of 128 windows done" in again.stdout + again.stderr
    final, reference = np.load(cut / "synthetic_map.npy"), np.load(tmp_path / "whole" / "synthetic_map.npy")
    assert (final[:8, :16] >= 1).all() and np.array_equal(final, reference)  # identical to the uninterrupted map


def test_a_bad_map_request_is_refused_before_lightning_is_imported(tmp_path):
    """No checkpoint, a bad stats= or window=: the one-line error comes before the predictor's imports (a fresh
    process, as a user's: Lightning alone takes about 5 s of imports)."""
    code = ("import runpy, sys\nsys.argv = ['das2f.predict', *sys.argv[1:]]\ntry:\n"
            "    runpy.run_module('das2f.predict', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as err:\n    print('exit', err.code, 'lightning' in sys.modules)\n")
    for args, expected in (([], "predict needs a checkpoint"), (["ckpt_path=x", "stats=foo"], "stats must be"),
                           (["ckpt_path=x", "window=0"], "expected whole numbers >= 1")):
        r = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True)
        assert "exit 2 False" in r.stdout and expected in r.stdout + r.stderr, (args, r.stdout, r.stderr[-2000:])


def test_help_answers_without_importing_torch():
    code = "import sys, das2f.train, das2f.eval, das2f.predict, das2f.prepare; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


def test_make_help_prints_no_make_variables():
    r = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "help"], capture_output=True, text=True)
    assert r.returncode == 0 and "make train" in r.stdout and "$(" not in r.stdout


def test_report_latest_without_runs_is_one_line(tmp_path):
    r = das2f(tmp_path, "report", "--latest")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no multirun directory under logs" in r.stderr
