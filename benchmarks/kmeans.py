"""Seconds per Lloyd iteration: astrocurate's KMeans (with and without its bounds) vs
faiss.Kmeans vs a plain torch loop.

All three run in one process on the same data (a synthetic Gaussian mixture written to a
temporary ``.npy`` and memory-mapped), with the same ``k``, the same initial centroids
(``k`` distinct rows drawn with ``--seed``), the same number of Lloyd iterations and the
same number of threads. The methods take turns for ``--rounds`` rounds, so a load that
changes during the run (a shared machine) hits all of them alike; the ratio ours / faiss
measured in one run is the figure that counts.

Ours runs twice: with ``bounds=True`` (the default: rows whose label provably stays skip
the distance GEMM, so later iterations get cheaper) and with ``bounds=False`` (every row
against every centre, every iteration); both give the same labels and centroids. Since
pruning pays off over iterations, the totals over all iterations are the figures to
compare; the share of rows recomputed in the last pass is printed for ours.

Reported per method: median wall seconds per iteration (the first iteration, which also
pays for set-up, is left out when there are 3 or more), CPU seconds per iteration
(process time of all threads; robust to other jobs taking turns on the cores), and the
inertia of the final centroids, all evaluated the same way (exact squared distances to
the nearest centroid, summed in float64).

faiss is a benchmark-only dependency (``pip install faiss-cpu``). Without it the faiss
column is left out with a message. faiss is run without subsampling
(``max_points_per_centroid`` large) so that it iterates over every point as we do; it
re-seeds empty clusters by splitting large ones, ours keeps their centroid.

Examples
--------
``python benchmarks/kmeans.py``                       the default cases on the CPU
``python benchmarks/kmeans.py --case 200000x384:1000 --iters 5``
``python benchmarks/kmeans.py --big``                 adds 1M x 128 with k=10k
``python benchmarks/kmeans.py --device cuda --case 3000000x384:60000 --precision tf32``
``python benchmarks/kmeans.py --hierarchical``        config-A shape at 1/10 scale
``python benchmarks/kmeans.py --device cuda --precision tf32 --case 3000000x384:60000 --iters 3
--hierarchical --hierarchical-config configs/clusters/A_3M_3lvl_60k_4k_300.yaml
--hierarchical-scale 1``                             config A itself, 3M points, on a GPU

On CUDA the data are generated on the GPU (a torch generator, same mixture law) instead of
a ``.npy``, and with ``--precision tf32`` the plain torch loop runs in both FP32 and TF32.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astrocurate.algorithms.kmeans import hierarchical
from astrocurate.algorithms.kmeans.assignment import assign, fused_assignment
from astrocurate.algorithms.kmeans.estimator import KMeans, KMeansState
from astrocurate.algorithms.kmeans.hierarchical import HierarchicalKMeans
from astrocurate.algorithms.kmeans.level import FinishedRuns, LevelResult, NoLevelHooks
from astrocurate.algorithms.kmeans.rows import resolve_device
from astrocurate.io.atomic import save_npz
from astrocurate.stages.clustering.config import load_config

try:
    import faiss
except ImportError:  # benchmark-only dependency
    faiss = None

DEFAULT_CASES = ["200000x384:1000", "200000x384:4000", "1000000x128:1000"]
BIG_CASES = ["1000000x128:10000"]
GPU_CASES = ["3000000x384:60000"]
FAISS_MISSING = (
    "faiss is not installed: the faiss column is left out. Install it with "
    "`pip install faiss-cpu` (or the project's `bench` extra) to compare."
)


@dataclass
class Timing:
    """Per-iteration timings and the final centroids of one method."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    centroids: np.ndarray | None = None
    recomputed: list[int] = field(default_factory=list)

    def wall_per_iter(self) -> float:
        """Median wall seconds per iteration, without the first when there are >= 3."""
        values = self.wall[1:] if len(self.wall) >= 3 else self.wall
        return statistics.median(values)

    def cpu_per_iter(self) -> float:
        """Median CPU seconds per iteration, without the first when there are >= 3."""
        values = self.cpu[1:] if len(self.cpu) >= 3 else self.cpu
        return statistics.median(values)

    def totals(self) -> tuple[float, float]:
        """Wall and CPU seconds of all iterations together."""
        return sum(self.wall), sum(self.cpu)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def parse_case(text: str) -> tuple[int, int, int]:
    """``"NxD:K"`` -> ``(n, d, k)``."""
    try:
        shape, k = text.split(":")
        n, d = shape.lower().split("x")
        return int(n), int(d), int(k)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"case {text!r} is not NxD:K, e.g. 200000x384:1000"
        ) from exc


