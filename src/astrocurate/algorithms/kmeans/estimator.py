"""K-means (greedy k-means++ and Lloyd, blockwise, CPU and CUDA) as an estimator over arrays.

This is the algorithm layer of the clustering step (docs/design.md section 4), written from that
description. It knows no files, no MLflow and no command line: inputs are arrays (numpy
arrays, ``np.memmap`` included, or torch tensors) and outputs are numpy arrays.

Conventions
-----------
* Distances are squared Euclidean. The nearest centroid is found blockwise from
  ``|c|^2 - 2 x.c`` (``block_size`` rows and ``centroid_block_size`` centroids at a time),
  so the ``n x k`` distance matrix never exists. The distance to the chosen centroid is
  then recomputed directly as ``|x - c|^2``, which is exact, non-negative and free of the
  cancellation of the expanded form.
* Centroid sums are accumulated in float64 buffers whatever the compute ``dtype``
  (``index_put_(accumulate=True)`` on the CPU, serial and deterministic, many times faster
  there than ``index_add_``; ``index_add_`` on CUDA, whose float64 atomics may sum in any
  order, a difference of ~1e-16 relative); the new centroids are rounded to ``dtype`` once
  per iteration.
* Large inputs are read block by block: a ``np.memmap`` in the compute dtype is read in
  place on the CPU; otherwise an input whose converted copy would exceed
  ``_PRELOAD_BYTES_CPU`` (CPU) or half the free GPU memory (CUDA) is converted and moved
  one block of rows at a time on every pass.
* Randomness: every random choice comes from a :class:`numpy.random.Generator` on the
  host, built from ``random_state`` (``None``, a non-negative int, a
  :class:`numpy.random.SeedSequence` or a :class:`numpy.random.Generator`). The same
  seed therefore draws the same numbers on every device, and on the CPU the same seed
  gives bit-identical results.
  :class:`astrocurate.algorithms.kmeans.hierarchical.HierarchicalKMeans`
  derives one independent stream per (level, step).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from astrocurate.algorithms.kmeans.distributed import Comm
from astrocurate.cpus import usable_cpus
from astrocurate.errors import AstrocurateError, InvalidArgumentError

__all__ = [
    "KMeans",
    "KMeansState",
    "NotFittedError",
    "assign",
    "n_candidates",
]

VALID_INITS = ("k-means++", "random")
VALID_PRECISIONS = ("highest", "tf32")
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
#: Rows per block by device type when ``block_size`` is None.
_DEFAULT_BLOCK_ROWS = {"cpu": 8192, "cuda": 65536}
#: Largest block of the score matrix (rows x centroids) by device type; ``centroid_block_size``
#: defaults to ``max(1, this // block_size)``.
_MAX_SCORE_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 28}
#: Converted copies of the whole input up to this size are made once on the CPU; larger
#: inputs (that cannot be read in place) are converted block by block on every pass.
_PRELOAD_BYTES_CPU = 1 << 30
#: On CUDA the whole input is copied to the device once when it takes at most this
#: fraction of the free device memory; otherwise row blocks are copied on every pass.
_PRELOAD_FRACTION_CUDA = 0.5
#: Greedy k-means++ scores only the rows its bounds keep while they are at most this
#: fraction of the rows; above it a plain pass over all rows (no gathering) costs less.
_SEEDING_GATHER_FRACTION = 0.25

Array = np.ndarray | torch.Tensor


class NotFittedError(AstrocurateError, AttributeError):
    """An estimator's learned state was used before ``fit``."""


# --------------------------------------------------------------------------------------
# Parameter validation (used at the public boundary only)
# --------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise InvalidArgumentError(f"{name}={value!r} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidArgumentError(f"{name}={value!r} must be <= {maximum}")
    return int(value)


def _check_choice(name: str, value: Any, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        valid = ", ".join(repr(o) for o in options)
        raise InvalidArgumentError(f"{name}={value!r} is not valid; choose one of {valid}")
    return value


def _check_tol(tol: Any) -> float | None:
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol):
        raise InvalidArgumentError(f"tol={tol!r} must be None or a finite number >= 0")
    if tol < 0:
        raise InvalidArgumentError(f"tol={tol!r} must be >= 0")
    return float(tol)


def _check_random_state(random_state: Any) -> None:
    if random_state is None or isinstance(
        random_state, np.random.Generator | np.random.SeedSequence
    ):
        return
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise InvalidArgumentError(
            f"random_state={random_state!r} must be None, an integer >= 0, "
            "a numpy SeedSequence or a numpy Generator"
        )
    if random_state < 0:
        raise InvalidArgumentError(f"random_state={random_state!r} must be >= 0")


