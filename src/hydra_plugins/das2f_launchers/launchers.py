"""das2f's Hydra launchers, on submitit (Hydra requires launcher plugins to live in ``hydra_plugins``).

``hydra/launcher=local`` (:class:`LocalLauncher`, ``make sweep JOBS=N``): a sweep's jobs run at most
``jobs`` at a time on this machine, each in a process of its own started by submitit's local executor
(a fresh process per job: CUDA sees only the job's GPUs, torch only its cores). A thin layer over
submitit does what its local executor does not: it caps the jobs running at once (submitit starts them
all) and gives each job its slot: its own GPU(s) on a GPU machine (``CUDA_VISIBLE_DEVICES``, taken in
turn from the visible GPUs, several jobs per GPU when ``jobs`` exceeds them) and its share of the cores
(CPU affinity and ``OMP_NUM_THREADS``; das2f's thread policy then uses exactly those cores).

``hydra/launcher=slurm`` (:class:`SlurmLauncher`): Hydra's submitit SLURM launcher, plus the requeue
that continues: on submitit's warning signal the job writes ``last.ckpt`` (das2f.runtime.signals), then
submitit requeues it through :meth:`checkpoint`, which adds ``resume=<its run dir>`` to the job's
overrides, so the requeued job continues that checkpoint in the same directory and W&B run.

Signals to the whole process group (Ctrl-C, ``docker stop``, a scheduler): the jobs get them and stop
as a single run does (last.ckpt, exit 128 + the signal); the launcher starts no new job, waits for the
running ones, names each stopped job and exits with the same status. submitit's local controller
processes are started ignoring SIGINT (which they would answer by killing their job one second later,
before it saved) and forward SIGTERM as they do.

``hydra/launcher=serial`` (:class:`SerialLauncher`, the default): the jobs one after another in this process.

All three continue a stopped sweep in place (das2f.runtime.sweeps): the same sweep command with
``hydra.sweep.dir=<its directory>`` keeps the finished jobs, resumes the stopped ones from their last.ckpt and runs
the rest; every stop message prints that command.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf, open_dict

from das2f.runtime.cli import continue_command, override
from das2f.runtime.errors import SweepJobsFailed
from das2f.runtime.sweeps import ContinuesSweep, Sweep

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
except ImportError as missing:  # Hydra would skip this module and say only "Unknown plugin class"
    _MISSING = f"{type(missing).__name__}: {missing}"

    class BaseSubmititLauncher(Launcher):
        """Stands in where hydra-submitit-launcher or submitit does not import: choosing a das2f launcher then
        fails at once with what is missing and how to get it."""

        def __init__(self, **params: Any) -> None:
            from das2f.runtime.errors import ConfigError

            raise ConfigError(
                f"hydra/launcher={self._EXECUTOR} needs hydra-submitit-launcher and submitit, which do not import "
                f"here ({_MISSING}): pip install 'hydra-submitit-launcher>=1.2,<1.3'; on a machine without a "
                "package index, `make gpu-wheels` on one with an index carries them in .whl/")

        def setup(self, **kwargs: Any) -> None:  # never reached: __init__ refuses
            raise NotImplementedError

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            raise NotImplementedError

log = logging.getLogger("das2f.launcher")

# the shell submitit's local executor runs before each job's controller: the controller (and the shell) then
# ignore Ctrl-C and the warning signals; the job's own process installs das2f's handlers for all of them.
IGNORE_IN_CONTROLLER = "trap '' INT TERM USR1 USR2"


class SerialLauncher(ContinuesSweep, Launcher):
    """The sweep's jobs one after another in this process (Hydra's basic launcher, continued in place)."""

    def __init__(self, **params: Any) -> None:
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.sweep = Sweep(config)

    def launch_jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = cfg.hydra.job.num = idx
            log.info("job %s: %s", cfg.hydra.sweep.subdir, " ".join(filter_overrides(overrides)) or "(no overrides)")
            returns.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=cfg,
                                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns


class ContinuesAfterRequeue:
    """submitit calls ``checkpoint`` with the job's arguments when its warning signal requeues the job: the
    requeued call gets ``resume=<run dir>`` when the run has a checkpoint to continue (das2f.train), so it goes
    on from there in the same directory instead of starting over."""

    def checkpoint(self, sweep_overrides: list[str], *args: Any) -> Any:
        import submitit
        from hydra.core.hydra_config import HydraConfig

        from das2f.checkpoint import LAST, resumable

        out = Path(HydraConfig.get().runtime.output_dir)
        overrides = [o for o in sweep_overrides if not o.startswith("resume=")]
        if resumable(out):
            overrides.append(override("resume", str(out)))
            log.warning("requeued: the job continues from %s", out / "checkpoints" / LAST)
        else:
            log.warning("requeued: the job has no checkpoint yet and starts again in %s", out)
        return submitit.helpers.DelayedSubmission(self, overrides, *args)


class SlurmLauncher(ContinuesSweep, ContinuesAfterRequeue, BaseSubmititLauncher):
    """Hydra's submitit SLURM launcher, continued in place, with the requeue that continues. A signal to the
    submitting process (Ctrl-C, the end of its own allocation) stops only its wait: the submitted jobs go on."""

    _EXECUTOR = "slurm"

    def launch_jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        def stop(signum, frame):
            raise _DriverStopped(signum)

        saved = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return super().launch_jobs(job_overrides, initial_job_idx)
        except _DriverStopped as err:
            log.error("%s: this process stops waiting for the sweep's jobs; those submitted go on under SLURM (squeue "
                      "lists them). Once they have ended, continue the sweep with: %s", signal.Signals(err.signum).name,
                      continue_command(self.sweep.dir))
            sys.exit(128 + err.signum)
        finally:
            for s, h in saved.items():
                signal.signal(s, h)


class _DriverStopped(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class LocalLauncher(ContinuesSweep, ContinuesAfterRequeue, BaseSubmititLauncher):
    """At most ``jobs`` sweep jobs at once on this machine, each on its own GPU(s) and share of the cores.

    ``jobs``: how many at once (null: one per ``gpus_per_job`` visible GPUs, else 1); ``gpus_per_job``:
    GPUs each job sees (0: none; ignored without GPUs); ``gpus``: the GPU ids to share out (null: all visible);
    ``timeout_min``, ``signal_delay_s``: submitit's local time limit and the warning before it (USR2: the job
    saves last.ckpt and is requeued in place).
    """

    _EXECUTOR = "local"

    def __init__(self, jobs: int | None = None, gpus_per_job: int = 1, gpus: Sequence[int] | None = None,
                 poll_s: float = 0.5, **params: Any) -> None:
        super().__init__(**params)
        if jobs is not None and int(jobs) < 1:
            from das2f.runtime.errors import ConfigError

            raise ConfigError(f"hydra.launcher.jobs={jobs}: expected a number >= 1 (jobs at once), or null")
        self.jobs, self.gpus_per_job, self.poll_s = jobs, int(gpus_per_job or 0), float(poll_s)
        self.gpus = None if gpus is None else [int(g) for g in gpus]

    # ---- slots: which GPUs and cores a job gets
    def visible_gpus(self) -> list[int]:
        if self.gpus is not None:
            return list(self.gpus)
        if self.gpus_per_job == 0:
            return []
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env is not None:
            return [int(x) for x in env.split(",") if x.strip().isdigit()]
        if sys.platform == "linux" and not Path("/proc/driver/nvidia/gpus").is_dir():
            return []  # no NVIDIA driver: no GPU (and no torch import in the launching process)
        try:
            import torch

            return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        except ImportError:
            return []

    def slots(self) -> list[dict]:
        gpus = self.visible_gpus()
        per = self.gpus_per_job if gpus else 0
        n = int(self.jobs) if self.jobs is not None else max(1, len(gpus) // per) if per else 1
        cpus = sorted(os.sched_getaffinity(0))
        share = max(1, len(cpus) // n)
        out = []
        for k in range(n):
            start = (k * share) % len(cpus)
            out.append({
                "gpus": [gpus[(k * per + j) % len(gpus)] for j in range(per)] if per else [],
                "cpus": cpus[start:start + share] or cpus[:share],
            })
        return out

    @staticmethod
    def describe(slot: dict) -> str:
        cpus = slot["cpus"]
        where = f"CPU {cpus[0]}" if len(cpus) == 1 else f"CPUs {cpus[0]}-{cpus[-1]}" \
            if cpus == list(range(cpus[0], cpus[-1] + 1)) else f"CPUs {','.join(map(str, cpus))}"
        return (f"GPU {','.join(map(str, slot['gpus']))}, " if slot["gpus"] else "") + where

    # ---- the launch
    def executor(self, folder: str):
        import submitit

        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=int(self.params.get("max_num_timeout", 3)))
        executor.update_parameters(
            timeout_min=float(self.params.get("timeout_min", 10080)),
            signal_delay_s=int(self.params.get("signal_delay_s", 120)),
            tasks_per_node=1,
            stderr_to_stdout=bool(self.params.get("stderr_to_stdout", False)),
            setup=[*(self.params.get("setup") or []), IGNORE_IN_CONTROLLER],
        )
        return executor

    @contextmanager
    def slot_environment(self, slot: dict):
        """What the job's process inherits: the slot's cores (affinity, OMP_NUM_THREADS)."""
        affinity, omp = os.sched_getaffinity(0), os.environ.get("OMP_NUM_THREADS")
        os.sched_setaffinity(0, slot["cpus"])
        os.environ["OMP_NUM_THREADS"] = str(len(slot["cpus"]))
        try:
            yield
        finally:
            os.sched_setaffinity(0, affinity)
            if omp is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = omp

    def job_dir(self, overrides: Sequence[str], idx: int) -> Path:
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)

    def launch_jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        folder = str(self.params.get("submitit_folder", sweep_dir / ".submitit/%j"))
        executor = self.executor(folder)
        try:
            return self._run_jobs(executor, job_overrides, initial_job_idx, sweep_dir)
        finally:
            template = Path(folder)  # submitit also makes the folder's template itself (.submitit/%j), left empty
            if "%" in template.name and template.is_dir() and not any(template.iterdir()):
                template.rmdir()

    def _run_jobs(self, executor, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                  sweep_dir: Path) -> Sequence[JobReturn]:
        """At most one job per slot at once, until all ran or a stop signal came (see the class)."""
        slots = self.slots()
        log.info("local launcher: %d job(s), at most %d at once, in %s: %s", len(job_overrides), len(slots), sweep_dir,
                 "; ".join(f"slot {k}: {self.describe(s)}" for k, s in enumerate(slots)))
        pending = deque((initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides))
        free = deque(range(len(slots)))
        running: dict[int, tuple[int, list[str], Any, Path, float]] = {}  # slot -> (idx, overrides, job, dir, t0)
        results: dict[int, JobReturn] = {}
        stopped: list[str] = []
        not_started: list[str] = []
        with _StopSignals() as stop:
            while pending or running:
                for k, (idx, overrides, job, out, t0) in list(running.items()):
                    if job.done():
                        del running[k]
                        free.append(k)
                        results[idx] = self.outcome(idx, overrides, job, out, t0)
                        if results[idx].status != JobStatus.COMPLETED and stop.signum is not None:
                            stopped.append(out.name)
                while pending and free and stop.signum is None:
                    k = free.popleft()
                    idx, overrides = pending.popleft()
                    out = self.job_dir(overrides, idx)
                    executor.update_parameters(gpus_per_node=len(slots[k]["gpus"]), visible_gpus=slots[k]["gpus"])
                    with self.slot_environment(slots[k]):
                        job = executor.submit(self, overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                              Singleton.get_state())
                    running[k] = (idx, overrides, job, out, time.monotonic())
                    log.info("job %s started (%s): %s", out.name, self.describe(slots[k]),
                             " ".join(filter_overrides(overrides)) or "(no overrides)")
                if stop.signum is not None and not stop.answered:
                    stop.answered = True
                    log.warning("%s: no more jobs are started; waiting for the %d running one(s) to save and stop",
                                signal.Signals(stop.signum).name, len(running))
                    not_started = [self.job_dir(o, i).name for i, o in pending]
                    pending.clear()
                    stop.forward()
                if pending or running:
                    time.sleep(self.poll_s)
        if stop.signum is not None:
            status, left = 128 + stop.signum, not_started
            log.error("sweep stopped by %s: job(s) %s stopped%s; continue the sweep with: %s",
                      signal.Signals(stop.signum).name, ", ".join(stopped) or "none",
                      f"; job(s) {', '.join(left)} not started" if left else "", continue_command(sweep_dir))
            sys.exit(status)
        return [results[initial_job_idx + i] for i in range(len(job_overrides))]

    def outcome(self, idx: int, overrides: list[str], job: Any, out: Path, t0: float) -> JobReturn:
        from das2f.runtime.cli import recorded_failure

        took, error = time.monotonic() - t0, recorded_failure(out)
        why = "no result"
        if job.paths.result_pickle.exists():
            try:
                ret = job.results()[0]
            except Exception as err:  # submitit's own failure (its pickled traceback): its last line
                why = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            else:
                if ret.status == JobStatus.COMPLETED:
                    log.info("job %s finished after %.0f s: %s", out.name, took, out)
                else:
                    try:
                        ret.return_value  # noqa: B018  (Hydra's public accessor raises the job's exception)
                    except Exception as failure:
                        error = error or f"{type(failure).__name__}: {failure}"
                    log.error("job %s failed after %.0f s: %s", out.name, took, error)
                return ret
        if error:
            why = error
        elif job.paths.stderr.is_file():
            lines = [ln for ln in job.paths.stderr.read_text(errors="replace").splitlines() if ln.strip()]
            why = lines[-1] if lines else why
        log.error("job %s ended without results after %.0f s: %s (its log: %s)", out.name, took, why, job.paths.stdout)
        ret = JobReturn(overrides=overrides, working_dir=str(out), task_name=str(self.config.hydra.job.name),
                        status=JobStatus.FAILED, cfg=OmegaConf.create(), hydra_cfg=OmegaConf.create())
        ret.return_value = JobFailed(f"job {out.name} ({' '.join(overrides)}): {why}")
        return ret


class JobFailed(SweepJobsFailed):
    """A sweep job that ended without results (its error.txt, or the last line of its log)."""


class _StopSignals:
    """In the launching process: SIGTERM and Ctrl-C are noted (sent to the whole group, the jobs got them too: they
    save and stop), the warning signals ignored; a second Ctrl-C exits at once. A SIGTERM sent to this process
    alone (``docker stop`` signals only the container's first process) is passed on to the running jobs."""

    def forward(self) -> None:
        if self.signum != signal.SIGTERM:
            return  # Ctrl-C reaches the jobs from the terminal; a second one passed on would stop them at once
        import psutil

        # each running job is a shell started by this process, whose child (submitit's controller) passes SIGTERM
        # on to the job's process
        for shell in psutil.Process().children():
            try:
                controllers = shell.children()
            except psutil.NoSuchProcess:
                continue
            for controller in controllers:
                try:
                    controller.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass

    def __enter__(self):
        self.signum: int | None = None
        self.answered = False
        self.saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
        signal.signal(signal.SIGTERM, self.note)
        signal.signal(signal.SIGINT, self.note)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        return self

    def note(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            os._exit(128 + signum)
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self.saved.items():
            signal.signal(s, h)
