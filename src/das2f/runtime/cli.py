"""What every `python -m das2f.<task>` entry point shares.

- Hydra's main with the project's configs (``conf/``), found wherever the command runs.
- One clean line per user mistake: a :class:`das2f.runtime.errors.UserError` (or an OmegaConf error: a
  missing key, a bad interpolation) is logged as ONE line and the process exits with status 2;
  a run directory that the failed start left holding nothing but Hydra's own files is removed.
  Any other exception is a bug or an environment failure and keeps its traceback.
- Honest exit codes: a run stopped by a signal exits with 128 + the signal (143 for SIGTERM, 130 for
  Ctrl-C) after saving what it could, never 0 (the policy: das2f.runtime.signals).
- Quiet consoles: known-harmless third-party messages silenced at their source (see ``quiet``).

Heavy imports (torch, Lightning) happen inside the task, so ``--help`` and a config mistake
answer in about a second.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import shlex
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from . import signals
from .checks import check_config, check_net_options
from .config import CONF_DIR, update_moved_targets  # (registers the resolvers too)
from .errors import EXIT_USER_ERROR, Interrupted, SweepJobsFailed, UserError

log = logging.getLogger("das2f")

COMMAND_ENV = "DAS2F_SWEEP_COMMAND"  # set by a sweep's launching process: its jobs print the same continuation command
SAFE_VALUE = re.compile(r"^[\w/.\-:+@%~]+$")


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


def quiet() -> None:
    """Silence third-party messages that say nothing about this run, each at its source."""
    # Lightning advertises its cloud logger on every Trainer construction.
    logging.getLogger("lightning.pytorch.trainer.connectors.logger_connector.logger_connector").addFilter(
        _DropMessages("litlogger"))
    # ... and says it defaults `weights_only` when a checkpoint of our own is read (das2f passes it where it can)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        _DropMessages("litlogger", "litmodels", "`weights_only` was not set"))
    # Lightning 2.6's pytree helper uses an API torch 2.13 deprecates; nothing for a user to do.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # tiny datasets (tests, quick checks) have fewer batches than the logging interval; harmless.
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
    # resume=<run dir> continues in place: its checkpoint directory is meant to hold checkpoints already
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty")
    # a run resumed mid-epoch does continue exactly: ChunkBatchSampler skips the batches already trained
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
    # prediction batches are windows from a plain sampler; the map writer reads its coordinates from the batch
    warnings.filterwarnings("ignore", message=r".*Couldn't infer the batch indices fetched from your dataloader")
    # W&B prints its own run summary (the metrics are printed once by das2f) and sync hints on every run;
    # WANDB_QUIET keeps its warnings and errors. An explicit WANDB_QUIET=false brings it all back.
    os.environ.setdefault("WANDB_QUIET", "true")


def _hydra_output_dir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under Hydra (a test calling the task directly)
        return None


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(text: str) -> None:
    """The job's error.txt: why it ended without results (the report lists it under the sweep's table)."""
    out = _hydra_output_dir()
    if out is not None and out.is_dir():
        (out / "error.txt").write_text(text.strip() + "\n")


def recorded_failure(job_dir: Path) -> str | None:
    """The first line of a job's error.txt (:func:`record_failure`): "" for an empty one, None without one."""
    path = Path(job_dir) / "error.txt"
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[0] if lines else ""


def clear_failure(job_dir: Path) -> None:
    """A job that finished after an earlier stop or failure (resumed, requeued, a continued sweep) keeps no
    error.txt: the report then counts it as finished; the earlier error stays in the job's log, here."""
    earlier = recorded_failure(job_dir)
    if earlier is not None:
        log.info("finished: the earlier error.txt (%s) is removed; this log keeps it", earlier or "empty")
        (Path(job_dir) / "error.txt").unlink(missing_ok=True)


def remove_if_unused(out: Path | None) -> None:
    """A run dir holding only Hydra's own files (.hydra/, the job log, error.txt) after a failed start goes away,
    except a multirun job's: the sweep's report lists it, with its error."""
    if out is None or not out.is_dir() or in_multirun():
        return
    if all(p.name in (".hydra", "error.txt") or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out)


