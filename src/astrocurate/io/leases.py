"""A lock that holds across the nodes of a cluster on a shared filesystem: a lease file.

``fcntl.flock`` is node-local on Lustre mounted with ``localflock`` and unreliable on NFS
without a lock manager, so processes on two nodes can both "hold" it. A lease is a file
created with ``O_CREAT | O_EXCL``, which is atomic on local filesystems, NFSv3 and later
and Lustre; it names its owner (host, PID, a random token). While it holds the lease, the
owner refreshes the file's modification time every ``heartbeat`` seconds from a
background thread, and it removes the file when it is done.

A waiter takes over a lease whose owner is gone:

* a process of this host that no longer exists, at once;
* otherwise a file whose content and modification time have not changed for
  ``stale_after`` seconds of the waiter's own clock (no clocks of two nodes are compared).

Two waiters that find the same stale lease never both remove it: the removal happens
under a second lease (``<name>.break``), after checking that the file is still the one
found stale (a ``.break`` file left by a crash expires after ``2 x stale_after`` by its own
time stamp). An owner whose lease was taken over (it stalled for longer than
``stale_after``) does not remove its successor's file when it releases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Seconds between refreshes of a held lease.
HEARTBEAT = 5.0
#: Seconds without a refresh after which a waiter takes the lease over.
STALE_AFTER = 60.0


class FileLease:
    """An exclusive lease on ``path``, held across processes and nodes.

    Parameters
    ----------
    path : Path
        The lease file; it exists only while the lease is held.
    heartbeat : float
        Seconds between refreshes while held.
    stale_after : float
        Seconds without a refresh (seen by a waiter) after which the lease is broken.
    poll : float
        Seconds between attempts while waiting.

    Examples
    --------
    >>> with FileLease(directory / ".lease-run"):  # doctest: +SKIP
    ...     create_the_run()
    """

    def __init__(
        self,
        path: Path | str,
        *,
        heartbeat: float = HEARTBEAT,
        stale_after: float = STALE_AFTER,
        poll: float = 0.1,
    ) -> None:
        self.path = Path(path)
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.poll = poll
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for the lease and take it; return False if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = _StaleWatch(self.stale_after)
        while True:
            token = _create(self.path)
            if token is not None:
                self._hold(token)
                return True
            seen = _read(self.path)
            if seen is not None and watch.gone(seen):
                _break(self.path, seen, self.stale_after)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.poll)

    def release(self) -> None:
        """Give the lease up (remove the file if it is still this owner's)."""
        if self._token is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        seen = _read(self.path)
        if seen is not None and seen.owner.get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            log.warning("lease %s was taken over while held (this process stalled)", self.path)
        self._token = None

    def __enter__(self) -> FileLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _hold(self, token: str) -> None:
        self._token = token
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._refresh, name=f"lease {self.path.name}", daemon=True
        )
        self._thread.start()

    def _refresh(self) -> None:
        """Touch the file every ``heartbeat`` seconds until released."""
        while not self._stop.wait(self.heartbeat):
            with contextlib.suppress(OSError):
                os.utime(self.path)


@contextlib.contextmanager
def lease(path: Path | str, timeout: float | None = None, **options: Any) -> Iterator[bool]:
    """Hold a :class:`FileLease` on ``path`` while inside; yield whether it is held.

    Parameters
    ----------
    path : Path or str
        The lease file.
    timeout : float, optional
        Give up after this many seconds (yield False); default wait for ever.
    **options
        ``heartbeat``, ``stale_after``, ``poll`` of :class:`FileLease`.
    """
    held_lease = FileLease(path, **options)
    held = held_lease.acquire(timeout)
    try:
        yield held
    finally:
        if held:
            held_lease.release()


class _Seen:
    """A lease file as a waiter saw it: identity, modification time and owner."""

    def __init__(self, inode: int, mtime_ns: int, text: str) -> None:
        self.stamp = (inode, mtime_ns, text)
        try:
            owner = json.loads(text) if text else {}
        except ValueError:
            owner = {}
        self.owner: dict[str, Any] = owner if isinstance(owner, dict) else {}


class _StaleWatch:
    """Decides when a waiter may take a lease over (see the module docstring)."""

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self._stamp: tuple[Any, ...] | None = None
        self._since = 0.0

    def gone(self, seen: _Seen) -> bool:
        if _dead_here(seen.owner):
            return True
        now = time.monotonic()
        if seen.stamp != self._stamp:
            self._stamp, self._since = seen.stamp, now
            return False
        return now - self._since >= self.stale_after


def _dead_here(owner: dict[str, Any]) -> bool:
    """Whether the owner is a process of this host that no longer exists."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _create(path: Path) -> str | None:
    """Create the lease file exclusively; return its token, or None if it exists."""
    token = uuid.uuid4().hex
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": token}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(owner))
        handle.flush()
        os.fsync(handle.fileno())
    return token


def _read(path: Path) -> _Seen | None:
    """Return the lease file as it is now, or None if there is none."""
    try:
        with open(path) as handle:
            stat = os.fstat(handle.fileno())
            return _Seen(stat.st_ino, stat.st_mtime_ns, handle.read())
    except FileNotFoundError:
        return None


def _break(path: Path, seen: _Seen, stale_after: float) -> None:
    """Remove the stale lease ``seen`` under the ``.break`` lease, if it is unchanged."""
    breaker = path.with_name(path.name + ".break")
    token = _create(breaker)
    if token is None:  # another waiter is breaking it; a breaker left by a crash expires
        stuck = _read(breaker)
        if stuck is not None and _dead_here(stuck.owner):
            with contextlib.suppress(FileNotFoundError):
                breaker.unlink()
        elif stuck is not None:
            age = time.time() - stuck.stamp[1] / 1e9
            if age > 2 * stale_after:
                with contextlib.suppress(FileNotFoundError):
                    breaker.unlink()
        time.sleep(0.05)
        return
    try:
        now = _read(path)
        if now is not None and now.stamp == seen.stamp:
            log.warning("taking over the stale lease %s (owner %s)", path, seen.owner or "?")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            breaker.unlink()
