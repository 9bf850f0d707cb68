"""The rows MLflow's ``SqlAlchemyStore`` writes for a run, written with :mod:`sqlite3`.

Used by :class:`~astrocurate.tracking.direct_client.DirectClient` on a local store whose
schema is the one these statements were checked against (:func:`schema_problem`):
MLflow's alembic revision and the columns of the tables written. What MLflow would
write is written here the same way:

- ``create_run``: a ``runs`` row (status RUNNING, lifecycle ``active``, source type
  UNKNOWN, ``user_id`` from the ``mlflow.user`` tag, artifact URI
  ``<experiment's artifact location>/<run_id>/artifacts``) and its tags, with
  ``mlflow.runName`` added when absent;
- ``log_batch``: parameters (an existing key must keep its value), metrics (identical
  rows once) with ``latest_metrics`` kept at the greatest (step, timestamp, value) per
  key, NaN stored as 0 with ``is_nan`` and infinities as the largest doubles, and tags
  (inserted or updated);
- ``update_run`` / ``set_terminated``: status, and end time when terminated.

Every write is one ``BEGIN IMMEDIATE`` transaction with a busy timeout, so concurrent
processes (MLflow's or these) wait for each other. Whatever these functions do not
handle exactly as MLflow does (an invalid key or a value over MLflow's limits, a run
not active, an experiment not active, a run name to generate, a duplicate parameter in
one batch) raises :class:`UnsupportedError` before anything is written, and the caller
makes the same call through MLflow.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import posixpath
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from astrocurate.tracking.entities import (
    Experiment,
    ParamChangeError,
    Run,
    RunData,
    RunInfo,
)

#: Alembic revisions of MLflow's schema that these statements were checked against
#: (MLflow 3.17: ``tests/test_direct_writes.py`` compares them with MLflow's writes).
KNOWN_SCHEMAS = frozenset({"dc11669786a5"})
#: The exact columns of the tables written, and those read from ``experiments``.
_COLUMNS = {
    "runs": {
        "run_uuid",
        "name",
        "source_type",
        "source_name",
        "entry_point_name",
        "user_id",
        "status",
        "start_time",
        "end_time",
        "source_version",
        "lifecycle_stage",
        "artifact_uri",
        "experiment_id",
        "deleted_time",
    },
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
    "metrics": {"key", "value", "timestamp", "run_uuid", "step", "is_nan"},
    "latest_metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
}
_EXPERIMENT_COLUMNS = {"experiment_id", "name", "artifact_location", "lifecycle_stage"}
#: MLflow's run statuses.
STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
#: MLflow's limits (``mlflow.utils.validation``): longer values go through MLflow.
MAX_KEY, MAX_PARAM_VALUE, MAX_TAG_VALUE = 250, 6000, 8000
RUN_NAME_TAG = "mlflow.runName"
USER_TAG = "mlflow.user"
#: Seconds a write waits for another process's transaction (MLflow waits 20).
BUSY_TIMEOUT = 30.0
_KEY = re.compile(r"^[/\w.\- :]*$")
_LARGEST = 1.7976931348623157e308


class UnsupportedError(Exception):
    """A call the direct writes do not make as MLflow does: nothing was written."""


def schema_problem(path: Path) -> str | None:
    """Return why ``path`` cannot be written directly, or None when its schema is known."""
    try:
        with connect(path) as db:
            revisions = {row[0] for row in db.execute("SELECT version_num FROM alembic_version")}
            if not revisions <= KNOWN_SCHEMAS or not revisions:
                return f"schema revision {sorted(revisions)} is not one of {sorted(KNOWN_SCHEMAS)}"
            for table, columns in _COLUMNS.items():
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if present != columns:
                    return f"table {table} has columns {sorted(present)}"
            present = {row[1] for row in db.execute("PRAGMA table_info(experiments)")}
            if not present >= _EXPERIMENT_COLUMNS:
                return f"table experiments lacks {sorted(_EXPERIMENT_COLUMNS - present)}"
    except sqlite3.Error as exc:
        return str(exc)
    return None


@contextlib.contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """Open an existing store read-write (never creating it), in autocommit mode."""
    db = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
    )
    try:
        db.execute("PRAGMA foreign_keys = ON")
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction: the store's write lock from its start, committed or rolled back."""
    with connect(path) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:  # sqlite may have rolled it back itself (a full disk)
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")  # if this fails, closing the connection rolls back


def now_ms() -> int:
    """Return the current time in milliseconds since the epoch (MLflow's timestamps)."""
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- checks


def check_key(key: Any) -> str:
    """Return ``key`` if MLflow accepts it as a metric, parameter or tag name as it is."""
    if not isinstance(key, str) or not _KEY.match(key) or len(key) > MAX_KEY:
        raise UnsupportedError(f"key {key!r}")
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"):
        raise UnsupportedError(f"key {key!r}")
    return key


