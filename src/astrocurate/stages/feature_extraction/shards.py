"""Sharded feature extraction: N processes, one ``feature_extraction`` run, one matrix.

``astrocurate features ... --shard K/N`` (or ``--shard auto`` in a SLURM job array, under
torchrun or in an ``srun -n N`` step) computes shard K of the run's resumable blocks: the
blocks are cut into N contiguous ranges. Block boundaries depend on ``--shard-rows`` only,
never on N, so a run started with one N resumes with another, or with no ``--shard`` at
all.

The shard is not a parameter of the run: every shard finds (or the first one creates)
the same MLflow run and writes its rows into the same pre-allocated matrix. Finding or
creating the run, pre-allocating the matrix and finishing the run happen under an
exclusive lease on ``<output root>/feature_extraction/.lease-<run key>``
(:mod:`astrocurate.io.leases`, which holds across nodes where ``flock`` does not), so N
processes that start at once, on one node or several, record one run and one matrix.
While a shard computes it holds a shared ``flock`` on the run directory: an unsharded
``features`` process (which takes it exclusively) then records its own run instead of
writing into this one (on one node; across nodes that guard is as good as ``flock``).

A shard that ends its range leaves the run RUNNING, unless every block is done: then it
finishes the run (renames the matrix, hashes the outputs, marks it FINISHED). A shard
that fails or is stopped (SIGTERM, Ctrl-C) marks the run FAILED or KILLED with the tag
``astrocurate.error`` naming the shard, unless another shard has already finished the
run; the other shards go on (they never read the status) and the run can only become
FINISHED once the shard is run again, which resumes from its last finished block and
sets the run RUNNING. A shard killed outright (SIGKILL, node failure) leaves the run
RUNNING; rerunning it resumes in the same way.

``astrocurate features-finish RUN_ID`` (or the shards' command with ``--finish``)
checks that every block is done and finishes the run, or says in one line which rows
are missing and which shards to run again. ``--slurm-array N`` writes a script that
submits the N shards as a job array and the finishing step as a job that depends on it.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from astrocurate.errors import InvalidRunError
from astrocurate.stages.feature_extraction.extraction import (
    compute_blocks,
    finalise,
    log_quality,
    missing_blocks,
    prepare_output,
)
from astrocurate.stages.feature_extraction.outputs import SIDECAR
from astrocurate.stages.feature_extraction.plan import RESUME_PARAMS, STEP, Extraction
from astrocurate.tracking import RunRecord, SharedRun, StepRun, get_run, require_run

log = logging.getLogger(__name__)

#: Tag holding the N of the latest ``--shard K/N`` that joined the run.
TAG_SHARDS = "astrocurate.feature_shards"


# --------------------------------------------------------------------------- which shard


def shard_blocks(n_blocks: int, shard: tuple[int, int]) -> range:
    """Return the indices of the blocks of shard ``(K, N)``: one contiguous range.

    Shard K gets blocks ``floor(K B / N)`` to ``floor((K + 1) B / N)`` (exclusive) of B:
    the ranges tile the blocks, differ in length by at most one, and are empty for
    some shards only when N > B.
    """
    k, n = shard
    return range(k * n_blocks // n, (k + 1) * n_blocks // n)


def shard_of_block(block: int, n_blocks: int, n_shards: int) -> int:
    """Return the shard (of ``n_shards``) whose range holds block ``block``."""
    firsts = [k * n_blocks // n_shards for k in range(n_shards)]
    return bisect.bisect_right(firsts, block) - 1


def describe_rows(starts: Sequence[int], block_rows: int, n_rows: int) -> str:
    """Return ``"0-99, 200-249"``: the rows of blocks ``starts`` as inclusive ranges."""
    ranges: list[list[int]] = []
    for start in sorted(starts):
        end = min(start + block_rows, n_rows) - 1
        if ranges and ranges[-1][1] + 1 == start:
            ranges[-1][1] = end
        else:
            ranges.append([start, end])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


# --------------------------------------------------------------------------- the shared run


def shared_run(plan: Extraction) -> SharedRun:
    """Return the run that every shard of ``plan`` shares (:mod:`astrocurate.tracking.sharded`)."""
    return SharedRun(STEP, plan.run_key, plan.root, command="features")


@contextlib.contextmanager
def run_lock(root: Path, key: str, timeout: float | None = None) -> Iterator[bool]:
    """Hold the exclusive lease of the feature run with key ``key`` under ``root``.

    A :class:`~astrocurate.io.leases.FileLease`, not an ``flock``: the shards of one run may
    sit on several nodes of a shared filesystem where ``flock`` is node-local.

    Parameters
    ----------
    root : Path
        Parent of the ``feature_extraction`` run directories.
    key : str
        The run key (:attr:`astrocurate.stages.feature_extraction.extraction.Extraction.run_key`).
    timeout : float, optional
        Give up after this many seconds (yield False); default wait for ever.

    Yields
    ------
    bool
        Whether the lease is held.
    """
    with SharedRun(STEP, key, Path(root)).lease(timeout) as held:
        yield held


# --------------------------------------------------------------------------- one shard


@dataclass
class ShardResult:
    """What one shard did.

    Attributes
    ----------
    run : StepRun
        The shared run (``reused`` when it was already finished).
    shard : tuple of int
        ``(K, N)``.
    rows_computed : int
        Cutouts this process computed.
    blocks : range
        Indices of the shard's blocks.
    missing : list of int
        First rows of the run's blocks still to compute, by any shard, after this one.
    finished : bool
        Whether the run is FINISHED (by this shard or before).
    """

    run: StepRun
    shard: tuple[int, int]
    rows_computed: int = 0
    blocks: range = field(default_factory=lambda: range(0))
    missing: list[int] = field(default_factory=list)
    finished: bool = False


def extract_shard(
    plan: Extraction, shard: tuple[int, int], *, progress: bool = False
) -> ShardResult:
    """Compute shard ``(K, N)`` of a feature run, in the run all shards share.

    Parameters
    ----------
    plan : Extraction
        The run's arguments (:func:`astrocurate.stages.feature_extraction.run.plan_extraction`).
    shard : tuple of int
        ``(K, N)``, ``0 <= K < N``.
    progress : bool
        Show a progress bar over the shard's rows.

    Returns
    -------
    ShardResult
    """
    k, n = shard
    shared = shared_run(plan)
    shared.prepare_root([plan.merged.run_id])  # before any run is recorded
    with shared.lease():
        run = join_run(plan, n)
        if run.reused:
            log.info("shard %d/%d: run %s is already finished", k, n, run.run_id)
            return ShardResult(run, shard, finished=True)
        holder = shared.share(run)
        try:
            incomplete = prepare_output(plan, run.output_dir)
        except BaseException as exc:
            holder.close()
            shared.mark_stopped(run.run_id, f"shard {k}/{n}", exc)
            raise
    starts = plan.block_starts
    blocks = shard_blocks(len(starts), shard)
    with contextlib.closing(holder), shared.working(run.run_id, f"shard {k}/{n}"):
        started = time.perf_counter()
        mine = [starts[b] for b in blocks]
        computed = compute_blocks(plan, run.output_dir, mine, progress) if incomplete else 0
        seconds = time.perf_counter() - started
        if computed:
            run.log_metrics(
                {"shard_rows_computed": computed, "shard_images_per_second": computed / seconds},
                step=k,
            )
        with shared.lease():
            missing, finished = _finish_if_complete(run.run_id)
    result = ShardResult(run, shard, computed, blocks, missing, finished)
    _log_shard(result, plan)
    return result


def join_run(plan: Extraction, n_shards: int) -> StepRun:
    """Find or create the run of ``plan`` (call under its lease, :func:`shared_run`).

    A finished run whose outputs exist is returned with ``reused`` set. Otherwise the
    newest unfinished run with the same key whose directory exists is joined (set
    RUNNING again if a shard had marked it FAILED or KILLED), or a new run is created.
    """
    return shared_run(plan).join(
        plan.params,
        [plan.merged.run_id],
        resume_params=RESUME_PARAMS,
        tags={TAG_SHARDS: n_shards},
    )


def _finish_if_complete(run_id: str) -> tuple[list[int], bool]:
    """Finish the run if every block is done (call under its lease).

    Returns the missing blocks' first rows and whether the run is FINISHED.
    """
    record = get_run(run_id)
    if record.finished:
        return [], True
    missing = _missing(record)
    if missing:
        return missing, False
    _finish(record)
    return [], True


def _missing(record: RunRecord) -> list[int]:
    n_rows, block_rows = int(record.params["n_rows"]), int(record.params["shard_rows"])
    return missing_blocks(record.output_dir, n_rows, block_rows)  # type: ignore[arg-type]


def _finish(record: RunRecord) -> None:
    """Finalise the outputs and mark the run FINISHED, as the unsharded path does."""
    SharedRun.of(record).finish(record, lambda handle: _complete_outputs(handle, record))


def _complete_outputs(handle: StepRun, record: RunRecord) -> None:
    """Put the matrix and sidecar in place; log the metrics of the unsharded path."""
    out = handle.output_dir
    finalise(out)
    sidecar = json.loads((out / SIDECAR).read_text())
    handle.log_metrics({"n_features": sidecar["n_rows"], "feature_dim": sidecar["dim"]})
    merged = get_run(record.input_run_ids[0])
    log_quality(handle, merged.output_dir)  # type: ignore[arg-type]


def _log_shard(result: ShardResult, plan: Extraction) -> None:
    k, n = result.shard
    starts, block_rows = plan.block_starts, plan.options.shard_rows
    mine = [starts[b] for b in result.blocks]
    rows = describe_rows(mine, block_rows, plan.n_rows) if mine else "none"
    log.info(
        "shard %d/%d: rows %s (%d blocks), %d computed now", k, n, rows, len(mine),
        result.rows_computed,
    )  # fmt: skip
    if result.finished:
        return
    log.info(
        "shard %d/%d: run %s stays RUNNING until the other shards are done (rows %s of %d "
        "to go); the last shard finishes it, or `astrocurate features-finish %s`",
        k, n, result.run.run_id, describe_rows(result.missing, block_rows, plan.n_rows),
        plan.n_rows, result.run.run_id,
    )  # fmt: skip


# --------------------------------------------------------------------------- finishing


class IncompleteRunError(InvalidRunError):
    """A sharded feature run still has blocks to compute."""


def finish_run(run_id: str, argument: str = "RUN_ID") -> StepRun:
    """Finish a feature run whose blocks were computed by shards (``features-finish``).

    Parameters
    ----------
    run_id : str
        A ``feature_extraction`` run.
    argument : str
        How the run ID was given, for messages.

    Returns
    -------
    StepRun
        ``reused`` when the run was already finished (nothing is done again).

    Raises
    ------
    IncompleteRunError
        In one line: the missing rows and the shards to run again.
    InvalidRunError, RunNotFoundError
        Not a feature run, or its directory is gone.
    """
    record = get_run(run_id, argument)
    if record.step != STEP:
        raise InvalidRunError(
            f"{argument}: run {run_id} is a {record.step!r} run, expected {STEP!r}"
        )
    out = record.output_dir
    if out is None or not out.is_dir():
        raise InvalidRunError(f"{argument}: run {run_id} has no output directory ({out})")
    shared = SharedRun.of(record, command="features")
    with shared.lease():
        record = get_run(record.run_id)
        if record.finished:
            require_run(record.run_id, STEP, argument)  # its outputs are still there
            log.info("%s run %s is already finished", STEP, record.run_id)
            return StepRun(record.run_id, STEP, out, reused=True)
        with contextlib.closing(shared.share(record)):
            missing = _missing(record)
            if missing:
                raise IncompleteRunError(_incomplete_message(record, missing))
            _finish(record)
    return StepRun(record.run_id, STEP, out, resumed=True)


def _incomplete_message(record: RunRecord, missing: list[int]) -> str:
    n_rows, block_rows = int(record.params["n_rows"]), int(record.params["shard_rows"])
    rows = describe_rows(missing, block_rows, n_rows)
    text = f"run {record.run_id} is incomplete: rows {rows} of {n_rows} are not computed"
    n_shards = record.tags.get(TAG_SHARDS, "")
    if not n_shards.isdigit():
        return text + "; rerun its `features` command (it resumes), then finish again"
    n = int(n_shards)
    n_blocks = -(-n_rows // block_rows)
    shards = sorted({shard_of_block(s // block_rows, n_blocks, n) for s in missing})
    listed = ", ".join(f"--shard {k}/{n}" for k in shards)
    return (
        f"{text}; rerun the `features` command with {listed} (or resubmit those array "
        "tasks), then finish again"
    )


def find_run_of(plan: Extraction) -> str:
    """Return the ID of the newest run with the key of ``plan`` (``features --finish``).

    Raises
    ------
    InvalidRunError
        When there is none: no shard has started.
    """
    newest = shared_run(plan).newest()
    if newest is not None:
        return newest
    raise InvalidRunError(
        f"--finish: no {STEP} run of merge {plan.merged.run_id} with these arguments "
        "(in this MLflow experiment); run the shards first"
    )
