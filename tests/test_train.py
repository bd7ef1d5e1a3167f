"""The experiment layer end to end on a tiny synthetic dataset: train, resume, eval, sweep + report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from das2f.runtime.config import CONF_DIR
from das2f.train import run

from .conftest import compose_in

ROOT = Path(__file__).resolve().parents[1]

SMALL = ["dataset.generate.size=48", "dataset.split.train=6", "dataset.split.val=3", "dataset.split.test=4",
         "model.net.stages=1", "model.net.d_state=4", "model.net.dt_rank=4", "model.net.hidden=32",
         "data.num_workers=0", "data.batch_size=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def make_cfg(tmp_path: Path, *overrides: str, name="train"):
    return compose_in(tmp_path, name, [*SMALL, *overrides])


def test_train_then_test_writes_results(tmp_path):
    metrics = run(make_cfg(tmp_path))
    out = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0 <= out["metrics"]["test/oa"] <= 1 and "test/kappa" in out["metrics"]
    assert len(out["test_confusion"]) == 8 and sum(map(sum, out["test_confusion"])) == 8 * 4
    assert Path(metrics["best_checkpoint"]).is_file() and "val/oa_best" in metrics
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()


def test_resume_and_eval_reproduce(tmp_path):
    run(make_cfg(tmp_path, "test=false"))
    ckpts = tmp_path / "out" / "checkpoints"
    assert {p.name for p in ckpts.iterdir()} == {"epoch_000.ckpt", "last.ckpt"}
    import torch

    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 0
    metrics = run(make_cfg(tmp_path, f"ckpt_path={ckpts / 'last.ckpt'}", "trainer.max_epochs=2"))
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 1  # continued, not restarted
    assert "epoch_001.ckpt" in {p.name for p in ckpts.iterdir()} or Path(metrics["best_checkpoint"]).is_file()
    again = run(make_cfg(tmp_path, f"ckpt_path={metrics['best_checkpoint']}", "train=false"))
    for k in ("test/oa", "test/aa", "test/kappa"):
        assert again[k] == pytest.approx(metrics[k], abs=1e-6)


def test_checkpoint_with_other_classes_is_refused(tmp_path):
    run(make_cfg(tmp_path, "test=false"))
    ckpt = tmp_path / "out" / "checkpoints" / "last.ckpt"
    cfg = make_cfg(tmp_path, f"ckpt_path={ckpt}", "train=false")
    with open_dict(cfg):
        cfg.model.class_names = ["x"] * 8
        cfg.dataset.classes = ["a", "b", "c", "d", "e", "f", "g", "h"]
    with pytest.raises(ValueError, match="prepared with classes|trained on classes"):
        run(cfg)


def test_config_mistakes_hydra_finds_are_one_short_message_and_exit_2():
    """A group option that does not exist (Hydra's list of the options kept) and a key not in the config: exit 2,
    a few lines, no traceback, before anything is prepared."""
    for arg, expected in (("fusion=max", "Could not find 'fusion/max'"), ("nosuchkey=1", "Could not override")):
        r = subprocess.run([sys.executable, "-m", "das2f.train", arg], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) <= 8 and ("aalf" in r.stderr) == (arg == "fusion=max"), r.stderr


def test_a_bug_inside_a_target_keeps_its_traceback_a_config_that_does_not_fit_is_one_line(capsys):
    """Hydra's instantiate wraps whatever a target raises. A target that does not exist or does not take a key is
    the user's mistake: one line, exit 2. An error raised inside the target's code is a bug: it propagates with its
    traceback (it was one line, exit 2, too: `+callbacks.x._target_=fractions.Fraction` with a zero denominator)."""
    import hydra
    from hydra.errors import InstantiationException

    from das2f.runtime.cli import mistakes_around

    def entry(cfg):
        return mistakes_around(lambda: hydra.utils.instantiate(cfg))()

    for cfg, expected in (({"_target_": "fractions.Fraction", "numerator": 1, "nosuchkey": 2}, "nosuchkey"),
                          ({"_target_": "fractions.Fractoin"}, "fractions.Fractoin")):
        with pytest.raises(SystemExit) as stop:
            entry(cfg)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and expected in err and len(err.strip().splitlines()) <= 3, err
    with pytest.raises(InstantiationException) as raised:
        entry({"_target_": "fractions.Fraction", "numerator": 1, "denominator": 0})
    assert isinstance(raised.value.__cause__, ZeroDivisionError)


@pytest.mark.slow  # the README's `-m fusion=aalf,sum seed=1,2,3` runs end to end by default (test_readme)
def test_cli_multirun_and_report(tmp_path):
    # as typed, from a directory that is not the project root, with no path override (size limits only)
    args = [sys.executable, "-m", "das2f.train", "-m", "fusion=aalf,sum", *SMALL, "logger=many"]
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (multirun,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    # separate jobs, separate logger runs: one offline W&B run per job, all in the sweep's group
    runs = [list((multirun / str(j) / "wandb").glob("offline-run-*")) for j in range(2)]
    assert all(len(r) == 1 for r in runs) and len({r[0].name.rsplit("-", 1)[1] for r in runs}) == 2
    assert all((multirun / str(j) / "tensorboard").is_dir() and (multirun / str(j) / "csv").is_dir() for j in range(2))
    r = subprocess.run([sys.executable, "-m", "das2f.report", "--latest"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = (multirun / "report.md").read_text().splitlines()
    assert lines[0].startswith("| fusion | seeds | test overlap | oa |")  # the one key that varies besides the seed
    rows = [ln for ln in lines if ln.startswith(("| aalf |", "| sum |"))]
    assert len(rows) == 2 and all("| 1 | 100.0 % |" in ln and "±" not in ln for ln in rows)  # one seed: values
    assert "test overlap: the share of test patches that read a pixel a training patch reads" in "\n".join(lines)
    assert "2 of 2 jobs finished" in "\n".join(lines)
    assert "oa_std" in (multirun / "report.csv").read_text().splitlines()[0]


@pytest.mark.slow  # the same with the parallel launcher runs by default (test_launcher)
def test_a_sweep_with_a_failing_job_exits_non_zero_and_its_report_lists_it(tmp_path):
    args = [sys.executable, "-m", "das2f.train", "-m", "+model.optimizer.eps=-1,1e-8", *SMALL]
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0, r.stderr[-3000:]
    (multirun,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert "Invalid epsilon value" in (multirun / "0" / "error.txt").read_text()
    r = subprocess.run([sys.executable, "-m", "das2f.report", "--latest"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (multirun / "report.md").read_text()
    assert "1 of 2 jobs finished" in text and "model.optimizer.eps=-1" in text and "Invalid epsilon value" in text


def test_same_seed_reproduces_metrics_and_weights(tmp_path):
    import torch

    results = []
    for name in ("a", "b"):
        cfg = make_cfg(tmp_path / name, "seed=7")
        with open_dict(cfg):
            cfg.paths.data_dir = str(tmp_path / "data")  # the same prepared files
        metrics = run(cfg)
        state = torch.load(metrics["best_checkpoint"], weights_only=True)["state_dict"]
        results.append((metrics, state))
    (m1, s1), (m2, s2) = results
    for k in ("val/oa", "test/oa", "test/kappa", "train/loss_epoch"):
        assert m1[k] == m2[k], k
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    other = run(make_cfg(tmp_path / "c", "seed=8"))
    s3 = torch.load(other["best_checkpoint"], weights_only=True)["state_dict"]
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)  # the seed matters


def test_wandb_offline_run_is_resumed_from_the_checkpoint(tmp_path, monkeypatch):
    import torch

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run(make_cfg(tmp_path, "logger=wandb", "test=false"))
    run_id = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)["das2f"]["wandb_run_id"]
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    run(make_cfg(tmp_path, "logger=wandb", f"ckpt_path={last}", "trainer.max_epochs=2"))
    runs = sorted((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)  # one run, continued


def test_sweep_configs_compose():

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        optuna = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
        slurm = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        default = compose("train", overrides=[], return_hydra_config=True)
    assert default.hydra.launcher._target_ == "hydra_plugins.das2f_launchers.launchers.SerialLauncher"
    assert optuna.hydra.sweeper.storage == f"sqlite:///{optuna.hydra.sweep.dir}/optuna.db"  # the study stays with it
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper") and optuna.optimized_metric.startswith("val/")
    assert "model.optimizer.lr" in optuna.hydra.sweeper.params and optuna.test is False
    assert slurm.hydra.launcher._target_ == "hydra_plugins.das2f_launchers.launchers.SlurmLauncher"
    assert slurm.hydra.launcher.gpus_per_node == 1 and slurm.hydra.launcher.max_num_timeout > 0
    # Hydra instantiates launchers only from its plugin registry: both must be found there
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Launcher)}
    assert {slurm.hydra.launcher._target_, default.hydra.launcher._target_,
            "hydra_plugins.das2f_launchers.launchers.LocalLauncher"} <= found


@pytest.mark.slow
def test_ddp_sim_metrics_match_single_process(tmp_path):
    metrics = run(make_cfg(tmp_path))
    ddp = run(make_cfg(tmp_path, "trainer=ddp_sim", f"ckpt_path={metrics['best_checkpoint']}", "train=false"))
    for k in ("test/oa", "test/aa", "test/kappa"):
        assert ddp[k] == pytest.approx(metrics[k], abs=1e-6), k


def test_fast_dev_run_trains_and_tests_one_batch(tmp_path):
    """(Also: a run that finishes in a directory holding an earlier error.txt, as a resumed job does, removes it:
    the sweep report then counts the job as finished.)"""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "error.txt").write_text("stopped by SIGTERM while training at epoch 1\n")
    metrics = run(make_cfg(tmp_path, "debug=fast"))
    assert not (tmp_path / "out" / "error.txt").exists()
    out = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "train/loss_epoch" in metrics and "test/oa" in metrics
    assert sum(map(sum, out["test_confusion"])) == 16  # fast_dev_run: exactly one test batch of 16


def test_resume_overrides_merge_without_a_second_append():
    """A resumed run composes its own overrides then the command's: a key given again takes the new value, and a
    `+key` said again (a requeued sweep job repeats its overrides) is not refused as a second append."""
    from das2f.training.start import merged_overrides

    saved = ["seed=42", "+callbacks.pause.step=3", "model.optimizer.lr=0.01"]
    assert merged_overrides(saved, ["+callbacks.pause.step=3", "seed=43", "resume=/r"]) == \
        ["model.optimizer.lr=0.01", "++callbacks.pause.step=3", "seed=43", "resume=/r"]
    assert merged_overrides(saved, ["callbacks.pause.step=5"]) == \
        ["seed=42", "model.optimizer.lr=0.01", "++callbacks.pause.step=5"]
    assert merged_overrides(saved, []) == saved
    # keys as Hydra reads them: a group choice, a deletion, a quoted value with "=" in it
    assert merged_overrides(["fusion=sum", "+a.b='x=1'"], ["~a.b", "fusion=aalf"]) == ["~a.b", "fusion=aalf"]
