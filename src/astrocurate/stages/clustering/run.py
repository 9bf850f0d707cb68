"""Step 4: hierarchical k-means over a feature run (run name ``clustering``).

The guide makes a clustering in two commands, and so does this module:

* **4a, prepare** (:func:`prepare_clustering`, ``scripts/4_clustering.py``): validate the
  config against the feature run, create the ``clustering`` MLflow run and its experiment
  directory with the resolved ``config.yaml`` and an executable ``run.sh``. The run is left
  *prepared*: MLflow status ``SCHEDULED``. It is not finished, so sampling refuses it, but
  ``find_run.py --run-name clustering --get-path`` finds it (see
  :data:`astrocurate.tracking.lookup.TAG_RUN_SCRIPT`).
* **4b, run** (``run.sh`` -> ``astrocurate clustering-run DIR``, :func:`run_clustering`):
  reopen the run (``RUNNING``), cluster level by level, log metrics and plots, hash the
  outputs and mark the run ``FINISHED`` (``FAILED`` on an error, ``KILLED`` on an
  interrupt). With SLURM flags at 4a, ``run.sh`` submits one job per level chained with
  ``--dependency=afterok``; each job runs ``clustering-run DIR --level L`` and the last
  one finishes the run.
* **Several processes** (``config.n_processes(L) > 1``: ``nprocs_per_node``, or one per
  GPU, times ``nnodes``, each from level ``L``'s own entry): ``run.sh`` starts ``torchrun
  --standalone`` here, a SLURM job ``srun`` in ``--ntasks-per-node`` tasks. Every rank
  clusters (each k-means run shares its rows among the ranks through
  :mod:`torch.distributed`; the level-1 memmap is read by slices); rank 0 alone locks
  the directory, writes outputs, checkpoints and ``logs/clustering.log`` and talks to
  MLflow. Checkpoints are then the finished k-means
  runs of a level only (no live k-means state, no partial splits), so an interrupted
  level restarts its current k-means run; the result is the same, and equals the
  one-process result up to the order of float sums (the labels too, unless a point is
  equidistant from two centroids within rounding). With ``subset_indices_path`` every
  rank loads the subset's rows.

Levels are numbered from 1, in file names, metrics and messages (level 1 clusters the
features, as in the design notes), as in the algorithm's one level loop
(:func:`astrocurate.algorithms.kmeans.hierarchical.fit_levels`).

The experiment directory (the run's output directory)::

    config.yaml            resolved config (every key, per-level lists expanded)
    run.json               what run.sh needs: run ID, feature run, tracking store, SLURM
    run.sh                 runs (or submits) the clustering; rerun it to resume
    slurm/level_<L>.sbatch one SLURM job per level (with SLURM flags only)
    logs/                  clustering.log, SLURM job logs
    input_indices.npy      int64 (n,): feature row of each level-1 input (the subset, sorted)
    level_<L>/             written when level L is complete (level.json last):
        centroids.npy      (k, d) float32 (float64 with dtype float64)
        labels.npy         int64 (n_in,): cluster of every input of the level (level 1: the
                           rows listed in input_indices; level L > 1: the centroids of L - 1)
        members.npy        int64 (n_in,): inputs grouped by cluster, each cluster in
        offsets.npy        int64 (k + 1,)  ascending distance to its centroid (CSR: cluster j
        distances.npy      (n_in,)         is members[offsets[j]:offsets[j + 1]])
        point_labels.npy   int64 (N,): level-L cluster of every feature row, -1 for rows
                           outside the subset
        level.json         inertia, empty clusters, sizes, potential history, seconds
    plots/level_<L>_cluster_sizes.png
    checkpoints/           while running only (removed when the run finishes)

Every array is written to a temporary name and renamed; ``numpy.load`` reads them (no
pickles). Checkpoints are saved after every k-means run of a level (the full run and each
resampling step), periodically inside the k-means loops (every ``checkpoint_period``
seconds, through :class:`~astrocurate.algorithms.kmeans.estimator.KMeansState`), and when SIGTERM
or SIGUSR1
(SLURM's warning before the time limit) arrives. A rerun of ``run.sh`` continues from
them and gives bit for bit the result of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from astrocurate import __version__, steps
from astrocurate.errors import (
    InvalidArgumentError,
    InvalidRunError,
    StepInterrupted,
)
from astrocurate.io.atomic import save_npy as _save_npy
from astrocurate.io.atomic import write_text as _write_text
from astrocurate.launch import SlurmOptions, absolute_tracking_uri
from astrocurate.stages.clustering.config import (
    CONFIG_FILE,
    HIGH_PRECISION_NOTE,
    LEVEL_KEYS,
    STEP,
    VOLATILE_KEYS,
    ClusteringConfig,
    load_config,
    parse_overrides,
    valid_keys,
)
from astrocurate.stages.clustering.levels import (
    CHECKPOINTS,
    TAG_PROGRESS,
    RequeueRequested,
    StopRequest,
    _Ranks,
    _report_level,
    _report_missing,
    compute_levels,
    level_metrics,
    load_level_result,
    plot_cluster_sizes,
    resolve_device,
)
from astrocurate.stages.clustering.outputs import (
    INPUT_INDICES,
    LEVEL_ARRAYS,
    PREPARED,
    RUN_FILE,
    ClusteringOutputs,
    load_clustering,
    read_run_file,
    require_clustering_run,
    unfinished_message,
)
from astrocurate.stages.clustering.scripts import _Launch, _render_run_script, _render_sbatch
from astrocurate.tracking import PreparedRun, RunRecord, StepRun, get_run, require_run
from astrocurate.validation import is_int

__all__ = [
    "LEVEL_ARRAYS",
    "LEVEL_KEYS",
    "PREPARED",
    "STEP",
    "ClusteringConfig",
    "ClusteringOutputs",
    "ClusteringRun",
    "PreparedClustering",
    "RequeueRequested",
    "StopRequest",
    "clustering_status",
    "compute_levels",
    "level_metrics",
    "load_clustering",
    "load_config",
    "load_level_result",
    "parse_overrides",
    "plot_cluster_sizes",
    "prepare_clustering",
    "require_clustering_run",
    "resolve_device",
    "run_clustering",
    "valid_keys",
]

log = logging.getLogger(__name__)

SOURCE_STEP = steps.source_of(STEP)
RUN_SCRIPT = "run.sh"
TAG_SLURM_JOB = "astrocurate.slurm_job_id"
#: Progress tag of a run whose SLURM job requeued itself before its time limit.
REQUEUED = "checkpoint saved before the SLURM time limit; job requeued"


# =========================================================================== step 4a


@dataclass(frozen=True)
class PreparedClustering:
    """Result of step 4a.

    Attributes
    ----------
    run_id : str
        The clustering run.
    directory : Path
        Its experiment directory (holding ``run.sh``).
    status : str
        ``SCHEDULED`` (prepared), or the status of a reused run (``FINISHED``, ...).
    reused : bool
        True when a run with the same feature run and config already existed.
    """

    run_id: str
    directory: Path
    status: str
    reused: bool = False


def prepare_clustering(
    features_id: str,
    config: ClusteringConfig,
    *,
    slurm: SlurmOptions | None = None,
    output_path: Path | None = None,
    force: bool = False,
) -> PreparedClustering:
    """Step 4a: create the clustering run and its experiment directory with ``run.sh``.

    Parameters
    ----------
    features_id : str
        ID of a finished ``feature_extraction`` run.
    config : ClusteringConfig
        The validated config.
    slurm : SlurmOptions, optional
        With it, ``run.sh`` submits one SLURM job per level; without, it runs here.
    output_path : Path, optional
        Parent of the ``clustering/<run_id>`` directory; default the feature run's.
    force : bool
        Create a new run even if one with the same inputs and config exists.

    Returns
    -------
    PreparedClustering
        The run left ``SCHEDULED`` (or a reused run with the same inputs and config).
    """
    if slurm is not None:
        slurm.validate()
    elif max(config.nnodes) > 1:
        raise InvalidArgumentError(
            f"config key nnodes={list(config.nnodes)}: several nodes need SLURM (give the "
            "--slurm_* flags); on this machine use nnodes: 1"
        )
    if config.high_precision != "float64":
        log.info("config key high_precision=%s: %s", config.high_precision, HIGH_PRECISION_NOTE)
    features = require_run(features_id, SOURCE_STEP, "--features-id")
    if config.subset_indices_path:
        config = replace(
            config, subset_indices_path=str(Path(config.subset_indices_path).resolve())
        )
    n_rows, dim = _feature_shape(features.output_dir)
    _check_rows_match_manifest(features, n_rows)
    indices = _input_indices(config.subset_indices_path, n_rows)
    what = f"feature rows of run {features.run_id}"
    if config.subset_indices_path:
        what = f"rows listed in subset_indices_path {config.subset_indices_path}"
    config.check_inputs(len(indices), what)
    params = {
        **config.params(),
        "features_id": features.run_id,
        "n_inputs": len(indices),
        "n_features": dim,
        "n_feature_rows": n_rows,
        "subset_sha256": _sha256_array(indices) if config.subset_indices_path else "none",
    }
    key_params = {k: v for k, v in params.items() if k not in VOLATILE_KEYS}
    key = PreparedRun.key(STEP, key_params, [features.run_id])
    root = Path(output_path).resolve() if output_path else features.output_dir.parent.parent

    existing = None if force else PreparedRun.find(STEP, key, RUN_FILE)
    if existing is not None and existing.finished:
        log.info("clustering run %s with this config is already finished", existing.run_id)
        return PreparedClustering(existing.run_id, existing.output_dir, existing.status, True)  # type: ignore[arg-type]
    if existing is not None:
        return _refresh_prepared(existing, config, slurm, key_params, indices)
    if slurm is not None and shutil.which("sbatch") is None:
        log.warning("sbatch is not on PATH here: run the run.sh of this experiment where SLURM is")
    run = PreparedRun.create(STEP, key, [features.run_id], params, root)
    # Locked until prepared: a concurrent step 4a or run.sh that finds this run (once
    # run.json exists) leaves it alone or waits, and never sees it half-written.
    with _wait_for_lock(run.directory, run.run_id), run.failing():
        _write_experiment(run.directory, run.run_id, config, slurm, key_params, indices, features)
        run.mark_prepared(run.directory / RUN_SCRIPT)
    log.info("prepared clustering run %s in %s", run.run_id, run.directory)
    return PreparedClustering(run.run_id, run.directory, PREPARED)


def _feature_shape(directory: Path) -> tuple[int, int]:
    from astrocurate.stages.feature_extraction.outputs import load_features

    matrix = load_features(directory)
    return int(matrix.shape[0]), int(matrix.shape[1])


def _check_rows_match_manifest(features: RunRecord, n_rows: int) -> None:
    """Refuse a feature matrix whose row count differs from its merge's manifest.

    Row ``i`` of the matrix is cutout ``i`` of the manifest; a matrix with more or
    fewer rows (replaced by hand, or from another merge) would mislabel every cutout.
    """
    from astrocurate.io.cutout_store import manifest_row_count
    from astrocurate.steps import MERGE_CUTOUTS as MERGE_STEP

    for merge in (get_run(i) for i in features.input_run_ids):
        directory = merge.output_dir
        if merge.step != MERGE_STEP or directory is None or not directory.is_dir():
            continue  # a merge run gone missing is reported by ``astrocurate verify``
        n_manifest = manifest_row_count(directory)
        if n_manifest != n_rows:
            raise InvalidRunError(
                f"--features-id: the feature matrix of run {features.run_id} has {n_rows} "
                f"rows but the manifest of its merge run {merge.run_id} has {n_manifest}; "
                "rerun feature extraction on that merge (--force)"
            )


def _input_indices(path: str | None, n_rows: int) -> np.ndarray:
    """Feature rows to cluster, sorted: the subset file's, or all rows."""
    if not path:
        return np.arange(n_rows, dtype=np.int64)
    file = Path(path)
    try:
        values = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(
            f"config key subset_indices_path={path!r}: cannot read a .npy array ({exc})"
        ) from exc
    bad = f"config key subset_indices_path={path!r}"
    if values.ndim != 1 or values.dtype.kind not in "iu" or values.size == 0:
        raise InvalidArgumentError(
            f"{bad}: expected a non-empty 1-D integer array, got shape {values.shape} "
            f"dtype {values.dtype}"
        )
    indices = np.unique(values.astype(np.int64))
    if len(indices) != len(values):
        raise InvalidArgumentError(f"{bad}: {len(values) - len(indices)} repeated row indices")
    if indices[0] < 0 or indices[-1] >= n_rows:
        raise InvalidArgumentError(
            f"{bad}: row indices must lie in [0, {n_rows}) (the feature rows); found "
            f"{indices[0] if indices[0] < 0 else indices[-1]}"
        )
    return indices


