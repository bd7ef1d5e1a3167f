"""How many threads torch uses, chosen from what the machine offers NOW, not once.

Why: on a shared machine (a lab server, `make test` beside a training, two sweep jobs at once),
OpenMP threads that spin at the barriers of the scan's many small operations lose their core to
the other process and throughput falls 10-20x instead of the 2x that sharing the cores should cost
(README, Benchmark: "Threads on a shared machine"). No static setting wins both idle and shared.

What:
- the budget: the cores this process may use (``os.sched_getaffinity``), capped by a SLURM
  allocation (``SLURM_CPUS_PER_TASK``); an explicit ``threads=N`` wins over everything;
- ``threads=auto`` (the default) ADAPTS: at batch boundaries, at most every ``interval`` seconds,
  the CPU time other processes used on those cores (psutil's per-CPU times, less this process's own)
  tells how many cores are free, and torch gets that many threads (at least 1).
  Two copies of a job settle at one thread each; alone, a job gets every core back;
- ``das2f`` sets ``OMP_NUM_THREADS`` to the budget when it is imported before torch (unless set),
  so a user's own script gets the budget too; DataLoader workers run one torch thread each
  (PyTorch's own rule) and, being other processes, count as load on the cores they use.
"""
from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("das2f.runtime.threads")


def core_budget() -> tuple[int, str]:
    """(cores this process may use, why): affinity mask, capped by a SLURM allocation."""
    try:
        cores, why = len(os.sched_getaffinity(0)), "CPU affinity"
    except AttributeError:  # not Linux
        cores, why = os.cpu_count() or 1, "CPU count"
    for var in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):  # a scheduler's allocation, a parent's (or user's) limit
        value = os.environ.get(var, "")
        if value.isdigit() and 0 < int(value) < cores:
            cores, why = int(value), var
    return cores, why


SPINCOUNT = "10000"  # spin iterations before an idle OpenMP thread sleeps (libgomp's default: 300,000)
TORCH_FIRST = False  # torch was imported before das2f: the OpenMP environment came too late


def set_environment() -> None:
    """Before torch is imported: OpenMP gets the core budget (OMP_NUM_THREADS) and a short spin before
    idle threads sleep (GOMP_SPINCOUNT), unless the user set either (or OMP_WAIT_POLICY).

    The spin: after every parallel region libgomp's idle threads spin, by default 300,000 times, before
    they sleep; the scan's many small operations make that constant spinning, which takes the cores
    from any other process (and theirs from ours) even when das2f runs one thread. 10,000 keeps the
    idle machine's speed and stops the collapse beside a neighbour (README, Benchmark)."""
    global TORCH_FIRST
    TORCH_FIRST = "torch" in sys.modules
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(core_budget()[0])
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPINCOUNT


def _busy_seconds(cpus: set[int]) -> float | None:
    """Busy CPU time (everything but idle and iowait) of the given CPUs since boot, in seconds (psutil)."""
    import psutil

    try:
        per_cpu = psutil.cpu_times(percpu=True)
    except (OSError, AttributeError):
        return None
    return sum(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
               + getattr(t, "steal", 0.0) for k, t in enumerate(per_cpu) if k in cpus)


def _own_seconds() -> float | None:
    """This process's CPU time (all its threads, not its children), in seconds (psutil)."""
    import psutil

    try:
        t = psutil.Process().cpu_times()
    except (OSError, psutil.Error):
        return None
    return t.user + t.system


def threads_for(budget: int, others_cores: float) -> int:
    """Threads to use when other processes keep ``others_cores`` cores of the budget busy: the free
    cores, a core counting as free when others use less than 0.7 of it; at least 1."""
    return max(1, min(budget, int(budget - others_cores + 0.3)))


