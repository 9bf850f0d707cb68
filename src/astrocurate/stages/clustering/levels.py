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
            for optional in _OPTIONAL_KMEANS_ARRAYS:
                if d[optional] is not None:
                    arrays[optional] = d[optional]
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
        from astrocurate.algorithms.kmeans.estimator import KMeansState

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
            "potential_history": meta["potential_history"],
            "rng_state": meta["rng_state"],
            **{optional: arrays.get(optional) for optional in _OPTIONAL_KMEANS_ARRAYS},
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

    Seeds follow :class:`~astrocurate.algorithms.kmeans.hierarchical.HierarchicalKMeans`: level
    ``L`` (1-based)
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
        from astrocurate.algorithms.kmeans.estimator import KMeans

        return KMeans(
            k,
            init=self.config.init,
            n_iters=self.n_iters,
            tol=self.config.tol,
            random_state=seed,
            device=self.device,
            dtype=self.dtype,
            matmul_precision=self.config.matmul_precision,
        )

    def run(self, inputs: Any) -> Any:
        """Cluster ``inputs`` (n_in, d); return a LevelResult."""
        from astrocurate.algorithms.kmeans.assignment import assign

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
                labels, sq = assign(
                    Y,
                    centers,
                    device=self.device,
                    dtype=self.dtype,
                    matmul_precision=self.config.matmul_precision,
                )
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
        from astrocurate.algorithms.kmeans.hierarchical import sort_clusters

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
        from astrocurate.algorithms.kmeans.hierarchical import sort_clusters

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
    from astrocurate.algorithms.kmeans.hierarchical import LevelResult, sort_clusters

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
    """Read a complete level back as a hierarchical ``LevelResult``."""
    from astrocurate.algorithms.kmeans.hierarchical import LevelResult

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
