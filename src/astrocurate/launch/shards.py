"""The ``K/N`` shard of a process: which part of a step's input it computes.

Given as ``--shard K/N`` or found in the environment of a SLURM job array, torchrun or srun
(``--shard auto``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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


def parse_shard_spec(text: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Parse ``--shard``: ``K/N`` (0-based K) or ``auto`` (:func:`shard_from_environment`).

    Parameters
    ----------
    text : str
        The option's value.
    environ : mapping, optional
        Environment to read for ``auto``; default ``os.environ``.

    Returns
    -------
    tuple of int
        ``(K, N)`` with ``0 <= K < N``.
    """
    if str(text).strip().lower() == "auto":
        return shard_from_environment(environ)
    return parse_shard(text)


def shard_from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Return ``(K, N)`` of this process from a SLURM job array, torchrun or srun.

    In that order: a SLURM array task is task ``SLURM_ARRAY_TASK_ID -
    SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT`` (``--array=0-7`` or
    ``--array=1-8``, with an optional ``%`` limit; a step ``:S`` is divided out); torchrun
    gives ``RANK`` of ``WORLD_SIZE``; the tasks of one ``srun -n N`` step give
    ``SLURM_PROCID`` of ``SLURM_STEP_NUM_TASKS``.

    Raises
    ------
    InvalidArgumentError
        When none is set, or the array's task IDs are not evenly spaced.
    """
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_TASK_ID", "").strip():
        return _array_shard(env)
    for rank_name, world_name in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS")):
        if env.get(rank_name, "").strip() and env.get(world_name, "").strip():
            rank, world = _env_int(env, rank_name), _env_int(env, world_name)
            if not 0 <= rank < world:
                raise InvalidArgumentError(
                    f"--shard auto: {rank_name}={rank} is not in [0, {world}) ({world_name})"
                )
            return rank, world
    raise InvalidArgumentError(
        "--shard auto: none of SLURM_ARRAY_TASK_ID (a SLURM job array), RANK and WORLD_SIZE "
        "(torchrun), SLURM_PROCID and SLURM_STEP_NUM_TASKS (srun) is set; give --shard K/N"
    )


def _array_shard(env: Mapping[str, str]) -> tuple[int, int]:
    task = _env_int(env, "SLURM_ARRAY_TASK_ID")
    first = _env_int(env, "SLURM_ARRAY_TASK_MIN", task)
    last = _env_int(env, "SLURM_ARRAY_TASK_MAX", task)
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP", 1)
    count = _env_int(env, "SLURM_ARRAY_TASK_COUNT", (last - first) // max(step, 1) + 1)
    spaced = step >= 1 and first + (count - 1) * step == last and (task - first) % step == 0
    if not spaced or not first <= task <= last:
        raise InvalidArgumentError(
            f"--shard auto: SLURM array task {task} of {count} IDs from {first} to {last} "
            f"(step {step}) are not evenly spaced; submit --array=0-{count - 1} or give --shard K/N"
        )
    return (task - first) // step, count


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = env.get(name, "").strip()
    if not text and default is not None:
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidArgumentError(f"--shard auto: {name}={text!r} is not an integer") from None
