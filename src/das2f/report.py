"""`python -m das2f.report DIR [DIR ...] | --latest [--baseline KEY=VALUE]`: the tables of sweeps.

A row is a configuration: the runs are grouped by EVERY config key in which their resolved configs
(each run's config.yaml) differ, taken from the runs themselves, except the keys that say where or how a
job ran rather than what it computed (``IGNORED``) and the seed, the only key averaged over. Each varying
key is a column. A row gives mean ± std over its distinct seeds (one seed: the value alone); runs that
share a seed and a configuration are flagged, never averaged as if they were seeds. Jobs that failed or
left no metrics are listed under the table with their overrides and the first line of their error, and
the report says "N of M jobs finished", M taken from the sweep itself (its multirun.yaml: the sweep's
values, or an Optuna sweep's trial count). An Optuna sweep's trials are sorted by the objective.

Against a baseline row (the first, or ``--baseline KEY=VALUE``: the row with that value and the same value in
every other column, so a sweep over nets x datasets compares within each dataset) each row gets its paired
difference in test OA over the seeds both share: mean and 95 % confidence interval (Student's t), and whether the
interval includes zero (no difference shown).

Each row also shows its test overlap (the share of test patches reading a pixel a training patch reads, from
the runs' metrics.json); runs under different split protocols get a ``protocol`` column; the provenance counts
the deterministic runs, and a row whose runs differ in it is flagged (~).

Writes report.md, report.csv and report.png (a forest plot: each row's seeds and mean, its paired difference
with the 95 % interval) into the first directory (or --out). An experiment names its baseline with its
``baseline`` key (experiment=zoo: ``net=das2f``); ``--baseline`` overrides it.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from .metrics import METRICS, format_metric, metric_scale
from .runtime.cli import recorded_failure
from .runtime.errors import EXIT_USER_ERROR, ConfigError, MissingFileError, UserError

SEED_KEYS = ("seed", "data.seed")  # the seed and the data module's copy of it: what a row averages over
# Keys that say where or how a job ran, not what it computed: never a reason for a separate row.
IGNORED = (
    "paths.", "hydra.", "logger.", "callbacks.", "threads", "deterministic", "trainer.deterministic",
    "data.num_workers", "model.net.scan_backend",
    "model.compile", "trainer.enable_progress_bar", "trainer.default_root_dir", "trainer.accelerator",
    "trainer.log_every_n_steps", "task_name", "tags", "resume", "ckpt_path", "dataset.raw_dir",
    "dataset.prepared_dir", "dataset.source_dir", "dataset.scenes", "dataset.tiles.root", "dataset.layout",
    "dataset.lock_timeout_s", "dataset.shuffle_memory_mb", "baseline",
)
MAIN = "test/oa"  # the metric of the paired differences


def ignored(key: str) -> bool:
    return key in SEED_KEYS or any(key == p.rstrip(".") or key.startswith(p) for p in IGNORED)


def flatten(node, prefix: str = "") -> dict[str, str]:
    """A resolved config as {dotted key: value as text}."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else str(node)}


