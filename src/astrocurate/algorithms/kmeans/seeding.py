"""Greedy k-means++ seeding with its exact bounds, one centre per step.

Each new centre is the best of :func:`n_candidates` candidates drawn with probability
proportional to the squared distance ``D^2`` to the nearest chosen centre, "best" meaning
the lowest resulting potential. Rows that no candidate can bring closer (a
triangle-inequality test that accounts for rounding) are not scored
(:meth:`GreedySeeding.seeding_rows`). Distributed, every rank scores its own rows and the
gains are summed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from astrocurate.algorithms.kmeans.assignment import fused_seeding, kernels_cannot_run
from astrocurate.algorithms.kmeans.bounds import score_error_factor
from astrocurate.algorithms.kmeans.distributed import Comm
from astrocurate.algorithms.kmeans.rows import (
    MAX_SCORE_ELEMENTS,
    Rows,
    block_sizes,
    dist_dtype,
    spans,
)

__all__ = [
    "FUSED_BATCH",
    "GreedySeeding",
    "SeedingState",
    "closest_candidate",
    "n_candidates",
    "seeding_blocks",
]

#: Greedy k-means++ scores only the rows its bounds keep while they are at most this
#: fraction of the rows; above it a plain pass over all rows (no gathering) costs less.
_GATHER_FRACTION = 0.25

#: Centres chosen by the fused steps between two reads of the device (:meth:`fused_steps`).
FUSED_BATCH = 64

#: ``x * (1 - 2^-53)`` rounds to ``nextafter(x, 0)`` for every double ``x >= 2^-1021``
#: (one kernel on the device instead of building ``nextafter``'s second operand); a total
#: potential below that is 0 or beyond float32 data.
_JUST_BELOW_ONE = 1.0 - 2.0**-53


def n_candidates(n_clusters: int) -> int:
    """Candidates drawn per centre by greedy k-means++: ``2 + floor(ln k)``.

    Parameters
    ----------
    n_clusters : int
        Number of clusters ``k`` (>= 1).

    Returns
    -------
    int
        The number of candidates evaluated for each new centre.
    """
    return 2 + int(math.log(n_clusters))


def closest_candidate(
    cx: torch.Tensor, cx_sq: torch.Tensor, centers: torch.Tensor, c_sq: torch.Tensor
) -> torch.Tensor:
    """Squared distance (as computed) from each chosen centre to its nearest candidate.

    ``cx`` and ``centers`` are the candidates and the chosen centres, ``cx_sq`` and
    ``c_sq`` their squared norms; the result has one value per centre.
    """
    gaps = torch.addmm(c_sq, cx, centers.T, alpha=-2).add_(cx_sq[:, None])
    return gaps.min(dim=0).values


def seeding_blocks(
    local: Rows, scored: torch.Tensor | None, block_rows: int
) -> Iterator[tuple[slice | torch.Tensor, torch.Tensor]]:
    """Yield ``(where, rows)``: all rows block by block (``scored`` None) or the ``scored``."""
    if scored is None:
        for start, stop, xb in local.blocks(block_rows):
            yield slice(start, stop), xb
    else:
        for start, stop in spans(len(scored), block_rows):
            yield scored[start:stop], local.gather(scored[start:stop])


class SeedingState(Protocol):
    """What greedy k-means++ reads and updates of a fit's live state (a ``KMeansState``)."""

    step: int
    centers: torch.Tensor
    center_indices: np.ndarray
    min_sq_distances: torch.Tensor | None
    nearest_centers: torch.Tensor | None
    rng: np.random.Generator


