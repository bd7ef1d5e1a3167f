"""Thread settings are applied where torch runs (entry point, DataLoader workers) and adapt to the
load of other processes; behaviour only, never timings (those are in `make bench`)."""
import os
import subprocess
import sys

import pytest
import torch

from das2f.runtime import threads


def test_free_cores_rule():
    assert threads.threads_for(2, 0.0) == 2
    assert threads.threads_for(2, 2.0) == 1  # a copy of the same job beside us: one core each
    assert threads.threads_for(2, 0.1) == 2  # a light neighbour leaves both cores
    assert threads.threads_for(8, 3.0) == 5 and threads.threads_for(8, 9.0) == 1


def test_budget_follows_affinity_slurm_and_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert threads.core_budget() == (len(os.sched_getaffinity(0)), "CPU affinity")
    if len(os.sched_getaffinity(0)) > 1:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
        assert threads.core_budget() == (1, "SLURM_CPUS_PER_TASK")


def test_adapts_to_other_processes_and_back(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "core_budget", lambda: (4, "test"))
    clock = {"t": 0.0, "busy": 0, "own": 0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads, "_busy_seconds", lambda cpus: clock["busy"])
    monkeypatch.setattr(threads, "_own_seconds", lambda: clock["own"])
    try:
        b = threads.ThreadBudget("auto", interval=2.0)
        assert b.adaptive and b.start() == 4 and torch.get_num_threads() == 4

        def advance(seconds, own_cores, other_cores):
            clock["t"] += seconds
            clock["own"] += own_cores * seconds
            clock["busy"] += (own_cores + other_cores) * seconds
            return b.step()

        assert advance(2.0, 4, 0) == 4  # alone
        assert advance(2.0, 2, 2) == 2 and torch.get_num_threads() == 2  # a neighbour takes 2 cores
        assert advance(1.0, 2, 0) == 2  # not re-chosen before the interval
        assert advance(2.0, 2, 0) == 4 and torch.get_num_threads() == 4  # the neighbour ended
        fixed = threads.ThreadBudget("3")
        assert not fixed.adaptive and fixed.start() == 3
        clock["t"] += 5.0
        assert fixed.step() == 3 and torch.get_num_threads() == 3  # threads=N never adapts
    finally:
        torch.set_num_threads(before)


def test_entry_point_and_dataloader_workers_apply_the_setting(tmp_path):
    """das2f imported before torch gives OpenMP the budget, a DataLoader worker one thread. (An entry point's
    `threads=1` in its log: test_signals.test_ctrl_c_in_validation_saves_exits_130_and_resumes_exactly.)"""
    code = ("import os, das2f, torch\n"
            "from torch.utils.data import DataLoader\n"
            "class D(torch.utils.data.Dataset):\n"
            "    def __len__(self): return 1\n"
            "    def __getitem__(self, i): return torch.get_num_threads()\n"
            "print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads(), "
            "next(iter(DataLoader(D(), num_workers=1))).item())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    omp, main_threads, worker_threads = r.stdout.split()
    cores = len(os.sched_getaffinity(0))
    # das2f imported before torch: OpenMP gets the budget; a DataLoader worker runs one torch thread
    assert (int(omp), int(main_threads), int(worker_threads)) == (cores, cores, 1), r.stderr


def test_deterministic_fixes_auto_threads_and_keeps_an_explicit_count(monkeypatch):
    monkeypatch.setattr(threads, "core_budget", lambda: (6, "test"))
    assert threads.run_setting({"threads": "auto", "deterministic": True}) == 6
    assert threads.run_setting({"threads": 3, "deterministic": True}) == 3
    assert threads.run_setting({"threads": "auto", "deterministic": False}) == "auto"


@pytest.mark.slow  # two trainings, the second beside one busy process per core (they slow the other test worker)
def test_deterministic_runs_give_the_same_digits_beside_a_cpu_bound_process(tmp_path):
    """The same command and seed twice with deterministic=true, the second beside CPU-bound processes (one per
    core, which the adaptive thread policy would make room for): identical metrics.json values, and metrics.json
    says the runs were deterministic with one fixed thread count."""
    import json

    from .procs import BASE, run

    args = ["das2f.train", *(a for a in BASE if a != "threads=1"), "trainer.max_epochs=1", "deterministic=true"]
    results = []
    for k, load in enumerate((0, len(os.sched_getaffinity(0)))):
        cwd = tmp_path / str(k)
        cwd.mkdir()
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
        try:
            code, out = run(cwd, *args)
        finally:
            for p in busy:
                p.kill()
                p.wait()
        assert code == 0, out[-3000:]
        (found,) = cwd.glob("logs/train/runs/*/metrics.json")
        results.append(json.loads(found.read_text()))
    a, b = ({k: v for k, v in r["metrics"].items() if k != "best_checkpoint"} for r in results)
    assert a == b and "test/oa" in a
    cores = len(os.sched_getaffinity(0))
    for r in results:
        assert r["reproducibility"] == {"deterministic": True, "deterministic_algorithms": True, "setting": str(cores),
                                        "threads": [cores, cores]}
