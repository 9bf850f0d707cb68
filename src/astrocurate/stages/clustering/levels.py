"""Step 4 levels: the level-by-level k-means of a clustering and its files.

Holds :func:`compute_levels` with its checkpoints and stop requests, writing and loading
level results (:func:`load_level_result`, :func:`load_clustering`), and the per-level
metrics and cluster-size plot (:func:`level_metrics`, :func:`plot_cluster_sizes`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from astrocurate.errors import (
    InvalidArgumentError,
    StepInterrupted,
)
from astrocurate.io.atomic import atomic_path
from astrocurate.io.atomic import save_npy as _save_npy
from astrocurate.io.atomic import save_npz as _save_npz
from astrocurate.io.atomic import write_text as _write_text
from astrocurate.stages.clustering.config import (
    STEP,
    ClusteringConfig,
    _check_device_text,
)
from astrocurate.stages.clustering.outputs import LEVEL_ARRAYS, LEVEL_DONE
from astrocurate.tracking import (
    StepRun,
    client,
    run_key,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
#: Arrays of a k-means checkpoint that exist only during greedy k-means++.
_OPTIONAL_KMEANS_ARRAYS = ("min_sq_distances", "nearest_centers")
TAG_PROGRESS = "astrocurate.progress"


# =========================================================================== computing


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
    """Cluster level by level into ``directory``, resuming from its files and checkpoints.

    Runs the level loop of :func:`~astrocurate.algorithms.kmeans.hierarchical.fit_levels`,
    which ``HierarchicalKMeans(...).fit(X)`` also runs (with the config's parameters and
    ``random_state=config.seed`` it gives the same levels); :class:`_StageLevels` adds the
    files of the module notes.

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
    from astrocurate.algorithms.kmeans.hierarchical import fit_levels

    settings = _kmeans_settings(config)
    n = int(X.shape[0])
    indices = np.arange(n, dtype=np.int64) if input_indices is None else input_indices
    total = n_points if n_points is not None else (int(indices.max()) + 1 if n else 0)
    hooks = _StageLevels(
        config, Path(directory), settings, indices, total, stop or StopRequest(), on_level, ranks
    )
    seed = np.random.SeedSequence(config.seed)
    last = config.n_levels if last_level is None else last_level
    return fit_levels(X, _level_params(config), seed, settings, hooks, last_level=last)


def _level_params(config: ClusteringConfig) -> list[Any]:
    """Return the ``LevelParams`` of every level of ``config`` (already checked)."""
    from astrocurate.algorithms.kmeans.level import LevelParams

    return [
        LevelParams(
            n_clusters=config.n_clusters[i],
            n_iters=config.n_iters[i],
            n_resampling_steps=config.n_resampling_steps[i],
            sample_size=config.sample_size[i],
            sampling_strategy=config.sampling_strategy[i],
            n_splits=config.n_splits[i],
        )
        for i in range(config.n_levels)
    ]


def _kmeans_settings(config: ClusteringConfig) -> Any:
    """Return the ``KMeansSettings`` of ``config`` (default blocks, distributed when launched)."""
    import torch

    from astrocurate.algorithms.kmeans.level import KMeansSettings

    return KMeansSettings(
        init=config.init,
        tol=config.tol,
        device=resolve_device(config.device),
        dtype=getattr(torch, config.dtype),
        matmul_precision=config.matmul_precision,
    )


