"""Worker processes on one machine: the one process pool of the steps that fan out by file.

:func:`map_in_workers` runs a function over tasks in processes forked from a fork server
that has already imported the workers' modules (:func:`start_forkserver`, which a step may
call early so that those imports overlap its own start). Each worker exits as soon as the
calling process is gone (end-of-file on a pipe only the caller writes to), so workers of
a killed run do not go on writing into a run directory that a rerun resumes. A worker
that dies (killed by the system when memory runs out, or by a signal) stops the map with
one line, :class:`~astrocurate.errors.WorkerDiedError`: what finished is kept, and
rerunning the command resumes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any

from astrocurate.errors import WorkerDiedError

__all__ = ["map_in_workers", "start_forkserver"]


def start_forkserver(preload: Sequence[str]) -> Any:
    """Start the fork server with ``preload`` imported; return its multiprocessing context.

    Idempotent. Starting it before the work lets its imports run in another process
    while this one does something else.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return context


def map_in_workers(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    *,
    workers: int,
    preload: Sequence[str],
    consume: Callable[[Iterator[Any]], None],
    what: str,
    setup: Callable[[], None] | None = None,
) -> None:
    """Hand ``consume`` the results of ``fn`` over ``tasks``, in order, from worker processes.

    With one worker, or at most one task, ``fn`` runs in this process (no fork server).

    Parameters
    ----------
    fn : callable
        A module-level function of one task (it and the tasks are pickled).
    tasks : sequence
        The tasks.
    workers : int
        Processes at most (no more than there are tasks).
    preload : sequence of str
        Modules the fork server imports once, so that every worker starts with them.
    consume : callable
        Called once, in this process, with the iterator of results.
    what : str
        What the workers do, for the message if one dies ("cutting the mosaics").
    setup : callable, optional
        A module-level function each worker process calls when it starts (not called
        when ``fn`` runs in this process).

    Raises
    ------
    WorkerDiedError
        If a worker process ends abruptly (out of memory, a signal).
    """
    if workers <= 1 or len(tasks) <= 1:
        consume(map(fn, tasks))
        return
    context = start_forkserver(preload)
    lifeline, keep_alive = context.Pipe(duplex=False)
    try:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(lifeline, setup),
        ) as pool:
            try:
                consume(pool.map(fn, tasks))
            except BrokenProcessPool as exc:
                raise WorkerDiedError.doing(what) from exc
    finally:
        keep_alive.close()
        lifeline.close()


def _init_worker(lifeline: Connection, setup: Callable[[], None] | None) -> None:
    """Exit with the calling process (end-of-file on ``lifeline``); run ``setup``."""
    threading.Thread(target=_exit_with_caller, args=(lifeline,), daemon=True).start()
    if setup is not None:
        setup()


def _exit_with_caller(lifeline: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv()  # nothing is ever sent: returns only at end-of-file
    os._exit(1)
