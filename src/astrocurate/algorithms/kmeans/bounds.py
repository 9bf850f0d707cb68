"""Exact pruning of the Lloyd assignment: triangle-inequality bounds per group of centres.

A row keeps its label without any product when the bounds, with the rounding error of
the scores accounted for, prove that the full pass would pick the same label; the labels,
distances and sums are those of :func:`~astrocurate.algorithms.kmeans.assignment.assign_pass`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from astrocurate.algorithms.kmeans.assignment import (
    Pass,
    accumulate_sums,
    assign_pass,
    nearest,
    sq_dist_to,
    update_centers,
)
from astrocurate.algorithms.kmeans.rows import Rows, Workspace, dist_dtype

__all__ = ["PruningBounds", "pruned_pass", "score_error_factor"]

#: Relative slack added on top of the rounding-error bounds of the pruning test.
_BOUND_SLACK = 1e-9
#: Most groups of centres, each with one lower bound per row (4 bytes per row and group).
_MAX_GROUPS = 64
#: Lloyd iterations that form the groups from the first centres.
_GROUP_ITERS = 5


def score_error_factor(dtype: torch.dtype, d: int, device: torch.device) -> float | None:
    """Factor ``rho`` of the rounding error of the GEMM scores, or None to not prune.

    For a row ``x`` and any centre ``c`` the computed ``|x|^2 + (|c|^2 - 2 x.c)`` differs
    from ``|x - c|^2`` by at most ``rho * (|x| + |c|)^2`` (dot products of ``d`` terms in
    any order: ``(d + 1) u``, plus the final addition, with 10 % to spare). TF32 (or the
    bfloat16 that float32 matmul precision "medium" allows) adds the rounding of the
    inputs. 16-bit compute dtypes are not pruned: their bounds would be too loose to help.
    """
    if dtype not in (torch.float32, torch.float64):
        return None
    rho = 1.1 * (d + 2) * torch.finfo(dtype).eps / 2
    if dtype == torch.float32:
        if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
            rho += 2.0**-9
        if torch.get_float32_matmul_precision() == "medium":
            rho += 2.0**-6
    return rho


def _down_f32(values: torch.Tensor) -> torch.Tensor:
    """``values`` (float64) rounded towards -inf to float32, so lower bounds stay lower."""
    out = values.to(torch.float32)
    return torch.where(out.to(torch.float64) > values, torch.nextafter(out, out - math.inf), out)


def _up_f32(values: torch.Tensor) -> torch.Tensor:
    """``values`` (float64) rounded towards +inf to float32."""
    out = values.to(torch.float32)
    return torch.where(out.to(torch.float64) < values, torch.nextafter(out, out + math.inf), out)


def _moved_down(lower: torch.Tensor, shift_up: torch.Tensor) -> torch.Tensor:
    """``lower - shift_up`` in float32, then one step down: never above the exact difference.

    Round-to-nearest errs by at most half the spacing below the result, one step down
    covers it (``shift_up`` already rounded up). Cheaper than the float64 route on the
    ``n x n_groups`` bounds of every pass.
    """
    diff = lower - shift_up
    return torch.nextafter(diff, torch.full_like(diff, -math.inf))


def _center_groups(centers: torch.Tensor, block_rows: int, centroid_block: int) -> torch.Tensor:
    """Group of each centre, shape (k,): a small k-means of the centres themselves.

    ``min(64, k // 10)`` groups (at least one), started from evenly spaced centres; nearby
    centres share a group, so a group's largest move stays small when its region is stable.
    """
    k = centers.shape[0]
    n_groups = max(1, min(_MAX_GROUPS, k // 10))
    rows = Rows(centers, centers.device, centers.dtype)
    start = torch.linspace(0, k - 1, n_groups, device=centers.device).round().long()
    means = centers[start]
    for _ in range(_GROUP_ITERS):
        res = assign_pass(rows, means, block_rows, min(centroid_block, n_groups), True)
        means = update_centers(res.sums, res.counts, means)
    return assign_pass(rows, means, block_rows, min(centroid_block, n_groups), False).labels


def _nearest_groups(
    xb: torch.Tensor,
    centers: torch.Tensor,
    c_sq: torch.Tensor,
    centroid_block: int,
    groups: torch.Tensor,
    n_groups: int,
    scores: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`nearest`, plus the lowest score ``|c|^2 - 2 x.c`` per group of centres.

    The labels are those of :func:`nearest` (the same products, the first index on
    ties). The group minima, shape (b, n_groups), leave out each row's own label (inf for
    a group with no other centre).
    """
    b, k = xb.shape[0], centers.shape[0]
    best_val = best_idx = group_min = None
    for c0 in range(0, k, centroid_block):
        c1 = min(c0 + centroid_block, k)
        out = None if scores is None else scores[: b * (c1 - c0)].view(b, c1 - c0)
        s = torch.addmm(c_sq[c0:c1], xb, centers[c0:c1].T, alpha=-2, out=out)
        val, idx = s.min(dim=1)
        s.scatter_(1, idx.unsqueeze(1), math.inf)
        part = torch.full((b, n_groups), math.inf, dtype=s.dtype, device=s.device)
        part.scatter_reduce_(1, groups[c0:c1].expand(b, c1 - c0), s, "amin")
        if best_val is None:
            best_val, best_idx, group_min = val, idx, part
            continue
        better = val < best_val
        loser_val = torch.where(better, best_val, val)  # the block's or the old best
        loser = torch.where(better, best_idx, idx + c0)
        group_min = torch.minimum(group_min, part)
        group_min.scatter_reduce_(1, groups[loser].unsqueeze(1), loser_val.unsqueeze(1), "amin")
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, idx + c0, best_idx)
    return best_idx, group_min


