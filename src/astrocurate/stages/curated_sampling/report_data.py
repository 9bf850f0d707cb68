"""What the report reads and counts: the sampling run, its clusters, its truth classes.

:func:`load_sampling_run` reads a ``curated_sampling`` run directory and memory-maps the
clustering it names; :func:`level_counts` and :func:`class_shares` count the pool and the
samples per cluster and per truth class.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate.errors import InvalidRunError
from astrocurate.io.cutout_store import read_manifest_rows
from astrocurate.stages.curated_sampling.outputs import BASELINE, CURATED, INFO, METRICS, SELECTED

__all__ = [
    "SETS",
    "ClassShares",
    "LevelCounts",
    "SamplingRun",
    "class_shares",
    "level_counts",
    "load_sampling_run",
    "set_entropies",
]

#: The point sets the report compares, in display order.
SETS = ("pool", "random", "curated")


@dataclass
class SamplingRun:
    """What the report reads of a sampling run (arrays memory-mapped where possible).

    Attributes
    ----------
    directory : Path
        The sampling run directory.
    params : dict
        ``sampling.json``.
    metrics : dict of str to float
        ``metrics.json`` (empty if missing).
    selected : numpy.ndarray of int64, shape (m,)
        Sorted feature rows of the curated sample.
    baseline : numpy.ndarray of int64 or None
        Sorted feature rows of the uniform random baseline, if written.
    curated_classes : numpy.ndarray of str or None
        ``truth_class`` column of ``curated.parquet`` (None without one).
    input_indices : numpy.ndarray of int64, shape (n_pool,)
        Feature row of each pool point (the clustering's level-1 inputs).
    point_labels : list of numpy.ndarray of int64, shape (N,)
        Per level (index 0 is level 1): cluster of every feature row, -1 outside the pool.
    n_clusters : list of int
        Clusters per level.
    features_dir, merged_dir : Path
        The feature and merged-cutout run directories.
    top : int
        The level (1-based) that the sampling balanced from; the report's "top level".
    """

    directory: Path
    params: dict[str, Any]
    metrics: dict[str, float]
    selected: np.ndarray
    baseline: np.ndarray | None
    curated_classes: np.ndarray | None
    input_indices: np.ndarray
    point_labels: list[np.ndarray]
    n_clusters: list[int]
    features_dir: Path
    merged_dir: Path
    top: int

    @property
    def n_pool(self) -> int:
        """Number of points in the pool."""
        return len(self.input_indices)


def load_sampling_run(sampling_dir: Path | str) -> SamplingRun:
    """Read a sampling run directory and memory-map the clustering it was drawn from.

    Parameters
    ----------
    sampling_dir : path-like
        A ``curated_sampling`` run directory.

    Returns
    -------
    SamplingRun

    Raises
    ------
    InvalidRunError
        If a required file is missing or the run's files disagree.
    """
    from astrocurate.stages.clustering.outputs import load_clustering

    directory = Path(sampling_dir).resolve()
    params = _read_json(directory / INFO, required=True)
    metrics_raw = _read_json(directory / METRICS, required=False)
    metrics = {str(k): float(v) for k, v in metrics_raw.items() if _is_number(v)}
    selected = _load_indices(directory / SELECTED, required=True)
    baseline = _load_indices(directory / BASELINE, required=False)
    curated_path = directory / CURATED
    if not curated_path.is_file():
        raise InvalidRunError(f"{curated_path}: missing (is this a finished sampling run?)")
    clustering = load_clustering(_param_path(params, "clustering_dir", directory))
    n_levels = len(clustering.levels)
    top = int(params.get("level") or n_levels)
    if not 1 <= top <= n_levels:
        raise InvalidRunError(f"{directory}: level {top} is not in 1..{n_levels}")
    run = SamplingRun(
        directory=directory,
        params=params,
        metrics=metrics,
        selected=selected,
        baseline=baseline,
        curated_classes=_curated_classes(curated_path),
        input_indices=np.asarray(clustering.input_indices, dtype=np.int64),
        point_labels=[level["point_labels"] for level in clustering.levels],
        n_clusters=[len(level["centroids"]) for level in clustering.levels],
        features_dir=_param_path(params, "features_dir", directory),
        merged_dir=_param_path(params, "merged_dir", directory),
        top=top,
    )
    _check_samples(run)
    return run


def _curated_classes(path: Path) -> np.ndarray | None:
    """Read only the ``truth_class`` column of ``curated.parquet``, if it has one."""
    import pyarrow.parquet as pq

    if "truth_class" not in pq.read_schema(path).names:
        return None
    return pd.read_parquet(path, columns=["truth_class"])["truth_class"].astype(str).to_numpy()


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    """Read a JSON object, or return ``{}`` for a missing optional file."""
    if not path.is_file():
        if required:
            raise InvalidRunError(f"{path}: missing (is this a curated_sampling run directory?)")
        return {}
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise InvalidRunError(f"{path}: expected a JSON object")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load_indices(path: Path, *, required: bool) -> np.ndarray | None:
    """Load a sorted index array, or None for a missing optional file."""
    if not path.is_file():
        if required:
            raise InvalidRunError(f"{path}: missing (is this a finished sampling run?)")
        return None
    values = np.asarray(np.load(path, allow_pickle=False), dtype=np.int64)
    return np.sort(values)


def _param_path(params: Mapping[str, Any], key: str, directory: Path) -> Path:
    """Return an existing directory named in ``sampling.json``."""
    value = params.get(key)
    if not value:
        raise InvalidRunError(f"{directory / INFO}: no {key!r}")
    path = Path(value)
    if not path.is_dir():
        raise InvalidRunError(f"{directory / INFO}: {key} {path} is not a directory")
    return path


def _check_samples(run: SamplingRun) -> None:
    """Check that the samples are pool points (feature rows labelled at level 1)."""
    labels = run.point_labels[0]
    for name, rows in (("selected", run.selected), ("baseline_random", run.baseline)):
        if rows is None or not len(rows):
            continue
        if rows[0] < 0 or rows[-1] >= len(labels) or (labels[rows] < 0).any():
            raise InvalidRunError(
                f"{run.directory}: {name}.npy holds rows outside the clustering's pool"
            )


# =========================================================================== numbers


@dataclass
class LevelCounts:
    """Points per cluster of one level, in the pool and in each sample.

    Attributes
    ----------
    level : int
        1-based level.
    counts : dict of str to numpy.ndarray of int64, shape (k,)
        ``pool``, ``curated`` and (with a baseline) ``random``.
    """

    level: int
    counts: dict[str, np.ndarray] = field(default_factory=dict)


def level_counts(run: SamplingRun) -> list[LevelCounts]:
    """Count pool, curated and random points in every cluster of every level.

    Parameters
    ----------
    run : SamplingRun

    Returns
    -------
    list of LevelCounts
        One per level, level 1 first.
    """
    out = []
    for index, (labels, k) in enumerate(zip(run.point_labels, run.n_clusters, strict=True)):
        counts = {"pool": _bincount(labels, None, k), "curated": _bincount(labels, run.selected, k)}
        if run.baseline is not None:
            counts["random"] = _bincount(labels, run.baseline, k)
        out.append(LevelCounts(index + 1, counts))
    return out


def _bincount(labels: np.ndarray, rows: np.ndarray | None, k: int) -> np.ndarray:
    """Points per cluster among ``rows`` (all labelled rows when None), in chunks."""
    total = np.zeros(k, dtype=np.int64)
    chunk = 1 << 22
    source = labels if rows is None else rows
    for start in range(0, len(source), chunk):
        part = np.asarray(
            labels[start : start + chunk] if rows is None else labels[rows[start : start + chunk]]
        )
        total += np.bincount(part[part >= 0], minlength=k)[:k]
    return total


def _entropy(counts: np.ndarray, pool: np.ndarray) -> float:
    """Normalised entropy of ``counts`` over the categories present in ``pool``."""
    from astrocurate.algorithms.sampling import normalized_entropy

    present = pool > 0
    if counts[present].sum() == 0:
        return float("nan")
    return normalized_entropy(counts[present], n_categories=int(present.sum()))


def set_entropies(
    counts: Mapping[str, np.ndarray], metrics: Mapping[str, float], prefix: str
) -> dict[str, float]:
    """Entropy of each set: ``metrics[<prefix>_<set>]`` when logged, else computed."""
    return {
        name: metrics.get(f"{prefix}_{name}", _entropy(values, counts["pool"]))
        for name, values in counts.items()
    }


@dataclass
class ClassShares:
    """Share of each truth class in the pool and the samples.

    Attributes
    ----------
    names : list of str
        Class names, most common in the pool first.
    shares : dict of str to numpy.ndarray of float, shape (n_classes,)
        Per set (``pool``, ``random``, ``curated``).
    entropies : dict of str to float
        Normalised entropy of each set's class histogram.
    enrichment : dict of str to float
        Curated share over pool share of each class (from ``metrics.json``), if logged.
    """

    names: list[str]
    shares: dict[str, np.ndarray]
    entropies: dict[str, float]
    enrichment: dict[str, float]


def class_shares(run: SamplingRun) -> ClassShares | None:
    """Truth-class shares: from ``metrics.json`` when logged, else from the truth catalogue.

    Returns
    -------
    ClassShares or None
        None when the survey has no truth catalogue (no ``truth_class`` column and no
        ``class_share_*`` metrics).
    """
    logged = _logged_class_shares(run.metrics)
    if logged is not None:
        return logged
    if run.curated_classes is None:
        return None
    return _computed_class_shares(run)


def _logged_class_shares(metrics: Mapping[str, float]) -> ClassShares | None:
    """Parse ``class_share_<name>_<set>``, ``class_entropy_<set>``, ``class_enrichment_<name>``."""
    shares: dict[str, dict[str, float]] = {s: {} for s in SETS}
    for key, value in metrics.items():
        for name in SETS:
            suffix = f"_{name}"
            if key.startswith("class_share_") and key.endswith(suffix):
                shares[name][key[len("class_share_") : -len(suffix)]] = value
    if not shares["pool"]:
        return None
    names = sorted(shares["pool"], key=lambda n: (-shares["pool"][n], n))
    return ClassShares(
        names=names,
        shares={s: np.array([v.get(n, 0.0) for n in names]) for s, v in shares.items() if v},
        entropies={
            s: metrics[f"class_entropy_{s}"] for s in SETS if f"class_entropy_{s}" in metrics
        },
        enrichment={
            n: metrics[f"class_enrichment_{n}"] for n in names if f"class_enrichment_{n}" in metrics
        },
    )


def _computed_class_shares(run: SamplingRun) -> ClassShares | None:
    """Label the pool with the truth catalogue (only when ``metrics.json`` lacks the shares)."""
    from astrocurate.io.labels import truth_labels_for_manifest

    rows = read_manifest_rows(
        run.merged_dir, run.input_indices, ("mosaic_path", "window_size", "x0", "y0")
    )
    pool = truth_labels_for_manifest(rows)
    if pool is None:
        return None
    pool = np.asarray(pool).astype(str)
    labels = {"pool": pool, "curated": run.curated_classes}
    if run.baseline is not None:
        labels["random"] = pool[np.searchsorted(run.input_indices, run.baseline)]
    names, pool_counts = np.unique(pool, return_counts=True)
    order = np.lexsort((names, -pool_counts))
    names = names[order]
    counts = {
        s: np.array([(v == n).sum() for n in names], dtype=np.int64) for s, v in labels.items()
    }
    shares = {s: c / max(c.sum(), 1) for s, c in counts.items()}
    enrichment = {
        str(n): float(shares["curated"][i] / shares["pool"][i]) for i, n in enumerate(names)
    }
    return ClassShares(
        names=[str(n) for n in names],
        shares=shares,
        entropies={s: _entropy(c, counts["pool"]) for s, c in counts.items()},
        enrichment=enrichment,
    )
