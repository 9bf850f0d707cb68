"""MLflow tracking: one run per pipeline step, chained by run IDs.

Every stage records itself through :func:`tracked_step`, which gives each run

- the step's run name from the user's guide (``cutting_out``, ...),
- all parameters, the IDs of its input runs, the random seed,
- the package version and git commit, the host and process,
- its output directory (one directory per run, the contract between steps),
- a content hash of the outputs and a per-file listing (artifact ``outputs.json``:
  size, SHA-256 and sampled blocks of each file), checked cheaply by the next step
  (:func:`require_run`) and in full by ``astrocurate verify``,
- a ``metadata.json`` artifact describing the run.

A run is FINISHED only after its outputs are complete. An exception marks it
FAILED, SIGTERM/SIGINT mark it KILLED. Running a step again with the same
inputs and parameters reuses the finished run, or resumes the unfinished one
in the same output directory.

The lookup half of the module (:func:`get_run`, :func:`require_run`,
:func:`find_runs`) is what the next step and ``find_run`` use.

The store is ``MLFLOW_TRACKING_URI`` when set, otherwise the embedded
``sqlite:///mlflow.db`` of the current directory (what ``mlflow ui`` opens when
started there). The path is made absolute so that a step started from another
directory (``run.sh`` in a clustering directory) writes to the same store.

Importing MLflow takes seconds, so the lookups read an existing local sqlite store
directly, read-only, with the queries MLflow makes (:func:`_direct_store`;
``ASTROCURATE_FAST_LOOKUP=0`` turns this off): ``find_run`` and the rerun of a
finished step never import MLflow. Writes always go through MLflow, with one
client per process and tracking URI (:func:`client`).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astrocurate import __version__, steps
from astrocurate.cpus import usable_cpus
from astrocurate.errors import (
    InvalidArgumentError,
    InvalidRunError,
    RunNotFoundError,
    StepInterrupted,
)

log = logging.getLogger(__name__)

#: Run names of the pipeline steps, in pipeline order (the guide's names).
STEP_NAMES: tuple[str, ...] = steps.ORDER

DEFAULT_EXPERIMENT = "astrocurate"
TAG_STEP = "astrocurate.step"
TAG_OUTPUT_DIR = "astrocurate.output_dir"
TAG_INPUTS = "astrocurate.input_run_ids"
TAG_RUN_KEY = "astrocurate.run_key"
TAG_CONTENT_HASH = "astrocurate.content_hash"
TAG_VERSION = "astrocurate.version"
TAG_HOST = "astrocurate.host"
TAG_PID = "astrocurate.pid"
TAG_ERROR = "astrocurate.error"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
#: "true" when the run's code had tracked changes not in that commit.
TAG_GIT_DIRTY = "astrocurate.git_dirty"
TAG_SOURCE = "mlflow.source.name"
TAG_USER = "mlflow.user"
TAG_NOTE = "mlflow.note.content"

LOCK_NAME = ".astrocurate.lock"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_FINISHED = "FINISHED"


# --------------------------------------------------------------------------- store


def tracking_uri() -> str:
    """Return the tracking URI every step uses.

    Returns
    -------
    str
        ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


_URI_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#]*)@")
_URI_SECRET_QUERY = re.compile(
    r"(?i)(?P<name>[?&;][^=&;#]*(?:pass|pwd|secret|token|key|auth|credential)[^=&;#]*=)[^&;#]*"
)


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password or token replaced by ``***``.

    ``postgresql://user:pw@host/db`` gives ``postgresql://user:***@host/db``,
    ``https://TOKEN@host`` gives ``https://***@host``, and query values whose name
    looks secret (``?password=...``, ``&token=...``) become ``***``. Used wherever a
    tracking URI is printed, logged or written into a file.
    """
    match = _URI_USERINFO.match(uri)
    if match:
        user, colon, _ = match["userinfo"].partition(":")
        masked = f"{user}:***" if colon else "***"
        uri = f"{match['scheme']}{masked}@{uri[match.end() :]}"
    return _URI_SECRET_QUERY.sub(lambda m: f"{m['name']}***", uri)


def experiment_name() -> str:
    """Return the MLflow experiment name (``MLFLOW_EXPERIMENT_NAME`` or ``astrocurate``)."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT


#: One ``MlflowClient`` per process and tracking URI (see :func:`client`).
_CLIENTS: dict[tuple[int, str], Any] = {}
#: Experiment IDs already looked up, by process, tracking URI and experiment name.
_EXPERIMENTS: dict[tuple[int, str, str], str] = {}
_CACHE_LOCK = threading.Lock()


