"""Interruptions as the world delivers them (das2f.runtime.signals, docs/robustness.md): signals sent from
outside to the WHOLE process group (as SLURM, docker stop and Ctrl-C do), DataLoader workers running, at
known points of each phase; SIGKILL; checkpoints cut short or of the wrong kind.

The runs share one prepared dataset and one uninterrupted reference run (module fixtures); each signalled
run checks several things: exit status, message, last.ckpt, no worker left behind, and that the resumed
run ends with exactly the reference's weights."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from das2f.report import main as report_main
from tests.procs import BASE, PAUSE, env, finish, no_survivors, run, same_weights, start, wait_for, weights

SEEDS = (42, 43, 44)
SWEEP = "seed=" + ",".join(map(str, SEEDS))


def continuation(out: str) -> list[str]:
    """The one command a stopped sweep printed to continue it, as arguments of tests.procs.run."""
    line = [ln for ln in out.splitlines() if "continue the whole sweep" in ln or "continue the sweep with:" in ln][-1]
    command = shlex.split(line.rsplit(" with: ", 1)[1])
    assert command[:3] == ["python", "-m", "das2f.train"], line
    return command[2:]


def test_a_sweep_stopped_by_a_group_sigterm_is_continued_by_the_one_command_it_prints(tmp_path, shared, capsys):
    """SIGTERM to the process group of a serial sweep of 3 jobs while job 1 trains (workers running): job 0 has
    finished, job 1 saves last.ckpt and stops, exit 143 with the continuation command. A second continuation while
    the sweep runs is refused. The printed command keeps job 0, resumes job 1 from its last.ckpt, runs job 2: all
    three end with the uninterrupted sweep's weights and metrics, in one directory, and the report counts 3 of 3."""
    data, references = shared
    marker, sweep = tmp_path / "paused", tmp_path / "sweep"
    args = ["das2f.train", "-m", SWEEP, *BASE, f"paths.data_dir={data}", "test=false", PAUSE,
            f"+callbacks.pause.marker={marker}", "+callbacks.pause.step=3", "+callbacks.pause.jobs=[1]",
            f"hydra.sweep.dir={sweep}"]
    p = start(tmp_path, *args)
    workers = wait_for(Path(f"{marker}-1"), p, tmp_path)
    assert len(workers) >= 2  # the training loader's workers receive the signal too
    (tmp_path / "second").mkdir()
    code, out = run(tmp_path / "second", *args)
    assert code == 2 and "another process is running this sweep" in out, out[-2000:]
    os.killpg(p.pid, signal.SIGTERM)
    code, out = finish(p, tmp_path)
    assert code == 143, out[-3000:]
    assert "stopped by SIGTERM while training at epoch 1, step 3" in out and "this was job 1 of the sweep" in out
    assert no_survivors(workers)
    assert (sweep / "0" / "metrics.json").is_file() and not (sweep / "2").exists()
    assert torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    code, out = run(tmp_path, *continuation(out))
    assert code == 0, out[-3000:]
    assert "job 0 (seed=42): finished before: kept" in out and "job 1 (seed=43): resumes from its last.ckpt" in out
    assert "Restoring states from the checkpoint path at" in (sweep / "1" / "train.log").read_text()
    assert not (sweep / "1" / "error.txt").exists()
    (uninterrupted,) = (data.parent / "logs" / "train" / "multiruns").iterdir()  # the references' sweep
    for job, seed in enumerate(SEEDS):
        assert same_weights(weights(sweep / str(job) / "checkpoints" / "last.ckpt"), references[seed]), job
        got, want = (json.loads((d / str(job) / "metrics.json").read_text())["metrics"] for d in (sweep, uninterrupted))
        assert got == want, job  # the epochs' training and validation metrics too
    report_main([str(sweep)])
    assert "3 of 3 jobs finished" in capsys.readouterr().out


