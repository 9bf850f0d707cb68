"""Nearest-centre search and centroid sums: the assignment pass of k-means.

Distances are squared Euclidean. The nearest centroid is found blockwise from
``|c|^2 - 2 x.c`` (``block_size`` rows and ``centroid_block_size`` centroids at a time), so
the ``n x k`` distance matrix never exists. The distance to the chosen centroid is then
recomputed directly as ``|x - c|^2``, which is exact, non-negative and free of the
cancellation of the expanded form. Centroid sums are accumulated in float64 buffers
whatever the compute ``dtype`` (``index_put_(accumulate=True)`` on the CPU, serial and
deterministic, many times faster there than ``index_add_``; ``index_add_`` on CUDA, whose
float64 atomics may sum in any order, a difference of ~1e-16 relative); the new centroids
are rounded to ``dtype`` once per iteration.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from astrocurate.algorithms.kmeans.checks import (
    VALID_PRECISIONS,
    check_block_size,
    check_choice,
    check_distributed,
)
from astrocurate.algorithms.kmeans.distributed import Comm
from astrocurate.algorithms.kmeans.rows import (
    Array,
    Rows,
    Workspace,
    block_sizes,
    check_finite,
    dist_dtype,
    matmul_precision_scope,
    resolve_dtype,
    resolve_torch_device,
)
from astrocurate.cpus import usable_cpus
from astrocurate.errors import InvalidArgumentError

__all__ = [
    "Pass",
    "accumulate_sums",
    "assign",
    "assign_all",
    "assign_pass",
    "fused_assignment",
    "fused_seeding",
    "kernels_cannot_run",
    "nearest",
    "sq_dist_to",
    "update_centers",
]

log = logging.getLogger(__name__)

#: Why Triton's kernels cannot run in this process, once one failed to build or launch.
_KERNEL_FAILURE: list[str] = []

#: Threads summing column chunks of the centroid sums on the CPU (created on first use).
_ACCUMULATORS: ThreadPoolExecutor | None = None


def _accumulators() -> ThreadPoolExecutor:
    global _ACCUMULATORS
    if _ACCUMULATORS is None:
        _ACCUMULATORS = ThreadPoolExecutor(usable_cpus(), "kmeans-sums")
    return _ACCUMULATORS


@functools.cache
def _has_triton() -> bool:
    """Whether Triton is installed (it comes with the CUDA builds of torch on Linux)."""
    return importlib.util.find_spec("triton") is not None


def _triton_usable() -> bool:
    """Whether Triton is installed and none of its kernels has failed to build here."""
    return _has_triton() and not _KERNEL_FAILURE


def kernels_cannot_run(exc: BaseException) -> bool:
    """Whether ``exc`` says that Triton cannot build or launch its kernels on this machine.

    Triton's or ``ptxas``'s compiler errors, too little shared memory, no working C
    compiler for its launchers. If so, the fused kernels are off for the rest of the
    process, with one warning, and k-means goes on with the plain torch steps.
    """
    from triton.errors import TritonError

    no_compiler = isinstance(exc, RuntimeError) and str(exc).startswith("Failed to find C")
    failures = (TritonError, subprocess.CalledProcessError, ImportError)
    if not (isinstance(exc, failures) or no_compiler):
        return False
    if not _KERNEL_FAILURE:
        _KERNEL_FAILURE.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
        log.warning(
            "Triton's kernels cannot run here (%s): k-means goes on with the plain torch steps",
            _KERNEL_FAILURE[0],
        )
    return True


def fused_assignment(device: torch.device, dtype: torch.dtype, matmul_precision: str) -> bool:
    """Whether Lloyd passes on ``device`` assign rows with the fused Triton kernel.

    On CUDA under ``"tf32"`` on a GPU with TF32 tensor cores (compute capability 8.0 and
    later), which the kernel is built around. Older GPUs (V100, T4) have none: there
    ``"tf32"`` means float32 products, and cuBLAS's float32 GEMM of the plain path serves.
    """
    tf32 = device.type == "cuda" and matmul_precision == "tf32" and _has_tf32_cores(device)
    return dtype == torch.float32 and _triton_usable() and (tf32 or _triton_interpreter(device))


@functools.cache
def _has_tf32_cores(device: torch.device) -> bool:
    """Whether the CUDA ``device`` has TF32 tensor cores (compute capability >= 8.0)."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def fused_seeding(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether greedy k-means++ on ``device`` may take its steps in the fused Triton kernels.

    float32 on CUDA wherever Triton is installed (TF32 products only where torch allows
    them), and float32 on the CPU under the Triton interpreter.
    """
    on_device = device.type == "cuda" or _triton_interpreter(device)
    return dtype == torch.float32 and _triton_usable() and on_device


def _triton_interpreter(device: torch.device) -> bool:
    """Whether Triton's numpy interpreter is on (``TRITON_INTERPRET=1``; tests, on the CPU)."""
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _fused_wanted(xb: torch.Tensor, centers: torch.Tensor) -> bool:
    """Whether :func:`nearest` hands ``xb`` to the fused kernel.

    Yes for float32 on CUDA while TF32 is allowed (inside the ``matmul_precision="tf32"``
    block), and for float32 on the CPU under the Triton interpreter.
    """
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "highest"
    return centers.dtype == xb.dtype and fused_assignment(xb.device, xb.dtype, precision)


