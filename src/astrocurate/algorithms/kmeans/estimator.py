"""K-means (greedy k-means++ and Lloyd, blockwise, CPU and CUDA) as an estimator over arrays.

This is the algorithm layer of the clustering step (docs/design.md section 4), written from that
description. It knows no files, no MLflow and no command line: inputs are arrays (numpy
arrays, ``np.memmap`` included, or torch tensors) and outputs are numpy arrays.

The parts live in their own modules: :mod:`~astrocurate.algorithms.kmeans.rows` (reading
the input block by block on the device), :mod:`~astrocurate.algorithms.kmeans.assignment`
(nearest-centre search and float64 sums), :mod:`~astrocurate.algorithms.kmeans.bounds`
(exact pruning of Lloyd passes) and :mod:`~astrocurate.algorithms.kmeans.seeding` (greedy
k-means++); this module holds the estimator and its live state.

Randomness: every random choice comes from a :class:`numpy.random.Generator` on the host,
built from ``random_state`` (``None``, a non-negative int, a
:class:`numpy.random.SeedSequence` or a :class:`numpy.random.Generator`). The same seed
therefore draws the same numbers on every device, and on the CPU the same seed gives
bit-identical results. :class:`astrocurate.algorithms.kmeans.hierarchical.HierarchicalKMeans`
derives one independent stream per (level, step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from astrocurate.algorithms.kmeans.assignment import (
    Pass,
    assign,
    assign_pass,
    fused_assignment,
    update_centers,
)
from astrocurate.algorithms.kmeans.bounds import PruningBounds, pruned_pass, score_error_factor
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
from astrocurate.algorithms.kmeans.rows import (
    Array,
    Rows,
    block_sizes,
    check_finite,
    dist_dtype,
    matmul_precision_scope,
    resolve_dtype,
    resolve_torch_device,
)
from astrocurate.algorithms.kmeans.seeding import GreedySeeding
from astrocurate.errors import AstrocurateError, InvalidArgumentError

__all__ = ["KMeans", "KMeansState", "NotFittedError"]


class NotFittedError(AstrocurateError, AttributeError):
    """An estimator's learned state was used before ``fit``."""


@dataclass
class KMeansState:
    """Live state of a :class:`KMeans` fit, handed to ``callback`` and accepted by ``fit``.

    The tensors are the ones the fit works on: a callback that keeps them must copy them
    (:meth:`state_dict` does). ``fit(X, state=...)`` continues from a state, so a
    checkpoint taken by a callback and restored with :meth:`from_state_dict` resumes the
    fit and gives the same result as an uninterrupted one.

    Attributes
    ----------
    phase : str
        ``"init"`` while greedy k-means++ picks centres, ``"lloyd"`` during Lloyd
        iterations, ``"done"`` at the end.
    step : int
        Centres chosen so far (``"init"``) or Lloyd updates done (``"lloyd"``).
    centers : torch.Tensor, shape (k, d)
        Current centres; during ``"init"`` only the first ``step`` rows are set.
    center_indices : numpy.ndarray of int64, shape (k,)
        Input row of each initial centre (-1 where not chosen yet).
    min_sq_distances : torch.Tensor, shape (n,), or None
        During ``"init"``: squared distance of every row to its nearest chosen centre.
    potential_history : list of float
        ``potential_history[t]`` is the potential (sum of squared distances to the
        nearest centre) of the centres after ``t`` Lloyd updates.
    rng : numpy.random.Generator
        The generator the fit draws from.
    nearest_centers : torch.Tensor of int64, shape (n,), or None
        During ``"init"``: the chosen centre each row's ``min_sq_distances`` is measured
        to (the k-means++ bounds); None where they are not used.
    """

    phase: str
    step: int
    centers: torch.Tensor
    center_indices: np.ndarray
    min_sq_distances: torch.Tensor | None
    potential_history: list[float]
    rng: np.random.Generator
    nearest_centers: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        """Copy the state into plain Python and numpy objects (for a checkpoint)."""
        return {
            "phase": self.phase,
            "step": self.step,
            "centers": self.centers.detach().cpu().to(torch.float64).numpy().copy(),
            "center_indices": self.center_indices.copy(),
            "min_sq_distances": _numpy_copy(self.min_sq_distances),
            "nearest_centers": _numpy_copy(self.nearest_centers),
            "potential_history": list(self.potential_history),
            "rng_state": self.rng.bit_generator.state,
        }

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Any],
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
    ) -> KMeansState:
        """Rebuild a state saved by :meth:`state_dict` on ``device`` in ``dtype``."""
        dev, dt = resolve_torch_device(device), resolve_dtype(dtype)
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state["rng_state"]
        d2, nearest = state["min_sq_distances"], state.get("nearest_centers")
        return cls(
            phase=state["phase"],
            step=int(state["step"]),
            centers=torch.as_tensor(state["centers"]).to(dev, dt),
            center_indices=np.asarray(state["center_indices"], dtype=np.int64).copy(),
            min_sq_distances=None if d2 is None else torch.as_tensor(d2).to(dev),
            potential_history=list(state["potential_history"]),
            rng=rng,
            nearest_centers=None if nearest is None else torch.as_tensor(nearest).to(dev),
        )