@dataclass(frozen=True)
class GreedySeeding:
    """Greedy k-means++ for one fit: the parameters it needs of the estimator.

    Parameters
    ----------
    n_clusters : int
        Centres to choose.
    device : torch.device
        Compute device.
    dtype : torch.dtype
        Compute dtype.
    block_size, centroid_block_size : int or None
        As for :class:`~astrocurate.algorithms.kmeans.estimator.KMeans`.
    bounds : bool or None
        False: score every row for every centre; otherwise leave out the rows that the
        bounds prove no candidate brings closer.
    """

    n_clusters: int
    device: torch.device
    dtype: torch.dtype
    block_size: int | None
    centroid_block_size: int | None
    bounds: bool | None

    def first(self, rows: Rows, local: Rows, comm: Comm, state: SeedingState) -> None:
        """Choose the first centre, uniformly among the rows."""
        first = torch.tensor([state.rng.integers(rows.n)], device=self.device)
        inf = torch.full((local.n,), math.inf, dtype=dist_dtype(self.dtype))
        self.add_center(rows, local, comm, state, first, inf.to(self.device))

    def advance(self, rows: Rows, local: Rows, comm: Comm, state: SeedingState) -> None:
        """Choose the next centre, or up to :data:`FUSED_BATCH` where :meth:`fused` holds.

        Either way ``state`` is complete on return (host side included), so a callback
        may save it. Once the potential is zero (every row on a chosen centre) it stays
        zero, and the plain steps choose the rest.
        """
        if not self.fused(local, comm, state) or not bool(state.min_sq_distances.any()):
            self.step(rows, local, comm, state)
            return
        left = min(FUSED_BATCH, self.n_clusters - state.step)
        done = self.fused_steps(local, comm, state, left)
        for _ in range(left - done):  # the potential fell to zero: the plain steps handle it
            self.step(rows, local, comm, state)

    def fused(self, local: Rows, comm: Comm, state: SeedingState) -> bool:
        """Whether :meth:`fused_steps` can choose the next centres.

        One process, float32 rows held whole on CUDA (or on the CPU under Triton's
        interpreter), each row contiguous, the bounds on and started (after the first
        centre).
        """
        return (
            comm.world == 1
            and state.nearest_centers is not None
            and fused_seeding(self.device, self.dtype)
            and self.error_factor(local) is not None
            and local.full is not None
            and local.full.stride(1) == 1
        )

    def fused_steps(self, local: Rows, comm: Comm, state: SeedingState, count: int) -> int:
        """Choose ``count`` centres in the fused kernels, reading the device once at the end.

        Each step draws its candidates from the host's generator as :meth:`step` does
        (into pinned memory, copied without a wait) and leaves the choice, ``D^2``, the
        nearest centres and the new centre on the device
        (:mod:`~astrocurate.algorithms.kmeans.seeding_kernel`). The one read at the end
        brings the chosen rows and the totals drawn from. A step whose total was zero
        (every row on a chosen centre) changed nothing on the device; it is undone on the
        host (generator included) with all after it.

        Returns
        -------
        int
            The centres kept: ``count``, or fewer where the potential fell to zero; 0 where
            Triton cannot build or launch the kernels here
            (:func:`~astrocurate.algorithms.kmeans.assignment.kernels_cannot_run`).
        """
        from astrocurate.algorithms.kmeans import seeding_kernel as kernels
        from astrocurate.algorithms.kmeans.nearest_kernel import launching_on

        x, first, k, rng = local.full, state.step, n_candidates(self.n_clusters), state.rng
        d2, nearest, centers = state.min_sq_distances, state.nearest_centers, state.centers
        rho, block_rows = self.error_factor(local), self._blocks(k)[0]
        x_sq = local.sq_norms(block_rows)
        batch = _FusedBatch.allocate(local, state, count, k, block_rows)
        drawn, generator_states = batch.draws.numpy(), []
        with launching_on(x):  # Triton launches on the current device
            for t in range(count):
                step = first + t
                generator_states.append(rng.bit_generator.state)
                drawn[t] = rng.random(k)
                cums = torch.cumsum(d2, dim=0, dtype=torch.float64)
                cand, total = self.draw(cums, batch.draws[t], comm)
                cx = torch.index_select(x, 0, cand)
                cx_sq = (cx * cx).sum(dim=1)
                c_sq = batch.c_sq[:step]
                closest = closest_candidate(cx, cx_sq, centers[:step], c_sq)
                largest = batch.largest[t:]
                try:
                    gains = kernels.score_candidates(
                        x, x_sq, d2, nearest, closest, largest, rho, cx, cx_sq, batch.scored
                    )
                    best = gains.argmax().view(1)
                    kernels.move_rows(
                        d2, nearest, largest, cx, cx_sq, batch.scored, best, cand, total,
                        batch.record, step, t,
                    )  # fmt: skip
                except Exception as exc:  # re-raised unless kernels_cannot_run says so
                    if t or not kernels_cannot_run(exc):
                        raise
                    rng.bit_generator.state = generator_states[0]
                    return 0  # nothing moved yet: the plain steps take over
        kept = batch.kept(state)
        if kept < count:
            rng.bit_generator.state = generator_states[kept]
        return kept

    def step(self, rows: Rows, local: Rows, comm: Comm, state: SeedingState) -> None:
        """Choose the next greedy k-means++ centre (updates ``state`` in place).

        The candidates are drawn and scored on the device; the host waits for it only to
        learn which rows to score and which candidate won (with the potential's total).
        """
        d2 = state.min_sq_distances
        cums = torch.cumsum(d2, dim=0, dtype=torch.float64)
        rng = state.rng
        before = rng.bit_generator.state
        u = torch.from_numpy(rng.random(n_candidates(self.n_clusters)))
        cand, total = self.draw(cums, u, comm)
        if self.add_center(rows, local, comm, state, cand, d2, total):
            return
        # every row coincides with a chosen centre: pick an unchosen row uniformly instead
        rng.bit_generator.state = before
        free = np.ones(rows.n, dtype=bool)
        free[state.center_indices[: state.step]] = False
        cand = torch.tensor([rng.choice(np.flatnonzero(free))], device=d2.device)
        self.add_center(rows, local, comm, state, cand, d2)

    @staticmethod
    def draw(cums: torch.Tensor, u: torch.Tensor, comm: Comm) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows where the cumulative potential first exceeds each ``u x total``.

        ``cums`` holds this rank's cumulative ``D^2``, ``u`` uniform draws in [0, 1) on the
        host (float64; pinned, they are copied without a wait; ``u`` may be overwritten).
        Returns the candidates' global row indices and the total potential (one element),
        both on the device.
        """
        device = cums.device
        if comm.world == 1:
            total = cums[-1:]
            below = total * _JUST_BELOW_ONE  # the double just below a positive total
            scaled = u.to(device, non_blocking=True).mul_(total).clamp_(max=below)
            found = torch.searchsorted(cums, scaled, right=True)
            return found.clamp_(max=len(cums) - 1), total
        u = u.numpy()
        offsets = np.zeros(comm.world + 1)  # where each rank's share of the potential starts
        np.cumsum(comm.gather(cums[-1:]), out=offsets[1:])
        total = float(offsets[-1])
        u = np.minimum(u * total, np.nextafter(total, 0.0))  # u < total
        lo, hi = offsets[comm.rank], offsets[comm.rank + 1]
        mine = (u >= lo) & (u < hi)  # the ranges of the ranks partition [0, total)
        cand = torch.full((len(u),), -1, dtype=torch.int64, device=device)
        if mine.any():
            where = torch.from_numpy(np.flatnonzero(mine)).to(device)
            local_u = torch.from_numpy(u[mine] - lo).to(device)
            found = torch.searchsorted(cums, local_u, right=True).clamp_(max=len(cums) - 1)
            cand[where] = found + comm.start
        torch.distributed.all_reduce(cand, op=torch.distributed.ReduceOp.MAX)
        cand.clamp_(min=0)  # -1 (no rank's range) only when the total is 0: the step is redone
        return cand, torch.tensor([total], dtype=torch.float64, device=device)

    def add_center(
        self,
        rows: Rows,
        local: Rows,
        comm: Comm,
        state: SeedingState,
        cand: torch.Tensor,
        d2: torch.Tensor,
        total: torch.Tensor | None = None,
    ) -> bool:
        """Keep the candidate that most lowers the potential; update D^2 (this rank's rows).

        The potential with candidate ``c`` is the current one less its gain, the sum over
        the rows of ``D^2(x) - min(D^2(x), |x - c|^2)``; rows that no candidate can bring
        closer (:meth:`seeding_rows`) add nothing and are not scored. ``cand`` holds global
        row indices on the device. When ``total``, the potential the candidates were drawn
        from, is zero, nothing is changed and False is returned.
        """
        block_rows, _ = self._blocks(len(cand))
        if local.full is not None and self.block_size is None:
            # few columns: take many rows at once (fewer, larger kernels)
            block_rows = max(block_rows, MAX_SCORE_ELEMENTS[local.device.type] // len(cand))
        cx = rows.gather(cand).to(d2.dtype)
        cx_sq = (cx * cx).sum(dim=1)
        x_sq = local.sq_norms(block_rows)
        scored = self.seeding_rows(local, state, cx, cx_sq, block_rows, d2)
        gains = torch.zeros(len(cand), dtype=torch.float64, device=d2.device)
        parts = []  # (rows, their new D^2 with each candidate)
        for where, xb in seeding_blocks(local, scored, block_rows):
            old = d2[where]
            new = torch.addmm(cx_sq, xb.to(d2.dtype), cx.T, alpha=-2)
            new.add_(x_sq[where, None]).clamp_(min=0)
            torch.minimum(new, old[:, None], out=new)
            gains += (old[:, None].double() - new.double()).sum(dim=0)
            parts.append((where, new))
        # one read of the device: the gains, the candidates (exact: row indices < 2^53), the total
        known = [comm.sum_(gains), cand.double()]
        fetched = torch.cat(known if total is None else [*known, total]).tolist()
        if total is not None and fetched[-1] == 0:
            return False
        best = int(np.argmax(fetched[: len(cand)]))  # the first of equal gains, as torch's
        chosen = int(fetched[len(cand) + best])
        nearest = state.nearest_centers
        if nearest is None and state.step == 0 and self.error_factor(local) is not None:
            nearest = torch.zeros(local.n, dtype=torch.int64, device=d2.device)
        for where, new in parts:
            if nearest is not None:
                moved = new[:, best] < d2[where]
                nearest[where] = torch.where(moved, state.step, nearest[where])
            d2[where] = new[:, best]
        if comm.start <= chosen < comm.stop:
            d2[chosen - comm.start] = 0
            if nearest is not None:
                nearest[chosen - comm.start] = state.step
        state.centers[state.step] = cx[best]
        state.center_indices[state.step] = chosen
        state.min_sq_distances = d2
        state.nearest_centers = nearest
        state.step += 1
        return True

    def seeding_rows(
        self,
        local: Rows,
        state: SeedingState,
        cx: torch.Tensor,
        cx_sq: torch.Tensor,
        block_rows: int,
        d2: torch.Tensor,
    ) -> torch.Tensor | None:
        """Find this rank's rows that a k-means++ candidate may bring closer (None: all).

        A row ``x`` at ``D^2(x)`` from its nearest chosen centre ``a`` is left out when
        ``|c - a|^2 >= 4 D^2(x) + 5E`` for every candidate ``c``, ``E`` bounding the
        rounding error of every computed squared distance: then ``|x - c| >= |c - a| -
        |x - a| >= |x - a|`` holds with the errors included, so the full computation
        would keep ``D^2(x)`` and add no gain. Rows are only left out, never scored
        differently, so the choice is that of the full pass up to the rounding of the
        products of another row count. Late in the seeding, when the centres are dense,
        few rows are left to score.
        """
        nearest, rho = state.nearest_centers, self.error_factor(local)
        if nearest is None or rho is None:
            return None
        centers = state.centers[: state.step].to(cx.dtype)
        c_sq = (centers * centers).sum(dim=1)
        norms = [local.largest_sq_norm(block_rows), c_sq.max(), cx_sq.max()]
        largest_sq = torch.stack(norms).max().double()
        err = 4 * rho * largest_sq  # rho (|x| + |c|)^2 <= rho (2 max norm)^2
        closest = closest_candidate(cx, cx_sq, centers, c_sq).double()
        keep = closest[nearest] < 4 * d2.double() + 5 * err  # d2.double() may be d2
        scored = torch.nonzero(keep).squeeze(1)
        return None if len(scored) > _GATHER_FRACTION * local.n else scored

    def error_factor(self, local: Rows) -> float | None:
        """Return the rounding-error factor of the k-means++ bounds, None when they are off."""
        if self.bounds is False:
            return None
        return score_error_factor(self.dtype, local.d, local.device)

    def _blocks(self, k: int) -> tuple[int, int]:
        return block_sizes(self.device, k, self.block_size, self.centroid_block_size)


@dataclass
class _FusedBatch:
    """The device buffers of one batch of fused steps (:meth:`GreedySeeding.fused_steps`).

    ``record`` is what the second kernel writes at each step: the centres and their
    ``|c|^2`` (indexed by step), the chosen rows and the totals drawn from (by the step's
    place ``t`` in the batch); ``largest[t]`` is the largest ``|x|^2`` of a row or a centre
    chosen before step ``t``; ``scored`` the kept rows' ``D^2`` with each candidate and
    which rows the bounds keep; ``draws`` the uniform draws, in pinned memory on CUDA.
    """

    record: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    largest: torch.Tensor
    scored: tuple[torch.Tensor, torch.Tensor]
    draws: torch.Tensor
    first: int

    @property
    def c_sq(self) -> torch.Tensor:
        return self.record[1]

    @classmethod
    def allocate(
        cls, local: Rows, state: SeedingState, count: int, n_cand: int, block_rows: int
    ) -> _FusedBatch:
        """Return the buffers of ``count`` steps from ``state``, ``n_cand`` candidates each."""
        from astrocurate.algorithms.kmeans.seeding_kernel import candidate_columns

        centers, first, dev = state.centers, state.step, state.centers.device
        c_sq = torch.empty(len(centers), dtype=centers.dtype, device=dev)
        c_sq[:first] = (centers[:first] * centers[:first]).sum(dim=1)
        largest = torch.empty(count + 1, dtype=torch.float64, device=dev)
        largest[0] = torch.maximum(local.largest_sq_norm(block_rows), c_sq[:first].max())
        d2 = state.min_sq_distances
        return cls(
            record=(
                centers,
                c_sq,
                torch.empty(count, dtype=torch.float64, device=dev),  # chosen rows
                torch.empty(count, dtype=torch.float64, device=dev),  # totals drawn from
            ),
            largest=largest,
            scored=(
                torch.empty((local.n, candidate_columns(n_cand)), dtype=d2.dtype, device=dev),
                torch.empty(local.n, dtype=torch.int8, device=dev),
            ),
            draws=torch.empty((count, n_cand), dtype=torch.float64, pin_memory=dev.type == "cuda"),
            first=first,
        )

    def kept(self, state: SeedingState) -> int:
        """Read the batch back into ``state``: the steps before the first zero total."""
        chosen, totals = self.record[2:]
        count = len(chosen)
        fetched = torch.cat([chosen, totals]).tolist()  # row indices < 2^53: exact
        zero = [t for t in range(count) if fetched[count + t] == 0]
        kept = zero[0] if zero else count
        state.center_indices[self.first : self.first + kept] = fetched[:kept]
        state.step = self.first + kept
        return kept
