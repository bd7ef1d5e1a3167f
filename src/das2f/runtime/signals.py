"""One signal policy for every das2f task (the table: docs/robustness.md).

Schedulers (SLURM's pre-emption, ``scancel`` and time limit), ``docker stop``, Kubernetes and systemd
send SIGTERM to EVERY process of a job, DataLoader workers included; Ctrl-C sends SIGINT to the whole
foreground process group. So:

- DataLoader workers ignore the stop signals (:func:`worker_init`): they keep serving batches until the
  main process has saved, and end with it (torch's workers watch their parent; the loader shuts them down).
- The main process, inside a Lightning loop (fit, validate, test, predict: :func:`attach`), only notes a
  SIGTERM or the first SIGINT; the loop stops at its next step boundary (Lightning's own SIGTERM flag,
  raised as ``SIGTERMException`` there), the training callbacks save ``last.ckpt``, the task exits with
  128 + the signal (143 for SIGTERM, 130 for SIGINT) and says how to continue.
- Outside a loop (preparation, start-up, writing results) the signal raises :class:`Stop` at once, so the
  ``finally`` blocks run (half-written files are removed) and the exit status is the same.
- A second Ctrl-C stops at once: exit 130 without saving more.
- SIGUSR1 / SIGUSR2 (SLURM's ``--signal`` warning, submitit's) do not stop anything: ``last.ckpt`` is
  written at the next training step and the run goes on, so the kill that follows loses nothing.
  Under submitit (a sweep job of ``hydra/launcher=slurm`` or ``local``) the warning signal also REQUEUES
  the job once that checkpoint is written (or at once where no training loop runs): submitit's own handler,
  which das2f's replaced, is called then; the requeued job continues from ``last.ckpt`` in the same run
  directory (``hydra_plugins.das2f_launchers``).
- SIGKILL cannot be caught: ``last.ckpt`` is also written every few minutes (training/callbacks.py).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from multiprocessing.context import ForkContext, ForkProcess

log = logging.getLogger("das2f.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHECKPOINT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class Stop(BaseException):
    """A stop signal taking effect where no loop can stop at a step boundary. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"stopped by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_status(signum: int) -> int:
    """What a shell reports for a process ended by this signal (128 + its number): 143, 130."""
    return 128 + int(signum)


class _State:
    def __init__(self):
        self.stop: int | None = None        # the first stop signal received
        self.checkpoint: int | None = None  # a SIGUSR1/2 not yet answered by a checkpoint
        self.trainer = None                 # the Lightning trainer whose loop is running, if any
        self.requeue: dict = {}             # signal -> submitit's handler that checkpoints the job's call, requeues it
        self.forwarding = False             # das2f is calling Lightning's SIGTERM handler (which calls das2f's back)


_state = _State()


def _handler(signum, frame):
    if _state.forwarding:  # called back by Lightning's handler, which das2f called itself (_stop_loop)
        return
    name = signal_name(signum)
    if signum in CHECKPOINT_SIGNALS:
        if signum in _state.requeue and not _fitting():
            requeue(signum)  # nothing to save first (preparation, test, a map): requeued as it stands
        _state.checkpoint = signum
        then = "then the job is requeued" if signum in _state.requeue else "the run goes on"
        log.warning("%s: last.ckpt is written at the next training step; %s", name, then)
        return
    if signum == signal.SIGINT and _state.stop == signal.SIGINT:
        sys.stderr.write("\nsecond Ctrl-C: stopping at once (nothing more is saved)\n")
        sys.stderr.flush()
        os._exit(exit_status(signum))
    first = _state.stop is None
    if first:
        _state.stop = signum
    trainer = _state.trainer
    if trainer is not None:
        # Lightning's loops stop at their next step boundary with SIGTERMException once Lightning's own SIGTERM
        # handler has run; SIGINT takes the same road instead of a KeyboardInterrupt mid-step
        _stop_loop()
        log.warning("%s: stopping after the step in hand%s", name,
                    " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")
        return
    if first:
        raise Stop(signum)
    # the same stop again (a scheduler's SIGTERM to the group, then forwarded by a launcher): the first one is being
    # answered (its cleanup running); raising again there would interrupt that cleanup


def check() -> None:
    """Between the steps of long work outside a Lightning loop (preparation): raise :class:`Stop` if a stop signal
    came. The handler's own Stop is raised wherever the signal lands, and Python drops an exception raised inside a
    weakref callback or a ``__del__`` ("Exception ignored in ..."): this catches such a lost one at the next step."""
    if _state.stop is not None and _state.trainer is None:
        raise Stop(_state.stop)