def _sha256_array(values: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _refresh_prepared(
    record: RunRecord,
    config: ClusteringConfig,
    slurm: SlurmOptions | None,
    key_params: dict[str, Any],
    indices: np.ndarray,
) -> PreparedClustering:
    """Reuse an unfinished run with the same key: rewrite its scripts (resources may differ)."""
    directory: Path = record.output_dir  # type: ignore[assignment] - PreparedRun.find checked it
    lock = PreparedRun(record.run_id, STEP, directory).try_lock()
    if lock is None:
        log.warning(
            "clustering run %s is being prepared or run by another process now in %s; "
            "left as it is (its run.sh waits for that process)",
            record.run_id,
            directory,
        )
        return PreparedClustering(record.run_id, directory, record.status, True)
    with contextlib.closing(lock):
        record = get_run(record.run_id, "clustering run")
        if record.finished:  # by another process, between the lookup and the lock
            log.info("clustering run %s with this config is already finished", record.run_id)
            return PreparedClustering(record.run_id, directory, record.status, True)
        features = get_run(json.loads((directory / RUN_FILE).read_text())["features_id"])
        _write_experiment(directory, record.run_id, config, slurm, key_params, indices, features)
    log.info(
        "reusing clustering run %s (%s) with the same features and config in %s; "
        "run.sh rewritten, it resumes from the work already done",
        record.run_id,
        record.status,
        directory,
    )
    return PreparedClustering(record.run_id, directory, record.status, True)


def _write_experiment(
    directory: Path,
    run_id: str,
    config: ClusteringConfig,
    slurm: SlurmOptions | None,
    key_params: dict[str, Any],
    indices: np.ndarray,
    features: RunRecord,
) -> None:
    """Write input_indices.npy, config.yaml, run.json, run.sh and the SLURM scripts."""
    import astrocurate

    (directory / "logs").mkdir(parents=True, exist_ok=True)
    _save_npy(directory / INPUT_INDICES, indices)
    header = (
        f"Resolved config of clustering run {run_id} (astrocurate {__version__}).\n"
        f"Feature run {features.run_id}. checkpoint_period and device may be edited before\n"
        "run.sh is run. The resources (ngpus_per_node, nnodes, nprocs_per_node, ncpus_per_gpu,\n"
        "slurm_partition) are written into run.sh and slurm/: change them in your config file\n"
        "and prepare again (step 4a reuses this run and rewrites its scripts). The other keys\n"
        "define the run (prepare a new one to change them)."
    )
    _write_text(directory / CONFIG_FILE, config.to_yaml(header))
    store = PreparedRun.store()
    store = replace(store, uri=absolute_tracking_uri(store.uri))
    launch = _Launch(
        directory=directory,
        run_id=run_id,
        python=sys.executable,
        pythonpath=str(Path(astrocurate.__file__).resolve().parents[1]),
        tracking_uri=store.uri,
        experiment=store.experiment,
    )
    info = {
        "run_id": run_id,
        "features_id": features.run_id,
        "features_dir": str(features.output_dir),
        "key_params": key_params,
        "input_run_ids": [features.run_id],
        "tracking_uri": store.redacted,
        "experiment_name": launch.experiment,
        "slurm": None if slurm is None else asdict(slurm),
    }
    _write_text(directory / RUN_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")
    run_sh = _render_run_script(launch, config, slurm)
    _write_text(directory / RUN_SCRIPT, run_sh, 0o755)
    slurm_dir = directory / "slurm"
    if slurm is not None:
        slurm_dir.mkdir(exist_ok=True)
        for lvl in range(1, config.n_levels + 1):
            text = _render_sbatch(launch, config, slurm, lvl)
            _write_text(slurm_dir / f"level_{lvl}.sbatch", text, 0o755)
    elif slurm_dir.is_dir():
        for old in slurm_dir.glob("*.sbatch"):
            old.unlink()
        slurm_dir.rmdir()


# =========================================================================== step 4b


@dataclass(frozen=True)
class ClusteringRun:
    """Result of :func:`run_clustering`.

    Attributes
    ----------
    run_id : str
        The clustering run.
    directory : Path
        Its experiment directory.
    status : str
        The run's MLflow status afterwards (``FINISHED`` once the last level is done).
    levels_done : int
        Levels complete in the directory.
    """

    run_id: str
    directory: Path
    status: str
    levels_done: int


def run_clustering(directory: Path | str, *, level: int | None = None) -> ClusteringRun:
    """Step 4b: cluster a prepared experiment directory (what ``run.sh`` runs).

    Parameters
    ----------
    directory : Path or str
        The experiment directory of step 4a.
    level : int, optional
        Compute the levels up to this one (1-based; one SLURM job per level). The run is
        finished when the top level is done. Default: all levels.

    Returns
    -------
    ClusteringRun
    """
    directory = Path(directory).resolve()
    if _launched_world_size() > 1:
        return _run_distributed(directory, level)
    info = read_run_file(directory)
    record = get_run(info["run_id"], "clustering run")
    if record.step != STEP:
        raise InvalidRunError(f"{directory}: run {record.run_id} is not a clustering run")
    config = _load_directory_config(directory, info)
    last = config.n_levels if level is None else _check_level_arg(level, config.n_levels)
    if record.finished:
        log.info("clustering run %s is already finished; nothing to do", record.run_id)
        return ClusteringRun(record.run_id, directory, record.status, config.n_levels)
    with _wait_for_lock(directory, record.run_id):
        record = get_run(record.run_id, "clustering run")  # another run.sh may have finished it
        if record.finished:
            log.info("clustering run %s was finished by another process", record.run_id)
            return ClusteringRun(record.run_id, directory, record.status, config.n_levels)
        features = require_run(info["features_id"], SOURCE_STEP, "features of this clustering")
        finish = last == config.n_levels
        with (
            _continue_run(record.run_id, directory, finish, info) as (handle, stop),
            _log_file(directory / "logs" / "clustering.log"),
        ):
            _cluster_and_report(handle, features.output_dir, directory, info, config, last, stop)
    status = get_run(record.run_id).status
    return ClusteringRun(record.run_id, directory, status, last)


def _launched_world_size() -> int:
    """Return the processes of this launch: ``torchrun`` (``WORLD_SIZE``), ``srun`` or 1."""
    env = os.environ
    if "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        return int(env["SLURM_STEP_NUM_TASKS"])
    return 1


def _run_distributed(directory: Path, level: int | None) -> ClusteringRun:
    """:func:`run_clustering` in one rank of a ``torchrun`` or ``srun`` launch.

    Every rank computes (each k-means run shares its rows among the ranks); rank 0 alone
    locks the directory, talks to MLflow and writes outputs, checkpoints and
    ``logs/clustering.log``; the others log to ``logs/clustering.rank<R>.log``. Ranks meet
    at every level boundary and after every k-means run of a level, where they also agree
    on a stop request. Checkpoints are the finished k-means runs only (see
    :class:`_Checkpoints`).
    """
    import torch

    from astrocurate.algorithms.kmeans.distributed import init_distributed

    rank, world = init_distributed()
    ranks = _Ranks(rank, world)
    try:
        if ranks.writer:
            return _run_rank_zero(directory, level, ranks)
        return _run_other_rank(directory, level, ranks)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run_rank_zero(directory: Path, level: int | None, ranks: _Ranks) -> ClusteringRun:
    """Rank 0 of :func:`_run_distributed`: what :func:`run_clustering` does, sharing decisions."""
    with contextlib.ExitStack() as stack:
        try:
            info = read_run_file(directory)
            record = get_run(info["run_id"], "clustering run")
            if record.step != STEP:
                raise InvalidRunError(f"{directory}: run {record.run_id} is not a clustering run")
            config = _load_directory_config(directory, info)
            last = config.n_levels if level is None else _check_level_arg(level, config.n_levels)
            if not record.finished:
                stack.enter_context(_wait_for_lock(directory, record.run_id))
                record = get_run(record.run_id, "clustering run")  # finished while we waited?
            if record.finished:
                log.info("clustering run %s is already finished; nothing to do", record.run_id)
                ranks.share(("finished", record.status))
                return ClusteringRun(record.run_id, directory, record.status, config.n_levels)
            features = require_run(info["features_id"], SOURCE_STEP, "features of this clustering")
            finish = last == config.n_levels
            handle, stop = stack.enter_context(
                _continue_run(record.run_id, directory, finish, info)
            )
        except BaseException as exc:
            ranks.share(("error", f"{type(exc).__name__}: {exc}"))
            raise
        stack.enter_context(_log_file(directory / "logs" / "clustering.log"))
        log.info("clustering in %d processes (torch.distributed)", ranks.world)
        ranks.share(("run", str(features.output_dir)))
        _cluster_and_report(handle, features.output_dir, directory, info, config, last, stop, ranks)
    status = get_run(record.run_id).status
    ranks.share(("done", status))
    return ClusteringRun(record.run_id, directory, status, last)


def _run_other_rank(directory: Path, level: int | None, ranks: _Ranks) -> ClusteringRun:
    """Run a rank > 0 of :func:`_run_distributed`: compute only, no MLflow, no outputs."""
    what, value = ranks.share(None)
    info = read_run_file(directory)
    if what == "error":
        raise InvalidRunError(f"rank 0 stopped before clustering: {value}")
    config = load_config(directory / CONFIG_FILE)
    if what == "finished":
        return ClusteringRun(info["run_id"], directory, value, config.n_levels)
    last = config.n_levels if level is None else _check_level_arg(level, config.n_levels)
    stop = StopRequest()
    log_path = directory / "logs" / f"clustering.rank{ranks.rank}.log"
    with stop.handling_signals(), _log_file(log_path):
        X, indices = _level_one_inputs(Path(value), directory, info)  # noqa: N806
        compute_levels(
            X,
            config,
            directory,
            last_level=last,
            input_indices=indices,
            stop=stop,
            ranks=ranks,
        )
    _, status = ranks.share(None)
    return ClusteringRun(info["run_id"], directory, status, last)


def _cluster_and_report(
    handle: StepRun,
    features_dir: Path,
    directory: Path,
    info: Mapping[str, Any],
    config: ClusteringConfig,
    last: int,
    stop: StopRequest,
    ranks: Any = None,
) -> None:
    """Compute the levels up to ``last`` (in one process or across ``ranks``) and log them."""
    X, indices = _level_one_inputs(features_dir, directory, info)  # noqa: N806
    levels = compute_levels(
        X,
        config,
        directory,
        last_level=last,
        input_indices=indices,
        stop=stop,
        on_level=lambda lvl, res, pl, sec: _report_level(handle, directory, lvl, res, pl),
        ranks=ranks,
    )
    _report_missing(handle, directory, levels)


def _check_level_arg(level: Any, n_levels: int) -> int:
    if not is_int(level) or not 1 <= level <= n_levels:
        raise InvalidArgumentError(f"--level={level!r}: expected a level from 1 to {n_levels}")
    return int(level)


def _load_directory_config(directory: Path, info: Mapping[str, Any]) -> ClusteringConfig:
    """Read config.yaml; refuse edits of keys that define the run."""
    config = load_config(directory / CONFIG_FILE)
    recorded = info["key_params"]
    changed = [k for k, v in config.key_params().items() if k in recorded and recorded[k] != v]
    if changed:
        raise InvalidArgumentError(
            f"{directory / CONFIG_FILE}: {', '.join(changed)} changed since the run was "
            f"prepared; only {', '.join(VOLATILE_KEYS)} may be edited. Prepare a new run "
            "with scripts/4_clustering.py (key=value overrides) instead"
        )
    return config


def _level_one_inputs(
    features_dir: Path, directory: Path, info: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Return the feature matrix (memory-mapped) or its subset, and the rows it holds."""
    from astrocurate.stages.feature_extraction.outputs import load_features

    matrix = load_features(features_dir)
    recorded = (info["key_params"]["n_feature_rows"], info["key_params"]["n_features"])
    if matrix.shape != recorded:
        raise InvalidRunError(
            f"{features_dir}: the feature matrix is {matrix.shape}, it was {recorded} when "
            "the clustering was prepared; prepare a new clustering run"
        )
    indices = np.load(directory / INPUT_INDICES, allow_pickle=False)
    if len(indices) == matrix.shape[0]:
        return matrix, indices  # sorted and unique: every row
    return np.asarray(matrix[indices]), indices


def clustering_status(directory: Path | str) -> RunRecord:
    """Return the run of an experiment directory; raise unless it is FINISHED.

    Parameters
    ----------
    directory : Path or str
        The experiment directory.

    Raises
    ------
    InvalidRunError
        With what to do, when the run is not finished.
    """
    directory = Path(directory).resolve()
    record = get_run(read_run_file(directory)["run_id"], "clustering run")
    if not record.finished:
        raise InvalidRunError(unfinished_message(record, "clustering run"))
    return record


# =========================================================================== run records


def _wait_for_lock(directory: Path, run_id: str) -> contextlib.AbstractContextManager[None]:
    """Hold the experiment directory's lock; wait while another process holds it.

    Two ``run.sh`` (or SLURM jobs, or a ``run.sh`` and a concurrent step 4a) on one
    experiment never cluster at once: the second waits here, then finds the run finished
    (or continues from the first one's checkpoints).
    """
    return PreparedRun(run_id, STEP, directory).lock(
        f"clustering run {run_id} is being worked on by another process (run.sh, a SLURM "
        "job or step 4a); waiting for it to end"
    )


@contextlib.contextmanager
def _continue_run(
    run_id: str, directory: Path, finish: bool, info: Mapping[str, Any]
) -> Iterator[tuple[StepRun, StopRequest]]:
    """Reopen a prepared run (its directory locked by the caller): mark it RUNNING, finish it."""
    run = PreparedRun(run_id, STEP, directory)
    tags = {TAG_SLURM_JOB: os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}
    with run.reopen(tags, keep_status=(RequeueRequested,)) as handle:
        stop = StopRequest()
        try:
            with stop.handling_signals():
                yield handle, stop
        except RequeueRequested as exc:
            if os.environ.get("SLURM_JOB_ID"):  # tag first: SLURM ends this process
                handle.set_tags({TAG_PROGRESS: REQUEUED})  # once the requeue is accepted
            if not _requeue_slurm_job():
                raise StepInterrupted(str(exc)) from exc  # marks the run KILLED
            raise
    if finish:
        _finish(run, handle, info)


def _finish(run: PreparedRun, handle: StepRun, info: Mapping[str, Any]) -> None:
    """Drop the checkpoints, hash the outputs, log metadata and mark the run FINISHED."""
    with run.failing():
        shutil.rmtree(handle.output_dir / CHECKPOINTS, ignore_errors=True)
        for leftover in handle.output_dir.rglob(".tmp-*"):  # from a process killed mid-write
            leftover.unlink()
        handle.log_artifact(handle.output_dir / CONFIG_FILE)
        handle.set_tags({TAG_PROGRESS: "finished"})
    run.finish(handle, info["key_params"], info["input_run_ids"])


@contextlib.contextmanager
def _log_file(path: Path) -> Iterator[None]:
    """Also write astrocurate's messages to ``path`` while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("astrocurate")
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _requeue_slurm_job() -> bool:
    """Ask SLURM to requeue the current job (``scontrol requeue``); False outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    result = subprocess.run(
        ["scontrol", "requeue", job], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job, result.stderr.strip())
        return False
    return True
