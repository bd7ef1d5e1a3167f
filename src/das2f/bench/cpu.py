"""`python -m das2f.bench` (make bench): side-by-side timings in ONE run, as ratios.

1. One selective scan at the model's size (batch 64, 4 directions x 64 channels, N=24, L=256),
   forward and forward+backward, time and peak memory: our cpu (numba) and torch backends, our
   reference loop, mamba-ssm's selective_scan_ref (loaded without its CUDA module) and mambapy's
   pscan, where installed (`make bench-deps`); this machine's own float32 matmul GFLOP/s, measured
   in the same run, and each scan's share of it.
2. The whole network with each CPU backend: training step and inference, samples/s at batch 64, the
   matmul-and-convolution GFLOP/s that reaches, and the scan's share of an inference pass.
3. The data loader: samples/s from the prepared synthetic train file with 2 workers; bytes per
   sample on disk against raw float32.
4. Threads on a shared machine (das2f.bench.threads): each thread setting alone and beside a copy
   of itself, in fresh processes.
Writes bench/results/bench-<date>.md.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import functools
import gc
import importlib.util
import re
import sys
import threading
import time
import types
from pathlib import Path

import hydra
import psutil
import torch
from omegaconf import OmegaConf

from ..models import DAS2F
from ..ops.scan import (
    DEFAULT_CHUNK,
    selective_scan_cpu,
    selective_scan_reference,
    selective_scan_time_major,
    selective_scan_torch,
    time_major_arguments,
)
from ..runtime.config import CONF_DIR


def _malloc_trim():
    """Hand freed heap memory back to the OS (glibc), so a peak counts every page a run touches
    rather than only what the heap left by earlier candidates could not serve."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may undercount reused heap memory
        pass


