"""The prepared-data store of a dataset: one folder per preparation, ``<prepared_dir>/<fingerprint>/`` (see
das2f.data.prepare.split_paths). Listing them (size, rules, the runs that read them) and removing the ones no
run needs: ``das2f prepare dataset=NAME store=list`` / ``store=prune``."""
from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..runtime.config import plain
from ..runtime.locks import directory_lock
from .hdf5 import PatchFileError, read_attrs
from .prepare import split_paths


def readers(log_dir: str | Path) -> dict[str, list[Path]]:
    """Each prepared folder named by a run's metrics.json under ``log_dir`` -> those runs' directories."""
    out: dict[str, list[Path]] = {}
    for metrics in sorted(Path(log_dir).glob("**/metrics.json")):
        try:
            folder = (json.loads(metrics.read_text()).get("split") or {}).get("prepared")
        except (OSError, ValueError):
            continue
        if folder:
            out.setdefault(str(Path(folder).resolve()), []).append(metrics.parent)
    return out


def preparations(cfg: dict, log_dir: str | Path) -> list[dict]:
    """Every preparation of the dataset: its folder, bytes, date, rules (split, blocks, seed, patch), whether the
    current config reads it, and the runs under ``log_dir`` that read it."""
    cfg = dict(plain(cfg))
    root = Path(cfg["prepared_dir"])
    current = split_paths(cfg)["train"].parent.resolve()
    used = readers(log_dir)
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        files = list(folder.glob("*"))
        try:
            attrs = read_attrs(folder / "train.h5")
            rule = (f"split {json.dumps(attrs['split_rule'])}, {attrs['split_protocol']}"
                    f"{' ' + json.dumps(attrs['split_blocks']) if attrs['split_blocks'] else ''}, seed {attrs['split_seed']}, "
                    f"patch {attrs['ms_patch']}")
        except PatchFileError as err:
            rule = f"unreadable: {err}"
        found.append({"folder": folder, "bytes": sum(f.stat().st_size for f in files if f.is_file()),
                      "modified": datetime.fromtimestamp(max((f.stat().st_mtime for f in files), default=0)),
                      "rule": rule, "current": folder.resolve() == current,
                      "runs": used.get(str(folder.resolve()), [])})
    return found


def show(cfg: dict, log_dir: str | Path, console: Console | None = None) -> list[dict]:
    console = console or Console()
    found = preparations(cfg, log_dir)
    table = Table(title=f"{cfg['name']}: preparations in {cfg['prepared_dir']}")
    for col in ("folder", "MB", "written", "rules", "read by"):
        table.add_column(col)
    for p in found:
        who = ("this config" if p["current"] else "") + (f"{', ' if p['current'] else ''}{len(p['runs'])} run(s)"
                                                         if p["runs"] else "")
        table.add_row(p["folder"].name, f"{p['bytes'] / 2**20:.1f}", f"{p['modified']:%Y-%m-%d %H:%M}", p["rule"],
                      who or "nothing: `store=prune` removes it")
    console.print(table)
    return found


def prune(cfg: dict, log_dir: str | Path, console: Console | None = None) -> list[Path]:
    """Remove the preparations that neither the current config nor any run under ``log_dir`` reads (under the
    dataset's preparation lock: never one being written)."""
    console = console or Console()
    cfg = dict(plain(cfg))
    with directory_lock(cfg["prepared_dir"], f"pruning dataset {cfg['name']}", float(cfg.get("lock_timeout_s", 7200))):
        gone = [p for p in preparations(cfg, log_dir) if not p["current"] and not p["runs"]]
        for p in gone:
            shutil.rmtree(p["folder"])
            console.print(f"removed {p['folder']} ({p['bytes'] / 2**20:.1f} MB; {p['rule']})", highlight=False)
    console.print(f"{len(gone)} preparation(s) removed; kept: the current config's and those runs under {log_dir} read")
    return [p["folder"] for p in gone]