def _half_separation(
    centers: torch.Tensor, c_sq: torch.Tensor, centroid_block: int, rho: float
) -> torch.Tensor:
    """Lower bound of half the distance from each centre to its nearest other one (float64).

    A row within this distance of its centre has no nearer centre (triangle inequality).
    """
    k = centers.shape[0]
    out = torch.zeros(k, dtype=torch.float64, device=centers.device)
    if k == 1:
        return out
    step = max(1, min(centroid_block, k))
    for r0 in range(0, k, step):
        r1 = min(r0 + step, k)
        g = torch.addmm(c_sq, centers[r0:r1], centers.T, alpha=-2).add_(c_sq[r0:r1, None])
        diag = torch.arange(r0, r1, device=centers.device)
        g[diag - r0, diag] = math.inf
        out[r0:r1] = g.min(dim=1).values
    err = 4 * rho * float(c_sq.max()) * (1 + rho)
    return out.sub_(err).clamp_(min=0).sqrt_().mul_(0.5)


def _group_shift(
    old: torch.Tensor, new: torch.Tensor, groups: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """Upper bound (float64) of the largest move of a centre of each group, shape (n_groups,)."""
    delta = (new.to(torch.float64) - old.to(torch.float64)).norm(dim=1).mul_(1 + 1e-12)
    shift = torch.zeros(n_groups, dtype=torch.float64, device=delta.device)
    return shift.scatter_reduce_(0, groups, delta, "amax")


@dataclass
class PruningBounds:
    """Per-row bounds of this rank's rows, carried from one Lloyd pass to the next.

    Attributes
    ----------
    labels : torch.Tensor or None
        Labels of the last pass, shape (n,).
    lower : torch.Tensor or None
        Per row and group of centres, a lower bound (float32, rounded down) of the
        distance to the centres of the group other than the row's label, for ``centers``;
        shape (n, n_groups).
    centers : torch.Tensor or None
        The centres of the last pass.
    groups : torch.Tensor or None
        Group of each centre, shape (k,), fixed by the first pass.
    recomputed : list of int
        Rows scored again, per pass (the others kept their label without any product).
    """

    labels: torch.Tensor | None = None
    lower: torch.Tensor | None = None
    centers: torch.Tensor | None = None
    groups: torch.Tensor | None = None
    recomputed: list[int] = field(default_factory=list)
    buffers: tuple[torch.Tensor, ...] | None = None  # reused by :class:`_Pending`


@dataclass
class _PassContext:
    """What every block of a pruned pass shares: centres, error bounds, centre moves."""

    centers: torch.Tensor
    c_sq: torch.Tensor
    centroid_block: int
    groups: torch.Tensor  # (k,) int64
    n_groups: int
    rho: float
    c_norm: float  # upper bound of the largest centre norm
    shift: torch.Tensor | None  # (n_groups,) float64, None on the first pass
    half_sep: torch.Tensor | None  # (k,) float64, None on the first pass
    shift_up: torch.Tensor | None  # shift rounded up to float32
    order: torch.Tensor  # (k,) int64: centre indices sorted by group, ascending within one
    group_starts: list[int]  # group g's centres are order[group_starts[g]:group_starts[g + 1]]

    def score_error(self, x_sq: torch.Tensor) -> torch.Tensor:
        """Bound ``E`` (float64) of the rounding error of every score of rows with ``x_sq``."""
        x64 = x_sq.to(torch.float64)
        return (x64 * (1 + self.rho)).sqrt_().add_(self.c_norm).square_().mul_(self.rho)


def _fresh_lower(
    ctx: _PassContext, xb: torch.Tensor, x_sq: torch.Tensor, err: torch.Tensor, ws: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of ``xb`` from the full GEMM, and new lower bounds per group (float32)."""
    labels, group_min = _nearest_groups(
        xb, ctx.centers, ctx.c_sq, ctx.centroid_block, ctx.groups, ctx.n_groups, ws.scores
    )
    # |x - c|^2 >= computed |x|^2 + score - E for every c
    low = group_min.to(torch.float64).add_(x_sq[:, None]).sub_(err[:, None])
    return labels, _down_f32(low.clamp_(min=0).sqrt_())


def _fresh_block(
    ctx: _PassContext, xb: torch.Tensor, x_sq: torch.Tensor, ws: Workspace, sq_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels, lower bounds and exact distances (into ``sq_out``) from the full GEMM."""
    labels, lower = _fresh_lower(ctx, xb, x_sq.to(torch.float64), ctx.score_error(x_sq), ws)
    sq_dist_to(xb, ctx.centers, labels, ws.diff, sq_out)
    return labels, lower


def _check_bounds(
    ctx: _PassContext,
    xb: torch.Tensor,
    x_sq: torch.Tensor,
    prev_labels: torch.Tensor,
    prev_lower: torch.Tensor,
    ws: Workspace,
    sq_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which rows of a block must be rescored, and against which groups of centres.

    ``sq_out`` receives the exact distance ``U^2`` to the previous label. A group can hold
    a centre whose score beats the label's only if ``U^2 + 2 E >= L_g^2``, with ``L_g``
    the group's lower bound moved by the group's largest centre shift and ``E`` the bound
    of the rounding error of a score; a row none of whose other groups can is kept
    without any product (also when the label's half separation proves it).

    Returns
    -------
    lower : torch.Tensor, shape (b, n_groups)
        The moved lower bounds (float32, rounded down).
    redo : torch.Tensor of int64
        Rows (of the block) to rescore.
    candidates : torch.Tensor of bool, shape (len(redo), n_groups)
        Groups to rescore them against; the label's own group is always one.
    """
    sq_dist_to(xb, ctx.centers, prev_labels, ws.diff, sq_out)
    upper_sq = sq_out.to(torch.float64) * (1 + ctx.rho)  # never in place: sq_out stays
    need = upper_sq + 2 * ctx.score_error(x_sq)
    lower = _moved_down(prev_lower, ctx.shift_up)
    lower64 = lower.to(torch.float64)
    open_groups = ~((lower64 > 0) & (need[:, None] < lower64.square() * (1 - _BOUND_SLACK)))
    by_separation = 2 * ctx.half_sep[prev_labels] - upper_sq.sqrt()
    proven = (by_separation > 0) & (need < by_separation.square() * (1 - _BOUND_SLACK))
    redo = torch.nonzero(open_groups.any(dim=1) & ~proven).squeeze(1)
    candidates = open_groups[redo]
    candidates[torch.arange(len(redo), device=redo.device), ctx.groups[prev_labels[redo]]] = True
    return lower, redo, candidates


def _rescore(
    ctx: _PassContext,
    xr: torch.Tensor,
    x_sq: torch.Tensor,
    candidates: torch.Tensor,
    lower: torch.Tensor,
    gathered: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and lower bounds of rows ``xr`` from their candidate groups' centres alone.

    One GEMM per group, over the rows that have it as a candidate. The label is the lowest
    score, the lowest centre index on ties (as the full GEMM's argmin). These products have
    other shapes than the full GEMM's, so their scores may round differently (each within
    ``E`` of the exact value): a row whose best two scores lie within ``4 E`` is a near-tie
    that the full GEMM might break the other way, and gets its label from the full GEMM
    (:func:`nearest`, as in the full pass). A rescored group's new lower bound leaves the
    label out; the other groups keep ``lower`` (updated in place and returned).
    ``gathered`` is a buffer of at least ``len(xr)`` rows for each group's rows.
    """
    r, n_groups = candidates.shape
    k, dev = ctx.centers.shape[0], xr.device
    # (group, row) pairs sorted by group: each group's rows are one slice
    pair_group, pair_row = torch.nonzero(candidates.T, as_tuple=True)
    per_group = torch.bincount(pair_group, minlength=n_groups).tolist()
    first = torch.empty(len(pair_row), dtype=ctx.c_sq.dtype, device=dev)
    second = torch.full_like(first, math.inf)
    first_idx = torch.empty(len(pair_row), dtype=torch.int64, device=dev)
    p0 = 0
    for g, count in enumerate(per_group):
        if count == 0:
            continue
        p1 = p0 + count
        idx = ctx.order[ctx.group_starts[g] : ctx.group_starts[g + 1]]
        xg = torch.index_select(xr, 0, pair_row[p0:p1], out=gathered[:count])
        scores = torch.addmm(ctx.c_sq[idx], xg, ctx.centers[idx].T, alpha=-2)
        val, pos = scores.min(dim=1)
        first[p0:p1], first_idx[p0:p1] = val, idx[pos]
        if len(idx) > 1:
            scores.scatter_(1, pos.unsqueeze(1), math.inf)
            second[p0:p1] = scores.min(dim=1).values
        p0 = p1
    best = _row_min(first, pair_row, r)
    labels = _row_min(torch.where(first == best[pair_row], first_idx, k), pair_row, r)
    err = ctx.score_error(x_sq)
    runner_up = _row_min(torch.where(first_idx == labels[pair_row], second, first), pair_row, r)
    margin = runner_up.to(torch.float64) - best.to(torch.float64)
    near_tie = torch.nonzero(margin <= 4 * err * (1 + _BOUND_SLACK)).squeeze(1)
    if len(near_tie):
        labels[near_tie] = nearest(xr[near_tie], ctx.centers, ctx.c_sq, ctx.centroid_block)
    group_min = torch.where(first_idx == labels[pair_row], second, first).to(torch.float64)
    low = group_min.add_(x_sq.to(torch.float64)[pair_row]).sub_(err[pair_row])
    lower[pair_row, pair_group] = _down_f32(low.clamp_(min=0).sqrt_())
    return labels, lower


def _row_min(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Minimum of ``values`` per row index ``rows``, shape (n,) (every row has a value)."""
    out = torch.empty(n, dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(0, rows, values, "amin", include_self=False)


def _pass_context(
    rows: Rows,
    centers: torch.Tensor,
    block_rows: int,
    centroid_block: int,
    bounds: PruningBounds,
    rho: float,
) -> _PassContext:
    """Centre norms, groups, group moves and separations for one pruned pass."""
    c_sq = (centers * centers).sum(dim=1)
    first = bounds.labels is None
    if bounds.groups is None:
        bounds.groups = _center_groups(centers, block_rows, centroid_block)
    n_groups = int(bounds.groups.max()) + 1
    shift = None if first else _group_shift(bounds.centers, centers, bounds.groups, n_groups)
    order = torch.argsort(bounds.groups, stable=True)
    sizes = torch.bincount(bounds.groups, minlength=n_groups).tolist()
    return _PassContext(
        centers=centers,
        c_sq=c_sq,
        centroid_block=centroid_block,
        groups=bounds.groups,
        n_groups=n_groups,
        rho=rho,
        c_norm=math.sqrt(float(c_sq.max()) * (1 + rho)),
        shift=shift,
        shift_up=None if shift is None else _up_f32(shift),
        half_sep=None if first else _half_separation(centers, c_sq, centroid_block, rho),
        order=order,
        group_starts=[0, *itertools.accumulate(sizes)],
    )


def pruned_pass(
    rows: Rows,
    centers: torch.Tensor,
    block_rows: int,
    centroid_block: int,
    accumulate: bool,
    bounds: PruningBounds,
    rho: float,
) -> Pass:
    """:func:`assign_pass` that skips the products its bounds prove unnecessary.

    The first pass takes the full GEMM and records, per row and group of centres, a lower
    bound of the distance to the group's centres. Later passes compute the exact distance
    to each row's previous label, keep the rows whose bounds rule out every other group,
    and rescore the others against the centres of the groups that they do not rule out
    (one GEMM per group, :func:`_rescore`); then, block by block, the exact distances of
    blocks whose labels moved are recomputed and the sums accumulated, exactly as in
    :func:`assign_pass`. ``bounds`` is updated in place.
    """
    k, dev = centers.shape[0], centers.device
    ctx = _pass_context(rows, centers, block_rows, centroid_block, bounds, rho)
    first = bounds.labels is None
    x_sq = rows.sq_norms(block_rows)
    labels = torch.empty(rows.n, dtype=torch.int64, device=dev)
    lower = torch.empty((rows.n, ctx.n_groups), dtype=torch.float32, device=dev)
    sq = torch.empty(rows.n, dtype=dist_dtype(centers.dtype), device=dev)
    ws = rows.workspace(min(block_rows, rows.n), min(centroid_block, k), centers.dtype, accumulate)
    moved = torch.zeros(rows.n, dtype=torch.bool, device=dev)
    pending = _Pending(ctx, x_sq, labels, lower, moved, bounds, block_rows)
    for start, stop, xb in rows.blocks(block_rows):
        if first:
            labels[start:stop], lower[start:stop] = _fresh_block(
                ctx, xb, x_sq[start:stop], ws, sq[start:stop]
            )
            continue
        labels[start:stop] = bounds.labels[start:stop]
        lower[start:stop], redo, candidates = _check_bounds(
            ctx,
            xb,
            x_sq[start:stop],
            labels[start:stop],
            bounds.lower[start:stop],
            ws,
            sq[start:stop],
        )
        pending.add(redo + start, xb, redo, candidates)
    pending.flush()
    recomputed = rows.n if first else pending.rescored
    chunks = [torch.zeros((k, c1 - c0), dtype=torch.float64, device=dev) for c0, c1 in ws.chunks]
    counts = torch.zeros(k, dtype=torch.int64, device=dev) if accumulate else None
    if accumulate or bool(moved.any()):
        for start, stop, xb in rows.blocks(block_rows):
            lab = labels[start:stop]
            if bool(moved[start:stop].any()):  # the full pass's call on the block: same bits
                sq_dist_to(xb, centers, lab, ws.diff, sq[start:stop])
            if accumulate:
                accumulate_sums(chunks, xb, lab, ws)
                counts += torch.bincount(lab, minlength=k)
    bounds.labels, bounds.lower, bounds.centers = labels, lower, centers.clone()
    bounds.recomputed.append(recomputed)
    sums = None
    if accumulate:
        sums = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
    return Pass(labels, sq, sums, counts)


#: Rows rescored together by :func:`_rescore` (bounds the gathered copies).
_RESCORE_ROWS = 1 << 16


class _Pending:
    """Rows of a pruned pass waiting to be rescored, gathered block by block.

    Rescored :data:`_RESCORE_ROWS` at a time, so that the per-group products are large;
    their labels and lower bounds are written into the pass's tensors and ``moved`` flags
    the rows whose label changed. The gathered rows and the per-group copies go into
    buffers kept in ``bounds`` from pass to pass: fresh allocations of this size cost
    more in page faults than the copies themselves.
    """

    def __init__(
        self,
        ctx: _PassContext,
        x_sq: torch.Tensor,
        labels: torch.Tensor,
        lower: torch.Tensor,
        moved: torch.Tensor,
        bounds: PruningBounds,
        block_rows: int,
    ) -> None:
        self.ctx, self.x_sq, self.labels, self.lower, self.moved = ctx, x_sq, labels, lower, moved
        rows = min(_RESCORE_ROWS + block_rows, len(labels))
        d, dtype, dev = ctx.centers.shape[1], ctx.centers.dtype, ctx.centers.device
        if bounds.buffers is None or bounds.buffers[0].shape[0] < rows:
            # the queued rows, and each group's rows gathered from them
            bounds.buffers = (
                torch.empty((rows, d), dtype=dtype, device=dev),
                torch.empty((rows, d), dtype=dtype, device=dev),
            )
        self.rows, self.gathered = bounds.buffers
        self.index: list[torch.Tensor] = []
        self.candidates: list[torch.Tensor] = []
        self.size = 0
        self.rescored = 0

    def add(
        self, index: torch.Tensor, xb: torch.Tensor, local: torch.Tensor, cand: torch.Tensor
    ) -> None:
        """Queue rows ``local`` of block ``xb`` (global ``index``) with their candidate groups."""
        if len(local):
            torch.index_select(xb, 0, local, out=self.rows[self.size : self.size + len(local)])
            self.index.append(index)
            self.candidates.append(cand)
            self.size += len(local)
        if self.size >= _RESCORE_ROWS:
            self.flush()

    def flush(self) -> None:
        """Rescore the queued rows."""
        if not self.size:
            return
        index, cand = torch.cat(self.index), torch.cat(self.candidates)
        xr = self.rows[: self.size]
        new, self.lower[index] = _rescore(
            self.ctx, xr, self.x_sq[index], cand, self.lower[index], self.gathered
        )
        self.moved[index] = new != self.labels[index]
        self.labels[index] = new
        self.rescored += self.size
        self.index, self.candidates, self.size = [], [], 0
