"""Fused nearest-centroid search on CUDA: TF32 matrix product and argmin in one Triton kernel.

The plain assignment (``kmeans._nearest``) writes an ``n x k`` block of scores
``|c|^2 - 2 x.c`` to GPU memory with one GEMM and reads it back for the argmin. For
3M x 384 rows against 60k centroids those scores are 720 GB of traffic per Lloyd
iteration, more than the product itself costs on tensor cores. This kernel keeps each
tile of scores in registers: every program owns ``BLOCK_M`` rows, streams all centroids
through the tensor cores ``BLOCK_N`` at a time and keeps a running minimum and its index,
so only the labels leave the chip.

It is used for float32 inputs on CUDA under ``matmul_precision="tf32"`` (the products
are TF32, as with ``torch.backends.cuda.matmul.allow_tf32``); the exact squared distance
to the chosen centroid and the float64 sums are computed afterwards as before. With
``TRITON_INTERPRET=1`` Triton runs the same kernel on CPU tensors in numpy (slowly),
which is how the tests check its logic on machines without a GPU.

Ties: within a tile ``tl.argmin`` keeps the lowest index and a later tile replaces the
running minimum only when strictly lower, so the first nearest centroid wins, as in
``torch.argmin``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl

#: Tile shapes tried by the autotuner on the GPU: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages).
_GPU_TILES = [
    (128, 128, 32, 4, 4),
    (128, 128, 32, 8, 3),
    (128, 256, 32, 8, 3),
    (256, 128, 32, 8, 3),
    (128, 128, 64, 8, 3),
]
#: The one tile used by the interpreter (smallest shapes ``tl.dot`` accepts).
_INTERPRETER_TILE = (16, 16, 16)


def launching_on(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``tensor``'s GPU the current device while kernels are launched.

    Triton launches on the current device's stream, whichever device the tensors are on.
    """
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def interpreting() -> bool:
    """Whether Triton runs kernels in its numpy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _nearest_kernel(
    x_ptr,
    c_ptr,
    c_sq_ptr,
    labels_ptr,
    n,
    k,
    d,
    stride_x,
    stride_c,
    BLOCK_M: tl.constexpr,  # noqa: N803
    BLOCK_N: tl.constexpr,  # noqa: N803
    BLOCK_K: tl.constexpr,  # noqa: N803
):
    """Write the labels of rows ``[pid * BLOCK_M, (pid + 1) * BLOCK_M)``.

    One flat loop over (centroid tile, feature step), so the compiler pipelines the loads
    across tiles; each finished tile of scores updates the running minimum.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
    feats = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, BLOCK_N)
    k_steps = tl.cdiv(d, BLOCK_K)
    best = tl.full((BLOCK_M,), float("inf"), dtype=tl.float32)
    best_idx = tl.zeros((BLOCK_M,), dtype=tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(0, tl.cdiv(k, BLOCK_N) * k_steps):
        tile = t // k_steps
        f = (t % k_steps) * BLOCK_K + feats
        c = tile * BLOCK_N + cols
        a = tl.load(x_rows + f[None, :], mask=row_ok[:, None] & (f[None, :] < d), other=0.0)
        b = tl.load(
            c_ptr + c.to(tl.int64)[None, :] * stride_c + f[:, None],
            mask=(c[None, :] < k) & (f[:, None] < d),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision="tf32")
        if t % k_steps == k_steps - 1:
            c_sq = tl.load(c_sq_ptr + c, mask=c < k, other=float("inf"))
            scores = c_sq[None, :] - 2.0 * acc
            tile_min = tl.min(scores, axis=1)
            tile_idx = tl.argmin(scores, axis=1).to(tl.int64) + tile * BLOCK_N
            better = tile_min < best
            best = tl.where(better, tile_min, best)
            best_idx = tl.where(better, tile_idx, best_idx)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    tl.store(labels_ptr + rows, best_idx, mask=row_ok)


@functools.cache
def _tuned_kernel() -> Any:
    """Wrap the kernel in Triton's autotuner: one tile shape per ``(k, d)`` on the GPU."""
    configs = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": nn, "BLOCK_K": kk}, num_warps=w, num_stages=s)
        for m, nn, kk, w, s in _GPU_TILES
    ]
    return triton.autotune(configs, key=["k", "d"])(_nearest_kernel)


def nearest(x: torch.Tensor, centers: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre of each row of ``x`` (first one on ties), shape (n,).

    Parameters
    ----------
    x : torch.Tensor, shape (n, d), float32
        Rows (each row contiguous).
    centers : torch.Tensor, shape (k, d), float32
        Centres (each row contiguous), on the device of ``x``.
    c_sq : torch.Tensor, shape (k,), float32
        ``|c|^2`` of every centre.

    Returns
    -------
    torch.Tensor of int64, shape (n,)
        Labels, by the scores ``|c|^2 - 2 x.c`` with TF32 products.
    """
    if x.dtype != torch.float32 or centers.dtype != torch.float32:
        raise ValueError(f"the fused kernel takes float32, not {x.dtype} and {centers.dtype}")
    n, d = x.shape
    k = centers.shape[0]
    x = x if x.stride(1) == 1 else x.contiguous()
    centers = centers if centers.stride(1) == 1 else centers.contiguous()
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    if n == 0:
        return labels
    args = (x, centers, c_sq.contiguous(), labels, n, k, d, x.stride(0), centers.stride(0))
    if interpreting():
        bm, bn, bk = _INTERPRETER_TILE
        _nearest_kernel[(triton.cdiv(n, bm),)](*args, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    else:
        with launching_on(x):
            _tuned_kernel()[lambda meta: (triton.cdiv(n, meta["BLOCK_M"]),)](*args)
    return labels
