"""Hierarchical k-means with resampling (Vo et al. 2024) over arrays: levels, steps, splits.

The algorithm layer of the clustering step (docs/design.md section 4) above
:mod:`astrocurate.algorithms.kmeans.estimator`: each level clusters the centroids of the
level below with :class:`~astrocurate.algorithms.kmeans.estimator.KMeans`, then refines them
with resampling steps (k-means on a pool of the ``sample_size`` points nearest each
centroid, ``'r'`` random or ``'c'`` closest); ``n_splits`` clusters the points in
independent splits. Outputs are numpy arrays; files, MLflow and the command line live in
:mod:`astrocurate.stages.clustering`.

:func:`fit_levels` is the one level loop: :class:`HierarchicalKMeans`, the benchmark and
the clustering stage (:func:`astrocurate.stages.clustering.levels.compute_levels`) all run
it, the stage adding its level files, checkpoints, stop requests and ranks through hooks
(:class:`LevelLoopHooks`, :class:`LevelHooks`).

Conventions
-----------
* The loop numbers levels from 1, as the design notes and the stage: level 1 clusters the
  input points, level ``L + 1`` the centroids of level ``L``. :class:`HierarchicalKMeans`
  keeps list-style 0-based indices in its API (``labels_[0]`` is level 1); its hooks
  convert, in one place.
* One independent random stream per (level, step), derived with ``SeedSequence(entropy,
  spawn_key=...)``, so any level or resampling step can be recomputed (or resumed) on its
  own: level ``L`` uses stream ``(L - 1,)`` (:func:`level_seed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from astrocurate.algorithms.kmeans.checks import check_int
from astrocurate.algorithms.kmeans.estimator import NotFittedError
from astrocurate.algorithms.kmeans.level import (
    KMeansSettings,
    LevelHooks,
    LevelParams,
    LevelResult,
    NoLevelHooks,
    checked_settings,
    child_seed,
    run_level,
    seed_sequence,
    validate_level,
)
from astrocurate.algorithms.kmeans.rows import Array, Rows
from astrocurate.errors import InvalidArgumentError

__all__ = ["HierarchicalKMeans", "LevelLoopHooks", "fit_levels", "level_seed"]


# --------------------------------------------------------------------------------------
# The level loop: one for HierarchicalKMeans, its benchmark and the clustering stage
# --------------------------------------------------------------------------------------


def level_seed(seed: np.random.SeedSequence, level: int) -> np.random.SeedSequence:
    """Stream of ``level`` (1-based): ``(level - 1,)`` of ``seed``.

    The one place where the 1-based level number meets the 0-based stream key.
    """
    return child_seed(seed, level - 1)


class LevelLoopHooks(Protocol):
    """What a caller adds to the level loop of :func:`fit_levels` (levels are 1-based).

    The clustering stage restores complete levels from its files, writes each new level,
    keeps per-level checkpoints and synchronises its ranks through these calls;
    :class:`HierarchicalKMeans` restores ``completed_levels`` and calls its
    ``level_callback``.
    """

    def before_level(self, level: int) -> None:
        """Prepare ``level`` (before anything else is done for it)."""

    def completed_level(self, level: int) -> LevelResult | None:
        """Return ``level`` when an earlier attempt completed it (its inputs are not read)."""

    def check_inputs(self, level: int, n_clusters: int, n_inputs: int) -> None:
        """Raise InvalidArgumentError when ``level`` cannot make ``n_clusters`` clusters."""

    def level_hooks(self, level: int) -> LevelHooks:
        """Return the hooks of the computation of ``level``."""

    def level_done(self, level: int, result: LevelResult, seconds: float) -> None:
        """Take note of ``level``, computed now in ``seconds``."""

    def after_levels(self) -> None:
        """Finish, once the last level is there."""


def fit_levels(
    X: Array | None,  # noqa: N803
    params: Sequence[LevelParams],
    seed: np.random.SeedSequence,
    settings: KMeansSettings,
    hooks: LevelLoopHooks,
    last_level: int | None = None,
) -> list[LevelResult]:
    """Cluster level by level: level 1 clusters ``X``, level ``L + 1`` the centroids of ``L``.

    Parameters
    ----------
    X : array or tensor, shape (n, d), or None
        Level-1 inputs; read only when level 1 is not completed already.
    params : sequence of LevelParams
        ``params[L - 1]`` holds the parameters of level ``L`` (checked).
    seed : numpy.random.SeedSequence
        Root stream; level ``L`` uses :func:`level_seed`.
    settings : KMeansSettings
        How the k-means runs are computed.
    hooks : LevelLoopHooks
        Restores, checkpoints, stops and progress.
    last_level : int, optional
        Stop after this level (1-based; default the top one).

    Returns
    -------
    list of LevelResult
        Levels 1 to ``last_level``.
    """
    last = len(params) if last_level is None else last_level
    levels: list[LevelResult] = []
    for level in range(1, last + 1):
        hooks.before_level(level)
        result = hooks.completed_level(level)
        if result is None:
            started = time.perf_counter()
            inputs = X if level == 1 else levels[-1].centroids
            rows = Rows(inputs, settings.device, settings.dtype)
            p = params[level - 1]
            hooks.check_inputs(level, p.n_clusters, rows.n)
            result = run_level(
                rows,
                p,
                level_seed(seed, level),
                settings,
                hooks.level_hooks(level),
                where=f"level {level}: ",
            )
            hooks.level_done(level, result, time.perf_counter() - started)
        levels.append(result)
    hooks.after_levels()
    return levels


class _EstimatorHooks:
    """The level-loop hooks of :meth:`HierarchicalKMeans.fit` (0-based levels outside).

    ``completed`` and ``level_callback`` index levels from 0 (level ``L`` of the loop is
    index ``L - 1``): the conversion happens here and nowhere else.
    """

    def __init__(
        self,
        completed: Sequence[LevelResult],
        level_callback: Callable[[int, LevelResult], None] | None,
    ) -> None:
        self.completed = list(completed)
        self.level_callback = level_callback

    def before_level(self, level: int) -> None:
        """Do nothing."""

    def completed_level(self, level: int) -> LevelResult | None:
        """Return the given ``completed_levels[level - 1]``, if any."""
        return self.completed[level - 1] if level <= len(self.completed) else None

    def check_inputs(self, level: int, n_clusters: int, n_inputs: int) -> None:
        """Raise when ``n_clusters`` exceeds the level's inputs (0-based names)."""
        if n_clusters <= n_inputs:
            return
        index = level - 1
        if level == 1:
            raise InvalidArgumentError(
                f"n_clusters[0]={n_clusters} must be <= n_samples={n_inputs}"
            )
        raise InvalidArgumentError(
            f"n_clusters[{index}]={n_clusters} must be <= {n_inputs}, the number "
            f"of centroids of level {index - 1}"
        )

    def level_hooks(self, level: int) -> LevelHooks:
        """No checkpoints."""
        return NoLevelHooks()

    def level_done(self, level: int, result: LevelResult, seconds: float) -> None:
        """Call ``level_callback(level - 1, result)``."""
        if self.level_callback is not None:
            self.level_callback(level - 1, result)

    def after_levels(self) -> None:
        """Do nothing."""


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

    Index 0 clusters the input points; index ``l + 1`` clusters the centroids of index
    ``l`` (unweighted, which flattens the density). The API indexes levels like lists,
    from 0: index ``l`` is level ``l + 1`` of :func:`fit_levels`, the loop that runs the
    levels here and in the clustering stage (with stream ``(l,)`` of ``random_state``).
    Per-level parameters are lists with one entry per level; a scalar is used for every
    level.

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
        As for :class:`~astrocurate.algorithms.kmeans.estimator.KMeans`; index ``l`` uses
        stream ``(l,)`` of ``random_state``.
    matmul_precision, distributed
        As for :func:`~astrocurate.algorithms.kmeans.level.cluster_level`.

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

    def level_params(self) -> list[LevelParams]:
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
            validate_level(*(lists[name][lvl] for name in lists), where=f"[{lvl}]")
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
        """Cluster ``X`` level by level (with :func:`fit_levels`).

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
        settings = checked_settings(
            self.init,
            self.tol,
            self.random_state,
            self.device,
            self.dtype,
            self.block_size,
            self.centroid_block_size,
            self.matmul_precision,
            self.distributed,
        )
        top = len(params) - 1
        last = top if last_level is None else check_int("last_level", last_level, 0, top)
        if len(completed_levels) > last + 1:
            raise InvalidArgumentError(
                f"completed_levels has {len(completed_levels)} levels but last_level={last}; "
                f"give at most {last + 1}"
            )
        hooks = _EstimatorHooks(completed_levels, level_callback)
        seed = seed_sequence(self.random_state)
        levels = fit_levels(X, params, seed, settings, hooks, last_level=last + 1)
        self._set_levels(levels, levels[0].centroids.shape[1])
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
