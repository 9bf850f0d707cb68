"""Balanced hierarchical sampling against a plain random sample, at survey scale.

Without ``--stage``: the algorithm alone. Builds a synthetic 3-level tree like
configuration A (3M points in 60k level-0 clusters with long-tailed sizes, nested in 4k
and then 300 clusters; points in random order, as k-means assignments are) and times, in
this one process and side by side:

* ``random_sample`` (the uniform baseline),
* ``balanced_sample`` with strategies 'r' and 'c' (float32 and float64 distances),
* the budget split alone (all levels, no point selection),

for each budget. Timings include input validation (the nesting check reads every label).

With ``--stage``: step 5 end to end (``curate.curated_sample``). In a temporary work
directory with its own MLflow store it records a contract-true lineage:

* a ``merge_cutouts`` run whose ``manifest.parquet`` has ``--points`` rows (two copied
  cutout runs of windows 64 and 128 over ``--mosaics`` mosaics; the pixel files are
  sparse, the mosaic FITS files do not exist, so there is no truth catalogue, as for a
  real survey);
* a ``feature_extraction`` run with random ``--dim``-wide float32 features;
* a FINISHED ``clustering`` run holding the same synthetic tree, written by the clustering
  module's own writers (config A's keys, ``run.json``, ``input_indices.npy``, levels);

then times, per budget: ``balanced_sample`` on the labels step 5 reads, and
``curated_sample`` without and with its HTML report (a new run each call), with peak RSS
and the wall time of each phase of the fastest call.

Usage::

    python benchmarks/sampling.py                        # 3M points, budgets 10k and 300k
    python benchmarks/sampling.py --points 300000 --clusters 6000 400 30 --repeats 5
    python benchmarks/sampling.py --stage                # step 5 on a 3M-cutout lineage
    python benchmarks/sampling.py --stage --points 300000 --clusters 6000 400 30 --profile 25
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from astrocurate.algorithms import sampling  # noqa: E402


def nested_parents(n_children: int, n_parents: int, rng: np.random.Generator) -> np.ndarray:
    """Random parent of each child such that every parent has at least one child."""
    parents = np.concatenate([np.arange(n_parents), rng.integers(0, n_parents, n_children)])
    return rng.permutation(parents[:n_children])


def synthetic_hierarchy(
    n_points: int, clusters: list[int], seed: int
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Leaf cluster of each point, parent of each cluster per level, and distances.

    Returns
    -------
    leaves : ndarray of int64, shape (n_points,)
        Level-0 cluster of every point (shuffled, long-tailed sizes, none empty).
    parents : list of ndarray of int64
        ``parents[i][j]`` is the level ``i + 1`` cluster of level-``i`` cluster ``j``.
    distances : ndarray of float32, shape (n_points,)
        A stand-in squared distance of every point to its level-0 centroid.
    """
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(mean=0.0, sigma=1.5, size=clusters[0])  # long-tailed sizes
    sizes = 1 + rng.multinomial(n_points - clusters[0], weights / weights.sum())
    leaves = rng.permutation(np.repeat(np.arange(clusters[0]), sizes))
    parents = [
        nested_parents(n_children, n_parents, rng)
        for n_children, n_parents in itertools.pairwise(clusters)
    ]
    distances = rng.random(n_points).astype(np.float32)
    return leaves, parents, distances


