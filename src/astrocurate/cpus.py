"""The CPU cores this process may use: what worker and thread counts default to."""

from __future__ import annotations

import os

__all__ = ["usable_cpus"]


def usable_cpus() -> int:
    """Return the number of CPU cores this process may use (at least 1).

    The cores of the process's affinity mask, which ``taskset``, cgroup cpusets,
    containers and SLURM's task binding restrict, rather than ``os.cpu_count()``, which
    counts every core of the machine: a SLURM task given 4 CPUs on a 64-core node must
    not start 64 workers. Inside a SLURM job that binds no cores, ``SLURM_CPUS_PER_TASK``
    (set by ``--cpus-per-task``) caps the count.

    Returns
    -------
    int
        Cores available to this process.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks on this platform
        cores = os.cpu_count() or 1
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if allocated.isdigit() and int(allocated) > 0:
        cores = min(cores, int(allocated))
    return max(1, cores)