class ThreadBudget:
    """Chooses torch's thread count: fixed (``threads=N``) or adapting to the load of other processes."""

    def __init__(self, setting: str | int = "auto", interval: float = 2.0):
        self.budget, self.why = core_budget()
        self.setting, self.interval = setting, interval
        self.fixed = None if str(setting) == "auto" else int(setting)
        if self.fixed is not None and self.fixed < 1:
            from .errors import ConfigError

            raise ConfigError(f"threads={setting}: expected auto or a number >= 1")
        try:
            self.cpus = os.sched_getaffinity(0)
        except AttributeError:
            self.cpus = set(range(self.budget))
        self.adaptive = self.fixed is None and self.budget > 1 and _busy_seconds(self.cpus) is not None
        self._last = None
        self.current = 0
        self.low = self.high = 0  # the fewest and most threads set so far (metrics.json records them)

    def start(self) -> int:
        import torch

        n = self.fixed if self.fixed is not None else self.budget
        torch.set_num_threads(n)
        self.current = self.low = self.high = n
        mode = "fixed (threads=)" if self.fixed is not None else \
            "adapting to other processes' load" if self.adaptive else "all of them"
        log.info("torch threads: %d of %d cores (%s), %s; OpenMP spin count %s", n, self.budget, self.why, mode,
                 os.environ.get("GOMP_SPINCOUNT", "libgomp's default"))
        if TORCH_FIRST:
            log.warning("torch was imported before das2f, so OpenMP started without das2f's settings; import das2f "
                        "first or set GOMP_SPINCOUNT=%s (throughput beside other processes depends on it)", SPINCOUNT)
        self._last = (time.monotonic(), _busy_seconds(self.cpus), _own_seconds()) if self.adaptive else None
        return n

    def step(self) -> int:
        """Call between batches, on the thread that runs torch: re-chooses at most every ``interval`` s."""
        if not self.adaptive or self._last is None:
            return self.current
        now = time.monotonic()
        t0, busy0, own0 = self._last
        if now - t0 < self.interval:
            return self.current
        busy, own = _busy_seconds(self.cpus), _own_seconds()
        self._last = (now, busy, own)
        if busy is None or own is None:
            return self.current
        others = max(0.0, (busy - busy0) - (own - own0)) / (now - t0)
        n = threads_for(self.budget, others)
        if n != self.current:
            import torch

            torch.set_num_threads(n)
            log.info("torch threads: %d -> %d (other processes use %.1f of %d cores)", self.current, n, others,
                     self.budget)
            self.current = n
            self.low, self.high = min(self.low, n), max(self.high, n)
        return n


_ACTIVE: ThreadBudget | None = None


def run_setting(cfg) -> str | int:
    """A run's thread setting: its ``threads``, except that ``deterministic=true`` turns ``auto`` into a fixed
    count, all the cores this process may use (a count that changed with the load would change the sums'
    order, and so the digits). ``deterministic=true`` also sets ``trainer.deterministic`` (conf/trainer/cpu.yaml)."""
    setting = cfg.get("threads", "auto")
    if cfg.get("deterministic") and str(setting) == "auto":
        return core_budget()[0]
    return setting


def configure(setting: str | int = "auto") -> ThreadBudget:
    """The process's thread budget, set once (a multirun's later jobs with the same setting reuse it, and their
    thread range starts anew)."""
    global _ACTIVE
    if _ACTIVE is None or str(setting) != str(_ACTIVE.setting):
        _ACTIVE = ThreadBudget(setting)
        _ACTIVE.start()
    else:
        _ACTIVE.low = _ACTIVE.high = _ACTIVE.current
    return _ACTIVE


def used() -> dict:
    """The thread setting of this process and the fewest and most threads it has run torch with."""
    if _ACTIVE is None:
        import torch

        n = torch.get_num_threads()
        return {"setting": "torch's default", "threads": [n, n]}
    return {"setting": str(_ACTIVE.setting), "threads": [_ACTIVE.low, _ACTIVE.high]}


def step() -> None:
    """Between batches: let the active budget re-choose the thread count (no-op when none is configured)."""
    if _ACTIVE is not None:
        _ACTIVE.step()
