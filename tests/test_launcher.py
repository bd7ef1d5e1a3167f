"""das2f's sweep launchers (hydra_plugins/das2f_launchers): parallel jobs on one machine with the serial sweep's
results, failures reported, the requeue path submitit takes on SLURM (here through its local executor), and the
slots a job gets."""
from __future__ import annotations

import os
import signal

import pytest

from tests.procs import BASE, PAUSE, finish, run, same_weights, start, wait_for, weights

LOCAL = "hydra/launcher=local"


def the_sweep(cwd):
    (sweep,) = (cwd / "logs" / "train" / "multiruns").iterdir()
    return sweep


def test_local_launcher_runs_jobs_at_once_with_the_serial_sweeps_results(tmp_path, shared):
    """Two jobs at once (each waits at its first step until the other has started: run one after another, the
    first would wait alone and fail), each on its own core, ending with exactly the weights of the same sweep
    run one job after another (threads=1, same seeds)."""
    data, references = shared
    code, out = run(tmp_path, "das2f.train", "-m", "seed=42,43", *BASE, f"paths.data_dir={data}", "test=false", LOCAL,
                    "hydra.launcher.jobs=2", "+callbacks.barrier._target_=tests.helpers.Barrier",
                    f"+callbacks.barrier.folder={tmp_path / 'barrier'}")
    assert code == 0, out[-4000:]
    assert "at most 2 at once" in out and "job 0 started (CPU" in out and "job 1 started (CPU" in out, out[-4000:]
    sweep = the_sweep(tmp_path)
    assert not (sweep / ".submitit" / "%j").exists()  # submitit's folder template is not left as a folder
    for job, seed in enumerate((42, 43)):
        assert same_weights(weights(sweep / str(job) / "checkpoints" / "last.ckpt"), references[seed]), f"job {job}"
        log = (sweep / str(job) / "train.log").read_text()
        if len(os.sched_getaffinity(0)) >= 2:
            assert "torch threads: 1 of 1 cores (CPU affinity)" in log, log[:3000]


def test_a_failed_job_is_reported_the_others_finish_and_the_sweep_fails(tmp_path):
    """One job fails (a learning rate torch refuses), the other finishes: the sweep exits non-zero, the failed job
    keeps its directory with error.txt, the launcher names it with its error, the report lists it under the table.
    (The same with Hydra's basic launcher: test_train.test_a_sweep_with_a_failing_job_..., slow.)"""
    code, out = run(tmp_path, "das2f.train", "-m", "model.optimizer.lr=-1,0.01", *BASE, "data.num_workers=0", LOCAL,
                    "hydra.launcher.jobs=2")
    assert code != 0
    assert "job 0 failed after" in out and "Invalid learning rate" in out and "job 1 finished after" in out, out[-3000:]
    sweep = the_sweep(tmp_path)
    assert "Invalid learning rate" in (sweep / "0" / "error.txt").read_text()
    code, report = run(tmp_path, "das2f.report", str(sweep))
    assert code == 0 and "1 of 2 jobs finished" in report and "model.optimizer.lr=-1" in report, report[-3000:]


def test_warning_signal_requeues_and_the_job_continues_in_place(tmp_path, shared):
    """submitit's warning signal (SIGUSR2, to every process of the job, as SLURM sends it) during training:
    last.ckpt is written, submitit requeues the job (its local executor restarts it, as SLURM would), and the
    requeued job continues that checkpoint in the same directory: the same weights as never interrupted."""
    data, references = shared
    marker = tmp_path / "paused"
    p = start(tmp_path, "das2f.train", "-m", "seed=42", *BASE, f"paths.data_dir={data}", "test=false", LOCAL, PAUSE,
              f"+callbacks.pause.marker={marker}", "+callbacks.pause.step=3")
    wait_for(marker, p, tmp_path)
    os.killpg(p.pid, signal.SIGUSR2)
    code, out = finish(p, tmp_path)
    assert code == 0, out[-4000:]
    sweep = the_sweep(tmp_path)
    assert sorted(d.name for d in sweep.iterdir() if not d.name.startswith(".")) == ["0", "multirun.yaml"]
    job = sweep / "0"
    log = (job / "train.log").read_text()
    assert "requeueing this job through submitit" in log and f"resuming {job}" in log, log[-4000:]
    assert "resume=" in (job / ".hydra" / "overrides.yaml").read_text()
    assert same_weights(weights(job / "checkpoints" / "last.ckpt"), references[42])


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


def test_group_sigterm_stops_a_local_sweep_after_its_running_job_saved(tmp_path, shared):
    """SIGTERM to the whole process group (launcher, submitit's controllers, jobs, their DataLoader workers): the
    running job saves last.ckpt and stops, the launcher starts no further job, names both and exits 143."""
    data, _ = shared
    marker = tmp_path / "paused"
    p = start(tmp_path, "das2f.train", "-m", "seed=42,43", *BASE, f"paths.data_dir={data}", "test=false", LOCAL,
              "hydra.launcher.jobs=1", PAUSE, f"+callbacks.pause.marker={marker}", "+callbacks.pause.step=3")
    wait_for(marker, p, tmp_path)
    os.killpg(p.pid, signal.SIGTERM)
    code, out = finish(p, tmp_path)
    assert code == 143, out[-4000:]
    assert "sweep stopped by SIGTERM: job(s) 0 stopped" in out and "job(s) 1 not started" in out, out[-3000:]
    sweep = the_sweep(tmp_path)
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file() and not (sweep / "1").exists()
    assert "resume=" in (sweep / "0" / "error.txt").read_text()


def test_jobs_that_need_different_preparations_run_side_by_side(tmp_path):
    """A parallel sweep over a data parameter: each job prepares (or waits for) its own files, <fingerprint>/, and
    reads them; before, the two jobs replaced each other's files and one died on the other's patch size."""
    import json

    code, out = run(tmp_path, "das2f.train", "-m", "dataset.ms_patch=8,16", *BASE, "trainer.max_epochs=1", LOCAL,
                    "hydra.launcher.jobs=2")
    assert code == 0, out[-4000:]
    sweep = the_sweep(tmp_path)
    used = [json.loads((sweep / str(j) / "metrics.json").read_text())["split"]["prepared"] for j in (0, 1)]
    assert len(set(used)) == 2 and {p.name for p in (tmp_path / "data" / "synthetic" / "prepared").iterdir()} == \
        {os.path.basename(u) for u in used}