def install() -> None:
    """The das2f handlers for SIGTERM, SIGINT, SIGUSR1, SIGUSR2 (main thread of an entry point only). Where
    submitit had installed its requeueing handler (a job of a submitit launcher), it is kept for :func:`requeue`."""
    for sig in (*STOP_SIGNALS, *CHECKPOINT_SIGNALS):
        previous = signal.signal(sig, _handler)
        if sig in CHECKPOINT_SIGNALS and previous is not _handler and \
                str(getattr(previous, "__module__", "")).startswith("submitit"):
            _state.requeue[sig] = previous


def _fitting() -> bool:
    trainer = _state.trainer
    return trainer is not None and trainer.state.fn == "fit"


def requeue(signum: int) -> None:
    """Under submitit: checkpoint the job's call (our launchers add ``resume=<run dir>`` to it) and requeue it,
    through submitit's own handler; it ends this process (SystemExit). Elsewhere nothing happens."""
    handler = _state.requeue.get(signum)
    if handler is None:
        return
    log.warning("%s: requeueing this job through submitit; it continues from its last.ckpt", signal_name(signum))
    handler(signum, None)


def answer_pending() -> None:
    """After a fit: a warning signal that came too late for a training step is answered now (requeue)."""
    if _state.checkpoint is not None and _state.checkpoint in _state.requeue:
        requeue(take_checkpoint_request())


def reset() -> None:
    """Forget received signals (a new job of a multirun in the same process, a test)."""
    _state.stop = _state.checkpoint = None
    _state.trainer = None
    _state.requeue = {}


def _stop_loop() -> bool:
    """Has the running Lightning loop stop at its next step boundary, through Lightning's public SIGTERM handling:
    the SIGTERM handler a Trainer installs while its loops run (it notes the signal for the loops, and calls the
    handler it found installed, das2f's, which then does nothing). False where no Trainer's handler is installed
    (before a loop has started: :func:`loop_started` stops it then)."""
    handler = signal.getsignal(signal.SIGTERM)
    if handler is _handler or not callable(handler):
        return False
    _state.forwarding = True
    try:
        handler(signal.SIGTERM, None)
    finally:
        _state.forwarding = False
    return True


def attach(trainer) -> None:
    """From now until :func:`detach`, stop signals stop ``trainer``'s loop at its next step boundary."""
    _state.trainer = trainer


def loop_started() -> None:
    """A Lightning loop of the attached trainer has started (its SIGTERM handler installed): a stop signal that
    arrived before (between two loops, during start-up) stops it at its first step boundary."""
    if _state.stop is not None and _state.trainer is not None:
        _stop_loop()


def detach() -> None:
    _state.trainer = None


def received() -> int | None:
    """The stop signal received (SIGTERM or SIGINT), if any."""
    return _state.stop


def take_checkpoint_request() -> int | None:
    """A SIGUSR1/2 received since the last call (then cleared)."""
    signum, _state.checkpoint = _state.checkpoint, None
    return signum


def loader_options(num_workers: int, rank: int = 0) -> dict:
    """The DataLoader arguments that put its workers under this policy: :func:`worker_init`, and on Linux a fork
    context that starts each worker with SIGTERM already blocked (:class:`_WorkerProcess`)."""
    import functools

    if num_workers <= 0:
        return {}
    return {"worker_init_fn": functools.partial(worker_init, rank=rank), "multiprocessing_context": _worker_context()}


class _WorkerProcess(ForkProcess):
    """Forks with SIGTERM blocked in the forking thread: the worker, and every thread it starts before
    worker_init runs (torch's, a reader library's), inherit the block, so a scheduler's SIGTERM to the
    group can only reach worker_init's waiting thread, never kill the worker by its default action."""

    def start(self):
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGTERM that came meanwhile is delivered now


class _WorkerContext(ForkContext):
    Process = _WorkerProcess


def _worker_context() -> _WorkerContext | None:
    import multiprocessing

    if sys.platform != "linux" or multiprocessing.get_start_method(allow_none=True) not in (None, "fork"):
        return None  # (macOS's spawn, a start method the user chose: torch's default road, worker_init alone)
    return _WorkerContext()


def worker_init(worker_id: int, rank: int = 0) -> None:
    """DataLoader workers outlive a stop signal sent to the whole group: SIGINT, SIGUSR1 and SIGUSR2 are
    ignored, and SIGTERM is obeyed only when it comes from the main process (torch and multiprocessing
    end workers with SIGTERM at shutdown; a scheduler's SIGTERM comes from elsewhere and is ignored, so the
    main process can finish its step and save). Then Lightning's worker seeding, as Lightning would have
    added it (``seed_everything(workers=True)``)."""
    import threading

    for sig in (signal.SIGINT, *CHECKPOINT_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # delivered to the thread below only
    threading.Thread(target=_sigterm_from, args=(parent,), name="das2f-sigterm", daemon=True).start()
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)


def _sigterm_from(parent: int) -> None:
    """In a DataLoader worker: waits for SIGTERM; from the main process it ends the worker at once."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(exit_status(signal.SIGTERM))  # (a handler cannot be reset outside the main thread)
