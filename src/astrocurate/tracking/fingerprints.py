"""Fingerprints: what a run records of its outputs, its reuse key, its git state.

Each output file is recorded with its size, SHA-256 and sampled blocks (artifact
``outputs.json``); their :func:`content_hash` identifies the outputs. :func:`run_key`
identifies a step by its name, parameters and input runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import subprocess
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from astrocurate.cpus import usable_cpus
from astrocurate.tracking.store import LOCK_NAME

log = logging.getLogger(__name__)

#: Size of a sampled block of the quick fingerprint (the first, the last and a few
#: middle blocks of each file, at multiples of this size).
SAMPLE_BLOCK = 1 << 20
#: Middle blocks sampled per file, at offsets seeded by the file size.
SAMPLE_MIDDLE_BLOCKS = 4
#: Read size of the full hash: a multiple of :data:`SAMPLE_BLOCK`, so that one pass
#: also yields the sampled blocks.
_READ_CHUNK = 8 * SAMPLE_BLOCK
#: ``full`` (default): record each output file's SHA-256 at the end of a run;
#: ``sample``: record sizes and sampled blocks only (faster, weaker ``verify``).
HASH_MODE_ENV = "ASTROCURATE_OUTPUT_HASH"
#: Top-level output folders that may change after a run finished: SLURM job logs keep
#: being written after the last step (``logs/``), ``astrocurate report`` rewrites the
#: report (``report/``). ``verify`` lists their differences as notes, the quick check
#: skips them.
VOLATILE_DIRS: tuple[str, ...] = ("logs", "report")

ProgressCallback = Callable[[int], None]


def default_hash_workers() -> int:
    """Return how many files are hashed in parallel: the CPUs, at most 8."""
    return min(8, usable_cpus())


def hash_mode() -> str:
    """Return the output hash mode, ``full`` or ``sample`` (:data:`HASH_MODE_ENV`)."""
    mode = os.environ.get(HASH_MODE_ENV, "").strip().lower() or "full"
    if mode not in ("full", "sample"):
        log.warning("%s=%r: expected full or sample; using full", HASH_MODE_ENV, mode)
        return "full"
    return mode


def is_volatile(relative_path: str) -> bool:
    """Return whether an output path lies in a folder that may change after the run."""
    return relative_path.split("/", 1)[0] in VOLATILE_DIRS and "/" in relative_path


def sample_offsets(size: int, block: int = SAMPLE_BLOCK) -> list[int]:
    """Return the offsets of the sampled blocks of a file of ``size`` bytes.

    Parameters
    ----------
    size : int
        File size in bytes.
    block : int
        Block size; offsets are multiples of it.

    Returns
    -------
    list of int
        Every block of a small file; else the first, the last and
        :data:`SAMPLE_MIDDLE_BLOCKS` middle blocks chosen by a generator seeded with
        the size (the same file size always gives the same offsets).
    """
    n_blocks = -(-size // block)
    if n_blocks <= SAMPLE_MIDDLE_BLOCKS + 2:
        return [i * block for i in range(n_blocks)]
    rng = random.Random(f"astrocurate-sample-{size}")
    middle = sorted(rng.sample(range(1, n_blocks - 1), SAMPLE_MIDDLE_BLOCKS))
    return [0, *(i * block for i in middle), (n_blocks - 1) * block]


def _sample_update(digest: Any, offset: int, data: Any) -> None:
    digest.update(offset.to_bytes(8, "little"))
    digest.update(data)


def _read_into(handle: Any, view: memoryview) -> int:
    """Fill ``view`` from ``handle`` (short only at the end of the file); return the count."""
    filled = 0
    while filled < len(view):
        n = handle.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def _pread_block(fd: int, offset: int, block: int) -> bytes:
    """Read up to ``block`` bytes at ``offset`` (fewer only at the end of the file)."""
    parts = []
    while block > 0:
        data = os.pread(fd, block, offset)
        if not data:
            break
        parts.append(data)
        offset += len(data)
        block -= len(data)
    return b"".join(parts)


def sample_digest(path: Path, offsets: Iterable[int], block: int = SAMPLE_BLOCK) -> str:
    """Return the SHA-256 over the sampled blocks of a file (each preceded by its offset).

    Parameters
    ----------
    path : Path
        The file.
    offsets : iterable of int
        Block offsets, as :func:`sample_offsets` gives them (recorded with the run).
    block : int
        Block size.
    """
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in offsets:
            _sample_update(digest, offset, _pread_block(fd, offset, block))
    finally:
        os.close(fd)
    return digest.hexdigest()


def fingerprint_file(
    path: Path, *, full: bool = True, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Return what a run records of one output file.

    The full SHA-256 and the sampled blocks are computed in one sequential pass of
    8 MiB reads into a reused buffer (hashlib releases the GIL, so threads hashing
    different files run in parallel).

    Parameters
    ----------
    path : Path
        The file.
    full : bool
        Hash the whole file; otherwise read the sampled blocks only.
    progress : callable, optional
        Called with the number of bytes read after each read.

    Returns
    -------
    dict
        ``{"size": int, "sha256": str, "sample": {"block": int, "offsets": [int, ...],
        "sha256": str}}``, without ``sha256`` when ``full`` is false.
    """
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        offsets = sample_offsets(size)
        if not full:
            entry: dict[str, Any] = {"size": size}
            sample = sample_digest(path, offsets)
            if progress is not None:
                progress(min(size, len(offsets) * SAMPLE_BLOCK))
        else:
            whole, sampled = hashlib.sha256(), hashlib.sha256()
            pending = iter(offsets)
            wanted = next(pending, None)
            view = memoryview(bytearray(_READ_CHUNK))
            position = 0
            while n := _read_into(handle, view):
                chunk = view[:n]
                whole.update(chunk)
                while wanted is not None and wanted < position + n:
                    start = wanted - position
                    _sample_update(sampled, wanted, chunk[start : start + SAMPLE_BLOCK])
                    wanted = next(pending, None)
                position += n
                if progress is not None:
                    progress(n)
            if position != size:  # the file changed while it was read: hash what is there
                return fingerprint_file(path, full=full, progress=progress)
            entry = {"size": size, "sha256": whole.hexdigest()}
            sample = sampled.hexdigest()
    entry["sample"] = {"block": SAMPLE_BLOCK, "offsets": offsets, "sha256": sample}
    return entry