def synthetic_tree(
    n_points: int, clusters: list[int], seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Labels per level (level 0 first) and distances for ``n_points`` shuffled points."""
    leaves, parents, distances = synthetic_hierarchy(n_points, clusters, seed)
    levels = [leaves]
    for parent in parents:
        levels.append(parent[levels[-1]])
    return levels, distances


def timed(function, repeats: int) -> tuple[float, float]:
    """Best and median wall time in seconds over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def run_algorithm(args: argparse.Namespace) -> None:
    """Time the algorithms alone on a synthetic tree held in memory."""
    start = time.perf_counter()
    levels, distances = synthetic_tree(args.points, args.clusters, args.seed)
    build_s = time.perf_counter() - start
    sizes = np.bincount(levels[0])
    print(
        f"tree: {args.points:,} points, clusters per level {args.clusters} "
        f"(level-0 sizes {sizes.min()}..{sizes.max()}, median {int(np.median(sizes))}), "
        f"built in {build_s:.1f} s"
    )
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()}")
    print(f"{'budget':>8} {'method':<22} {'best s':>8} {'median s':>9} {'picked':>8}")
    checked, _ = sampling._check_labels(levels, None)
    distances64 = distances.astype(np.float64)
    split_rng = np.random.default_rng(args.seed)
    for budget in args.budgets:
        variants = {
            "random_sample": lambda b=budget: sampling.random_sample(args.points, b, 0),
            "balanced 'r'": lambda b=budget: sampling.balanced_sample(levels, b, random_state=0),
            "balanced 'c'": lambda b=budget: sampling.balanced_sample(
                levels, b, strategy="c", distances=distances, random_state=0
            ),
            "balanced 'c' float64": lambda b=budget: sampling.balanced_sample(
                levels, b, strategy="c", distances=distances64, random_state=0
            ),
            "budget split only": lambda b=budget: sampling._allocate_leaves(checked, b, split_rng),
        }
        for name, function in variants.items():
            best, median = timed(function, args.repeats)
            result = function()
            picked = result.size if name != "budget split only" else int(result.sum())
            print(f"{budget:>8,} {name:<22} {best:>8.3f} {median:>9.3f} {picked:>8,}")
        balanced = sampling.balanced_sample(levels, budget, random_state=0)
        uniform = sampling.random_sample(args.points, budget, 0)
        for index, labels in enumerate(levels):
            k = int(labels.max()) + 1
            print(
                f"{'':>8}   level {index} normalised entropy: balanced "
                f"{sampling.normalized_entropy(np.bincount(labels[balanced], minlength=k)):.3f}"
                f", random "
                f"{sampling.normalized_entropy(np.bincount(labels[uniform], minlength=k)):.3f}"
            )
    print(f"load average after: {os.getloadavg()}")


# =========================================================================== step 5 end to end

#: Window sizes of the two stand-in cutout runs, in merged order.
SURVEY_WINDOWS = (64, 128)
#: Window origins per row of a mosaic's grid (stride half the window).
GRID_COLUMNS = 150
PIXEL_ARCSEC = 1.5
CONFIG_A = ROOT / "configs" / "clusters" / "A_3M_3lvl_60k_4k_300.yaml"


@dataclass
class Lineage:
    """The runs step 5 reads, recorded in the benchmark's own tracking store."""

    merged_id: str
    features_id: str
    clustering_id: str
    seconds: dict[str, float] = field(default_factory=dict)


