"""The life of a step's run: created or resumed, recorded, finished or marked stopped.

Every stage records itself through :func:`tracked_step`, which gives each run

- the step's run name from the user's guide (``cutting_out``, ...),
- all parameters, the IDs of its input runs, the random seed,
- the package version and git commit, the host and process,
- its output directory (one directory per run, the contract between steps),
- a content hash of the outputs and a per-file listing (artifact ``outputs.json``:
  size, SHA-256 and sampled blocks of each file), checked cheaply by the next step
  (:func:`~astrocurate.tracking.reads.require_run`) and in full by ``astrocurate verify``,
- a ``metadata.json`` artifact describing the run.

A run is FINISHED only after its outputs are complete. An exception marks it
FAILED, SIGTERM/SIGINT mark it KILLED. Running a step again with the same
inputs and parameters reuses the finished run, or resumes the unfinished one
in the same output directory. Runs made in two commands, or by several processes,
build on the same pieces (:mod:`astrocurate.tracking.prepared`,
:mod:`astrocurate.tracking.sharded`).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrocurate import __version__
from astrocurate.errors import (
    InvalidArgumentError,
    InvalidRunError,
    RunNotFoundError,
    StepInterrupted,
)
from astrocurate.tracking import direct
from astrocurate.tracking.checks import check_reusable
from astrocurate.tracking.direct_client import log_batch
from astrocurate.tracking.entities import Metric, Param, RunTag, is_store_error
from astrocurate.tracking.fingerprints import (
    git_state,
    hash_mode,
    hash_outputs,
    param_text,
    remove_temporaries,
    run_key,
)
from astrocurate.tracking.locks import try_lock
from astrocurate.tracking.reads import get_run, search_records
from astrocurate.tracking.records import RunRecord
from astrocurate.tracking.store import (
    FINISHED,
    TAG_CONTENT_HASH,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_HOST,
    TAG_INPUTS,
    TAG_NOTE,
    TAG_OUTPUT_DIR,
    TAG_PID,
    TAG_RUN_KEY,
    TAG_SOURCE,
    TAG_STEP,
    TAG_USER,
    TAG_VERSION,
    client,
    experiment_id,
    redact_uri,
    tracking_uri,
)

log = logging.getLogger(__name__)


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
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):
            log_batch(client(), self.run_id, metrics=batch[start : start + 1000])

    def log_metric_series(self, name: str, values: Iterable[float]) -> None:
        """Log one metric as a series, value ``i`` at step ``i`` (plotted by ``mlflow ui``)."""
        now = int(time.time() * 1000)
        batch = [Metric(name, float(v), now, i) for i, v in enumerate(values)]
        for start in range(0, len(batch), 1000):
            log_batch(client(), self.run_id, metrics=batch[start : start + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log extra parameters (discovered during the run, e.g. the number of mosaics)."""
        _log_params(client(), self.run_id, params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the run."""
        log_batch(client(), self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, obj: Any, name: str) -> None:
        """Log a JSON-serialisable object as an artifact file ``name``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
            client().log_artifact(self.run_id, str(path))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a small file into the run's artifacts (never large arrays)."""
        client().log_artifact(self.run_id, str(path), artifact_path)

    def log_folder(self, folder: Path, artifact_path: str) -> None:
        """Copy the files of ``folder`` (not its subfolders) into artifacts ``artifact_path``."""
        for path in sorted(Path(folder).iterdir()):
            if path.is_file():
                self.log_artifact(path, artifact_path)

    def remove_temporaries(self) -> int:
        """Remove the temporaries of interrupted attempts from the output directory.

        Only while the run's lock is held (inside :func:`tracked_step`); see
        :func:`~astrocurate.tracking.fingerprints.remove_temporaries`.
        """
        return remove_temporaries(self.output_dir)


def _log_params(mlflow_client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    batch = [Param(k, param_text(v)) for k, v in params.items()]
    for start in range(0, len(batch), 100):
        log_batch(mlflow_client, run_id, params=batch[start : start + 100])


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
    resume_params: Mapping[str, str | DerivedParam] | None = None,
    force: bool = False,
    before_work: Callable[[], Mapping[str, Any] | None] | None = None,
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
    resume_params : mapping of str to str or DerivedParam, optional
        Volatile parameters that may still change the outputs' bytes at float rounding
        (the batch size), with their command-line flag or a :class:`DerivedParam`: a
        finished run is reused whatever their value, but an unfinished one is resumed only
        with the values it started with (:func:`check_resume_params`), so that no output
        mixes two of them.
    force : bool
        Never reuse a finished run: compute into a new one.
    before_work : callable, optional
        Called once it is known that the step will compute (no finished run to reuse),
        before any run is recorded or directory made: costly checks of the inputs, start-up
        work. It may return volatile parameters known only then (the device), to be
        logged. An exception from it leaves nothing behind.

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
    all_params.update(_late_params(before_work, volatile))
    _check_previous(previous, all_params, resume_params or {})
    make_output_root(root, inputs)  # before any run is recorded: a bad path leaves none
    mlflow_client = client()
    with contextlib.ExitStack() as stack:
        handle = _open_run(stack, mlflow_client, previous, step, key, inputs, root)
        if handle.reused:
            yield handle
            return
        record_start(mlflow_client, handle.run_id, all_params, inputs, handle.output_dir)
        with terminate_raises(), _status_on_exit(mlflow_client, handle.run_id):
            yield handle
            finish_step(mlflow_client, handle, all_params, inputs)


def _late_params(before_work: Callable | None, volatile: set[str]) -> dict[str, Any]:
    """Call ``before_work``; return the volatile parameters it gives (none if it is None)."""
    late = dict((before_work() if before_work else None) or {})
    if not late.keys() <= volatile:
        raise ValueError(f"before_work returned non-volatile parameters {sorted(late)}")
    return late


def _check_previous(
    previous: RunRecord | None,
    params: Mapping[str, Any],
    resume_params: Mapping[str, str | DerivedParam],
) -> None:
    """Refuse to resume ``previous`` with other byte-changing parameters; warn if it is gone."""
    if previous is None:
        return
    if not previous.finished:
        check_resume_params(previous, params, resume_params)
        return
    log.warning(
        "finished %s run %s with the same inputs and parameters has no output directory "
        "%s (moved or deleted?): computing a new run",
        previous.step,
        previous.run_id,
        previous.output_dir,
    )


def _open_run(
    stack: contextlib.ExitStack,
    mlflow_client: Any,
    previous: RunRecord | None,
    step: str,
    key: str,
    inputs: list[str],
    root: Path,
) -> StepRun:
    """Resume ``previous`` if its directory can be locked, else create a new run; lock it.

    The lock is released when ``stack`` closes. A run found unfinished but finished by
    another process before its lock was taken is returned ``reused`` (no lock held).
    """
    experiment = experiment_id(mlflow_client, create=True)
    lock = None
    if previous is not None and not previous.finished and previous.output_dir is not None:
        lock = try_lock(previous.output_dir)
    if lock is not None and previous is not None:
        if _finished_meanwhile(mlflow_client, previous.run_id):
            lock.close()  # another process finished it between our lookup and the lock
            log.info("reusing %s run %s, finished by another process", step, previous.run_id)
            return StepRun(previous.run_id, step, previous.output_dir, reused=True)  # type: ignore[arg-type]
        stack.callback(lock.close)
        mlflow_client.update_run(previous.run_id, status="RUNNING")
        log.info("resuming interrupted %s run %s in %s", step, previous.run_id, previous.output_dir)
        return StepRun(previous.run_id, step, previous.output_dir, resumed=True)  # type: ignore[arg-type]
    run_id = create_run_record(mlflow_client, experiment, step, key, inputs)
    out = root / step / run_id
    out.mkdir(parents=True, exist_ok=True)
    lock = try_lock(out)
    stack.callback(lock.close)  # type: ignore[union-attr]
    return StepRun(run_id, step, out)


@dataclass(frozen=True)
class DerivedParam:
    """A resume-guarded parameter that no flag sets: what the machine makes of a flag.

    Attributes
    ----------
    flag : str
        The flag it follows from, e.g. ``--precision`` for the precision computed in.
    remedy : str
        How to resume the run, ``{value}`` being the value it started with.
    implied : callable, optional
        The value a run recorded before the parameter existed started with, from its
        other parameters; None: such a run is not checked.
    """

    flag: str
    remedy: str
    implied: Callable[[Mapping[str, str]], str] | None = None


def check_resume_params(
    record: RunRecord,
    params: Mapping[str, Any],
    flags: Mapping[str, str | DerivedParam],
    otherwise: str = "or --force for a new run",
) -> None:
    """Refuse to add to an unfinished run with other values of byte-changing parameters.

    Parameters
    ----------
    record : RunRecord
        The unfinished run about to be resumed or joined.
    params : mapping
        This process's parameters.
    flags : mapping of str to str or DerivedParam
        Parameter name to command-line flag, e.g. ``{"batch_size": "--batch-size"}``, or
        to a :class:`DerivedParam` for a parameter that no flag sets.
    otherwise : str
        The other way out, ending the message.

    Raises
    ------
    InvalidArgumentError
        Naming the flag, this value, the run and the value it started with.
    """
    for name, flag in flags.items():
        theirs = _started_with(record.params, name, flag)
        if theirs is None or name not in params:
            continue
        ours = param_text(params[name])
        if ours == theirs:
            continue
        started = f"{record.step} run {record.run_id} is unfinished and was started with"
        mixed = f"may differ at float rounding with another {name}, so they cannot be mixed"
        if isinstance(flag, DerivedParam):
            raise InvalidArgumentError(
                f"{flag.flag}: {started} {name}={theirs}, here it would be {ours}; its "
                f"outputs {mixed} in one run: {flag.remedy.format(value=theirs)} ({otherwise})"
            )
        raise InvalidArgumentError(
            f"{flag} {ours}: {started} {name}={theirs}; its outputs {mixed} in one run: "
            f"rerun with {flag} {theirs} to resume it ({otherwise})"
        )


def _started_with(recorded: Mapping[str, str], name: str, flag: str | DerivedParam) -> str | None:
    """Return the value of ``name`` a run started with (implied for older runs), if known."""
    if name in recorded:
        return recorded[name]
    if isinstance(flag, DerivedParam) and flag.implied is not None:
        return flag.implied(recorded)
    return None


def _finished_meanwhile(mlflow_client: Any, run_id: str) -> bool:
    """Whether a run found unfinished is FINISHED now (checked once its lock is held)."""
    return mlflow_client.get_run(run_id).info.status == FINISHED


def _previous_run(step: str, key: str) -> RunRecord | None:
    """Return the run to reuse or resume for reuse key ``key``, if any (:func:`_latest`)."""
    path = direct.local_store()
    if path is not None:
        try:
            return _latest(direct.search_runs(path, step, key, include_unfinished=True))
        except direct.NoDirectReadError as exc:
            log.debug("searching runs through MLflow: %s", exc)
    mlflow_client = client()
    experiment_id(mlflow_client, create=True)
    return _latest(search_records(step, key, True, mlflow_client))


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
    existing = mlflow_client.get_run(run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in existing}
    if "input_run_ids" not in existing:
        fresh["input_run_ids"] = inputs
    if "output_dir" not in existing:
        fresh["output_dir"] = str(out)
    try:
        _log_params(mlflow_client, run_id, fresh)
    except Exception as exc:  # a parameter changed value: not the same run
        if not is_store_error(exc):
            raise
        raise InvalidRunError(f"cannot resume run {run_id}: {exc}") from exc
    tags = {TAG_OUTPUT_DIR: str(out), TAG_HOST: socket.gethostname(), TAG_PID: os.getpid()}
    log_batch(mlflow_client, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def finish_step(
    mlflow_client: Any, handle: StepRun, params: Mapping[str, Any], inputs: list[str]
) -> None:
    """Hash the outputs, log metadata, and mark the run FINISHED.

    Each output file's size, full SHA-256 (unless ``ASTROCURATE_OUTPUT_HASH=sample``)
    and sampled blocks go to the artifact ``outputs.json``; their :func:`content_hash`
    to the tag ``astrocurate.content_hash``.
    """
    started = time.time()
    mode = hash_mode()
    digest, listing = hash_outputs(handle.output_dir, full=mode == "full")
    commit, dirty = git_state()
    log_batch(mlflow_client, handle.run_id, tags=[RunTag(TAG_CONTENT_HASH, digest)])
    handle.log_dict(listing, "outputs.json")
    handle.log_dict(
        {
            "run_id": handle.run_id,
            "step": handle.step,
            "params": {k: param_text(v) for k, v in params.items()},
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
    mlflow_client.set_terminated(handle.run_id, status=FINISHED)


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
    status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
    message = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
    with contextlib.suppress(Exception):
        log_batch(mlflow_client, run_id, tags=[RunTag(TAG_ERROR, message)])
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
