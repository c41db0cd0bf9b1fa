"""One study at a time per ``--output``: an exclusive OS lock on ``OUTPUT/run.lock``.

``fcntl.flock`` on an open file: the kernel releases it when the process exits in any way
(return, exception, SIGKILL, a crash), so a lock is never stale; a run killed with SIGKILL leaves
the file, and the next run simply locks it again. The descriptor is close-on-exec (Python's
default), so Ray processes started by the driver do not inherit the lock. The file stays in place
(deleting a lock file races with a process that has just opened it); it is empty.

Two steps keep "nothing written on bad input": :func:`probe` runs before validation and, when the
lock file already exists, takes the lock at once (a running study = one-line error, exit 2);
:func:`acquire` runs after validation and creates ``--output`` and the file if needed.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from search.cli import UsageError

LOCK_FILE = "run.lock"


class LockedError(UsageError):
    """Another study holds ``--output``."""


class OutputLock:
    """The held lock; released by :meth:`release` or when the process exits."""

    def __init__(self, output: Path, fd: int) -> None:
        self.output, self.fd = output, fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)          # closing the descriptor drops the flock
            self.fd = -1


def _lock(output: Path, flags: int) -> OutputLock | None:
    path = output / LOCK_FILE
    try:
        fd = os.open(path, flags | os.O_RDWR | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockedError(f"--output {output} is in use by another running study (it holds the "
                          f"lock on {path}); fix: wait for it to end, or choose another "
                          "--output") from None
    return OutputLock(output, fd)


def probe(output: Path) -> OutputLock | None:
    """Lock an existing ``OUTPUT/run.lock`` without creating anything; None if there is none."""
    output = output.expanduser().absolute()
    return _lock(output, 0) if output.is_dir() else None


def acquire(output: Path, held: OutputLock | None = None) -> OutputLock:
    """The lock on ``OUTPUT/run.lock`` (``held`` if :func:`probe` already took it), creating
    ``--output`` and the file when missing."""
    if held is not None and held.fd >= 0:
        return held
    output = output.expanduser().absolute()
    output.mkdir(parents=True, exist_ok=True)
    lock = _lock(output, os.O_CREAT)
    assert lock is not None           # O_CREAT: the file exists now
    return lock
