"""Warm starts for the das2f commands the tests run (a fork server, as Android's zygote or Python's own
multiprocessing forkserver): a das2f command costs about 7 s of CPU in imports before it does anything
(torch 1.7 s; Lightning 5 s, through torch._dynamo and torchmetrics), and the tests run about a hundred.

A server per test process imports what the commands import, once, then forks a child for each command. The
child is a real process: its own session and process group (as ``start_new_session=True``), the caller's
stdin/stdout/stderr, working directory, environment, ``sys.argv`` and ``sys.path`` as a fresh ``python -m
das2f.<task>`` would have them; the command then runs as in a fresh interpreter (``runpy``, as ``python -m``
does) and ends as the interpreter's exit ends it (exit status, traceback, atexit handlers, flushed streams, the C
library's exit), all but the freeing of every module's objects (:func:`_end` says why). Its DataLoader workers are
its own children, in its process group: a signal to the group reaches all of them, as from SLURM or docker. The
server also loads the cpu scan's kernels from numba's cache once (the first scan of a fresh process does).

Two ways in, both used by the tests unchanged in what they check:
- :func:`start` (``tests/procs.py``): the test gets the command's own pid, a process-group leader, to signal.
- ``tests/warm/sitecustomize.py``: any ``python -m das2f.<task>`` or ``das2f <task>`` started in the test run,
  by the tests or by make, hands itself to the server and waits for the child, passing on its exit status
  and any stop signal it receives. (Not for commands a test signals: those go through :func:`start`.)

What a warm child cannot reproduce, and so runs fresh: an environment that differs from the server's in
anything but the keys in ``SAFE_KEYS`` (an import may read it: OMP_NUM_THREADS, NUMBA_*, ...), other
interpreter options (``-u``, ``-X``), ``python -c`` and scripts (their import order is theirs). A command's
PYTHONPATH orders its sys.path, but the modules the server preloaded stay the server's. ``DAS2F_TEST_FRESH=1`` runs
every command fresh (``make test`` then takes longer; the tests are the same).
"""
from __future__ import annotations

import gc
import json
import os
import re
import runpy
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_KEY = "DAS2F_TEST_WARM"  # the server's socket path, set for the whole test run by tests/conftest.py
# keys that may differ between the server's environment and a command's, as nothing the server imports reads them
# (the command reads them at run time, from its own environment): W&B's, make's and the shell's, pytest's, Lightning's
# seed variables (set by in-process trainings of the tests), GDAL's and PROJ's (set by rasterio, imported by a test;
# not preloaded)
SAFE_KEYS = ("WANDB_", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "SHLVL", "PYTHONPATH", "PWD", "OLDPWD",
             "HYDRA_FULL_ERROR", "PYTEST_", "PL_", "GDAL_", "PROJ_", ENV_KEY)
# the modules a warm child runs (`python -m <module>`): das2f's commands, and tests/test_zygote.py's probe
MODULES = ("das2f", "tests.probe")
# what the das2f commands import before they work (preloaded once; the tasks import the rest themselves)
PRELOAD = ("das2f", "torch", "lightning", "hydra", "omegaconf", "torchmetrics", "h5py", "numba", "rich", "matplotlib",
           "das2f.train", "das2f.eval", "das2f.predict", "das2f.prepare", "das2f.report", "das2f.checkpoint",
           "das2f.training.module", "das2f.training.callbacks", "das2f.training.loggers", "das2f.data.datamodule",
           "das2f.data.prepare", "das2f.maps.predictor", "das2f.maps.figures", "das2f.models", "das2f.ops.scan_cpu",
           "hydra_plugins.das2f_launchers.launchers")


def _safe(key: str, env: dict) -> bool:
    """A key nothing reads at import: SAFE_KEYS, or a variable given to make on its command line (make puts them in
    its recipes' environment: ARGS, DATASET, VENV, ...)."""
    if key == "_" or any(key.startswith(k) if k.endswith("_") else key == k for k in SAFE_KEYS):
        return True
    given = env.get("MAKEFLAGS", "").partition(" -- ")[2]
    return re.search(rf"(?:^|\s){re.escape(key)}=", given) is not None


