"""Hierarchical k-means with resampling (Vo et al. 2024) over arrays: levels, steps, splits.

The algorithm layer of the clustering step (docs/design.md section 4) above
:mod:`astrocurate.algorithms.kmeans.estimator`: each level clusters the centroids of the level
below with
:class:`~astrocurate.algorithms.kmeans.estimator.KMeans`, then refines them with resampling steps
(k-means on a
pool of the ``sample_size`` points nearest each centroid, ``'r'`` random or ``'c'``
closest); ``n_splits`` clusters the points in independent splits. Outputs are numpy
arrays; files, MLflow and the command line live in :mod:`astrocurate.stages.clustering.run`.

Conventions
-----------
* Levels are numbered from 0: level 0 clusters the input points (the design notes'
  "level 1"), level ``l + 1`` clusters the centroids of level ``l``.
* One independent random stream per (level, step), derived with ``SeedSequence(entropy,
  spawn_key=...)``, so any level or resampling step can be recomputed (or resumed) on its
  own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
from astrocurate.algorithms.kmeans.estimator import KMeans, NotFittedError
from astrocurate.algorithms.kmeans.rows import (
    Array,
    Rows,
    block_sizes,
    dist_dtype,
    matmul_precision_scope,
    resolve_dtype,
    resolve_torch_device,
)
from astrocurate.errors import InvalidArgumentError

__all__ = ["HierarchicalKMeans", "LevelResult", "cluster_level", "sort_clusters"]

VALID_STRATEGIES = ("r", "c")


def _seed_sequence(random_state: Any) -> np.random.SeedSequence:
    """Make a SeedSequence from ``random_state`` (drawing one integer from a Generator)."""
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    return np.random.SeedSequence(random_state)


def _child_seed(parent: np.random.SeedSequence, *key: int) -> np.random.SeedSequence:
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


def _first_per_cluster(labels: np.ndarray, keys: np.ndarray, n_clusters: int, s: int) -> np.ndarray:
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
class _LevelParams:
    n_clusters: int
    n_iters: int
    n_resampling_steps: int
    sample_size: int | None
    sampling_strategy: str
    n_splits: int


def _validate_level(
    n_clusters: Any,
    n_iters: Any,
    n_resampling_steps: Any,
    sample_size: Any,
    sampling_strategy: Any,
    n_splits: Any,
    where: str = "",
) -> _LevelParams:
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
    return _LevelParams(k, iters, steps, size, strategy, splits)


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
    p = _validate_level(
        n_clusters, n_iters, n_resampling_steps, sample_size, sampling_strategy, n_splits
    )
    check_choice("init", init, VALID_INITS)
    check_tol(tol)
    check_random_state(random_state)
    dev, dt = resolve_torch_device(device), resolve_dtype(dtype)
    check_block_size("block_size", block_size)
    check_block_size("centroid_block_size", centroid_block_size)
    rows = Y if isinstance(Y, Rows) else Rows(Y, dev, dt)
    if p.n_clusters > rows.n:
        raise InvalidArgumentError(f"n_clusters={p.n_clusters} must be <= n_samples={rows.n}")
    seed = _seed_sequence(random_state)

    check_choice("matmul_precision", matmul_precision, VALID_PRECISIONS)
    check_distributed(distributed)

    def kmeans(k: int, key: tuple[int, ...], alone: bool = False) -> KMeans:
        return KMeans(
            k,
            init=init,
            n_iters=p.n_iters,
            tol=tol,
            random_state=_child_seed(seed, *key),
            device=dev,
            dtype=dt,
            block_size=block_size,
            centroid_block_size=centroid_block_size,
            matmul_precision=matmul_precision,
            distributed=False if alone else distributed,
        )

    km = kmeans(p.n_clusters, (0, 0))
    km._validate()
    km._fit_rows(rows)
    centers, labels, sq = km._centers_tensor, km.labels_, km.sq_distances_
    histories = [km.potential_history_]
    block_rows, centroid_block = block_sizes(dev, p.n_clusters, block_size, centroid_block_size)
    for step in range(1, p.n_resampling_steps):
        if p.sampling_strategy == "c":
            keys = sq
        else:
            keys = np.random.default_rng(_child_seed(seed, 1, step)).random(rows.n)
        pool = _first_per_cluster(labels, keys, p.n_clusters, p.sample_size)
        if len(pool) < p.n_clusters:
            raise InvalidArgumentError(
                f"resampling step {step} pooled only {len(pool)} inputs for "
                f"n_clusters={p.n_clusters} (empty clusters); increase sample_size="
                f"{p.sample_size}"
            )
        km = kmeans(p.n_clusters, (0, step))
        km._validate()
        km._fit_rows(Rows(rows.take(pool), dev, dt))
        centers = km._centers_tensor
        with matmul_precision_scope(dev, matmul_precision):
            lab, dist = assign_all(
                rows, centers, block_rows, centroid_block, Comm(distributed, rows.n)
            )
        labels, sq = lab.cpu().numpy(), dist.cpu().numpy()
        histories.append(km.potential_history_)
    centroids = centers.cpu().to(dist_dtype(dt)).numpy()
    if p.n_splits > 1:
        centroids, labels, sq = _split(rows, labels, p, kmeans)
    return _level_result(centroids, labels, sq, histories)


def _split(
    rows: Rows,
    labels: np.ndarray,
    p: _LevelParams,
    make_kmeans: Callable[[int, tuple[int, ...], bool], KMeans],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split every cluster into up to ``n_splits`` sub-clusters; drop empty ones."""
    members, offsets, _ = sort_clusters(labels, np.zeros(len(labels)), p.n_clusters)
    new_labels = np.empty(rows.n, dtype=np.int64)
    new_sq = np.empty(rows.n, dtype=np.float64)
    centroids: list[np.ndarray] = []
    for j in range(p.n_clusters):
        idx = members[offsets[j] : offsets[j + 1]]
        if len(idx) == 0:
            continue
        km = make_kmeans(min(p.n_splits, len(idx)), (2, j), True)
        km._validate()
        km._fit_rows(Rows(rows.take(idx), rows.device, rows.dtype))
        used, sub = np.unique(km.labels_, return_inverse=True)
        new_labels[idx] = len(centroids) + sub
        new_sq[idx] = km.sq_distances_
        centroids.extend(km.cluster_centers_[used])
    return np.stack(centroids), new_labels, new_sq.astype(km.sq_distances_.dtype)