class PeakRSS:
    """Peak resident memory above the starting point.

    Read from the kernel's high-water mark (VmHWM, reset through /proc/self/clear_refs), so nothing
    runs beside the timed code. (A thread polling the RSS every millisecond competed for the GIL with
    the scan's Python-driven loop and made it look 1.5x slower than it is.) Where /proc cannot be
    reset (not Linux), the peak is sampled every 10 ms and the timings carry that interference.
    """

    STATUS, CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")

    def _kb(self, field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", self.STATUS.read_text()).group(1))

    def __enter__(self):
        gc.collect()
        _malloc_trim()
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        try:
            self.CLEAR.write_text("5")  # reset VmHWM to the current RSS
            self.thread = None
        except OSError:
            self.peak, self.run = 0, True
            self.thread = threading.Thread(target=self._watch, daemon=True)
            self.thread.start()
        return self

    def _watch(self):
        while self.run:
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(0.01)

    def __exit__(self, *exc):
        if self.thread is None:
            self.peak = max(0, self._kb("VmHWM") * 1024 - self.base)
        else:
            self.run = False
            self.thread.join()


def scan_inputs(b=64, d=256, g=4, n=24, length=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    return dict(u=r(b, d, length), delta=r(b, d, length) * 0.5 - 4, A=A, B=r(b, g, n, length), C=r(b, g, n, length),
                D=torch.ones(d), delta_bias=0.1 * r(d))


def mamba_ref():
    """mamba-ssm's selective_scan_ref without importing its CUDA extension (a stub module)."""
    if importlib.util.find_spec("mamba_ssm") is None:
        return None
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    spec = importlib.util.find_spec("mamba_ssm.ops.selective_scan_interface")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as err:  # noqa: BLE001 - reported in the table, not hidden
        print(f"mamba-ssm selective_scan_ref unavailable: {err}")
        return None
    return lambda u, delta, A, B, C, D, delta_bias: mod.selective_scan_ref(
        u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=True)


def mambapy_scan():
    if importlib.util.find_spec("mambapy") is None:
        return None
    import torch.nn.functional as F
    from mambapy.pscan import pscan

    def run(u, delta, A, B, C, D, delta_bias):
        b, d, length = u.shape
        g = B.shape[1]
        delta = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (B, L, D)
        dA = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, D, N)
        Bx = B.repeat_interleave(d // g, 1).permute(0, 3, 1, 2)  # (B, L, D, N)
        Cx = C.repeat_interleave(d // g, 1).permute(0, 3, 1, 2)
        hs = pscan(dA, delta.unsqueeze(-1) * Bx * u.transpose(1, 2).unsqueeze(-1))
        return ((hs * Cx).sum(-1) + D * u.transpose(1, 2)).transpose(1, 2)

    return run


def time_scan(fn, x, backward: bool, repeats: int):
    """(best time, peak MB). With repeats > 1 the first run only measures the peak (measuring it
    returns freed memory to the OS, which that run pays back in page faults) and the best of the
    other ``repeats - 1`` is the time; with repeats == 1 the one run gives both."""

    def once():
        xs = {k: v.clone().requires_grad_(backward) for k, v in x.items()}
        t = time.perf_counter()
        with torch.set_grad_enabled(backward):
            y = fn(**xs)
            if backward:
                y.sum().backward()
        return time.perf_counter() - t

    with PeakRSS() as mem:
        first = once()
    times = [once() for _ in range(repeats - 1)] if repeats > 1 else [first]
    return min(times), mem.peak / 2**20


def _torch_chunk(chunk: int, **k):
    return selective_scan_torch(**k, delta_softplus=True, chunk=chunk)


TORCH_ROW = f"das2f torch (chunk {DEFAULT_CHUNK})"
# the scan's arithmetic, counted as in docs/benchmarks.md: about 9 flops per (batch, channel, state, step)
# forward (exponent, two multiply-adds, the output's multiply-add), about 3.4x that forward+backward (recomputed
# states, the reverse recurrence and five gradients): the "about 3 GFLOP per call forward and backward"
SCAN_FLOPS_FWD, SCAN_FLOPS_BWD_FACTOR = 9, 3.4


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul rate now (torch.mm, best of ``repeats``): the yardstick of the shares."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = []
    for _ in range(repeats + 1):  # the first warms up
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times[1:]) / 1e9


def bench_scans(quick: bool) -> list[tuple]:
    x = scan_inputs()
    # the time-major entry gets the same scan as SS2D feeds it: contiguous (L, B, D) and (L, B, G, N)
    x_time_major = {k: v.contiguous() for k, v in time_major_arguments(x).items()}
    candidates = [
        (TORCH_ROW, lambda **k: selective_scan_torch(**k, delta_softplus=True), x),
        ("das2f cpu (numba; the CPU default)", lambda **k: selective_scan_cpu(**k, delta_softplus=True), x),
        ("das2f cpu, time-major entry (as SS2D calls it)",
         lambda **k: selective_scan_time_major(**k, delta_softplus=True, backend="cpu"), x_time_major),
        *[(f"das2f torch, chunk {c}", functools.partial(_torch_chunk, chunk=c), x)
          for c in (2, 8, 16) if c != DEFAULT_CHUNK],
        ("das2f torch, time-major entry (as SS2D calls it)",
         lambda **k: selective_scan_time_major(**k, delta_softplus=True, backend="torch"), x_time_major),
        ("das2f reference (loop)", lambda **k: selective_scan_reference(**k, delta_softplus=True), x),
        ("mambapy 1.2 pscan", mambapy_scan(), x),
        ("mamba-ssm selective_scan_ref", mamba_ref(), x),
    ]
    rows = []
    for name, fn, inputs in candidates:
        if fn is None:
            rows.append((name, None, None, None, None))
            continue
        slow = "selective_scan_ref" in name or "reference" in name  # autograd through an L-step loop: minutes
        if slow and quick:
            rows.append((name + " (skipped: --quick)", None, None, None, None))
            continue
        f, fm = time_scan(fn, inputs, False, 1 if slow else 4)
        fb, fbm = time_scan(fn, inputs, True, 1 if slow else 4)
        rows.append((name, f, fm, fb, fbm))
        print(f"{name}: fwd {f:.3f} s, fwd+bwd {fb:.3f} s, peak {fbm:.0f} MB", flush=True)
    return rows


def model_optimizer(net: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer training uses (conf/model/das2f.yaml), so a benchmark step is the one `make train` takes."""
    return hydra.utils.instantiate(OmegaConf.load(Path(CONF_DIR) / "model" / "das2f.yaml").optimizer)(
        params=net.parameters())


def bench_network(batch=64, stages=2, steps=3, backend="auto"):
    """(train samples/s, inference samples/s, the share of the fastest inference pass spent in the scan)."""
    torch.manual_seed(0)
    net = DAS2F(stages=stages, scan_backend=backend)
    opt = model_optimizer(net)
    ms, pan, y = torch.randn(batch, 4, 16, 16), torch.randn(batch, 1, 64, 64), torch.randint(0, 11, (batch,))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        torch.nn.functional.cross_entropy(net(ms, pan), y).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    train = batch / min(times[1:])
    net.eval()
    passes = []  # (time of the pass, time of its scan calls)
    with torch.no_grad(), _timing_scans() as spent:
        for _ in range(steps + 1):
            spent[0] = 0.0
            t = time.perf_counter()
            net(ms, pan)
            passes.append((time.perf_counter() - t, spent[0]))
    fastest, in_scan = min(passes[1:])
    return train, batch / fastest, in_scan / fastest


@contextlib.contextmanager
def _timing_scans():
    """Adds up, in the list it yields, the time the network spends in its scan calls (SS2D's entry point)."""
    from ..models import ss2d

    spent, original = [0.0], ss2d.selective_scan_time_major

    def timed_scan(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    ss2d.selective_scan_time_major = timed_scan
    try:
        yield spent
    finally:
        ss2d.selective_scan_time_major = original


def network_flops(stages: int) -> float:
    """Matmul-and-convolution FLOPs per sample of a training step: 3x the forward's (the backward of a matmul or
    convolution is two of them), the forward counted by ``DAS2F.forward_flops`` with the torch scan backend."""
    return 3 * DAS2F(stages=stages, scan_backend="torch").forward_flops()


def bench_dataset(root: Path, prepared: str, per_class: int) -> dict:
    """The generated 192 x 192 scene as a dataset config, ``per_class`` training pixels per class."""
    from ..data.synthetic import CLASS_NAMES

    raw = root / "data" / "synthetic" / "raw"
    return {"name": "synthetic", "classes": CLASS_NAMES, "class_values": None, "ignore_value": 0, "ms_channels": 4,
            "ratio": 4, "ms_patch": 16, "seed": 0, "split": {"train": per_class, "val": 10, "test": 10},
            "generate": {"size": 192, "seed": 0}, "raw_dir": str(raw), "prepared_dir": str(root / "data" / prepared),
            "scenes": [{"name": "synthetic", "ms": str(raw / "ms.npy"), "pan": str(raw / "pan.npy"),
                        "label": str(raw / "label.npy")}]}


def bench_loader(root: Path, workers: int = 2, per_class: int = 2000):
    from ..data.datamodule import MsPanDataModule
    from ..data.prepare import prepare_dataset

    cfg = bench_dataset(root, "bench", per_class)
    t = time.perf_counter()
    paths = prepare_dataset(cfg, force=True)
    prep = time.perf_counter() - t
    dm = MsPanDataModule(cfg, batch_size=256, num_workers=workers, prepare=False)
    dm.setup()
    n_train = len(dm.sets["train"])
    loader = dm.train_dataloader()
    for _ in loader:  # warm-up epoch: workers start, page cache
        pass
    t, n = time.perf_counter(), 0
    for _ in range(3):
        for batch in loader:
            n += len(batch["label"])
    rate = n / (time.perf_counter() - t)
    n_all = sum(len(s) for s in dm.sets.values())
    disk = sum(p.stat().st_size for p in paths.values()) / n_all
    raw32 = (4 * 16 * 16 + 64 * 64) * 4
    return rate, n_all / prep, disk, raw32, n_train


def bench_predict(root: Path, size: int = 64, window: int = 16, backend: str = "auto", overrides: list[str] = (),
                  device: torch.device | str = "cpu") -> dict:
    """A generated scene mapped by the prediction job (trainer.predict, windows, workers, writer) beside
    the same network's own inference rate on ``device`` at the same batch (window^2 patches): {"map": px/s,
    "net": samples/s, "pixels"}. ``overrides``: the predict config's (a trainer, a precision). The checkpoint
    is an untrained 1-stage model: speed does not depend on weights. Files go under ``root``/bench/results."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from ..data.datamodule import MsPanDataModule
    from ..data.prepare import prepare_dataset
    from ..data.synthetic import CLASS_NAMES
    from ..maps.predictor import predict
    from ..training.module import Das2fClassifier

    cfg = bench_dataset(root, "bench_map", 20)
    prepare_dataset(cfg)
    dm = MsPanDataModule(cfg, prepare=False)
    dm.setup()
    net_cfg = {"_target_": "das2f.models.DAS2F", "ms_channels": 4, "num_classes": 8, "stages": 1,
               "scan_backend": backend}
    model = Das2fClassifier(net=net_cfg, num_classes=8, class_names=CLASS_NAMES)
    ckpt = root / "bench" / "results" / "map_model.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "MsPanDataModule": dm.state_dict(), "pytorch-lightning_version": "2.6.0"}, ckpt)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        pcfg = compose("predict", overrides=[f"ckpt_path={ckpt}", f"region=[0,{size},0,{size}]", f"window={window}",
                                             "overwrite=true", "trainer.enable_progress_bar=false",
                                             *overrides],
                       return_hydra_config=True)
    with open_dict(pcfg):
        pcfg.dataset = OmegaConf.create(cfg | {"rgb_bands": None})
        pcfg.paths.output_dir = str(root / "bench" / "results" / "map")
        del pcfg["hydra"]
    summary = predict(pcfg)
    map_rate = summary["scenes"]["synthetic"]["pixels_per_s"]
    device = torch.device(device)
    net = model.net.eval().to(device)
    ms = torch.randn(window * window, 4, 16, 16, device=device)
    pan = torch.randn(window * window, 1, 64, 64, device=device)
    bf16 = "trainer.precision=bf16-mixed" in overrides
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for _ in range(4):
            t = time.perf_counter()
            net(ms, pan)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
    return {"map": map_rate, "net": window * window / min(times[1:]), "pixels": size * size}


def write_report(path: Path, lines: list[str]) -> None:
    """A benchmark's Markdown table: written, and printed whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip mamba-ssm's selective_scan_ref (about 2 minutes)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--no-threads", action="store_true", help="skip the shared-machine section (about 12 minutes)")
    args = ap.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    today = dt.date.today().isoformat()
    gflops = matmul_gflops()
    print(f"float32 matmul (torch.mm 2048): {gflops:.0f} GFLOP/s", flush=True)
    lines = [f"# das2f benchmark, {today}", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {psutil.cpu_count()} CPUs; one run, side by side.",
             f"This machine's float32 matmul (torch.mm, 2048 x 2048) in this run: {gflops:.0f} GFLOP/s.",
             "", "## Selective scan, batch 64, D = 4 x 64, N = 24, L = 256, float32", "",
             f"Scan GFLOP/s count {SCAN_FLOPS_FWD} flops per (batch, channel, state, step) forward and "
             f"{SCAN_FLOPS_BWD_FACTOR}x that forward+backward; share = of the matmul rate above.", "",
             "| implementation | fwd s | fwd+bwd s | peak MB (fwd+bwd) | fwd+bwd vs das2f torch | fwd+bwd GFLOP/s (share) |",
             "|---|---|---|---|---|---|"]
    rows = bench_scans(args.quick)
    x = scan_inputs()
    scan_flops = SCAN_FLOPS_FWD * SCAN_FLOPS_BWD_FACTOR * x["u"].numel() * x["A"].shape[1]
    ours = next(r[3] for r in rows if r[0] == TORCH_ROW)
    for name, f, _fm, fb, fbm in rows:
        if f is None:
            lines.append(f"| {name} | not installed | | | | |" if "skipped" not in name else f"| {name} | | | | | |")
        else:
            ratio = "1.0x" if fb == ours else (f"{fb / ours:.1f}x slower" if fb > ours else f"{ours / fb:.2f}x faster")
            rate = scan_flops / fb / 1e9
            lines.append(f"| {name} | {f:.3f} | {fb:.3f} | {fbm:.0f} | {ratio} | {rate:.1f} ({rate / gflops:.1%}) |")
    lines += ["", "## Whole network (DAS²F, 11 classes, 4 bands), batch 64", "",
              "GFLOP/s: matmul-and-convolution work per sample (torch's FlopCounterMode, forward x 3) times samples/s; "
              "share = of the matmul rate above. Scan share: the time an inference pass spends in the scan.", "",
              "| model | scan backend | train samples/s | vs torch | train GFLOP/s (share) | inference samples/s | "
              "vs torch | scan share of inference |", "|---|---|---|---|---|---|---|---|"]
    for stages in (2, 1):
        train_flops = network_flops(stages)
        base = None
        for backend in ("torch", "cpu"):
            tr, inf, share = bench_network(stages=stages, backend=backend)
            base = base or (tr, inf)
            rate = tr * train_flops / 1e9
            print(f"stages={stages} {backend}: train {tr:.1f} samples/s, inference {inf:.1f} samples/s, "
                  f"scan {share:.0%} of inference", flush=True)
            lines.append(f"| stages={stages} | {backend} | {tr:.1f} | {tr / base[0]:.2f}x | {rate:.1f} "
                         f"({rate / gflops:.1%}) | {inf:.1f} | {inf / base[1]:.2f}x | {share:.0%} |")
    rate, prep, disk, raw32, _ = bench_loader(Path("."))
    lines += ["", "## Data", "", f"- loader, 2 workers, batch 256: {rate:,.0f} samples/s "
              f"({rate / max(tr, 1e-9):,.0f}x the 1-stage training rate above)",
              f"- preparation (cut + lzf write): {prep:,.0f} samples/s",
              f"- on disk: {disk:,.0f} bytes/sample vs {raw32:,} raw float32 ({raw32 / disk:.1f}x smaller)"]
    lines += ["", "## Full-scene map (prediction job) beside the network", ""]
    for backend in ("torch", "cpu"):
        r = bench_predict(Path("."), backend=backend)
        map_rate, net_rate, pixels = r["map"], r["net"], r["pixels"]
        print(f"map with {backend}: {map_rate:.1f} px/s", flush=True)
        lines.append(f"- scan backend {backend}: {pixels:,} px of the generated scene through `das2f.predict` "
                     f"(trainer.predict, windows of 16 x 16, 2 workers): {map_rate:,.1f} px/s; the same 1-stage network "
                     f"alone at batch 256: {net_rate:,.1f} samples/s; map / network = {map_rate / net_rate:.2f}x")
    if not args.no_threads:
        from .threads import CASES, bench_threads

        lines += ["", "## Threads on a shared machine (fresh processes; alone, and beside a copy of itself)", "",
                  *bench_threads(cases=CASES[:2] if args.quick else CASES)]
    write_report(args.out / f"bench-{today}.md", lines)


if __name__ == "__main__":
    main()
