"""The project's own errors: a user's mistake in a config, a data file or a checkpoint.

Entry points (das2f.runtime.cli) print them as ONE line naming the file, the value found and the value
expected, and exit with status 2, without a traceback; any other exception is a bug or an
environment failure and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix from the message alone."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (a bad name, a missing key, an inconsistent setting)."""


class DataError(UserError, ValueError):
    """An input data file that cannot be used as configured."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the config names that does not exist."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not fit the requested job."""


class SweepJobsFailed(Exception):
    """A sweep that ran with job(s) that ended without results (each one already reported with its error): the
    sweep ends with this one line and exit status 1."""


class Interrupted(Exception):
    """A run stopped by a signal after saving what it could; the process exits with ``status``, 128 + the
    signal (143 for SIGTERM, 130 for SIGINT), as a shell reports a job ended by that signal."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = EXIT_INTERRUPTED if status is None else status


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: what a shell reports for a job killed by SIGTERM; schedulers read it as not done