def _blocks(n_points: int, n_mosaics: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block (window x mosaic) and row in the block of every cutout, and block sizes.

    Blocks come in merged order: all mosaics of the first window, then of the second.
    """
    n_blocks = len(SURVEY_WINDOWS) * n_mosaics
    sizes = np.full(n_blocks, n_points // n_blocks, dtype=np.int64)
    sizes[: n_points % n_blocks] += 1
    block = np.repeat(np.arange(n_blocks), sizes)
    row = np.arange(n_points) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return block, row, sizes


def _sky(
    mosaic: np.ndarray, window: np.ndarray, x0: np.ndarray, y0: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Plausible ICRS centres (deg) of the cutouts: mosaic centre plus the pixel offset."""
    rng = np.random.default_rng(seed)
    n_mosaics = int(mosaic.max()) + 1
    centre_ra, centre_dec = rng.uniform(0, 360, n_mosaics), rng.uniform(0, 85, n_mosaics)
    half = GRID_COLUMNS * 32  # about the middle of a 64-px window grid
    dec = centre_dec[mosaic] + (y0 + (window - 1) / 2 - half) * PIXEL_ARCSEC / 3600
    dx = (x0 + (window - 1) / 2 - half) * PIXEL_ARCSEC / 3600
    return (centre_ra[mosaic] - dx / np.cos(np.radians(dec))) % 360, dec


def fake_manifest(
    n_points: int,
    n_mosaics: int,
    survey_dir: Path,
    pixels_dir: Path,
    source_ids: list[str],
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[Path, tuple[int, int, int]]]]:
    """A merged manifest of two copied cutout runs (windows 64 and 128) over ``n_mosaics``.

    Returns
    -------
    manifest : DataFrame
        The columns of :data:`astrocurate.stages.merge_cutouts.run.MERGED_TYPES`, merged order.
    mosaics : DataFrame
        The merged ``mosaics.parquet`` (no fingerprints: copied stores need none).
    pixel_files : list of (Path, shape)
        The ``.npy`` pixel file of each (window, mosaic) block and its shape.
    """
    rng = np.random.default_rng(seed)
    block, row, sizes = _blocks(n_points, n_mosaics)
    source = block // n_mosaics
    mosaic = block % n_mosaics
    window = np.asarray(SURVEY_WINDOWS, dtype=np.int64)[source]
    x0 = (row % GRID_COLUMNS) * (window // 2)
    y0 = (row // GRID_COLUMNS) * (window // 2)
    ra, dec = _sky(mosaic, window, x0, y0, seed)
    names = [f"P{m:04d}" for m in range(n_mosaics)]
    paths = [str(survey_dir / name / "mosaic-blanked.fits") for name in names]
    files = [pixels_dir / f"w{w}" / f"{name}.npy" for w in SURVEY_WINDOWS for name in names]
    noise = rng.lognormal(np.log(1e-4), 0.3, n_points)
    peak_snr = rng.lognormal(1.5, 1.0, n_points)
    manifest = pd.DataFrame(
        {
            "cutout_id": np.arange(n_points, dtype=np.int64),
            "source_run_id": pd.Categorical.from_codes(source, source_ids),
            "source_cutout_id": np.arange(n_points) - np.searchsorted(source, source),
            "mosaic": pd.Categorical.from_codes(mosaic, names),
            "mosaic_path": pd.Categorical.from_codes(mosaic, paths),
            "window_size": window,
            "x0": x0,
            "y0": y0,
            "ra": ra,
            "dec": dec,
            "pixel_scale_arcsec": PIXEL_ARCSEC,
            "nan_fraction": 0.0,
            "mean": rng.normal(0.0, 2e-5, n_points),
            "std": noise * rng.lognormal(0.1, 0.2, n_points),
            "max": noise * peak_snr,
            "noise_mad": noise,
            "peak_snr": peak_snr,
            "store": "copy",
            "array_file": pd.Categorical.from_codes(block, [str(f) for f in files]),
            "array_row": row,
        }
    )
    mosaics = pd.DataFrame(
        {
            "source_run_id": np.repeat(source_ids, n_mosaics),
            "mosaic": names * len(SURVEY_WINDOWS),
            "mosaic_path": paths * len(SURVEY_WINDOWS),
        }
    )
    windows = np.repeat(SURVEY_WINDOWS, n_mosaics)
    shapes = [(int(n), int(w), int(w)) for n, w in zip(sizes, windows, strict=True)]
    return manifest, mosaics, list(zip(files, shapes, strict=True))


def sparse_npy(path: Path, shape: tuple[int, ...]) -> None:
    """Write a float32 ``.npy`` of ``shape`` as a sparse file (zeros, no disk blocks).

    A 3M-cutout copied store is ~100 GB; a sparse one costs nothing and still reads
    (as zeros) through :class:`astrocurate.io.cutout_store.CutoutReader`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.truncate(handle.tell() + 4 * int(np.prod(shape)))


def write_merge_run(n_points: int, n_mosaics: int, workdir: Path, seed: int) -> str:
    """Record a finished ``merge_cutouts`` run with a ``n_points``-row manifest."""
    from astrocurate.io.cutout_store import MANIFEST, MOSAICS, write_parquet_atomic
    from astrocurate.stages.merge_cutouts.run import MERGED_TYPES
    from astrocurate.tracking import tracked_step

    source_ids = [uuid.uuid4().hex for _ in SURVEY_WINDOWS]  # stand-in cutting_out runs
    params = {"cutouts_id": source_ids, "dedup_sky": False, "output_path": str(workdir)}
    with tracked_step("merge_cutouts", params, input_run_ids=source_ids, force=True) as run:
        manifest, mosaics, pixel_files = fake_manifest(
            n_points, n_mosaics, workdir / "survey", workdir / "pixels", source_ids, seed
        )
        for path, shape in pixel_files:
            sparse_npy(path, shape)
        write_parquet_atomic(manifest, run.output_dir / MANIFEST, MERGED_TYPES)
        write_parquet_atomic(mosaics, run.output_dir / MOSAICS)
        run.log_metrics({"n_cutouts": n_points, "n_inputs": len(source_ids)})
    return run.run_id


def write_feature_run(merged_id: str, n_rows: int, dim: int, seed: int) -> str:
    """Record a finished ``feature_extraction`` run: random float32 features + sidecar."""
    from astrocurate.tracking import tracked_step

    rng = np.random.default_rng(seed)
    params = {"model": "synthetic", "rows": n_rows, "dim": dim}
    with tracked_step("feature_extraction", params, input_run_ids=[merged_id], force=True) as run:
        path = run.output_dir / "features.npy"
        matrix = np.lib.format.open_memmap(path, "w+", np.float32, (n_rows, dim))
        for start in range(0, n_rows, 1 << 18):
            stop = min(n_rows, start + (1 << 18))
            matrix[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
        matrix.flush()
        del matrix
        sidecar = {"model": "synthetic", "n_rows": n_rows, "dim": dim, "dtype": "float32"}
        (run.output_dir / "features.json").write_text(json.dumps(sidecar))
    return run.run_id


def clustering_config(clusters: list[int]) -> Any:
    """Config A with its per-level values of level 1 repeated for ``len(clusters)`` levels."""
    import yaml

    from astrocurate.stages.clustering.run import LEVEL_KEYS, ClusteringConfig

    mapping = yaml.safe_load(CONFIG_A.read_text())
    for key in LEVEL_KEYS:
        value = mapping.get(key)
        first = value[0] if isinstance(value, list) else value
        mapping[key] = [first] * len(clusters)
    mapping.update(n_levels=len(clusters), n_clusters=list(clusters))
    return ClusteringConfig.from_mapping(mapping)


def _write_levels(directory: Path, clusters: list[int], n_points: int, dim: int, seed: int) -> None:
    """Write every level of the synthetic tree as step 4b does (level.json last)."""
    from astrocurate.stages.clustering import levels as clustering_levels

    leaves, parents, distances = synthetic_hierarchy(n_points, clusters, seed)
    rng = np.random.default_rng(seed + 1)
    labels, point_labels = leaves, leaves
    for level, k in enumerate(clusters, start=1):
        if level > 1:
            labels = parents[level - 2]
            point_labels = labels[point_labels]
            distances = rng.random(len(labels), dtype=np.float32)
        centroids = rng.standard_normal((k, dim), dtype=np.float32)
        result = clustering_levels._level_result(centroids, labels, distances, [])
        clustering_levels._write_level(directory, level, result, point_labels, 0.0)


def write_clustering_run(features_id: str, clusters: list[int], seed: int) -> str:
    """Record a FINISHED ``clustering`` run holding the synthetic tree over every feature row.

    The directory is what step 4a (``_write_experiment``: config.yaml, run.json, run.sh,
    input_indices.npy) and step 4b (``_write_level`` per level) write.
    """
    from astrocurate.stages.clustering import run as clustering
    from astrocurate.stages.feature_extraction.outputs import load_features
    from astrocurate.tracking import require_run, tracked_step

    features = require_run(features_id, "feature_extraction")
    n_rows, dim = load_features(features.output_dir).shape
    config = clustering_config(clusters)
    indices = np.arange(n_rows, dtype=np.int64)
    config.check_inputs(n_rows, "feature rows")
    params = {
        **config.params(),
        "features_id": features_id,
        "n_inputs": n_rows,
        "n_features": dim,
        "n_feature_rows": n_rows,
        "subset_sha256": "none",
    }
    key_params = {k: v for k, v in params.items() if k not in clustering.VOLATILE_KEYS}
    with tracked_step("clustering", key_params, input_run_ids=[features_id], force=True) as run:
        clustering._write_experiment(
            run.output_dir, run.run_id, config, None, key_params, indices, features
        )
        _write_levels(run.output_dir, clusters, n_rows, dim, seed)
    return run.run_id


def build_lineage(args: argparse.Namespace, workdir: Path) -> Lineage:
    """Record the merge, feature and clustering runs step 5 reads; time each."""
    seconds = {}
    start = time.perf_counter()
    merged_id = write_merge_run(args.points, args.mosaics, workdir, args.seed)
    seconds["merge_cutouts"] = time.perf_counter() - start
    start = time.perf_counter()
    features_id = write_feature_run(merged_id, args.points, args.dim, args.seed)
    seconds["feature_extraction"] = time.perf_counter() - start
    start = time.perf_counter()
    clustering_id = write_clustering_run(features_id, args.clusters, args.seed)
    seconds["clustering"] = time.perf_counter() - start
    return Lineage(merged_id, features_id, clustering_id, seconds)


# --------------------------------------------------------------------------- measuring


def _timed_call(function: Callable[..., Any], total: list[float]) -> Callable[..., Any]:
    """Wrap ``function`` so that each call adds its wall time and 1 to ``total``."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - start
            total[1] += 1

    return wrapper


@contextlib.contextmanager
def phase_timers(targets: Sequence[tuple[Any, str, str, int]]) -> Iterator[dict[str, list]]:
    """Time calls of ``owner.name`` for each target while the block runs.

    Yields ``{label: [seconds, calls]}``; the attributes are restored afterwards.
    """
    totals = {label: [0.0, 0] for _, _, label, _ in targets}
    originals = []
    try:
        for owner, name, label, _ in targets:
            originals.append((owner, name, getattr(owner, name)))
            setattr(owner, name, _timed_call(getattr(owner, name), totals[label]))
        yield totals
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


def stage_phases() -> list[tuple[Any, str, str, int]]:
    """What the breakdown times: ``(owner, attribute, label, depth)``, in call order.

    Phases are inclusive: an indented phase is part of the one above it.
    """
    from astrocurate import tracking
    from astrocurate.stages.clustering import run as clustering
    from astrocurate.stages.curated_sampling import report
    from astrocurate.stages.curated_sampling import run as curate

    targets = [
        (curate, "_resolve_inputs", "resolve runs, memory-map clustering", 0),
        (tracking.checks, "quick_check_outputs", "check input runs' outputs", 1),
        (clustering, "load_clustering", "load_clustering", 1),
        (tracking.lifecycle, "create_run_record", "MLflow: create run", 0),
        (tracking.lifecycle, "record_start", "MLflow: log params and tags", 0),
        (curate, "_write_sample", "_write_sample", 0),
        (curate._Inputs, "point_labels", "pool labels, every level", 1),
        (sampling, "random_sample", "random baseline", 1),
        (sampling, "balanced_sample", "balanced_sample", 1),
        (curate, "read_manifest", "read_manifest (every row and column)", 1),
        (curate, "_truth_classes", "truth classes (catalogue lookup)", 1),
        (curate, "_curated_manifest", "curated rows + cluster columns", 1),
        (curate, "sample_metrics", "sample_metrics", 1),
        (curate, "write_parquet_atomic", "write curated.parquet", 1),
        (curate, "_write_report", "_write_report", 0),
        (report, "load_sampling_run", "load sampling run + clustering", 1),
        (report, "level_counts", "cluster counts, every level", 1),
        (report, "class_shares", "class shares", 1),
        (report, "feature_map", "feature map (subsample + projection)", 1),
        (report, "build_galleries", "galleries (members, pixels, PNGs)", 1),
        (report, "balance_figure", "balance figure", 1),
        (report, "map_figure", "feature map figure", 1),
        (report, "cluster_size_figure", "cluster size figures", 1),
        (report, "render_html", "render HTML", 1),
        (report, "_publish", "write report files", 1),
        (tracking, "finish_step", "finish_step", 0),
        (tracking, "hash_outputs", "hash outputs", 1),
        (tracking.StepRun, "log_metrics", "MLflow: log_metrics (every call)", 0),
        (tracking.StepRun, "log_artifact", "MLflow: log_artifact (every call)", 0),
        (tracking.StepRun, "log_dict", "MLflow: log_dict (every call)", 0),
    ]
    return [target for target in targets if hasattr(target[0], target[1])]  # code moves on


def _proc_status_mb(field_name: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB (NaN elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


@dataclass
class Measure:
    """Wall times, peak RSS and breakdown of one variant."""

    times: list[float] = field(default_factory=list)
    peak_mb: float = 0.0
    start_mb: float = float("inf")
    picked: int = 0
    phases: dict[str, list] | None = None


def measure(function: Callable[[], Any], repeats: int, phases: bool) -> Measure:
    """Call ``function`` ``repeats`` times; keep the breakdown of the fastest call."""
    result = Measure()
    for _ in range(repeats):
        gc.collect()
        _reset_peak_rss()
        result.start_mb = min(result.start_mb, _proc_status_mb("VmRSS"))
        with phase_timers(stage_phases() if phases else []) as totals:
            start = time.perf_counter()
            picked = function()
            elapsed = time.perf_counter() - start
        result.peak_mb = max(result.peak_mb, _proc_status_mb("VmHWM"))
        if not result.times or elapsed < min(result.times):
            result.phases = totals if phases else None
        result.times.append(elapsed)
        result.picked = picked
    return result


def _stage_call(clustering_id: str, budget: int, seed: int, report: bool) -> int:
    """Run step 5 as the CLI does (a new run every time); return the sample size."""
    from astrocurate.stages.curated_sampling.run import SELECTED, SamplingOptions, curated_sample

    options = SamplingOptions(num_samples=budget, seed=seed)
    run = curated_sample(clustering_id, options, force=True, report=report)
    return len(np.load(run.output_dir / SELECTED))


def _algorithm_call(labels: list[np.ndarray], budget: int, seed: int) -> int:
    """``balanced_sample`` with the arguments step 5 passes (strategy 'r', top level)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    chosen = sampling.balanced_sample(
        labels, budget, strategy="r", level=len(labels) - 1, random_state=rng
    )
    return len(chosen)


def print_breakdown(measured: Measure, targets: Sequence[tuple[Any, str, str, int]]) -> None:
    """Print the phases of the fastest call that took any time, indented by depth."""
    total = min(measured.times)
    top = 0.0
    for _, _, label, depth in targets:
        seconds, calls = measured.phases[label]
        if not calls:
            continue
        if depth == 0 and not label.startswith("MLflow: log"):
            top += seconds
        note = f" ({calls} calls)" if calls > 1 else ""
        print(f"{'':>12}{'  ' * depth}{label:<{44 - 2 * depth}} {seconds:>7.2f} s{note}")
    print(f"{'':>12}{'other (imports, MLflow lookups, ...)':<44} {total - top:>7.2f} s")


def _read_whole(merged_dir: Path, rows: np.ndarray) -> int:
    """What step 5 does now: read the whole manifest, then pick the sample's rows."""
    from astrocurate.io.cutout_store import read_manifest

    return len(read_manifest(merged_dir).iloc[rows].reset_index(drop=True))


def _read_rows(merged_dir: Path, rows: np.ndarray) -> int:
    """The sample's rows only, every column (what step 5 does: streams row groups)."""
    from astrocurate.io.cutout_store import read_manifest_rows

    return len(read_manifest_rows(merged_dir, rows))


def _read_truth_columns(merged_dir: Path) -> int:
    """The four columns truth labelling needs, for every row (only with a catalogue)."""
    from astrocurate.io.cutout_store import read_manifest

    return len(read_manifest(merged_dir, ["mosaic_path", "window_size", "x0", "y0"]))


def time_manifest_reads(lineage: Lineage, budgets: Sequence[int], seed: int) -> None:
    """Time reading the curated rows as step 5 did (whole manifest) and does (those rows)."""
    from astrocurate.tracking import get_run

    merged_dir = get_run(lineage.merged_id).output_dir
    n_rows = np.load(get_run(lineage.clustering_id).output_dir / "input_indices.npy").size
    rng = np.random.default_rng(seed)
    for budget in budgets:
        rows = np.sort(rng.choice(n_rows, min(budget, n_rows), replace=False))
        variants = {
            "read_manifest + iloc (before)": lambda r=rows: _read_whole(merged_dir, r),
            "read_manifest_rows (now)": lambda r=rows: _read_rows(merged_dir, r),
            "4 truth columns, every row": lambda: _read_truth_columns(merged_dir),
        }
        for name, function in variants.items():
            measured = measure(function, 2, False)
            print(
                f"{budget:>8,} {name:<30} {measured.times[0]:>8.2f} "
                f"{min(measured.times):>8.2f} {measured.start_mb:>9.0f} {measured.peak_mb:>8.0f}"
                f"  ({measured.picked:,} rows)"
            )


def _profile(clustering_id: str, budget: int, seed: int, top: int) -> None:
    """Print the ``top`` entries of a cProfile of one step-5 call, by cumulative time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(_stage_call, clustering_id, budget, seed, False)
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(top)


def _describe_lineage(lineage: Lineage, args: argparse.Namespace) -> None:
    """Print the runs built and the size of what step 5 reads."""
    from astrocurate.io.cutout_store import MANIFEST
    from astrocurate.tracking import get_run

    merged = get_run(lineage.merged_id).output_dir
    clustering_dir = get_run(lineage.clustering_id).output_dir
    size = (merged / MANIFEST).stat().st_size / 1e6
    arrays = sum(p.stat().st_size for p in clustering_dir.rglob("*.npy")) / 1e6
    built = ", ".join(f"{k} {v:.1f} s" for k, v in lineage.seconds.items())
    print(
        f"lineage: {args.points:,} cutouts over {args.mosaics} mosaics x windows "
        f"{SURVEY_WINDOWS}, manifest.parquet {size:.0f} MB; features {args.points:,} x "
        f"{args.dim} float32; clustering {args.clusters} ({arrays:.0f} MB of arrays); "
        f"built in {built}"
    )


def run_stage(args: argparse.Namespace) -> None:
    """Build a survey-scale lineage in a temporary store; time step 5 against the algorithm.

    The lineage is built in a child process, so that the timed process starts as small
    as a fresh ``random_sampling.py`` would (its first call also pays the imports).
    """
    import multiprocessing

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="astrocurate-sampling-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["ASTROCURATE_DATA_DIR"] = str(workdir / "outputs")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logging.basicConfig(level=logging.WARNING)
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            lineage = Lineage(**pool.submit(_build_and_describe, args, workdir).result())
        _time_stage(args, lineage)
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")


def _build_and_describe(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Child process: build the lineage, print what it holds, return its fields."""
    lineage = build_lineage(args, workdir)
    _describe_lineage(lineage, args)
    print(f"lineage builder's peak RSS: {_proc_status_mb('VmHWM'):.0f} MB", flush=True)
    return asdict(lineage)


def _time_stage(args: argparse.Namespace, lineage: Lineage) -> None:
    """Time the algorithm and step 5 without and with its report, per budget."""
    from astrocurate.stages.curated_sampling.run import _resolve_inputs

    labels = _resolve_inputs(lineage.clustering_id).point_labels()
    gc.collect()
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()}")
    print(f"RSS before timing: {_proc_status_mb('VmRSS'):.0f} MB")
    print(
        f"{'budget':>8} {'variant':<30} {'first s':>8} {'best s':>8} {'RSS0 MB':>9} {'peak MB':>8}"
    )
    targets = stage_phases()
    for budget in args.budgets:
        variants = {
            "balanced_sample (algorithm)": (
                lambda b=budget: _algorithm_call(labels, b, args.seed),
                args.repeats,
                False,
            ),
            "curated_sample, no report": (
                lambda b=budget: _stage_call(lineage.clustering_id, b, args.seed, False),
                args.stage_repeats,
                True,
            ),
            "curated_sample + report": (
                lambda b=budget: _stage_call(lineage.clustering_id, b, args.seed, True),
                args.stage_repeats,
                True,
            ),
        }
        for name, (function, repeats, phases) in variants.items():
            measured = measure(function, repeats, phases)
            print(
                f"{budget:>8,} {name:<30} {measured.times[0]:>8.2f} "
                f"{min(measured.times):>8.2f} {measured.start_mb:>9.0f} {measured.peak_mb:>8.0f}"
                f"  ({measured.picked:,} picked)"
            )
            if measured.phases is not None:
                print_breakdown(measured, targets)
    print("reading the curated rows of the merged manifest:")
    time_manifest_reads(lineage, args.budgets, args.seed)
    if args.profile:
        _profile(lineage.clustering_id, args.budgets[0], args.seed, args.profile)
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=3_000_000)
    parser.add_argument("--clusters", type=int, nargs="+", default=[60_000, 4_000, 300])
    parser.add_argument("--budgets", type=int, nargs="+", default=[10_000, 300_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    stage = parser.add_argument_group("--stage: step 5 end to end")
    stage.add_argument("--stage", action="store_true", help="time curated_sample end to end")
    stage.add_argument("--stage-repeats", type=int, default=2, help="calls per stage variant")
    stage.add_argument("--mosaics", type=int, default=841, help="mosaics of the fake survey")
    stage.add_argument("--dim", type=int, default=64, help="feature dimension")
    stage.add_argument("--workdir", type=Path, help="work directory (default: a temporary one)")
    stage.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    stage.add_argument(
        "--profile", type=int, default=0, metavar="N", help="cProfile top N of one call"
    )
    args = parser.parse_args()
    if args.stage:
        run_stage(args)
    else:
        run_algorithm(args)


if __name__ == "__main__":
    main()
