"""One level of hierarchical k-means (Vo et al. 2024): k-means, resampling steps, splits.

:func:`run_level` clusters one level's inputs: k-means on all of them, then each
resampling step's k-means on a pool of every cluster's members, then the optional splits.
It knows no files: a caller adds checkpoints, stop requests and progress reports through
:class:`LevelHooks` (the clustering stage resumes a level from its checkpoints so). The
level loop above it is :func:`astrocurate.algorithms.kmeans.hierarchical.fit_levels`.

Within a level's stream, k-means run ``s`` uses stream ``(0, s)``, the resampling draw of
step ``s`` ``(1, s)`` and the split of cluster ``j`` ``(2, j)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from astrocurate.algorithms.kmeans.assignment import assign_all
from astrocurate.algorithms.kmeans.checks import (
    VALID_INITS,
    VALID_PRECISIONS,
    check_block_size,
    check_choice,
    check_distributed,
    check_int,
    check_random_state,
    check_tol,
)
from astrocurate.algorithms.kmeans.distributed import Comm
from astrocurate.algorithms.kmeans.estimator import KMeans, KMeansState
from astrocurate.algorithms.kmeans.rows import (
    Array,
    Rows,
    block_sizes,
    matmul_precision_scope,
    resolve_dtype,
    resolve_torch_device,
)
from astrocurate.errors import InvalidArgumentError

__all__ = [
    "FinishedRuns",
    "KMeansSettings",
    "LevelHooks",
    "LevelParams",
    "LevelResult",
    "NoLevelHooks",
    "SplitProgress",
    "checked_settings",
    "child_seed",
    "cluster_level",
    "first_per_cluster",
    "level_result",
    "run_level",
    "seed_sequence",
    "sort_clusters",
    "validate_level",
]

VALID_STRATEGIES = ("r", "c")
_CPU = torch.device("cpu")


def seed_sequence(random_state: Any) -> np.random.SeedSequence:
    """Make a SeedSequence from ``random_state`` (drawing one integer from a Generator)."""
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    return np.random.SeedSequence(random_state)


def child_seed(parent: np.random.SeedSequence, *key: int) -> np.random.SeedSequence:
    """Derive the stream of ``parent`` for ``key``, independent of any other key."""
    return np.random.SeedSequence(
        parent.entropy, spawn_key=(*parent.spawn_key, *key), pool_size=parent.pool_size
    )


# --------------------------------------------------------------------------------------
# Sorted clusters
# --------------------------------------------------------------------------------------


def sort_clusters(
    labels: np.ndarray, sq_distances: np.ndarray, n_clusters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group the inputs by cluster, each cluster in ascending distance to its centroid.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (n,)
        Cluster of each input, in ``[0, n_clusters)``.
    sq_distances : numpy.ndarray, shape (n,)
        Squared distance of each input to its centroid.
    n_clusters : int
        Number of clusters ``k``.

    Returns
    -------
    members : numpy.ndarray of int64, shape (n,)
        Input indices; cluster ``j`` is ``members[offsets[j]:offsets[j + 1]]``. Equal
        distances keep ascending index order.
    offsets : numpy.ndarray of int64, shape (k + 1,)
        CSR-style offsets (``offsets[0] = 0``, ``offsets[k] = n``).
    distances : numpy.ndarray, shape (n,)
        ``sq_distances[members]``.
    """
    labels = np.asarray(labels)
    sq_distances = np.asarray(sq_distances)
    members = np.lexsort((sq_distances, labels)).astype(np.int64)
    offsets = np.zeros(n_clusters + 1, dtype=np.int64)
    np.cumsum(np.bincount(labels, minlength=n_clusters), out=offsets[1:])
    return members, offsets, sq_distances[members]


def first_per_cluster(labels: np.ndarray, keys: np.ndarray, n_clusters: int, s: int) -> np.ndarray:
    """Return the ``s`` inputs with the smallest ``keys`` of every cluster (sorted indices)."""
    members, offsets, _ = sort_clusters(labels, keys, n_clusters)
    rank = np.arange(len(members)) - np.repeat(offsets[:-1], np.diff(offsets))
    return np.sort(members[rank < s])


# --------------------------------------------------------------------------------------
# One level: k-means, resampling steps, splits
# --------------------------------------------------------------------------------------