def _numpy_copy(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().cpu().numpy().copy()


class KMeans:
    """K-means with greedy k-means++ (or random) initialisation and Lloyd iterations.

    Parameters
    ----------
    n_clusters : int
        Number of clusters ``k`` (1 <= k <= n_samples).
    init : {"k-means++", "random"}
        ``"k-means++"``: greedy k-means++ (first centre uniform; each further centre is
        the best of ``2 + floor(ln k)`` candidates drawn with probability proportional to
        the squared distance to the nearest chosen centre, "best" meaning the lowest
        resulting potential). ``"random"``: k distinct input rows, uniformly.
    n_iters : int
        Number of Lloyd updates (>= 0).
    tol : float, optional
        Stop early once an update lowers the potential by at most ``tol`` times its
        previous value (``tol=0`` stops when it stops decreasing). None: always run
        ``n_iters`` updates.
    random_state : None, int, numpy.random.SeedSequence or numpy.random.Generator
        Seed of the random choices (drawn on the host, see the module notes).
    device : str or torch.device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    dtype : str or torch.dtype
        Compute dtype: float32 (default), float64, float16 or bfloat16. Sums are always
        accumulated in float64.
    block_size : int, optional
        Rows per block (default 8192 on CPU, 65536 on CUDA).
    centroid_block_size : int, optional
        Centroids per block (default: at most 2**23 scores per block on CPU, 2**28 on CUDA).
    matmul_precision : {"highest", "tf32"}
        ``"tf32"`` lets the distance matmuls use TF32 on CUDA (10-bit mantissa products;
        the exact distances and the float64 sums are unchanged). For float32 the Lloyd
        assignment then runs in one fused Triton kernel
        (:mod:`astrocurate.algorithms.kmeans.nearest_kernel`:
        TF32 product and argmin without writing the score matrix). Ignored on the CPU.
    distributed : bool, optional
        None (default): when ``torch.distributed`` is initialised with several ranks, each
        rank assigns a contiguous slice of the rows and the float64 sums, counts and
        potentials are all-reduced (see
        :func:`astrocurate.algorithms.kmeans.distributed.init_distributed`);
        otherwise one process.
        False: this process alone. True: as None, but an error without a process group.
    bounds : bool, optional
        True: skip the distance GEMM of the rows whose label provably stays (Hamerly's
        triangle-inequality bounds, with the rounding error of the scores accounted for),
        which makes later Lloyd iterations several times cheaper. The labels, distances
        and centres are those of the full computation. False: every row against every
        centre in every iteration, and in every k-means++ step. None (default): True,
        except where the fused CUDA kernel assigns the rows (float32,
        ``matmul_precision="tf32"``, Triton present), whose full pass costs less than the
        bounds' bookkeeping; greedy k-means++ uses its own bounds (see Notes) unless
        ``bounds=False``. float16/bfloat16 are never pruned.

    Attributes
    ----------
    cluster_centers_ : numpy.ndarray, shape (k, d)
        Final centres, exactly as used for the final assignment (float32, or float64 when
        ``dtype`` is float64).
    labels_ : numpy.ndarray of int64, shape (n,)
        Nearest final centre of each row.
    sq_distances_ : numpy.ndarray, shape (n,)
        Squared distance of each row to its centre.
    inertia_ : float
        Sum of ``sq_distances_`` (float64).
    n_iter_ : int
        Lloyd updates done.
    potential_history_ : list of float
        Potential after 0, 1, ..., ``n_iter_`` updates; non-increasing up to rounding.
    init_indices_ : numpy.ndarray of int64, shape (k,)
        Input rows chosen as initial centres.
    n_features_in_ : int
        Number of features ``d``.
    n_ranks_ : int
        Ranks the fit was shared by (1: one process).
    n_recomputed_ : list of int
        With ``bounds``: per Lloyd pass, the rows (of this rank) that were scored again
        (all rows in the first pass; later, against the centres of the groups their bounds
        could not rule out); the others kept their label on the strength of the bounds.
        Empty without pruning.

    Notes
    -----
    Checkpointing: ``fit(X, callback=f)`` calls ``f(state)`` after every k-means++ centre
    (after every batch of up to 64 where the fused steps run, see below) and every Lloyd
    update with the live :class:`KMeansState`; ``f`` may save
    ``state.state_dict()`` (every N steps, say), and ``fit(X, state=...)`` with the state
    restored by :meth:`KMeansState.from_state_dict` resumes to the same result. The work is
    split into small steps over that state (``_init_state``, :class:`GreedySeeding` steps,
    ``_lloyd_step``), the places where the distributed form reduces partial potentials,
    sums and counts across ranks.

    Distributed (docs/design.md section 6): every rank calls ``fit`` with the whole input (a
    memmap is not read beyond the rank's slice and a few rows by index) and the same
    seed. All ranks draw the same random numbers; a k-means++ candidate is found by the
    rank whose slice holds it and shared. The result equals the one-process result up to
    the order of the float64 sums. ``labels_`` and ``sq_distances_`` are gathered, so
    every rank holds all of them. A ``callback`` runs on every rank; during ``"init"``
    its ``min_sq_distances`` covers that rank's rows only.

    Cost: greedy k-means++ evaluates ``2 + floor(ln k)`` candidates per centre in one pass
    over the rows, keeping an ``(n, n_candidates)`` buffer of candidate distances. Its
    bounds keep each row's nearest chosen centre (8 bytes per row) and score only the
    rows that the triangle inequality cannot rule out (``GreedySeeding.seeding_rows``): once the
    centres are dense, a few per cent of the rows per centre; the step then costs one
    ``n_candidates x step`` product and a few passes over ``n`` scalars. In one process,
    with float32 rows held whole on CUDA, the steps after the first run in two Triton
    kernels (:mod:`~astrocurate.algorithms.kmeans.seeding_kernel`: the bounds test, the
    scoring and the update of ``D^2``) with the winner chosen on the device, so the host
    reads the device twice per batch of 64 centres instead of twice per centre. A Lloyd
    iteration is one pass whose cost is the ``n x k x d`` matrix product, done in blocks.
    With ``bounds`` (Yinyang-style: centres in ``min(64, k // 10)`` groups, one lower
    bound per row and group, 4 bytes each) only the rows whose bounds do not prove their
    label are scored again, and only against the centres of the groups that their bounds
    do not rule out (the group filter: typically a few of the 64). The first pass, which
    also computes the exact group minima, costs 1.4-2.3x a plain one; later passes on the
    benchmark's mixtures cost a fraction of one (BENCHMARKS.md).

    Exactness of the pruning: a row keeps its label without the product only when the
    exact distance to its centre (rounded up) plus twice a bound of the rounding error of
    the float scores is below the square of a lower bound of its distance to every other
    centre, so the scores of the full product would pick the same label (strictly). The
    bounds move with the centres by the triangle inequality and are stored rounded down.
    A group is left out for a row by the same test with its own lower bound. The other
    rows are gathered and scored by one product per group; products of another shape may
    round differently, so a row whose best two scores lie within twice the error bound of
    each other (a near-tie) gets its label from the full pass's own product and argmin
    (a BLAS that rounded a product element differently for another row count could differ
    from the full pass on such near-ties only, as the full pass itself could for another
    ``block_size``; MKL here gives identical labels, tested); distances and sums are
    computed by the same calls on the same blocks, hence bit-identical. The k-means++
    bounds leave out only rows whose ``D^2`` the full pass would keep (with the same
    error bound); the rows left are scored by products of another row count, so two
    candidates whose gains tie to rounding could be ranked differently than by the full
    pass (the tests find the same initial rows with and without the bounds).
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        init: str = "k-means++",
        n_iters: int = 20,
        tol: float | None = None,
        random_state: Any = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
        block_size: int | None = None,
        centroid_block_size: int | None = None,
        matmul_precision: str = "highest",
        distributed: bool | None = None,
        bounds: bool | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.n_iters = n_iters
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.centroid_block_size = centroid_block_size
        self.matmul_precision = matmul_precision
        self.distributed = distributed
        self.bounds = bounds

    # -- public API ---------------------------------------------------------------------

    def fit(
        self,
        X: Array | Rows,  # noqa: N803
        *,
        state: KMeansState | None = None,
        callback: Callable[[KMeansState], None] | None = None,
    ) -> KMeans:
        """Cluster the rows of ``X``.

        Parameters
        ----------
        X : array, tensor or Rows, shape (n, d)
            Points; a ``np.memmap`` is read block by block. A
            :class:`~astrocurate.algorithms.kmeans.rows.Rows` on this estimator's device
            and dtype is used as it is (with what it has already loaded or computed).
        state : KMeansState, optional
            Continue a fit from this state (e.g. restored from a checkpoint) instead of
            starting afresh; it must come from the same parameters and ``X``.
        callback : callable, optional
            Called with the live :class:`KMeansState` after each k-means++ centre (each
            batch of centres where the fused steps run) and after each Lloyd update (e.g.
            to checkpoint every N steps).

        Returns
        -------
        KMeans
            self, fitted.
        """
        self._validate()
        reuse = isinstance(X, Rows) and (X.device, X.dtype) == (self._device, self._dtype)
        rows = (
            X if reuse else Rows(X.source if isinstance(X, Rows) else X, self._device, self._dtype)
        )
        return self._fit_rows(rows, state=state, callback=callback)

    def predict(self, X: Array) -> np.ndarray:  # noqa: N803
        """Nearest fitted centre of each row of ``X``, shape (n,), int64."""
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError("this KMeans is not fitted yet; call fit(X) first")
        labels, _ = assign(
            X,
            self.cluster_centers_,
            block_size=self.block_size,
            centroid_block_size=self.centroid_block_size,
            device=self._device,
            dtype=self._dtype,
        )
        return labels

    def fit_predict(self, X: Array) -> np.ndarray:  # noqa: N803
        """Fit on ``X`` and return ``labels_``."""
        return self.fit(X).labels_

    # -- steps: small, with all their state in a KMeansState (checkpoint / resume) -------

    def _init_state(
        self, rows: Rows, local: Rows, comm: Comm, seeding: GreedySeeding
    ) -> KMeansState:
        """Start a fit: draw the random initial centres, or the first k-means++ centre.

        ``rows`` are all the inputs (read only by index), ``local`` this rank's slice of
        them; every rank draws the same numbers from the same seed.
        """
        k = self.n_clusters
        rng = np.random.default_rng(self.random_state)
        state = KMeansState(
            phase="init",
            step=0,
            centers=torch.empty((k, rows.d), dtype=self._dtype, device=self._device),
            center_indices=np.full(k, -1, dtype=np.int64),
            min_sq_distances=None,
            potential_history=[],
            rng=rng,
        )
        if self.init == "random":
            chosen = np.sort(rng.choice(rows.n, size=k, replace=False)).astype(np.int64)
            state.centers = rows.take(chosen).clone()
            state.center_indices = chosen
            state.phase = "lloyd"
        else:
            seeding.first(rows, local, comm, state)
        return state

    def _lloyd_step(self, local: Rows, comm: Comm, state: KMeansState) -> Pass | None:
        """Run one Lloyd iteration: assign, record the potential, update the centres.

        Each rank assigns its rows; the float64 sums, the counts and the potential are
        summed over the ranks, so every rank computes the same new centres.

        Returns
        -------
        Pass or None
            None while iterating; once the fit is complete (``n_iters`` updates done, or
            early stop) the last assignment pass (this rank's rows), which matches
            ``state.centers``.
        """
        block_rows, centroid_block = self._blocks(self.n_clusters)
        done = state.step >= self.n_iters
        rho = score_error_factor(self._dtype, local.d, local.device) if self._bounds() else None
        if rho is None:
            result = assign_pass(local, state.centers, block_rows, centroid_block, not done)
        else:
            result = pruned_pass(
                local, state.centers, block_rows, centroid_block, not done, self._pruning, rho
            )
        history = state.potential_history
        history.append(comm.sum_float(result.potential, local.device))
        if not done and self.tol is not None and len(history) >= 2:
            done = history[-2] - history[-1] <= self.tol * history[-2]
        if done:
            return result
        sums, counts = comm.sum_(result.sums), comm.sum_(result.counts)
        state.centers = update_centers(sums, counts, state.centers)
        state.step += 1
        return None

    # -- internals ----------------------------------------------------------------------

    def _validate(self) -> None:
        check_int("n_clusters", self.n_clusters, 1)
        check_choice("init", self.init, VALID_INITS)
        check_int("n_iters", self.n_iters, 0)
        check_tol(self.tol)
        check_random_state(self.random_state)
        self._device = resolve_torch_device(self.device)
        self._dtype = resolve_dtype(self.dtype)
        check_block_size("block_size", self.block_size)
        check_block_size("centroid_block_size", self.centroid_block_size)
        check_choice("matmul_precision", self.matmul_precision, VALID_PRECISIONS)
        check_distributed(self.distributed)
        if self.bounds is not None and not isinstance(self.bounds, bool):
            raise InvalidArgumentError(f"bounds={self.bounds!r} must be True, False or None")

    def _bounds(self) -> bool:
        """Whether Lloyd passes prune: ``bounds``, or by default unless the fused kernel runs."""
        if self.bounds is not None:
            return self.bounds
        return not fused_assignment(self._device, self._dtype, self.matmul_precision)

    def _greedy_seeding(self) -> GreedySeeding:
        return GreedySeeding(
            self.n_clusters,
            self._device,
            self._dtype,
            self.block_size,
            self.centroid_block_size,
            self.bounds,
        )

    def _blocks(self, k: int) -> tuple[int, int]:
        return block_sizes(self._device, k, self.block_size, self.centroid_block_size)

    def _fit_rows(
        self,
        rows: Rows,
        *,
        state: KMeansState | None = None,
        callback: Callable[[KMeansState], None] | None = None,
    ) -> KMeans:
        if self.n_clusters > rows.n:
            raise InvalidArgumentError(
                f"n_clusters={self.n_clusters} must be <= n_samples={rows.n}"
            )
        comm = Comm(self.distributed, rows.n)
        local = comm.local(rows)
        seeding = self._greedy_seeding()
        self._pruning = PruningBounds()  # this rank's bounds, rebuilt by the first Lloyd pass
        with matmul_precision_scope(self._device, self.matmul_precision):
            check_finite(local, comm, self._blocks(1)[0])
            if state is None:
                state = self._init_state(rows, local, comm, seeding)
                if callback is not None:
                    callback(state)
            while state.phase == "init" and state.step < self.n_clusters:
                seeding.advance(rows, local, comm, state)
                if callback is not None:
                    callback(state)
            if state.phase == "init":
                state.phase, state.step = "lloyd", 0
                state.min_sq_distances = state.nearest_centers = None
            while (final := self._lloyd_step(local, comm, state)) is None:
                if callback is not None:
                    callback(state)
        state.phase = "done"
        self.cluster_centers_ = state.centers.cpu().to(dist_dtype(self._dtype)).numpy()
        self.labels_ = comm.gather_rows(final.labels).cpu().numpy()
        self.sq_distances_ = comm.gather_rows(final.sq_distances).cpu().numpy()
        self.inertia_ = state.potential_history[-1]
        self.n_iter_ = state.step
        self.potential_history_ = list(state.potential_history)
        self.init_indices_ = state.center_indices.copy()
        self.n_features_in_ = rows.d
        self.n_ranks_ = comm.world
        self.n_recomputed_ = list(self._pruning.recomputed)
        if callback is not None:
            callback(state)
        return self
