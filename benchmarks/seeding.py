"""Greedy k-means++ with and without its bounds, side by side on the same data.

Both runs seed ``k`` centres on the Gaussian mixture of ``benchmarks/kmeans.py`` with the
same seed, device and threads, one after the other in one process; the ratio measured in
one run is the figure that counts. Reported per run: wall and CPU seconds of the seeding
alone (up to the last centre, no Lloyd iteration), the rows scored per centre (all rows
without the bounds), and whether the two runs chose the same initial rows.

With its bounds (the default, ``bounds=None``) a row is scored against the candidates only
when its distance to its nearest chosen centre is large compared to that centre's distance
to some candidate (triangle inequality, rounding errors included); ``bounds=False`` scores
every row for every centre.

Examples
--------
``python benchmarks/seeding.py``                            300k x 384, k=6000 (config A / 10)
``python benchmarks/seeding.py --case 100000x384:2000``
``python benchmarks/seeding.py --device cuda --precision tf32 --case 3000000x384:60000``
``python benchmarks/seeding.py --dispatch``               operators run per centre (CPU profile)
``python benchmarks/seeding.py --device cuda --path plain --path fused``   the fused kernels

``--dispatch`` counts, on a small case, the operators each greedy step dispatches (views and
allocations left out): on a GPU each is a kernel launch, and with ~1 ms per centre a step is
bound by these and by its waits for the device, not by the rows. Run it with
``PYTHONPATH=<another tree>/src`` to count another version's.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kmeans import _clock, make_mixture, parse_case  # benchmarks/kmeans.py
from torch.utils._python_dispatch import TorchDispatchMode

from astrocurate.algorithms.kmeans import seeding
from astrocurate.algorithms.kmeans.assignment import fused_seeding
from astrocurate.algorithms.kmeans.estimator import KMeans, KMeansState
from astrocurate.algorithms.kmeans.rows import resolve_device

#: The seedings compared, by ``--path`` name: (label, bounds, fused steps allowed).
PATHS = {
    "none": ("no bounds", False, False),
    "plain": ("bounds, plain steps", None, False),
    "fused": ("bounds, fused kernels", None, True),
}


@contextlib.contextmanager
def _fused_steps(allowed: bool) -> Iterator[None]:
    """Let greedy k-means++ take its fused steps where it can, or keep it to plain ones."""
    original = seeding.GreedySeeding.fused
    if not allowed:
        seeding.GreedySeeding.fused = lambda *args: False
    try:
        yield
    finally:
        seeding.GreedySeeding.fused = original


def run_seeding(
    x: Any,
    k: int,
    bounds: bool | None,
    fused: bool,
    device: torch.device,
    precision: str,
    seed: int,
) -> dict[str, Any]:
    """Seed ``k`` centres; return the seconds, the rows scored per plain step and the rows."""
    scored: list[int] = []
    original = seeding.seeding_blocks

    def counted(local: Any, rows: Any, block_rows: int) -> Iterator[Any]:
        scored.append(local.n if rows is None else len(rows))
        return original(local, rows, block_rows)

    marks = [_clock(device)]

    def callback(state: KMeansState) -> None:
        if state.phase == "init":
            marks.append(_clock(device))

    km = KMeans(
        k, n_iters=0, random_state=seed, device=device, matmul_precision=precision, bounds=bounds
    )
    seeding.seeding_blocks = counted
    try:
        with _fused_steps(fused):
            km.fit(x, callback=callback)
    finally:
        seeding.seeding_blocks = original
    return {
        "wall": marks[-1][0] - marks[0][0],
        "cpu": marks[-1][1] - marks[0][1],
        "scored": scored,
        "init": km.init_indices_,
    }


def report(label: str, run: dict[str, Any], n: int, base: dict[str, Any] | None) -> None:
    """Print one run's line (and its ratios to ``base``)."""
    ratio = "" if base is None else f"  x{run['wall'] / base['wall']:.3f} wall"
    ratio += "" if base is None else f", x{run['cpu'] / base['cpu']:.3f} CPU"
    if run["scored"]:
        scored = np.asarray(run["scored"]) / n
        rows = (
            f"rows scored per centre: median {statistics.median(scored):.1%}, mean "
            f"{scored.mean():.1%}, last 10% {scored[int(0.9 * len(scored)) :].mean():.1%}"
        )
    else:
        rows = "rows kept by the bounds inside the kernel"
    print(
        f"  {label:<22} {run['wall']:9.1f} s wall {run['cpu']:9.1f} s CPU   {rows}{ratio}",
        flush=True,
    )


#: Operators that launch no kernel: views, allocations, dtype and device moves that copy
#: nothing, scalar reads.
_NO_KERNEL = frozenset(
    [
        "as_strided",
        "view",
        "reshape",
        "_reshape_alias",
        "select",
        "slice",
        "unsqueeze",
        "squeeze",
        "expand",
        "permute",
        "t",
        "transpose",
        "detach",
        "alias",
        "numpy_T",
        "squeeze_",
        "unsqueeze_",
        "as_strided_",
        "empty",
        "empty_strided",
        "empty_like",
        "lift_fresh",
        "resolve_conj",
        "resolve_neg",
        "result_type",
        "item",
        "_local_scalar_dense",
        "to",
        "_to_copy",
        "contiguous",
    ]
)