def client() -> Any:
    """Return the process's ``MlflowClient`` on :func:`tracking_uri`.

    MLflow is imported on the first call only (importing it takes seconds). The
    client is created once per process and tracking URI, so a change of
    ``MLFLOW_TRACKING_URI`` (tests) gets a client on the new store.

    Returns
    -------
    mlflow.tracking.MlflowClient
    """
    key = (os.getpid(), tracking_uri())
    cached = _CLIENTS.get(key)
    if cached is None:
        from mlflow.tracking import MlflowClient

        with _CACHE_LOCK:
            cached = _CLIENTS.get(key)
            if cached is None:
                with _store_init_lock(key[1]) as local:
                    cached = MlflowClient(tracking_uri=key[1])
                    if local:  # make MLflow create or migrate the store under the lock
                        cached.search_experiments(max_results=1)
                _CLIENTS[key] = cached
    return cached


def _sqlite_file(uri: str) -> Path | None:
    """Return the file of a plain local ``sqlite:///`` store URI, or None for other stores."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or any(c in uri for c in "?#%"):
        return None
    return Path(uri[len(prefix) :])


@contextlib.contextmanager
def _store_init_lock(uri: str) -> Iterator[bool]:
    """Hold a lock beside a local sqlite store while MLflow opens (creates, migrates) it.

    Processes that open a new store at once, such as the tasks of a SLURM job array,
    would otherwise all run MLflow's schema migrations, and all but one fail
    (``duplicate column``). Other stores need no lock. Yields whether the store is local.
    """
    path = _sqlite_file(uri)
    if path is None:
        yield False
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def experiment_id(mlflow_client: Any, create: bool = True) -> str | None:
    """Return the experiment's ID, creating it when asked (safe against a concurrent create).

    Parameters
    ----------
    mlflow_client : mlflow.tracking.MlflowClient
        Client on the tracking store.
    create : bool
        Create the experiment (:func:`experiment_name`) when it does not exist.

    Returns
    -------
    str or None
        The ID; None when the experiment does not exist and ``create`` is false.
        An ID once found is remembered for the process, store and name.
    """
    name = experiment_name()
    uri = getattr(mlflow_client, "tracking_uri", None)
    key = (os.getpid(), uri, name) if isinstance(uri, str) else None
    if key is not None and key in _EXPERIMENTS:
        return _EXPERIMENTS[key]
    found = _experiment_id(mlflow_client, name, create)
    if found is not None and key is not None:
        _EXPERIMENTS[key] = found
    return found


def _experiment_id(mlflow_client: Any, name: str, create: bool) -> str | None:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    try:
        return mlflow_client.create_experiment(name)
    except Exception:  # another process created it between our two calls
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# --------------------------------------------------------------------------- direct reads

#: Set to ``0`` to read runs through MLflow even from a local sqlite store.
FAST_LOOKUP_ENV = "ASTROCURATE_FAST_LOOKUP"
#: The columns of MLflow's sqlite schema that the direct reads use.
_READ_COLUMNS = {
    "experiments": {"experiment_id", "name"},
    "runs": {
        "run_uuid",
        "name",
        "status",
        "start_time",
        "lifecycle_stage",
        "artifact_uri",
        "experiment_id",
    },
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
}


class _NoDirectReadError(Exception):
    """The local store cannot be read directly: read it through MLflow instead."""


def _direct_store() -> Path | None:
    """Return the sqlite file that lookups may read without MLflow, or None.

    Importing MLflow costs seconds, so the read-only lookups (:func:`get_run`,
    :func:`find_runs`, the reuse check of :func:`tracked_step`) read a local
    ``sqlite:///`` store with :mod:`sqlite3`, read-only, with the queries MLflow's
    ``SqlAlchemyStore`` makes (active runs, newest first). Anything else goes
    through MLflow: a server, a URI with options, a store file that does not exist
    yet (MLflow creates it), MLflow workspaces, ``ASTROCURATE_FAST_LOOKUP=0``, and
    any store whose tables lack the columns read here.
    """
    if os.environ.get(FAST_LOOKUP_ENV, "").strip().lower() in ("0", "false", "no"):
        return None
    if os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() not in ("", "0", "false"):
        return None
    path = _sqlite_file(tracking_uri())
    return path if path is not None and path.is_file() else None


@contextlib.contextmanager
def _read_store(path: Path) -> Iterator[Any]:
    """Open ``path`` read-only; raise :class:`_NoDirectReadError` when it does not fit."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise _NoDirectReadError(str(exc)) from exc
    try:
        for table, columns in _READ_COLUMNS.items():
            present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            if not columns <= present:
                raise _NoDirectReadError(f"table {table} lacks {sorted(columns - present)}")
        yield connection
    except sqlite3.Error as exc:
        raise _NoDirectReadError(str(exc)) from exc
    finally:
        connection.close()


def _direct_experiment_id(connection: Any, name: str) -> str | None:
    rows = connection.execute(
        "SELECT experiment_id FROM experiments WHERE name = ?", (name,)
    ).fetchall()
    if len(rows) > 1:
        raise _NoDirectReadError(f"{len(rows)} experiments named {name!r}")
    return str(rows[0][0]) if rows else None


