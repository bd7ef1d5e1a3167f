"""`python -m das2f.bench.gpu` (`make gpu-check`): the GPU check and benchmark, ranked, side by side in one run.

Rows run in order of importance within one time budget (``--budget-s``); a row that would end past it is
listed as skipped, so a short lease still measures what matters most:

1. CUDA parity: ``tests/test_gpu.py`` (every backend that runs on the GPU against the float64 reference,
   bf16 / fp16 inputs, the whole network against the CPU, one training step alike on every backend).
2. The 1-stage network (the main job's) at batch 64, eager: training step (forward, loss, backward, the
   fused Adam step of `make train`) and inference samples/s, per backend x precision (float32, bf16 autocast).
3. 1-epoch main jobs (`das2f.train trainer=gpu trainer.max_epochs=1`): bf16 with the fastest backend of (2),
   and the reference configuration: their validation OA side by side (the speed-up counts at equal accuracy).
4. One selective scan at the model's size per backend, forward and forward+backward, float32 and bf16.
5. The rest: batch 256, torch.compile, the 2-stage network, the Triton kernels' launch settings
   (``BLOCK_D`` x ``num_warps``), a full-scene map's MS pixels/s, the data loader, and a 4-job sweep with
   ``hydra/launcher=local`` at 1, 2 and 4 jobs at once on the one GPU (jobs per hour).

The reference (1.0x) is the authors' configuration, mamba-ssm's kernel in float32, eager, batch 64, where
mamba-ssm is built; else triton float32 eager batch 64, and the page says why. With ``--mamba-log`` (the log
of a `make gpu-deps` running beside), rows that need mamba-ssm wait for its build at the end of the run.
The page (``gpu-<date>.md``) is rewritten after every row, so a run stopped at any moment leaves what it
measured. ``--device cpu --tiny`` is a smoke run at toy sizes (tests).
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models import DAS2F
from ..ops.scan import BACKENDS, _mamba_ssm_fn, scan_triton, selective_scan
from .cpu import bench_loader, bench_predict, model_optimizer, scan_inputs, write_report

PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16}
CHECKOUT = Path(__file__).resolve().parents[3]  # tests/test_gpu.py lives in the checkout


def available_backends(device: torch.device) -> list[str]:
    """The backends that run on ``device``, fastest expected first."""
    names = []
    if device.type == "cuda" and _mamba_ssm_fn()[0] is not None:
        names.append("mamba_ssm")
    if scan_triton.triton is not None and (device.type == "cuda") != scan_triton.INTERPRETED:
        names.append("triton")
    return [*names, "torch"]


def driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the first call, including any compilation; median seconds of the next ``steps``)."""
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return first, sorted(times)[len(times) // 2]


# --------------------------------------------------------------------------- measurements (one row each)
def network_rates(device, backend: str, precision: str, compile: bool, batch: int, warmup: int, steps: int,
                  net_kwargs: dict, stages: int = 1) -> dict:
    """Training and inference samples/s of one configuration, its first-call seconds and peak GPU memory."""
    torch.manual_seed(0)
    net = DAS2F(stages=stages, scan_backend=backend, **net_kwargs).to(device)
    opt = model_optimizer(net)
    if compile:
        net.compile()
    dtype = PRECISIONS[precision]
    side = net_kwargs.get("ms_patch", 16)
    ms = torch.randn(batch, 4, side, side, device=device)
    pan = torch.randn(batch, 1, 4 * side, 4 * side, device=device)
    y = torch.randint(0, 11, (batch,), device=device)

    def train_step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(ms, pan), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            net(ms, pan)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    first_train, train = timed(train_step, device, warmup, steps)
    net.eval()
    first_infer, inference = timed(infer, device, warmup, steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"train": batch / train, "infer": batch / inference, "first": first_train + first_infer, "peak_mb": peak}


def scan_times(device, backend: str, dtype: torch.dtype, dims: dict, warmup: int, steps: int) -> dict:
    x = {k: v.to(device) for k, v in scan_inputs(**dims).items()}
    x = {k: v.to(dtype) if k in ("u", "delta", "B", "C") else v for k, v in x.items()}
    xs = {k: v.clone().requires_grad_() for k, v in x.items()}

    def fwd():
        with torch.no_grad():
            selective_scan(**x, delta_softplus=True, backend=backend)

    def fwd_bwd():
        selective_scan(**xs, delta_softplus=True, backend=backend).float().sum().backward()

    return {"fwd": timed(fwd, device, warmup, steps)[1], "fwd_bwd": timed(fwd_bwd, device, warmup, steps)[1]}


def launch_setting(device, block_d: int, num_warps: int, dims: dict, warmup: int, steps: int) -> dict:
    """The triton scan's forward+backward in float32 with one launch setting (restored afterwards)."""
    default = (scan_triton.BLOCK_D, scan_triton.NUM_WARPS)
    scan_triton.BLOCK_D, scan_triton.NUM_WARPS = block_d, num_warps
    try:
        x = {k: v.to(device).requires_grad_() for k, v in scan_inputs(**dims).items()}
        first, fb = timed(lambda: selective_scan(**x, delta_softplus=True, backend="triton").sum().backward(),
                          device, warmup, steps)
    finally:
        scan_triton.BLOCK_D, scan_triton.NUM_WARPS = default
    return {"fwd_bwd": fb, "first": first}


def run_tests(select: str | None, out: Path) -> dict:
    """tests/test_gpu.py in a fresh process (``select``: a ``-k`` expression): passed / failed / skipped and the
    failures."""
    name = re.sub(r"\W+", "-", select or "all")
    xml = out / f"test_gpu-{name}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}",
           str(CHECKOUT / "tests" / "test_gpu.py"), *(["-k", select] if select else [])]
    r = subprocess.run(cmd, cwd=CHECKOUT, capture_output=True, text=True)
    (out / f"test_gpu-{name}.log").write_text(r.stdout + r.stderr)
    if not xml.is_file():
        raise RuntimeError(f"pytest exit {r.returncode} without a report: {(r.stdout + r.stderr)[-500:]}")
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in ET.parse(xml).getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            counts["failed"] += 1
            counts["failures"].append(f"{case.get('name')}: {(bad.get('message') or '').splitlines()[0][:160]}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def das2f_train(overrides: list[str], run_dir: Path, multirun: bool = False) -> dict:
    """A `das2f.train` process with ``overrides`` into ``run_dir``: its wall seconds and, for a single run, its
    metrics.json."""
    where = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
    cmd = [sys.executable, "-m", "das2f.train", *(["-m"] if multirun else []), *overrides, where]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bench-console.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"das2f.train exit {r.returncode}: {(r.stdout + r.stderr).strip().splitlines()[-1][:300]}")
    if multirun:
        return {"wall": wall, "jobs": len(list(run_dir.rglob("metrics.json")))}
    return {"wall": wall, **json.loads((run_dir / "metrics.json").read_text())["metrics"]}