@dataclass
class LevelResult:
    """The clustering of one level's inputs.

    Attributes
    ----------
    centroids : numpy.ndarray, shape (k, d)
        Final centroids.
    labels : numpy.ndarray of int64, shape (n_in,)
        Cluster of every input of the level.
    sq_distances : numpy.ndarray, shape (n_in,)
        Squared distance of every input to its centroid.
    members, offsets, distances : numpy.ndarray
        The clusters sorted by distance (see :func:`sort_clusters`).
    sizes : numpy.ndarray of int64, shape (k,)
        Inputs per cluster.
    inertia : float
        Sum of ``sq_distances``.
    n_empty : int
        Clusters without any input.
    potential_history : list of list of float
        Lloyd potentials of each k-means run (first the full run, then each resampling
        step's run on its pool; the split runs are not recorded).
    """

    centroids: np.ndarray
    labels: np.ndarray
    sq_distances: np.ndarray
    members: np.ndarray
    offsets: np.ndarray
    distances: np.ndarray
    sizes: np.ndarray
    inertia: float
    n_empty: int
    potential_history: list[list[float]] = field(default_factory=list)

    @property
    def n_clusters(self) -> int:
        """Number of clusters ``k``."""
        return int(self.centroids.shape[0])


@dataclass(frozen=True)
class LevelParams:
    """Parameters of one level (see :func:`cluster_level`)."""

    n_clusters: int
    n_iters: int
    n_resampling_steps: int
    sample_size: int | None
    sampling_strategy: str
    n_splits: int


def validate_level(
    n_clusters: Any,
    n_iters: Any,
    n_resampling_steps: Any,
    sample_size: Any,
    sampling_strategy: Any,
    n_splits: Any,
    where: str = "",
) -> LevelParams:
    """Check one level's parameters; ``where`` is appended to names, e.g. ``"[1]"``."""
    k = check_int(f"n_clusters{where}", n_clusters, 1)
    iters = check_int(f"n_iters{where}", n_iters, 0)
    steps = check_int(f"n_resampling_steps{where}", n_resampling_steps, 1)
    splits = check_int(f"n_splits{where}", n_splits, 1)
    strategy = check_choice(f"sampling_strategy{where}", sampling_strategy, VALID_STRATEGIES)
    size = None if sample_size is None else check_int(f"sample_size{where}", sample_size, 1)
    if steps > 1 and size is None:
        raise InvalidArgumentError(
            f"sample_size{where}=None but n_resampling_steps{where}={steps}; "
            "resampling needs a sample size (points taken per cluster)"
        )
    if steps > 1 and splits > 1:
        raise InvalidArgumentError(
            f"n_splits{where}={splits} and n_resampling_steps{where}={steps}: splits and "
            "resampling cannot be combined at the same level; set one of them to 1"
        )
    return LevelParams(k, iters, steps, size, strategy, splits)


