"""Run directory locks: an exclusive ``flock`` while a process works in a run directory.

``flock`` is node-local; :mod:`astrocurate.io.leases` holds across nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from astrocurate.tracking.store import LOCK_NAME


class DirectoryLock:
    """An exclusive ``flock`` on a run directory, held while a process works in it."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def close(self) -> None:
        """Release the lock and close its file."""
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def try_lock(directory: Path) -> DirectoryLock | None:
    """Lock ``directory`` for this process; None if another process holds it."""
    if not directory.is_dir():
        return None
    handle = open(directory / LOCK_NAME, "a+")  # noqa: SIM115 - held until the step ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return DirectoryLock(handle)


def share_lock(directory: Path) -> DirectoryLock | None:
    """Take a shared lock on ``directory``; None if a process holds it exclusively."""
    handle = open(directory / LOCK_NAME, "a+")  # noqa: SIM115 - held until the caller closes it
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return DirectoryLock(handle)


@contextlib.contextmanager
def wait_lock(directory: Path, on_wait: Any = None) -> Iterator[None]:
    """Hold ``directory``'s exclusive lock while the block runs; wait while another holds it.

    Parameters
    ----------
    directory : Path
        The run directory.
    on_wait : callable, optional
        Called (no arguments) before waiting, when another process holds the lock.
    """
    lock = try_lock(directory)
    if lock is None:
        if on_wait is not None:
            on_wait()
        handle = open(directory / LOCK_NAME, "a+")  # noqa: SIM115 - closed below
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            handle.close()
            raise
        lock = DirectoryLock(handle)
    with contextlib.closing(lock):
        yield