def _direct_records(connection: Any, rows: list[tuple[Any, ...]]) -> list[RunRecord]:
    """Return the records of ``rows`` (run_uuid, name, status, start_time), in order."""
    ids = [row[0] for row in rows]
    params: dict[str, dict[str, str]] = {run: {} for run in ids}
    tags: dict[str, dict[str, str]] = {run: {} for run in ids}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for table, into in (("params", params), ("tags", tags)):
            query = f"SELECT run_uuid, key, value FROM {table} WHERE run_uuid IN ({marks})"
            for run, key, value in connection.execute(query, chunk):
                into[run][key] = value
    return [
        RunRecord(
            run_id=run,
            name=name or tags[run].get("mlflow.runName", ""),
            status=status,
            start_time=int(start_time or 0),
            params=params[run],
            tags=tags[run],
        )
        for run, name, status, start_time in rows
    ]


def _direct_search(
    path: Path, step: str | None, run_key: str | None, include_unfinished: bool
) -> list[RunRecord]:
    """Return what ``find_runs`` gets from MLflow's ``search_runs``, read directly."""
    with _read_store(path) as connection:
        experiment = _direct_experiment_id(connection, experiment_name())
        if experiment is None:
            return []
        where = ["r.experiment_id = ?", "r.lifecycle_stage = 'active'"]
        values: list[Any] = [int(experiment) if experiment.isdigit() else experiment]
        if step:
            where.append("r.name = ?")
            values.append(step)
        if run_key:
            where.append(
                "EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid"
                " AND t.key = ? AND t.value = ?)"
            )
            values += [TAG_RUN_KEY, run_key]
        if not include_unfinished:
            where.append("r.status = ?")
            values.append(_FINISHED)
        rows = connection.execute(
            "SELECT r.run_uuid, r.name, r.status, r.start_time FROM runs r WHERE "
            + " AND ".join(where)
            # MLflow's order for "attributes.start_time DESC": missing times last, ties by ID
            + " ORDER BY (r.start_time IS NULL), r.start_time DESC, r.run_uuid",
            values,
        ).fetchall()
        return _direct_records(connection, rows)


def _direct_run(path: Path, run_id: str) -> tuple[RunRecord, str] | None:
    """Return the record and artifact URI of one run (any experiment or state), or None."""
    with _read_store(path) as connection:
        rows = connection.execute(
            "SELECT run_uuid, name, status, start_time, artifact_uri FROM runs WHERE run_uuid = ?",
            (run_id,),
        ).fetchall()
        if len(rows) != 1:
            return None
        (record,) = _direct_records(connection, [rows[0][:4]])
        return record, rows[0][4] or ""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunRecord:
    """What the pipeline needs to know about one tracked run.

    Attributes
    ----------
    run_id, name, status : str
        MLflow run ID, run name (the step) and status (``FINISHED``, ``RUNNING``, ...).
    start_time : int
        Start time in milliseconds since the epoch.
    params, tags : dict of str to str
        The run's parameters and tags as MLflow stores them.
    """

    run_id: str
    name: str
    status: str
    start_time: int
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_mlflow(cls, run: Any) -> RunRecord:
        """Build a record from an ``mlflow.entities.Run``."""
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or run.data.tags.get("mlflow.runName", ""),
            status=run.info.status,
            start_time=int(run.info.start_time or 0),
            params=dict(run.data.params),
            tags=dict(run.data.tags),
        )

    @property
    def step(self) -> str:
        """Return the pipeline step that produced the run."""
        return self.tags.get(TAG_STEP, self.name)

    @property
    def output_dir(self) -> Path | None:
        """Return the run's output directory, if it recorded one."""
        value = self.tags.get(TAG_OUTPUT_DIR)
        return Path(value) if value else None

    @property
    def input_run_ids(self) -> list[str]:
        """Return the IDs of the runs this run read from."""
        return json.loads(self.tags.get(TAG_INPUTS, "[]"))

    @property
    def finished(self) -> bool:
        """Return whether the run completed successfully."""
        return self.status == _FINISHED


# --------------------------------------------------------------------------- lookup


def parse_run_id(value: str, argument: str = "run ID") -> str:
    """Check that ``value`` is an MLflow run ID and return it normalised.

    Parameters
    ----------
    value : str
        Text given by the user.
    argument : str
        Name of the command-line argument, for the message.

    Raises
    ------
    RunNotFoundError
        If the text is not 32 hexadecimal characters. A placeholder such as the
        guide's ``CUTOUTS_RUN_ID_64`` gets a hint to write ``$CUTOUTS_RUN_ID_64``.
    """
    text = str(value).strip()
    if _RUN_ID.match(text.lower()):
        return text.lower()
    if not text:
        raise RunNotFoundError(
            f"{argument}: got an empty run ID (did the command that should have produced it fail?)"
        )
    hint = ""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        hint = f'; if {text} is a shell variable, write ${text} (or "${text}")'
    raise RunNotFoundError(
        f"{argument}: {text!r} is not an MLflow run ID (expected 32 hexadecimal characters){hint}"
    )


