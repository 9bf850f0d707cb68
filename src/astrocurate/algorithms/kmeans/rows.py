"""Rows of a k-means input on the compute device: devices, dtypes, blocks, norms.

Inputs are numpy arrays (``np.memmap`` included) or torch tensors. Large inputs are read
block by block: a ``np.memmap`` in the compute dtype is read in place on the CPU;
otherwise an input whose converted copy would exceed ``_PRELOAD_BYTES_CPU`` (CPU) or half
the free GPU memory (CUDA) is converted and moved one block of rows at a time on every
pass.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from astrocurate.algorithms.kmeans.distributed import Comm
from astrocurate.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "MAX_SCORE_ELEMENTS",
    "Array",
    "Rows",
    "Workspace",
    "block_sizes",
    "check_finite",
    "dist_dtype",
    "matmul_precision_scope",
    "resolve_device",
    "resolve_dtype",
    "resolve_torch_device",
    "spans",
]

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
#: Rows per block by device type when ``block_size`` is None.
DEFAULT_BLOCK_ROWS = {"cpu": 8192, "cuda": 65536}
#: Largest block of the score matrix (rows x centroids) by device type; ``centroid_block_size``
#: defaults to ``max(1, this // block_size)``.
MAX_SCORE_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 28}
#: Converted copies of the whole input up to this size are made once on the CPU; larger
#: inputs (that cannot be read in place) are converted block by block on every pass.
_PRELOAD_BYTES_CPU = 1 << 30
#: On CUDA the whole input is copied to the device once when it takes at most this
#: fraction of the free device memory; otherwise row blocks are copied on every pass.
_PRELOAD_FRACTION_CUDA = 0.5

Array = np.ndarray | torch.Tensor


def resolve_device(device: Any) -> torch.device:
    """Return the torch device for ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    InvalidArgumentError
        For an unknown device, or CUDA asked for where there is none.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_torch_device(device)


def resolve_torch_device(device: Any) -> torch.device:
    """Return the torch device for ``cpu``, ``cuda`` or ``cuda:N`` (no ``auto``), checked."""
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


def resolve_dtype(dtype: Any) -> torch.dtype:
    """Return the torch compute dtype named by ``dtype`` (a name or a torch dtype)."""
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    valid = ", ".join(repr(n) for n in _DTYPES)
    raise InvalidArgumentError(f"dtype={dtype!r} must be one of {valid}")


def dist_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of squared distances: at least float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tensor_from_numpy(array: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor over ``array``; read-only arrays (memmaps) are never written to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class Rows:
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
        self._workspaces: dict[tuple[Any, ...], Workspace] = {}

    @property
    def full(self) -> torch.Tensor | None:
        """The whole input as one tensor on the device when that is cheap, else None.

        Made on first use, so that a distributed rank that only reads its own slice and a
        few rows by index never copies the whole input.
        """
        if not self._loaded:
            self._full, self._loaded = self._whole(), True
        return self._full

    def slice(self, start: int, stop: int) -> Rows:
        """Rows ``start:stop`` as their own input (a view: a memmap is not read)."""
        return Rows(self.source[start:stop], self.device, self.dtype)

    def workspace(self, rows: int, cols: int, dtype: torch.dtype, accumulate: bool) -> Workspace:
        """Buffers for passes over these rows, kept between passes (Lloyd iterations)."""
        key = (rows, cols, dtype, accumulate)
        if key not in self._workspaces:
            self._workspaces.clear()
            self._workspaces[key] = Workspace(rows, cols, self.d, dtype, self.device, accumulate)
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
        for start, stop in spans(self.n, DEFAULT_BLOCK_ROWS["cpu"]):
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
        for start, stop in spans(self.n, block_rows):
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
        """Rows ``index`` (an int64 tensor on the device, any order), shape (m, d)."""
        if self.full is not None:
            return torch.index_select(self.full, 0, index)
        return self.take(index.cpu().numpy())

    def sq_norms(self, block_rows: int) -> torch.Tensor:
        """Squared norms of all rows, shape (n,), computed once."""
        if self._sq_norms is None:
            out = torch.empty(self.n, dtype=dist_dtype(self.dtype), device=self.device)
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


def spans(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` of consecutive blocks of ``block_rows`` of ``n`` rows."""
    for start in range(0, n, block_rows):
        yield start, min(start + block_rows, n)


def block_sizes(
    device: torch.device, k: int, block_size: int | None, centroid_block_size: int | None
) -> tuple[int, int]:
    """Return (rows, centroids) per block on ``device`` for ``k`` centroids."""
    rows = block_size or DEFAULT_BLOCK_ROWS[device.type]
    cols = centroid_block_size or max(1, MAX_SCORE_ELEMENTS[device.type] // rows)
    return rows, min(cols, k)


def check_finite(rows: Rows, comm: Comm, block_rows: int) -> None:
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
def matmul_precision_scope(device: torch.device, precision: str) -> Iterator[None]:
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


class Workspace:
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


def _column_chunks(d: int, device: torch.device) -> list[tuple[int, int]]:
    """Column ranges summed independently: one per intra-op thread on the CPU, one on CUDA.

    Every chunk adds its rows in row order, so the sums are the same bit for bit whatever
    the number of chunks.
    """
    parts = 1 if device.type != "cpu" else max(1, min(torch.get_num_threads(), d // 16))
    edges = [round(i * d / parts) for i in range(parts + 1)]
    return list(itertools.pairwise(edges))
