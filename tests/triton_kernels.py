"""Making the fused Triton kernels fail as they do where Triton cannot build them, on the CPU."""

from __future__ import annotations

import importlib

import pytest


def kernel_cannot_build(
    monkeypatch: pytest.MonkeyPatch, module: str, name: str, error: Exception
) -> list[int]:
    """Make ``astrocurate.algorithms.kmeans.<module>.<name>`` raise ``error``; return its calls.

    The kernels' module is imported first (wrapped for the GPU, not for the interpreter),
    the record of failed kernels emptied, and ``TRITON_INTERPRET=1`` set, so that k-means
    on the CPU wants the fused kernels as it would on a GPU.
    """
    from astrocurate.algorithms.kmeans import assignment

    kernels = importlib.import_module(f"astrocurate.algorithms.kmeans.{module}")
    monkeypatch.setattr(assignment, "_KERNEL_FAILURE", [])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls: list[int] = []

    def fail(*args: object) -> None:
        calls.append(len(calls))
        raise error

    monkeypatch.setattr(kernels, name, fail)
    return calls


def kernel_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings that the fused kernels were turned off."""
    return [r.getMessage() for r in caplog.records if "kernels cannot run here" in r.getMessage()]
