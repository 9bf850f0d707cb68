"""A tracking client that writes a local sqlite store directly, without importing MLflow.

:class:`DirectClient` has the methods of ``MlflowClient`` that the tracking layer calls,
with the same arguments and results (light entities from
:mod:`astrocurate.tracking.entities`). It writes the rows MLflow writes
(:mod:`astrocurate.tracking.sqlite_writes`) and copies artifacts into a local artifact
root as MLflow's ``LocalArtifactRepository`` lays them out. A call it does not make as
MLflow would (a non-file artifact root, a value over MLflow's limits, a missing or
deleted run, any sqlite error: nothing written) is made through MLflow instead; so is
every other ``MlflowClient`` method (``search_runs``, ``delete_run``, ``list_artifacts``,
...), through attribute lookup. :func:`astrocurate.tracking.store.client` returns one
for a local store whose schema is known.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from astrocurate.tracking import sqlite_writes as sql
from astrocurate.tracking.entities import Experiment, Run, RunInfo, RunTag, to_mlflow

log = logging.getLogger(__name__)

#: MLflow's prefix of an artifact being copied (such names are refused as artifacts).
_STAGING_PREFIX = ".artifact.uploading."


class DirectClient:
    """The ``MlflowClient`` calls of the tracking layer, on a local sqlite store.

    Parameters
    ----------
    path : Path
        The store's file (it exists and its schema is known: :meth:`open`).
    tracking_uri : str
        Its ``sqlite:///`` URI.
    fallback : callable
        Returns the process's ``MlflowClient`` on the same store (imports MLflow).
    """

    def __init__(self, path: Path, tracking_uri: str, fallback: Callable[[], Any]) -> None:
        self.path = path
        self.tracking_uri = tracking_uri
        self._fallback = fallback

    @classmethod
    def open(
        cls, path: Path, tracking_uri: str, fallback: Callable[[], Any]
    ) -> DirectClient | None:
        """Return a client on ``path``, or None when its schema is not one known here."""
        problem = sql.schema_problem(path)
        if problem is not None:
            log.debug("writing runs through MLflow: %s", problem)
            return None
        return cls(path, tracking_uri, fallback)

    def mlflow(self) -> Any:
        """Return the ``MlflowClient`` on the same store (imports MLflow)."""
        return self._fallback()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.mlflow(), name)

    def _write(
        self,
        name: str,
        operation: Callable[[sqlite3.Connection], Any],
        through_mlflow: Callable[[Any], Any],
    ) -> Any:
        """Run ``operation`` in one transaction; if refused (nothing written), use MLflow.

        ``through_mlflow(mlflow_client)`` makes the same call through MLflow.
        """
        try:
            with sql.transaction(self.path) as db:
                return operation(db)
        except (sqlite3.Error, sql.UnsupportedError) as exc:
            log.debug("%s through MLflow: %s", name, exc)
            return through_mlflow(self.mlflow())

    def _read(self, operation: Callable[[sqlite3.Connection], Any]) -> Any:
        with sql.connect(self.path) as db:
            db.execute("BEGIN")
            try:
                return operation(db)
            finally:
                db.execute("ROLLBACK")

    # ----------------------------------------------------------------------- reads

    def get_experiment_by_name(self, name: str) -> Experiment | Any:
        """Return the experiment named ``name`` (active or deleted), or None."""
        try:
            return self._read(lambda db: sql.experiment_by_name(db, name))
        except (sqlite3.Error, sql.UnsupportedError) as exc:
            log.debug("get_experiment_by_name through MLflow: %s", exc)
            return self.mlflow().get_experiment_by_name(name)

    def get_run(self, run_id: str) -> Run | Any:
        """Return the run (MLflow raises its error for a run that does not exist)."""
        try:
            found = self._read(lambda db: sql.read_run(db, run_id))
        except sqlite3.Error as exc:
            log.debug("get_run through MLflow: %s", exc)
            found = None
        return found if found is not None else self.mlflow().get_run(run_id)

    # ----------------------------------------------------------------------- writes

    def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: Mapping[str, Any] | None = None,
        run_name: str | None = None,
    ) -> Run | Any:
        """Create a RUNNING run in ``experiment_id`` with ``tags``; return it."""
        return self._write(
            "create_run",
            lambda db: sql.insert_run(db, experiment_id, run_name, dict(tags or {}), start_time),
            lambda mlflow: mlflow.create_run(experiment_id, start_time, tags, run_name),
        )

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Any] = (),
        params: Sequence[Any] = (),
        tags: Sequence[Any] = (),
        synchronous: bool = True,
    ) -> None:
        """Log metrics, parameters and tags to an active run in one transaction.

        Raises
        ------
        ParamChangeError
            When a parameter was logged before with another value (nothing is written).
        """
        if not (metrics or params or tags):
            return
        if not synchronous:
            self.mlflow().log_batch(run_id, *to_mlflow(metrics, params, tags), synchronous=False)
            return

        def write(db: sqlite3.Connection) -> None:
            sql.active_run(db, run_id)
            sql.log_params(db, run_id, params)
            sql.log_metrics(db, run_id, metrics)
            sql.set_tags(db, run_id, tags)

        self._write(
            "log_batch",
            write,
            lambda mlflow: mlflow.log_batch(run_id, *to_mlflow(metrics, params, tags)),
        )

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        """Set one tag (the value as text)."""
        self.log_batch(run_id, tags=[RunTag(key, str(value))])

    def update_run(self, run_id: str, status: str | None = None, name: str | None = None) -> None:
        """Set a run's status (its end time unchanged); a new name goes through MLflow."""
        if status is None and name is None:
            return
        if name is not None:
            self.mlflow().update_run(run_id, status=status, name=name)
            return

        def write(db: sqlite3.Connection) -> None:
            sql.active_run(db, run_id)
            sql.set_status(db, run_id, status, None)  # type: ignore[arg-type]

        self._write("update_run", write, lambda mlflow: mlflow.update_run(run_id, status))

    def set_terminated(
        self, run_id: str, status: str | None = None, end_time: int | None = None
    ) -> None:
        """Mark a run ended: ``status`` (default FINISHED) at ``end_time`` (default now)."""
        status = status or "FINISHED"
        end_time = end_time or sql.now_ms()

        def write(db: sqlite3.Connection) -> None:
            sql.active_run(db, run_id)
            sql.set_status(db, run_id, status, end_time)

        self._write(
            "set_terminated", write, lambda mlflow: mlflow.set_terminated(run_id, status, end_time)
        )

    # ----------------------------------------------------------------------- artifacts

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Copy a file (or a folder, under its own name) into the run's artifacts."""
        root = self._artifact_root(run_id, artifact_path)
        folder = os.path.isdir(local_path)
        if root is None or (not folder and Path(local_path).name.startswith(_STAGING_PREFIX)):
            self.mlflow().log_artifact(run_id, local_path, artifact_path)  # MLflow's error
        elif folder:
            _copy_tree(Path(local_path), root / os.path.basename(os.path.normpath(local_path)))
        else:
            _copy_file(Path(local_path), root)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        """Copy the contents of a folder into the run's artifacts ``artifact_path``."""
        root = self._artifact_root(run_id, artifact_path)
        if root is None:
            self.mlflow().log_artifacts(run_id, local_dir, artifact_path)
            return
        _copy_tree(Path(local_dir), root)

    def _artifact_root(self, run_id: str, artifact_path: str | None) -> Path | None:
        """Return the local folder for ``artifact_path`` of the run, or None (use MLflow)."""
        try:
            info: RunInfo | None = self._read(lambda db: sql.run_info(db, run_id))
            if artifact_path:
                sql.check_key(artifact_path)  # MLflow's rule for artifact paths
        except (sqlite3.Error, sql.UnsupportedError) as exc:
            log.debug("artifacts of run %s through MLflow: %s", run_id, exc)
            return None
        root = _local_folder(info.artifact_uri if info is not None else "")
        if root is None:
            return None
        return root / artifact_path if artifact_path else root