def check_value(value: Any, limit: int) -> str:
    """Return ``value`` if it is a string MLflow stores as it is (no truncation, no error)."""
    if not isinstance(value, str) or len(value) > limit:
        raise UnsupportedError("a value that is not text or is over MLflow's limit")
    return value


def _check_status(status: Any) -> str:
    if status not in STATUSES:
        raise UnsupportedError(f"status {status!r}")
    return str(status)


def _experiment_row(db: sqlite3.Connection, experiment_id: str) -> tuple[Any, ...]:
    if not str(experiment_id).isdigit():
        raise UnsupportedError(f"experiment ID {experiment_id!r}")
    row = db.execute(
        "SELECT experiment_id, artifact_location, lifecycle_stage FROM experiments"
        " WHERE experiment_id = ?",
        (int(experiment_id),),
    ).fetchone()
    if row is None or row[2] != "active":
        raise UnsupportedError(f"experiment {experiment_id} is missing or not active")
    return row


def artifact_uri(location: str | None, run_id: str) -> str:
    """Return ``<location>/<run_id>/artifacts`` for a local location (a path or ``file:``)."""
    from urllib.parse import urlparse

    text = location or ""
    parsed = urlparse(text)
    plain = not parsed.scheme and text.startswith("/")
    file_uri = parsed.scheme == "file" and not parsed.netloc and parsed.path.startswith("/")
    if not (plain or file_uri) or any(c in text for c in "?#;%"):
        raise UnsupportedError(f"artifact location {location!r} is not a plain local one")
    suffix = posixpath.join(parsed.path if file_uri else text, run_id, "artifacts")
    return f"file://{suffix}" if file_uri else suffix


# --------------------------------------------------------------------------- reads


def experiment_by_name(db: sqlite3.Connection, name: str) -> Experiment | None:
    """Return the experiment named ``name``, active or deleted (as MLflow finds it), or None."""
    rows = db.execute(
        "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments"
        " WHERE name = ?",
        (name,),
    ).fetchall()
    if len(rows) > 1:
        raise UnsupportedError(f"{len(rows)} experiments named {name!r}")
    return Experiment(str(rows[0][0]), *rows[0][1:]) if rows else None


def run_info(db: sqlite3.Connection, run_id: str) -> RunInfo | None:
    """Return the info of run ``run_id``, or None."""
    row = db.execute(
        "SELECT run_uuid, experiment_id, name, user_id, status, start_time, end_time,"
        " artifact_uri, lifecycle_stage FROM runs WHERE run_uuid = ?",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    return RunInfo(row[0], str(row[1]), *row[2:])


def active_run(db: sqlite3.Connection, run_id: str) -> RunInfo:
    """Return the info of ``run_id`` if it exists and is active (MLflow writes only to those)."""
    info = run_info(db, run_id) if isinstance(run_id, str) else None
    if info is None or info.lifecycle_stage != "active":
        raise UnsupportedError(f"run {run_id!r} is missing or not active")
    return info


def read_run(db: sqlite3.Connection, run_id: str) -> Run | None:
    """Return the run (latest metrics, parameters, tags) as MLflow's ``get_run`` does, or None."""
    info = run_info(db, run_id)
    if info is None:
        return None
    metrics = {
        key: math.nan if is_nan else value
        for key, value, is_nan in db.execute(
            "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,)
        )
    }
    params = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)))
    tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
    return Run(info, RunData(metrics, params, tags))


# --------------------------------------------------------------------------- writes


def insert_run(
    db: sqlite3.Connection,
    experiment_id: str,
    run_name: str | None,
    tags: Mapping[str, Any],
    start_time: int | None,
) -> Run:
    """Create a RUNNING run with ``tags`` as MLflow's ``create_run`` does; return it."""
    tags = {check_key(k): check_value(v, MAX_TAG_VALUE) for k, v in tags.items()}
    tagged = tags.get(RUN_NAME_TAG)
    if run_name and tagged and run_name != tagged:
        raise UnsupportedError("run_name and the mlflow.runName tag differ")
    name = run_name or tagged
    if not name:
        raise UnsupportedError("no run name: MLflow makes one up")
    if tagged is None:
        tags[RUN_NAME_TAG] = name
    row = _experiment_row(db, experiment_id)
    run_id = uuid.uuid4().hex
    info = RunInfo(
        run_id=run_id,
        experiment_id=str(row[0]),
        run_name=name,
        user_id=tags.get(USER_TAG, "unknown"),
        status="RUNNING",
        start_time=start_time or now_ms(),
        end_time=None,
        artifact_uri=artifact_uri(row[1], run_id),
        lifecycle_stage="active",
    )
    db.execute(
        "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id,"
        " status, start_time, end_time, deleted_time, source_version, lifecycle_stage,"
        " artifact_uri, experiment_id)"
        " VALUES (?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, NULL, '', 'active', ?, ?)",
        (run_id, name, info.user_id, info.start_time, info.artifact_uri, row[0]),
    )
    db.executemany(
        "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
        [(k, v, run_id) for k, v in tags.items()],
    )
    return Run(info, RunData({}, {}, dict(tags)))