# --------------------------------------------------------------------------- rows, ranked, within a budget
@dataclass
class Row:
    rank: int
    section: str
    key: tuple
    measure: Callable[[], dict]
    estimate_s: float = 5.0
    needs_mamba: bool = False
    result: dict | None = None
    note: str = ""  # why it did not run, or its error
    seconds: float = field(default=0.0)


def run_rows(rows: list[Row], budget_s: float, render: Callable[[], None], mamba_log: Path | None) -> None:
    """Rows in rank order; a row whose estimate would end past the budget is skipped. Rows that need mamba-ssm
    while it is being built (``mamba_log``) wait for the build at the end."""
    start = time.perf_counter()
    deferred = []
    for row in sorted(rows, key=lambda r: r.rank):  # stable: the order within a rank is the listing order
        if row.needs_mamba and _mamba_ssm_fn()[0] is None:
            deferred.append(row)
            continue
        _run_row(row, start, budget_s, render)
    if deferred:
        reason = wait_for_build(mamba_log, start + budget_s - min(r.estimate_s for r in deferred))
        for row in deferred:
            if reason:
                row.note = f"skipped: {reason}"
            else:
                _run_row(row, start, budget_s, render)
        render()


def _run_row(row: Row, start: float, budget_s: float, render: Callable[[], None]) -> None:
    elapsed = time.perf_counter() - start
    if elapsed + row.estimate_s > budget_s:
        row.note = f"skipped: past the {budget_s:.0f} s budget"
        return
    t = time.perf_counter()
    try:
        row.result = row.measure()
    except Exception as err:  # a row that fails is a finding: its error goes on the page, the others run
        row.note = f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        traceback.print_exc()
    row.seconds = time.perf_counter() - t
    print(f"[{time.perf_counter() - start:6.0f} s] {row.section} {row.key}: {row.note or row.result}", flush=True)
    render()