def content_hash(listing: Mapping[str, Mapping[str, Any]]) -> str:
    """Return the content hash of a run from its per-file listing.

    SHA-256 over the sorted JSON of ``{path: {"size", "sha256"}}``: the sampled blocks
    do not enter it, so runs recorded before they existed keep their hash. A file
    recorded without its full hash (``ASTROCURATE_OUTPUT_HASH=sample``) enters with its
    sampled-block hash instead.
    """
    core = {}
    for path, entry in listing.items():
        if "sha256" in entry:
            core[path] = {"size": entry["size"], "sha256": entry["sha256"]}
        else:
            core[path] = {"size": entry["size"], "sample_sha256": entry["sample"]["sha256"]}
    canonical = json.dumps(core, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def output_files(directory: Path) -> list[Path]:
    """Return the files that make up a run's output, sorted.

    Left out: the run lock, and temporaries of writes in progress or interrupted (any
    file or folder named ``.tmp*``, such as the report's ``.tmp-report-*`` folder).
    """
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and p.name != LOCK_NAME
        and not any(part.startswith(".tmp") for part in p.relative_to(directory).parts)
    )


def remove_temporaries(directory: Path) -> int:
    """Remove the temporaries of interrupted attempts from a run directory.

    Call it only while holding the run's lock (:func:`tracked_step` does): every
    ``.tmp*`` file or folder under ``directory`` is then a leftover of a killed
    process. Returns how many were removed.
    """
    import shutil

    found = sorted(directory.rglob(".tmp*"), key=lambda p: len(p.parts))
    removed = 0
    for path in found:
        if not path.exists() and not path.is_symlink():
            continue  # inside a folder removed already
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed += 1
    if removed:
        log.info("removed %d partial file(s) of an interrupted attempt in %s", removed, directory)
    return removed


def fingerprint_files(
    files: list[Path],
    *,
    full: bool = True,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[dict[str, Any]]:
    """Return :func:`fingerprint_file` of each file, computed by a pool of threads.

    Parameters
    ----------
    files : list of Path
        Files to hash.
    full : bool
        Hash whole files (else sampled blocks only).
    workers : int, optional
        Threads; default :func:`default_hash_workers`.
    progress : callable, optional
        Called with byte counts as they are read (from the worker threads).
    """
    n_workers = max(1, min(workers or default_hash_workers(), len(files) or 1))
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        return list(pool.map(lambda p: fingerprint_file(p, full=full, progress=progress), files))


def hash_outputs(
    directory: Path,
    workers: int | None = None,
    *,
    full: bool = True,
    progress: ProgressCallback | None = None,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Hash every output file of a run.

    Parameters
    ----------
    directory : Path
        The run's output directory.
    workers : int, optional
        Files hashed in parallel (hashlib releases the GIL); default
        :func:`default_hash_workers`.
    full : bool
        Record each file's full SHA-256 (else sizes and sampled blocks only).
    progress : callable, optional
        Called with byte counts as they are read.

    Returns
    -------
    content_hash : str
        :func:`content_hash` of the listing.
    listing : dict
        ``{relative_path: {"size": int, "sha256": str, "sample": {...}}}``
        (:func:`fingerprint_file`).
    """
    files = output_files(directory)
    entries = fingerprint_files(files, full=full, workers=workers, progress=progress)
    listing = {
        p.relative_to(directory).as_posix(): entry for p, entry in zip(files, entries, strict=True)
    }
    return content_hash(listing), listing


def run_key(step: str, params: Mapping[str, Any], input_run_ids: Iterable[str]) -> str:
    """Return the reuse key of a step: a hash of its name, parameters and input runs."""
    payload = {
        "step": step,
        "params": {k: param_text(v) for k, v in sorted(params.items())},
        "inputs": sorted(input_run_ids),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def param_text(value: Any) -> str:
    """Return the text MLflow stores for a parameter value (lists as JSON)."""
    if isinstance(value, (list, tuple)):
        return json.dumps([param_text(v) if isinstance(v, Path) else v for v in value])
    if isinstance(value, Path):
        return str(value)
    return str(value)


def git_state(source: Path | None = None) -> tuple[str | None, bool | None]:
    """Return the git commit of the astrocurate source tree and whether it is dirty.

    Parameters
    ----------
    source : Path, optional
        A directory inside the checkout; default the package's own.

    Returns
    -------
    tuple
        ``(commit, dirty)``: ``dirty`` is True when a tracked file differs from the commit
        (untracked files do not count); ``(None, None)`` outside a git checkout.
    """
    source = Path(__file__).resolve().parent if source is None else source
    command = ["git", "-C", str(source), "status", "--porcelain=v2", "--branch"]
    try:
        result = subprocess.run(
            [*command, "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    lines = result.stdout.splitlines()
    head = [line.split()[-1] for line in lines if line.startswith("# branch.oid ")]
    if result.returncode != 0 or not head or not _is_hex(head[0]):
        return None, None
    return head[0], any(not line.startswith("#") for line in lines)


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)