def target(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """(kind, what, args) of a command a warm child can run: ``python -m das2f.<task> ...`` or the ``das2f``
    console script, with this interpreter and no other option; None for anything else."""
    if len(argv) < 2 or os.path.realpath(argv[0]) != os.path.realpath(sys.executable):
        return None
    if argv[1] == "-m" and len(argv) >= 3 and (argv[2] in MODULES or argv[2].startswith(tuple(m + "." for m in MODULES))):
        return "module", argv[2], argv[3:]
    if os.path.realpath(argv[1]) == os.path.realpath(Path(sys.executable).parent / "das2f"):
        return "script", argv[1], argv[2:]
    return None


# ---------------------------------------------------------------------------------------------- server


class _Server:
    def __init__(self, path: str):
        self.base_env = dict(os.environ)
        for name in PRELOAD:
            __import__(name)
        from das2f.ops import scan_cpu

        if scan_cpu.IMPORT_ERROR is None:  # the cpu scan's kernels, from numba's cache (0.5 s in each command)
            scan_cpu._compiled()
        # what the imports themselves set (das2f's thread policy: OMP_NUM_THREADS, GOMP_SPINCOUNT): a fresh
        # process would set the same, unless its environment already has them
        self.import_env = {k: v for k, v in os.environ.items() if self.base_env.get(k) != v}
        pythonpath = [p for p in self.base_env.get("PYTHONPATH", "").split(os.pathsep) if p]
        self.base_path = [p for p in sys.path[1:] if p not in pythonpath]  # (sys.path[0]: this server's cwd)
        self.parent = os.getppid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(path + ".tmp")
        self.sock.listen(64)
        os.rename(path + ".tmp", path)  # (the path appears once it accepts)
        self.children: dict[int, socket.socket] = {}
        sys.stdout.flush()
        sys.stderr.flush()
        # the imported objects out of the garbage collector's sight: a child's collections then do not touch (and
        # so copy) the whole inherited heap (gc.freeze's purpose: "before a fork")
        gc.freeze()

    def command_env(self, request: dict) -> dict:
        """The command's environment as a fresh process's imports would leave it: the keys they set (das2f's thread
        policy) added where the command's environment lacks them."""
        return {**self.import_env, **request["env"]}

    def refusal(self, request: dict) -> str | None:
        # compared as each process's environment stands after its imports
        env = self.command_env(request)
        own = {**self.base_env, **self.import_env}
        keys = {k for k in set(env) | set(own) if env.get(k) != own.get(k) and not _safe(k, env)}
        if keys:
            return f"environment differs in {sorted(keys)}"
        if target(request["argv"]) is None:
            return "not a das2f command of this interpreter"
        return None

    def serve(self):
        """Answers requests until the test process ends; in a forked child, returns the command to run."""
        while True:
            if os.getppid() != self.parent:  # the test process is gone
                return None
            ready, _, _ = select.select([self.sock, *self.children.values()], [], [], 0.05)
            self.reap()
            for conn in ready:
                if conn is self.sock:
                    job = self.accept()
                    if job is not None:  # (the child)
                        return job
                else:  # a caller that went away before its command ended: the command goes on
                    self.children = {pid: c for pid, c in self.children.items() if c is not conn}
                    conn.close()

    def accept(self):
        conn, _ = self.sock.accept()
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        request = json.loads(data)
        why = self.refusal(request)
        print(f"{'fresh: ' + why if why else 'warm'}: {request['argv'][1:4]}", file=sys.stderr, flush=True)
        if why:
            conn.send(json.dumps({"fresh": why}).encode())
            conn.close()
            for fd in fds:
                os.close(fd)
            return None
        pid = os.fork()
        if pid == 0:
            self.sock.close()
            for c in self.children.values():
                c.close()
            conn.close()
            return lambda: self.become(request, fds)
        for fd in fds:
            os.close(fd)
        conn.send(json.dumps({"pid": pid}).encode())
        self.children[pid] = conn
        return None

    def reap(self):
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                try:
                    conn.send(json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode())
                except OSError:
                    pass  # the caller went away
                conn.close()

    def become(self, request: dict, fds: list[int]):
        """In the forked child: the process a fresh interpreter would be, then the command."""
        os.setsid()
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        env = self.command_env(request)
        os.environ.clear()
        os.environ.update(env)
        kind, what, args = target(request["argv"])
        pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        first = os.getcwd() if kind == "module" else os.path.dirname(os.path.abspath(what))
        sys.path[:] = [first, *pythonpath, *self.base_path]
        sys.orig_argv = list(request["argv"])
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        if kind == "module":
            sys.modules.pop(what, None)  # (imported by the server; a fresh `python -m` has it only as __main__)
            sys.argv = [what, *args]  # (runpy puts the module's file in sys.argv[0], as `python -m` does)
            runpy.run_module(what, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [what, *args]
            runpy.run_path(what, run_name="__main__")


def _serve(path: str):
    job = _Server(path).serve()
    if job is not None:
        _end(job)


def _end(job):
    """Runs a command in the forked child and ends the process as CPython's exit does, but for the teardown of the
    modules: the exit status of a SystemExit or an uncaught exception (its traceback printed by sys.excepthook; a
    KeyboardInterrupt ends the process by SIGINT), non-daemon threads joined, atexit handlers, Python's streams
    flushed, then the C library's exit (its atexit handlers: HDF5 closes its files; C streams flushed). The
    teardown left out (freeing every module's objects) takes a fresh das2f process 1.3 s and a forked one more;
    what it would show, __del__ methods at exit, is left to `make test-slow`, which runs every command fresh."""
    import atexit
    import ctypes
    import threading

    interrupted, code = False, 0
    try:
        job()
    except SystemExit as err:
        if err.code is None:
            code = 0
        elif isinstance(err.code, int):
            code = err.code & 0xFF
        else:
            print(err.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 (reported as the interpreter reports it)
        interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    ctypes.CDLL(None).exit(code)


# ---------------------------------------------------------------------------------------------- clients


def socket_path() -> str | None:
    return os.environ.get(ENV_KEY) or None


def launch(path: str) -> subprocess.Popen:
    """The server of this test process (tests/conftest.py), its imports done in the background."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.Popen([sys.executable, "-m", "tests.zygote", path], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(path + ".log", "w"))


def request(argv: list[str], cwd: str, env: dict, fds: tuple[int, int, int], timeout: float = 120.0):
    """Hands a command to the server: (connected socket, its pid), or None where it must run fresh."""
    path = socket_path()
    if not path or target(argv) is None:
        return None
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):  # the server is still importing
        if time.monotonic() > deadline:
            log = Path(path + ".log").read_text() if os.path.exists(path + ".log") else "(no log)"
            raise RuntimeError(f"the warm-start server did not start in {timeout:.0f} s; its log:\n{log[-3000:]}")
        time.sleep(0.05)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(path)
    socket.send_fds(conn, [json.dumps({"argv": argv, "cwd": str(cwd), "env": env}).encode()], list(fds))
    answer = json.loads(conn.recv(1 << 16))
    if "fresh" in answer:
        conn.close()
        return None
    return conn, answer["pid"]


class Warm:
    """A warm child as ``subprocess.Popen`` shows a process: ``pid``, ``poll()``, ``wait(timeout)``, ``returncode``."""

    def __init__(self, argv: list[str], conn: socket.socket, pid: int):
        self.args, self.conn, self.pid, self.returncode = argv, conn, pid, None

    def _status(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self.conn], [], [], timeout)
            if ready:
                data = self.conn.recv(1 << 16)
                if not data:
                    raise RuntimeError(f"the warm-start server went away while {self.args} ran")
                self.returncode = json.loads(data)["status"]
                self.conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._status(0)

    def wait(self, timeout: float | None = None) -> int:
        if self._status(timeout) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode


def start(argv: list[str], cwd, env: dict, stdout, stderr) -> Warm | subprocess.Popen:
    """``Popen(argv, cwd=, env=, stdout=, stderr=, start_new_session=True)``, warm where it can be."""
    stdin = os.open(os.devnull, os.O_RDONLY)
    try:
        got = request(argv, cwd, env, (stdin, stdout.fileno(), stderr.fileno()))
    finally:
        os.close(stdin)
    if got is None:
        return subprocess.Popen(argv, cwd=cwd, stdout=stdout, stderr=stderr, env=env, start_new_session=True)
    return Warm(argv, *got)


def delegate():
    """For tests/warm/sitecustomize.py: this interpreter's command, run warm where it can be; returns only where
    it cannot (the interpreter then runs it itself)."""
    got = request(list(sys.orig_argv), os.getcwd(), dict(os.environ), (0, 1, 2))  # (a server that is gone: raises)
    if got is None:
        return
    conn, pid = got
    child = Warm(sys.orig_argv, conn, pid)

    def forward(signum, frame):  # a stop signal to this stand-in goes on to the command's process group
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, forward)
    code = child.wait()
    if code < 0:  # ended by a signal: so does this stand-in
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    _serve(sys.argv[1])