def wait_for_build(mamba_log: Path | None, deadline: float) -> str | None:
    """None once mamba-ssm imports, else why not (its build failed, or did not end by ``deadline``)."""
    if mamba_log is None:
        return _mamba_ssm_fn()[1]
    while True:
        text = mamba_log.read_text(errors="replace") if mamba_log.is_file() else ""
        done = re.search(r"gpu-deps: pip exit (\d+)", text)
        if done:
            if done.group(1) != "0":
                return f"mamba-ssm's build failed (pip exit {done.group(1)}; {mamba_log})"
            importlib.invalidate_caches()
            return _mamba_ssm_fn()[1]
        if time.perf_counter() > deadline:
            return f"mamba-ssm's build had not ended within the budget ({mamba_log})"
        time.sleep(5)


# --------------------------------------------------------------------------- the page
def _f(x, fmt=",.1f"):
    return "" if x is None else format(x, fmt)


def render_page(rows: list[Row], header: list[str], reference_note: Callable[[], str]) -> list[str]:
    lines = list(header)
    by = {}
    for row in rows:
        by.setdefault(row.section, []).append(row)
    for section, (title, columns, cells) in SECTIONS.items():
        if section not in by:
            continue
        lines += ["", f"## {title}", ""]
        if section == "network":
            lines += [reference_note(), ""]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in by[section]:
            values = cells(row, by[section]) if row.result is not None else [row.note] + [""] * (len(columns) - len(row.key) - 1)
            lines.append("| " + " | ".join(map(str, [*row.key, *values])) + " |")
    return lines


def network_reference(rows: list[Row]) -> Row | None:
    measured = [r for r in rows if r.section == "network" and r.result is not None]
    for backend in ("mamba_ssm", "triton"):
        for r in measured:
            if r.key == (backend, "32-true", "no", 1, 64):
                return r
    return measured[0] if measured else None


def _network_cells(row, rows):
    ref = network_reference(rows)
    r = row.result
    return [_f(r["train"]), _f(r["infer"]), f"{r['train'] / ref.result['train']:.2f}x", _f(r["peak_mb"], ",.0f"),
            _f(r["first"])]


def _scan_cells(row, rows):
    ref = next((x for x in rows if x.result is not None), row)
    return [_f(row.result["fwd"] * 1e3, ".2f"), _f(row.result["fwd_bwd"] * 1e3, ".2f"),
            f"{ref.result['fwd_bwd'] / row.result['fwd_bwd']:.2f}x"]


def _launch_cells(row, rows):
    default = next((x for x in rows if x.result is not None and x.key == (scan_triton.BLOCK_D, scan_triton.NUM_WARPS)),
                   None) or next(x for x in rows if x.result is not None)
    return [_f(row.result["fwd_bwd"] * 1e3, ".2f"), _f(row.result["first"]),
            f"{default.result['fwd_bwd'] / row.result['fwd_bwd']:.2f}x"]


def _main_job_cells(row, rows):
    r = row.result
    return [_f(r["wall"], ".0f"), _f(100 * r.get("val/oa_best", float("nan")), ".2f"),
            _f(100 * r.get("test/oa", float("nan")), ".2f")]


