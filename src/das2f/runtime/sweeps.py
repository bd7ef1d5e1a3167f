"""A sweep directory as one unit: continued in place by the same sweep command, one process at a time.

The same sweep command with ``hydra.sweep.dir=<a sweep's directory>`` continues that sweep, with any of das2f's
launchers (``serial``, the default; ``local``; ``slurm``). Each job of the sweep is matched with a job directory by
its overrides (the directory's ``.hydra/overrides.yaml``), never by its number, and then:

- **finished** (``metrics.json`` and no ``error.txt``): kept and not run again; a sweeper that asks for its result
  (Optuna) gets the recorded objective;
- **stopped** or killed after it wrote a checkpoint (``checkpoints/last.ckpt`` or ``last.prev.ckpt``): resumed from
  that checkpoint in its own directory, exactly as ``resume=<job dir>`` continues a single run;
- **failed** before any checkpoint: run again in its own directory;
- **never started**: run, in the directory its number names when that is free, else in the next free number.

Every job is placed by the sweep (``hydra.sweep.dir`` and ``hydra.sweep.subdir`` among its overrides), so a sweep's
jobs share one directory whatever they sweep (datasets included). The launching process holds a lock on the sweep
directory until it ends: a second continuation of the same sweep at once is refused. A command whose sweep differs
from the stored one (``multirun.yaml``: the command line's overrides and the sweeper's parameters) is refused in one
line naming the difference. Every stop message prints the continuation command (:func:`continue_command`).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli import COMMAND_ENV, continue_command, override, recorded_failure
from .errors import ConfigError

log = logging.getLogger("das2f.sweep")

LOCK = ".sweep.lock"
_held: dict[Path, Any] = {}  # sweep directory -> its lock, held by this process until it ends


def claim(sweep_dir: Path) -> None:
    """Holds the sweep directory's lock for the rest of this process (the kernel frees it however the process ends);
    refuses when another process holds it."""
    from filelock import FileLock, Timeout

    sweep_dir = Path(sweep_dir).resolve()
    if sweep_dir in _held:
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(sweep_dir / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"{sweep_dir}: another process is running this sweep (it holds {sweep_dir / LOCK}); "
                          "let it finish or stop it, then continue the sweep") from None
    _held[sweep_dir] = lock


def release(sweep_dir: Path) -> None:
    lock = _held.pop(Path(sweep_dir).resolve(), None)
    if lock is not None:
        lock.release()


def sweep_definition(hydra_cfg) -> dict[str, str]:
    """What makes a sweep the same sweep: its command line's overrides (hydra's own settings aside: launcher, jobs at
    once, directories) and its sweeper's kind and parameters (an experiment's ``hydra.sweeper.params``), key ->
    value. An Optuna search's trial count may change (a search continued with more trials)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    texts = [str(t) for t in hydra_cfg.overrides.task]
    out = {o.key_or_group: text.split("=", 1)[-1] for text, o in zip(texts, OverridesParser.create().parse_overrides(texts))}
    sweeper = OmegaConf.to_container(hydra_cfg.sweeper, resolve=False) if "sweeper" in hydra_cfg else {}
    out["hydra.sweeper"] = str(sweeper.get("_target_", "")).rsplit(".", 1)[-1]
    for key, value in (sweeper.get("params") or {}).items():
        out[f"hydra.sweeper.params.{key}"] = str(value)
    return out


def differences(stored: dict[str, str], now: dict[str, str]) -> list[str]:
    return [f"{k}: {stored.get(k, '(not set)')} -> {now.get(k, '(not set)')}"
            for k in sorted(stored.keys() | now.keys()) if stored.get(k) != now.get(k)]


def job_key(overrides) -> tuple[str, ...]:
    """A job's identity: its overrides, those that only say where it runs or continues from left out."""
    return tuple(sorted(o for o in overrides if not o.startswith(("resume=", "hydra.", "hydra/"))))


@dataclass
class Job:
    overrides: list[str]   # as the sweeper gave them
    dir: Path              # where the job lives
    state: str             # new | finished | resume | rerun

    def launch_overrides(self) -> list[str]:
        extra = [override("hydra.sweep.dir", str(self.dir.parent)), override("hydra.sweep.subdir", self.dir.name)]
        if self.state == "resume":
            extra.append(override("resume", str(self.dir)))
        return [*self.overrides, *extra]


def job_state(job_dir: Path) -> str:
    from ..checkpoint import resumable

    if (job_dir / "metrics.json").is_file() and recorded_failure(job_dir) is None:
        return "finished"
    if resumable(job_dir):
        return "resume"
    return "rerun"


