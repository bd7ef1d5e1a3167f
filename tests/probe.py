"""Test-only: `python -m tests.probe [exit N | raise | interrupt]` prints, as one JSON line, what a process can see of
how it was started, then ends as asked. tests/test_zygote.py runs it fresh and warm and compares."""
import atexit
import json
import os
import sys

import das2f  # noqa: F401  (as every das2f command: its thread policy sets the environment first)

atexit.register(lambda: print("atexit ran", flush=True))
print(json.dumps({
    "argv": sys.argv, "orig_argv": sys.orig_argv[1:], "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__,
    "spec": __spec__.name, "main_file": sys.modules["__main__"].__file__,
    "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "PYTHONPATH")},
    "group_leader": os.getpgid(0) == os.getpid(), "session_leader": os.getsid(0) == os.getpid(),
    "stdin_tty": os.isatty(0), "buffered": not sys.stdout.line_buffering,
}), flush=True)
what = sys.argv[1:] or ["exit", "0"]
if what[0] == "raise":
    raise RuntimeError("probe failed on purpose")
if what[0] == "interrupt":
    raise KeyboardInterrupt
sys.exit(int(what[1]))