SECTIONS = {
    "parity": ("CUDA parity: tests/test_gpu.py against the float64 reference",
               ["backends", "passed", "failed", "skipped", "failures"],
               lambda row, _: [row.result["passed"], row.result["failed"], row.result["skipped"],
                               "; ".join(row.result["failures"]) or "none"]),
    "network": ("Whole network, samples/s",
                ["backend", "precision", "compile", "stages", "batch", "train samples/s", "inference samples/s",
                 "train vs reference", "peak GPU MB", "first calls s"], _network_cells),
    "main": ("1-epoch main jobs (`das2f.train trainer=gpu trainer.max_epochs=1`)",
             ["backend", "precision", "wall s", "val OA %", "test OA %"], _main_job_cells),
    "scan": ("Selective scan (batch 64, D = 4 x 64, N = 24, L = 256; softplus, D and bias)",
             ["backend", "inputs", "fwd ms", "fwd+bwd ms", "vs the first row (fwd+bwd)"], _scan_cells),
    "launch": ("Triton launch settings (scan forward+backward, float32, same sizes)",
               ["BLOCK_D", "num_warps", "fwd+bwd ms", "first call s (compiling)",
                "vs the default"], _launch_cells),
    "map": ("Full-scene map (`das2f.predict`, trainer=gpu)",
            ["backend", "precision", "MS pixels", "map MS px/s", "network alone samples/s"],
            lambda row, _: [f"{row.result['pixels']:,}", _f(row.result["map"], ",.0f"), _f(row.result["net"], ",.0f")]),
    "loader": ("Data loader (the prepared generated dataset, batch 256)",
               ["workers", "samples/s"], lambda row, _: [_f(row.result["rate"], ",.0f")]),
    "sweep": ("A 4-job sweep on the one GPU (`hydra/launcher=local`, 1-epoch main jobs, seeds 1-4)",
              ["jobs at once", "jobs finished", "wall s", "jobs per hour"],
              lambda row, _: [row.result["jobs"], _f(row.result["wall"], ".0f"),
                              _f(row.result["jobs"] * 3600 / row.result["wall"], ",.0f")]),
}


def targets(rows: list[Row]) -> list[str]:
    """The issue's figures to reach, read off the measured rows."""
    out = ["", "## Against the targets", ""]
    net = [r for r in rows if r.section == "network" and r.result is not None]
    ref = network_reference(rows)
    if ref is not None:
        best = max(net, key=lambda r: r.result["train"])
        out.append(f"- fastest training configuration {best.key}: {best.result['train']:,.1f} samples/s, "
                   f"{best.result['train'] / ref.result['train']:.2f}x the reference {ref.key} (target 1.5x)")
    mains = [r for r in rows if r.section == "main" and r.result is not None]
    if len(mains) >= 2:
        a, b = mains[0].result.get("val/oa_best"), mains[1].result.get("val/oa_best")
        if a is not None and b is not None:
            out.append(f"- main jobs' validation OA: {mains[0].key} {100 * a:.2f} % vs {mains[1].key} {100 * b:.2f} % "
                       f"(difference {100 * abs(a - b):.2f} points; target within 1)")
    scans = {r.key: r.result for r in rows if r.section == "scan" and r.result is not None}
    if ("mamba_ssm", "float32") in scans and ("triton", "float32") in scans:
        ratio = scans[("triton", "float32")]["fwd_bwd"] / scans[("mamba_ssm", "float32")]["fwd_bwd"]
        out.append(f"- triton scan forward+backward: {ratio:.2f}x mamba-ssm's kernel time (target within 1.3x)")
    loader = [r for r in rows if r.section == "loader" and r.result is not None]
    if loader and net:
        fastest = max(r.result["train"] for r in net)
        out.append(f"- loader: {loader[0].result['rate']:,.0f} samples/s, {loader[0].result['rate'] / fastest:.1f}x "
                   f"the fastest training rate (target 2x)")
    maps = [r for r in rows if r.section == "map" and r.result is not None]
    if maps:
        out.append(f"- maps: {max(r.result['map'] for r in maps):,.0f} MS px/s (target 20,000)")
    return out if len(out) > 3 else []


# --------------------------------------------------------------------------- the plan
@dataclass
class Sizes:
    """What one plan measures with: the GPU's sizes, or toy ones (``--tiny``, a smoke run on a CPU)."""

    device: torch.device
    tiny: bool
    workers: int
    work: Path

    def __post_init__(self):
        self.dims = dict(b=2, d=8, g=4, n=4, length=16) if self.tiny else {}
        self.warmup, self.steps = (1, 1) if self.tiny else (3, 10)
        self.net = dict(d_model=16, d_state=4, dt_rank=4, hidden=16, ms_patch=8) if self.tiny else {}
        self.batch, self.big = (4, 8) if self.tiny else (64, 256)
        self.job = ([*TINY_JOB] if self.tiny else []) + [
            "trainer=gpu" if self.device.type == "cuda" else "trainer=cpu", f"data.num_workers={self.workers}",
            "trainer.max_epochs=1"]

    def rates(self, backend, precision, compile=False, big=False, stages=1):
        return network_rates(self.device, backend, precision, compile, self.big if big else self.batch, self.warmup,
                             self.steps, self.net, stages)