class _Dispatched(TorchDispatchMode):
    """Counts the operators dispatched (those in :data:`_NO_KERNEL` left out) and the launches
    of the fused kernels, not what Triton's interpreter runs inside them (nor its reads)."""

    def __init__(self, reads: Any) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.reads = reads
        self.inside_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.inside_kernel and name not in _NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))

    def launches(self, kernel: Any, name: str) -> Any:
        """Wrap a Triton kernel so that each launch counts as one operator ``name``."""
        mode = self

        class Launcher:
            def __getitem__(self, grid: Any) -> Any:
                def launch(*args: Any, **kwargs: Any) -> Any:
                    mode.ops[name] += 1
                    mode.inside_kernel, reads = True, mode.reads.count
                    try:
                        return kernel[grid](*args, **kwargs)
                    finally:
                        mode.inside_kernel, mode.reads.count = False, reads

                return launch

        return Launcher()

    def restart(self, state: KMeansState) -> None:
        """A ``KMeans`` callback: count from the second centre on, stop at the last."""
        if state.phase == "init" and state.step == 1:
            self.ops.clear()
            self.reads.count = 0
        elif state.phase == "init" and state.step == len(state.centers):
            raise _SeededError


class _SeededError(Exception):
    """Every centre is chosen: what is counted is done (no Lloyd pass)."""


def _count(x: torch.Tensor, k: int, bounds: bool | None, fused: bool, seed: int) -> _Dispatched:
    """Seed ``k`` centres on the CPU, counting operators and host reads after the first."""
    from astrocurate.algorithms.kmeans import seeding_kernel
    from host_reads import HostReads  # tests/host_reads.py

    counter = _Dispatched(HostReads())
    kernels = {name: getattr(seeding_kernel, name) for name in ("_score_kernel", "_move_kernel")}
    for name, kernel in kernels.items():
        setattr(seeding_kernel, name, counter.launches(kernel, name.strip("_")))
    try:
        with _fused_steps(fused), counter, counter.reads, contextlib.suppress(_SeededError):
            KMeans(k, n_iters=0, random_state=seed, bounds=bounds).fit(x, callback=counter.restart)
    finally:
        for name, kernel in kernels.items():
            setattr(seeding_kernel, name, kernel)
    return counter


def dispatch(case: tuple[int, int, int], seed: int) -> None:
    """Print the operators and host reads per centre of each seeding path on the CPU.

    The fused path runs its kernels in Triton's interpreter (``TRITON_INTERPRET=1``, set by
    :func:`main`), each launch counted as one operator.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    n, d, k = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + rng.integers(0, 50, (n, 1)) * 3
    x = torch.from_numpy(x.astype(np.float32))
    print(f"operators per centre, {n:,} x {d}, k={k:,}, on the CPU ({seeding.__file__})")
    for label, bounds, fused in PATHS.values():
        counter = _count(x, k, bounds, fused, seed)
        top = ", ".join(f"{name} {c / (k - 1):.2f}" for name, c in counter.ops.most_common(8))
        print(
            f"  {label:<22} {sum(counter.ops.values()) / (k - 1):5.1f} operators, "
            f"{counter.reads.count / (k - 1):4.2f} host reads per centre ({top}, ...)",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the cases."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", type=parse_case, help="NxD:K (repeatable)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="highest", choices=["highest", "tf32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None, help="where the data file goes")
    parser.add_argument("--dispatch", action="store_true", help="count operators per centre")
    parser.add_argument(
        "--path", action="append", choices=list(PATHS), help="seedings to run (default: all)"
    )
    args = parser.parse_args(argv)
    if args.dispatch:
        if os.environ.get("TRITON_INTERPRET") != "1":  # before Triton wraps the kernels
            env = {**os.environ, "TRITON_INTERPRET": "1"}
            os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
        dispatch(args.case[0] if args.case else (20_000, 32, 500), args.seed)
        return 0
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    cases = args.case or [parse_case("300000x384:6000")]
    print(
        f"torch {torch.__version__}, device {device}, threads {args.threads}, load average "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n, d, k in cases:
            x = make_mixture(Path(tmp) / f"x_{n}_{d}.npy", n, d, args.seed, device)
            print(
                f"greedy k-means++, {n:,} x {d}, k={k:,} ({seeding.n_candidates(k)} "
                "candidates per centre)",
                flush=True,
            )
            base = None
            for label, bounds, fused in (PATHS[name] for name in args.path or PATHS):
                if fused and not fused_seeding(device, torch.float32):
                    print(f"  {label:<22} not on {device} (float32 on CUDA with Triton)")
                    continue
                run = run_seeding(x, k, bounds, fused, device, args.precision, args.seed)
                report(label, run, n, base)
                if base is None:
                    base = {**run, "label": label}
                else:
                    same = np.array_equal(base["init"], run["init"])
                    print(f"  {'':<22} the initial rows of {base['label']}: {same}", flush=True)
    print("load average at the end " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
