"""The sweep report (das2f.report) on job directories as das2f.train writes them: rows by every config key
that differs (not a fixed list), the seed the only key averaged over, duplicates flagged, failed jobs
listed, N of M jobs, the paired difference against a baseline."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from das2f.report import collect, main, paired, table

CLASSES = ["a", "b"]


def job(sweep: Path, n: int, seed: int, lr: float, oa: float | None, *, threads: int = 2, error: str | None = None,
        overrides: list[str] | None = None, split: dict | None = None, repro: dict | None = None,
        dataset: dict | None = None, net: dict | None = None, baseline: str | None = None) -> None:
    d = sweep / str(n)
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides or [f"model.optimizer.lr={lr}", f"seed={seed}"]), d / ".hydra" / "overrides.yaml")
    cfg = {"seed": seed, "threads": threads, "paths": {"output_dir": str(d)}, "data": {"seed": seed, "num_workers": 2},
           "dataset": dataset or {"name": "synthetic"}, "model": {"optimizer": {"lr": lr}, "net": net or {"stages": 1}},
           "baseline": baseline}
    OmegaConf.save(OmegaConf.create(cfg), d / "config.yaml")
    if oa is not None:
        metrics = {"test/oa": oa, "test/aa": oa, "test/kappa": oa - 0.1, "test/f1": oa, "test/acc_a": oa, "test/acc_b": None}
        record = {"seed": seed, "class_names": CLASSES, "metrics": metrics, "split": split, "reproducibility": repro}
        (d / "metrics.json").write_text(json.dumps({k: v for k, v in record.items() if v is not None}))
    if error:
        (d / "error.txt").write_text(error + "\nmore\n")


def multirun(sweep: Path, task: list[str], sweeper: dict | None = None) -> None:
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": task}, "sweeper": sweeper or {}}}), sweep / "multirun.yaml")


def test_configurations_that_differ_in_any_key_are_separate_rows(tmp_path):
    """The reported failure: two learning rates, one seed each, were ONE row "seeds 2" averaged. Now: a row per
    learning rate, the job that failed listed with its error, 2 of 3 jobs finished; threads (how it ran) and
    the seed are not reasons for a row."""
    sweep = tmp_path / "sweep"
    job(sweep, 0, 42, 0.01, 0.40, threads=1)
    job(sweep, 1, 42, 0.0001, 0.02, threads=2)
    job(sweep, 2, 42, -1.0, None, error="ValueError: Invalid learning rate: -1.0")
    multirun(sweep, ["model.optimizer.lr=0.01,0.0001,-1"])
    main([str(sweep)])
    text = (sweep / "report.md").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| optimizer.lr | seeds | oa | aa | kappa | f1 | acc_a | acc_b |")
    rows = lines[1:3]
    assert rows[0].startswith("| 0.0001 | 1 | 2.00 |") and rows[1].startswith("| 0.01 | 1 | **40.00** |")
    assert "±" not in "".join(rows) and "nan" not in text  # one seed: the value alone
    assert "2 of 3 jobs finished" in text
    assert f"{sweep / '2'}: `model.optimizer.lr=-1.0 seed=42`: ValueError: Invalid learning rate: -1.0" in text
    csv = (sweep / "report.csv").read_text().splitlines()
    assert csv[0].startswith("model.optimizer.lr,seeds,oa_mean,oa_std") and len(csv) == 3


def test_seeds_are_averaged_duplicates_flagged_and_the_paired_difference_tested(tmp_path):
    sweep = tmp_path / "sweep"
    n = 0
    for seed, (base, better, same) in zip((1, 2, 3, 4), ((0.80, 0.90, 0.81), (0.82, 0.93, 0.80), (0.79, 0.88, 0.80),
                                                          (0.81, 0.91, 0.82))):
        for lr, oa in ((0.001, base), (0.002, better), (0.003, same)):
            job(sweep, n, seed, lr, oa)
            n += 1
    job(sweep, n, 4, 0.001, 0.50)  # the same configuration and seed again: flagged, counted once
    multirun(sweep, ["model.optimizer.lr=0.001,0.002,0.003", "seed=1,2,3,4"])
    runs, asked, optuna = collect([sweep])
    assert asked == 13 and not optuna  # 12 asked by the sweep, plus the duplicate
    keys, rows = table(runs)
    assert keys == ["model.optimizer.lr"] and [r["values"] for r in rows] == [("0.001",), ("0.002",), ("0.003",)]
    assert rows[0]["seeds"] == [1, 2, 3, 4] and rows[0]["duplicates"] == {4: 2}
    assert rows[0]["stats"]["test/oa"][0] == pytest.approx((0.80 + 0.82 + 0.79 + 0.81) / 4)  # not the 0.50 duplicate
    what, diffs = paired(rows, keys, "model.optimizer.lr=0.001")
    assert paired(rows, keys, "optimizer.lr=0.001")[0] == what == "optimizer.lr=0.001"  # the column's name works too
    (r2, b2, n2, m2, lo2, hi2), (r3, b3, n3, m3, lo3, hi3) = diffs
    assert b2 is b3 is rows[0]
    assert n2 == 4 and m2 == pytest.approx(0.10) and lo2 > 0  # a real improvement (the 0.50 duplicate not taken)
    assert lo3 < 0 < hi3  # within the seed spread: no difference shown
    main([str(sweep), "--baseline", "model.optimizer.lr=0.001"])
    text = (sweep / "report.md").read_text()
    assert "13 of 13 jobs finished" in text and "(!)" in text and "seed 4: 2 runs" in text
    assert "includes 0: no difference shown" in text and "excludes 0" in text


def test_a_sweep_with_no_list_of_values_counts_its_jobs(tmp_path):
    """A glob over a config group has no list of values to count: the jobs found are the jobs asked."""
    sweep = tmp_path / "sweep"
    job(sweep, 0, 1, 0.1, 0.5, overrides=["fusion=aalf"])
    job(sweep, 1, 1, 0.1, 0.6, overrides=["fusion=sum"])
    multirun(sweep, ["fusion=glob(*)"])
    assert collect([sweep])[1] == 2
    multirun(sweep, ["fusion=aalf,sum,max,linear"])
    assert collect([sweep])[1] == 4


def test_a_bad_baseline_is_one_line(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    job(sweep, 0, 1, 0.1, 0.5)
    job(sweep, 1, 1, 0.2, 0.6)
    with pytest.raises(SystemExit) as e:
        main([str(sweep), "--baseline", "model.optimizer.lr=0.3"])
    assert e.value.code == 2 and "no row has model.optimizer.lr=0.3 (found ['0.1', '0.2'])" in capsys.readouterr().err


def test_optuna_trials_are_sorted_by_the_objective(tmp_path):
    sweep = tmp_path / "sweep"
    for n, (lr, val) in enumerate(((0.001, 0.7), (0.002, 0.9), (0.003, 0.8))):
        d = sweep / str(n)
        job(sweep, n, 42, lr, None)
        (d / "metrics.json").write_text(json.dumps({"seed": 42, "class_names": CLASSES, "metrics": {"val/oa_best": val}}))
    multirun(sweep, [], {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "n_trials": 5})
    runs, asked, optuna = collect([sweep])
    assert optuna and asked == 5
    _, rows = table(runs, optuna=True)
    assert [r["values"][0] for r in rows] == ["0.002", "0.003", "0.001"]
    main([str(sweep)])
    assert "3 of 5 jobs finished" in (sweep / "report.md").read_text()


def test_split_protocol_column_overlap_and_reproducibility_flags(tmp_path):
    """Runs under a pixel and a block split: one column named by the protocol (not the dataset.split* keys that
    part the runs alike), the test overlap per row, the paired difference against --baseline protocol=pixels, and
    a row whose runs differ in how they could be repeated (deterministic or not) flagged (~)."""
    sweep = tmp_path / "sweep"
    pixels = {"protocol": "pixels", "blocks": None, "overlap": {"val": 1.0, "test": 0.998}}
    blocks = {"protocol": "blocks", "blocks": {"side": 28, "folds": None, "fold": None},
              "overlap": {"val": 0.0, "test": 0.0}}
    fixed = {"deterministic": True, "deterministic_algorithms": True, "setting": "2", "threads": [2, 2]}
    adaptive = {"deterministic": False, "deterministic_algorithms": False, "setting": "auto", "threads": [1, 2]}
    tiles = {"protocol": "scenes", "blocks": None, "overlap": {"val": 0.0, "test": 0.0}}
    n = 0
    for split, data, oas in ((pixels, {"name": "g", "split_blocks": None}, (0.80, 0.82, 0.84)),
                             (blocks, {"name": "g", "split_blocks": 28}, (0.70, 0.71, 0.75)),
                             (tiles, {"name": "g", "split_blocks": None, "tile_split": {"train": 14}}, (0.6, 0.6, 0.6))):
        for seed, oa in zip((1, 2, 3), oas):
            repro = adaptive if split is blocks and seed == 3 else fixed
            job(sweep, n, seed, 0.01, oa, split=split, repro=repro, dataset=data)
            n += 1
    multirun(sweep, ["dataset.split_blocks=null,28", "seed=1,2,3"])  # (one dir for the three protocols' runs)
    main([str(sweep), "--baseline", "protocol=pixels"])
    text = (sweep / "report.md").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    # split_blocks and tile_split are determined by the protocol: no columns of their own
    assert lines[0].startswith("| protocol | seeds | test overlap | oa |")
    assert lines[1].startswith("| blocks 28 | 3 (~) | 0.0 % | 72.00 ± 2.65 |")
    assert lines[2].startswith("| pixels | 3 | 99.8 % | **82.00 ± 2.00** |")
    assert "| protocol=blocks 28 | protocol=pixels | 3 | -10.00 |" in text
    assert "(~) runs of one configuration that differ in how they could be repeated" in text
    assert "deterministic, 2 threads" in text and "not deterministic, 1-2 threads" in text
    assert "8 of 9 runs deterministic=true" in text


def test_a_command_line_that_narrows_an_experiments_sweep_is_counted_as_hydra_runs_it(tmp_path):
    """The experiment sweeps backbone=spvm,cnn and seed=1,2,3 (6 jobs); the command line gives seed=1: Hydra runs
    2 jobs (the command line's value replaces the experiment's for that key), and the report says 2 planned."""
    sweep = tmp_path / "sweep"
    job(sweep, 0, 1, 0.1, 0.5)
    job(sweep, 1, 1, 0.2, 0.6)
    multirun(sweep, ["experiment=compare", "seed=1"], sweeper={"params": {"backbone": "spvm,cnn", "seed": "1,2,3"}})
    assert collect([sweep])[1] == 2
    multirun(sweep, ["experiment=compare"], sweeper={"params": {"backbone": "spvm,cnn", "seed": "1,2,3"}})
    assert collect([sweep])[1] == 6


def test_a_baseline_key_pairs_each_row_within_the_other_keys_and_the_figure_is_written(tmp_path):
    """Nets x datasets, the sweep's own baseline (net=das2f, from its config): each net against DAS²F on the same
    dataset (not every row against one row); keys one net has and the other has not do not part the pairs."""
    import csv

    sweep = tmp_path / "sweep"
    n = 0
    for seed in (1, 2, 3):
        for data, gain in (("one", 0.10), ("two", -0.20)):
            for name, net, oa in (("das2f", {"name": "das2f", "stages": 1}, 0.5 + 0.01 * seed),
                                  ("mft", {"name": "mft", "width": 64}, 0.5 + 0.01 * seed + gain + 0.001 * seed)):
                job(sweep, n, seed, 0.001, oa, dataset={"name": data}, net=net, baseline="net=das2f",
                    overrides=[f"net={name}", f"dataset={data}", f"seed={seed}"])
                n += 1
    multirun(sweep, ["net=das2f,mft", "dataset=one,two", "seed=1,2,3"])
    main([str(sweep)])
    text = (sweep / "report.md").read_text()
    assert "net=das2f with the same other columns" in text
    lines = text.splitlines()
    assert lines[0] == "| dataset.name | net | seeds | oa | aa | kappa | f1 | acc_a | acc_b |"  # no column per net's key
    assert "| dataset.name=one, net=mft | dataset.name=one, net=das2f | 3 | +10.20 | [+9.95, +10.45] | excludes 0 |" in lines
    assert "| dataset.name=two, net=mft | dataset.name=two, net=das2f | 3 | -19.80 | [-20.05, -19.55] | excludes 0 |" in lines
    figure = sweep / "report.png"
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert len(list(csv.reader((sweep / "report.csv").read_text().splitlines()))) == 5
