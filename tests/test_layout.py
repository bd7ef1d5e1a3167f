"""The package layout: no import cycle among das2f's modules, the `das2f` command lists every task."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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
