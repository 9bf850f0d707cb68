"""usable_cpus: worker and thread defaults follow the cores a process may use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from astrocurate.cpus import usable_cpus

PROBE = (
    "from astrocurate.cpus import usable_cpus; import torch; "
    "from astrocurate.stages.feature_extraction.run import default_workers; "
    "print(usable_cpus(), default_workers(torch.device('cpu')), "
    "default_workers(torch.device('cuda')))"
)


def probe(env: dict[str, str], *prefix: str) -> list[int]:
    out = subprocess.run(
        [*prefix, sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [int(v) for v in out.split()]


def test_default_is_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert usable_cpus() == len(os.sched_getaffinity(0))


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) missing")
def test_a_process_pinned_to_one_core_gets_one_worker() -> None:
    # one core of the machine: no loader workers on the CPU, one to feed a GPU
    assert probe({"SLURM_CPUS_PER_TASK": ""}, "taskset", "-c", "0") == [1, 0, 1]


def test_slurm_cpus_per_task_caps_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert usable_cpus() == 4
    for ignored in ("", "0", "four"):  # unset, nonsense: the mask alone
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", ignored)
        assert usable_cpus() == 64


def test_without_affinity_masks_the_machine_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cpus() == 1