def _local_folder(uri: str) -> Path | None:
    """Return the folder of a plain local path or ``file:`` URI; None for anything else."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(uri)
    if parsed.scheme == "file" and not parsed.netloc and not (parsed.query or parsed.fragment):
        return Path(url2pathname(parsed.path))
    if not parsed.scheme and uri.startswith("/"):
        return Path(uri)
    return None


def _copy_file(source: Path, folder: Path) -> None:
    """Copy ``source`` into ``folder`` under its name, atomically, keeping its times and mode."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    try:
        if os.path.samefile(source, target):
            return
    except FileNotFoundError:
        pass
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=_STAGING_PREFIX)
    try:
        with os.fdopen(handle, "wb") as out, open(source, "rb") as data:
            shutil.copyfileobj(data, out, 1 << 20)
        shutil.copystat(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _copy_tree(source: Path, target: Path) -> None:
    """Copy the files and folders under ``source`` into ``target`` (created if needed)."""
    target.mkdir(parents=True, exist_ok=True)
    for folder, subfolders, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        for name in subfolders:
            (target / relative / name).mkdir(exist_ok=True)
        for name in files:
            shutil.copy2(Path(folder) / name, target / relative / name)


def log_batch(
    tracking_client: Any,
    run_id: str,
    *,
    metrics: Sequence[Any] = (),
    params: Sequence[Any] = (),
    tags: Sequence[Any] = (),
) -> None:
    """Log a batch of light entities through either client (MLflow's gets its own types).

    Parameters
    ----------
    tracking_client : DirectClient or mlflow.tracking.MlflowClient
        The client of :func:`~astrocurate.tracking.store.client`.
    run_id : str
        The run.
    metrics, params, tags : sequence
        :class:`~astrocurate.tracking.entities.Metric`, ``Param`` and ``RunTag`` objects.
    """
    if not isinstance(tracking_client, DirectClient):
        metrics, params, tags = to_mlflow(metrics, params, tags)
    tracking_client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
