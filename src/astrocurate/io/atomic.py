"""Atomic writes: a temporary name in the same directory, fsync, then rename.

A reader (or a rerun after a kill) sees either the old file or the complete new one, never
a partial file under the final name. Temporaries are named ``.tmp-<pid>-<name>`` so a
step can find and remove an interrupted attempt's leftovers. :func:`atomic_directory`
does the same for a whole folder (the curation report).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def temporary_path(path: Path) -> Path:
    """Return the temporary name this process writes ``path`` under."""
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: Path, sync: bool = True) -> Iterator[Path]:
    """Yield the temporary name to write ``path`` under; fsync and rename it on success.

    For writers that take a file name (parquet, HDF5, FITS, PNG, a memmap). If the block
    raises, the temporary is removed and ``path`` is left as it was. ``sync=False`` skips
    the fsync, for many small files whose run records their hashes when it finishes
    (exported cutouts): the rename alone keeps a partial file from a final name.

    Examples
    --------
    >>> with atomic_path(directory / "plot.png") as tmp:  # doctest: +SKIP
    ...     figure.savefig(tmp, format="png")
    """
    tmp = temporary_path(path)
    try:
        yield tmp
        if sync:
            fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as ``.npy`` atomically (no pickles)."""
    tmp = temporary_path(path)
    with open(tmp, "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_torch(path: Path, obj: Any) -> None:
    """Write a ``torch.save`` archive of ``obj`` to ``path`` atomically.

    The archive is built in memory first: ``torch.save`` names its entries after the file it
    writes to, so writing the temporary file directly would make the same object give other
    bytes under every process's temporary name.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def save_npz(path: Path, meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays and a JSON ``meta`` string to one ``.npz`` atomically (no pickles)."""
    tmp = temporary_path(path)
    with open(tmp, "wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


#: ``sync_file_range``'s flag that starts writing a range out without waiting for it.
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Any:
    """Return libc's ``sync_file_range`` (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing bytes ``offset:offset + nbytes`` of an open file to disk; do not wait.

    A large file written and then fsynced waits at the end for all of it at the disk's
    speed; starting the write-out of what is written while more is being written overlaps
    the two, and the final fsync finds little left. Linux only (``sync_file_range``);
    elsewhere, and where the file system refuses, nothing happens: the fsync still makes
    the data durable.
    """
    function = _sync_file_range()
    if function is not None and nbytes > 0:
        function(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` atomically, optionally with permission bits ``mode``."""
    tmp = temporary_path(path)
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    if mode is not None:
        tmp.chmod(mode)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (floats for numpy scalars)."""
    write_text(path, json.dumps(obj, indent=1, default=float) + "\n")


@contextlib.contextmanager
def atomic_directory(final: Path, prefix: str) -> Iterator[Path]:
    """Yield a new folder beside ``final``; swap it into place when the block succeeds.

    The folder is built under ``<prefix><pid>-*``; then the old ``final`` is renamed out of
    the way (``<prefix><pid>-old-*``), the new one into place, and the old one removed. A
    process killed at any point leaves ``final`` complete (old or new) or absent, never
    partial; the caller removes leftovers named ``<prefix><pid>-*`` of dead processes. If
    the block raises, the new folder is removed and the old one put back.
    """
    built = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=final.parent))
    old = None
    try:
        yield built
        os.chmod(built, 0o755)
        if final.exists():
            old = final.parent / f"{prefix}{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(built, final)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        if old is not None and not final.exists():
            with contextlib.suppress(OSError):
                os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
