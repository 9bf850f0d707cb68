"""A run prepared by one command and run by another ("prepared then run").

The first command creates the run with the tags and parameters that
:func:`~astrocurate.tracking.lifecycle.tracked_step` gives a run, writes a script into
its output directory and leaves it *prepared* (status :data:`PREPARED`, tag
``astrocurate.run_script``: ``find_run`` finds it). The script's command reopens it
(:meth:`PreparedRun.reopen`: RUNNING), works, and finishes it (:meth:`PreparedRun.finish`:
outputs hashed, FINISHED), or marks it FAILED or KILLED. Clustering is made so (steps 4a
and 4b).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrocurate.tracking.checks import check_reusable
from astrocurate.tracking.fingerprints import run_key
from astrocurate.tracking.lifecycle import (
    StepRun,
    create_run_record,
    finish_step,
    make_output_root,
    mark_terminated,
)
from astrocurate.tracking.locks import DirectoryLock, try_lock, wait_lock
from astrocurate.tracking.reads import find_runs
from astrocurate.tracking.records import RunRecord
from astrocurate.tracking.store import (
    TAG_HOST,
    TAG_OUTPUT_DIR,
    TAG_PID,
    TAG_RUN_SCRIPT,
    StoreAddress,
    client,
    experiment_id,
)

log = logging.getLogger(__name__)

#: MLflow status of a prepared run, until its script's command reopens it.
PREPARED = "SCHEDULED"


@dataclass(frozen=True)
class PreparedRun:
    """A run of ``step`` whose output directory holds the script that completes it.

    Attributes
    ----------
    run_id : str
        The MLflow run.
    step : str
        The run name.
    directory : Path
        Its output directory.
    """

    run_id: str
    step: str
    directory: Path

    # ----------------------------------------------------------------------- finding

    @staticmethod
    def key(step: str, params: Mapping[str, Any], input_run_ids: Sequence[str]) -> str:
        """Return the reuse key of a run (:func:`~astrocurate.tracking.fingerprints.run_key`)."""
        return run_key(step, params, input_run_ids)

    @staticmethod
    def store() -> StoreAddress:
        """Return where the script's command must find the run (store and experiment)."""
        return StoreAddress.current()

    @staticmethod
    def find(step: str, key: str, marker: str) -> RunRecord | None:
        """Return the run to reuse for ``key``: the finished one, else the newest unfinished.

        Only runs whose output directory holds the file ``marker`` count (a run whose
        preparation was interrupted does not). A finished run is checked cheaply
        (:func:`~astrocurate.tracking.checks.check_reusable`) before it is returned.
        """
        runs = [
            r
            for r in find_runs(step, run_key=key, include_unfinished=True)
            if r.output_dir is not None and (r.output_dir / marker).is_file()
        ]
        finished = [r for r in runs if r.finished]
        if finished:
            check_reusable(finished[0])  # its outputs unchanged since it finished
            return finished[0]
        return runs[0] if runs else None

    # ----------------------------------------------------------------------- preparing

    @classmethod
    def create(
        cls,
        step: str,
        key: str,
        input_run_ids: Sequence[str],
        params: Mapping[str, Any],
        root: Path,
    ) -> PreparedRun:
        """Create the run and its directory ``<root>/<step>/<run_id>``, with its parameters.

        The output root is checked first (a bad path leaves no run). The run is left
        RUNNING until :meth:`mark_prepared`; an error in between marks it FAILED.
        """
        inputs = list(input_run_ids)
        make_output_root(root, inputs)
        mlflow_client = client()
        run_id = create_run_record(mlflow_client, experiment_id(mlflow_client), step, key, inputs)  # type: ignore[arg-type]
        run = cls(run_id, step, root / step / run_id)
        with run.failing():
            run.directory.mkdir(parents=True, exist_ok=True)
            handle = run.handle()
            handle.log_params({**params, "input_run_ids": inputs, "output_dir": str(run.directory)})
            handle.set_tags({TAG_OUTPUT_DIR: run.directory, TAG_HOST: socket.gethostname()})
        return run

    def mark_prepared(self, script: Path) -> None:
        """Tag the script that completes the run (``find_run`` then finds it); set PREPARED."""
        self.handle().set_tags({TAG_RUN_SCRIPT: script})
        client().update_run(self.run_id, status=PREPARED)

    # ----------------------------------------------------------------------- running

    def handle(self, *, resumed: bool = False) -> StepRun:
        """Return the handle that logs to the run."""
        return StepRun(self.run_id, self.step, self.directory, resumed=resumed)

    def try_lock(self) -> DirectoryLock | None:
        """Lock the run directory; None if another process holds it."""
        return try_lock(self.directory)

    def lock(self, waiting: str) -> contextlib.AbstractContextManager[None]:
        """Hold the run directory's lock; log ``waiting`` and wait if another process holds it."""
        return wait_lock(self.directory, lambda: log.warning("%s", waiting))

    @contextlib.contextmanager
    def failing(self) -> Iterator[None]:
        """Mark the run FAILED (KILLED on an interrupt) if the block raises, then re-raise."""
        try:
            yield
        except BaseException as exc:
            self.terminate(exc)
            raise

    def terminate(self, exc: BaseException) -> None:
        """Mark the run KILLED (interrupt) or FAILED (error), tagging the error."""
        mark_terminated(client(), self.run_id, exc)

    @contextlib.contextmanager
    def reopen(
        self,
        tags: Mapping[str, Any] | None = None,
        keep_status: tuple[type[BaseException], ...] = (),
    ) -> Iterator[StepRun]:
        """Set the run RUNNING (its directory locked by the caller) for the block.

        The host, process and ``tags`` are tagged. An exception from the block marks
        the run FAILED or KILLED, unless it is one of ``keep_status`` (the run is left
        RUNNING, e.g. for a job that requeued itself).
        """
        client().update_run(self.run_id, status="RUNNING")
        handle = self.handle(resumed=True)
        handle.set_tags({TAG_HOST: socket.gethostname(), TAG_PID: os.getpid(), **(tags or {})})
        try:
            yield handle
        except keep_status:
            raise
        except BaseException as exc:
            self.terminate(exc)
            raise

    def finish(
        self, handle: StepRun, params: Mapping[str, Any], input_run_ids: Sequence[str]
    ) -> None:
        """Hash the outputs, log metadata and mark the run FINISHED (FAILED on an error)."""
        with self.failing():
            finish_step(client(), handle, params, list(input_run_ids))