class _StageLevels:
    """The stage's hooks into the level loop: level files, checkpoints, stop requests, ranks.

    A level whose ``level.json`` exists is read back instead of computed; a computed level
    is written (rank 0), its checkpoints cleared and ``on_level`` called; then the ranks
    agree on a stop request. ``point_labels`` follows the levels down to the feature rows.
    """

    def __init__(
        self,
        config: ClusteringConfig,
        directory: Path,
        settings: Any,
        indices: np.ndarray,
        n_points: int,
        stop: StopRequest,
        on_level: Callable[[int, Any, np.ndarray, float], None] | None,
        ranks: _Ranks | None,
    ) -> None:
        self.config, self.directory, self.settings = config, directory, settings
        self.indices = indices
        self.point_labels = np.full(n_points, -1, dtype=np.int64)
        self.stop, self.on_level, self.ranks = stop, on_level, ranks
        self.checkpoints: _Checkpoints | None = None

    @property
    def writer(self) -> bool:
        """Return whether this process writes files (alone, or rank 0)."""
        return self.ranks is None or self.ranks.writer

    def before_level(self, level: int) -> None:
        """Meet the other ranks."""
        if self.ranks is not None:
            self.ranks.barrier()

    def completed_level(self, level: int) -> Any:
        """Read ``level`` back when ``level.json`` says that it is complete."""
        if not (self.directory / f"level_{level}" / LEVEL_DONE).is_file():
            return None
        log.info("resuming: level %d is already complete in %s", level, self.directory)
        result = load_level_result(self.directory, level)
        self.point_labels = _point_labels(self.point_labels, self.indices, result.labels, level)
        return result

    def check_inputs(self, level: int, n_clusters: int, n_inputs: int) -> None:
        """Raise when the level has fewer inputs than clusters (names the config key)."""
        _check_level_inputs(self.config, level, n_inputs)

    def level_hooks(self, level: int) -> _Checkpoints:
        """Return the checkpoints of ``level``: they resume, save and stop its k-means runs."""
        root = self.directory / CHECKPOINTS / f"level_{level}"
        self.checkpoints = _Checkpoints(
            root, self.config, self.stop, self.ranks, level, self.settings
        )
        return self.checkpoints

    def level_done(self, level: int, result: Any, seconds: float) -> None:
        """Write the level, clear its checkpoints, report it; stop if asked to."""
        self.point_labels = _point_labels(self.point_labels, self.indices, result.labels, level)
        assert self.checkpoints is not None  # made by level_hooks
        if self.writer:
            _write_level(self.directory, level, result, self.point_labels, seconds)
            self.checkpoints.clear()
            if self.on_level is not None:
                self.on_level(level, result, self.point_labels, seconds)
        self.checkpoints.check_stop()

    def after_levels(self) -> None:
        """Meet the other ranks."""
        if self.ranks is not None:
            self.ranks.barrier()


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
    from astrocurate.algorithms.kmeans.rows import resolve_device as resolve

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

    The public methods are the level hooks of
    :func:`~astrocurate.algorithms.kmeans.level.run_level` (``LevelHooks``).
    """

    def __init__(
        self,
        root: Path,
        config: ClusteringConfig,
        stop: StopRequest,
        ranks: _Ranks | None,
        level: int,
        settings: Any,
    ) -> None:
        self.root = root
        self.period = config.checkpoint_period
        self.stop = stop
        self.ranks = ranks
        self.level = level
        self.settings = settings
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

    def finished_runs(self, n_runs: int) -> Any:
        """Return the ``FinishedRuns`` of the last saved run, or None."""
        from astrocurate.algorithms.kmeans.level import FinishedRuns

        for run in range(n_runs - 1, -1, -1):
            loaded = self._load(f"step_{run}")
            if loaded is not None:
                meta, arrays = loaded
                log.info("level %d: resuming after k-means run %d", self.level, run)
                centers, labels, sq = arrays["centers"], arrays["labels"], arrays["sq"]
                return FinishedRuns(run, centers, labels, sq, meta["history"])
        return None

    def run_done(self, runs: Any, n_runs: int) -> None:
        """Save a finished run (replacing its live state), then stop if asked to."""
        if self.writer:
            arrays = {"centers": runs.centers, "labels": runs.labels, "sq": runs.sq_distances}
            self._save(f"step_{runs.last}", {"history": runs.histories}, **arrays)
            with contextlib.suppress(FileNotFoundError):
                (self.root / f"kmeans_{runs.last}.npz").unlink()
        self.check_stop()
        log.info(
            "level %d: k-means run %d of %d done (potential %.6g)",
            self.level,
            runs.last + 1,
            n_runs,
            runs.histories[-1][-1],
        )

    # -- live k-means state ---------------------------------------------------------------

    def kmeans_callback(self, run: int) -> Callable[[Any], None] | None:
        """Return a callback saving the live state of run ``run`` every period (alone only)."""
        if self.distributed:
            return None

        def callback(state: Any) -> None:
            if state.phase == "done" or not self._due():
                return
            d = state.state_dict()
            arrays = {"centers": d["centers"], "center_indices": d["center_indices"]}
            for optional in _OPTIONAL_KMEANS_ARRAYS:
                if d[optional] is not None:
                    arrays[optional] = d[optional]
            meta = {
                "phase": d["phase"],
                "step": d["step"],
                "potential_history": d["potential_history"],
                "rng_state": d["rng_state"],
            }
            self._save(f"kmeans_{run}", meta, **arrays)
            self.stop.check()

        return callback

    def kmeans_state(self, run: int) -> Any:
        """Return the saved live ``KMeansState`` of run ``run``, or None (alone only)."""
        from astrocurate.algorithms.kmeans.estimator import KMeansState

        if self.distributed:
            return None
        loaded = self._load(f"kmeans_{run}")
        if loaded is None:
            return None
        meta, arrays = loaded
        state = {
            "phase": meta["phase"],
            "step": meta["step"],
            "centers": arrays["centers"],
            "center_indices": arrays["center_indices"],
            "potential_history": meta["potential_history"],
            "rng_state": meta["rng_state"],
            **{optional: arrays.get(optional) for optional in _OPTIONAL_KMEANS_ARRAYS},
        }
        log.info("resuming k-means run %d from its %s step %d", run, meta["phase"], meta["step"])
        device, dtype = self.settings.device, self.settings.dtype
        return KMeansState.from_state_dict(state, device=device, dtype=dtype)

    # -- splits ---------------------------------------------------------------------------

    def split_done(self, progress: Any) -> None:
        """Save the splits done so far every period (alone only), then stop if asked to."""
        if self.distributed or not self._due():
            return
        self._save(
            "split",
            {"next_cluster": progress.next_cluster},
            labels=progress.labels,
            sq=progress.sq_distances,
            centroids=progress.centroids,
        )
        self.stop.check()

    def split_progress(self) -> Any:
        """Return the saved ``SplitProgress``, or None (alone only)."""
        from astrocurate.algorithms.kmeans.level import SplitProgress

        loaded = None if self.distributed else self._load("split")
        if loaded is None:
            return None
        meta, arrays = loaded
        return SplitProgress(
            meta["next_cluster"], arrays["labels"], arrays["sq"], arrays["centroids"]
        )

    def clear(self) -> None:
        """Remove the level's checkpoints (rank 0)."""
        if not self.writer:
            return
        if self.root.is_dir():
            for path in self.root.iterdir():
                path.unlink()
            self.root.rmdir()
        with contextlib.suppress(OSError):
            self.root.parent.rmdir()  # checkpoints/ once empty


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
    """Read a complete level back as a hierarchical ``LevelResult``."""
    from astrocurate.algorithms.kmeans.level import LevelResult

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
    from astrocurate.algorithms.sampling import normalized_entropy

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
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
