"""`python -m das2f.bench.gpu` (the last step of `make gpu-check`): the GPU benchmark, side by side in one run.

1. One selective scan at the model's size (batch 64, D = 4 x 64, N = 24, L = 256), forward and
   forward+backward, per backend (mamba_ssm where it imports, triton, torch), float32 and bf16 inputs;
   then the triton kernels' launch settings (channels per program x warps) side by side.
2. The whole 1-stage network (the main job's), training step (forward, loss, backward, the fused Adam
   step training uses) and inference, samples/s at batch 64 and 256, for every backend x precision
   (float32, bf16 autocast) x compile (eager, torch.compile); peak GPU memory of each. The authors'
   configuration (mamba-ssm's kernel, float32, eager, batch 64) is 1.0x where mamba-ssm is built,
   else the first row present.
3. The data loader beside them: samples/s from the prepared generated dataset, batch 256.
Writes bench/results/gpu-<date>.md. Rows run in order of importance (eager first) within a time
budget (--budget-s), the rest are listed as skipped. ``--device cpu --tiny`` is a smoke run (tests).
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import torch

from ..models import DAS2F
from ..ops.scan import BACKENDS, _mamba_ssm_fn, scan_triton, selective_scan
from .cpu import bench_loader, model_optimizer, scan_inputs, write_report

PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16}


def available_backends(device: torch.device) -> list[str]:
    """The backends that run on ``device``, fastest expected first."""
    names = []
    if device.type == "cuda" and _mamba_ssm_fn()[0] is not None:
        names.append("mamba_ssm")
    if scan_triton.triton is not None and (device.type == "cuda") != scan_triton.INTERPRETED:
        names.append("triton")
    return [*names, "torch"]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


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


def bench_scans(device, backends, dims: dict, warmup: int, steps: int) -> list[str]:
    lines = ["| backend | inputs | fwd ms | fwd+bwd ms | vs the first row (fwd+bwd) |", "|---|---|---|---|---|"]
    base = None
    for dtype in (torch.float32, torch.bfloat16):
        x = {k: v.to(device) for k, v in scan_inputs(**dims).items()}
        x = {k: v.to(dtype) if k in ("u", "delta", "B", "C") else v for k, v in x.items()}
        for name in backends:
            xs = {k: v.clone().requires_grad_() for k, v in x.items()}
            fwd = lambda: selective_scan(**x, delta_softplus=True, backend=name)  # noqa: E731,B023

            def fwd_bwd():
                selective_scan(**xs, delta_softplus=True, backend=name).float().sum().backward()  # noqa: B023

            with torch.no_grad():
                _, f = timed(fwd, device, warmup, steps)
            _, fb = timed(fwd_bwd, device, warmup, steps)
            base = base or fb
            lines.append(f"| {name} | {str(dtype).removeprefix('torch.')} | {f * 1e3:.2f} | {fb * 1e3:.2f} | {base / fb:.2f}x |")
            print(lines[-1], flush=True)
    return lines


def network_rates(device, backend: str, precision: str, compile: bool, batch: int, warmup: int, steps: int,
                  net_kwargs: dict) -> dict:
    """Training and inference samples/s of one configuration, its first-call seconds and peak GPU memory."""
    torch.manual_seed(0)
    net = DAS2F(stages=1, scan_backend=backend, **net_kwargs).to(device)
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

    _reset_peak(device)
    first_train, train = timed(train_step, device, warmup, steps)
    net.eval()
    first_infer, inference = timed(infer, device, warmup, steps)
    return {"train": batch / train, "infer": batch / inference, "first": first_train + first_infer,
            "peak_mb": _peak_mb(device)}


def bench_networks(device, backends, batches, warmup, steps, budget_s, net_kwargs, compiles=(False, True)):
    """Table rows and the fastest training rate."""
    configs = [(b, p, c, n) for c in compiles for p in PRECISIONS for n in batches for b in backends]
    lines = ["| backend | precision | compile | batch | train samples/s | inference samples/s | train vs authors' | "
             "peak GPU MB | first calls s |", "|---|---|---|---|---|---|---|---|---|"]
    start, base, best = time.perf_counter(), None, 0.0
    for backend, precision, compile, batch in configs:
        label = f"| {backend} | {precision} | {'yes' if compile else 'no'} | {batch} |"
        if time.perf_counter() - start > budget_s:
            lines.append(f"{label} skipped: past the {budget_s:.0f} s budget | | | | |")
            continue
        r = network_rates(device, backend, precision, compile, batch, warmup, steps, net_kwargs)
        base = base or r["train"]  # the first row: mamba_ssm, float32, eager, batch 64 where it imports
        best = max(best, r["train"])
        peak = "" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f}"
        lines.append(f"{label} {r['train']:,.1f} | {r['infer']:,.1f} | {r['train'] / base:.2f}x | {peak} | {r['first']:.1f} |")
        print(lines[-1], flush=True)
    return lines, best


def bench_triton_settings(device, dims: dict, warmup: int, steps: int, blocks=(8, 16, 32, 64),
                          warps=(1, 2, 4, 8)) -> list[str]:
    """The triton scan's launch settings (channels per program x warps), forward+backward in float32, side by
    side: the data for choosing ``scan_triton.BLOCK_D`` and ``NUM_WARPS`` on this GPU."""
    default = (scan_triton.BLOCK_D, scan_triton.NUM_WARPS)
    x = {k: v.to(device) for k, v in scan_inputs(**dims).items()}
    results = []
    try:
        for block_d in blocks:
            for num_warps in warps:
                scan_triton.BLOCK_D, scan_triton.NUM_WARPS = block_d, num_warps
                xs = {k: v.clone().requires_grad_() for k, v in x.items()}

                def fwd_bwd():
                    selective_scan(**xs, delta_softplus=True, backend="triton").sum().backward()  # noqa: B023

                first, fb = timed(fwd_bwd, device, warmup, steps)
                results.append((block_d, num_warps, first, fb))
    finally:
        scan_triton.BLOCK_D, scan_triton.NUM_WARPS = default
    ref = default if any((bd, w) == default for bd, w, _, _ in results) else results[0][:2]
    base = next(fb for bd, w, _, fb in results if (bd, w) == ref)
    lines = [f"| BLOCK_D | num_warps | fwd+bwd ms | first call s (compiling) | vs {ref[0]}, {ref[1]} |",
             "|---|---|---|---|---|"]
    for block_d, num_warps, first, fb in results:
        mark = " (default)" if (block_d, num_warps) == default else ""
        lines.append(f"| {block_d}{mark} | {num_warps} | {fb * 1e3:.2f} | {first:.1f} | {base / fb:.2f}x |")
    fastest = min(results, key=lambda r: r[3])
    lines += ["", f"Fastest: BLOCK_D={fastest[0]}, num_warps={fastest[1]} ({base / fastest[3]:.2f}x BLOCK_D={ref[0]}, "
                  f"num_warps={ref[1]}; the default is {default[0]}, {default[1]})."]
    print("\n".join(lines), flush=True)
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a smoke run at toy sizes (tests, CPU)")
    ap.add_argument("--budget-s", type=float, default=240.0, help="seconds for the network rows; later rows skipped")
    ap.add_argument("--workers", type=int, default=8, help="loader workers")
    ap.add_argument("--no-compile", action="store_true", help="eager rows only (compiling: a minute a row on a CPU)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here (--device cpu --tiny for a smoke run)")
    backends = available_backends(device)
    if args.tiny:
        dims, batches, warmup, steps = dict(b=2, d=8, g=4, n=4, length=16), (4,), 1, 1
        net_kwargs = dict(d_model=16, d_state=4, dt_rank=4, hidden=16, ms_patch=8)
    else:
        dims, batches, warmup, steps, net_kwargs = {}, (64, 256), 3, 10, {}
    today = dt.date.today().isoformat()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    lines = [f"# das2f GPU benchmark, {today}", "",
             f"{gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}, triton "
             f"{getattr(scan_triton.triton, '__version__', 'absent')}, mamba-ssm "
             f"{'built' if 'mamba_ssm' in backends else 'absent'}; backends {backends} (of {list(BACKENDS)}); "
             "one run, side by side.", "",
             "## Selective scan, " + (f"toy sizes {dims}" if args.tiny else "batch 64, D = 4 x 64, N = 24, L = 256")
             + ", softplus, D and bias", "",
             *bench_scans(device, backends, dims, warmup, steps)]
    if "triton" in backends:
        lines += ["", "## Triton launch settings (forward+backward, float32, same sizes)", "",
                  *bench_triton_settings(device, dims, warmup, steps,
                                         *(((4, 8), (1,)) if args.tiny else ()))]
    lines += ["", "## Whole network (1-stage DAS²F, the main job's), samples/s", "",
             "Train: forward, loss, backward and the fused Adam step of `make train`; median of "
             f"{steps} steps after {warmup} warm-up. First calls: the first training step and the first "
             "inference, compilation included.", ""]
    # interpreted Triton kernels through a whole network take minutes even at toy sizes: scan rows only
    net_backends = [b for b in backends if not (b == "triton" and scan_triton.INTERPRETED)]
    rows, best = bench_networks(device, net_backends, batches, warmup, steps, args.budget_s, net_kwargs,
                                (False,) if args.no_compile else (False, True))
    lines += rows
    rate, _, _, _, _ = bench_loader(Path("."), workers=args.workers, per_class=50 if args.tiny else 2000)
    lines += ["", "## Data loader", "",
              f"- {args.workers} workers, batch 256, from the prepared generated dataset: {rate:,.0f} samples/s, "
              f"{rate / max(best, 1e-9):.1f}x the fastest training rate above ({best:,.1f} samples/s)"]
    write_report(args.out / f"gpu-{today}.md", lines)


if __name__ == "__main__":
    main()
