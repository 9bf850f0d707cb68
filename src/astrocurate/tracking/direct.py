"""Direct reads of a local sqlite tracking store, without MLflow.

Importing MLflow takes seconds, so the lookups read an existing local sqlite store
directly, read-only, with the queries MLflow makes (:func:`local_store`;
``ASTROCURATE_FAST_LOOKUP=0`` turns this off): ``find_run`` and the rerun of a
finished step never import MLflow. Callers fall back to MLflow on
:class:`NoDirectReadError`. Call these functions through the module
(``direct.read_run``) so that tests can replace them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from astrocurate.tracking.records import RunRecord
from astrocurate.tracking.store import (
    FAST_LOOKUP_ENV,
    FINISHED,
    TAG_RUN_KEY,
    experiment_name,
    local_sqlite_store,
)

__all__ = ["FAST_LOOKUP_ENV", "NoDirectReadError", "local_store", "read_run", "search_runs"]

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


class NoDirectReadError(Exception):
    """The local store cannot be read directly: read it through MLflow instead."""


def local_store() -> Path | None:
    """Return the sqlite file that lookups may read without MLflow, or None.

    Importing MLflow costs seconds, so the read-only lookups (:func:`get_run`,
    :func:`find_runs`, the reuse check of :func:`tracked_step`) read a local
    ``sqlite:///`` store with :mod:`sqlite3`, read-only, with the queries MLflow's
    ``SqlAlchemyStore`` makes (active runs, newest first). Anything else goes
    through MLflow: a server, a URI with options, a store file that does not exist
    yet (MLflow creates it), MLflow workspaces, ``ASTROCURATE_FAST_LOOKUP=0``
    (:func:`~astrocurate.tracking.store.local_sqlite_store`), and any store whose
    tables lack the columns read here.
    """
    return local_sqlite_store()


@contextlib.contextmanager
def _read_store(path: Path) -> Iterator[Any]:
    """Open ``path`` read-only; raise :class:`NoDirectReadError` when it does not fit."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise NoDirectReadError(str(exc)) from exc
    try:
        for table, columns in _READ_COLUMNS.items():
            present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            if not columns <= present:
                raise NoDirectReadError(f"table {table} lacks {sorted(columns - present)}")
        yield connection
    except sqlite3.Error as exc:
        raise NoDirectReadError(str(exc)) from exc
    finally:
        connection.close()


def _experiment_id(connection: Any, name: str) -> str | None:
    rows = connection.execute(
        "SELECT experiment_id FROM experiments WHERE name = ?", (name,)
    ).fetchall()
    if len(rows) > 1:
        raise NoDirectReadError(f"{len(rows)} experiments named {name!r}")
    return str(rows[0][0]) if rows else None


def _records(connection: Any, rows: list[tuple[Any, ...]]) -> list[RunRecord]:
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


def search_runs(
    path: Path, step: str | None, run_key: str | None, include_unfinished: bool
) -> list[RunRecord]:
    """Return what ``find_runs`` gets from MLflow's ``search_runs``, read directly."""
    with _read_store(path) as connection:
        experiment = _experiment_id(connection, experiment_name())
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
            values.append(FINISHED)
        rows = connection.execute(
            "SELECT r.run_uuid, r.name, r.status, r.start_time FROM runs r WHERE "
            + " AND ".join(where)
            # MLflow's order for "attributes.start_time DESC": missing times last, ties by ID
            + " ORDER BY (r.start_time IS NULL), r.start_time DESC, r.run_uuid",
            values,
        ).fetchall()
        return _records(connection, rows)


def read_run(path: Path, run_id: str) -> tuple[RunRecord, str] | None:
    """Return the record and artifact URI of one run (any experiment or state), or None."""
    with _read_store(path) as connection:
        rows = connection.execute(
            "SELECT run_uuid, name, status, start_time, artifact_uri FROM runs WHERE run_uuid = ?",
            (run_id,),
        ).fetchall()
        if len(rows) != 1:
            return None
        (record,) = _records(connection, [rows[0][:4]])
        return record, rows[0][4] or ""


# --------------------------------------------------------------------------- records
