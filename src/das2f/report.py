"""`python -m das2f.report DIR [DIR ...] | --latest`: the paper's tables from multirun outputs.

One row per configuration (dataset, backbone, fusion, cmda, stages, dominant), mean ± std over
seeds of OA, AA, kappa and per-class accuracy; the best mean of each column in bold. Writes
report.md and report.csv into the first directory (or --out).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from .metrics import METRICS, format_metric, metric_scale
from .runtime.errors import EXIT_USER_ERROR, MissingFileError, UserError

KEYS = ("dataset", "backbone", "fusion", "cmda", "stages", "dominant")


def collect(dirs: list[Path]) -> list[dict]:
    runs = []
    for d in dirs:
        runs += [json.loads(p.read_text()) for p in sorted(Path(d).rglob("metrics.json"))]
    if not runs:
        raise MissingFileError(f"no metrics.json under {[str(d) for d in dirs]}: did the runs finish their test?")
    return runs


def table(runs: list[dict]) -> tuple[list[str], list[list]]:
    groups = defaultdict(list)
    for r in runs:
        groups[tuple(r[k] for k in KEYS)].append(r)
    class_names = runs[0]["class_names"]
    metrics = [f"test/{m}" for m in METRICS] + [f"test/acc_{c}" for c in class_names]
    header = [*KEYS, "seeds", *(m.split("/")[1] for m in metrics)]
    rows = []
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        row = [*key, len(rs)]
        for m in metrics:
            vals = np.array([r["metrics"][m] for r in rs if r["metrics"].get(m) is not None], dtype=float)
            row.append((vals.mean(), vals.std(ddof=1) if len(vals) > 1 else float("nan")) if len(vals) else None)
        rows.append(row)
    return header, rows


def provenance(dirs: list[Path], runs: list[dict]) -> list[str]:
    """How the table was made: the sweep command(s) (from Hydra's multirun.yaml), date, machine, wall time."""
    from omegaconf import OmegaConf

    lines = []
    for d in dirs:
        mr = Path(d) / "multirun.yaml"
        if mr.is_file():
            overrides = OmegaConf.load(mr).hydra.overrides.task
            lines.append(f"- command: `python -m das2f.train -m {' '.join(overrides)}`")
    walls = [r["wall_seconds"] for r in runs if r.get("wall_seconds")]
    stamps = [p.stat().st_mtime for d in dirs for p in Path(d).rglob("metrics.json")]
    if stamps:
        import datetime as dt

        lines.append(f"- finished: {dt.datetime.fromtimestamp(max(stamps)):%Y-%m-%d %H:%M}; {len(runs)} runs")
    m = next((r["machine"] for r in runs if r.get("machine")), None)
    if m:
        lines.append(f"- machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']} with {m['torch_threads']} threads, "
                     f"GPU: {m['gpu'] or 'none'}")
    if walls:
        lines.append(f"- wall time: {sum(walls) / 60:.1f} min in all, {min(walls) / 60:.1f}-{max(walls) / 60:.1f} min per run "
                     "(data preparation, training, test)")
    return lines


def write(header, rows, out: Path, notes: list[str] | None = None) -> tuple[Path, Path]:
    n_keys = len(KEYS) + 1
    best = [max((r[i][0] for r in rows if r[i] is not None), default=None) for i in range(n_keys, len(header))]
    fmt = lambda v, i: "" if v is None else format_metric(header[i], v[0], v[1])  # noqa: E731
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(c) for c in r[:n_keys]]
        for i in range(n_keys, len(header)):
            s = fmt(r[i], i)
            cells.append(f"**{s}**" if r[i] is not None and r[i][0] == best[i - n_keys] and len(rows) > 1 else s)
        md.append("| " + " | ".join(cells) + " |")
    md_path, csv_path = out / "report.md", out / "report.csv"
    text = "\n".join(md) + "\n\nmean ± std over seeds (std: sample, n-1; nan with one seed); bold: best mean per column.\n"
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    md_path.write_text(text)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(header[:n_keys]) + [f"{h}_{s}" for h in header[n_keys:] for s in ("mean", "std")])
        for r in rows:
            cells = zip(header[n_keys:], r[n_keys:])
            w.writerow(list(r[:n_keys]) + [x * metric_scale(h) if v is not None else ""
                                           for h, v in cells for x in (v if v is not None else (0, 0))])
    return md_path, csv_path


def latest_multirun(root: Path = Path("logs")) -> Path:
    dirs = sorted(root.glob("*/multiruns/*"), key=lambda p: p.stat().st_mtime)
    if not dirs:
        raise MissingFileError(f"no multirun directory under {root}/*/multiruns/")
    return dirs[-1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--latest", action="store_true", help="the newest logs/*/multiruns/* directory")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        dirs = args.dirs or ([latest_multirun()] if args.latest else [])
        if not dirs:
            ap.error("give multirun directories or --latest")
        runs = collect(dirs)
    except UserError as err:
        print(f"das2f.report: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    header, rows = table(runs)
    out = args.out or dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = write(header, rows, out, provenance(dirs, runs))
    print(md.read_text())
    print(f"written: {md} and {csv_path}")


if __name__ == "__main__":
    main()