def user_mistake(err: BaseException, *kinds: type) -> BaseException | None:
    """The user's mistake behind an exception: itself, or the cause Hydra's instantiate wrapped it in."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, (UserError, *kinds)):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def mistake_text(err: BaseException) -> str:
    """A user mistake as one line."""
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, OmegaConfBaseException):  # its message spans lines (full_key, object_type, ...)
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        key = next((ln for ln in lines if ln.startswith("full_key:")), "")
        return f"config: {lines[0] if lines else type(err).__name__}" + (f" ({key})" if key else "")
    return " ".join(str(err).split())


def report_user_error(err: BaseException) -> None:
    log.error("%s", mistake_text(err))


def hydra_entry(config_name: str) -> Callable:
    """Decorator: ``task(cfg)`` becomes a Hydra main with the project's error and exit-code rules."""

    def decorate(task: Callable) -> Callable:
        import hydra
        from omegaconf.errors import OmegaConfBaseException

        @functools.wraps(task)
        def guarded(cfg):
            quiet()
            try:
                signals.reset()
                signals.install()
                update_moved_targets(cfg)  # a user's config written before the package move
                check_config(cfg)  # the values users edit most: type and range, before any work
                from .threads import configure, run_setting

                configure(run_setting(cfg))  # before any torch work; logged once
                return task(cfg)
            except Interrupted as err:
                log.warning("%s", err)
                record_failure(str(err))
                sys.exit(err.status)
            except signals.Stop as err:  # outside a training/prediction loop (preparation, start-up)
                log.warning("%s; no half-written file is kept: the same command starts again%s", err, sweep_note())
                record_failure(str(err))
                remove_if_unused(_hydra_output_dir())
                sys.exit(signals.exit_status(err.signum))
            except Exception as err:
                mistake = user_mistake(err, OmegaConfBaseException)
                if mistake is None:
                    record_failure(f"{type(err).__name__}: {err}")
                    raise
                report_user_error(mistake)
                record_failure(" ".join(str(mistake).split()) or type(mistake).__name__)
                remove_if_unused(_hydra_output_dir())
                sys.exit(EXIT_USER_ERROR)

        return mistakes_around(hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(guarded))

    return decorate


def wrapped_bug(err: BaseException) -> BaseException | None:
    """The exception Hydra wrapped that was raised inside the code it called (``instantiate`` wraps whatever the
    target raises): a bug, which keeps its traceback. None where Hydra wrapped nothing of the kind: a target that
    cannot be imported, or a call the config's keys do not fit (the TypeError of the call itself, raised before
    the target's code runs)."""
    import traceback

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    cause, seen = err.__cause__, 0
    while cause is not None and seen < 10:
        if isinstance(cause, (UserError, OmegaConfBaseException)):
            return None
        if not isinstance(cause, (HydraException, ImportError)):
            # the call's own TypeError has one frame, the caller's: the target's code never ran
            binding = isinstance(cause, TypeError) and len(traceback.extract_tb(cause.__traceback__)) == 1
            return None if binding else cause
        cause, seen = cause.__cause__, seen + 1
    return None


def mistakes_around(main: Callable) -> Callable:
    """Mistakes found by Hydra's machinery before or around the jobs (a config option that does not exist, a key not
    in the config, a target that does not exist or does not take a key, a sweep directory that holds another sweep)
    are user mistakes too: one message, exit 2. Hydra re-raises them here (HYDRA_FULL_ERROR) instead of printing its
    own traceback; anything else keeps its traceback, a bug Hydra wrapped (:func:`wrapped_bug`) too."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    @functools.wraps(main)
    def entry(*args, **kwargs):
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
        try:
            check_net_options(sys.argv[1:])  # before Hydra composes: a net's options with another net
            return main(*args, **kwargs)
        except SweepJobsFailed as err:
            log.error("%s", err)
            sys.exit(1)
        except (HydraException, UserError, OmegaConfBaseException) as err:
            mistake = user_mistake(err)  # ours, even wrapped by Hydra: the most precise message
            if mistake is None and isinstance(err, HydraException) and wrapped_bug(err) is None:
                mistake = err  # Hydra's own finding: an option, an override, a target that does not exist
            mistake = mistake or user_mistake(err, OmegaConfBaseException)
            if mistake is None:
                raise
            # (to stderr: outside a job, Hydra's logging goes to stdout)
            text = str(mistake).split("Config search path:")[0].strip() if isinstance(mistake, HydraException) \
                else mistake_text(mistake)  # Hydra's list of options kept
            print(f"das2f: {text}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return entry


def override(key: str, value: str) -> str:
    """``key=value`` as Hydra's override parser reads it back (quoted where the value needs it)."""
    return f"{key}={value}" if SAFE_VALUE.match(value) else f"{key}='" + value.replace("'", "\\'") + "'"


def continue_command(sweep_dir: str | Path) -> str:
    """The one command that continues a sweep: this sweep's command line with ``hydra.sweep.dir=<its directory>``."""
    if os.environ.get(COMMAND_ENV):
        return os.environ[COMMAND_ENV]
    program = sys.argv[0]
    head = program if program.startswith("das2f ") else f"python -m das2f.{Path(program).stem}"
    args = [a for a in sys.argv[1:] if not a.startswith("hydra.sweep.dir=")]
    return " ".join([head, *map(shlex.quote, args), shlex.quote(override("hydra.sweep.dir", str(sweep_dir)))])


def sweep_note() -> str:
    """In a multirun: which job stopped, and the one command that continues the whole sweep."""
    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return ""
    hc = HydraConfig.get()
    return (f"; this was job {Path(hc.runtime.output_dir).name} of the sweep in {hc.sweep.dir}: continue the whole sweep "
            f"(finished jobs kept, stopped ones resumed) with: {continue_command(hc.sweep.dir)}")


def route_lightning_logs() -> None:
    """Lightning's messages through the root handlers only (Hydra's console and job log file).

    ``import lightning`` adds its own console handler to the "lightning" logger whatever the root
    has, so under Hydra every Lightning message was printed twice; call after importing lightning.
    """
    import lightning  # noqa: F401  (its import installs the handler removed here)

    if logging.getLogger().hasHandlers():
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
                lg.removeHandler(h)
            lg.propagate = True
