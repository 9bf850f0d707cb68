"""Counting the calls that read a tensor's values on the host: on a GPU each one makes the
host wait for the device's queue, so the hot loops (greedy k-means++, the percentiles of
the feature loop) keep them few. Counted on the CPU, where the same code runs."""

from __future__ import annotations

import warnings
from typing import Any

import torch


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the calls that read a tensor's values on the host (on a GPU: a wait for it)."""

    READS = frozenset(
        {
            torch.Tensor.item,
            torch.Tensor.tolist,
            torch.Tensor.cpu,
            torch.Tensor.numpy,
            torch.Tensor.__int__,
            torch.Tensor.__float__,
            torch.Tensor.__bool__,
            torch.Tensor.__index__,
            torch.Tensor.nonzero,
            torch.nonzero,
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func in self.READS
        return func(*args, **(kwargs or {}))


class CudaSyncsPerCallback:
    """Counts CUDA's own synchronisations (sync debug mode) between calls of a ``KMeans``
    callback during greedy k-means++: ``counts[i]`` is the number since the call before.

    Counting starts at the first call (the set-up before it is not counted: 0).
    """

    def __init__(self) -> None:
        self.counts: list[int] = []

    def __enter__(self) -> CudaSyncsPerCallback:
        self._catching = warnings.catch_warnings(record=True)
        self._caught = self._catching.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._catching.__exit__(*exc)

    def __call__(self, state: Any) -> None:
        if state.phase == "init":
            torch.cuda.set_sync_debug_mode("default")
            self.counts.append(len(self._caught))
            self._caught.clear()
            torch.cuda.set_sync_debug_mode("warn")
