"""The ``K/N`` shard of a process: which part of a step's input it computes."""

from __future__ import annotations

from astrocurate.errors import InvalidArgumentError


def parse_shard(text: str, argument: str = "--shard") -> tuple[int, int]:
    """Parse ``"K/N"`` into ``(K, N)`` with ``0 <= K < N``.

    Raises
    ------
    InvalidArgumentError
        Naming ``argument`` and the expected form.
    """
    parts = str(text).split("/")
    try:
        k, n = (int(p) for p in parts)
    except ValueError:
        k, n = -1, 0
    if len(parts) != 2 or not 0 <= k < n:
        raise InvalidArgumentError(
            f"{argument}: expected K/N with 0 <= K < N (e.g. $SLURM_ARRAY_TASK_ID/8), got {text!r}"
        )
    return k, n
