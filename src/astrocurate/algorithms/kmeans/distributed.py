"""torch.distributed for the clustering step: joining the ranks, each rank's share of rows.

:func:`init_distributed` joins the process group of a ``torchrun`` or ``srun`` launch;
:class:`Comm` is what one k-means fit needs of it: this rank's slice of the rows and the
reductions of partial sums across the ranks (no-ops for a world of one).
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
import torch

from astrocurate.errors import AstrocurateError, InvalidArgumentError

if TYPE_CHECKING:
    from typing import Self  # Python >= 3.11; annotations only

__all__ = ["Comm", "init_distributed", "slurm_master_port"]


class _Sliceable(Protocol):
    """Rows that can be cut into a contiguous slice (a ``Rows``)."""

    def slice(self, start: int, stop: int) -> Self: ...


_RowsT = TypeVar("_RowsT", bound=_Sliceable)


def _rank_span(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``rank`` among ``world`` ranks (sizes differ by <= 1)."""
    return n * rank // world, n * (rank + 1) // world


class Comm:
    """The share of the work of a process: all rows alone, one row slice per rank otherwise.

    Every collective is a no-op when ``world == 1``, so the single-process path is the
    plain one. Collectives use tensors on the compute device (gloo: CPU, NCCL: CUDA).

    Parameters
    ----------
    distributed : bool or None
        None: distribute when ``torch.distributed`` is initialised with more than one rank;
        False: this process alone (every rank then computes the same thing by itself);
        True: like None, but an error when no process group is initialised.
    n : int
        Rows to share; ranks only split inputs of at least ``world`` rows.
    """

    def __init__(self, distributed: bool | None, n: int) -> None:
        ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and not ready:
            raise InvalidArgumentError(
                "distributed=True but torch.distributed is not initialised; launch with "
                "torchrun or srun and call init_distributed() first"
            )
        world = torch.distributed.get_world_size() if ready else 1
        self.world = world if distributed is not False and n >= world else 1
        self.rank = torch.distributed.get_rank() if self.world > 1 else 0
        self.n = n
        self.start, self.stop = _rank_span(n, self.rank, self.world)

    def local(self, rows: _RowsT) -> _RowsT:
        """Return the rows of this rank (``rows`` itself when alone)."""
        return rows if self.world == 1 else rows.slice(self.start, self.stop)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce ``tensor`` in place (sum; the same bits on every rank); returns it."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def sum_float(self, value: float, device: torch.device) -> float:
        """Sum a float64 value over the ranks."""
        if self.world == 1:
            return value
        return float(self.sum_(torch.tensor([value], dtype=torch.float64, device=device)))

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t)

    def gather(self, values: torch.Tensor) -> np.ndarray:
        """Every rank's ``values`` (same shape on all ranks), concatenated in rank order."""
        if self.world == 1:
            return values.cpu().numpy()
        parts = [torch.empty_like(values) for _ in range(self.world)]
        torch.distributed.all_gather(parts, values.contiguous())
        return torch.cat(parts).cpu().numpy()

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's slice of a per-row tensor, concatenated: shape (n, ...)."""
        if self.world == 1:
            return local
        spans = [_rank_span(self.n, r, self.world) for r in range(self.world)]
        longest = max(stop - start for start, stop in spans)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in spans]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[: stop - start] for p, (start, stop) in zip(parts, spans, strict=True)])


def _slurm_master_addr() -> str:
    """Host of the first node of this SLURM step (where rank 0 runs)."""
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    if os.environ.get("SLURM_STEP_NUM_NODES", os.environ.get("SLURM_NNODES", "1")) == "1":
        return "127.0.0.1"
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodes],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise AstrocurateError(
            f"cannot find the first node of {nodes!r} with scontrol ({exc}); set MASTER_ADDR"
        ) from exc
    return out[0]


#: First port of :func:`slurm_master_port`; the ports stay below 32768, where Linux's
#: ephemeral range (outgoing connections, ``ip_local_port_range``) begins.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 10000


def slurm_master_port(job_id: str | int) -> int:
    """Return the rendezvous port of a SLURM job's ranks: ``20000 + job ID % 10000``.

    Every task computes it alone from ``SLURM_JOB_ID``, so they agree without talking.
    Ports of the ephemeral range would collide with any outgoing connection of the node;
    two jobs sharing a node collide only when their IDs differ by a multiple of 10000
    (set ``MASTER_PORT`` to choose another).
    """
    return SLURM_PORT_BASE + int(job_id) % SLURM_PORT_SPAN


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group of a ``torchrun`` or ``srun`` launch; return (rank, world size).

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``. Under ``srun`` (no ``RANK``) they are derived from ``SLURM_PROCID``,
    ``SLURM_STEP_NUM_TASKS`` and ``SLURM_LOCALID``; ``MASTER_ADDR`` defaults to the first
    node of the step and ``MASTER_PORT`` to :func:`slurm_master_port` of ``SLURM_JOB_ID``.
    A plain process (or an sbatch script outside ``srun``) is a world of one and joins
    nothing.

    Parameters
    ----------
    backend : str, optional
        ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo. With
        NCCL each process uses GPU ``LOCAL_RANK``.

    Returns
    -------
    tuple of int
        This process's rank and the number of ranks.
    """
    env = os.environ
    if "RANK" not in env and "SLURM_STEP_NUM_TASKS" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_STEP_NUM_TASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in env:
            env["MASTER_ADDR"] = _slurm_master_addr()
        env.setdefault("MASTER_PORT", str(slurm_master_port(env.get("SLURM_JOB_ID", "0"))))
    world = int(env.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(env.get("LOCAL_RANK", "0")))
        try:
            torch.distributed.init_process_group(backend)
        except torch.distributed.DistNetworkError as exc:
            raise AstrocurateError(
                f"rank {env.get('RANK')}: cannot meet the other ranks at "
                f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')} ({exc}); if that port is "
                "taken on the first node, set MASTER_PORT to a free one in the environment "
                "of run.sh (sbatch passes it on to the jobs)"
            ) from exc
    return torch.distributed.get_rank(), torch.distributed.get_world_size()