TINY_JOB = ["dataset.generate.size=48", "dataset.split.train=6", "dataset.split.val=3", "dataset.split.test=4",
            "model.net.d_state=4", "model.net.dt_rank=4", "model.net.hidden=32", "data.batch_size=16"]


def plan(sz: Sizes, backends: list[str], compile: bool) -> list[Row]:
    """Every row, with its rank. ``backends``: those that run now, plus mamba_ssm if it is being built."""
    # interpreted Triton kernels through a whole network take minutes even at toy sizes: scan rows only there
    net_backends = [b for b in backends if not (b == "triton" and scan_triton.INTERPRETED)]
    gpu_backends = [b for b in backends if b != "torch"] or backends
    rows = [Row(1, "parity", ("all that import",), lambda: run_tests(None, sz.work), 120)]
    if "mamba_ssm" in backends:  # its parity once built (a build beside the run: at the end)
        rows.append(Row(1, "parity", ("mamba_ssm",), lambda: run_tests("mamba_ssm or every_backend", sz.work), 60,
                        needs_mamba=True))
    rows += [Row(2, "network", (b, p, "no", 1, sz.batch), lambda b=b, p=p: sz.rates(b, p), 15, b == "mamba_ssm")
             for b in net_backends for p in PRECISIONS]
    rows += main_job_rows(sz, rows, gpu_backends[0] if sz.device.type == "cuda" else net_backends[0])
    rows += [Row(4, "scan", (b, str(d).removeprefix("torch.")),
                 lambda b=b, d=d: scan_times(sz.device, b, d, sz.dims, sz.warmup, sz.steps), 5, b == "mamba_ssm")
             for d in (torch.float32, torch.bfloat16) for b in backends]
    return rows + rest_rows(sz, backends, net_backends, compile)


def main_job_rows(sz: Sizes, rows: list[Row], reference: str) -> list[Row]:
    """Rank 3: a bf16 main job with the fastest GPU backend measured so far, and the reference's main job."""

    def job(backend, precision):
        return das2f_train([*sz.job, f"trainer.precision={precision}", f"model.net.scan_backend={backend}"],
                           sz.work / f"main-{backend}-{precision}")

    fastest = Row(3, "main", ("the fastest of rank 2", "bf16-mixed"), lambda: None, 90)

    def fastest_job():
        done = [r for r in rows if r.section == "network" and r.result is not None and r.key[0] != "torch"]
        fastest.key = (max(done, key=lambda r: r.result["train"]).key[0] if done else reference, "bf16-mixed")
        return job(*fastest.key)

    fastest.measure = fastest_job
    return [fastest, Row(3, "main", (reference, "32-true"), lambda: job(reference, "32-true"), 90,
                         reference == "mamba_ssm")]


