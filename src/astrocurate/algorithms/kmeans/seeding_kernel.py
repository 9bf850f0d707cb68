"""Greedy k-means++ steps on CUDA in two Triton kernels, without waiting for the device.

The plain step (:meth:`~astrocurate.algorithms.kmeans.seeding.GreedySeeding.add_center`)
finds the rows its bounds keep with ``torch.nonzero`` (the host waits for the device),
gathers them, scores them against the candidates and reads the gains back to choose:
about 47 small operators and two waits per centre, which on an H100 cost 1.2-1.5 ms per
centre whatever the row count (BENCHMARKS.md). Here one kernel tests the bounds of every row,
scores the kept ones against all candidates and writes each block's gains; the winner is
taken on the device (``argmax``); a second kernel moves the kept rows' ``D^2`` and nearest
centre to it. Nothing is read on the host within a batch of steps, so the host queues the
next steps while the device works
(:meth:`~astrocurate.algorithms.kmeans.seeding.GreedySeeding.fused_steps`).

Rows the bounds leave out are never loaded; a block with none kept writes zero gains and
stops. The scores are ``|c|^2 - 2 x.c + |x|^2`` as in the plain step, with the products
in TF32 where torch's float32 matmuls may use it (``torch.backends.cuda.matmul.allow_tf32``,
which the bounds' error factor accounts for), IEEE float32 otherwise. The gains are summed
in float64 per block and the blocks' sums added by torch, so they do not depend on the
order in which blocks run. With ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors
in Triton's numpy interpreter, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from astrocurate.algorithms.kmeans.nearest_kernel import interpreting

__all__ = ["candidate_columns", "move_rows", "score_candidates"]

#: Rows per program of both kernels on the GPU, and in the interpreter (fewer, larger
#: numpy operations).
_BLOCK_ROWS = 64
_INTERPRETER_BLOCK_ROWS = 1024
#: Features per step of the product.
_BLOCK_FEATURES = 32


def candidate_columns(n_candidates: int) -> int:
    """Columns of the score tile: a power of two, at least 16 (``tl.dot``'s smallest)."""
    return max(16, triton.next_power_of_2(n_candidates))


@triton.jit(do_not_specialize_on_alignment=["largest_ptr"])  # the batch's buffer at step t
def _score_kernel(
    x_ptr,
    x_sq_ptr,
    d2_ptr,
    nearest_ptr,
    closest_ptr,
    largest_ptr,
    cx_ptr,
    cx_sq_ptr,
    new_ptr,
    keep_ptr,
    gains_ptr,
    n,
    d,
    n_cand,
    rho20: tl.float64,
    stride_x,
    stride_c,
    BLOCK_M: tl.constexpr,  # noqa: N803
    BLOCK_N: tl.constexpr,  # noqa: N803
    BLOCK_K: tl.constexpr,  # noqa: N803
    PRECISION: tl.constexpr,  # noqa: N803
):
    """Score one block's kept rows against the candidates; write their new ``D^2`` and gains.

    ``keep[row]``: whether the bounds keep the row (1) or prove that no candidate brings
    it closer (0); ``new[row, j] = min(D^2(row), max(|c_j|^2 - 2 x.c_j + |x|^2, 0))`` for
    kept rows (the others are not written) and ``gains[block, j]``, the float64 sum of
    ``D^2 - new[:, j]`` over the block's kept rows.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    ok = rows < n
    # the bounds: closest[nearest] < 4 D^2 + 5 E, E = 4 rho L, L the largest squared norm
    # of a row, a chosen centre (both in largest[0]) or a candidate
    c_sq = tl.load(cx_sq_ptr + cols, mask=cols < n_cand, other=0.0)
    err5 = rho20 * tl.maximum(tl.load(largest_ptr), tl.max(c_sq.to(tl.float64), axis=0))
    d2 = tl.load(d2_ptr + rows, mask=ok, other=0.0)
    near = tl.load(nearest_ptr + rows, mask=ok, other=0)
    gap = tl.load(closest_ptr + near, mask=ok, other=0.0).to(tl.float64)
    keep = ok & (gap < 4.0 * d2.to(tl.float64) + err5)
    tl.store(keep_ptr + rows, keep.to(tl.int8), mask=ok)
    gains = tl.zeros((BLOCK_N,), dtype=tl.float64)
    if tl.max(keep.to(tl.int32), axis=0) > 0:
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
        c_cols = cx_ptr + cols[None, :] * stride_c
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for f0 in range(0, d, BLOCK_K):
            f = f0 + tl.arange(0, BLOCK_K)
            a = tl.load(x_rows + f[None, :], mask=keep[:, None] & (f[None, :] < d), other=0.0)
            b = tl.load(
                c_cols + f[:, None], mask=(cols[None, :] < n_cand) & (f[:, None] < d), other=0.0
            )
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        x_sq = tl.load(x_sq_ptr + rows, mask=keep, other=0.0)
        new = tl.maximum(c_sq[None, :] - 2.0 * acc + x_sq[:, None], 0.0)
        new = tl.minimum(new, d2[:, None])
        stored = keep[:, None] & (cols[None, :] < n_cand)
        tl.store(new_ptr + rows.to(tl.int64)[:, None] * BLOCK_N + cols[None, :], new, mask=stored)
        gained = tl.where(stored, d2.to(tl.float64)[:, None] - new.to(tl.float64), 0.0)
        gains = tl.sum(gained, axis=0)
    tl.store(gains_ptr + pid * BLOCK_N + cols, gains)


@triton.jit(  # one compiled kernel for every step
    do_not_specialize=["step", "t"], do_not_specialize_on_alignment=["largest_ptr"]
)
def _move_kernel(
    d2_ptr,
    nearest_ptr,
    largest_ptr,
    cx_ptr,
    cx_sq_ptr,
    new_ptr,
    keep_ptr,
    best_ptr,
    cand_ptr,
    total_ptr,
    centers_ptr,
    c_sq_ptr,
    chosen_ptr,
    totals_ptr,
    n,
    d,
    step,
    t,
    stride_c,
    stride_centers,
    BLOCK_M: tl.constexpr,  # noqa: N803
    BLOCK_N: tl.constexpr,  # noqa: N803
    BLOCK_K: tl.constexpr,  # noqa: N803
):
    """Give the kept rows their ``D^2`` with the winner, ``step`` as nearest where it moved.

    The rows kept are those the scoring kernel marked in ``keep``. The winner's own row
    gets ``D^2 = 0`` and, when the potential drawn from was not zero, ``step`` as its
    nearest centre. The first program also records the step: the winner as centre
    ``step`` (and its ``|c|^2``), its row in ``chosen[t]``, the total in ``totals[t]``, and
    ``largest[1]`` for the next step.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    keep = tl.load(keep_ptr + rows, mask=rows < n, other=0) != 0
    d2 = tl.load(d2_ptr + rows, mask=keep, other=0.0)
    best = tl.load(best_ptr)
    moved_d2 = tl.load(new_ptr + rows.to(tl.int64) * BLOCK_N + best, mask=keep, other=0.0)
    moved = keep & (moved_d2 < d2)
    winner = tl.load(cand_ptr + best)
    chosen = rows == winner
    total = tl.load(total_ptr)
    drawn = tl.load(total_ptr + rows * 0) != 0  # one value, read per row (a block of bools)
    tl.store(d2_ptr + rows, tl.where(chosen, 0.0, moved_d2), mask=moved | chosen)
    steps = tl.zeros((BLOCK_M,), dtype=tl.int64) + step
    tl.store(nearest_ptr + rows, steps, mask=moved | (chosen & drawn))
    if pid == 0:
        for f0 in range(0, d, BLOCK_K):
            f = f0 + tl.arange(0, BLOCK_K)
            row = tl.load(cx_ptr + best * stride_c + f, mask=f < d)
            tl.store(centers_ptr + step.to(tl.int64) * stride_centers + f, row, mask=f < d)
        c_sq = tl.load(cx_sq_ptr + best)
        tl.store(c_sq_ptr + step, c_sq)
        tl.store(largest_ptr + 1, tl.maximum(tl.load(largest_ptr), c_sq.to(tl.float64)))
        tl.store(chosen_ptr + t, winner.to(tl.float64))
        tl.store(totals_ptr + t, total)


def _precision(device: torch.device) -> str:
    """``tl.dot``'s input precision: TF32 where torch's float32 matmuls may use it."""
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 else "ieee"


def _block_rows() -> int:
    return _INTERPRETER_BLOCK_ROWS if interpreting() else _BLOCK_ROWS


def score_candidates(
    x: torch.Tensor,
    x_sq: torch.Tensor,
    d2: torch.Tensor,
    nearest: torch.Tensor,
    closest: torch.Tensor,
    largest: torch.Tensor,
    rho: float,
    cx: torch.Tensor,
    cx_sq: torch.Tensor,
    scored: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Gains of each candidate over the rows the bounds keep, shape (n_candidates,), float64.

    Both kernels launch on the current CUDA device (``nearest_kernel.launching_on``).

    Parameters
    ----------
    x : torch.Tensor, shape (n, d), float32
        The rows, each row contiguous.
    x_sq : torch.Tensor, shape (n,), float32
        ``|x|^2`` of every row.
    d2 : torch.Tensor, shape (n,), float32
        ``D^2``: each row's squared distance to its nearest chosen centre.
    nearest : torch.Tensor of int64, shape (n,)
        That centre.
    closest : torch.Tensor, shape (step,), float32
        Per chosen centre, the squared distance to the nearest candidate as computed.
    largest : torch.Tensor, float64
        ``largest[0]``: the largest ``|x|^2`` of a row or a chosen centre (the batch's
        buffer from this step on).
    rho : float
        The scores' rounding-error factor
        (:func:`~astrocurate.algorithms.kmeans.bounds.score_error_factor`).
    cx : torch.Tensor, shape (n_candidates, d), float32
        The candidates.
    cx_sq : torch.Tensor, shape (n_candidates,), float32
        ``|c|^2`` of every candidate.
    scored : (torch.Tensor, torch.Tensor)
        ``(new, keep)``: ``new``, shape (n, candidate_columns(n_candidates)), float32,
        receives the kept rows' new ``D^2`` with each candidate (other rows untouched);
        ``keep``, shape (n,), int8, receives 1 for the rows the bounds keep, 0 for the
        others.

    Returns
    -------
    torch.Tensor, shape (n_candidates,), float64
        The sum over the kept rows of ``D^2 - new``, per candidate.
    """
    (n, d), (new, keep) = x.shape, scored
    n_cand, cols = cx.shape[0], new.shape[1]
    block_rows = _block_rows()
    blocks = triton.cdiv(n, block_rows)
    gains = torch.empty((blocks, cols), dtype=torch.float64, device=x.device)
    _score_kernel[(blocks,)](
        x,
        x_sq,
        d2,
        nearest,
        closest,
        largest,
        cx,
        cx_sq,
        new,
        keep,
        gains,
        n,
        d,
        n_cand,
        20 * rho,
        x.stride(0),
        cx.stride(0),
        BLOCK_M=block_rows,
        BLOCK_N=cols,
        BLOCK_K=_BLOCK_FEATURES,
        PRECISION=_precision(x.device),
        **({} if interpreting() else {"num_warps": 4}),
    )
    return gains.sum(dim=0)[:n_cand]


def move_rows(
    d2: torch.Tensor,
    nearest: torch.Tensor,
    largest: torch.Tensor,
    cx: torch.Tensor,
    cx_sq: torch.Tensor,
    scored: tuple[torch.Tensor, torch.Tensor],
    best: torch.Tensor,
    cand: torch.Tensor,
    total: torch.Tensor,
    record: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    step: int,
    t: int,
) -> None:
    """Move the rows to winner ``best`` and record the step, in place (:func:`_move_kernel`).

    ``scored`` is ``(new, keep)`` as :func:`score_candidates` left them; ``best`` (int64,
    one element) indexes ``cand`` (the candidates' rows); ``total`` (one element) is the
    potential they were drawn from; ``record`` is ``(centers, c_sq, chosen, totals)``,
    written at ``step`` (the first two) and ``t`` (the others), and ``largest[1]`` is
    written. The other arguments are those given to :func:`score_candidates`.
    """
    (new, keep), (centers, c_sq, chosen, totals) = scored, record
    n, block_rows = d2.shape[0], _block_rows()
    _move_kernel[(triton.cdiv(n, block_rows),)](
        d2,
        nearest,
        largest,
        cx,
        cx_sq,
        new,
        keep,
        best,
        cand,
        total,
        centers,
        c_sq,
        chosen,
        totals,
        n,
        cx.shape[1],
        step,
        t,
        cx.stride(0),
        centers.stride(0),
        BLOCK_M=block_rows,
        BLOCK_N=new.shape[1],
        BLOCK_K=_BLOCK_FEATURES,
    )
