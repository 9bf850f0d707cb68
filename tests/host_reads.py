"""Counting the calls that read a tensor's values on the host: on a GPU each one makes the
host wait for the device's queue, so the hot loops (greedy k-means++, the percentiles of
the feature loop) keep them few. Counted on the CPU, where the same code runs."""

from __future__ import annotations

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