def resolve_device(device: Any) -> torch.device:
    """Return the torch device for ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    InvalidArgumentError
        For an unknown device, or CUDA asked for where there is none.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _resolve_device(device)


def _resolve_device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(
            f"device={device!r} is not a torch device (use 'cpu', 'cuda' or 'cuda:N')"
        ) from exc
    if dev.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"device={device!r} but CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise InvalidArgumentError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA devices exist"
            )
    return dev


def _resolve_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    valid = ", ".join(repr(n) for n in _DTYPES)
    raise InvalidArgumentError(f"dtype={dtype!r} is not valid; choose one of {valid}")


def _check_distributed(value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise InvalidArgumentError(f"distributed={value!r} must be None, True or False")


def _check_block_size(name: str, value: Any) -> int | None:
    return None if value is None else _check_int(name, value, 1)


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


def _dist_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of squared distances: at least float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------
# Row access: numpy arrays (memmaps included) and tensors, block by block
# --------------------------------------------------------------------------------------


def _tensor_from_numpy(array: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor over ``array``; read-only arrays (memmaps) are never written to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class _Rows:
    """An ``(n, d)`` input read on ``device`` in ``dtype``, whole or one block at a time.

    Parameters
    ----------
    X : numpy.ndarray, numpy.memmap or torch.Tensor, shape (n, d)
        The rows. Integer and floating dtypes are accepted.
    device : torch.device
        Where blocks are computed on.
    dtype : torch.dtype
        Compute dtype of the blocks.
    """

    def __init__(self, data: Any, device: torch.device, dtype: torch.dtype) -> None:
        if not isinstance(data, np.ndarray | torch.Tensor):
            data = np.asarray(data)
        kind_ok = (
            not data.dtype.is_complex and data.dtype != torch.bool
            if isinstance(data, torch.Tensor)
            else data.dtype.kind in "fiu"
        )
        if not kind_ok:
            raise InvalidArgumentError(f"X has dtype {data.dtype}; expected a real numeric dtype")
        if data.ndim != 2:
            raise InvalidArgumentError(
                f"X must be 2-D (n_samples, n_features); got shape {tuple(data.shape)}"
            )
        if data.shape[0] < 1 or data.shape[1] < 1:
            raise InvalidArgumentError(
                f"X must have at least one row and one column; got shape {tuple(data.shape)}"
            )
        self.source = data
        self.n, self.d = int(data.shape[0]), int(data.shape[1])
        self.device, self.dtype = device, dtype
        self._np_dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
        self._full: torch.Tensor | None = None
        self._loaded = False
        self._sq_norms: torch.Tensor | None = None
        self._largest_sq_norm: torch.Tensor | None = None
        self._finite_checked = False
        self._workspaces: dict[tuple[Any, ...], _Workspace] = {}

    @property
    def full(self) -> torch.Tensor | None:
        """The whole input as one tensor on the device when that is cheap, else None.

        Made on first use, so that a distributed rank that only reads its own slice and a
        few rows by index never copies the whole input.
        """
        if not self._loaded:
            self._full, self._loaded = self._whole(), True
        return self._full

    def slice(self, start: int, stop: int) -> _Rows:
        """Rows ``start:stop`` as their own input (a view: a memmap is not read)."""
        return _Rows(self.source[start:stop], self.device, self.dtype)

    def workspace(self, rows: int, cols: int, dtype: torch.dtype, accumulate: bool) -> _Workspace:
        """Buffers for passes over these rows, kept between passes (Lloyd iterations)."""
        key = (rows, cols, dtype, accumulate)
        if key not in self._workspaces:
            self._workspaces.clear()
            self._workspaces[key] = _Workspace(rows, cols, self.d, dtype, self.device, accumulate)
        return self._workspaces[key]

    def _whole(self) -> torch.Tensor | None:
        """Return the whole input as one tensor on the device when that is cheap, else None."""
        data, dev, dt = self.source, self.device, self.dtype
        nbytes = self.n * self.d * torch.empty(0, dtype=dt).element_size()
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            budget = int(free * _PRELOAD_FRACTION_CUDA)
        else:
            budget = _PRELOAD_BYTES_CPU
        if isinstance(data, torch.Tensor):
            if data.device == dev and data.dtype == dt:
                return data.detach()
            return data.detach().to(dev, dt) if nbytes <= budget else None
        if dev.type == "cpu" and data.dtype == self._np_dtype and data.flags.c_contiguous:
            return _tensor_from_numpy(data)  # in place, memmaps included
        if (isinstance(data, np.memmap) and dev.type == "cpu") or nbytes > budget:
            return None
        whole = torch.empty((self.n, self.d), dtype=dt, device=dev)
        for start, stop in _spans(self.n, _DEFAULT_BLOCK_ROWS["cpu"]):
            whole[start:stop] = self._convert(data[start:stop])
        return whole

    def _convert(self, part: Any) -> torch.Tensor:
        if isinstance(part, torch.Tensor):
            return part.detach().to(self.device, self.dtype)
        part = np.asarray(part)
        if self._np_dtype is not None and part.dtype == self._np_dtype:
            tensor = _tensor_from_numpy(np.ascontiguousarray(part))
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float64))
        return tensor.to(self.device, self.dtype)

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` on the device, shape (stop - start, d)."""
        if self.full is not None:
            return self.full[start:stop]
        return self._convert(self.source[start:stop])

    def blocks(self, block_rows: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(start, stop, rows)`` over consecutive blocks of ``block_rows`` rows."""
        for start, stop in _spans(self.n, block_rows):
            yield start, stop, self.block(start, stop)

    def take(self, indices: np.ndarray) -> torch.Tensor:
        """Rows ``indices`` (any order, repeats allowed) on the device, shape (m, d)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._loaded and self._full is not None:  # never loads the whole input for a few rows
            return self._full[torch.from_numpy(indices).to(self.device)]
        if isinstance(self.source, torch.Tensor):
            return self._convert(self.source[torch.from_numpy(indices)])
        order = np.argsort(indices, kind="stable")  # memmaps read fastest in row order
        rows = self._convert(self.source[indices[order]])
        inverse = torch.from_numpy(np.argsort(order, kind="stable")).to(self.device)
        return rows[inverse]

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` (an ascending int64 tensor on the device), shape (m, d)."""
        if self.full is not None:
            return torch.index_select(self.full, 0, index)
        return self.take(index.cpu().numpy())

    def sq_norms(self, block_rows: int) -> torch.Tensor:
        """Squared norms of all rows, shape (n,), computed once."""
        if self._sq_norms is None:
            out = torch.empty(self.n, dtype=_dist_dtype(self.dtype), device=self.device)
            for start, stop, xb in self.blocks(block_rows):
                xf = xb.to(out.dtype)
                out[start:stop] = (xf * xf).sum(1)
            self._sq_norms = out
        return self._sq_norms

    def largest_sq_norm(self, block_rows: int) -> torch.Tensor:
        """Return the largest of :meth:`sq_norms` (a 0-d tensor on the device), found once."""
        if self._largest_sq_norm is None:
            self._largest_sq_norm = self.sq_norms(block_rows).max()
        return self._largest_sq_norm

    def check_finite(self, block_rows: int) -> None:
        """Raise if any value is NaN or infinite (after conversion to the compute dtype)."""
        if self._finite_checked:
            return
        for start, _, xb in self.blocks(block_rows):
            bad = ~torch.isfinite(xb).all(dim=1)
            if bool(bad.any()):
                row = start + int(torch.nonzero(bad)[0, 0])
                raise InvalidArgumentError(
                    f"X contains non-finite values (NaN or infinity in {self.dtype}); "
                    f"the first is in row {row}"
                )
        self._finite_checked = True


def _spans(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, block_rows):
        yield start, min(start + block_rows, n)


def _block_sizes(
    device: torch.device, k: int, block_size: int | None, centroid_block_size: int | None
) -> tuple[int, int]:
    rows = block_size or _DEFAULT_BLOCK_ROWS[device.type]
    cols = centroid_block_size or max(1, _MAX_SCORE_ELEMENTS[device.type] // rows)
    return rows, min(cols, k)


def _check_finite(rows: _Rows, comm: Comm, block_rows: int) -> None:
    """Check this rank's rows; every rank raises when any rank found a non-finite value."""
    error = None
    try:
        rows.check_finite(block_rows)
    except InvalidArgumentError as exc:
        error = exc
    if comm.any(error is not None, rows.device):
        if error is not None:
            raise error
        raise InvalidArgumentError("X contains non-finite values (found by another rank)")


@contextlib.contextmanager
def _matmul_precision(device: torch.device, precision: str) -> Iterator[None]:
    """Allow TF32 matmuls on CUDA inside the block when ``precision == "tf32"``."""
    if device.type != "cuda" or precision == "highest":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# --------------------------------------------------------------------------------------
# Assignment and accumulation
# --------------------------------------------------------------------------------------


class _Workspace:
    """Buffers reused by every block of a pass (and by later passes), so blocks allocate nothing.

    Parameters
    ----------
    rows, cols : int
        Largest block of rows and of centroids.
    d : int
        Features.
    dtype : torch.dtype
        Compute dtype.
    device : torch.device
        Where the buffers live.
    accumulate : bool
        Whether to hold float64 copies of a block for the sums.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        d: int,
        dtype: torch.dtype,
        device: torch.device,
        accumulate: bool,
    ) -> None:
        self.scores = torch.empty(rows * cols, dtype=dtype, device=device)
        # the exact distances go _DIST_ROWS rows at a time on the CPU, a block at once on CUDA
        step = min(rows, _DIST_ROWS) if device.type == "cpu" else rows
        self.diff = torch.empty((step, d), dtype=dtype, device=device)
        # one float64 copy per column chunk (CPU: one chunk per accumulating thread)
        self.chunks = _column_chunks(d, device) if accumulate else []
        self.x64 = [
            torch.empty((rows, c1 - c0), dtype=torch.float64, device=device)
            for c0, c1 in self.chunks
        ]


#: Rows per step of the exact distance recomputation (its buffers stay in cache).
_DIST_ROWS = 1024
#: Threads summing column chunks of the centroid sums on the CPU (created on first use).
_ACCUMULATORS: ThreadPoolExecutor | None = None


def _column_chunks(d: int, device: torch.device) -> list[tuple[int, int]]:
    """Column ranges summed independently: one per intra-op thread on the CPU, one on CUDA.

    Every chunk adds its rows in row order, so the sums are the same bit for bit whatever
    the number of chunks.
    """
    parts = 1 if device.type != "cpu" else max(1, min(torch.get_num_threads(), d // 16))
    edges = [round(i * d / parts) for i in range(parts + 1)]
    return list(itertools.pairwise(edges))


def _accumulators() -> ThreadPoolExecutor:
    global _ACCUMULATORS
    if _ACCUMULATORS is None:
        _ACCUMULATORS = ThreadPoolExecutor(usable_cpus(), "kmeans-sums")
    return _ACCUMULATORS


@functools.cache
def _has_triton() -> bool:
    """Whether Triton is installed (it comes with the CUDA builds of torch on Linux)."""
    return importlib.util.find_spec("triton") is not None


def _fused_assignment(device: torch.device, dtype: torch.dtype, matmul_precision: str) -> bool:
    """Whether Lloyd passes on ``device`` assign rows with the fused Triton kernel."""
    tf32 = device.type == "cuda" and matmul_precision == "tf32"
    return dtype == torch.float32 and _has_triton() and (tf32 or _triton_interpreter(device))


def _triton_interpreter(device: torch.device) -> bool:
    """Whether Triton's numpy interpreter is on (``TRITON_INTERPRET=1``; tests, on the CPU)."""
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _fused_wanted(xb: torch.Tensor, centers: torch.Tensor) -> bool:
    """Whether :func:`_nearest` hands ``xb`` to the fused kernel.

    Yes for float32 on CUDA while TF32 is allowed (inside the ``matmul_precision="tf32"``
    block), and for float32 on the CPU under the Triton interpreter.
    """
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "highest"
    return centers.dtype == xb.dtype and _fused_assignment(xb.device, xb.dtype, precision)


def _nearest(
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

        return nearest_kernel.nearest(xb, centers, c_sq)
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


def _seeding_blocks(
    local: _Rows, scored: torch.Tensor | None, block_rows: int
) -> Iterator[tuple[slice | torch.Tensor, torch.Tensor]]:
    """Yield ``(where, rows)``: all rows block by block (``scored`` None) or the ``scored``."""
    if scored is None:
        for start, stop, xb in local.blocks(block_rows):
            yield slice(start, stop), xb
    else:
        for start, stop in _spans(len(scored), block_rows):
            yield scored[start:stop], local.gather(scored[start:stop])


def _sq_dist_to(
    xb: torch.Tensor,
    centers: torch.Tensor,
    labels: torch.Tensor,
    diff: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact ``|x_i - c_{labels_i}|^2``, shape (b,), in :func:`_dist_dtype`.

    ``diff`` (shape (r, d), dtype of ``xb``) and ``out`` are optional buffers; with
    ``diff`` the rows go ``r`` at a time, so that its passes stay in cache.
    """
    if diff is None or diff.dtype != _dist_dtype(xb.dtype):
        diff = torch.index_select(centers, 0, labels).sub_(xb)
        return torch.sum(diff.to(_dist_dtype(xb.dtype)).square_(), dim=1, out=out)
    b, step = xb.shape[0], diff.shape[0]
    out = torch.empty(b, dtype=diff.dtype, device=xb.device) if out is None else out
    for r0 in range(0, b, step):
        r1 = min(r0 + step, b)
        part = torch.index_select(centers, 0, labels[r0:r1], out=diff[: r1 - r0])
        part.sub_(xb[r0:r1])
        torch.sum(part.square_(), dim=1, out=out[r0:r1])
    return out


def _accumulate(
    sums: list[torch.Tensor],
    xb: torch.Tensor,
    labels: torch.Tensor,
    ws: _Workspace,
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
class _Pass:
    """Result of one assignment pass over all rows."""

    labels: torch.Tensor  # (n,) int64
    sq_distances: torch.Tensor  # (n,)
    sums: torch.Tensor | None  # (k, d) float64
    counts: torch.Tensor | None  # (k,) int64

    @property
    def potential(self) -> float:
        return float(self.sq_distances.sum(dtype=torch.float64))


def _assign_pass(
    rows: _Rows, centers: torch.Tensor, block_rows: int, centroid_block: int, accumulate: bool
) -> _Pass:
    """Assign every row to its nearest centre; optionally accumulate float64 sums."""
    k, dev = centers.shape[0], centers.device
    c_sq = (centers * centers).sum(dim=1)
    labels = torch.empty(rows.n, dtype=torch.int64, device=dev)
    sq = torch.empty(rows.n, dtype=_dist_dtype(centers.dtype), device=dev)
    ws = rows.workspace(min(block_rows, rows.n), min(centroid_block, k), centers.dtype, accumulate)
    chunks = [torch.zeros((k, c1 - c0), dtype=torch.float64, device=dev) for c0, c1 in ws.chunks]
    counts = torch.zeros(k, dtype=torch.int64, device=dev) if accumulate else None
    for start, stop, xb in rows.blocks(block_rows):
        lab = _nearest(xb, centers, c_sq, centroid_block, ws.scores)
        labels[start:stop] = lab
        _sq_dist_to(xb, centers, lab, ws.diff, sq[start:stop])
        if accumulate:
            _accumulate(chunks, xb, lab, ws)
            counts += torch.bincount(lab, minlength=k)
    sums = None
    if accumulate:
        sums = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
    return _Pass(labels, sq, sums, counts)


def _update_centers(sums: torch.Tensor, counts: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Means of the clusters (float64, then rounded to ``old.dtype``); empty ones keep ``old``."""
    nonempty = counts > 0
    new = old.to(torch.float64)
    new[nonempty] = sums[nonempty] / counts[nonempty].unsqueeze(1).to(torch.float64)
    return new.to(old.dtype)


# --------------------------------------------------------------------------------------
# Exact pruning of the assignment: triangle-inequality bounds per group of centres
# --------------------------------------------------------------------------------------

#: Relative slack added on top of the rounding-error bounds of the pruning test.
_BOUND_SLACK = 1e-9
#: Most groups of centres, each with one lower bound per row (4 bytes per row and group).
_MAX_GROUPS = 64
#: Lloyd iterations that form the groups from the first centres.
_GROUP_ITERS = 5


def _score_error_factor(dtype: torch.dtype, d: int, device: torch.device) -> float | None:
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
    rows = _Rows(centers, centers.device, centers.dtype)
    start = torch.linspace(0, k - 1, n_groups, device=centers.device).round().long()
    means = centers[start]
    for _ in range(_GROUP_ITERS):
        res = _assign_pass(rows, means, block_rows, min(centroid_block, n_groups), True)
        means = _update_centers(res.sums, res.counts, means)
    return _assign_pass(rows, means, block_rows, min(centroid_block, n_groups), False).labels


def _nearest_groups(
    xb: torch.Tensor,
    centers: torch.Tensor,
    c_sq: torch.Tensor,
    centroid_block: int,
    groups: torch.Tensor,
    n_groups: int,
    scores: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`_nearest`, plus the lowest score ``|c|^2 - 2 x.c`` per group of centres.

    The labels are those of :func:`_nearest` (the same products, the first index on
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
class _Bounds:
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
    ctx: _PassContext, xb: torch.Tensor, x_sq: torch.Tensor, err: torch.Tensor, ws: _Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of ``xb`` from the full GEMM, and new lower bounds per group (float32)."""
    labels, group_min = _nearest_groups(
        xb, ctx.centers, ctx.c_sq, ctx.centroid_block, ctx.groups, ctx.n_groups, ws.scores
    )
    # |x - c|^2 >= computed |x|^2 + score - E for every c
    low = group_min.to(torch.float64).add_(x_sq[:, None]).sub_(err[:, None])
    return labels, _down_f32(low.clamp_(min=0).sqrt_())


def _fresh_block(
    ctx: _PassContext, xb: torch.Tensor, x_sq: torch.Tensor, ws: _Workspace, sq_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels, lower bounds and exact distances (into ``sq_out``) from the full GEMM."""
    labels, lower = _fresh_lower(ctx, xb, x_sq.to(torch.float64), ctx.score_error(x_sq), ws)
    _sq_dist_to(xb, ctx.centers, labels, ws.diff, sq_out)
    return labels, lower


def _check_bounds(
    ctx: _PassContext,
    xb: torch.Tensor,
    x_sq: torch.Tensor,
    prev_labels: torch.Tensor,
    prev_lower: torch.Tensor,
    ws: _Workspace,
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
    _sq_dist_to(xb, ctx.centers, prev_labels, ws.diff, sq_out)
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
    (:func:`_nearest`, as in the full pass). A rescored group's new lower bound leaves the
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
        labels[near_tie] = _nearest(xr[near_tie], ctx.centers, ctx.c_sq, ctx.centroid_block)
    group_min = torch.where(first_idx == labels[pair_row], second, first).to(torch.float64)
    low = group_min.add_(x_sq.to(torch.float64)[pair_row]).sub_(err[pair_row])
    lower[pair_row, pair_group] = _down_f32(low.clamp_(min=0).sqrt_())
    return labels, lower


def _row_min(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Minimum of ``values`` per row index ``rows``, shape (n,) (every row has a value)."""
    out = torch.empty(n, dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(0, rows, values, "amin", include_self=False)


def _pass_context(
    rows: _Rows,
    centers: torch.Tensor,
    block_rows: int,
    centroid_block: int,
    bounds: _Bounds,
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


def _pruned_pass(
    rows: _Rows,
    centers: torch.Tensor,
    block_rows: int,
    centroid_block: int,
    accumulate: bool,
    bounds: _Bounds,
    rho: float,
) -> _Pass:
    """:func:`_assign_pass` that skips the products its bounds prove unnecessary.

    The first pass takes the full GEMM and records, per row and group of centres, a lower
    bound of the distance to the group's centres. Later passes compute the exact distance
    to each row's previous label, keep the rows whose bounds rule out every other group,
    and rescore the others against the centres of the groups that they do not rule out
    (one GEMM per group, :func:`_rescore`); then, block by block, the exact distances of
    blocks whose labels moved are recomputed and the sums accumulated, exactly as in
    :func:`_assign_pass`. ``bounds`` is updated in place.
    """
    k, dev = centers.shape[0], centers.device
    ctx = _pass_context(rows, centers, block_rows, centroid_block, bounds, rho)
    first = bounds.labels is None
    x_sq = rows.sq_norms(block_rows)
    labels = torch.empty(rows.n, dtype=torch.int64, device=dev)
    lower = torch.empty((rows.n, ctx.n_groups), dtype=torch.float32, device=dev)
    sq = torch.empty(rows.n, dtype=_dist_dtype(centers.dtype), device=dev)
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
                _sq_dist_to(xb, centers, lab, ws.diff, sq[start:stop])
            if accumulate:
                _accumulate(chunks, xb, lab, ws)
                counts += torch.bincount(lab, minlength=k)
    bounds.labels, bounds.lower, bounds.centers = labels, lower, centers.clone()
    bounds.recomputed.append(recomputed)
    sums = None
    if accumulate:
        sums = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
    return _Pass(labels, sq, sums, counts)


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
        bounds: _Bounds,
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
    dev, dt = _resolve_device(device), _resolve_dtype(dtype)
    block_size = _check_block_size("block_size", block_size)
    centroid_block_size = _check_block_size("centroid_block_size", centroid_block_size)
    rows = _Rows(X, dev, dt)
    cents = _Rows(centroids, dev, dt)
    if cents.d != rows.d:
        raise InvalidArgumentError(
            f"centroids have {cents.d} features but X has {rows.d}; they must match"
        )
    _check_choice("matmul_precision", matmul_precision, VALID_PRECISIONS)
    _check_distributed(distributed)
    block_rows, centroid_block = _block_sizes(dev, cents.n, block_size, centroid_block_size)
    comm = Comm(distributed, rows.n)
    _check_finite(comm.local(rows), comm, block_rows)
    cents.check_finite(block_rows)
    with _matmul_precision(dev, matmul_precision):
        labels, sq = _assign_all(rows, cents.block(0, cents.n), block_rows, centroid_block, comm)
    return labels.cpu().numpy(), sq.cpu().numpy()


def _assign_all(
    rows: _Rows, centers: torch.Tensor, block_rows: int, centroid_block: int, comm: Comm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and squared distances of all rows, each rank assigning its slice."""
    result = _assign_pass(comm.local(rows), centers, block_rows, centroid_block, False)
    return comm.gather_rows(result.labels), comm.gather_rows(result.sq_distances)


# --------------------------------------------------------------------------------------
# K-means
# --------------------------------------------------------------------------------------


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
        dev, dt = _resolve_device(device), _resolve_dtype(dtype)
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
    and every Lloyd update with the live :class:`KMeansState`; ``f`` may save
    ``state.state_dict()`` (every N steps, say), and ``fit(X, state=...)`` with the state
    restored by :meth:`KMeansState.from_state_dict` resumes to the same result. The work is
    split into small steps over that state (``_init_state``, ``_kmeanspp_step``,
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
    rows that the triangle inequality cannot rule out (``_seeding_rows``): once the
    centres are dense, a few per cent of the rows per centre; the step then costs one
    ``n_candidates x step`` product and a few passes over ``n`` scalars. A Lloyd
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
        X: Array,  # noqa: N803
        *,
        state: KMeansState | None = None,
        callback: Callable[[KMeansState], None] | None = None,
    ) -> KMeans:
        """Cluster the rows of ``X``.

        Parameters
        ----------
        X : array or tensor, shape (n, d)
            Points; a ``np.memmap`` is read block by block.
        state : KMeansState, optional
            Continue a fit from this state (e.g. restored from a checkpoint) instead of
            starting afresh; it must come from the same parameters and ``X``.
        callback : callable, optional
            Called with the live :class:`KMeansState` after each k-means++ centre and after
            each Lloyd update (e.g. to checkpoint every N steps).

        Returns
        -------
        KMeans
            self, fitted.
        """
        self._validate()
        rows = _Rows(X, self._device, self._dtype)
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

    def _init_state(self, rows: _Rows, local: _Rows, comm: Comm) -> KMeansState:
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
            first = np.array([rng.integers(rows.n)], dtype=np.int64)
            inf = torch.full((local.n,), math.inf, dtype=_dist_dtype(self._dtype))
            self._add_center(rows, local, comm, state, first, inf.to(self._device))
        return state

    def _kmeanspp_step(self, rows: _Rows, local: _Rows, comm: Comm, state: KMeansState) -> None:
        """Choose the next greedy k-means++ centre (updates ``state`` in place)."""
        d2 = state.min_sq_distances
        cums = torch.cumsum(d2, dim=0, dtype=torch.float64)
        offsets = np.zeros(comm.world + 1)  # where each rank's share of the potential starts
        np.cumsum(comm.gather(cums[-1:]), out=offsets[1:])
        total = float(offsets[-1])
        rng = state.rng
        if total > 0:
            u = rng.random(n_candidates(self.n_clusters)) * total
            u = np.minimum(u, np.nextafter(total, 0.0))  # u < total
            cand = self._draw(cums, u, offsets, comm)
        else:  # every row coincides with a chosen centre: pick an unchosen row uniformly
            free = np.ones(rows.n, dtype=bool)
            free[state.center_indices[: state.step]] = False
            cand = np.array([rng.choice(np.flatnonzero(free))], dtype=np.int64)
        self._add_center(rows, local, comm, state, cand, d2)

    @staticmethod
    def _draw(cums: torch.Tensor, u: np.ndarray, offsets: np.ndarray, comm: Comm) -> np.ndarray:
        """Rows (global indices) where the cumulative potential first exceeds each ``u``."""
        if comm.world == 1:
            found = torch.searchsorted(cums, torch.from_numpy(u).to(cums.device), right=True)
            return found.clamp_(max=len(cums) - 1).cpu().numpy()
        lo, hi = offsets[comm.rank], offsets[comm.rank + 1]
        mine = (u >= lo) & (u < hi)  # the ranges of the ranks partition [0, total)
        cand = torch.full((len(u),), -1, dtype=torch.int64, device=cums.device)
        if mine.any():
            where = torch.from_numpy(np.flatnonzero(mine)).to(cums.device)
            local_u = torch.from_numpy(u[mine] - lo).to(cums.device)
            found = torch.searchsorted(cums, local_u, right=True).clamp_(max=len(cums) - 1)
            cand[where] = found + comm.start
        torch.distributed.all_reduce(cand, op=torch.distributed.ReduceOp.MAX)
        return cand.cpu().numpy()

    def _add_center(
        self,
        rows: _Rows,
        local: _Rows,
        comm: Comm,
        state: KMeansState,
        cand: np.ndarray,
        d2: torch.Tensor,
    ) -> None:
        """Keep the candidate that most lowers the potential; update D^2 (this rank's rows).

        The potential with candidate ``c`` is the current one less its gain, the sum over
        the rows of ``D^2(x) - min(D^2(x), |x - c|^2)``; rows that no candidate can bring
        closer (:meth:`_seeding_rows`) add nothing and are not scored.
        """
        block_rows, _ = self._blocks(len(cand))
        if local.full is not None and self.block_size is None:
            # few columns: take many rows at once (fewer, larger kernels)
            block_rows = max(block_rows, _MAX_SCORE_ELEMENTS[local.device.type] // len(cand))
        cx = rows.take(cand).to(d2.dtype)
        cx_sq = (cx * cx).sum(dim=1)
        x_sq = local.sq_norms(block_rows)
        scored = self._seeding_rows(local, state, cx, cx_sq, block_rows, d2)
        gains = torch.zeros(len(cand), dtype=torch.float64, device=d2.device)
        parts = []  # (rows, their new D^2 with each candidate)
        for where, xb in _seeding_blocks(local, scored, block_rows):
            old = d2[where]
            new = torch.addmm(cx_sq, xb.to(d2.dtype), cx.T, alpha=-2)
            new.add_(x_sq[where, None]).clamp_(min=0)
            torch.minimum(new, old[:, None], out=new)
            gains += (old[:, None].double() - new.double()).sum(dim=0)
            parts.append((where, new))
        best = int(torch.argmax(comm.sum_(gains)))
        chosen = int(cand[best])
        nearest = state.nearest_centers
        if nearest is None and state.step == 0 and self._seeding_error(local) is not None:
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

    def _seeding_rows(
        self,
        local: _Rows,
        state: KMeansState,
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
        nearest, rho = state.nearest_centers, self._seeding_error(local)
        if nearest is None or rho is None:
            return None
        centers = state.centers[: state.step].to(cx.dtype)
        c_sq = (centers * centers).sum(dim=1)
        gaps = torch.addmm(c_sq, cx, centers.T, alpha=-2).add_(cx_sq[:, None])
        norms = [local.largest_sq_norm(block_rows), c_sq.max(), cx_sq.max()]
        largest_sq = torch.stack(norms).max().double()
        err = 4 * rho * largest_sq  # rho (|x| + |c|)^2 <= rho (2 max norm)^2
        closest = gaps.min(dim=0).values.double()  # nearest candidate to each centre
        keep = closest[nearest] < 4 * d2.double() + 5 * err  # d2.double() may be d2
        scored = torch.nonzero(keep).squeeze(1)
        return None if len(scored) > _SEEDING_GATHER_FRACTION * local.n else scored

    def _lloyd_step(self, local: _Rows, comm: Comm, state: KMeansState) -> _Pass | None:
        """Run one Lloyd iteration: assign, record the potential, update the centres.

        Each rank assigns its rows; the float64 sums, the counts and the potential are
        summed over the ranks, so every rank computes the same new centres.

        Returns
        -------
        _Pass or None
            None while iterating; once the fit is complete (``n_iters`` updates done, or
            early stop) the last assignment pass (this rank's rows), which matches
            ``state.centers``.
        """
        block_rows, centroid_block = self._blocks(self.n_clusters)
        done = state.step >= self.n_iters
        rho = _score_error_factor(self._dtype, local.d, local.device) if self._bounds() else None
        if rho is None:
            result = _assign_pass(local, state.centers, block_rows, centroid_block, not done)
        else:
            result = _pruned_pass(
                local, state.centers, block_rows, centroid_block, not done, self._pruning, rho
            )
        history = state.potential_history
        history.append(comm.sum_float(result.potential, local.device))
        if not done and self.tol is not None and len(history) >= 2:
            done = history[-2] - history[-1] <= self.tol * history[-2]
        if done:
            return result
        sums, counts = comm.sum_(result.sums), comm.sum_(result.counts)
        state.centers = _update_centers(sums, counts, state.centers)
        state.step += 1
        return None

    # -- internals ----------------------------------------------------------------------

    def _validate(self) -> None:
        _check_int("n_clusters", self.n_clusters, 1)
        _check_choice("init", self.init, VALID_INITS)
        _check_int("n_iters", self.n_iters, 0)
        _check_tol(self.tol)
        _check_random_state(self.random_state)
        self._device = _resolve_device(self.device)
        self._dtype = _resolve_dtype(self.dtype)
        _check_block_size("block_size", self.block_size)
        _check_block_size("centroid_block_size", self.centroid_block_size)
        _check_choice("matmul_precision", self.matmul_precision, VALID_PRECISIONS)
        _check_distributed(self.distributed)
        if self.bounds is not None and not isinstance(self.bounds, bool):
            raise InvalidArgumentError(f"bounds={self.bounds!r} must be True, False or None")

    def _bounds(self) -> bool:
        """Whether Lloyd passes prune: ``bounds``, or by default unless the fused kernel runs."""
        if self.bounds is not None:
            return self.bounds
        return not _fused_assignment(self._device, self._dtype, self.matmul_precision)

    def _seeding_error(self, local: _Rows) -> float | None:
        """Return the rounding-error factor of the k-means++ bounds, None when they are off."""
        if self.bounds is False:
            return None
        return _score_error_factor(self._dtype, local.d, local.device)

    def _blocks(self, k: int) -> tuple[int, int]:
        return _block_sizes(self._device, k, self.block_size, self.centroid_block_size)

    def _fit_rows(
        self,
        rows: _Rows,
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
        self._pruning = _Bounds()  # this rank's bounds, rebuilt by the first Lloyd pass
        with _matmul_precision(self._device, self.matmul_precision):
            _check_finite(local, comm, self._blocks(1)[0])
            if state is None:
                state = self._init_state(rows, local, comm)
                if callback is not None:
                    callback(state)
            while state.phase == "init" and state.step < self.n_clusters:
                self._kmeanspp_step(rows, local, comm, state)
                if callback is not None:
                    callback(state)
            if state.phase == "init":
                state.phase, state.step = "lloyd", 0
                state.min_sq_distances = state.nearest_centers = None
            while (final := self._lloyd_step(local, comm, state)) is None:
                if callback is not None:
                    callback(state)
        state.phase = "done"
        self.cluster_centers_ = state.centers.cpu().to(_dist_dtype(self._dtype)).numpy()
        self.labels_ = comm.gather_rows(final.labels).cpu().numpy()
        self.sq_distances_ = comm.gather_rows(final.sq_distances).cpu().numpy()
        self.inertia_ = state.potential_history[-1]
        self.n_iter_ = state.step
        self.potential_history_ = list(state.potential_history)
        self.init_indices_ = state.center_indices.copy()
        self.n_features_in_ = rows.d
        self.n_ranks_ = comm.world
        self.n_recomputed_ = list(self._pruning.recomputed)
        self._centers_tensor = state.centers
        if callback is not None:
            callback(state)
        return self
