"""das2f's sweep launchers (hydra_plugins/das2f_launchers): parallel jobs on one machine with the serial sweep's
results, failures reported, the slots a job gets, the SLURM submitting process's stop. (The requeue path submitit
takes on SLURM, through its local executor: test_signals, beside the runs it compares with.)"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from das2f.report import main as report_main
from tests.procs import BASE, PAUSE, finish, run, same_weights, start, wait_for, weights
from tests.test_signals import continuation

LOCAL = "hydra/launcher=local"


def the_sweep(cwd):
    (sweep,) = (cwd / "logs" / "train" / "multiruns").iterdir()
    return sweep


def test_a_failed_job_is_reported_the_others_finish_and_the_sweep_fails(tmp_path, capsys):
    """One job fails (an epsilon torch's Adam refuses), the other finishes: the sweep exits non-zero, the failed job
    keeps its directory with error.txt, the launcher names it with its error, the report lists it under the table.
    (The same with Hydra's basic launcher: test_train.test_a_sweep_with_a_failing_job_..., slow.)"""
    code, out = run(tmp_path, "das2f.train", "-m", "+model.optimizer.eps=-1,1e-8", *BASE, "data.num_workers=0",
                    "trainer.max_epochs=1", "test=false", LOCAL, "hydra.launcher.jobs=2")
    assert code != 0
    assert "job 0 failed after" in out and "Invalid epsilon value" in out and "job 1 finished after" in out, out[-3000:]
    sweep = the_sweep(tmp_path)
    assert "Invalid epsilon value" in (sweep / "0" / "error.txt").read_text()
    report_main([str(sweep)])  # (in-process: its exit statuses are test_cli's)
    report = capsys.readouterr().out
    assert "1 of 2 jobs finished" in report and "model.optimizer.eps=-1" in report, report[-3000:]


@pytest.mark.parametrize(("jobs", "gpus", "per", "want"), [
    (4, [0, 1], 1, [[0], [1], [0], [1]]),       # more jobs than GPUs: they share them, in turn
    (None, [0, 1, 2, 3], 2, [[0, 1], [2, 3]]),  # by default one job per gpus_per_job GPUs
    (2, [], 1, [[], []]),                        # no GPU: CPU jobs
])
def test_slots_share_out_gpus_and_cores(jobs, gpus, per, want):
    from hydra_plugins.das2f_launchers.launchers import LocalLauncher

    slots = LocalLauncher(jobs=jobs, gpus=gpus or None, gpus_per_job=per if gpus else 0).slots()
    assert [s["gpus"] for s in slots] == want
    cpus = sorted(os.sched_getaffinity(0))
    share = max(1, len(cpus) // len(want))
    assert all(len(s["cpus"]) == share for s in slots)
    if len(cpus) >= len(want):  # enough cores: no two jobs on the same one
        assert len({c for s in slots for c in s["cpus"]}) == share * len(want)


@pytest.mark.slow  # the serial launcher's (test_signals) runs by default: the same plan continues every launcher
def test_a_local_sweep_stopped_by_a_group_sigterm_is_continued_by_the_one_command_it_prints(tmp_path, shared):
    """A sweep over two datasets (synthetic, and `mine` from a user's --config-dir: the same generated scene under
    another name): two jobs at once, each on its own core; both reach their pause point (run one after another, the
    first would wait there alone). SIGTERM to the whole process group (launcher, submitit's controllers, jobs, their
    DataLoader workers): both save last.ckpt and stop, the launcher names them and prints the continuation command,
    exit 143. That command resumes both from their last.ckpt: they end with exactly the weights of the same seed run
    uninterrupted, in ONE directory named after both datasets, and the report counts 2 of 2. (Jobs that never
    started are run by a continuation: the serial launcher's test, test_signals; the plan is the same for all.)"""
    from das2f.runtime.config import CONF_DIR

    data, references = shared
    (tmp_path / "myconf" / "dataset").mkdir(parents=True)
    mine = (Path(CONF_DIR) / "dataset" / "synthetic.yaml").read_text().replace("name: synthetic", "name: mine")
    (tmp_path / "myconf" / "dataset" / "mine.yaml").write_text(mine)
    marker = tmp_path / "paused"
    p = start(tmp_path, "das2f.train", "--config-dir", str(tmp_path / "myconf"), "-m", "dataset=synthetic,mine",
              "seed=42", *BASE, f"paths.data_dir={data}", "test=false", LOCAL, "hydra.launcher.jobs=2", PAUSE,
              f"+callbacks.pause.marker={marker}", "+callbacks.pause.step=3", "+callbacks.pause.jobs=[0,1]")
    for job in (0, 1):
        wait_for(Path(f"{marker}-{job}"), p, tmp_path)
    os.killpg(p.pid, signal.SIGTERM)
    code, out = finish(p, tmp_path)
    assert code == 143, out[-4000:]
    assert re.search(r"sweep stopped by SIGTERM: job\(s\) (0, 1|1, 0) stopped", out), out[-3000:]
    assert "at most 2 at once" in out and "job 0 started (CPU" in out and "job 1 started (CPU" in out, out[-4000:]
    sweep = the_sweep(tmp_path)
    assert sweep.name.startswith("synthetic+mine_")
    assert not (sweep / ".submitit" / "%j").exists()
    code, out = run(tmp_path, *continuation(out))
    assert code == 0, out[-4000:]
    assert the_sweep(tmp_path) == sweep
    for job, seed in enumerate((42, 42)):
        log = (sweep / str(job) / "train.log").read_text()
        assert "Restoring states from the checkpoint path at" in log
        if len(os.sched_getaffinity(0)) >= 2:
            assert "torch threads: 1 of 1 cores (CPU affinity)" in log, log[:3000]
        assert same_weights(weights(sweep / str(job) / "checkpoints" / "last.ckpt"), references[seed]), job
    code, report = run(tmp_path, "das2f.report", "--latest")
    assert code == 0 and "2 of 2 jobs finished" in report and (sweep / "report.md").is_file(), report[-2000:]


def test_jobs_that_need_different_preparations_run_side_by_side(tmp_path):
    """A parallel sweep over a data parameter: each job prepares (or waits for) its own files, <fingerprint>/, and
    reads them; before, the two jobs replaced each other's files and one died on the other's patch size."""
    import json

    code, out = run(tmp_path, "das2f.train", "-m", *BASE, "dataset.ms_patch=8,16", "trainer.max_epochs=1", LOCAL,
                    "hydra.launcher.jobs=2")
    assert code == 0, out[-4000:]
    sweep = the_sweep(tmp_path)
    used = [json.loads((sweep / str(j) / "metrics.json").read_text())["split"]["prepared"] for j in (0, 1)]
    assert len(set(used)) == 2 and {p.name for p in (tmp_path / "data" / "synthetic" / "prepared").iterdir()} == \
        {os.path.basename(u) for u in used}


def test_a_sweep_directory_holding_another_sweep_is_refused_in_one_line(tmp_path, monkeypatch):
    """Continuing is for the same sweep: the stored command line's overrides (in any order) and the sweeper's
    parameters must match; a difference is named, key by key."""
    from omegaconf import OmegaConf

    from das2f.runtime.cli import COMMAND_ENV
    from das2f.runtime.errors import ConfigError
    from das2f.runtime.sweeps import Sweep, release

    monkeypatch.setenv(COMMAND_ENV, "unused")  # (a launcher sets it for its jobs; restored after the test)

    def sweep(*overrides, params=None):
        return OmegaConf.create({"optimized_metric": "val/oa_best", "hydra": {
            "sweep": {"dir": str(tmp_path)}, "job": {"name": "train"}, "overrides": {"task": list(overrides)},
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": params}}})

    Sweep(sweep("seed=1,2", "fusion=sum"))
    release(tmp_path)
    Sweep(sweep("fusion=sum", "seed=1,2"))  # the same sweep
    release(tmp_path)
    with pytest.raises(ConfigError, match=r"holds another sweep \(fusion: sum -> aalf; seed: 1,2 -> 1,2,3\)"):
        Sweep(sweep("seed=1,2,3", "fusion=aalf"))
    with pytest.raises(ConfigError, match=r"hydra.sweeper.params.backbone: \(not set\) -> spvm,cnn"):
        Sweep(sweep("seed=1,2", "fusion=sum", params={"backbone": "spvm,cnn"}))


def test_the_slurm_submitting_process_stopped_prints_the_continuation(tmp_path, monkeypatch, caplog):
    """A signal to the process that submitted a SLURM sweep and waits for its jobs: it stops waiting (the jobs go on
    under SLURM), prints the command that continues the sweep and exits 128 + the signal."""
    import time
    from types import SimpleNamespace

    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    from das2f.runtime.cli import COMMAND_ENV
    from hydra_plugins.das2f_launchers.launchers import SlurmLauncher

    def waiting(self, job_overrides, initial_job_idx):  # submitit waiting for the array's results
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    monkeypatch.setattr(BaseSubmititLauncher, "launch", waiting)
    monkeypatch.setenv(COMMAND_ENV, f"python -m das2f.train -m seed=1,2 hydra.sweep.dir={tmp_path}")
    launcher = SlurmLauncher(submitit_folder=str(tmp_path))
    launcher.sweep = SimpleNamespace(dir=tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        launcher.launch_jobs([["seed=1"], ["seed=2"]], 0)
    assert stop.value.code == 143 and signal.getsignal(signal.SIGTERM) == before
    assert f"go on under SLURM (squeue lists them). Once they have ended, continue the sweep with: python -m " \
           f"das2f.train -m seed=1,2 hydra.sweep.dir={tmp_path}" in caplog.text
