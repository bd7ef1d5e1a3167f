"""The package layout: no import cycle among das2f's modules, the `das2f` command lists every task."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").relative_to(SRC).parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every import of every das2f module (module level and inside functions), resolved to das2f modules."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # das2f.models.DAS2F -> das2f.models
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not an edge
                    graph[name].add(t)
    return graph


def test_no_import_cycle():
    graph = import_graph()
    assert "das2f.data.windows" in graph and "das2f.training.module" in graph
    cycles = []
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # packages' __init__ re-exports (das2f.models -> das2f.models.das2f -> ...) are part of the graph too
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_data_layer_is_handed_the_signal_policy_never_imports_it():
    graph = import_graph()
    importers = sorted(m for m, deps in graph.items() if m.startswith("das2f.data") and "das2f.runtime.signals" in deps)
    assert not importers, importers


def test_src_uses_public_apis_only():
    """No private attribute of Lightning, Hydra, submitit or numba, no /proc parsing (psutil does it); the NVIDIA
    driver check of the launcher and the benchmark's peak-memory readings are the stated exceptions."""
    import re

    private = re.compile(r"_signal_connector|\._process\b|_return_value|_max_workers|/proc/")
    found = [f"{path.relative_to(SRC)}:{n}: {line.strip()}" for path in SRC.rglob("*.py") if "bench" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if private.search(line) and "/proc/driver/nvidia" not in line]
    assert not found, "\n".join(found)


def test_das2f_command_lists_the_tasks():
    out = subprocess.run([sys.executable, "-m", "das2f", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for task in ("train", "eval", "predict", "prepare", "report", "checkpoint"):
        assert f"  {task} " in out.stdout
    bad = subprocess.run([sys.executable, "-m", "das2f", "fit"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown command 'fit'" in bad.stderr


def test_old_class_paths_still_instantiate(caplog):
    """A user's config (or a checkpoint's hyper-parameters) naming a class by its path before the package
    move is rewritten to the new path with a warning, and instantiates."""
    import hydra
    from omegaconf import OmegaConf

    from das2f.runtime.config import update_moved_targets

    cfg = OmegaConf.create({"cb": {"_target_": "das2f.callbacks.EpochSummary", "every_s": 5},
                            "net": {"_target_": "das2f.models.DAS2F"}, "lst": [{"_target_": "das2f.loggers.CSVLogger"}]})
    OmegaConf.set_struct(cfg, True)
    changed = update_moved_targets(cfg)
    assert cfg.cb._target_ == "das2f.training.callbacks.EpochSummary"
    assert cfg.lst[0]._target_ == "das2f.training.loggers.CSVLogger"
    assert cfg.net._target_ == "das2f.models.DAS2F" and len(changed) == 2
    assert "das2f.callbacks.EpochSummary -> das2f.training.callbacks.EpochSummary" in caplog.text
    assert hydra.utils.instantiate(cfg.cb).every_s == 5


@pytest.mark.slow  # builds and installs a wheel, then trains: about 20 s
def test_a_wheel_carries_its_configs_and_takes_a_users_config_dir(tmp_path):
    """A wheel built from the checkout, installed elsewhere and run from a directory outside the checkout: its
    configs come with it (`das2f train --cfg job`), and a dataset config from a user's own directory
    (`--config-dir`) trains and tests."""
    import os
    import shutil

    root = SRC.parent
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(root)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("das2f-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                              str(tmp_path / "site"), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (tmp_path / "site" / "das2f" / "conf" / "train.yaml").is_file()
    work = tmp_path / "work"
    (work / "myconf" / "dataset").mkdir(parents=True)
    mine = (root / "conf" / "dataset" / "synthetic.yaml").read_text().replace("name: synthetic", "name: mine")
    (work / "myconf" / "dataset" / "mine.yaml").write_text(mine)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    shutil.rmtree(tmp_path / "dist")

    def das2f(*args):
        return subprocess.run([sys.executable, "-m", "das2f", *args], cwd=work, env=env, capture_output=True, text=True)

    r = das2f("train", "--cfg", "job")
    assert r.returncode == 0 and "name: synthetic" in r.stdout, r.stderr[-3000:]
    assert das2f("train", "--cfg", "job", "dataset=mine").returncode != 0  # without --config-dir: no such dataset
    r = das2f("train", "--config-dir", str(work / "myconf"), "dataset=mine", "dataset.generate.size=48",
              "dataset.split.train=6", "dataset.split.val=3", "dataset.split.test=4", "model.net.hidden=32",
              "model.net.d_state=4", "model.net.dt_rank=4", "data.num_workers=0", "trainer.max_epochs=1", "threads=1")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (metrics,) = work.glob("logs/train/runs/mine_*/metrics.json")
    import json

    summary = json.loads(metrics.read_text())
    assert summary["dataset"] == "mine" and "test/oa" in summary["metrics"]
    assert str(root) not in (work / "logs").joinpath(metrics.parent.relative_to(work / "logs"), "config.yaml").read_text()


def test_make_clean_leaves_raw_data_and_tracked_files(tmp_path):
    """`make clean` removes what das2f generated (prepared files, the generated scene, logs) and never a user's raw
    data: the dataset template puts it under data/<name>/raw."""
    made = ["data/mydata/raw/ms.tif", "data/mydata/prepared/abc123/train.h5", "data/synthetic/raw/ms.npy",
            "logs/train/runs/x/metrics.json", "bench/gpu-2026-12-04.md", "bench/results/bench.md"]
    for name in made:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    r = subprocess.run(["make", "-s", "-f", str(SRC.parent / "Makefile"), "clean"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == \
        ["bench/gpu-2026-12-04.md", "data/mydata/raw/ms.tif"]