def job_dirs(d: Path) -> list[Path]:
    """The job directories of a multirun (0, 1, ...), or the directory itself for a single run."""
    jobs = sorted((p for p in d.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return jobs or [d]


def load_run(job: Path) -> dict:
    """One job: its metrics (None when it left none), flattened config, overrides and error."""
    from omegaconf import OmegaConf

    run: dict = {"dir": job, "metrics": None, "config": {}, "overrides": [], "error": None}
    overrides = job / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        run["overrides"] = list(OmegaConf.load(overrides))
    if (job / "metrics.json").is_file():
        summary = json.loads((job / "metrics.json").read_text())
        run.update(metrics=summary["metrics"], class_names=summary.get("class_names", []),
                   wall_seconds=summary.get("wall_seconds"), machine=summary.get("machine"), seed=summary.get("seed"),
                   split=summary.get("split"), mode=reproducibility(summary),
                   deterministic=(summary.get("reproducibility") or {}).get("deterministic"))
    if (job / "config.yaml").is_file():
        config = OmegaConf.to_container(OmegaConf.load(job / "config.yaml"), resolve=False)
        # the split protocol first: runs that differ in it get a readable column ("blocks 28", "pixels"), and the
        # dataset.split* keys that part them alike are the same column (see varying_keys)
        protocol = {"protocol": split_protocol(run["split"])} if run.get("split") else {}
        flat = flatten(config)
        if flat.get("model.net._target_") == "das2f.models.DAS2F":  # a run written before the net group: DAS²F
            flat.setdefault("model.net.name", "das2f")
        run["config"] = {**protocol, **flat}
        run["seed"] = run.get("seed", config.get("seed"))
    error = recorded_failure(job)
    if error is not None:
        run["error"] = error or "failed"
    return run


def split_protocol(split: dict) -> str:
    """A run's split protocol in words, from its metrics.json: pixels, scenes, blocks 28, blocks 28 fold 2/5."""
    blocks = split.get("blocks") or {}
    words = []
    for part in split["protocol"].split("+"):
        if part == "blocks" and blocks:
            part += f" {blocks['side']}" + (f" fold {blocks['fold']}/{blocks['folds']}" if blocks.get("folds") else "")
        words.append(part)
    return "+".join(words)


def reproducibility(summary: dict) -> str | None:
    """How a run could be repeated, in words: deterministic (same digits again) or not, and its threads."""
    r = summary.get("reproducibility")
    if r is None:
        return None
    lo, hi = r["threads"]
    threads = f"{lo} threads" if lo == hi else f"{lo}-{hi} threads"
    return f"{'deterministic' if r['deterministic'] else 'not deterministic'}, {threads}"


def sweep_size(d: Path) -> tuple[int | None, bool]:
    """(the number of jobs the sweep asked for, whether it is an Optuna sweep) from its multirun.yaml."""
    from omegaconf import OmegaConf

    path = d / "multirun.yaml"
    if not path.is_file():
        return None, False
    hydra = OmegaConf.load(path).hydra
    sweeper = OmegaConf.to_container(hydra.sweeper, resolve=False) if "sweeper" in hydra else {}
    if "optuna" in str(sweeper.get("_target_", "")).lower():
        return int(sweeper.get("n_trials") or 0) or None, True
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        # the command line's overrides, then the experiment's sweeper params for the keys the command line does not
        # set (as Hydra's basic sweeper does: a key given on the command line replaces the experiment's values)
        overrides = parser.parse_overrides(list(hydra.overrides.task))
        given = {o.key_or_group for o in overrides}
        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        overrides += [o for o in parser.parse_overrides(params) if o.key_or_group not in given]
        return math.prod(len(list(o.sweep_string_iterator())) for o in overrides if o.is_sweep_override()), False
    except HydraException:  # a sweep with no list of values (glob over a config group, interval): count the jobs
        return None, False


def collect(dirs: list[Path]) -> tuple[list[dict], int, bool]:
    """Every job of the given multiruns, the number of jobs they asked for, whether they are Optuna sweeps."""
    runs, asked, optuna = [], 0, False
    for d in dirs:
        if not Path(d).is_dir():
            raise MissingFileError(f"{d}: no such directory (a multirun directory of das2f.train)")
        jobs = job_dirs(Path(d))
        runs += [load_run(j) for j in jobs]
        size, is_optuna = sweep_size(Path(d))
        optuna |= is_optuna
        asked += max(size or 0, len(jobs))  # (a job directory added by hand counts too)
    if not runs:
        raise MissingFileError(f"no job directory (with .hydra/) under {[str(d) for d in dirs]}: not a multirun of "
                               "das2f.train, or its jobs never started")
    return runs, asked, optuna


def varying_keys(runs: list[dict]) -> list[str]:
    """The config keys in which the finished runs differ, minus the ignored ones, in config order, leaving out a
    key whose value the columns before it already determine: it adds no row (fusion.name beside model.net.fusion,
    cmda.name beside model.net.swap; dataset.split_blocks beside the split protocol)."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r["config"]))
    varying: list[str] = []
    for k in keys:
        values = [r["config"].get(k) for r in runs]
        if ignored(k) or len(set(values)) < 2:
            continue
        seen: dict = {}  # the chosen columns' values of a run -> this key's value
        if any(seen.setdefault(tuple(r["config"].get(c) for c in varying), v) != v for r, v in zip(runs, values)):
            varying.append(k)
    return varying


def metric_names(runs: list[dict], optuna: bool) -> list[str]:
    class_names = next((r["class_names"] for r in runs if r.get("class_names")), [])
    names = [f"test/{m}" for m in METRICS] + [f"test/acc_{c}" for c in class_names]
    present = [m for m in names if any(m in r["metrics"] for r in runs)]
    objective = [m for m in ("val/oa_best",) if any(m in r["metrics"] for r in runs)]
    return objective + present if optuna or not present else present


def table(runs: list[dict], optuna: bool = False) -> tuple[list[str], list[dict]]:
    """(the varying keys, one row per configuration: key values, runs, distinct seeds, mean/std per metric)."""
    done = [r for r in runs if r["metrics"] is not None]
    keys = varying_keys(done)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in done:
        groups[tuple(r["config"].get(k, "") for k in keys)].append(r)
    metrics = metric_names(done, optuna)
    rows = []
    for values, rs in groups.items():
        by_seed: dict = defaultdict(list)
        for r in rs:
            by_seed[r.get("seed")].append(r)
        overlaps = [r["split"]["overlap"]["test"] for r in rs if r.get("split")]
        row = {"values": values, "runs": rs, "seeds": sorted(by_seed, key=str),
               "duplicates": {s: len(v) for s, v in by_seed.items() if len(v) > 1}, "stats": {},
               "overlap": (min(overlaps), max(overlaps)) if overlaps else None,
               "modes": sorted({r["mode"] for r in rs if r.get("mode")})}
        for m in metrics:  # over distinct seeds: runs sharing a seed count once (the first), and are flagged
            vals = np.array([v[0]["metrics"][m] for v in by_seed.values() if v[0]["metrics"].get(m) is not None], float)
            row["stats"][m] = (vals.mean(), vals.std(ddof=1) if len(vals) > 1 else None) if len(vals) else None
        rows.append(row)
    if optuna and metrics:
        rows.sort(key=lambda r: -(r["stats"][metrics[0]] or (-math.inf,))[0])
    else:
        rows.sort(key=lambda r: [str(v) for v in r["values"]])
    return keys, rows


def paired(rows: list[dict], keys: list[str], baseline: str | None, metric: str = MAIN) -> tuple[str | None, list]:
    """Each row's difference to its baseline row over the seeds both have: (what the baseline is,
    [(row, its baseline row, n, mean, lo, hi)]).

    ``baseline`` KEY=VALUE pairs each row with the row that has KEY=VALUE and the same value in every other column
    (a sweep over nets x datasets: each net against DAS²F within its dataset); a column one of the two rows does not
    have (a key internal to one net) does not part them. None: every row against the first."""
    if len(rows) < 2 or not any(metric in r["runs"][0]["metrics"] for r in rows):
        return None, []
    if baseline:
        name, _, value = baseline.partition("=")
        key = next((k for k in keys if name in (k, short(k))), None)  # the column's name or the full dotted key
        if key is None:
            raise ConfigError(f"--baseline {baseline}: {name!r} is not a key in which these runs differ "
                              f"({', '.join(short(k) for k in keys) or 'none: they differ only in the seed'})")
        at = keys.index(key)
        bases = [r for r in rows if r["values"][at] == value]
        if not bases:
            found = sorted({r["values"][at] for r in rows})
            raise ConfigError(f"--baseline {baseline}: no row has {name}={value} (found {found})")
        same = lambda a, b: all(x == y or "" in (x, y) for i, (x, y) in enumerate(zip(a["values"], b["values"]))  # noqa: E731
                                if i != at)
        pairs = [(r, next((b for b in bases if same(r, b)), None)) for r in rows if r not in bases]
        what = f"{short(key)}={value}" + (" with the same other columns" if len(keys) > 1 else "")
    else:
        pairs, what = [(r, rows[0]) for r in rows[1:]], row_label(keys, rows[0])
    from scipy import stats

    per_seed = lambda r: {r2.get("seed"): r2["metrics"].get(metric) for r2 in reversed(r["runs"])}  # noqa: E731
    out = []
    for r, base in pairs:
        if base is None:
            out.append((r, None, 0, None, None, None))
            continue
        mine, b = per_seed(r), per_seed(base)
        diffs = np.array([mine[s] - b[s] for s in mine if s in b and mine[s] is not None and b[s] is not None], float)
        if len(diffs) < 2:
            out.append((r, base, len(diffs), diffs.mean() if len(diffs) else None, None, None))
            continue
        half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
        out.append((r, base, len(diffs), diffs.mean(), diffs.mean() - half, diffs.mean() + half))
    return what, out


def configured_baseline(runs: list[dict]) -> str | None:
    """The baseline the sweep's experiment names (its ``baseline`` key, e.g. net=das2f), or None."""
    named = {r["config"].get("baseline") for r in runs if r["config"].get("baseline") not in (None, "None")}
    return named.pop() if len(named) == 1 else None


def provenance(dirs: list[Path], runs: list[dict], asked: int) -> list[str]:
    """How the table was made: the sweep command(s), how many jobs finished, date, machine, wall time."""
    from omegaconf import OmegaConf

    lines = []
    for d in dirs:
        mr = Path(d) / "multirun.yaml"
        if mr.is_file():
            overrides = OmegaConf.load(mr).hydra.overrides.task
            lines.append(f"- command: `python -m das2f.train -m {' '.join(overrides)}`")
    done = [r for r in runs if r["metrics"] is not None]
    lines.append(f"- {len(done)} of {asked} jobs finished")
    stamps = [(r["dir"] / "metrics.json").stat().st_mtime for r in done]
    if stamps:
        import datetime as dt

        lines.append(f"- finished: {dt.datetime.fromtimestamp(max(stamps)):%Y-%m-%d %H:%M}")
    m = next((r["machine"] for r in done if r.get("machine")), None)
    if m:
        lines.append(f"- machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']} with {m['torch_threads']} threads, "
                     f"GPU: {m['gpu'] or 'none'}")
    if any(r.get("mode") for r in done):
        fixed = sum(1 for r in done if r.get("deterministic"))
        lines.append(f"- reproducibility: {fixed} of {len(done)} runs deterministic=true (the same command and seed give "
                     "the same digits on the same machine)")
    walls = [r["wall_seconds"] for r in done if r.get("wall_seconds")]
    if walls:
        lines.append(f"- wall time: {sum(walls) / 60:.1f} min in all, {min(walls) / 60:.1f}-{max(walls) / 60:.1f} min per run "
                     "(data preparation, training, test)")
    return lines


def overlap_cell(overlap: tuple[float, float] | None) -> str:
    """A row's share of test patches overlapping training patches, in %, or its range over the row's runs."""
    if overlap is None:
        return "?"
    lo, hi = (100 * v for v in overlap)
    return f"{hi:.1f} %" if lo == hi else f"{lo:.1f}-{hi:.1f} %"


def short(key: str) -> str:
    return "net" if key == "model.net.name" else key.removeprefix("model.net.").removeprefix("model.")


def cell(m: str, v) -> str:
    if v is None:
        return ""
    name = m.split("/")[1]
    return format_metric(name, v[0], v[1]) if v[1] is not None else format_metric(name, v[0])


def write(keys, rows, runs, out: Path, notes: list[str], baseline: tuple) -> tuple[Path, Path]:
    """report.md (the table, its flags and notes, the paired differences, the jobs without results, how it was
    made) and report.csv (the table) into ``out``."""
    text = "".join([table_md(keys, rows), flags_md(keys, rows), paired_md(keys, baseline), failed_md(runs)])
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    md_path, csv_path = out / "report.md", out / "report.csv"
    md_path.write_text(text)
    write_csv(keys, rows, csv_path)
    if rows and any(MAIN in x["metrics"] for r in rows for x in r["runs"]):
        write_figure(keys, rows, baseline, out / "report.png")
    return md_path, csv_path


def write_figure(keys, rows, baseline: tuple, path: Path) -> None:
    """A forest plot: per configuration, the test OA of each seed and their mean (left); its paired difference
    against its baseline row with the 95 % interval (right; the baseline rows: none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    what, diffs = baseline
    against = {id(r): (mean, lo, hi) for r, _, _, mean, lo, hi in diffs}
    labels = [row_label(keys, r) or "all runs" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(10, 1.2 + 0.42 * len(rows)),
                                      gridspec_kw={"width_ratios": [1, 1]})
    for y, r in enumerate(rows):
        oa = [100 * x["metrics"][MAIN] for x in r["runs"] if x["metrics"].get(MAIN) is not None]
        left.scatter(oa, [y] * len(oa), s=18, color="tab:blue", alpha=0.6, zorder=2)
        if oa:
            left.scatter([np.mean(oa)], [y], marker="D", s=40, color="black", zorder=3)
        mean, lo, hi = against.get(id(r), (None, None, None))
        if mean is not None:
            err = [[100 * (mean - lo)], [100 * (hi - mean)]] if lo is not None else None
            color = "tab:green" if lo is not None and lo > 0 else "tab:red" if hi is not None and hi < 0 else "tab:gray"
            right.errorbar([100 * mean], [y], xerr=err, fmt="o", color=color, capsize=3)
    left.set_yticks(range(len(rows)), labels)
    left.invert_yaxis()
    left.set_title("test OA: each seed (dots), the mean (diamond)", fontsize=10)
    left.set_xlabel("test OA (%)")
    right.axvline(0, color="black", lw=0.8)
    right.set_title(textwrap.fill(f"paired difference against {what}, 95 % interval" if what else "no baseline", 48),
                    fontsize=10)
    right.set_xlabel("ΔOA (points)")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table_md(keys, rows) -> str:
    if not rows:
        return "No job finished: nothing to compare.\n"
    metrics = list(rows[0]["stats"])
    best = {m: max((r["stats"][m][0] for r in rows if r["stats"][m] is not None), default=None) for m in metrics}
    recorded = any(r["overlap"] is not None for r in rows)  # runs written before das2f measured the overlap: no column
    header = [*(short(k) for k in keys), "seeds", *(["test overlap"] if recorded else []),
              *(m.split("/")[1] for m in metrics)]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        seeds = f"{len(r['seeds'])}" + (" (!)" if r["duplicates"] else "") + (" (~)" if len(r["modes"]) > 1 else "")
        cells = [*r["values"], seeds, *([overlap_cell(r["overlap"])] if recorded else [])]
        for m in metrics:
            s = cell(m, r["stats"][m])
            cells.append(f"**{s}**" if s and r["stats"][m][0] == best[m] and len(rows) > 1 else s)
        md.append("| " + " | ".join(str(c) for c in cells) + " |")
    text = "\n".join(md) + ("\n\nmean ± std over a row's distinct seeds (sample std, n-1); one seed: its value; "
                            "bold: best mean per column.\n")
    if not keys and len(rows) == 1:
        text += "All finished runs have the same configuration (only the seed varies).\n"
    return text


def row_label(keys, row) -> str:
    return ", ".join(f"{short(k)}={v}" for k, v in zip(keys, row["values"]))


def flags_md(keys, rows) -> str:
    """The rows flagged (!) (a seed twice) and (~) (runs that differ in reproducibility), the test overlap note."""
    text = ""
    flagged = [(r, s, n) for r in rows for s, n in r["duplicates"].items()]
    if flagged:
        text += "\n(!) runs with the same configuration AND the same seed (counted once, not averaged as seeds):\n"
        text += "".join(f"- seed {s}: {n} runs ({', '.join(str(x['dir']) for x in r['runs'] if x.get('seed') == s)})\n"
                        for r, s, n in flagged)
    mixed = [r for r in rows if len(r["modes"]) > 1]
    if mixed:
        text += ("\n(~) runs of one configuration that differ in how they could be repeated (deterministic=true gives "
                 "the same digits again; a changing thread count does not):\n")
        text += "".join(f"- {row_label(keys, r) or 'all runs'}: "
                        + "; ".join(f"{x['dir']}: {x.get('mode') or 'not recorded'}" for x in r["runs"]) + "\n"
                        for r in mixed)
    if any(r["overlap"] and r["overlap"][1] > 0 for r in rows):
        text += ("\ntest overlap: the share of test patches that read a pixel a training patch reads (a pixel split "
                 "puts neighbours of training pixels into test: its accuracy is optimistic; dataset.split_blocks gives "
                 "a spatially disjoint split).\n")
    return text


def paired_md(keys, baseline: tuple) -> str:
    what, diffs = baseline
    if what is None:
        return ""
    text = (f"\nPaired difference in test OA against the baseline ({what}), over the seeds both rows have (mean, "
            "95 % confidence interval, Student's t):\n\n| row | baseline | shared seeds | ΔOA (points) | 95 % CI | |\n"
            "|---|---|---|---|---|---|\n")
    for r, base, n, mean, lo, hi in diffs:
        against = row_label(keys, base) if base is not None else ""
        if base is None:
            text += f"| {row_label(keys, r)} | | 0 | | | no baseline row with the same other columns |\n"
        elif mean is None:
            text += f"| {row_label(keys, r)} | {against} | 0 | | | no seed in common |\n"
        elif lo is None:
            text += f"| {row_label(keys, r)} | {against} | {n} | {100 * mean:+.2f} | | one shared seed: no interval |\n"
        else:
            verdict = "includes 0: no difference shown" if lo <= 0 <= hi else "excludes 0"
            text += (f"| {row_label(keys, r)} | {against} | {n} | {100 * mean:+.2f} | [{100 * lo:+.2f}, {100 * hi:+.2f}] "
                     f"| {verdict} |\n")
    return text


def failed_md(runs) -> str:
    failed = [r for r in runs if r["metrics"] is None]
    if not failed:
        return ""
    return "\nJobs without results (failed, stopped or still running):\n" + "".join(
        f"- {r['dir']}: `{' '.join(r['overrides'])}`: {r['error'] or 'no metrics.json and no error.txt'}\n" for r in failed)


def write_csv(keys, rows, path: Path) -> None:
    metrics = list(rows[0]["stats"]) if rows else []
    recorded = any(r["overlap"] is not None for r in rows)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*keys, "seeds", *(["test_overlap"] if recorded else []),
                    *(f"{m.split('/')[1]}_{s}" for m in metrics for s in ("mean", "std"))])
        for r in rows:
            vals = []
            for m in metrics:
                v = r["stats"][m]
                scale = metric_scale(m.split("/")[1])
                vals += ["", ""] if v is None else [v[0] * scale, "" if v[1] is None else v[1] * scale]
            overlap = ["" if r["overlap"] is None else r["overlap"][1]] if recorded else []
            w.writerow([*r["values"], len(r["seeds"]), *overlap, *vals])


def latest_multirun(root: Path = Path("logs")) -> Path:
    dirs = sorted(root.glob("*/multiruns/*"), key=lambda p: p.stat().st_mtime)
    if not dirs:
        raise MissingFileError(f"no multirun directory under {root}/*/multiruns/")
    return dirs[-1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--latest", action="store_true", help="the newest logs/*/multiruns/* directory")
    ap.add_argument("--baseline", default=None, help="KEY=VALUE: the row the others are compared with (default: the first)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        dirs = args.dirs or ([latest_multirun()] if args.latest else [])
        if not dirs:
            ap.error("give multirun directories or --latest")
        runs, asked, optuna = collect(dirs)
        finished = any(r["metrics"] is not None for r in runs)  # none: the report lists the failed jobs only
        keys, rows = table(runs, optuna=optuna) if finished else ([], [])
        baseline = paired(rows, keys, args.baseline or configured_baseline(runs)) if finished else (None, [])
    except UserError as err:
        print(f"das2f.report: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    out = args.out or dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = write(keys, rows, runs, out, provenance(dirs, runs, asked), baseline)
    print(md.read_text())
    figure = md.with_name("report.png")
    print(f"written: {md} and {csv_path}" + (f" and {figure}" if figure.is_file() else ""))


if __name__ == "__main__":
    main()