def log_params(db: sqlite3.Connection, run_id: str, params: Iterable[Any]) -> None:
    """Insert new parameters; refuse to change one (:class:`ParamChangeError`)."""
    batch = [(check_key(p.key), check_value(p.value, MAX_PARAM_VALUE)) for p in params]
    if len({key for key, _ in batch}) != len(batch):
        raise UnsupportedError("one parameter twice in a batch")
    if not batch:
        return
    existing = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)))
    changed = [
        {"key": key, "old_value": existing[key], "new_value": value}
        for key, value in batch
        if key in existing and existing[key] != value
    ]
    if changed:
        raise ParamChangeError(
            f"Changing param values is not allowed. Params were already logged='{changed}'"
            f" for run ID='{run_id}'."
        )
    db.executemany(
        "INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
        [(key, value, run_id) for key, value in batch if key not in existing],
    )


def _metric_row(metric: Any) -> tuple[str, float, int, int, int]:
    """Return (key, stored value, timestamp, step, is_nan) as MLflow stores a metric."""
    value, timestamp, step = metric.value, metric.timestamp, metric.step
    if not isinstance(value, numbers.Number) or isinstance(value, bool):
        raise UnsupportedError(f"metric value {value!r}")
    if not isinstance(timestamp, numbers.Integral) or not isinstance(step, numbers.Integral):
        raise UnsupportedError("metric timestamp or step")  # MLflow's own checks and errors
    timestamp, step = int(timestamp), int(step)  # NumPy integers too
    if timestamp < 0:
        raise UnsupportedError("negative metric timestamp")
    value = float(value)  # type: ignore[arg-type]
    if math.isnan(value):
        return check_key(metric.key), 0.0, timestamp, step, 1
    if math.isinf(value):
        value = _LARGEST if value > 0 else -_LARGEST
    return check_key(metric.key), value, timestamp, step, 0


def log_metrics(db: sqlite3.Connection, run_id: str, metrics: Iterable[Any]) -> None:
    """Insert metric values (identical ones once) and keep ``latest_metrics`` up to date.

    The latest value of a key is the one with the greatest (step, timestamp, value);
    a tie keeps the value already there.
    """
    rows = [_metric_row(m) for m in metrics]
    if not rows:
        return
    db.executemany(
        "INSERT OR IGNORE INTO metrics (key, value, timestamp, step, is_nan, run_uuid)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(*row, run_id) for row in rows],
    )
    latest: dict[str, tuple[Any, ...]] = {}
    for key in sorted({row[0] for row in rows}):
        found = db.execute(
            "SELECT key, value, timestamp, step, is_nan FROM latest_metrics"
            " WHERE run_uuid = ? AND key = ?",
            (run_id, key),
        ).fetchone()
        if found is not None:
            latest[key] = found
    changed: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        old = changed.get(row[0]) or latest.get(row[0])
        if old is None or (row[3], row[2], row[1]) > (old[3], old[2] or 0, old[1]):
            changed[row[0]] = row
    db.executemany(
        "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key, run_uuid) DO UPDATE SET"
        " value = excluded.value, timestamp = excluded.timestamp, step = excluded.step,"
        " is_nan = excluded.is_nan",
        [(*row, run_id) for row in changed.values()],
    )


def set_tags(db: sqlite3.Connection, run_id: str, tags: Iterable[Any]) -> None:
    """Set tags (the last value of a key repeated in the batch wins), as MLflow does.

    A ``mlflow.runName`` tag, which MLflow turns into a rename, goes through MLflow.
    """
    values = {check_key(t.key): check_value(t.value, MAX_TAG_VALUE) for t in tags}
    if RUN_NAME_TAG in values:
        raise UnsupportedError("renaming a run")
    db.executemany(
        "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)"
        " ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value",
        [(key, value, run_id) for key, value in values.items()],
    )


def set_status(db: sqlite3.Connection, run_id: str, status: str, end_time: int | None) -> None:
    """Set a run's status, and its end time unless ``end_time`` is None."""
    status = _check_status(status)
    if end_time is None:
        db.execute("UPDATE runs SET status = ? WHERE run_uuid = ?", (status, run_id))
    else:
        db.execute(
            "UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
            (status, int(end_time), run_id),
        )
