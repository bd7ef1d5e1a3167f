"""Cross-process locks: jobs that start together (a SLURM array, a parallel sweep, two terminals) prepare a
dataset or generate a scene once; the others wait, then find the files ready.

The lock is an OS file lock (``filelock.FileLock``: flock), held on ``.<name>.das2f.lock`` beside the directory
(so that a preparation refused for bad input leaves no prepared directory behind): the kernel
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


def lock_path(directory: str | Path) -> Path:
    directory = Path(directory)
    return directory.parent / f".{directory.name}.das2f.lock"


@contextmanager
def directory_lock(directory: str | Path, doing: str, timeout_s: float = 7200.0) -> Iterator[Path]:
    """Holds the lock of ``directory`` while the block runs (its parent is created if needed). A waiter logs the
    lock file it waits for, and gives up after ``timeout_s`` seconds with that path in the message."""
    from filelock import FileLock, Timeout

    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
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