def rest_rows(sz: Sizes, backends: list[str], net_backends: list[str], compile: bool) -> list[Row]:
    """Rank 5: batch 256, compile, 2 stages, the map, the loader, the launch settings, sweeps."""
    m = "mamba_ssm"
    rows = [Row(5, "network", (b, p, "no", 1, sz.big), lambda b=b, p=p: sz.rates(b, p, big=True), 20, b == m)
            for b in net_backends for p in PRECISIONS]
    if compile:
        rows += [Row(5, "network", (b, p, "yes", 1, sz.batch), lambda b=b, p=p: sz.rates(b, p, compile=True), 60, b == m)
                 for b in net_backends for p in PRECISIONS]
    rows += [Row(5, "network", (b, "bf16-mixed", "no", 2, sz.batch), lambda b=b: sz.rates(b, "bf16-mixed", stages=2),
                 20, b == m) for b in net_backends]
    cuda = sz.device.type == "cuda"
    mapper = "triton" if "triton" in net_backends else "torch"
    rows.append(Row(5, "map", (mapper, "bf16-mixed" if cuda else "32-true"), lambda: bench_predict(
        sz.work, size=48 if sz.tiny else 192, window=8 if sz.tiny else 64, backend=mapper, device=sz.device,
        overrides=["trainer=gpu", "trainer.precision=bf16-mixed", f"num_workers={sz.workers}"] if cuda else []),
        60))
    rows.append(Row(5, "loader", (sz.workers,), lambda: {
        "rate": bench_loader(sz.work, workers=sz.workers, per_class=50 if sz.tiny else 2000)[0]}, 40))
    if "triton" in backends:
        grid = [(4, 1), (8, 1)] if sz.tiny else [(bd, w) for bd in (8, 16, 32, 64) for w in (1, 2, 4, 8)]
        rows += [Row(5, "launch", (bd, w), lambda bd=bd, w=w: launch_setting(sz.device, bd, w, sz.dims, sz.warmup,
                                                                             sz.steps), 4) for bd, w in grid]
    seeds = "seed=1,2" if sz.tiny else "seed=1,2,3,4"
    rows += [Row(5, "sweep", (jobs,), lambda jobs=jobs: das2f_train(
        [seeds, *sz.job, "hydra/launcher=local", f"hydra.launcher.jobs={jobs}"], sz.work / f"sweep-{jobs}",
        multirun=True), 150) for jobs in ((1, 2) if sz.tiny else (1, 2, 4))]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a smoke run at toy sizes (tests, CPU)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="seconds for all rows; a row that would end "
                    "past them is skipped")
    ap.add_argument("--workers", type=int, default=8, help="loader workers (the loader row, main jobs, sweeps)")
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile rows (compiling: a minute a row on a CPU)")
    ap.add_argument("--mamba-log", type=Path, help="the log of a `make gpu-deps` running beside: mamba-ssm's rows "
                    "wait for its build at the end")
    ap.add_argument("--note", default="", help="a sentence for the page's header (e.g. what else ran beside)")
    ap.add_argument("--out", type=Path, default=Path("bench"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here (--device cpu --tiny for a smoke run)")
    backends = available_backends(device)
    building = args.mamba_log is not None and "mamba_ssm" not in backends and device.type == "cuda"
    if building:
        backends = ["mamba_ssm", *backends]
    today = dt.date.today().isoformat()
    work = Path(tempfile.mkdtemp(prefix="das2f-gpu-bench-"))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    header = [f"# das2f GPU benchmark, {today}", "",
              f"{gpu}; driver {driver_version() if device.type == 'cuda' else 'none'}; torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, triton {getattr(scan_triton.triton, '__version__', 'absent')}, "
              f"Python {platform.python_version()}; backends {backends} (of {list(BACKENDS)}); this process on "
              f"{len(os.sched_getaffinity(0))} CPU cores; budget {args.budget_s:.0f} s; one run, side by side, rows "
              f"in order of importance. {args.note}".rstrip(), "",
              "Training step: forward, loss, backward and the fused Adam step of `make train`; median of "
              f"{1 if args.tiny else 10} steps after {1 if args.tiny else 3} warm-up. First calls: the first training "
              "step and the first inference, compilation included."]
    rows = plan(Sizes(device, args.tiny, args.workers, work), backends, not args.no_compile)

    def reference_note():
        ref = network_reference(rows)
        if ref is None:
            return "Reference: none measured."
        if ref.key[0] == "mamba_ssm":
            return f"Reference (1.0x): the authors' configuration, {ref.key}."
        why = ("mamba-ssm is not built here" if "mamba_ssm" not in backends else
               "mamba-ssm's rows did not run (see below)")
        return f"Reference (1.0x): {ref.key}, because {why}; the authors' configuration is mamba-ssm float32 eager batch 64."

    path = args.out / f"gpu-{today}.md"

    def render():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(render_page(rows, header, reference_note) + targets(rows)) + "\n")

    run_rows(rows, args.budget_s, render, args.mamba_log if building else None)
    write_report(path, render_page(rows, header, reference_note) + targets(rows))


if __name__ == "__main__":
    main()