def get_run(run_id: str, argument: str = "run ID") -> RunRecord:
    """Return the record of one run.

    Raises
    ------
    RunNotFoundError
        If ``run_id`` is malformed or names no run in the tracking store.
    """
    run_id = parse_run_id(run_id, argument)
    path = _direct_store()
    if path is not None:
        try:
            found = _direct_run(path, run_id)
        except _NoDirectReadError as exc:
            log.debug("reading run %s through MLflow: %s", run_id, exc)
        else:
            if found is None:
                store = redact_uri(tracking_uri())
                raise RunNotFoundError(f"{argument}: no run {run_id} in the tracking store {store}")
            return found[0]
    from mlflow.exceptions import MlflowException

    try:
        run = client().get_run(run_id)
    except MlflowException as exc:
        raise RunNotFoundError(
            f"{argument}: no run {run_id} in the tracking store {redact_uri(tracking_uri())}"
        ) from exc
    return RunRecord.from_mlflow(run)


def require_run(run_id: str, step: str, argument: str = "run ID") -> RunRecord:
    """Return a finished run of ``step`` whose output directory exists.

    Parameters
    ----------
    run_id : str
        The run ID given by the user.
    step : str
        The step the run must come from, e.g. ``"cutting_out"``.
    argument : str
        The command-line argument, named in messages.

    Raises
    ------
    RunNotFoundError
        If there is no such run.
    InvalidRunError
        If it is from another step, did not finish, or its outputs are gone or changed
        (sizes and sampled blocks, :func:`quick_check_outputs`; skipped when
        ``ASTROCURATE_SKIP_INPUT_CHECK=1``).
    """
    record = get_run(run_id, argument)
    if record.step != step:
        raise InvalidRunError(
            f"{argument}: run {record.run_id} is a {record.step!r} run, expected a {step!r} run"
        )
    if not record.finished:
        raise InvalidRunError(
            f"{argument}: {step} run {record.run_id} is {record.status}, not FINISHED; "
            f"rerun the {step} step (the same command resumes it) and wait for it to finish"
        )
    out = record.output_dir
    if out is None or not out.is_dir():
        raise InvalidRunError(
            f"{argument}: output directory {out} of {step} run {record.run_id} is missing "
            "(moved or deleted?); restore it or rerun that step"
        )
    if os.environ.get(SKIP_INPUT_CHECK_ENV, "").strip() not in ("1", "true", "yes"):
        quick_check_outputs(record, argument)
    return record


def find_runs(
    step: str | None = None,
    *,
    params: Mapping[str, str] | None = None,
    input_run_ids: Iterable[str] | None = None,
    run_key: str | None = None,
    include_unfinished: bool = False,
) -> list[RunRecord]:
    """Return matching runs, most recent first.

    Parameters
    ----------
    step : str, optional
        Run name to match.
    params : mapping, optional
        Parameter filters; values match as text or as equal numbers (``0.5 == .5``).
    input_run_ids : iterable of str, optional
        Match runs whose set of input runs is exactly this set (order-insensitive).
    run_key : str, optional
        Match runs with this reuse key (same step, inputs and parameters).
    include_unfinished : bool
        Also return runs that are RUNNING, FAILED or KILLED.

    Returns
    -------
    list of RunRecord

    Notes
    -----
    A local sqlite store is read directly, without importing MLflow
    (:func:`_direct_store`); other stores through MLflow's ``search_runs``.
    """
    records = _search_records(step, run_key, include_unfinished)
    wanted_inputs = set(input_run_ids) if input_run_ids is not None else None
    return [
        r
        for r in records
        if params_match(r.params, params or {})
        and (wanted_inputs is None or set(r.input_run_ids) == wanted_inputs)
    ]


def _search_records(
    step: str | None,
    run_key: str | None,
    include_unfinished: bool,
    mlflow_client: Any = None,
) -> list[RunRecord]:
    """Return the runs of the experiment matching the filters, newest first.

    Read directly from a local sqlite store unless ``mlflow_client`` is given.
    """
    path = _direct_store() if mlflow_client is None else None
    if path is not None:
        try:
            return _direct_search(path, step, run_key, include_unfinished)
        except _NoDirectReadError as exc:
            log.debug("searching runs through MLflow: %s", exc)
    mlflow_client = mlflow_client if mlflow_client is not None else client()
    experiment = experiment_id(mlflow_client, create=False)
    if experiment is None:
        return []
    clauses = []
    if step:
        clauses.append(f"attributes.run_name = '{step}'")
    if run_key:
        clauses.append(f"tags.`{TAG_RUN_KEY}` = '{run_key}'")
    if not include_unfinished:
        clauses.append(f"attributes.status = '{_FINISHED}'")
    runs = _search_all(mlflow_client, experiment, " and ".join(clauses))
    return [RunRecord.from_mlflow(run) for run in runs]