# the launchers' requeue path (SLURM's warning signal), here beside the `shared` runs it compares with
def test_warning_signal_requeues_and_the_job_continues_in_place(tmp_path, shared):
    """submitit's warning signal (SIGUSR2, to every process of the job, as SLURM sends it) during training:
    last.ckpt is written, submitit requeues the job (its local executor restarts it, as SLURM would), and the
    requeued job continues that checkpoint in the same directory: the same weights as never interrupted."""
    data, references = shared
    marker = tmp_path / "paused"
    p = start(tmp_path, "das2f.train", "-m", "seed=42", *BASE, f"paths.data_dir={data}", "test=false",
              "hydra/launcher=local", PAUSE,
              f"+callbacks.pause.marker={marker}", "+callbacks.pause.step=3")
    wait_for(marker, p, tmp_path)
    os.killpg(p.pid, signal.SIGUSR2)
    code, out = finish(p, tmp_path)
    assert code == 0, out[-4000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert sorted(d.name for d in sweep.iterdir() if not d.name.startswith(".")) == ["0", "multirun.yaml"]
    job = sweep / "0"
    log = (job / "train.log").read_text()
    assert "requeueing this job through submitit" in log and f"resuming {job}" in log, log[-4000:]
    assert "resume=" in (job / ".hydra" / "overrides.yaml").read_text()
    assert same_weights(weights(job / "checkpoints" / "last.ckpt"), references[42])


@pytest.mark.slow  # three short trials and a stopped one: about 40 s
def test_a_stopped_optuna_search_continues_with_its_trials_counted(tmp_path, shared):
    """An Optuna search of 3 trials (its study in the sweep directory by default), stopped by a group SIGTERM in its
    second trial: the continuation command asks that trial's parameters again and resumes its job from last.ckpt,
    then runs the third trial as job 2; the study ends with 3 complete trials."""
    import optuna

    data, _ = shared
    marker, sweep = tmp_path / "paused", tmp_path / "sweep"
    p = start(tmp_path, "das2f.train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *BASE,
              f"paths.data_dir={data}", "trainer.max_epochs=1", PAUSE, f"+callbacks.pause.marker={marker}",
              "+callbacks.pause.step=1", "+callbacks.pause.jobs=[1]", f"hydra.sweep.dir={sweep}")
    wait_for(Path(f"{marker}-1"), p, tmp_path)
    os.killpg(p.pid, signal.SIGTERM)
    code, out = finish(p, tmp_path)
    assert code == 143, out[-3000:]
    code, out = run(tmp_path, *continuation(out))
    assert code == 0, out[-3000:]
    assert "1 of 3 trial(s) done, 2 to go" in out and "Optuna trial 1 was stopped: asked again" in out, out[-3000:]
    assert "Restoring states from the checkpoint path at" in (sweep / "1" / "train.log").read_text()
    study = optuna.load_study(study_name="das2f", storage=f"sqlite:///{sweep}/optuna.db")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3 and sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2"]


def csv_rows(path: Path) -> set:
    import csv

    with open(path, newline="") as f:
        return {tuple(sorted((k, v) for k, v in row.items() if v)) for row in csv.DictReader(f)}


def test_ctrl_c_in_validation_saves_exits_130_and_resumes_exactly(tmp_path, shared):
    """Ctrl-C (SIGINT to the group) during epoch 1's validation: exit 130, last.ckpt, the resume command;
    the resumed run ends with the reference weights."""
    data, references = shared
    reference = references[42]
    marker = tmp_path / "paused"
    p = start(tmp_path, "das2f.train", *BASE, f"paths.data_dir={data}", "test=false", PAUSE,
              f"+callbacks.pause.marker={marker}", "+callbacks.pause.stage=val", "+callbacks.pause.step=1")
    workers = wait_for(marker, p, tmp_path)
    assert len(workers) >= 2
    os.killpg(p.pid, signal.SIGINT)
    code, out = finish(p, tmp_path)
    assert code == 130, out[-3000:]
    assert "torch threads: 1 of" in out and "fixed (threads=)" in out  # the entry point applied threads=1
    assert "stopped by SIGINT while training at epoch 1" in out and "resume=" in out, out[-2000:]
    assert "KeyboardInterrupt" not in out
    assert no_survivors(workers)
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    rows_before = csv_rows(run_dir / "csv" / "metrics.csv")
    from omegaconf import OmegaConf

    from das2f.runtime.errors import ConfigError
    from das2f.training.start import resolve_ckpt

    with pytest.raises(ConfigError, match=f"resume={run_dir}"):  # ckpt_path=last: refused, with the command to type
        resolve_ckpt(OmegaConf.create({"ckpt_path": "last", "paths": {"log_dir": str(tmp_path / "logs")}}))
    code, out = run(tmp_path, "das2f.train", f"resume={run_dir}")  # no other override: the run's own are reused
    assert code == 0, out[-3000:]
    assert same_weights(weights(run_dir / "checkpoints" / "last.ckpt"), reference)
    assert [d.name for d in (tmp_path / "logs" / "train" / "runs").iterdir()] == [run_dir.name]  # in place
    rows_after = csv_rows(run_dir / "csv" / "metrics.csv")
    assert len(rows_after) > len(rows_before) and rows_before <= rows_after  # the logged epochs before it kept
    assert "epoch 2/2" in out


def test_second_ctrl_c_stops_at_once(tmp_path, shared):
    """A step that would go on for 60 s after the first Ctrl-C: the second one ends the process at once, 130."""
    data, _ = shared
    marker = tmp_path / "paused"
    p = start(tmp_path, "das2f.train", *BASE, f"paths.data_dir={data}", "test=false", PAUSE,
              f"+callbacks.pause.marker={marker}", "+callbacks.pause.step=2", "+callbacks.pause.hold_s=60")
    workers = wait_for(marker, p, tmp_path)
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(1.0)
    assert p.poll() is None  # the first Ctrl-C waits for the step in hand
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)
    code, out = finish(p, tmp_path, timeout=30)
    assert code == 130 and time.monotonic() - t0 < 10, out[-2000:]
    assert "second Ctrl-C: stopping at once" in out
    assert no_survivors(workers)


