"""MLflow tracking: one run per pipeline step, chained by run IDs.

The package in layers, each module on top of those before it:

- :mod:`~astrocurate.tracking.entities`: light stand-ins for MLflow's entities;
- :mod:`~astrocurate.tracking.sqlite_writes`: MLflow's run writes as sqlite statements;
- :mod:`~astrocurate.tracking.direct_client`: :class:`DirectClient`, those writes without MLflow;
- :mod:`~astrocurate.tracking.store`: the tracking URI, client, experiment, tag names;
- :mod:`~astrocurate.tracking.records`: :class:`RunRecord`, run ID checks;
- :mod:`~astrocurate.tracking.direct`: direct reads of a local sqlite store (no MLflow);
- :mod:`~astrocurate.tracking.fingerprints`: output hashes, reuse keys, git state;
- :mod:`~astrocurate.tracking.checks`: cheap checks of a run's recorded outputs;
- :mod:`~astrocurate.tracking.reads`: :func:`get_run`, :func:`require_run`, :func:`find_runs`;
- :mod:`~astrocurate.tracking.locks`: run directory locks;
- :mod:`~astrocurate.tracking.lifecycle`: :func:`tracked_step` and the run's records;
- :mod:`~astrocurate.tracking.prepared`: a run prepared by one command, run by another;
- :mod:`~astrocurate.tracking.sharded`: one run computed by several processes;
- :mod:`~astrocurate.tracking.lookup`: ``find_run`` and ``verify``.

This module re-exports the public names; a test that replaces a function patches the
module that looks it up (e.g. ``tracking.lifecycle.hash_outputs``).
"""

from astrocurate.tracking.checks import (
    QUICK_CHECK_BYTES,
    SKIP_INPUT_CHECK_ENV,
    check_reusable,
    quick_check_outputs,
    recorded_listing,
)
from astrocurate.tracking.direct import FAST_LOOKUP_ENV
from astrocurate.tracking.fingerprints import (
    HASH_MODE_ENV,
    SAMPLE_BLOCK,
    SAMPLE_MIDDLE_BLOCKS,
    VOLATILE_DIRS,
    ProgressCallback,
    content_hash,
    default_hash_workers,
    fingerprint_file,
    fingerprint_files,
    git_state,
    hash_mode,
    hash_outputs,
    is_volatile,
    output_files,
    remove_temporaries,
    run_key,
    sample_digest,
    sample_offsets,
)
from astrocurate.tracking.lifecycle import (
    DerivedParam,
    StepRun,
    check_resume_params,
    create_run_record,
    default_output_root,
    finish_step,
    make_output_root,
    mark_terminated,
    record_start,
    terminate_raises,
    tracked_step,
)
from astrocurate.tracking.locks import DirectoryLock, try_lock
from astrocurate.tracking.prepared import PreparedRun
from astrocurate.tracking.reads import find_runs, get_run, require_run
from astrocurate.tracking.records import RunRecord, params_match, parse_run_id
from astrocurate.tracking.sharded import SharedRun
from astrocurate.tracking.store import (
    DEFAULT_EXPERIMENT,
    LOCK_NAME,
    STEP_NAMES,
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
    experiment_name,
    redact_uri,
    tracking_uri,
)

__all__ = [
    "DEFAULT_EXPERIMENT",
    "FAST_LOOKUP_ENV",
    "HASH_MODE_ENV",
    "LOCK_NAME",
    "QUICK_CHECK_BYTES",
    "SAMPLE_BLOCK",
    "SAMPLE_MIDDLE_BLOCKS",
    "SKIP_INPUT_CHECK_ENV",
    "STEP_NAMES",
    "TAG_CONTENT_HASH",
    "TAG_ERROR",
    "TAG_GIT_COMMIT",
    "TAG_GIT_DIRTY",
    "TAG_HOST",
    "TAG_INPUTS",
    "TAG_NOTE",
    "TAG_OUTPUT_DIR",
    "TAG_PID",
    "TAG_RUN_KEY",
    "TAG_SOURCE",
    "TAG_STEP",
    "TAG_USER",
    "TAG_VERSION",
    "VOLATILE_DIRS",
    "DerivedParam",
    "DirectoryLock",
    "PreparedRun",
    "ProgressCallback",
    "RunRecord",
    "SharedRun",
    "StepRun",
    "check_resume_params",
    "check_reusable",
    "client",
    "content_hash",
    "create_run_record",
    "default_hash_workers",
    "default_output_root",
    "experiment_id",
    "experiment_name",
    "find_runs",
    "fingerprint_file",
    "fingerprint_files",
    "finish_step",
    "get_run",
    "git_state",
    "hash_mode",
    "hash_outputs",
    "is_volatile",
    "make_output_root",
    "mark_terminated",
    "output_files",
    "params_match",
    "parse_run_id",
    "quick_check_outputs",
    "record_start",
    "recorded_listing",
    "redact_uri",
    "remove_temporaries",
    "require_run",
    "run_key",
    "sample_digest",
    "sample_offsets",
    "terminate_raises",
    "tracked_step",
    "tracking_uri",
    "try_lock",
]
