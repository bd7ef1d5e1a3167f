"""Throughput on a shared machine (part of `make bench`; alone: `python -m das2f.bench.threads`).

The 1-stage and 2-stage network, training steps and inference at batch 64, each in FRESH
processes: alone (idle machine) and beside one CPU-bound neighbour (a second copy of the same job,
started at the same moment), for the thread settings that matter:
- default: torch's own (as many threads as cores, libgomp's default spin-wait), no adaptation;
- passive: the same with OMP_WAIT_POLICY=PASSIVE (threads sleep at barriers instead of spinning);
- 1 thread (libgomp's default spin);
- auto: das2f's default (das2f.runtime.threads: a short OpenMP spin, GOMP_SPINCOUNT=10000, and the free
  cores as threads, re-chosen every 2 s between batches).
"beside default" runs auto next to a default-settings neighbour (a process das2f does not control).
Rates are samples/s over the same time window of both processes, after a warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = {  # name -> (environment, threads setting)
    "default": ({"GOMP_SPINCOUNT": "300000"}, "fixed-all"),  # libgomp's own spin count, every core
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, "fixed-all"),
    "1 thread": ({"GOMP_SPINCOUNT": "300000"}, "1"),
    "auto": ({}, "auto"),  # das2f's default: GOMP_SPINCOUNT=10000 and adapting threads
}


def worker(mode: str, stages: int, threads: str, start_at: float, seconds: float, warmup: float) -> dict:
    import torch

    from ..models import DAS2F
    from ..runtime.threads import ThreadBudget, core_budget

    budget = ThreadBudget(core_budget()[0] if threads == "fixed-all" else threads)
    budget.start()
    torch.manual_seed(0)
    net = DAS2F(stages=stages)
    ms, pan, y = torch.randn(64, 4, 16, 16), torch.randn(64, 1, 64, 64), torch.randint(0, 11, (64,))
    if mode == "train":
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    else:
        net.eval()
    used = []

    def step():
        if mode == "train":
            torch.nn.functional.cross_entropy(net(ms, pan), y).backward()
            opt.step()
            opt.zero_grad()
        else:
            with torch.no_grad():
                net(ms, pan)

    step()  # first call: allocations, kernel choices
    while time.time() < start_at:
        time.sleep(0.01)
    t_measure, ends = start_at + warmup, []
    while time.time() < start_at + seconds:
        budget.step()
        step()
        if time.time() > t_measure:
            ends.append(time.time())
            used.append(budget.current)
    # the steps that ended in the window, over the time between the first and the last of them
    rate = 64 * (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else 0.0
    return {"rate": rate, "steps": len(ends), "threads": sorted(set(used))}


def run(mode: str, stages: int, settings: list[str], seconds: float, warmup: float) -> list[dict]:
    """Processes started together, one per setting name; their results in order."""
    start_at = time.time() + 10  # every process has built its network by then
    procs = []
    for name in settings:
        env_extra, threads = SETTINGS[name]
        env = {**os.environ, **env_extra}
        cmd = [sys.executable, "-m", "das2f.bench.threads", "--worker", mode, "--stages", str(stages),
               "--threads", threads, "--start-at", str(start_at), "--seconds", str(seconds), "--warmup", str(warmup)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"benchmark worker failed ({p.args})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


ALL, FEW = list(SETTINGS), ["default", "auto"]
CASES = [(1, "infer", ALL), (1, "train", ALL), (2, "infer", FEW), (2, "train", FEW)]
WINDOW = {(2, "train"): (45, 10)}  # (seconds, warm-up) where one step takes seconds: enough steps to time


def bench_threads(seconds: float = 15, warmup: float = 4, cases=None) -> list[str]:
    cases = cases or CASES
    lines = ["| model, work | setting | idle samples/s | beside one copy of itself | shared / idle | threads used |",
             "|---|---|---|---|---|---|"]
    for stages, mode, names in cases:
        secs, warm = WINDOW.get((stages, mode), (seconds, warmup))
        for name in names:
            idle = run(mode, stages, [name], secs, warm)[0]
            pair = run(mode, stages, [name, name], secs, warm)
            shared = sum(r["rate"] for r in pair) / 2
            used = sorted({t for r in pair for t in r["threads"]})
            row = (f"| {stages}-stage, {mode} | {name} | {idle['rate']:.1f} | {shared:.1f} "
                   f"({pair[0]['rate']:.1f} / {pair[1]['rate']:.1f}) | {shared / idle['rate']:.2f}x | "
                   f"{idle['threads']} alone, {used} shared |")
            print(row, flush=True)
            lines.append(row)
        ours, foreign = run(mode, stages, ["auto", "default"], secs, warm)
        row = (f"| {stages}-stage, {mode} | auto beside a default neighbour | | {ours['rate']:.1f} (neighbour "
               f"{foreign['rate']:.1f}) | | {ours['threads']} |")
        print(row, flush=True)
        lines.append(row)
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["train", "infer"])
    ap.add_argument("--stages", type=int, default=1)
    ap.add_argument("--threads", default="auto")
    ap.add_argument("--start-at", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--quick", action="store_true", help="the 1-stage network only")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.stages, args.threads, args.start_at, args.seconds, args.warmup)))
        return
    cases = CASES[:2] if args.quick else None
    print("\n".join(bench_threads(args.seconds, args.warmup, cases)))


if __name__ == "__main__":
    main()