class Sweep:
    """The sweep a launcher runs: its directory claimed, checked against the stored sweep, its jobs planned."""

    def __init__(self, config) -> None:
        from omegaconf import OmegaConf

        self.config = config
        self.dir = Path(str(config.hydra.sweep.dir)).resolve()
        claim(self.dir)
        stored_file = self.dir / "multirun.yaml"
        self.continued = stored_file.is_file()
        if self.continued:
            stored = sweep_definition(OmegaConf.load(stored_file).hydra)
            diff = differences(stored, sweep_definition(config.hydra))
            if diff:
                release(self.dir)
                raise ConfigError(f"hydra.sweep.dir={self.dir} holds another sweep ({'; '.join(diff)}): continue it "
                                  "with its own command, or leave hydra.sweep.dir out to start a new sweep")
        OmegaConf.save(config, stored_file)  # (Hydra's basic sweeper writes it too; Optuna's does not)
        os.environ[COMMAND_ENV] = continue_command(self.dir)
        self.placed: set[str] = set()  # directories given to a job by this process
        if self.continued:
            states = [job_state(d) for d in self.job_dirs()]
            log.info("continuing the sweep in %s: %d job(s) finished (kept), %d to resume from their last.ckpt, "
                     "%d to run again; jobs that never started run too", self.dir, states.count("finished"),
                     states.count("resume"), states.count("rerun"))

    def job_dirs(self) -> list[Path]:
        return sorted((d for d in self.dir.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))

    def existing(self) -> dict[tuple[str, ...], list[Path]]:
        from omegaconf import OmegaConf

        found: dict[tuple[str, ...], list[Path]] = {}
        for d in self.job_dirs():
            if d.name not in self.placed and (d / ".hydra" / "overrides.yaml").is_file():
                found.setdefault(job_key(OmegaConf.load(d / ".hydra" / "overrides.yaml")), []).append(d)
        return found

    def plan(self, job_overrides, initial_job_idx: int) -> list[Job]:
        """Each job of a batch with its directory and what happens to it (see the module)."""
        existing, jobs = self.existing(), []
        taken = {d.name for d in self.job_dirs()} | self.placed
        for i, overrides in enumerate(job_overrides):
            match = existing.get(job_key(overrides)) or []
            if match:
                d = match.pop(0)
                job = Job(list(overrides), d, job_state(d))
            else:
                num = initial_job_idx + i
                if str(num) in taken:
                    num = max(int(n) for n in taken) + 1
                job = Job(list(overrides), self.dir / str(num), "new")
            taken.add(job.dir.name)
            self.placed.add(job.dir.name)
            jobs.append(job)
        shared = set.intersection(*(set(job_key(j.overrides)) for j in jobs)) if len(jobs) > 1 else set()
        for job in jobs:
            if job.state != "new":
                what = " ".join(o for o in job_key(job.overrides) if o not in shared)
                log.info("job %s (%s): %s", job.dir.name, what or "no overrides", {
                    "finished": "finished before: kept", "resume": "resumes from its last.ckpt",
                    "rerun": "ended without results and no checkpoint: runs again"}[job.state])
        return jobs

    def kept(self, job: Job):
        """A finished job's return, as the launcher would have given it: its recorded objective."""
        from hydra.core.utils import JobReturn, JobStatus
        from omegaconf import OmegaConf

        metrics = json.loads((job.dir / "metrics.json").read_text()).get("metrics", {})
        ret = JobReturn(overrides=job.overrides, working_dir=str(job.dir), task_name=str(self.config.hydra.job.name),
                        status=JobStatus.COMPLETED, cfg=OmegaConf.create(), hydra_cfg=OmegaConf.create())
        ret.return_value = metrics.get(str(self.config.get("optimized_metric")))
        return ret


class ContinuesSweep:
    """Launcher mixin: the sweep is opened when the launcher is set up, and every batch goes through its plan."""

    sweep: Sweep

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweep = Sweep(config)

    def launch(self, job_overrides, initial_job_idx: int):
        jobs = self.sweep.plan(job_overrides, initial_job_idx)
        todo = [j.launch_overrides() for j in jobs if j.state != "finished"]
        results = iter(self.launch_jobs(todo, initial_job_idx) if todo else [])
        return [self.sweep.kept(j) if j.state == "finished" else next(results) for j in jobs]

    def launch_jobs(self, job_overrides, initial_job_idx: int):
        """Runs the jobs (the launcher's own way): what ``launch`` does without the plan."""
        return super().launch(job_overrides, initial_job_idx)