def _level_result(
    centroids: np.ndarray,
    labels: np.ndarray,
    sq_distances: np.ndarray,
    histories: list[list[float]],
) -> LevelResult:
    k = centroids.shape[0]
    members, offsets, distances = sort_clusters(labels, sq_distances, k)
    sizes = np.diff(offsets)
    return LevelResult(
        centroids=centroids,
        labels=labels.astype(np.int64, copy=False),
        sq_distances=sq_distances,
        members=members,
        offsets=offsets,
        distances=distances,
        sizes=sizes,
        inertia=float(sq_distances.sum(dtype=np.float64)),
        n_empty=int((sizes == 0).sum()),
        potential_history=histories,
    )


# --------------------------------------------------------------------------------------
# Hierarchical k-means
# --------------------------------------------------------------------------------------


def _per_level(name: str, value: Any, n_levels: int) -> list[Any]:
    """Make a per-level list from a list (length checked) or a scalar (repeated)."""
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        return [value] * n_levels
    values = list(value)
    if len(values) != n_levels:
        raise InvalidArgumentError(
            f"{name} has {len(values)} entries ({values!r}) but n_levels={n_levels}; "
            "give one value per level"
        )
    return values


class HierarchicalKMeans:
    """Hierarchical k-means with resampling (Vo et al. 2024; docs/design.md section 4).

    Level 0 clusters the input points; level ``l + 1`` clusters the centroids of level
    ``l`` (unweighted, which flattens the density). Each level runs
    :func:`cluster_level`. Per-level parameters are lists with one entry per level; a
    scalar is used for every level.

    Parameters
    ----------
    n_clusters : list of int
        Clusters per level; ``n_clusters[0] <= n_samples`` and each level at most the
        number of centroids of the level below.
    n_levels : int, optional
        Number of levels (default ``len(n_clusters)``; must match it).
    n_iters : int or list of int
        Lloyd updates per k-means run.
    n_resampling_steps : int or list of int
        Steps per level, counting the first full run (1 = no resampling).
    sample_size : int or list of int, optional
        Inputs per cluster taken by a resampling step.
    sampling_strategy : str or list of str
        ``'r'`` (random members) or ``'c'`` (closest to the centroid).
    n_splits : int or list of int
        Sub-clusters per cluster (1 = no split). Not combined with resampling.
    init, tol, random_state, device, dtype, block_size, centroid_block_size
        As for :class:`KMeans`; level ``l`` uses stream ``(l,)`` of ``random_state``.
    matmul_precision, distributed
        As for :func:`cluster_level`.

    Attributes
    ----------
    levels_ : list of LevelResult
        Everything learned, per level.
    centroids_ : list of numpy.ndarray, shape (k_l, d)
        Centroids per level.
    labels_ : list of numpy.ndarray of int64
        ``labels_[l][i]``: cluster of level-``l`` input ``i`` (a point for ``l = 0``, a
        level-``l - 1`` centroid otherwise).
    members_, offsets_, distances_ : list of numpy.ndarray
        Per level, the clusters sorted by distance to their centroid, as flat CSR arrays
        (see :func:`sort_clusters`).
    inertia_ : list of float
        Per level, sum of squared distances of the level's inputs to their centroids.
    n_empty_ : list of int
        Per level, clusters without inputs.
    cluster_sizes_ : list of numpy.ndarray of int64
        Per level, inputs per cluster.
    n_features_in_ : int
        Feature dimension ``d``.
    """

    def __init__(
        self,
        n_clusters: Sequence[int],
        *,
        n_levels: int | None = None,
        n_iters: int | Sequence[int] = 20,
        n_resampling_steps: int | Sequence[int] = 1,
        sample_size: int | Sequence[int] | None = None,
        sampling_strategy: str | Sequence[str] = "r",
        n_splits: int | Sequence[int] = 1,
        init: str = "k-means++",
        tol: float | None = None,
        random_state: Any = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
        block_size: int | None = None,
        centroid_block_size: int | None = None,
        matmul_precision: str = "highest",
        distributed: bool | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_levels = n_levels
        self.n_iters = n_iters
        self.n_resampling_steps = n_resampling_steps
        self.sample_size = sample_size
        self.sampling_strategy = sampling_strategy
        self.n_splits = n_splits
        self.init = init
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.centroid_block_size = centroid_block_size
        self.matmul_precision = matmul_precision
        self.distributed = distributed

    def level_params(self) -> list[_LevelParams]:
        """Validate and return the parameters of every level (raises InvalidArgumentError)."""
        if isinstance(self.n_clusters, str) or not isinstance(
            self.n_clusters, Sequence | np.ndarray
        ):
            raise InvalidArgumentError(
                f"n_clusters={self.n_clusters!r} must be a list with one integer per level"
            )
        n_levels = len(self.n_clusters) if self.n_levels is None else self.n_levels
        n_levels = check_int("n_levels", n_levels, 1)
        lists = {
            name: _per_level(name, getattr(self, name), n_levels)
            for name in (
                "n_clusters",
                "n_iters",
                "n_resampling_steps",
                "sample_size",
                "sampling_strategy",
                "n_splits",
            )
        }
        params = [
            _validate_level(*(lists[name][lvl] for name in lists), where=f"[{lvl}]")
            for lvl in range(n_levels)
        ]
        for lvl in range(1, n_levels):
            below = params[lvl - 1]
            if below.n_splits == 1 and params[lvl].n_clusters > below.n_clusters:
                raise InvalidArgumentError(
                    f"n_clusters[{lvl}]={params[lvl].n_clusters} must be <= "
                    f"n_clusters[{lvl - 1}]={below.n_clusters} (the inputs of level {lvl} "
                    f"are the centroids of level {lvl - 1})"
                )
        return params

    def fit(
        self,
        X: Array,  # noqa: N803
        *,
        completed_levels: Sequence[LevelResult] = (),
        last_level: int | None = None,
        level_callback: Callable[[int, LevelResult], None] | None = None,
    ) -> HierarchicalKMeans:
        """Cluster ``X`` level by level.

        Parameters
        ----------
        X : array or tensor, shape (n, d)
            Points; a ``np.memmap`` is read block by block. Not read when
            ``completed_levels`` already holds level 0.
        completed_levels : sequence of LevelResult, optional
            Results of the first levels from an earlier fit with the same parameters, data
            and an integer ``random_state``; fitting continues with the next level and
            gives what an uninterrupted fit gives.
        last_level : int, optional
            Stop after this level (default: the top one, ``n_levels - 1``); with
            ``completed_levels`` this runs one level at a time, e.g. one SLURM job per level.
        level_callback : callable, optional
            Called as ``level_callback(level, result)`` after each level (e.g. to save it).

        Returns
        -------
        HierarchicalKMeans
            self, fitted; the learned lists hold the levels up to ``last_level``.
        """
        params = self.level_params()
        check_choice("init", self.init, VALID_INITS)
        check_tol(self.tol)
        check_random_state(self.random_state)
        dev, dt = resolve_torch_device(self.device), resolve_dtype(self.dtype)
        check_block_size("block_size", self.block_size)
        check_block_size("centroid_block_size", self.centroid_block_size)
        top = len(params) - 1
        last = top if last_level is None else check_int("last_level", last_level, 0, top)
        levels = list(completed_levels)
        if len(levels) > last + 1:
            raise InvalidArgumentError(
                f"completed_levels has {len(levels)} levels but last_level={last}; "
                f"give at most {last + 1}"
            )
        seed = _seed_sequence(self.random_state)
        if levels:
            n_features = levels[0].centroids.shape[1]
        else:
            rows = Rows(X, dev, dt)
            n_features = rows.d
            if params[0].n_clusters > rows.n:
                raise InvalidArgumentError(
                    f"n_clusters[0]={params[0].n_clusters} must be <= n_samples={rows.n}"
                )
        for lvl in range(len(levels), last + 1):
            inputs = rows if lvl == 0 else Rows(levels[-1].centroids, dev, dt)
            p = params[lvl]
            if p.n_clusters > inputs.n:
                raise InvalidArgumentError(
                    f"n_clusters[{lvl}]={p.n_clusters} must be <= {inputs.n}, the number "
                    f"of centroids of level {lvl - 1}"
                )
            result = cluster_level(
                inputs,
                p.n_clusters,
                n_iters=p.n_iters,
                n_resampling_steps=p.n_resampling_steps,
                sample_size=p.sample_size,
                sampling_strategy=p.sampling_strategy,
                n_splits=p.n_splits,
                init=self.init,
                tol=self.tol,
                random_state=_child_seed(seed, lvl),
                device=dev,
                dtype=dt,
                block_size=self.block_size,
                centroid_block_size=self.centroid_block_size,
                matmul_precision=self.matmul_precision,
                distributed=self.distributed,
            )
            levels.append(result)
            if level_callback is not None:
                level_callback(lvl, result)
        self._set_levels(levels, n_features)
        return self

    def _set_levels(self, levels: list[LevelResult], n_features: int) -> None:
        self.levels_ = levels
        self.centroids_ = [r.centroids for r in levels]
        self.labels_ = [r.labels for r in levels]
        self.members_ = [r.members for r in levels]
        self.offsets_ = [r.offsets for r in levels]
        self.distances_ = [r.distances for r in levels]
        self.inertia_ = [r.inertia for r in levels]
        self.n_empty_ = [r.n_empty for r in levels]
        self.cluster_sizes_ = [r.sizes for r in levels]
        self.n_features_in_ = n_features

    def _check_level(self, level: Any) -> int:
        if not hasattr(self, "levels_"):
            raise NotFittedError("this HierarchicalKMeans is not fitted yet; call fit(X) first")
        return check_int("level", level, 0, len(self.levels_) - 1)

    def point_labels(self, level: int) -> np.ndarray:
        """Level-``level`` cluster of every original point, shape (n,), int64."""
        level = self._check_level(level)
        labels = self.labels_[0]
        for lvl in range(1, level + 1):
            labels = self.labels_[lvl][labels]
        return labels

    def cluster_sizes_in_points(self, level: int) -> np.ndarray:
        """Original points under each level-``level`` cluster, shape (k_level,), int64."""
        level = self._check_level(level)
        k = self.centroids_[level].shape[0]
        return np.bincount(self.point_labels(level), minlength=k).astype(np.int64)