def make_mixture(path: Path, n: int, d: int, seed: int, device: torch.device) -> Any:
    """The benchmark's mixture: a memory-mapped ``.npy`` on the CPU, a tensor on CUDA."""
    if device.type != "cuda":
        return write_mixture(path, n, d, seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    means = torch.randn((256, d), generator=gen, device=device).mul_(3.0)
    which = torch.randint(256, (n,), generator=gen, device=device)
    x = torch.randn((n, d), generator=gen, device=device)
    for start in range(0, n, 1 << 20):  # add the means in slices: no second n x d buffer
        x[start : start + (1 << 20)] += means[which[start : start + (1 << 20)]]
    return x


def write_mixture(path: Path, n: int, d: int, seed: int, components: int = 256) -> np.ndarray:
    """Write an ``(n, d)`` float32 Gaussian mixture to ``path`` and return it memory-mapped."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(components, d)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, 65536):
        stop = min(start + 65536, n)
        which = rng.integers(components, size=stop - start)
        out[start:stop] = means[which] + rng.standard_normal((stop - start, d), np.float32)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------------------
# the three methods
# --------------------------------------------------------------------------------------


def _clock(device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def _record(timing: Timing, marks: list[tuple[float, float]]) -> None:
    for (w0, c0), (w1, c1) in itertools.pairwise(marks):
        timing.wall.append(w1 - w0)
        timing.cpu.append(c1 - c0)


def run_ours(
    x: Any,
    init: np.ndarray,
    iters: int,
    device: torch.device,
    precision: str,
    bounds: bool | None = None,
) -> Timing:
    """Our KMeans started from ``init`` (through the resume state), timed per Lloyd update."""
    k = init.shape[0]
    state = KMeansState(
        phase="lloyd",
        step=0,
        centers=torch.from_numpy(init.copy()).to(device),
        center_indices=np.full(k, -1, dtype=np.int64),
        min_sq_distances=None,
        potential_history=[],
        rng=np.random.default_rng(0),
    )
    marks = [_clock(device)]

    def callback(st: KMeansState) -> None:
        if st.phase == "lloyd":
            marks.append(_clock(device))

    km = KMeans(k, n_iters=iters, device=device, matmul_precision=precision, bounds=bounds)
    km.fit(x, state=state, callback=callback)
    timing = Timing(centroids=km.cluster_centers_, recomputed=km.n_recomputed_)
    _record(timing, marks)
    return timing


def run_faiss(x: np.ndarray, init: np.ndarray, iters: int, device: torch.device) -> Timing:
    """faiss.Kmeans from ``init``; per-iteration wall time from its iteration statistics."""
    n, d = x.shape
    k = init.shape[0]
    use_gpu = device.type == "cuda" and faiss.get_num_gpus() > 0
    km = faiss.Kmeans(
        d, k, niter=iters, max_points_per_centroid=n, seed=1, verbose=False, gpu=use_gpu
    )
    c0 = time.process_time()
    km.train(np.ascontiguousarray(x), init_centroids=init)
    cpu = (time.process_time() - c0) / iters
    cumulative = [0.0] + [s["time"] for s in km.iteration_stats]
    timing = Timing(centroids=np.asarray(km.centroids).copy())
    timing.wall = [b - a for a, b in itertools.pairwise(cumulative)]
    timing.cpu = [cpu] * iters
    return timing


def run_torch_loop(
    x: Any, init: np.ndarray, iters: int, device: torch.device, block: int, tf32: bool = False
) -> Timing:
    """Plain torch Lloyd loop: matmul + argmin + index_add (float32 sums), in row blocks.

    ``tf32``: its matmuls in TF32 (CUDA).
    """
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return _torch_loop(x, init, iters, device, block)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _torch_loop(x: Any, init: np.ndarray, iters: int, device: torch.device, block: int) -> Timing:
    xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    xt = xt.to(device)
    c = torch.from_numpy(init.copy()).to(device)
    k = c.shape[0]
    marks = [_clock(device)]
    for _ in range(iters):
        c_sq = (c * c).sum(1)
        sums = torch.zeros_like(c)
        counts = torch.zeros(k, dtype=torch.int64, device=device)
        for start in range(0, xt.shape[0], block):
            xb = xt[start : start + block]
            labels = (c_sq - 2 * xb @ c.T).argmin(1)
            sums.index_add_(0, labels, xb)
            counts += torch.bincount(labels, minlength=k)
        full = counts > 0
        c = torch.where(full[:, None], sums / counts.clamp(min=1)[:, None], c)
        marks.append(_clock(device))
    timing = Timing(centroids=c.cpu().numpy())
    _record(timing, marks)
    return timing


def inertia(x: Any, centroids: np.ndarray, device: torch.device) -> float:
    """Sum of exact squared distances to the nearest centroid (float64 sum)."""
    _, sq = assign(x, centroids.astype(np.float32), device=device)
    return float(sq.sum(dtype=np.float64))


# --------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------


def run_case(
    args: argparse.Namespace, case: tuple[int, int, int], device: torch.device, tmp: Path
) -> None:
    """Time every method on one ``(n, d, k)`` case and print a table."""
    n, d, k = case
    x = make_mixture(tmp / f"x_{n}_{d}.npy", n, d, args.seed, device)
    chosen = np.sort(np.random.default_rng(args.seed).choice(n, k, replace=False))
    if isinstance(x, torch.Tensor):  # generated on the GPU
        init = x[torch.from_numpy(chosen).to(device)].cpu().numpy()
    else:
        init = np.asarray(x[chosen])
    # ours as configured by default, then with the other bounds setting
    fused = fused_assignment(device, torch.float32, args.precision)
    methods: dict[str, Callable[[], Timing]] = {
        "astrocurate": lambda: run_ours(x, init, args.iters, device, args.precision, None),
    }
    if not args.no_alternative:
        methods["astrocurate, bounds" if fused else "astrocurate, no bounds"] = lambda: run_ours(
            x, init, args.iters, device, args.precision, bounds=fused
        )
    if faiss is not None and (device.type == "cpu" or faiss.get_num_gpus() > 0):
        methods["faiss.Kmeans"] = lambda: run_faiss(np.asarray(x), init, args.iters, device)
    if not args.no_torch_loop:
        block = 8192 if device.type == "cpu" else 32768
        methods["torch loop"] = lambda: run_torch_loop(x, init, args.iters, device, block)
        if device.type == "cuda" and args.precision == "tf32":
            methods["torch loop, TF32"] = lambda: run_torch_loop(
                x, init, args.iters, device, block, tf32=True
            )
    results: dict[str, list[Timing]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, run in methods.items():
            results[name].append(run())
    print(f"\n## {n:,} x {d}, k={k:,}: {args.iters} Lloyd iterations, {args.rounds} round(s)")
    print(
        "| method | s/iter (wall, median) | CPU s/iter | total wall s | total CPU s "
        "| vs faiss (total wall) | vs faiss (total CPU) | inertia / faiss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, timings in results.items():
        wall = statistics.median(t.wall_per_iter() for t in timings)
        cpu = statistics.median(t.cpu_per_iter() for t in timings)
        total_wall = statistics.median(t.totals()[0] for t in timings)
        total_cpu = statistics.median(t.totals()[1] for t in timings)
        rows[name] = (wall, cpu, total_wall, total_cpu, inertia(x, timings[-1].centroids, device))
        if args.verbose:
            print(f"  {name} per-iteration wall: " + _fmt(w for t in timings for w in t.wall))
            print(f"  {name} per-iteration CPU: " + _fmt(c for t in timings for c in t.cpu))
            if timings[-1].recomputed:
                print(f"  {name} rows recomputed per pass: {timings[-1].recomputed}")
    ref = rows.get("faiss.Kmeans")
    for name, (wall, cpu, total_wall, total_cpu, inert) in rows.items():
        ratios = (
            ("-", "-", "-")
            if ref is None
            else (
                f"{total_wall / ref[2]:.2f}",
                f"{total_cpu / ref[3]:.2f}",
                f"{inert / ref[4]:.5f}",
            )
        )
        print(
            f"| {name} | {wall:.3f} | {cpu:.3f} | {total_wall:.1f} | {total_cpu:.1f} "
            f"| {ratios[0]} | {ratios[1]} | {ratios[2]} |"
        )
    sys.stdout.flush()


def _fmt(values: Iterable[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def hierarchical_shape(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    """Points, HierarchicalKMeans parameters and a title for the hierarchical run.

    Without ``--hierarchical-config``: config A's clusters at 1/10 scale with 3 resampling
    steps and ``--iters`` iterations (sized for the CPU). With it: that config's levels,
    iterations, steps and sample sizes, its points and clusters times ``--hierarchical-scale``.
    """
    if args.hierarchical_config is None:
        params = {
            "n_clusters": [6000, 400, 30],
            "n_iters": args.iters,
            "n_resampling_steps": [3, 3, 3],
            "sample_size": [5, 3, 3],
            "sampling_strategy": "r",
        }
        return 300_000, params, f"clusters 6000/400/30, {args.iters} iterations, 3 steps"
    config = load_config(args.hierarchical_config)  # the file as step 4a reads it
    scale = args.hierarchical_scale
    keys = ("n_iters", "n_resampling_steps", "sample_size", "sampling_strategy", "n_splits")
    params = {key: list(getattr(config, key)) for key in keys}
    params["n_clusters"] = [max(1, round(k * scale)) for k in config.n_clusters]
    title = f"{args.hierarchical_config.name} x {scale}: " + ", ".join(
        f"{key} {params[key]}" for key in ("n_clusters", *keys)
    )
    return round(3_000_000 * scale), params, title


def run_hierarchical(args: argparse.Namespace, device: torch.device, tmp: Path) -> bool:
    """A whole 3-level clustering shaped like config A; wall time per k-means run and level.

    ``HierarchicalKMeans.fit`` runs ``fit_levels``, the level loop the clustering stage runs.
    With ``--resume-dir`` the run keeps each finished k-means run there and stops after
    ``--stop-after`` seconds; the same command resumes it. Returns False when it stopped.
    """
    n, params, title = hierarchical_shape(args)
    d = args.hierarchical_dim
    print(f"\n## hierarchical, {n:,} x {d}, {title}", flush=True)
    x = make_mixture(tmp / f"h_{n}_{d}.npy", n, d, args.seed, device)
    hkm = HierarchicalKMeans(
        **params, random_state=args.seed, device=device, matmul_precision=args.precision
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    key = f"{title}, {n} x {d}, seed {args.seed}, {args.precision}, {device.type}"
    saved = _SavedRuns(args.resume_dir, key, start, args.stop_after)

    def level_done(level: int, result: Any) -> None:
        print(f"level {level + 1} done at {time.perf_counter() - start:.1f} s", flush=True)
        saved.level_done(result)

    try:
        with _report_kmeans_runs(start), saved.restoring():
            hkm.fit(x, level_callback=level_done, completed_levels=saved.levels)
    except _StopRequestedError:
        print(
            f"stopped after {time.perf_counter() - start:.1f} s, {saved.seconds:.1f} s of "
            f"finished work kept in {args.resume_dir}: run the same command to go on"
        )
        return False
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    print(f"wall {wall:.1f} s, peak RSS {rss:.2f} GiB, peak GPU memory {gpu:.2f} GiB")
    if saved.earlier:
        print(
            f"whole hierarchy {saved.earlier + wall:.1f} s over calls "
            f"({saved.earlier:.1f} s before this one)"
        )
    saved.forget()
    return True


class _StopRequestedError(Exception):
    """``--stop-after`` seconds have passed; what is finished is saved."""


class _SavedRuns:
    """Finished levels and k-means runs of a hierarchical run, kept in ``directory``.

    Each finished k-means run (``FinishedRuns``) and level is kept there (``.npz``), with the
    seconds of finished work so far: a resumed run skips them and adds its own seconds
    (the work of a stopped call after its last finished run is done again, counted once).
    """

    def __init__(
        self, directory: Path | None, key: str, start: float, stop_after: float | None
    ) -> None:
        self.path = None if directory is None else Path(directory) / "state.npz"
        self.key, self.start, self.stop_after = key, start, stop_after
        self.levels: list[LevelResult] = []
        self.runs: tuple[int, FinishedRuns] | None = None
        self.earlier = self.seconds = 0.0
        self._written = 0  # levels in their files
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                meta = json.loads(str(saved["meta"]))
                arrays = {name: saved[name] for name in saved.files if name != "meta"}
        except (OSError, ValueError, KeyError) as exc:
            print(f"{self.path}: unreadable ({type(exc).__name__}): starting afresh")
            return
        if meta.get("key") != self.key:
            print(f"{self.path} holds another run ({meta.get('key')}): starting afresh")
            return
        self.levels = [
            _read_dataclass(LevelResult, self._level_path(i)) for i in range(meta["levels"])
        ]
        self._written = len(self.levels)
        if meta["runs"] is not None:
            level, runs = meta["runs"]
            self.runs = level, _dataclass_from(FinishedRuns, runs, arrays, "runs.")
        self.earlier = self.seconds = meta["seconds"]

    @contextlib.contextmanager
    def restoring(self) -> Iterator[None]:
        """Inside: every level's k-means runs go through :meth:`_level_hooks`."""
        original = hierarchical._EstimatorHooks.level_hooks
        if self.path is not None:
            hierarchical._EstimatorHooks.level_hooks = lambda _, level: self._level_hooks(level)
        try:
            yield
        finally:
            hierarchical._EstimatorHooks.level_hooks = original

    def _level_hooks(self, level: int) -> Any:
        saved = self

        class Hooks(NoLevelHooks):
            def finished_runs(self, n_runs: int) -> FinishedRuns | None:
                return saved.runs[1] if saved.runs and saved.runs[0] == level else None

            def run_done(self, runs: FinishedRuns, n_runs: int) -> None:
                saved.runs = (level, runs)
                saved.save(stop=runs.last + 1 < n_runs)

        return Hooks()

    def level_done(self, result: Any) -> None:
        """Keep a finished level (its runs are no longer needed)."""
        self.levels, self.runs = [*self.levels, result], None
        self.save(stop=False)  # the next run stops, if any: a finished top level goes on

    def save(self, stop: bool) -> None:
        """Write the state; raise _StopRequestedError when ``stop`` and the time is up."""
        if self.path is None:
            return
        self.seconds = self.earlier + time.perf_counter() - self.start
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for i in range(self._written, len(self.levels)):  # a level is written once
            arrays: dict[str, np.ndarray] = {}
            save_npz(self._level_path(i), _dataclass_to(self.levels[i], arrays, ""), arrays)
        self._written = len(self.levels)
        meta: dict[str, Any] = {"key": self.key, "seconds": self.seconds, "runs": None}
        meta["levels"], arrays = len(self.levels), {}
        if self.runs is not None:
            meta["runs"] = [self.runs[0], _dataclass_to(self.runs[1], arrays, "runs.")]
        save_npz(self.path, meta, arrays)
        elapsed = time.perf_counter() - self.start
        if stop and self.stop_after is not None and elapsed > self.stop_after:
            raise _StopRequestedError

    def forget(self) -> None:
        """Remove the state of a finished run (a rerun measures afresh)."""
        if self.path is not None:
            for i in range(self._written):
                self._level_path(i).unlink()
            self.path.unlink(missing_ok=True)

    def _level_path(self, index: int) -> Path:
        return self.path.with_name(f"level{index}.npz")


def _dataclass_to(obj: Any, arrays: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """Put ``obj``'s array fields in ``arrays`` (names prefixed); return the others."""
    meta = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            arrays[prefix + f.name] = value
        else:
            meta[f.name] = value.item() if isinstance(value, np.generic) else value
    return meta


def _dataclass_from(cls: type, meta: dict[str, Any], arrays: dict, prefix: str) -> Any:
    """Rebuild what :func:`_dataclass_to` took apart."""
    mine = {name[len(prefix) :]: a for name, a in arrays.items() if name.startswith(prefix)}
    return cls(**meta, **mine)


def _read_dataclass(cls: type, path: Path) -> Any:
    """Read a dataclass written whole to ``path`` by :func:`save_npz`."""
    with np.load(path, allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files if name != "meta"}
        return _dataclass_from(cls, json.loads(str(saved["meta"])), arrays, "")


@contextlib.contextmanager
def _report_kmeans_runs(start: float) -> Iterator[None]:
    """Print the size and wall time of every k-means run (seeding, then Lloyd) while inside."""
    original = KMeans._fit_rows

    def timed(self: KMeans, rows: Any, **kwargs: Any) -> KMeans:
        t0 = time.perf_counter()
        seeded = [t0]  # when greedy k-means++ chose its last centre
        inner = kwargs.get("callback")

        def callback(state: KMeansState) -> None:
            if state.phase == "init" and state.step == self.n_clusters:
                if self._device.type == "cuda":
                    torch.cuda.synchronize(self._device)
                seeded[0] = time.perf_counter()
            if inner is not None:
                inner(state)

        out = original(self, rows, **{**kwargs, "callback": callback})
        now = time.perf_counter()
        print(
            f"  k-means n={rows.n:,} k={self.n_clusters:,}: {now - t0:.1f} s, seeding "
            f"{seeded[0] - t0:.1f} s (at {now - start:.1f} s)",
            flush=True,
        )
        return out

    KMeans._fit_rows = timed
    try:
        yield
    finally:
        KMeans._fit_rows = original


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the cases."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", type=parse_case, help="NxD:K (repeatable)")
    parser.add_argument("--big", action="store_true", help=f"also run {', '.join(BIG_CASES)}")
    parser.add_argument("--iters", type=int, default=20, help="Lloyd iterations per run")
    parser.add_argument("--rounds", type=int, default=1, help="turns each method takes")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision", default="highest", choices=["highest", "tf32"], help="our matmul precision"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch-loop", action="store_true", help="skip the plain torch loop")
    parser.add_argument("--hierarchical", action="store_true", help="also the config-A-shaped run")
    parser.add_argument("--hierarchical-dim", type=int, default=384)
    parser.add_argument(
        "--hierarchical-config", type=Path, help="a configs/clusters YAML for the levels"
    )
    parser.add_argument(
        "--hierarchical-scale", type=float, default=0.1, help="points and clusters x this"
    )
    parser.add_argument(
        "--no-alternative", action="store_true", help="ours with its default bounds only"
    )
    parser.add_argument("--tmp", type=Path, default=None, help="where the data file goes")
    parser.add_argument("--verbose", action="store_true", help="print every iteration's time")
    parser.add_argument(
        "--resume-dir", type=Path, default=None, help="keep finished runs here; resume from them"
    )
    parser.add_argument(
        "--stop-after", type=float, default=None, help="seconds; then stop (with --resume-dir)"
    )
    args = parser.parse_args(argv)
    if args.stop_after is not None and (args.resume_dir is None or args.stop_after < 0):
        parser.error("--stop-after: expected seconds >= 0, with --resume-dir to keep the work")
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    if faiss is None:
        print(FAISS_MISSING, file=sys.stderr)
    else:
        faiss.omp_set_num_threads(args.threads)
    if device.type == "cuda" and args.precision == "tf32":
        print("ours uses TF32 (matmul_precision='tf32'); the torch loop runs in FP32 and in TF32")
    if args.case:
        cases = args.case
    elif args.hierarchical or args.hierarchical_config:  # the hierarchical run alone
        cases = []
    else:
        cases = GPU_CASES if device.type == "cuda" else DEFAULT_CASES
    cases = [c if isinstance(c, tuple) else parse_case(c) for c in cases]
    if args.big:
        cases += [parse_case(c) for c in BIG_CASES]
    print(
        f"torch {torch.__version__}, faiss {getattr(faiss, '__version__', 'missing')}, "
        f"device {device}, threads {args.threads}, load average "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for case in cases:
            run_case(args, case, device, Path(tmp))
        finished = True
        if args.hierarchical or args.hierarchical_config:
            finished = run_hierarchical(args, device, Path(tmp))
    print("load average at the end " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    return 0 if finished else 3


if __name__ == "__main__":
    sys.exit(main())