def _search_all(mlflow_client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Return every run matching the filter, newest first (follows page tokens)."""
    runs: list[Any] = []
    token = None
    while True:
        page = mlflow_client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            max_results=5000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def params_match(stored: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Return whether every wanted parameter equals the stored one (as text or number)."""
    for key, value in wanted.items():
        if key not in stored:
            return False
        if stored[key] == str(value):
            continue
        try:
            if float(stored[key]) != float(value):
                return False
        except ValueError:
            return False
    return True


# --------------------------------------------------------------------------- hashing

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
#: Set to 1 to skip the quick check of an input run's outputs in :func:`require_run`.
SKIP_INPUT_CHECK_ENV = "ASTROCURATE_SKIP_INPUT_CHECK"
#: Top-level output folders that may change after a run finished: SLURM job logs keep
#: being written after the last step (``logs/``), ``astrocurate report`` rewrites the
#: report (``report/``). ``verify`` lists their differences as notes, the quick check
#: skips them.
VOLATILE_DIRS: tuple[str, ...] = ("logs", "report")
#: Most bytes the quick check of an input run reads (files past it are size-checked only).
QUICK_CHECK_BYTES = 64 << 20

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


def recorded_listing(run_id: str) -> dict[str, dict[str, Any]] | None:
    """Return the per-file listing a run recorded (artifact ``outputs.json``), or None.

    A local artifact store is read in place; a remote one (``mlflow server``) is
    downloaded without MLflow's progress bar.
    """
    path = _direct_store()
    if path is not None:
        try:
            found = _direct_run(path, run_id)
        except _NoDirectReadError as exc:
            log.debug("reading run %s through MLflow: %s", run_id, exc)
        else:
            local = _local_path(found[1]) if found is not None else None
            if local is not None:
                try:
                    return json.loads((local / "outputs.json").read_text())
                except (OSError, ValueError) as exc:
                    log.debug("run %s: no readable outputs.json: %s", run_id, exc)
                    return None
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client = client()
        local = _local_path(mlflow_client.get_run(run_id).info.artifact_uri or "")
        if local is not None:
            return json.loads((local / "outputs.json").read_text())
        with tempfile.TemporaryDirectory() as tmp, _no_artifact_progress_bar():
            path = mlflow_client.download_artifacts(run_id, "outputs.json", tmp)
            return json.loads(Path(path).read_text())
    except (MlflowException, OSError, ValueError) as exc:
        log.debug("run %s: no readable outputs.json: %s", run_id, exc)
        return None


def _local_path(uri: str) -> Path | None:
    """Return the directory of a ``file:`` (or plain path) URI; None for other schemes."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(uri) if uri and not parsed.scheme else None


@contextlib.contextmanager
def _no_artifact_progress_bar() -> Iterator[None]:
    """Keep MLflow from drawing a download progress bar on stderr."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def check_reusable(record: RunRecord) -> None:
    """Check a finished run cheaply before a rerun of its step reuses it.

    The outputs must still be those the run recorded (:func:`quick_check_outputs`:
    sizes of every file, sampled blocks). Skipped when ``ASTROCURATE_SKIP_INPUT_CHECK=1``.

    Raises
    ------
    InvalidRunError
        In one line naming the run and the first file missing or changed, and what to
        do: ``--force`` recomputes into a new run, ``astrocurate verify`` tells more.
    """
    if os.environ.get(SKIP_INPUT_CHECK_ENV, "").strip() in ("1", "true", "yes"):
        return
    quick_check_outputs(record, reuse=True)


def quick_check_outputs(record: RunRecord, argument: str = "run ID", *, reuse: bool = False) -> int:
    """Check a finished run's outputs cheaply against what it recorded.

    Every recorded file must exist with its recorded size; the sampled blocks of the
    files are hashed again (in a random order, up to :data:`QUICK_CHECK_BYTES` read,
    in parallel). Files under :data:`VOLATILE_DIRS` are skipped. A run that recorded
    no listing, or no sampled blocks (recorded before they existed), is checked as far
    as its record allows.

    Parameters
    ----------
    record : RunRecord
        A finished run whose output directory exists.
    argument : str
        The command-line argument, named in messages.
    reuse : bool
        The run is about to be reused by a rerun of its own step (the message says so).

    Returns
    -------
    int
        The number of files whose sampled blocks were checked.

    Raises
    ------
    InvalidRunError
        Naming the first file that is missing or differs.
    """
    out = record.output_dir
    listing = recorded_listing(record.run_id)
    if out is None or listing is None:
        log.warning(
            "%s: run %s recorded no outputs.json; its outputs are not checked",
            argument,
            record.run_id,
        )
        return 0

    def fail(relative: str, what: str) -> InvalidRunError:
        if reuse:
            return InvalidRunError(
                f"cannot reuse finished {record.step} run {record.run_id} (same inputs and "
                f"parameters): its output file {out / relative} {what} since it finished; "
                f"rerun with --force to recompute into a new run, or run "
                f"`astrocurate verify {record.run_id}` for a full report"
            )
        return InvalidRunError(
            f"{argument}: output file {out / relative} of {record.step} run {record.run_id} "
            f"{what} since the run finished; rerun the {record.step} step with --force, or "
            f"run `astrocurate verify {record.run_id}` for a full report"
        )

    sampled = []
    for relative, entry in listing.items():
        if is_volatile(relative):
            continue
        try:
            size = (out / relative).stat().st_size
        except FileNotFoundError:
            raise fail(relative, "was deleted") from None
        if size != entry["size"]:
            raise fail(relative, f"changed size ({size} bytes, recorded {entry['size']})")
        if "sample" in entry:
            sampled.append((relative, entry["sample"]))
    random.shuffle(sampled)
    chosen, budget = [], QUICK_CHECK_BYTES
    for relative, sample in sampled:
        cost = len(sample["offsets"]) * sample["block"]
        if cost > budget and chosen:
            continue
        chosen.append((relative, sample))
        budget -= cost

    def changed(item: tuple[str, dict[str, Any]]) -> bool:
        relative, sample = item
        return sample_digest(out / relative, sample["offsets"], sample["block"]) != sample["sha256"]

    with ThreadPoolExecutor(max_workers=default_hash_workers()) as pool:
        for item, bad in zip(chosen, pool.map(changed, chosen), strict=True):
            if bad:
                raise fail(item[0], "changed (its sampled blocks differ)")
    return len(chosen)


# --------------------------------------------------------------------------- recording


def run_key(step: str, params: Mapping[str, Any], input_run_ids: Iterable[str]) -> str:
    """Return the reuse key of a step: a hash of its name, parameters and input runs."""
    payload = {
        "step": step,
        "params": {k: _param_text(v) for k, v in sorted(params.items())},
        "inputs": sorted(input_run_ids),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _param_text(value: Any) -> str:
    """Return the text MLflow stores for a parameter value (lists as JSON)."""
    if isinstance(value, (list, tuple)):
        return json.dumps([_param_text(v) if isinstance(v, Path) else v for v in value])
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


@dataclass
class StepRun:
    """Handle on the run of a step in progress, given by :func:`tracked_step`.

    Attributes
    ----------
    run_id : str
        The MLflow run ID.
    step : str
        The run name.
    output_dir : Path
        Where the step writes its outputs.
    reused : bool
        True when an identical finished run exists: the step has nothing to do.
    resumed : bool
        True when an interrupted run with the same inputs was reopened: the step
        continues from the work already in ``output_dir``.
    """

    run_id: str
    step: str
    output_dir: Path
    reused: bool = False
    resumed: bool = False

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics to the run."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):
            client().log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_metric_series(self, name: str, values: Iterable[float]) -> None:
        """Log one metric as a series, value ``i`` at step ``i`` (plotted by ``mlflow ui``)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(name, float(v), now, i) for i, v in enumerate(values)]
        for start in range(0, len(batch), 1000):
            client().log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log extra parameters (discovered during the run, e.g. the number of mosaics)."""
        _log_params(client(), self.run_id, params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the run."""
        from mlflow.entities import RunTag

        client().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, obj: Any, name: str) -> None:
        """Log a JSON-serialisable object as an artifact file ``name``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
            client().log_artifact(self.run_id, str(path))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a small file into the run's artifacts (never large arrays)."""
        client().log_artifact(self.run_id, str(path), artifact_path)


def _log_params(mlflow_client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    batch = [Param(k, _param_text(v)) for k, v in params.items()]
    for start in range(0, len(batch), 100):
        mlflow_client.log_batch(run_id, params=batch[start : start + 100])


def default_output_root() -> Path:
    """Return where steps without an explicit output path write (``ASTROCURATE_DATA_DIR``)."""
    return Path(os.environ.get("ASTROCURATE_DATA_DIR", "outputs")).resolve()


def make_output_root(root: Path, input_run_ids: Iterable[str] = ()) -> None:
    """Create the steps' output root, or fail in one line naming ``--output_path``.

    The root must be a writable directory outside the output directories of the
    step's input runs (writing there would change a finished run's outputs).
    """
    if root.exists() and not root.is_dir():
        raise InvalidArgumentError(f"--output_path: {root} exists and is not a directory")
    for run_id in input_run_ids:
        try:
            out = get_run(run_id).output_dir
        except RunNotFoundError:
            continue  # the step itself reports an input that does not exist
        if out is not None and (root == out.resolve() or out.resolve() in root.parents):
            raise InvalidArgumentError(
                f"--output_path: {root} is inside the output directory {out} of input run "
                f"{run_id}; choose a directory outside it"
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgumentError(
            f"--output_path: cannot create {root}: {exc.strerror or exc}"
        ) from exc
    if not os.access(root, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"--output_path: {root} is not writable")


@contextlib.contextmanager
def tracked_step(
    step: str,
    params: Mapping[str, Any],
    *,
    input_run_ids: Iterable[str] = (),
    seed: int | None = None,
    output_root: Path | None = None,
    volatile_params: Iterable[str] = (),
    resume_params: Mapping[str, str] | None = None,
    force: bool = False,
) -> Iterator[StepRun]:
    """Record one pipeline step as one MLflow run.

    The output directory is ``<output_root>/<step>/<run_id>``. The body of the
    ``with`` block does the work and writes there; on normal exit the outputs are
    hashed and the run is marked FINISHED.

    Parameters
    ----------
    step : str
        Run name, one of :data:`STEP_NAMES`.
    params : mapping
        Every parameter of the step (logged).
    input_run_ids : iterable of str
        IDs of the runs the step reads.
    seed : int, optional
        Random seed (logged as parameter ``seed``).
    output_root : Path, optional
        Parent of the step directories; default :func:`default_output_root`.
    volatile_params : iterable of str
        Parameters left out of the reuse key (workers, progress display): logged only.
    resume_params : mapping of str to str, optional
        Volatile parameters that may still change the outputs' bytes at float rounding
        (the batch size), with their command-line flag: a finished run is reused whatever
        their value, but an unfinished one is resumed only with the values it started
        with (:func:`check_resume_params`), so that no output mixes two of them.
    force : bool
        Never reuse a finished run: compute into a new one.

    Yields
    ------
    StepRun
        If ``reused`` is true the caller must not write anything.
    """
    inputs = sorted(dict.fromkeys(input_run_ids))
    all_params = dict(params)
    if seed is not None:
        all_params["seed"] = seed
    volatile = set(volatile_params)
    key = run_key(step, {k: v for k, v in all_params.items() if k not in volatile}, inputs)
    root = Path(output_root).resolve() if output_root else default_output_root()

    # Reusing a finished run needs no MLflow when the store is read directly.
    previous = None if force else _previous_run(step, key)
    if previous is not None and previous.finished and _outputs_present(previous):
        check_reusable(previous)
        log.info("reusing finished %s run %s (same inputs and parameters)", step, previous.run_id)
        yield StepRun(previous.run_id, step, previous.output_dir, reused=True)  # type: ignore[arg-type]
        return

    if previous is not None and not previous.finished:
        check_resume_params(previous, all_params, resume_params or {})
    if previous is not None and previous.finished:  # its output directory is gone
        log.warning(
            "finished %s run %s with the same inputs and parameters has no output directory "
            "%s (moved or deleted?): computing a new run",
            step,
            previous.run_id,
            previous.output_dir,
        )
    make_output_root(root, inputs)  # before any run is recorded: a bad path leaves none
    mlflow_client = client()
    experiment = experiment_id(mlflow_client, create=True)
    with contextlib.ExitStack() as stack:
        lock = None
        if previous is not None and not previous.finished and previous.output_dir is not None:
            lock = try_lock(previous.output_dir)
        if lock is not None and _finished_meanwhile(mlflow_client, previous.run_id):  # type: ignore[union-attr]
            lock.close()  # another process finished it between our lookup and the lock
            log.info("reusing %s run %s, finished by another process", step, previous.run_id)  # type: ignore[union-attr]
            yield StepRun(previous.run_id, step, previous.output_dir, reused=True)  # type: ignore[union-attr, arg-type]
            return
        if lock is not None:
            run_id, out, resumed = previous.run_id, previous.output_dir, True  # type: ignore[union-attr]
            mlflow_client.update_run(run_id, status="RUNNING")
            log.info("resuming interrupted %s run %s in %s", step, run_id, out)
        else:
            run_id = create_run_record(mlflow_client, experiment, step, key, inputs)
            out, resumed = root / step / run_id, False
            out.mkdir(parents=True, exist_ok=True)
            lock = try_lock(out)
        stack.callback(lock.close)  # type: ignore[union-attr]
        record_start(mlflow_client, run_id, all_params, inputs, out)
        handle = StepRun(run_id, step, out, resumed=resumed)
        with terminate_raises(), _status_on_exit(mlflow_client, run_id):
            yield handle
            finish_step(mlflow_client, handle, all_params, inputs)


def check_resume_params(
    record: RunRecord,
    params: Mapping[str, Any],
    flags: Mapping[str, str],
    otherwise: str = "or --force for a new run",
) -> None:
    """Refuse to add to an unfinished run with other values of byte-changing parameters.

    Parameters
    ----------
    record : RunRecord
        The unfinished run about to be resumed or joined.
    params : mapping
        This process's parameters.
    flags : mapping of str to str
        Parameter name to command-line flag, e.g. ``{"batch_size": "--batch-size"}``.
    otherwise : str
        The other way out, ending the message.

    Raises
    ------
    InvalidArgumentError
        Naming the flag, this value, the run and the value it started with.
    """
    for name, flag in flags.items():
        if name not in record.params or name not in params:
            continue
        ours, theirs = _param_text(params[name]), record.params[name]
        if ours != theirs:
            raise InvalidArgumentError(
                f"{flag} {ours}: {record.step} run {record.run_id} is unfinished and was "
                f"started with {name}={theirs}; its outputs may differ at float rounding "
                f"with another {name}, so they cannot be mixed in one run: rerun with "
                f"{flag} {theirs} to resume it ({otherwise})"
            )


def _finished_meanwhile(mlflow_client: Any, run_id: str) -> bool:
    """Whether a run found unfinished is FINISHED now (checked once its lock is held)."""
    return mlflow_client.get_run(run_id).info.status == _FINISHED


def _previous_run(step: str, key: str) -> RunRecord | None:
    """Return the run to reuse or resume for reuse key ``key``, if any (:func:`_latest`)."""
    path = _direct_store()
    if path is not None:
        try:
            return _latest(_direct_search(path, step, key, include_unfinished=True))
        except _NoDirectReadError as exc:
            log.debug("searching runs through MLflow: %s", exc)
    mlflow_client = client()
    experiment_id(mlflow_client, create=True)
    return _latest(_search_records(step, key, True, mlflow_client))


def _latest(runs: list[RunRecord]) -> RunRecord | None:
    """Return the newest finished run whose outputs exist, else the newest run, else None."""
    finished = [r for r in runs if r.finished and _outputs_present(r)]
    if finished:
        return finished[0]
    return runs[0] if runs else None


def _outputs_present(record: RunRecord) -> bool:
    return record.output_dir is not None and record.output_dir.is_dir()


def create_run_record(
    mlflow_client: Any, experiment: str, step: str, key: str, inputs: list[str]
) -> str:
    """Create the MLflow run of ``step`` in ``experiment`` with the tags that identify it."""
    import sys

    tags = {
        "mlflow.runName": step,
        TAG_STEP: step,
        TAG_RUN_KEY: key,
        TAG_INPUTS: json.dumps(inputs),
        TAG_VERSION: __version__,
        TAG_SOURCE: Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
        TAG_USER: _user(),
    }
    commit, dirty = git_state()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
        tags[TAG_GIT_DIRTY] = str(dirty).lower()
    if inputs:
        tags[TAG_NOTE] = f"{step} run; inputs: " + ", ".join(inputs)
    run = mlflow_client.create_run(experiment, run_name=step, tags=tags)
    return run.info.run_id


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def record_start(
    mlflow_client: Any, run_id: str, params: Mapping[str, Any], inputs: list[str], out: Path
) -> None:
    """Log parameters and the tags that may change when a run is resumed."""
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    existing = mlflow_client.get_run(run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in existing}
    if "input_run_ids" not in existing:
        fresh["input_run_ids"] = inputs
    if "output_dir" not in existing:
        fresh["output_dir"] = str(out)
    try:
        _log_params(mlflow_client, run_id, fresh)
    except MlflowException as exc:  # a parameter changed value: not the same run
        raise InvalidRunError(f"cannot resume run {run_id}: {exc}") from exc
    tags = {TAG_OUTPUT_DIR: str(out), TAG_HOST: socket.gethostname(), TAG_PID: os.getpid()}
    mlflow_client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def finish_step(
    mlflow_client: Any, handle: StepRun, params: Mapping[str, Any], inputs: list[str]
) -> None:
    """Hash the outputs, log metadata, and mark the run FINISHED.

    Each output file's size, full SHA-256 (unless ``ASTROCURATE_OUTPUT_HASH=sample``)
    and sampled blocks go to the artifact ``outputs.json``; their :func:`content_hash`
    to the tag ``astrocurate.content_hash``.
    """
    from mlflow.entities import RunTag

    started = time.time()
    mode = hash_mode()
    digest, listing = hash_outputs(handle.output_dir, full=mode == "full")
    commit, dirty = git_state()
    mlflow_client.log_batch(handle.run_id, tags=[RunTag(TAG_CONTENT_HASH, digest)])
    handle.log_dict(listing, "outputs.json")
    handle.log_dict(
        {
            "run_id": handle.run_id,
            "step": handle.step,
            "params": {k: _param_text(v) for k, v in params.items()},
            "input_run_ids": inputs,
            "output_dir": str(handle.output_dir),
            "content_hash": digest,
            "output_hash": mode,
            "n_output_files": len(listing),
            "output_bytes": sum(v["size"] for v in listing.values()),
            "astrocurate_version": __version__,
            "git_commit": commit,
            "git_dirty": dirty,
            "tracking_uri": redact_uri(tracking_uri()),
        },
        "metadata.json",
    )
    handle.log_metrics({"hash_seconds": time.time() - started})
    mlflow_client.set_terminated(handle.run_id, status=_FINISHED)


@contextlib.contextmanager
def _status_on_exit(mlflow_client: Any, run_id: str) -> Iterator[None]:
    """Mark the run FAILED on an exception, KILLED on an interrupt, then re-raise."""
    try:
        yield
    except BaseException as exc:
        mark_terminated(mlflow_client, run_id, exc)
        raise


def mark_terminated(mlflow_client: Any, run_id: str, exc: BaseException) -> None:
    """Mark a run KILLED (interrupt) or FAILED (error), recording the first line of the error."""
    from mlflow.entities import RunTag

    status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
    message = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
    with contextlib.suppress(Exception):
        mlflow_client.log_batch(run_id, tags=[RunTag(TAG_ERROR, message)])
    with contextlib.suppress(Exception):
        mlflow_client.set_terminated(run_id, status=status)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`StepInterrupted` while a step runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame: Any) -> None:
        raise StepInterrupted(f"interrupted by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
