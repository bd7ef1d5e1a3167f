"""Cross-process locks: jobs that start together (a SLURM array, a parallel sweep, two terminals) prepare a
dataset or generate a scene once; the others wait, then find the files ready.

The lock is an OS file lock (``filelock.FileLock``: flock), held on ``<directory>/.das2f.lock``: the kernel
releases it when its holder dies, however it dies, so a killed process never leaves a stale lock. It
works across the nodes of a cluster where the shared filesystem supports locks (NFSv4, Lustre with
``flock``, GPFS).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError

log = logging.getLogger("das2f.locks")
LOCK_NAME = ".das2f.lock"


@contextmanager
def directory_lock(directory: str | Path, doing: str, timeout_s: float = 7200.0) -> Iterator[Path]:
    """Holds the lock of ``directory`` (created if needed) while the block runs. A waiter logs the lock file
    it waits for, and gives up after ``timeout_s`` seconds with that path in the message."""
    from filelock import FileLock, Timeout

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s: another process is %s (waiting at most %.0f s)", path, doing, timeout_s)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise DataError(f"{path}: another process has been {doing} for more than {timeout_s:.0f} s (this process "
                            f"waited that long for its lock); let it finish, or raise the dataset's lock_timeout_s") from None
        log.info("%s: lock taken, the other process has finished", path)
    try:
        yield path
    finally:
        lock.release()