def nearest(
    xb: torch.Tensor,
    centers: torch.Tensor,
    c_sq: torch.Tensor,
    centroid_block: int,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Index of the nearest centre of each row of ``xb`` (first one on ties), shape (b,).

    ``scores`` is an optional flat buffer of at least ``b * centroid_block`` elements.
    """
    if _fused_wanted(xb, centers):
        from astrocurate.algorithms.kmeans import nearest_kernel

        try:
            return nearest_kernel.nearest(xb, centers, c_sq)
        except Exception as exc:  # re-raised unless kernels_cannot_run says so
            if not kernels_cannot_run(exc):
                raise
    b, k = xb.shape[0], centers.shape[0]
    best_val = best_idx = None
    for c0 in range(0, k, centroid_block):
        c1 = min(c0 + centroid_block, k)
        out = None if scores is None else scores[: b * (c1 - c0)].view(b, c1 - c0)
        s = torch.addmm(c_sq[c0:c1], xb, centers[c0:c1].T, alpha=-2, out=out)
        if c1 - c0 == k:
            return s.argmin(dim=1)
        val, idx = s.min(dim=1)
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val < best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx + c0, best_idx)
    return best_idx


def sq_dist_to(
    xb: torch.Tensor,
    centers: torch.Tensor,
    labels: torch.Tensor,
    diff: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact ``|x_i - c_{labels_i}|^2``, shape (b,), in :func:`dist_dtype`.

    ``diff`` (shape (r, d), dtype of ``xb``) and ``out`` are optional buffers; with
    ``diff`` the rows go ``r`` at a time, so that its passes stay in cache.
    """
    if diff is None or diff.dtype != dist_dtype(xb.dtype):
        diff = torch.index_select(centers, 0, labels).sub_(xb)
        return torch.sum(diff.to(dist_dtype(xb.dtype)).square_(), dim=1, out=out)
    b, step = xb.shape[0], diff.shape[0]
    out = torch.empty(b, dtype=diff.dtype, device=xb.device) if out is None else out
    for r0 in range(0, b, step):
        r1 = min(r0 + step, b)
        part = torch.index_select(centers, 0, labels[r0:r1], out=diff[: r1 - r0])
        part.sub_(xb[r0:r1])
        torch.sum(part.square_(), dim=1, out=out[r0:r1])
    return out


def accumulate_sums(
    sums: list[torch.Tensor],
    xb: torch.Tensor,
    labels: torch.Tensor,
    ws: Workspace,
) -> None:
    """Add the rows of ``xb`` to ``sums[c][labels]`` (float64), one column chunk each.

    On the CPU ``index_put_(accumulate=True)`` adds serially in row order (deterministic,
    and many times faster there than ``index_add_``); the chunks run in parallel threads.
    On CUDA ``index_add_`` (float64 atomics) takes the whole block at once.
    """
    b = xb.shape[0]

    def add(c: int) -> None:
        c0, c1 = ws.chunks[c]
        x64 = ws.x64[c][:b]
        x64.copy_(xb[:, c0:c1])
        if xb.device.type == "cpu":
            sums[c].index_put_((labels,), x64, accumulate=True)
        else:
            sums[c].index_add_(0, labels, x64)

    if len(sums) == 1:
        add(0)
    else:
        list(_accumulators().map(add, range(len(sums))))


@dataclass
class Pass:
    """Result of one assignment pass over all rows."""

    labels: torch.Tensor  # (n,) int64
    sq_distances: torch.Tensor  # (n,)
    sums: torch.Tensor | None  # (k, d) float64
    counts: torch.Tensor | None  # (k,) int64

    @property
    def potential(self) -> float:
        """Sum of the squared distances (float64)."""
        return float(self.sq_distances.sum(dtype=torch.float64))


def assign_pass(
    rows: Rows, centers: torch.Tensor, block_rows: int, centroid_block: int, accumulate: bool
) -> Pass:
    """Assign every row to its nearest centre; optionally accumulate float64 sums."""
    k, dev = centers.shape[0], centers.device
    c_sq = (centers * centers).sum(dim=1)
    labels = torch.empty(rows.n, dtype=torch.int64, device=dev)
    sq = torch.empty(rows.n, dtype=dist_dtype(centers.dtype), device=dev)
    ws = rows.workspace(min(block_rows, rows.n), min(centroid_block, k), centers.dtype, accumulate)
    chunks = [torch.zeros((k, c1 - c0), dtype=torch.float64, device=dev) for c0, c1 in ws.chunks]
    counts = torch.zeros(k, dtype=torch.int64, device=dev) if accumulate else None
    for start, stop, xb in rows.blocks(block_rows):
        lab = nearest(xb, centers, c_sq, centroid_block, ws.scores)
        labels[start:stop] = lab
        sq_dist_to(xb, centers, lab, ws.diff, sq[start:stop])
        if accumulate:
            accumulate_sums(chunks, xb, lab, ws)
            counts += torch.bincount(lab, minlength=k)
    sums = None
    if accumulate:
        sums = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
    return Pass(labels, sq, sums, counts)


def update_centers(sums: torch.Tensor, counts: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Means of the clusters (float64, then rounded to ``old.dtype``); empty ones keep ``old``."""
    nonempty = counts > 0
    new = old.to(torch.float64)
    new[nonempty] = sums[nonempty] / counts[nonempty].unsqueeze(1).to(torch.float64)
    return new.to(old.dtype)


def assign(
    X: Array,  # noqa: N803
    centroids: Array,
    *,
    block_size: int | None = None,
    centroid_block_size: int | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    matmul_precision: str = "highest",
    distributed: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each row of ``X`` to its nearest centroid, block by block.

    Parameters
    ----------
    X : array or tensor, shape (n, d)
        Points (a ``np.memmap`` is read block by block).
    centroids : array or tensor, shape (k, d)
        Centroids.
    block_size : int, optional
        Rows per block (default 8192 on CPU, 65536 on CUDA).
    centroid_block_size : int, optional
        Centroids per block (default: so that a block of scores has at most 2**23 elements
        on CPU, 2**28 on CUDA).
    device : str or torch.device
        Where to compute.
    dtype : str or torch.dtype
        Compute dtype (float32, float64, float16 or bfloat16).
    matmul_precision, distributed
        As for :class:`KMeans` (distributed: each rank assigns its slice, all get all).

    Returns
    -------
    labels : numpy.ndarray of int64, shape (n,)
        Index of the nearest centroid (the first one on exact ties).
    sq_distances : numpy.ndarray, shape (n,)
        Squared Euclidean distance to that centroid (float32, float64 for float64 input).
    """
    dev, dt = resolve_torch_device(device), resolve_dtype(dtype)
    block_size = check_block_size("block_size", block_size)
    centroid_block_size = check_block_size("centroid_block_size", centroid_block_size)
    rows = Rows(X, dev, dt)
    cents = Rows(centroids, dev, dt)
    if cents.d != rows.d:
        raise InvalidArgumentError(
            f"centroids have {cents.d} features but X has {rows.d}; they must match"
        )
    check_choice("matmul_precision", matmul_precision, VALID_PRECISIONS)
    check_distributed(distributed)
    block_rows, centroid_block = block_sizes(dev, cents.n, block_size, centroid_block_size)
    comm = Comm(distributed, rows.n)
    check_finite(comm.local(rows), comm, block_rows)
    cents.check_finite(block_rows)
    with matmul_precision_scope(dev, matmul_precision):
        labels, sq = assign_all(rows, cents.block(0, cents.n), block_rows, centroid_block, comm)
    return labels.cpu().numpy(), sq.cpu().numpy()


def assign_all(
    rows: Rows, centers: torch.Tensor, block_rows: int, centroid_block: int, comm: Comm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and squared distances of all rows, each rank assigning its slice."""
    result = assign_pass(comm.local(rows), centers, block_rows, centroid_block, False)
    return comm.gather_rows(result.labels), comm.gather_rows(result.sq_distances)
