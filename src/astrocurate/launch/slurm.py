"""The ``--slurm_*`` options of a step: one :class:`SlurmOptions`, validated in one place.

A :class:`SlurmOptions` becomes sbatch options in one way (:meth:`SlurmOptions.
sbatch_options`), written as ``#SBATCH`` lines or as words of sbatch's command line by
:mod:`astrocurate.launch.sbatch`, and is read from the command line in one way
(:func:`add_slurm_arguments`, :meth:`SlurmOptions.from_namespace`).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, fields
from typing import Any

from astrocurate.errors import InvalidArgumentError

#: A SLURM account, partition or QOS name (fullmatch: no newline, nothing to quote).
SLURM_NAME = re.compile(r"[A-Za-z0-9_.+\-]+")
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_GRES = re.compile(r"^[A-Za-z0-9_.:+-]+$")

#: The flags every SLURM-aware step takes, with their default help.
SLURM_FLAGS = {
    "account": "SLURM account of every job",
    "partition": "SLURM partition of every job",
    "time": "time limit per job, e.g. 01:00:00",
    "qos": "SLURM quality of service",
}


@dataclass(frozen=True)
class SlurmOptions:
    """SLURM settings of the jobs of a step (its ``--slurm_*`` flags).

    Attributes
    ----------
    account, partition, qos : str, optional
        ``--account``, ``--partition``, ``--qos`` of every job.
    time : str, optional
        Time limit per job (SLURM format, e.g. ``01:00:00`` or ``1-00:00:00``).
    gres : str, optional
        ``--gres`` of the jobs that compute (``gpu:1``).
    cpus_per_task : int, optional
        ``--cpus-per-task`` of the jobs that compute; None: the partition's default.
    """

    account: str | None = None
    partition: str | None = None
    time: str | None = None
    qos: str | None = None
    gres: str | None = None
    cpus_per_task: int | None = None

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> SlurmOptions:
        """Return the options of parsed ``--slurm_*`` flags (absent flags are None)."""
        return cls(**{f.name: getattr(args, f"slurm_{f.name}", None) for f in fields(cls)})

    @property
    def given(self) -> bool:
        """Whether any option is set."""
        return any(getattr(self, f.name) is not None for f in fields(self))

    def validate(self) -> SlurmOptions:
        """Check every value (raises :class:`InvalidArgumentError`); return self."""
        for name in ("account", "partition", "qos"):
            value = getattr(self, name)
            if value is not None and not SLURM_NAME.fullmatch(value):
                raise InvalidArgumentError(
                    f"--slurm_{name}={value!r}: expected a SLURM name (letters, digits, _ . + -)"
                )
        if self.time is not None and (
            not _SLURM_TIME.fullmatch(self.time) or time_limit_seconds(self.time) is None
        ):
            raise InvalidArgumentError(
                f"--slurm_time={self.time!r}: expected a SLURM time limit such as 01:00:00, "
                "90 (minutes), 2-00:00:00"
            )
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise InvalidArgumentError(
                f"--slurm_cpus_per_task: expected a CPU count >= 1, got {self.cpus_per_task}"
            )
        if self.gres is not None and not _GRES.match(self.gres):
            raise InvalidArgumentError(
                f"--slurm_gres={self.gres!r}: expected a SLURM gres such as gpu:1 or gpu:a100:2"
            )
        return self

    def sbatch_options(self) -> list[str]:
        """Return the set options as sbatch options (``--account=A``, ...), in one order.

        The values are validated SLURM names, times and gres (:meth:`validate`): nothing
        to quote in an ``#SBATCH`` line, and :func:`shlex.quote` leaves them as they are.
        """
        values = (
            ("account", self.account),
            ("partition", self.partition),
            ("qos", self.qos),
            ("time", self.time),
            ("gres", self.gres),
            ("cpus-per-task", self.cpus_per_task),
        )
        return [f"--{name}={value}" for name, value in values if value]


def add_slurm_arguments(
    parser: Any, names: tuple[str, ...] = tuple(SLURM_FLAGS), helps: dict[str, str] | None = None
) -> None:
    """Add the ``--slurm_NAME`` flags that :meth:`SlurmOptions.from_namespace` reads.

    Parameters
    ----------
    parser : argparse.ArgumentParser or argument group
        Where the flags go.
    names : tuple of str
        Which options (fields of :class:`SlurmOptions`).
    helps : dict, optional
        Help text per name, replacing :data:`SLURM_FLAGS`'.
    """
    helps = {**SLURM_FLAGS, **(helps or {})}
    for name in names:
        flags = (f"--slurm_{name}", f"--slurm-{name.replace('_', '-')}")
        if name == "cpus_per_task":
            parser.add_argument(*flags, type=int, default=None, metavar="C", help=helps.get(name))
        else:
            parser.add_argument(*flags, default=None, help=helps.get(name))


def time_limit_seconds(text: str) -> int | None:
    """Return the seconds of a SLURM time limit, or None if it is malformed."""
    match = _SLURM_TIME.match(text.strip())
    if not match:
        return None
    days, a, b, c = match.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # days-hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
        h, m, s = parts
        return ((int(days) * 24 + h) * 60 + m) * 60 + s
    if len(parts) == 1:  # minutes
        return parts[0] * 60
    if len(parts) == 2:  # minutes:seconds
        return parts[0] * 60 + parts[1]
    h, m, s = parts
    return (h * 60 + m) * 60 + s