@dataclass(frozen=True)
class KMeansSettings:
    """How every k-means run of a level is computed (as for :class:`KMeans`)."""

    init: str = "k-means++"
    tol: float | None = None
    device: torch.device = _CPU
    dtype: torch.dtype = torch.float32
    block_size: int | None = None
    centroid_block_size: int | None = None
    matmul_precision: str = "highest"
    distributed: bool | None = None

    def kmeans(
        self, n_clusters: int, n_iters: int, seed: np.random.SeedSequence, alone: bool = False
    ) -> KMeans:
        """Return an unfitted :class:`KMeans`; ``alone``: this process only, even distributed."""
        return KMeans(
            n_clusters,
            init=self.init,
            n_iters=n_iters,
            tol=self.tol,
            random_state=seed,
            device=self.device,
            dtype=self.dtype,
            block_size=self.block_size,
            centroid_block_size=self.centroid_block_size,
            matmul_precision=self.matmul_precision,
            distributed=False if alone else self.distributed,
        )

    def assign(self, rows: Rows, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels and squared distances of all ``rows`` to ``centers`` (ranks share rows)."""
        k = len(centers)
        block_rows, centroid_block = block_sizes(
            self.device, k, self.block_size, self.centroid_block_size
        )
        centers_t = Rows(centers, self.device, self.dtype).block(0, k)
        with matmul_precision_scope(self.device, self.matmul_precision):
            labels, sq = assign_all(
                rows, centers_t, block_rows, centroid_block, Comm(self.distributed, rows.n)
            )
        return labels.cpu().numpy(), sq.cpu().numpy()


@dataclass
class FinishedRuns:
    """The k-means runs of a level done so far: the last one's clustering of all inputs.

    Attributes
    ----------
    last : int
        Index of the last finished run (0: the full run; ``s``: resampling step ``s``).
    centers : numpy.ndarray, shape (k, d)
        Its centres.
    labels, sq_distances : numpy.ndarray, shape (n_in,)
        Every input's nearest centre and squared distance to it.
    histories : list of list of float
        Lloyd potentials of every finished run.
    """

    last: int
    centers: np.ndarray
    labels: np.ndarray
    sq_distances: np.ndarray
    histories: list[list[float]]


@dataclass
class SplitProgress:
    """Splits of a level done so far: clusters ``[0, next_cluster)`` are split.

    Attributes
    ----------
    next_cluster : int
        First cluster not split yet.
    labels, sq_distances : numpy.ndarray, shape (n_in,)
        Sub-cluster and squared distance of the inputs of the split clusters.
    centroids : numpy.ndarray, shape (m, d)
        The sub-clusters found so far.
    """

    next_cluster: int
    labels: np.ndarray
    sq_distances: np.ndarray | None
    centroids: np.ndarray


class LevelHooks(Protocol):
    """What a caller adds to the computation of one level (checkpoints, stops, progress).

    :class:`NoLevelHooks` does nothing; the clustering stage saves and restores its
    checkpoints through these calls. A hook that raises (a stop request) interrupts the
    level after the state it was handed is saved.
    """

    def finished_runs(self, n_runs: int) -> FinishedRuns | None:
        """Return the runs finished by an earlier attempt, or None to start afresh."""

    def kmeans_state(self, run: int) -> KMeansState | None:
        """Return the live state to resume k-means run ``run`` from, or None."""

    def kmeans_callback(self, run: int) -> Callable[[KMeansState], None] | None:
        """Return the ``callback`` of the fit of run ``run`` (see :meth:`KMeans.fit`)."""

    def run_done(self, runs: FinishedRuns, n_runs: int) -> None:
        """Take note that run ``runs.last`` of ``n_runs`` is finished."""

    def split_progress(self) -> SplitProgress | None:
        """Return the splits done by an earlier attempt, or None."""

    def split_done(self, progress: SplitProgress) -> None:
        """Take note of the splits done so far (after each split but the last)."""


class NoLevelHooks:
    """Level hooks that restore nothing and keep nothing."""

    def finished_runs(self, n_runs: int) -> FinishedRuns | None:
        """Return None: no earlier runs."""
        return None

    def kmeans_state(self, run: int) -> KMeansState | None:
        """Return None: start every run afresh."""
        return None

    def kmeans_callback(self, run: int) -> Callable[[KMeansState], None] | None:
        """Return None: no callback."""
        return None

    def run_done(self, runs: FinishedRuns, n_runs: int) -> None:
        """Do nothing."""

    def split_progress(self) -> SplitProgress | None:
        """Return None: no earlier splits."""
        return None

    def split_done(self, progress: SplitProgress) -> None:
        """Do nothing."""


def cluster_level(
    Y: Array,  # noqa: N803
    n_clusters: int,
    *,
    n_iters: int = 20,
    n_resampling_steps: int = 1,
    sample_size: int | None = None,
    sampling_strategy: str = "r",
    n_splits: int = 1,
    init: str = "k-means++",
    tol: float | None = None,
    random_state: Any = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    block_size: int | None = None,
    centroid_block_size: int | None = None,
    matmul_precision: str = "highest",
    distributed: bool | None = None,
) -> LevelResult:
    """Cluster one level's inputs with k-means, resampling steps or splits (design section 4).

    1. k-means with ``n_clusters`` on all of ``Y``;
    2. each further resampling step takes ``sample_size`` members of every cluster
       (``'c'``: the closest to the centroid, ``'r'``: uniformly at random, the whole
       cluster if smaller), runs a fresh k-means with ``n_clusters`` on that pool and
       assigns all of ``Y`` to the new centroids;
    3. with ``n_splits > 1`` each cluster is then split into up to ``n_splits``
       sub-clusters by k-means on its members; empty sub-clusters are dropped and
       every input keeps to a sub-cluster of its own cluster.

    Parameters
    ----------
    Y : array or tensor, shape (n_in, d)
        The level's inputs (points, or the previous level's centroids).
    n_clusters : int
        Clusters ``k`` (<= n_in).
    n_iters : int
        Lloyd updates of every k-means run.
    n_resampling_steps : int
        Steps, counting the first full run (1 = no resampling).
    sample_size : int, optional
        Inputs taken per cluster in a resampling step (needed when resampling).
    sampling_strategy : {"r", "c"}
        How they are taken.
    n_splits : int
        Sub-clusters per cluster (1 = no split); not combined with resampling.
    init, tol, device, dtype, block_size, centroid_block_size, matmul_precision
        As for :class:`KMeans`.
    distributed : bool, optional
        As for :class:`KMeans`: the k-means runs and the assignment of all of ``Y`` are
        shared by the ranks; the splits (many small runs) are computed by every rank alone.
    random_state : None, int, numpy.random.SeedSequence or numpy.random.Generator
        Seed. Run ``s`` uses stream ``(0, s)``, the resampling draw of step ``s`` stream
        ``(1, s)`` and the split of cluster ``j`` stream ``(2, j)`` of it.

    Returns
    -------
    LevelResult
        Centroids, assignment of every input and the sorted clusters.
    """
    p = validate_level(
        n_clusters, n_iters, n_resampling_steps, sample_size, sampling_strategy, n_splits
    )
    settings = checked_settings(
        init,
        tol,
        random_state,
        device,
        dtype,
        block_size,
        centroid_block_size,
        matmul_precision,
        distributed,
    )
    rows = Rows(Y, settings.device, settings.dtype)
    if p.n_clusters > rows.n:
        raise InvalidArgumentError(f"n_clusters={p.n_clusters} must be <= n_samples={rows.n}")
    return run_level(rows, p, seed_sequence(random_state), settings)


def checked_settings(
    init: Any,
    tol: Any,
    random_state: Any,
    device: Any,
    dtype: Any,
    block_size: Any,
    centroid_block_size: Any,
    matmul_precision: Any,
    distributed: Any,
) -> KMeansSettings:
    """Check the k-means parameters shared by every run (InvalidArgumentError)."""
    check_random_state(random_state)
    check_distributed(distributed)
    return KMeansSettings(
        init=check_choice("init", init, VALID_INITS),
        tol=check_tol(tol),
        device=resolve_torch_device(device),
        dtype=resolve_dtype(dtype),
        block_size=check_block_size("block_size", block_size),
        centroid_block_size=check_block_size("centroid_block_size", centroid_block_size),
        matmul_precision=check_choice("matmul_precision", matmul_precision, VALID_PRECISIONS),
        distributed=distributed,
    )


def run_level(
    rows: Rows,
    p: LevelParams,
    seed: np.random.SeedSequence,
    settings: KMeansSettings,
    hooks: LevelHooks | None = None,
    where: str = "",
) -> LevelResult:
    """Cluster one level's ``rows`` (see :func:`cluster_level`), with ``hooks``.

    Parameters
    ----------
    rows : Rows
        The level's inputs, on the settings' device and dtype.
    p : LevelParams
        The level's parameters (checked).
    seed : numpy.random.SeedSequence
        The level's stream (run ``s``: ``(0, s)``, draw of step ``s``: ``(1, s)``, split
        of cluster ``j``: ``(2, j)``).
    settings : KMeansSettings
        How the k-means runs are computed.
    hooks : LevelHooks, optional
        Checkpoints, stops and progress (default: none).
    where : str
        Prefix of error messages, e.g. ``"level 2: "``.

    Returns
    -------
    LevelResult
        Centroids, assignment of every input and the sorted clusters.
    """
    hooks = NoLevelHooks() if hooks is None else hooks
    runs = _kmeans_runs(rows, p, seed, settings, hooks, where)
    centroids, labels, sq = runs.centers, runs.labels, runs.sq_distances
    if p.n_splits > 1:
        centroids, labels, sq = _split(rows, labels, p, seed, settings, hooks)
    return level_result(centroids, labels, sq, runs.histories)


def _kmeans_runs(
    rows: Rows,
    p: LevelParams,
    seed: np.random.SeedSequence,
    settings: KMeansSettings,
    hooks: LevelHooks,
    where: str,
) -> FinishedRuns:
    """Run the full k-means, then one run per resampling step on its pool."""
    runs = hooks.finished_runs(p.n_resampling_steps)
    for run in range(0 if runs is None else runs.last + 1, p.n_resampling_steps):
        if run == 0:
            data = rows
        else:
            pool = _pool(runs, p, child_seed(seed, 1, run), rows.n, where)
            data = Rows(rows.take(pool), rows.device, rows.dtype)
        km = settings.kmeans(p.n_clusters, p.n_iters, child_seed(seed, 0, run))
        km.fit(data, state=hooks.kmeans_state(run), callback=hooks.kmeans_callback(run))
        if run == 0:
            labels, sq = km.labels_, km.sq_distances_
        else:
            labels, sq = settings.assign(rows, km.cluster_centers_)
        histories = [] if runs is None else runs.histories
        runs = FinishedRuns(
            run, km.cluster_centers_, labels, sq, [*histories, list(km.potential_history_)]
        )
        hooks.run_done(runs, p.n_resampling_steps)
    return runs


def _pool(
    runs: FinishedRuns, p: LevelParams, seed: np.random.SeedSequence, n: int, where: str
) -> np.ndarray:
    """Return the inputs pooled by resampling step ``runs.last + 1`` (sorted indices)."""
    if p.sampling_strategy == "c":
        keys = runs.sq_distances
    else:
        keys = np.random.default_rng(seed).random(n)
    pool = first_per_cluster(runs.labels, keys, p.n_clusters, p.sample_size)
    if len(pool) < p.n_clusters:
        raise InvalidArgumentError(
            f"{where}resampling step {runs.last + 1} pooled only {len(pool)} inputs for "
            f"n_clusters={p.n_clusters} (empty clusters); increase sample_size="
            f"{p.sample_size}"
        )
    return pool


def _split(
    rows: Rows,
    labels: np.ndarray,
    p: LevelParams,
    seed: np.random.SeedSequence,
    settings: KMeansSettings,
    hooks: LevelHooks,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split every cluster into up to ``n_splits`` sub-clusters; drop empty ones.

    Every rank splits alone (many small runs); ``hooks`` may resume from saved splits.
    """
    members, offsets, _ = sort_clusters(labels, np.zeros(rows.n), p.n_clusters)
    done = hooks.split_progress()
    if done is None:
        done = SplitProgress(0, np.empty(rows.n, dtype=np.int64), None, np.empty((0, rows.d)))
    parts = [done.centroids] if len(done.centroids) else []
    new_labels, new_sq = done.labels, done.sq_distances
    for j in range(done.next_cluster, p.n_clusters):
        idx = members[offsets[j] : offsets[j + 1]]
        if len(idx) == 0:
            continue
        km = settings.kmeans(min(p.n_splits, len(idx)), p.n_iters, child_seed(seed, 2, j), True)
        km.fit(Rows(rows.take(idx), rows.device, rows.dtype))
        used, sub = np.unique(km.labels_, return_inverse=True)
        if new_sq is None:
            new_sq = np.empty(rows.n, dtype=km.sq_distances_.dtype)
        new_labels[idx] = sum(len(part) for part in parts) + sub
        new_sq[idx] = km.sq_distances_
        parts.append(km.cluster_centers_[used])
        if j + 1 < p.n_clusters:
            hooks.split_done(SplitProgress(j + 1, new_labels, new_sq, np.concatenate(parts)))
    return np.concatenate(parts), new_labels, new_sq


def level_result(
    centroids: np.ndarray,
    labels: np.ndarray,
    sq_distances: np.ndarray,
    histories: list[list[float]],
) -> LevelResult:
    """Return the :class:`LevelResult` of a level's centroids and assignment."""
    k = centroids.shape[0]
    members, offsets, distances = sort_clusters(labels, sq_distances, k)
    sizes = np.diff(offsets)
    return LevelResult(
        centroids=centroids,
        labels=np.asarray(labels, dtype=np.int64),
        sq_distances=sq_distances,
        members=members,
        offsets=offsets,
        distances=distances,
        sizes=sizes,
        inertia=float(np.asarray(sq_distances).sum(dtype=np.float64)),
        n_empty=int((sizes == 0).sum()),
        potential_history=[list(h) for h in histories],
    )