@pytest.mark.slow  # by default: test_writing_last_ckpt_is_atomic_under_sigkill (the write under a kill)
def test_sigkill_loses_at_most_the_interval_and_a_broken_newest_checkpoint_falls_back(tmp_path, shared):
    """last.ckpt every second of training (every_s=1): a SIGKILL to the group loses at most that; the previous
    checkpoint is kept; with the newest cut short (a kill while it was written) resume= takes the one before,
    says so, and ends with the reference weights (a mid-epoch checkpoint resumes exactly)."""
    data, references = shared
    reference = references[42]
    marker = tmp_path / "paused"
    p = start(tmp_path, "das2f.train", *BASE, f"paths.data_dir={data}", "test=false", "callbacks.last_checkpoint.every_s=1",
              PAUSE, f"+callbacks.pause.marker={marker}", "+callbacks.pause.step=9", "+callbacks.pause.slow_s=0.3")
    workers = wait_for(marker, p, tmp_path)
    killed = time.time()
    os.killpg(p.pid, signal.SIGKILL)
    finish(p, tmp_path)
    assert no_survivors(workers)
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    last, prev = run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.prev.ckpt"
    step_last = torch.load(last, weights_only=True)["global_step"]
    step_prev = torch.load(prev, weights_only=True)["global_step"]
    assert 0 < step_prev < step_last < 9  # written within epoch 1 (12 steps), before the kill at step 9
    assert killed - last.stat().st_mtime < 1.0 + 2.5  # the interval, plus a step and its save
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 2])
    code, out = run(tmp_path, "das2f.train", f"resume={run_dir}")
    assert code == 0, out[-3000:]
    assert "truncated" in out and f"continuing from {prev}" in out, out[-3000:]
    assert same_weights(weights(last), reference)


def test_a_warning_signal_writes_last_ckpt_and_training_goes_on(tmp_path, shared):
    """SIGUSR2 (submitit's warning before the time limit; SIGUSR1: SLURM's --signal) to the group: last.ckpt
    at the step in hand, nobody stops (the workers ignore it), the run ends normally."""
    data, _ = shared
    marker = tmp_path / "paused"
    p = start(tmp_path, "das2f.train", *BASE, f"paths.data_dir={data}", "test=false", "trainer.max_epochs=1", PAUSE,
              f"+callbacks.pause.marker={marker}", "+callbacks.pause.step=2", "+callbacks.pause.seconds=3")
    workers = wait_for(marker, p, tmp_path)
    os.killpg(p.pid, signal.SIGUSR2)
    code, out = finish(p, tmp_path)
    assert code == 0, out[-3000:]
    assert "SIGUSR2: last.ckpt is written at the next training step; the run goes on" in out
    assert "last.ckpt (SIGUSR2 received) at epoch 1, step 2" in out, out[-3000:]
    assert no_survivors(workers)


@pytest.mark.slow  # by default: SIGTERM in training (the sweep test) and in preparation
def test_group_sigterm_in_test_phase_keeps_the_trained_checkpoint(tmp_path, shared):
    data, _ = shared
    marker = tmp_path / "paused"
    p = start(tmp_path, "das2f.train", *BASE, f"paths.data_dir={data}", "trainer.max_epochs=1", PAUSE,
              f"+callbacks.pause.marker={marker}", "+callbacks.pause.stage=test", "+callbacks.pause.step=1")
    wait_for(marker, p, tmp_path)
    os.killpg(p.pid, signal.SIGTERM)
    code, out = finish(p, tmp_path)
    assert code == 143, out[-3000:]
    assert "stopped by SIGTERM while testing" in out and "training is complete" in out and "das2f.eval ckpt_path=" in out
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert (run_dir / "checkpoints" / "epoch_000.ckpt").is_file() and not (run_dir / "metrics.json").exists()
    # resumed: no epoch is left to train; the test runs, and the validation metrics come from the checkpoint
    code, out = run(tmp_path, "das2f.train", f"resume={run_dir}")
    assert code == 0, out[-3000:]

    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert {"test/oa", "val/oa", "val/oa_best", "train/loss_epoch"} <= metrics.keys(), sorted(metrics)


