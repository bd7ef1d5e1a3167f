"""The experiment layer end to end on a tiny synthetic dataset: train, resume, eval, sweep + report."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from das2f.config import CONF_DIR
from das2f.train import run

ROOT = Path(__file__).resolve().parents[1]

SMALL = ["dataset.generate.size=48", "dataset.split.train=6", "dataset.split.val=3", "dataset.split.test=4",
         "model.net.stages=1", "model.net.d_state=4", "model.net.dt_rank=4", "model.net.hidden=32",
         "data.num_workers=0", "data.batch_size=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def make_cfg(tmp_path: Path, *overrides: str, name="train"):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(name, overrides=[*SMALL, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.data_dir = str(tmp_path / "data")
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.paths.log_dir = str(tmp_path / "logs")
        del cfg["hydra"]
    return cfg


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

    assert torch.load(ckpts / "last.ckpt", weights_only=False)["epoch"] == 0
    metrics = run(make_cfg(tmp_path, "ckpt_path=last", "trainer.max_epochs=2"))
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["epoch"] == 1  # continued, not restarted
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


def test_unknown_group_option_is_refused_before_training():
    r = subprocess.run([sys.executable, "-m", "das2f.train", "fusion=max"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "Could not find 'fusion/max'" in r.stderr and "aalf" in r.stderr


def test_cli_multirun_and_report(tmp_path):
    args = [sys.executable, "-m", "das2f.train", "-m", "fusion=aalf,sum", "seed=1,2", *SMALL,
            f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs", "test=true"]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    (multirun,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    r = subprocess.run([sys.executable, "-m", "das2f.report", str(multirun)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = (multirun / "report.md").read_text().splitlines()
    rows = [ln for ln in lines if ln.startswith("| synthetic")]
    assert len(rows) == 2 and all("| 2 |" in ln and "±" in ln for ln in rows)
    assert "oa_std" in (multirun / "report.csv").read_text().splitlines()[0]
