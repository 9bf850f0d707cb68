"""Step 4: hierarchical k-means over a feature run (run name ``clustering``).

The guide makes a clustering in two commands, and so does this module:

* **4a, prepare** (:func:`prepare_clustering`, ``scripts/4_clustering.py``): validate the
  config against the feature run, create the ``clustering`` MLflow run and its experiment
  directory with the resolved ``config.yaml`` and an executable ``run.sh``. The run is left
  *prepared*: MLflow status ``SCHEDULED``. It is not finished, so sampling refuses it, but
  ``find_run.py --run-name clustering --get-path`` finds it (see
  :data:`astrocurate.lookup.TAG_RUN_SCRIPT`).
* **4b, run** (``run.sh`` -> ``astrocurate clustering-run DIR``, :func:`run_clustering`):
  reopen the run (``RUNNING``), cluster level by level, log metrics and plots, hash the
  outputs and mark the run ``FINISHED`` (``FAILED`` on an error, ``KILLED`` on an
  interrupt). With SLURM flags at 4a, ``run.sh`` submits one job per level chained with
  ``--dependency=afterok``; each job runs ``clustering-run DIR --level L`` and the last
  one finishes the run.
* **Several processes** (``config.n_processes > 1``: ``nprocs_per_node``, or one per GPU,
  times ``nnodes``): ``run.sh`` starts ``torchrun --standalone`` here, a SLURM job
  ``srun`` in ``--ntasks-per-node`` tasks. Every rank clusters (each k-means run shares
  its rows among the ranks through :mod:`torch.distributed`; the level-1 memmap is read
  by slices); rank 0 alone locks the directory, writes outputs, checkpoints and
  ``logs/clustering.log`` and talks to MLflow. Checkpoints are then the finished k-means
  runs of a level only (no live k-means state, no partial splits), so an interrupted
  level restarts its current k-means run; the result is the same, and equals the
  one-process result up to the order of float sums. With ``subset_indices_path`` every
  rank loads the subset's rows.

Levels are numbered from 1 here, in file names, metrics and messages (level 1 clusters
the features, as in the design notes); :mod:`astrocurate.kmeans` numbers them from 0.

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
seconds, through :class:`~astrocurate.kmeans.KMeansState`), and when SIGTERM or SIGUSR1
(SLURM's warning before the time limit) arrives. A rerun of ``run.sh`` continues from
them and gives bit for bit the result of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from astrocurate import __version__
from astrocurate.atomic import save_npy as _save_npy
from astrocurate.atomic import save_npz as _save_npz
from astrocurate.atomic import write_text as _write_text
from astrocurate.errors import (
    InvalidArgumentError,
    InvalidRunError,
    StepInterrupted,
)
from astrocurate.lookup import TAG_RUN_SCRIPT
from astrocurate.tracking import (
    LOCK_NAME,
    TAG_ERROR,
    TAG_HOST,
    TAG_OUTPUT_DIR,
    TAG_PID,
    DirectoryLock,
    RunRecord,
    StepRun,
    check_reusable,
    client,
    create_run_record,
    experiment_id,
    experiment_name,
    find_runs,
    finish_step,
    get_run,
    make_output_root,
    mark_terminated,
    redact_uri,
    require_run,
    run_key,
    tracking_uri,
    try_lock,
)

__all__ = [
    "PREPARED",
    "STEP",
    "ClusteringConfig",
    "ClusteringOutputs",
    "ClusteringRun",
    "PreparedClustering",
    "RequeueRequested",
    "SlurmOptions",
    "StopRequest",
    "absolute_tracking_uri",
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
    "tracking_environment",
    "valid_keys",
]

log = logging.getLogger(__name__)

STEP = "clustering"
SOURCE_STEP = "feature_extraction"
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
RUN_SCRIPT = "run.sh"
INPUT_INDICES = "input_indices.npy"
LEVEL_DONE = "level.json"
LEVEL_ARRAYS = ("centroids", "labels", "members", "offsets", "distances", "point_labels")
CHECKPOINTS = "checkpoints"
#: MLflow status of a prepared run (step 4a done, run.sh not finished).
PREPARED = "SCHEDULED"
TAG_SLURM_JOB = "astrocurate.slurm_job_id"
TAG_PROGRESS = "astrocurate.progress"
#: Progress tag of a run whose SLURM job requeued itself before its time limit.
REQUEUED = "checkpoint saved before the SLURM time limit; job requeued"

VALID_DTYPES = ("float32", "float64")
VALID_STRATEGIES = ("r", "c")
VALID_INITS = ("k-means++", "random")
#: Per-level keys: a list with one entry per level, or one value for every level.
LEVEL_KEYS = (
    "n_clusters",
    "n_iters",
    "n_splits",
    "n_resampling_steps",
    "sample_size",
    "sampling_strategy",
)
#: Keys that do not change the result (resources, checkpoints): left out of the reuse key,
#: and may be edited in config.yaml between 4a and 4b.
VOLATILE_KEYS = (
    "checkpoint_period",
    "device",
    "ngpus_per_node",
    "nnodes",
    "ncpus_per_gpu",
    "nprocs_per_node",
    "slurm_partition",
)
_SLURM_TOKEN = re.compile(r"[A-Za-z0-9_.+\-]+")  # fullmatch: no newline
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


# =========================================================================== config


@dataclass(frozen=True)
class ClusteringConfig:
    """A validated clustering configuration (the keys of ``configs/clusters/*.yaml``).

    Build one with :func:`load_config` or :meth:`from_mapping`; per-level values are
    tuples with one entry per level (level 1 first).

    Attributes
    ----------
    n_levels : int
        Number of levels.
    n_clusters : tuple of int
        Clusters per level; level ``L + 1`` clusters the centroids of level ``L``.
    n_iters : tuple of int
        Lloyd updates of every k-means run.
    n_splits : tuple of int
        Sub-clusters per cluster (1: no split); not combined with resampling.
    n_resampling_steps : tuple of int
        k-means runs per level counting the first full run (1: no resampling).
    sample_size : tuple of int or None
        Inputs taken per cluster by a resampling step (needed when resampling).
    sampling_strategy : tuple of str
        ``'r'`` random members or ``'c'`` the closest to the centroid.
    subset_indices_path : str, optional
        ``.npy`` of feature rows to cluster (default all rows).
    checkpoint_period : int
        Seconds between checkpoints inside a k-means run (0: after every step).
    dtype : str
        Compute dtype, ``float32`` or ``float64``.
    high_precision : str
        Accumulation dtype of centroid sums; always ``float64``.
    ngpus_per_node, nnodes, ncpus_per_gpu : int
        Resources of a job (``ngpus_per_node = 0``: CPU only); ``ncpus_per_gpu`` is the
        CPUs of each process (of the job when it is one process).
    nprocs_per_node : int, optional
        k-means processes per node (``torch.distributed``, launched by ``torchrun`` or
        ``srun``); default one per GPU, one on CPU. With GPUs it must equal
        ``ngpus_per_node``. See :attr:`n_processes`.
    slurm_partition : str, optional
        Default SLURM partition (``--slurm_partition`` overrides it).
    seed : int
        Random seed (logged as the run's ``seed``).
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    init : str
        ``k-means++`` (greedy) or ``random``.
    tol : float, optional
        Stop a k-means run early once an update lowers the potential by at most ``tol``
        times its value; None runs ``n_iters`` updates.
    """

    n_levels: int
    n_clusters: tuple[int, ...]
    n_iters: tuple[int, ...]
    n_splits: tuple[int, ...]
    n_resampling_steps: tuple[int, ...]
    sample_size: tuple[int | None, ...]
    sampling_strategy: tuple[str, ...]
    subset_indices_path: str | None = None
    checkpoint_period: int = 600
    dtype: str = "float32"
    high_precision: str = "float64"
    ngpus_per_node: int = 1
    nnodes: int = 1
    ncpus_per_gpu: int = 8
    nprocs_per_node: int | None = None
    slurm_partition: str | None = None
    seed: int = 0
    device: str = "auto"
    init: str = "k-means++"
    tol: float | None = None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ClusteringConfig:
        """Validate a mapping of config keys (raises :class:`InvalidArgumentError`).

        Parameters
        ----------
        mapping : mapping of str to Any
            Keys of :func:`valid_keys`; ``n_clusters`` is required, the others have
            defaults; a per-level key may be one value for every level.

        Returns
        -------
        ClusteringConfig
        """
        unknown = [k for k in mapping if k not in valid_keys()]
        if unknown:
            raise _unknown_key(unknown[0])
        if "n_clusters" not in mapping:
            raise InvalidArgumentError("config: n_clusters is required (a list, one per level)")
        n_levels = _n_levels(mapping)
        values = {**_LEVEL_DEFAULTS, **_SCALAR_DEFAULTS, **mapping, "n_levels": n_levels}
        levels = {k: _per_level(k, values[k], n_levels) for k in LEVEL_KEYS}
        scalars = {k: _check_scalar(k, values[k]) for k in _SCALAR_DEFAULTS}
        config = cls(n_levels=n_levels, **levels, **scalars)
        config._check_levels()
        return config

    def _check_levels(self) -> None:
        """Cross-level and cross-key rules."""
        for i in range(self.n_levels):
            steps, size, splits = (
                self.n_resampling_steps[i],
                self.sample_size[i],
                self.n_splits[i],
            )
            if steps > 1 and size is None:
                raise InvalidArgumentError(
                    f"config key sample_size: level {i + 1} has n_resampling_steps={steps} "
                    "but no sample_size; give the points taken per cluster (an integer >= 1)"
                )
            if steps > 1 and splits > 1:
                raise InvalidArgumentError(
                    f"config keys n_splits and n_resampling_steps: level {i + 1} has "
                    f"n_splits={splits} and n_resampling_steps={steps}; splits and resampling "
                    "cannot be combined at the same level, set one of them to 1"
                )
        for i in range(1, self.n_levels):
            inputs = self.n_clusters[i - 1] * self.n_splits[i - 1]
            if self.n_clusters[i] > inputs:
                raise InvalidArgumentError(
                    f"config key n_clusters={list(self.n_clusters)}: level {i + 1} asks for "
                    f"{self.n_clusters[i]} clusters but has only {inputs} inputs (the "
                    f"centroids of level {i}); use at most {inputs}"
                )
        procs = self.nprocs_per_node
        if self.ngpus_per_node > 0 and procs is not None and procs != self.ngpus_per_node:
            raise InvalidArgumentError(
                f"config keys nprocs_per_node={procs}, ngpus_per_node={self.ngpus_per_node}: "
                "k-means runs one process per GPU; set nprocs_per_node to null (or to "
                f"{self.ngpus_per_node}), or ngpus_per_node to 0 for CPU processes"
            )

    @property
    def procs_per_node(self) -> int:
        """Return the k-means processes per node (``nprocs_per_node``, else one per GPU)."""
        if self.nprocs_per_node is not None:
            return self.nprocs_per_node
        return max(1, self.ngpus_per_node)

    @property
    def n_processes(self) -> int:
        """Return the k-means processes of a job (``procs_per_node * nnodes``).

        More than one: ``run.sh`` starts ``torchrun`` (one node) and the SLURM jobs
        ``srun``; the ranks share the rows of every k-means run (``torch.distributed``).
        """
        return self.procs_per_node * self.nnodes

    def check_inputs(self, n_inputs: int, what: str) -> None:
        """Check that level 1 has enough inputs.

        Parameters
        ----------
        n_inputs : int
            Rows to cluster (feature rows, or the subset's size).
        what : str
            What they are, for the message (``"feature rows of run ..."``).

        Raises
        ------
        InvalidArgumentError
            If ``n_clusters`` of level 1 exceeds ``n_inputs``.
        """
        if self.n_clusters[0] > n_inputs:
            raise InvalidArgumentError(
                f"config key n_clusters={list(self.n_clusters)}: level 1 asks for "
                f"{self.n_clusters[0]} clusters but has only {n_inputs} inputs ({what}); "
                f"use at most {n_inputs}"
            )

    def as_dict(self) -> dict[str, Any]:
        """Every key with plain values (lists for per-level keys), in a stable order."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def params(self) -> dict[str, Any]:
        """Return the run's MLflow parameters (the seed is logged as ``seed``)."""
        return self.as_dict()

    def key_params(self) -> dict[str, Any]:
        """Parameters that determine the result (everything but :data:`VOLATILE_KEYS`)."""
        return {k: v for k, v in self.params().items() if k not in VOLATILE_KEYS}

    def to_yaml(self, header: str = "") -> str:
        """Return the config as YAML text, per-level lists on one line, after ``header``."""
        import yaml

        lines = [f"# {line}".rstrip() for line in header.splitlines()]
        for key, value in self.as_dict().items():
            if isinstance(value, list):
                lines.append(f"{key}: {yaml.safe_dump(value, default_flow_style=True).strip()}")
            else:
                lines.append(yaml.safe_dump({key: value}, default_flow_style=False).strip())
        return "\n".join(lines) + "\n"


_LEVEL_DEFAULTS: dict[str, Any] = {
    "n_iters": 50,
    "n_splits": 1,
    "n_resampling_steps": 1,
    "sample_size": None,
    "sampling_strategy": "r",
}
_SCALAR_DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in fields(ClusteringConfig)
    if f.name not in LEVEL_KEYS and f.name != "n_levels"
}


def valid_keys() -> tuple[str, ...]:
    """Return the valid config keys, sorted."""
    return tuple(sorted({"n_levels", *LEVEL_KEYS, *_SCALAR_DEFAULTS}))


def _unknown_key(key: str) -> InvalidArgumentError:
    close = difflib.get_close_matches(str(key), valid_keys(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InvalidArgumentError(
        f"config key {key!r} is not valid{hint}; valid keys: {', '.join(valid_keys())}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _n_levels(mapping: Mapping[str, Any]) -> int:
    """``n_levels`` as given, else the length of ``n_clusters`` (1 for a scalar)."""
    clusters = mapping["n_clusters"]
    default = len(clusters) if isinstance(clusters, list | tuple) else 1
    n_levels = mapping.get("n_levels", default)
    if not _is_int(n_levels) or n_levels < 1:
        raise InvalidArgumentError(f"config key n_levels={n_levels!r} must be an integer >= 1")
    return n_levels


def _per_level(key: str, value: Any, n_levels: int) -> tuple[Any, ...]:
    """Check a per-level key and return one value per level (a scalar is repeated)."""
    if isinstance(value, list | tuple):
        if len(value) != n_levels:
            raise InvalidArgumentError(
                f"config key {key}={list(value)!r} has {len(value)} entries but "
                f"n_levels={n_levels}; give one value per level (or one value for all levels)"
            )
        items = list(value)
    else:
        items = [value] * n_levels
    return tuple(_check_level_value(key, v, i + 1) for i, v in enumerate(items))


def _check_level_value(key: str, value: Any, level: int) -> Any:
    where = f"config key {key}: level {level} has {value!r}"
    if key == "sampling_strategy":
        if value not in VALID_STRATEGIES:
            raise InvalidArgumentError(
                f"{where}; valid strategies: 'r' (random members), 'c' (closest to centroid)"
            )
        return value
    if key == "sample_size" and value is None:
        return None
    minimum = 0 if key == "n_iters" else 1
    if not _is_int(value) or value < minimum:
        raise InvalidArgumentError(f"{where}; it must be an integer >= {minimum}")
    return value


def _check_scalar(key: str, value: Any) -> Any:
    """Check one non-per-level key."""
    bad = f"config key {key}={value!r}"
    if key in ("ngpus_per_node", "checkpoint_period", "seed"):
        if not _is_int(value) or value < 0:
            raise InvalidArgumentError(f"{bad} must be an integer >= 0")
    elif key in ("nnodes", "ncpus_per_gpu"):
        if not _is_int(value) or value < 1:
            raise InvalidArgumentError(f"{bad} must be an integer >= 1")
    elif key == "nprocs_per_node" and value is not None:
        if not _is_int(value) or value < 1:
            raise InvalidArgumentError(f"{bad} must be null or an integer >= 1")
    elif key == "dtype" and value not in VALID_DTYPES:
        raise InvalidArgumentError(f"{bad} is not valid; valid dtypes: {', '.join(VALID_DTYPES)}")
    elif key == "high_precision" and value != "float64":
        raise InvalidArgumentError(
            f"{bad} is not valid; centroid sums are always accumulated in float64"
        )
    elif key == "init" and value not in VALID_INITS:
        raise InvalidArgumentError(f"{bad} is not valid; valid values: {', '.join(VALID_INITS)}")
    elif key == "device":
        _check_device_text(value)
    elif key == "tol" and value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise InvalidArgumentError(f"{bad} must be null or a number >= 0")
        value = float(value)
    elif (
        key in ("subset_indices_path", "slurm_partition")
        and value is not None
        and (not isinstance(value, str) or not value)
    ):
        raise InvalidArgumentError(f"{bad} must be null or a non-empty string")
    elif key == "slurm_partition" and value is not None and not _SLURM_TOKEN.fullmatch(value):
        raise InvalidArgumentError(
            f"{bad}: expected a SLURM partition name (letters, digits, _ . + -)"
        )
    return value


def _check_device_text(value: Any) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise InvalidArgumentError(
            f"config key device={value!r} is not valid; use auto, cpu, cuda or cuda:N"
        )


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` words from the command line; values are YAML.

    Parameters
    ----------
    tokens : sequence of str
        E.g. ``["n_iters=5", "n_clusters=[64,8]"]``.

    Returns
    -------
    dict
        ``{"n_iters": 5, "n_clusters": [64, 8]}`` (later words win).
    """
    import yaml

    overrides: dict[str, Any] = {}
    for token in tokens:
        key, sep, text = token.partition("=")
        key = key.strip()
        if not sep or not key or key.startswith("-"):
            raise InvalidArgumentError(
                f"unexpected argument {token!r}; config overrides look like key=value "
                "(e.g. n_iters=5 or n_clusters=[64,8])"
            )
        try:
            overrides[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise InvalidArgumentError(f"override {token!r}: not a YAML value ({first})") from exc
    return overrides


def load_config(path: Path | str, overrides: Mapping[str, Any] | None = None) -> ClusteringConfig:
    """Read a YAML config, apply overrides and validate it.

    Parameters
    ----------
    path : Path or str
        The YAML file. A bare name that is not a file is looked up in the shipped
        ``configs/clusters/`` directory.
    overrides : mapping, optional
        Keys replacing the file's (see :func:`parse_overrides`).

    Returns
    -------
    ClusteringConfig
    """
    import yaml

    path = _find_config(Path(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise InvalidArgumentError(f"--config_file {path}: not valid YAML ({first})") from exc
    if not isinstance(data, dict):
        raise InvalidArgumentError(
            f"--config_file {path}: expected a mapping of config keys, got {type(data).__name__}"
        )
    return ClusteringConfig.from_mapping({**data, **(overrides or {})})


def shipped_configs_dir() -> Path:
    """Return ``configs/clusters`` of the source checkout (may not exist when installed)."""
    return Path(__file__).resolve().parents[2] / "configs" / "clusters"


def _find_config(path: Path) -> Path:
    if path.is_file():
        return path
    shipped = shipped_configs_dir() / path.name
    if path.parent == Path() and shipped.is_file():
        return shipped
    raise InvalidArgumentError(f"--config_file {path}: no such file")


# =========================================================================== SLURM


@dataclass(frozen=True)
class SlurmOptions:
    """SLURM settings of a clustering experiment (``--slurm_*`` flags of step 4a).

    Attributes
    ----------
    account, partition, qos : str, optional
        ``--account``, ``--partition``, ``--qos`` of every job.
    time : str, optional
        Time limit per job (SLURM format, e.g. ``01:00:00`` or ``1-00:00:00``).
    """

    account: str | None = None
    partition: str | None = None
    time: str | None = None
    qos: str | None = None

    def validate(self) -> SlurmOptions:
        """Check every value (raises :class:`InvalidArgumentError`); return self."""
        for name in ("account", "partition", "qos"):
            value = getattr(self, name)
            if value is not None and not _SLURM_TOKEN.fullmatch(value):
                raise InvalidArgumentError(
                    f"--slurm_{name}={value!r}: expected a SLURM name (letters, digits, _ . + -)"
                )
        if self.time is not None and (
            not _SLURM_TIME.fullmatch(self.time) or _time_seconds(self.time) is None
        ):
            raise InvalidArgumentError(
                f"--slurm_time={self.time!r}: expected a SLURM time limit such as 01:00:00, "
                "90 (minutes), 2-00:00:00"
            )
        return self


def _time_seconds(text: str) -> int | None:
    """Seconds of a SLURM time limit, or None if it is malformed."""
    match = _SLURM_TIME.match(text.strip())
    if not match:
        return None
    days, a, b, c = match.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # days-hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
        h, m, s = parts
        return ((int(days) * 24 + h) * 60 + m) * 60 + s
    if len(parts) == 1:  # minutes
        return parts[0] * 60
    if len(parts) == 2:  # minutes:seconds
        return parts[0] * 60 + parts[1]
    h, m, s = parts
    return (h * 60 + m) * 60 + s


def _signal_lead(time_limit: str | None) -> int:
    """Seconds before the time limit at which SLURM warns a job (SIGUSR1)."""
    seconds = _time_seconds(time_limit) if time_limit else None
    if seconds is None:
        return 300
    return int(min(300, max(30, seconds // 10)))


# =========================================================================== scripts


def absolute_tracking_uri(uri: str, cwd: Path | None = None) -> str:
    """Make a relative local tracking store absolute; leave any other URI as it is.

    ``run.sh`` and SLURM jobs run in the experiment directory (or wherever SLURM starts
    them), so ``sqlite:///mlflow.db`` or ``./mlruns`` written into them would name another
    store than the one step 4a used.

    Parameters
    ----------
    uri : str
        A tracking URI: ``sqlite:///rel.db``, ``sqlite:////abs.db``, a plain path,
        ``file:rel``, ``http://host:5000``, ``databricks``, ...
    cwd : Path, optional
        What relative paths are relative to (default the current directory).

    Returns
    -------
    str
        ``uri`` with a relative database or directory path made absolute.
    """
    base = Path.cwd() if cwd is None else cwd
    if uri.startswith("sqlite:///"):
        path, sep, query = uri[len("sqlite:///") :].partition("?")
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{(base / path).resolve()}{sep}{query}"
        return uri
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return f"file://{(base / uri[len('file:') :]).resolve()}"
    if uri and "://" not in uri and ":" not in uri and not uri.startswith("databricks"):
        return str((base / uri).resolve())  # a plain path: MLflow's file store
    return uri


def tracking_environment(uri: str, experiment: str, script: str) -> list[str]:
    """Bash lines of a generated script that select the tracking store and experiment.

    A URI without credentials is exported as it is. One with a password or token
    (``postgresql://user:pw@host/db``, ``https://token@host``) is never written into the
    file: the script then uses the ``MLFLOW_TRACKING_URI`` of the environment it runs in
    (SLURM jobs inherit the submitting shell's) and stops with one line if it is unset.

    Parameters
    ----------
    uri : str
        The tracking URI (absolute, see :func:`absolute_tracking_uri`).
    experiment : str
        The MLflow experiment name.
    script : str
        The script's name, for its error message.

    Returns
    -------
    list of str
        Lines, every value quoted with :func:`shlex.quote`.
    """
    q = shlex.quote
    shown = redact_uri(uri)
    if shown == uri:
        lines = [f"export MLFLOW_TRACKING_URI={q(uri)}"]
    else:
        message = (
            f"{script}: set MLFLOW_TRACKING_URI to the tracking store {shown} (it holds "
            "credentials, so it is not written in this script)"
        )
        lines = [
            "# The tracking URI holds credentials, so it is not written here: this script uses",
            "# the MLFLOW_TRACKING_URI of the environment it runs in (SLURM jobs inherit it",
            "# from the shell that submits them). For an MLflow server, the URI without",
            "# credentials plus MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD also work.",
            'if [[ -z "${MLFLOW_TRACKING_URI:-}" ]]; then',
            f"    echo {q(message)} >&2",
            "    exit 1",
            "fi",
        ]
    return [*lines, f"export MLFLOW_EXPERIMENT_NAME={q(experiment)}"]


@dataclass(frozen=True)
class _Launch:
    """What a generated script needs to start ``clustering-run`` in a directory."""

    directory: Path
    run_id: str
    python: str
    pythonpath: str
    tracking_uri: str
    experiment: str

    def environment(self) -> list[str]:
        return [
            *tracking_environment(self.tracking_uri, self.experiment, "run.sh"),
            f'export PYTHONPATH={shlex.quote(self.pythonpath)}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        ]

    def command(self, *extra: str) -> str:
        return self.command_for("clustering-run", *extra)

    def command_for(self, subcommand: str, *extra: str) -> str:
        words = [self.python, "-m", "astrocurate.cli", subcommand, str(self.directory), *extra]
        return "exec " + " ".join(shlex.quote(w) for w in words)

    def torchrun_command(self, nprocs: int, *extra: str) -> str:
        """``clustering-run`` in ``nprocs`` processes on this machine (the venv's torchrun).

        Only rank 0 reaches the console (``--local-ranks-filter 0``); the other ranks log
        to ``logs/clustering.rank<R>.log``.
        """
        torchrun = str(Path(self.python).with_name("torchrun"))
        words = [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            str(nprocs),
            "--local-ranks-filter",
            "0",
            "-m",
            "astrocurate.cli",
            "clustering-run",
            str(self.directory),
            *extra,
        ]
        return "exec " + " ".join(shlex.quote(w) for w in words)

    def srun_command(self, *extra: str) -> str:
        """``clustering-run`` in every task of the SLURM job (``srun``)."""
        words = [
            "srun",
            "--kill-on-bad-exit=1",
            self.python,
            "-m",
            "astrocurate.cli",
            "clustering-run",
            str(self.directory),
            *extra,
        ]
        return "exec " + " ".join(shlex.quote(w) for w in words)


def _render_run_script(
    launch: _Launch, n_levels: int, slurm: SlurmOptions | None, nprocs: int = 1
) -> str:
    """Return the text of ``run.sh``: run here, or submit the SLURM chain and wait.

    ``nprocs > 1`` (no SLURM): ``torchrun`` starts that many k-means processes here.
    """
    head = [
        "#!/usr/bin/env bash",
        f"# Clustering run {launch.run_id}, prepared by astrocurate (guide step 4a).",
    ]
    if slurm is None and nprocs > 1:
        body = [
            f"# Runs every level on this machine in {nprocs} processes (torchrun; the ranks",
            "# share the rows of every k-means run through torch.distributed). After an",
            "# interruption, run it again: it resumes from the checkpoints in this directory",
            "# (saved after every k-means run of a level). Logs: logs/clustering.log (rank 0),",
            "# logs/clustering.rank<R>.log (the others). The ranks talk over loopback only:",
            "# torchrun --standalone meets on localhost, and gloo binds to the loopback device.",
            "set -euo pipefail",
            *launch.environment(),
            *_loopback_gloo(),
            launch.torchrun_command(nprocs) + ' "$@"',
        ]
        return "\n".join(head + body) + "\n"

    if slurm is None:
        body = [
            "# Runs every level on this machine. After an interruption, run it again: it",
            "# resumes from the checkpoints in this directory. Log: logs/clustering.log.",
            "set -euo pipefail",
            *launch.environment(),
            launch.command() + ' "$@"',
        ]
        return "\n".join(head + body) + "\n"
    return "\n".join(head + _slurm_run_body(launch, n_levels)) + "\n"


def _loopback_gloo() -> list[str]:
    """Pin gloo to the loopback interface for a run on this machine (unless already set).

    Without it gloo listens on the address the host name resolves to, which may be
    reachable from the network; one machine's ranks need loopback only.
    """
    names = [n for _, n in socket.if_nameindex() if n == "lo" or n.startswith("lo")]
    if not names:
        return []
    return [f'export GLOO_SOCKET_IFNAME="${{GLOO_SOCKET_IFNAME:-{shlex.quote(names[0])}}}"']


def _slurm_run_body(launch: _Launch, n_levels: int) -> list[str]:
    jobs = [f"job{lvl}" for lvl in range(1, n_levels + 1)]
    lines = [
        f"# Submits one SLURM job per level ({n_levels}), chained with --dependency=afterok,",
        "# then waits for the last one; --no-wait returns at once. Prints the job IDs.",
        "# Run it again after a failure: finished levels are kept, a level resumes from its",
        "# checkpoints. Job logs: logs/level_<L>-<job>.out. While waiting it asks squeue",
        "# every ASTROCURATE_SLURM_POLL seconds (default 10).",
        "set -euo pipefail",
        f"cd {shlex.quote(str(launch.directory))}",
        *launch.environment(),
        "wait_for_jobs=1",
        'for arg in "$@"; do',
        '    case "$arg" in',
        "        --no-wait) wait_for_jobs=0 ;;",
        '        *) echo "run.sh: unknown option $arg (only --no-wait)" >&2; exit 2 ;;',
        "    esac",
        "done",
        "if ! command -v sbatch >/dev/null; then",
        '    echo "run.sh: sbatch not found; this experiment was prepared for SLURM (--slurm_*" \\',
        '         "flags): run it where SLURM is, or prepare it again without them" >&2',
        "    exit 1",
        "fi",
        'submit() { local id; id=$(sbatch --parsable "$@"); echo "${id%%;*}"; }',
        "job1=$(submit slurm/level_1.sbatch)",
    ]
    for lvl in range(2, n_levels + 1):
        lines.append(
            f'job{lvl}=$(submit --dependency=afterok:"$job{lvl - 1}" slurm/level_{lvl}.sbatch)'
        )
    ids = " ".join(f"${j}" for j in jobs)
    lines += [
        f'echo "run.sh: submitted SLURM jobs {ids} (logs in logs/)" >&2',
        f'echo "{ids}"',
        'if [[ "$wait_for_jobs" == 0 ]]; then exit 0; fi',
        'poll="${ASTROCURATE_SLURM_POLL:-10}"',
        f'while squeue --noheader --jobs="${jobs[-1]}" 2>/dev/null | grep -q .; do',
        '    sleep "$poll"',
        "done",
        launch.command_for("clustering-status"),
    ]
    return lines


def _render_sbatch(
    launch: _Launch, config: ClusteringConfig, slurm: SlurmOptions, level: int
) -> str:
    """Return the SLURM batch script of one level (1-based); paths only in its body."""
    partition = slurm.partition or config.slurm_partition
    gpus = config.ngpus_per_node
    if config.n_processes > 1:
        return _render_distributed_sbatch(launch, config, slurm, level, partition)
    options = [
        f"--job-name=clustering-L{level}-{launch.run_id[:8]}",
        f"--account={slurm.account}" if slurm.account else None,
        f"--partition={partition}" if partition else None,
        f"--qos={slurm.qos}" if slurm.qos else None,
        f"--time={slurm.time}" if slurm.time else None,
        f"--nodes={config.nnodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={gpus}" if gpus else None,
        f"--cpus-per-task={config.ncpus_per_gpu * max(1, gpus)}",
        "--requeue",
        "--open-mode=append",
        "--kill-on-invalid-dep=yes",
        f"--signal=B:USR1@{_signal_lead(slurm.time)}",
        f"--output=logs/level_{level}-%j.out",
    ]
    lines = ["#!/usr/bin/env bash"] + [f"#SBATCH {o}" for o in options if o]
    lines += [
        f"# Level {level} of {config.n_levels} of clustering run {launch.run_id} (astrocurate).",
        "# Submitted by run.sh from the experiment directory; SIGUSR1 before the time limit",
        "# makes it checkpoint and requeue itself. SIGUSR1 is ignored until the clustering",
        "# installs its handler (and after it is done), so it never kills the job.",
        "set -euo pipefail",
        *launch.environment(),
        "trap '' USR1",
        launch.command("--level", str(level)),
    ]
    return "\n".join(lines) + "\n"


def _render_distributed_sbatch(
    launch: _Launch, config: ClusteringConfig, slurm: SlurmOptions, level: int, partition: Any
) -> str:
    """Return the batch script of one level run by ``srun`` in ``config.n_processes`` tasks."""
    gpus = config.ngpus_per_node
    options = [
        f"--job-name=clustering-L{level}-{launch.run_id[:8]}",
        f"--account={slurm.account}" if slurm.account else None,
        f"--partition={partition}" if partition else None,
        f"--qos={slurm.qos}" if slurm.qos else None,
        f"--time={slurm.time}" if slurm.time else None,
        f"--nodes={config.nnodes}",
        f"--ntasks-per-node={config.procs_per_node}",
        f"--gpus-per-node={gpus}" if gpus else None,
        f"--cpus-per-task={config.ncpus_per_gpu}",
        "--requeue",
        "--open-mode=append",
        "--kill-on-invalid-dep=yes",
        f"--signal=USR1@{_signal_lead(slurm.time)}",
        f"--output=logs/level_{level}-%j.out",
    ]
    lines = ["#!/usr/bin/env bash"] + [f"#SBATCH {o}" for o in options if o]
    lines += [
        f"# Level {level} of {config.n_levels} of clustering run {launch.run_id} (astrocurate),",
        f"# in {config.n_processes} tasks that share the rows of every k-means run",
        "# (torch.distributed; rank 0 writes the outputs and talks to MLflow). Submitted by",
        "# run.sh from the experiment directory; SIGUSR1 before the time limit goes to every",
        "# task: they stop after the current k-means run, and rank 0 checkpoints and requeues",
        "# the job.",
        "set -euo pipefail",
        *launch.environment(),
        launch.srun_command("--level", str(level)),
    ]
    return "\n".join(lines) + "\n"


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
    elif config.nnodes > 1:
        raise InvalidArgumentError(
            f"config key nnodes={config.nnodes}: several nodes need SLURM (give the "
            "--slurm_* flags); on this machine use nnodes: 1"
        )
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
    key = run_key(STEP, key_params, [features.run_id])
    root = Path(output_path).resolve() if output_path else features.output_dir.parent.parent

    existing = None if force else _reusable(key)
    if existing is not None and existing.finished:
        check_reusable(existing)  # its outputs unchanged since it finished
        log.info("clustering run %s with this config is already finished", existing.run_id)
        return PreparedClustering(existing.run_id, existing.output_dir, existing.status, True)  # type: ignore[arg-type]
    if existing is not None:
        return _refresh_prepared(existing, config, slurm, key_params, indices)
    if slurm is not None and shutil.which("sbatch") is None:
        log.warning("sbatch is not on PATH here: run the run.sh of this experiment where SLURM is")
    make_output_root(root, [features.run_id])
    run_id, directory = _create_prepared_run(key, features.run_id, params, root)
    # Locked until prepared: a concurrent step 4a or run.sh that finds this run (once
    # run.json exists) leaves it alone or waits, and never sees it half-written.
    with _wait_for_lock(directory, run_id), _fail_on_error(run_id):
        _write_experiment(directory, run_id, config, slurm, key_params, indices, features)
        _mark_prepared(run_id, directory)
    log.info("prepared clustering run %s in %s", run_id, directory)
    return PreparedClustering(run_id, directory, PREPARED)


def _feature_shape(directory: Path) -> tuple[int, int]:
    from astrocurate.features import load_features

    matrix = load_features(directory)
    return int(matrix.shape[0]), int(matrix.shape[1])


def _check_rows_match_manifest(features: RunRecord, n_rows: int) -> None:
    """Refuse a feature matrix whose row count differs from its merge's manifest.

    Row ``i`` of the matrix is cutout ``i`` of the manifest; a matrix with more or
    fewer rows (replaced by hand, or from another merge) would mislabel every cutout.
    """
    from astrocurate.cutout_store import manifest_row_count
    from astrocurate.features import SOURCE_STEP as MERGE_STEP

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


def _reusable(key: str) -> RunRecord | None:
    """Return the finished run with this key, else the newest unfinished one, else None."""
    runs = [
        r
        for r in find_runs(STEP, run_key=key, include_unfinished=True)
        if r.output_dir is not None and (r.output_dir / RUN_FILE).is_file()
    ]
    finished = [r for r in runs if r.finished]
    return finished[0] if finished else (runs[0] if runs else None)


def _refresh_prepared(
    record: RunRecord,
    config: ClusteringConfig,
    slurm: SlurmOptions | None,
    key_params: dict[str, Any],
    indices: np.ndarray,
) -> PreparedClustering:
    """Reuse an unfinished run with the same key: rewrite its scripts (resources may differ)."""
    directory: Path = record.output_dir  # type: ignore[assignment] - _reusable checked it
    lock = try_lock(directory)
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
        f"Feature run {features.run_id}. Keys {', '.join(VOLATILE_KEYS)} may be edited\n"
        "before run.sh is run; the others define the run (prepare a new one to change them)."
    )
    _write_text(directory / CONFIG_FILE, config.to_yaml(header))
    launch = _Launch(
        directory=directory,
        run_id=run_id,
        python=sys.executable,
        pythonpath=str(Path(astrocurate.__file__).resolve().parents[1]),
        tracking_uri=absolute_tracking_uri(tracking_uri()),
        experiment=experiment_name(),
    )
    info = {
        "run_id": run_id,
        "features_id": features.run_id,
        "features_dir": str(features.output_dir),
        "key_params": key_params,
        "input_run_ids": [features.run_id],
        "tracking_uri": redact_uri(launch.tracking_uri),
        "experiment_name": launch.experiment,
        "slurm": None if slurm is None else asdict(slurm),
    }
    _write_text(directory / RUN_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")
    run_sh = _render_run_script(launch, config.n_levels, slurm, config.n_processes)
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
    info = _read_run_file(directory)
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


class _Ranks:
    """The place of a process in a ``torch.distributed`` clustering (rank 0 writes).

    Attributes
    ----------
    rank, world : int
        This process's rank and the number of ranks.
    """

    #: Stop requests shared by :meth:`sync_stop`, by priority (the highest wins).
    _STOPS = (None, "SIGTERM", "SIGUSR1")

    def __init__(self, rank: int, world: int) -> None:
        self.rank = rank
        self.world = world

    @property
    def writer(self) -> bool:
        """Return whether this rank writes files (rank 0)."""
        return self.rank == 0

    def _device(self) -> Any:
        import torch

        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        """Wait for every rank."""
        import torch

        torch.distributed.barrier()

    def share(self, value: Any) -> Any:
        """Return rank 0's ``value`` on every rank (a small picklable object)."""
        import torch

        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def sync_stop(self, stop: StopRequest) -> None:
        """Set ``stop`` on every rank when any rank was asked to stop (a collective)."""
        import torch

        name = stop.signal_name
        code = self._STOPS.index(name) if name in self._STOPS else (1 if name else 0)
        flag = torch.tensor([code], dtype=torch.int64, device=self._device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        shared = int(flag.item())
        if shared and not stop.requested:
            stop.set(self._STOPS[shared] or "SIGTERM")


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

    from astrocurate.kmeans import init_distributed

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
            info = _read_run_file(directory)
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
    info = _read_run_file(directory)
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
    if not _is_int(level) or not 1 <= level <= n_levels:
        raise InvalidArgumentError(f"--level={level!r}: expected a level from 1 to {n_levels}")
    return int(level)


def _read_run_file(directory: Path) -> dict[str, Any]:
    path = directory / RUN_FILE
    if not path.is_file():
        raise InvalidRunError(
            f"{directory} is not a clustering experiment directory (no {RUN_FILE}); "
            "prepare one with scripts/4_clustering.py"
        )
    return json.loads(path.read_text())


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
    from astrocurate.features import load_features

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
    record = get_run(_read_run_file(directory)["run_id"], "clustering run")
    if not record.finished:
        raise InvalidRunError(_unfinished_message(record, "clustering run"))
    return record


def require_clustering_run(run_id: str, argument: str = "--clustering-id") -> RunRecord:
    """Return a finished clustering run; explain how to finish a prepared or failed one.

    Parameters
    ----------
    run_id : str
        The run ID given by the user.
    argument : str
        The command-line argument, named in messages.

    Raises
    ------
    RunNotFoundError, InvalidRunError
        As :func:`astrocurate.tracking.require_run`, with run.sh named for unfinished runs.
    """
    record = get_run(run_id, argument)
    if record.step == STEP and not record.finished:
        raise InvalidRunError(_unfinished_message(record, argument))
    return require_run(run_id, STEP, argument)


def _unfinished_message(record: RunRecord, argument: str) -> str:
    where = record.output_dir
    run = f'cd "{where}" && ./run.sh'
    if record.status == PREPARED:
        state = "is prepared (step 4a) but has not been run"
        todo = f"run it: {run}"
    elif record.status == "RUNNING":
        state = "is still running (or its process was killed)"
        todo = f"wait for it; if it was killed, run it again to resume: {run}"
    else:
        state = f"is {record.status}" + (
            f" ({record.tags[TAG_ERROR]})" if record.tags.get(TAG_ERROR) else ""
        )
        todo = f"see {where}/logs, then run it again to resume: {run}"
    return f"{argument}: clustering run {record.run_id} {state}; {todo}"


# =========================================================================== computing


def compute_levels(
    X: Any,  # noqa: N803
    config: ClusteringConfig,
    directory: Path,
    *,
    last_level: int | None = None,
    input_indices: np.ndarray | None = None,
    n_points: int | None = None,
    stop: StopRequest | None = None,
    on_level: Callable[[int, Any, np.ndarray, float], None] | None = None,
    ranks: _Ranks | None = None,
) -> list[Any]:
    """Cluster level by level into ``directory``, resuming from its checkpoints.

    Gives what ``HierarchicalKMeans(...).fit(X)`` gives with the config's parameters and
    ``random_state=config.seed``, plus the files of the module notes.

    Parameters
    ----------
    X : array, memmap or tensor, shape (n, d)
        Level-1 inputs.
    config : ClusteringConfig
        Parameters.
    directory : Path
        Where ``level_<L>/`` and ``checkpoints/`` go.
    last_level : int, optional
        Stop after this level (1-based; default the top one).
    input_indices : numpy.ndarray of int64, shape (n,), optional
        Feature row of each input, for ``point_labels`` (default ``arange(n)``).
    n_points : int, optional
        Feature rows in all (length of ``point_labels``); default ``max(indices) + 1`` or n.
    stop : StopRequest, optional
        Checked at every checkpoint: when set, save and raise.
    on_level : callable, optional
        ``on_level(level, result, point_labels, seconds)`` after each level computed now.
    ranks : _Ranks, optional
        In a ``torch.distributed`` launch: every rank calls this with the same arguments
        (``X`` memory-mapped: each rank reads its row slice); only rank 0 writes files.
        The ranks meet before and after every level.

    Returns
    -------
    list of LevelResult
        Levels 1 to ``last_level``.
    """
    import torch

    directory = Path(directory)
    n = int(X.shape[0])
    indices = np.arange(n, dtype=np.int64) if input_indices is None else input_indices
    total = n_points if n_points is not None else (int(indices.max()) + 1 if n else 0)
    last = config.n_levels if last_level is None else last_level
    device = resolve_device(config.device)
    dtype = getattr(torch, config.dtype)
    stop = stop or StopRequest()
    levels: list[Any] = []
    point_labels = np.full(total, -1, dtype=np.int64)
    for lvl in range(1, last + 1):
        if ranks is not None:
            ranks.barrier()
        if (directory / f"level_{lvl}" / LEVEL_DONE).is_file():
            log.info("resuming: level %d is already complete in %s", lvl, directory)
            result = load_level_result(directory, lvl)
            point_labels = _point_labels(point_labels, indices, result.labels, lvl)
        else:
            started = time.perf_counter()
            inputs = X if lvl == 1 else levels[-1].centroids
            _check_level_inputs(config, lvl, int(inputs.shape[0]))
            checkpoints = _Checkpoints(
                directory / CHECKPOINTS / f"level_{lvl}", config, stop, ranks
            )
            result = _LevelRun(config, lvl, device, dtype, checkpoints).run(inputs)
            seconds = time.perf_counter() - started
            point_labels = _point_labels(point_labels, indices, result.labels, lvl)
            if ranks is None or ranks.writer:
                _write_level(directory, lvl, result, point_labels, seconds)
                checkpoints.clear()
                if on_level is not None:
                    on_level(lvl, result, point_labels, seconds)
            checkpoints.check_stop()
        levels.append(result)
    if ranks is not None:
        ranks.barrier()
    return levels


def _check_level_inputs(config: ClusteringConfig, level: int, n_inputs: int) -> None:
    k = config.n_clusters[level - 1]
    if k > n_inputs:
        raise InvalidArgumentError(
            f"config key n_clusters={list(config.n_clusters)}: level {level} asks for {k} "
            f"clusters but has only {n_inputs} inputs"
        )


def _point_labels(
    previous: np.ndarray, indices: np.ndarray, labels: np.ndarray, level: int
) -> np.ndarray:
    """Level-``level`` cluster of every feature row (-1 outside the inputs)."""
    if level == 1:
        out = np.full(len(previous), -1, dtype=np.int64)
        out[indices] = labels
        return out
    return np.where(previous >= 0, labels[np.maximum(previous, 0)], -1).astype(np.int64)


def resolve_device(device: str) -> Any:
    """Return the torch device for the config key ``device`` (see :func:`kmeans.resolve_device`)."""
    from astrocurate.kmeans import resolve_device as resolve

    _check_device_text(device)
    return resolve(device)


class StopRequest:
    """A request to stop at the next checkpoint: SIGTERM, SIGUSR1 (SLURM), or set by code.

    Attributes
    ----------
    signal_name : str or None
        Name of the signal that asked, or ``"request"`` when set by :meth:`set`.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def set(self, reason: str = "request") -> None:
        """Ask to stop at the next checkpoint."""
        self.signal_name = reason

    @property
    def requested(self) -> bool:
        """Return whether a stop was asked for."""
        return self.signal_name is not None

    def check(self) -> None:
        """Raise :class:`StepInterrupted` (or :class:`RequeueRequested`) if asked to stop."""
        if self.signal_name == "SIGUSR1":
            raise RequeueRequested("SLURM time limit near: checkpoint saved, requeueing")
        if self.signal_name is not None:
            raise StepInterrupted(f"interrupted by {self.signal_name}; checkpoint saved")

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[StopRequest]:
        """Route SIGTERM and SIGUSR1 to this request while the block runs (main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if self.requested and signum == signal.SIGTERM:  # asked twice: stop now
                raise StepInterrupted(f"interrupted by {name}")
            log.warning("received %s: stopping at the next checkpoint", name)
            self.set(name)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGUSR1)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


class RequeueRequested(StepInterrupted):
    """SLURM warned of the time limit: the state is saved and the job should be requeued."""


class _Checkpoints:
    """Checkpoint files of one level: finished k-means runs, live k-means state, splits.

    Distributed (``ranks`` given): only the finished k-means runs of a level are saved, by
    rank 0 (every rank holds all their labels); live k-means states (a rank holds only
    its rows' distances during k-means++) and partial splits are neither saved nor read,
    so a resumed level restarts its current k-means run or its splits from the start,
    which gives the same result. The ranks agree on a stop request after every finished
    k-means run (:meth:`check_stop`), so they all stop at the same place.
    """

    def __init__(
        self,
        root: Path,
        config: ClusteringConfig,
        stop: StopRequest,
        ranks: _Ranks | None = None,
    ) -> None:
        self.root = root
        self.period = config.checkpoint_period
        self.stop = stop
        self.ranks = ranks
        self.fingerprint = run_key(STEP, config.key_params(), [])
        self._last = time.monotonic()

    @property
    def distributed(self) -> bool:
        """Return whether the level runs in several processes."""
        return self.ranks is not None

    @property
    def writer(self) -> bool:
        """Return whether this process writes checkpoints (alone, or rank 0)."""
        return self.ranks is None or self.ranks.writer

    def check_stop(self) -> None:
        """Raise if asked to stop (every rank raises when any rank was asked)."""
        if self.ranks is not None:
            self.ranks.sync_stop(self.stop)
        self.stop.check()

    def _due(self) -> bool:
        return self.stop.requested or time.monotonic() - self._last >= self.period

    def _save(self, name: str, meta: dict[str, Any], **arrays: np.ndarray) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        meta = {**meta, "fingerprint": self.fingerprint}
        _save_npz(self.root / f"{name}.npz", meta, arrays)
        self._last = time.monotonic()

    def _load(self, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        path = self.root / f"{name}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: data[k] for k in data.files if k != "meta"}
        if meta.get("fingerprint") != self.fingerprint:
            log.warning("ignoring checkpoint %s of another config", path)
            return None
        return meta, arrays

    # -- finished k-means runs (one per resampling step) --------------------------------

    def save_step(self, step: int, centers, labels, sq, history: list[float]) -> None:
        if not self.writer:
            return
        self._save(
            f"step_{step}",
            {"history": history},
            centers=centers,
            labels=labels,
            sq=sq,
        )
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"kmeans_{step}.npz").unlink()

    def last_step(self, n_steps: int) -> tuple[int, dict[str, Any], dict[str, np.ndarray]] | None:
        for step in range(n_steps - 1, -1, -1):
            loaded = self._load(f"step_{step}")
            if loaded is not None:
                return step, *loaded
        return None

    # -- live k-means state ---------------------------------------------------------------

    def kmeans_callback(self, step: int) -> Callable[[Any], None] | None:
        if self.distributed:
            return None

        def callback(state: Any) -> None:
            if state.phase == "done" or not self._due():
                return
            d = state.state_dict()
            arrays = {"centers": d["centers"], "center_indices": d["center_indices"]}
            if d["min_sq_distances"] is not None:
                arrays["min_sq_distances"] = d["min_sq_distances"]
            meta = {
                "phase": d["phase"],
                "step": d["step"],
                "potential_history": d["potential_history"],
                "rng_state": d["rng_state"],
            }
            self._save(f"kmeans_{step}", meta, **arrays)
            self.stop.check()

        return callback

    def load_kmeans(self, step: int, device: Any, dtype: Any) -> Any:
        from astrocurate.kmeans import KMeansState

        if self.distributed:
            return None
        loaded = self._load(f"kmeans_{step}")
        if loaded is None:
            return None
        meta, arrays = loaded
        state = {
            "phase": meta["phase"],
            "step": meta["step"],
            "centers": arrays["centers"],
            "center_indices": arrays["center_indices"],
            "min_sq_distances": arrays.get("min_sq_distances"),
            "potential_history": meta["potential_history"],
            "rng_state": meta["rng_state"],
        }
        log.info("resuming k-means run %d from its %s step %d", step, meta["phase"], meta["step"])
        return KMeansState.from_state_dict(state, device=device, dtype=dtype)

    # -- splits ---------------------------------------------------------------------------

    def save_split(self, next_cluster: int, labels, sq, centroids, force: bool = False) -> None:
        if self.distributed:
            return
        if force or self._due():
            self._save(
                "split",
                {"next_cluster": next_cluster},
                labels=labels,
                sq=sq,
                centroids=centroids,
            )
            self.stop.check()

    def load_split(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        if self.distributed:
            return None
        return self._load("split")

    def clear(self) -> None:
        if not self.writer:
            return
        if self.root.is_dir():
            for path in self.root.iterdir():
                path.unlink()
            self.root.rmdir()
        with contextlib.suppress(OSError):
            self.root.parent.rmdir()  # checkpoints/ once empty


class _LevelRun:
    """One level: k-means, resampling steps, splits, with checkpoints (cf. ``cluster_level``).

    Seeds follow :class:`~astrocurate.kmeans.HierarchicalKMeans`: level ``L`` (1-based)
    uses stream ``(L - 1,)`` of ``config.seed``; within it k-means run ``s`` uses
    ``(L - 1, 0, s)``, the random draw of resampling step ``s`` ``(L - 1, 1, s)`` and the
    split of cluster ``j`` ``(L - 1, 2, j)``.
    """

    def __init__(
        self, config: ClusteringConfig, level: int, device: Any, dtype: Any, ckpt: _Checkpoints
    ) -> None:
        i = level - 1
        self.config = config
        self.level = level
        self.device = device
        self.dtype = dtype
        self.ckpt = ckpt
        self.k = config.n_clusters[i]
        self.n_iters = config.n_iters[i]
        self.steps = config.n_resampling_steps[i]
        self.sample_size = config.sample_size[i]
        self.strategy = config.sampling_strategy[i]
        self.n_splits = config.n_splits[i]

    def _seed(self, *key: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.config.seed, spawn_key=(self.level - 1, *key))

    def _kmeans(self, k: int, seed: np.random.SeedSequence) -> Any:
        from astrocurate.kmeans import KMeans

        return KMeans(
            k,
            init=self.config.init,
            n_iters=self.n_iters,
            tol=self.config.tol,
            random_state=seed,
            device=self.device,
            dtype=self.dtype,
        )

    def run(self, inputs: Any) -> Any:
        """Cluster ``inputs`` (n_in, d); return a LevelResult."""
        from astrocurate.kmeans import assign

        # Distributed: no copy of the whole input per rank; KMeans reads each rank's slice.
        Y = inputs if self.ckpt.distributed else _on_device(inputs, self.device, self.dtype)  # noqa: N806
        n = int(Y.shape[0])
        start, centers, labels, sq, histories = 0, None, None, None, []
        done = self.ckpt.last_step(self.steps)
        if done is not None:
            last, meta, arrays = done
            start, histories = last + 1, meta["history"]
            centers, labels, sq = arrays["centers"], arrays["labels"], arrays["sq"]
            log.info("level %d: resuming after k-means run %d", self.level, last)
        for step in range(start, self.steps):
            data = Y if step == 0 else _take(Y, self._pool(step, labels, sq, n))
            km = self._kmeans(self.k, self._seed(0, step))
            km.fit(
                data,
                state=self.ckpt.load_kmeans(step, self.device, self.dtype),
                callback=self.ckpt.kmeans_callback(step),
            )
            centers = km.cluster_centers_
            if step == 0:
                labels, sq = km.labels_, km.sq_distances_
            else:
                labels, sq = assign(Y, centers, device=self.device, dtype=self.dtype)
            histories = [*histories, list(km.potential_history_)]
            self.ckpt.save_step(step, centers, labels, sq, histories)
            self.ckpt.check_stop()
            log.info(
                "level %d: k-means run %d of %d done (potential %.6g)",
                self.level,
                step + 1,
                self.steps,
                km.potential_history_[-1],
            )
        if self.n_splits > 1:
            centers, labels, sq = self._split(Y, labels)
        return _level_result(centers, labels, sq, histories)

    def _pool(self, step: int, labels: np.ndarray, sq: np.ndarray, n: int) -> np.ndarray:
        """Return the inputs pooled by resampling step ``step`` (sorted indices)."""
        from astrocurate.kmeans import sort_clusters

        rng = np.random.default_rng(self._seed(1, step))
        keys = sq if self.strategy == "c" else rng.random(n)
        members, offsets, _ = sort_clusters(labels, keys, self.k)
        rank = np.arange(len(members)) - np.repeat(offsets[:-1], np.diff(offsets))
        pool = np.sort(members[rank < self.sample_size])
        if len(pool) < self.k:
            raise InvalidArgumentError(
                f"level {self.level}: resampling step {step} pooled only {len(pool)} inputs "
                f"for n_clusters={self.k} (empty clusters); increase sample_size="
                f"{self.sample_size}"
            )
        return pool

    def _split(self, Y: Any, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: N803
        """Split every cluster into up to ``n_splits`` sub-clusters; drop empty ones."""
        from astrocurate.kmeans import sort_clusters

        n = len(labels)
        members, offsets, _ = sort_clusters(labels, np.zeros(n), self.k)
        new_labels = np.empty(n, dtype=np.int64)
        new_sq: np.ndarray | None = None
        parts: list[np.ndarray] = []
        first = 0
        saved = self.ckpt.load_split()
        if saved is not None:
            meta, arrays = saved
            first, new_labels, new_sq = meta["next_cluster"], arrays["labels"], arrays["sq"]
            parts = [arrays["centroids"]]
        for j in range(first, self.k):
            idx = members[offsets[j] : offsets[j + 1]]
            if len(idx) == 0:
                continue
            km = self._kmeans(min(self.n_splits, len(idx)), self._seed(2, j)).fit(_take(Y, idx))
            used, sub = np.unique(km.labels_, return_inverse=True)
            if new_sq is None:
                new_sq = np.empty(n, dtype=km.sq_distances_.dtype)
            new_labels[idx] = sum(len(p) for p in parts) + sub
            new_sq[idx] = km.sq_distances_
            parts.append(km.cluster_centers_[used])
            if j + 1 < self.k:
                self.ckpt.save_split(j + 1, new_labels, new_sq, np.concatenate(parts))
        return np.concatenate(parts), new_labels, new_sq  # type: ignore[return-value]


def _on_device(Y: Any, device: Any, dtype: Any) -> Any:  # noqa: N803
    """On CUDA, copy the inputs to the GPU once when they fit in half its free memory."""
    import torch

    if device.type != "cuda" or isinstance(Y, torch.Tensor):
        return Y
    n, d = Y.shape
    nbytes = n * d * torch.empty(0, dtype=dtype).element_size()
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > free // 2:
        return Y
    out = torch.empty((n, d), dtype=dtype, device=device)
    for start in range(0, n, 65536):
        part = np.ascontiguousarray(Y[start : start + 65536])
        out[start : start + len(part)] = torch.from_numpy(part).to(device, dtype)
    return out


def _take(Y: Any, idx: np.ndarray) -> Any:  # noqa: N803
    """Rows ``idx`` of a numpy array, memmap or tensor."""
    import torch

    if isinstance(Y, torch.Tensor):
        return Y[torch.from_numpy(idx).to(Y.device)]
    return np.asarray(Y[idx])


def _level_result(centroids, labels, sq, histories) -> Any:
    from astrocurate.kmeans import LevelResult, sort_clusters

    k = centroids.shape[0]
    members, offsets, distances = sort_clusters(labels, sq, k)
    sizes = np.diff(offsets)
    return LevelResult(
        centroids=centroids,
        labels=np.asarray(labels, dtype=np.int64),
        sq_distances=sq,
        members=members,
        offsets=offsets,
        distances=distances,
        sizes=sizes,
        inertia=float(np.asarray(sq).sum(dtype=np.float64)),
        n_empty=int((sizes == 0).sum()),
        potential_history=[list(h) for h in histories],
    )


# =========================================================================== outputs


def _write_level(
    directory: Path, level: int, result: Any, point_labels: np.ndarray, seconds: float
) -> None:
    """Write a level's arrays, then ``level.json`` (its completion marker)."""
    out = directory / f"level_{level}"
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        "centroids": result.centroids,
        "labels": result.labels,
        "members": result.members,
        "offsets": result.offsets,
        "distances": result.distances,
        "point_labels": point_labels,
    }
    for name, array in arrays.items():
        _save_npy(out / f"{name}.npy", array)
    sizes = result.sizes
    summary = {
        "level": level,
        "n_clusters": result.n_clusters,
        "n_inputs": len(result.labels),
        "n_points": int((point_labels >= 0).sum()),
        "inertia": result.inertia,
        "n_empty": result.n_empty,
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "potential_history": result.potential_history,
        "seconds": round(seconds, 3),
    }
    _write_text(out / LEVEL_DONE, json.dumps(summary, indent=1) + "\n")


def load_level_result(directory: Path | str, level: int) -> Any:
    """Read a complete level back as a :class:`~astrocurate.kmeans.LevelResult`."""
    from astrocurate.kmeans import LevelResult

    out = Path(directory) / f"level_{level}"
    summary = json.loads((out / LEVEL_DONE).read_text())
    a = {name: np.load(out / f"{name}.npy", allow_pickle=False) for name in LEVEL_ARRAYS}
    sq = np.empty_like(a["distances"])
    sq[a["members"]] = a["distances"]
    return LevelResult(
        centroids=a["centroids"],
        labels=a["labels"],
        sq_distances=sq,
        members=a["members"],
        offsets=a["offsets"],
        distances=a["distances"],
        sizes=np.diff(a["offsets"]),
        inertia=summary["inertia"],
        n_empty=summary["n_empty"],
        potential_history=summary["potential_history"],
    )


@dataclass
class ClusteringOutputs:
    """The arrays of a finished clustering directory, memory-mapped (for sampling).

    Attributes
    ----------
    directory : Path
        The experiment directory.
    config : ClusteringConfig
        Its config.
    input_indices : numpy.ndarray of int64, shape (n,)
        Feature row of each level-1 input.
    levels : list of dict of str to numpy.ndarray
        Per level (index 0 is level 1): ``centroids``, ``labels``, ``members``,
        ``offsets``, ``distances``, ``point_labels``.
    """

    directory: Path
    config: ClusteringConfig
    input_indices: np.ndarray
    levels: list[dict[str, np.ndarray]] = field(default_factory=list)


def load_clustering(directory: Path | str) -> ClusteringOutputs:
    """Memory-map the outputs of a clustering directory (every level must be complete)."""
    directory = Path(directory)
    config = load_config(directory / CONFIG_FILE)
    levels = []
    for lvl in range(1, config.n_levels + 1):
        out = directory / f"level_{lvl}"
        if not (out / LEVEL_DONE).is_file():
            raise InvalidRunError(f"{out}: level {lvl} is not complete; run run.sh first")
        levels.append(
            {n: np.load(out / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in LEVEL_ARRAYS}
        )
    indices = np.load(directory / INPUT_INDICES, mmap_mode="r", allow_pickle=False)
    return ClusteringOutputs(directory, config, indices, levels)


# =========================================================================== metrics


def level_metrics(level: int, result: Any, point_labels: np.ndarray) -> dict[str, float]:
    """Metrics of one level, named ``level_<L>/<metric>``.

    Parameters
    ----------
    level : int
        The level (1-based).
    result : LevelResult
        Its clustering.
    point_labels : numpy.ndarray of int64, shape (N,)
        Level cluster of every feature row (-1 outside the inputs).

    Returns
    -------
    dict of str to float
        ``n_clusters``, ``inertia``, ``n_empty``, ``size_min``, ``size_median``,
        ``size_max`` (inputs per cluster), ``size_entropy`` (normalised entropy of the
        cluster sizes over all clusters, 1 = perfectly balanced) and ``points_entropy``
        (the same counting the feature rows underneath each cluster).
    """
    from astrocurate.sampling import normalized_entropy

    k = result.n_clusters
    sizes = result.sizes
    points = np.bincount(point_labels[point_labels >= 0], minlength=k)
    values = {
        "n_clusters": k,
        "inertia": result.inertia,
        "n_empty": result.n_empty,
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "size_entropy": normalized_entropy(sizes, n_categories=k),
        "points_entropy": normalized_entropy(points, n_categories=k),
    }
    return {f"level_{level}/{name}": float(v) for name, v in values.items()}


def plot_cluster_sizes(level: int, result: Any, path: Path) -> Path:
    """Save a PNG of a level's cluster sizes: histogram and size by rank (Agg, no pyplot)."""
    from matplotlib.figure import Figure

    sizes = np.asarray(result.sizes)
    fig = Figure(figsize=(9, 3.2), dpi=100)
    left, right = fig.subplots(1, 2)
    nonempty = sizes[sizes > 0]
    bins = np.unique(np.geomspace(1, max(2, sizes.max() + 1), 40).astype(int))
    left.hist(nonempty, bins=bins, color="#4477aa")
    left.set_xscale("log")
    left.set_xlabel("inputs per cluster")
    left.set_ylabel("clusters")
    ranked = np.sort(nonempty)[::-1]
    right.plot(np.arange(1, len(ranked) + 1), ranked, color="#aa3377")
    right.set_yscale("log")
    right.set_xlabel("cluster rank")
    right.set_ylabel("inputs")
    fig.suptitle(
        f"level {level}: {result.n_clusters} clusters, {result.n_empty} empty, "
        f"sizes {int(sizes.min())}-{int(sizes.max())}"
    )
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.86, wspace=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _report_level(
    handle: StepRun, directory: Path, level: int, result: Any, point_labels: np.ndarray
) -> None:
    """Log a level's metrics, potential history and size plot to the run."""
    handle.log_metrics(level_metrics(level, result, point_labels))
    if result.potential_history:
        handle.log_metric_series(f"level_{level}/potential", result.potential_history[-1])
    png = plot_cluster_sizes(
        level, result, directory / "plots" / f"level_{level}_cluster_sizes.png"
    )
    handle.log_artifact(png, "plots")
    handle.set_tags({TAG_PROGRESS: f"level {level} done"})
    log.info(
        "level %d: %d clusters, inertia %.6g, %d empty, sizes %d..%d",
        level,
        result.n_clusters,
        result.inertia,
        result.n_empty,
        int(result.sizes.min()),
        int(result.sizes.max()),
    )


def _report_missing(handle: StepRun, directory: Path, levels: list[Any]) -> None:
    """Log the metrics of levels computed by a process that died before logging them."""
    logged = client().get_run(handle.run_id).data.metrics
    for lvl, result in enumerate(levels, start=1):
        if f"level_{lvl}/inertia" not in logged:
            point_labels = np.load(directory / f"level_{lvl}" / "point_labels.npy")
            _report_level(handle, directory, lvl, result, point_labels)


# =========================================================================== run records


def _create_prepared_run(
    key: str, features_id: str, params: Mapping[str, Any], root: Path
) -> tuple[str, Path]:
    """Create the clustering run with the tags :func:`~astrocurate.tracking.tracked_step` sets."""
    mlflow_client = client()
    run_id = create_run_record(
        mlflow_client, experiment_id(mlflow_client), STEP, key, [features_id]
    )
    directory = root / STEP / run_id
    with _fail_on_error(run_id):
        directory.mkdir(parents=True, exist_ok=True)
        handle = StepRun(run_id, STEP, directory)
        handle.log_params({**params, "input_run_ids": [features_id], "output_dir": str(directory)})
        handle.set_tags({TAG_OUTPUT_DIR: directory, TAG_HOST: socket.gethostname()})
    return run_id, directory


def _mark_prepared(run_id: str, directory: Path) -> None:
    """Tag the run script (find_run then finds the run) and set the prepared status."""
    StepRun(run_id, STEP, directory).set_tags({TAG_RUN_SCRIPT: directory / RUN_SCRIPT})
    client().update_run(run_id, status=PREPARED)


@contextlib.contextmanager
def _fail_on_error(run_id: str) -> Iterator[None]:
    """Mark the run FAILED (KILLED on an interrupt) if the block raises, then re-raise."""
    try:
        yield
    except BaseException as exc:
        _terminate(run_id, exc)
        raise


def _terminate(run_id: str, exc: BaseException) -> None:
    mark_terminated(client(), run_id, exc)


@contextlib.contextmanager
def _wait_for_lock(directory: Path, run_id: str) -> Iterator[None]:
    """Hold the experiment directory's lock; wait while another process holds it.

    Two ``run.sh`` (or SLURM jobs, or a ``run.sh`` and a concurrent step 4a) on one
    experiment never cluster at once: the second waits here, then finds the run finished
    (or continues from the first one's checkpoints).
    """
    lock = try_lock(directory)
    if lock is None:
        log.warning(
            "clustering run %s is being worked on by another process (run.sh, a SLURM job or "
            "step 4a); waiting for it to end",
            run_id,
        )
        handle = open(directory / LOCK_NAME, "a+")  # noqa: SIM115 - closed below
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            handle.close()
            raise
        lock = DirectoryLock(handle)
    with contextlib.closing(lock):
        yield


@contextlib.contextmanager
def _continue_run(
    run_id: str, directory: Path, finish: bool, info: Mapping[str, Any]
) -> Iterator[tuple[StepRun, StopRequest]]:
    """Reopen a prepared run (its directory locked by the caller): mark it RUNNING, finish it."""
    mlflow_client = client()
    mlflow_client.update_run(run_id, status="RUNNING")
    handle = StepRun(run_id, STEP, directory, resumed=True)
    tags = {TAG_HOST: socket.gethostname(), TAG_PID: os.getpid()}
    if os.environ.get("SLURM_JOB_ID"):
        tags[TAG_SLURM_JOB] = os.environ["SLURM_JOB_ID"]
    handle.set_tags(tags)
    stop = StopRequest()
    try:
        with stop.handling_signals():
            yield handle, stop
    except RequeueRequested as exc:
        if os.environ.get("SLURM_JOB_ID"):  # tag first: SLURM ends this process
            handle.set_tags({TAG_PROGRESS: REQUEUED})  # once the requeue is accepted
        if not _requeue_slurm_job():
            _terminate(run_id, exc)
            raise StepInterrupted(str(exc)) from exc
        raise
    except BaseException as exc:
        _terminate(run_id, exc)
        raise
    if finish:
        with _fail_on_error(run_id):
            _finish(handle, info)


def _finish(handle: StepRun, info: Mapping[str, Any]) -> None:
    """Drop the checkpoints, hash the outputs, log metadata and mark the run FINISHED."""
    shutil.rmtree(handle.output_dir / CHECKPOINTS, ignore_errors=True)
    for leftover in handle.output_dir.rglob(".tmp-*"):  # from a process killed mid-write
        leftover.unlink()
    handle.log_artifact(handle.output_dir / CONFIG_FILE)
    handle.set_tags({TAG_PROGRESS: "finished"})
    finish_step(client(), handle, info["key_params"], info["input_run_ids"])


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