def test_group_sigterm_during_preparation_leaves_no_half_written_file(tmp_path):
    data = tmp_path / "data"
    p = start(tmp_path, "das2f.prepare", "dataset.generate.size=192", f"paths.data_dir={data}")
    t0 = time.monotonic()
    while not list(data.rglob("*.tmp")) and p.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.01)
    assert p.poll() is None, "preparation ended before it was signalled"
    os.killpg(p.pid, signal.SIGTERM)
    code, out = finish(p, tmp_path)
    assert code == 143, out[-3000:]
    assert "stopped by SIGTERM" in out and "no half-written file is kept" in out
    assert not [f for f in data.rglob("*") if ".tmp" in f.name]
    assert not list(data.rglob("*.h5"))


def test_writing_last_ckpt_is_atomic_under_sigkill(tmp_path):
    """A process writing last.ckpt (with its rotation) over and over, killed at random moments: both files
    are always complete checkpoints."""
    script = tmp_path / "writer.py"
    script.write_text(f'''
import lightning as L, torch
from das2f.training.callbacks import LastCheckpoint

class M(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4_000_000))
    def training_step(self, batch, i):
        return self.w.sum() * 0
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)
    def train_dataloader(self):
        return [torch.zeros(1)] * 2
    def on_train_start(self):
        cb = LastCheckpoint({str(tmp_path / "ckpt")!r}, every_s=None)
        while True:
            cb.save(self.trainer)

L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
          enable_model_summary=False).fit(M())
''')
    from das2f.checkpoint import checkpoint_problem

    for delay in (0.4, 0.9, 1.7):
        p = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        last = tmp_path / "ckpt" / "last.ckpt"
        t0 = time.monotonic()
        while not (tmp_path / "ckpt" / "last.prev.ckpt").exists():
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            assert time.monotonic() - t0 < 120
            time.sleep(0.01)
        time.sleep(delay)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        for f in (last, tmp_path / "ckpt" / "last.prev.ckpt"):
            assert checkpoint_problem(f) is None
            assert torch.load(f, weights_only=True)["state_dict"]["w"].numel() == 4_000_000


def test_broken_checkpoints_are_one_line_and_exit_2(tmp_path, shared):
    """Truncated, not a checkpoint, an archive without a pickle, another project's checkpoint: ONE line naming
    the file and what is wrong, exit 2, from ckpt_path=, resume=, eval, predict and the converter."""
    from das2f.checkpoint import checkpoint_problem, load_checkpoint
    from das2f.runtime.errors import CheckpointError

    data, references = shared
    reference = references[42]
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {**reference, "big": torch.zeros(2_000_000)}, "hyper_parameters": {}}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:3_000_000])
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint\n")
    archive = tmp_path / "archive.ckpt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, other)
    assert checkpoint_problem(truncated) == "truncated: 3.0 MB of a zip archive without its end record (cut short while " \
                                           "written or copied)"
    assert checkpoint_problem(text).startswith("not a PyTorch checkpoint (torch.save writes a zip archive")
    assert checkpoint_problem(archive).startswith("not a PyTorch checkpoint (a zip archive without data.pkl")
    assert checkpoint_problem(other) is None
    with pytest.raises(CheckpointError, match=r"other.ckpt: not a das2f checkpoint"):
        load_checkpoint(other)
    (tmp_path / "empty").touch()
    assert checkpoint_problem(tmp_path / "empty").startswith("empty (0 bytes)")
    broken_run = tmp_path / "run"
    (broken_run / "checkpoints").mkdir(parents=True)
    (broken_run / "checkpoints" / "last.ckpt").write_bytes(truncated.read_bytes())
    # as processes, two entry points (a training entry and a map: the exit status and the one line); the same
    # errors, raised by the same code for resume=, eval and the converter, in-process
    for args, file in ((["das2f.train", f"resume={broken_run}"], broken_run / "checkpoints" / "last.ckpt"),
                       (["das2f.predict", f"ckpt_path={archive}"], archive)):
        code, out = run(tmp_path, *args)
        lines = [ln for ln in out.splitlines() if ln.strip() and "[INFO]" not in ln]  # the error, and nothing else
        assert code == 2, out[-2000:]
        assert len(lines) == 1 and str(file) in lines[0] and "Traceback" not in out, out[-2000:]
        assert "truncated" in lines[0] or "not a PyTorch checkpoint" in lines[0]
    from omegaconf import OmegaConf

    from das2f.checkpoint import main as convert_main
    from das2f.training.start import resolve_ckpt

    for ckpt in (truncated, text):  # ckpt_path= of train and eval
        with pytest.raises(CheckpointError, match=rf"{ckpt}: (truncated|not a PyTorch checkpoint)"):
            resolve_ckpt(OmegaConf.create({"ckpt_path": str(ckpt)}))
    with pytest.raises(SystemExit) as exit_info:
        convert_main([str(truncated), str(tmp_path / "new.ckpt")])
    assert exit_info.value.code == 2 and not (tmp_path / "new.ckpt").exists()
