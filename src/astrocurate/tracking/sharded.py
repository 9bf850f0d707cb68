"""One run computed by several processes ("shards"): found or created once, finished once.

Every shard of a step finds (or the first one creates) the same MLflow run and writes into
its output directory. Finding or creating the run and finishing it happen under an
exclusive lease on ``<root>/<step>/.lease-<run key>`` (:mod:`astrocurate.io.leases`,
which holds across nodes where ``flock`` does not). While a shard computes it holds a
shared ``flock`` on the run directory, so that a process without shards (which takes it
exclusively, :func:`~astrocurate.tracking.lifecycle.tracked_step`) records its own run.

A shard that fails or is stopped marks the run FAILED or KILLED (tag
``astrocurate.error``) unless another shard has finished it; the run's tags, parameters
and statuses are those :func:`~astrocurate.tracking.lifecycle.tracked_step` records.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrocurate.errors import InvalidRunError, StepInterrupted
from astrocurate.io.leases import lease
from astrocurate.tracking.checks import check_reusable
from astrocurate.tracking.lifecycle import (
    DerivedParam,
    StepRun,
    check_resume_params,
    create_run_record,
    finish_step,
    make_output_root,
    record_start,
    terminate_raises,
)
from astrocurate.tracking.locks import DirectoryLock, share_lock
from astrocurate.tracking.reads import find_runs, get_run
from astrocurate.tracking.records import RunRecord
from astrocurate.tracking.store import (
    TAG_ERROR,
    TAG_HOST,
    TAG_PID,
    TAG_RUN_KEY,
    client,
    experiment_id,
)

log = logging.getLogger(__name__)

#: Seconds a failing shard waits for the lease to record its failure.
FAILURE_LEASE_WAIT = 10.0
#: Parameters that :func:`~astrocurate.tracking.lifecycle.record_start` adds to a run's own.
RECORDED_PARAMS = ("input_run_ids", "output_dir")


@dataclass(frozen=True)
class SharedRun:
    """The run that the shards of one step with one reuse key share.

    Attributes
    ----------
    step : str
        The run name.
    key : str
        The reuse key (:func:`~astrocurate.tracking.fingerprints.run_key`).
    root : Path
        Parent of the step's run directories.
    command : str
        The command that computes without shards, named in messages (default ``step``).
    """

    step: str
    key: str
    root: Path
    command: str = ""

    @classmethod
    def of(cls, record: RunRecord, command: str = "") -> SharedRun:
        """Return the shared run that ``record`` is (its directory must be recorded)."""
        out: Path = record.output_dir  # type: ignore[assignment]
        key = record.tags.get(TAG_RUN_KEY, record.run_id)
        return cls(record.step, key, out.parent.parent, command)

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[bool]:
        """Hold the run's exclusive lease; yield whether it is held (False after ``timeout``)."""
        path = Path(self.root) / self.step / f".lease-{self.key}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with lease(path, timeout) as held:
            yield held

    def prepare_root(self, input_run_ids: Sequence[str]) -> None:
        """Create the output root (before any run is recorded: a bad path leaves none)."""
        make_output_root(self.root, input_run_ids)

    def runs(self) -> list[RunRecord]:
        """Return the runs with this key whose directory exists, newest first."""
        runs = find_runs(self.step, run_key=self.key, include_unfinished=True)
        return [r for r in runs if r.output_dir is not None and r.output_dir.is_dir()]

    def newest(self) -> str | None:
        """Return the ID of the newest finished run, else of the newest unfinished one."""
        usable = self.runs()
        finished = [r for r in usable if r.finished]
        return (finished or usable)[0].run_id if usable else None

    def join(
        self,
        params: Mapping[str, Any],
        input_run_ids: Sequence[str],
        *,
        resume_params: Mapping[str, str | DerivedParam] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> StepRun:
        """Find or create the run (call under :meth:`lease`).

        A finished run whose outputs exist is returned ``reused``. Otherwise the newest
        unfinished run whose directory exists is joined (set RUNNING again if a shard
        had marked it FAILED or KILLED), or a new run is created; ``tags`` are set on it.
        """
        usable = self.runs()
        finished = [r for r in usable if r.finished]
        if finished:
            check_reusable(finished[0])  # its outputs are still those it recorded
            return StepRun(finished[0].run_id, self.step, finished[0].output_dir, reused=True)  # type: ignore[arg-type]
        mlflow_client = client()
        inputs = list(input_run_ids)
        if usable:
            record = usable[0]
            otherwise = "or another --output_path for a new run"
            check_resume_params(record, params, resume_params or {}, otherwise)
            run_id, out, resumed = record.run_id, record.output_dir, True
            if record.status != "RUNNING":
                mlflow_client.update_run(run_id, status="RUNNING")
            log.info("joining %s %s run %s in %s", record.status.lower(), self.step, run_id, out)
        else:
            experiment = experiment_id(mlflow_client, create=True)
            run_id = create_run_record(mlflow_client, experiment, self.step, self.key, inputs)  # type: ignore[arg-type]
            out, resumed = self.root / self.step / run_id, False
            out.mkdir(parents=True, exist_ok=True)
            log.info("created %s run %s in %s", self.step, run_id, out)
        record_start(mlflow_client, run_id, params, inputs, out)  # type: ignore[arg-type]
        if tags:
            StepRun(run_id, self.step, out).set_tags(tags)  # type: ignore[arg-type]
        return StepRun(run_id, self.step, out, resumed=resumed)  # type: ignore[arg-type]

    def share(self, run: RunRecord | StepRun) -> DirectoryLock:
        """Take a shared lock on the run directory; close the returned lock to release it.

        Raises
        ------
        InvalidRunError
            When a process without shards holds the directory (it takes it exclusively).
        """
        held = share_lock(run.output_dir)  # type: ignore[arg-type]
        if held is None:
            tags = get_run(run.run_id).tags
            command = self.command or self.step
            raise InvalidRunError(
                f"run {run.run_id} is being computed by a `{command}` process without "
                f"--shard (pid {tags.get(TAG_PID, '?')} on {tags.get(TAG_HOST, '?')}); "
                "let it finish, or stop it and run the shards again"
            )
        return held

    @contextlib.contextmanager
    def working(self, run_id: str, label: str) -> Iterator[None]:
        """Compute in the block; mark the run stopped if it raises (SIGTERM raises).

        Under the lease, and only while the run is not FINISHED: a shard stopped after
        another one finished the run leaves it FINISHED. ``label`` (``shard 1/4``)
        starts the error tag.
        """
        with terminate_raises():
            try:
                yield
            except BaseException as exc:
                with self.lease(timeout=FAILURE_LEASE_WAIT) as held:
                    if held and not get_run(run_id).finished:
                        self.mark_stopped(run_id, label, exc)
                raise

    @staticmethod
    def mark_stopped(run_id: str, label: str, exc: BaseException) -> None:
        """Mark the run KILLED (interrupt) or FAILED (error); tag ``label: <first line>``."""
        message = f"{label}: {_first_line(exc)}"
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit, StepInterrupted))
        with contextlib.suppress(Exception):
            StepRun(run_id, "", Path()).set_tags({TAG_ERROR: message[:500]})
            client().set_terminated(run_id, status="KILLED" if interrupted else "FAILED")

    def finish(self, record: RunRecord, complete: Callable[[StepRun], None]) -> StepRun:
        """Complete the outputs with ``complete(handle)``, hash them, mark the run FINISHED.

        Call under :meth:`lease`. The run's own parameters are recorded as at its start.
        """
        handle = StepRun(record.run_id, self.step, record.output_dir, resumed=True)  # type: ignore[arg-type]
        complete(handle)
        params = {k: v for k, v in record.params.items() if k not in RECORDED_PARAMS}
        finish_step(client(), handle, params, record.input_run_ids)
        log.info("finished %s run %s; outputs in %s", self.step, record.run_id, handle.output_dir)
        return handle


def _first_line(exc: BaseException) -> str:
    """Return the first line of an error's message, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
