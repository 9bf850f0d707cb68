"""Visual report of a curated sampling run: one self-contained HTML page (issue #6).

:func:`write_report` reads a ``curated_sampling`` run directory (``sampling.json``,
``selected.npy``, ``baseline_random.npy``, ``curated.parquet``, ``metrics.json``) and the
clustering, feature and merged-cutout directories it names, and writes::

    <sampling_dir>/report/
        index.html                     the page; every image embedded as a PNG data URI
        balance_level_<L>.png          pool vs random vs curated share of each cluster
        balance_classes.png            the same over truth classes (with a truth catalogue)
        feature_map.png                2-D projection of the features (PCA, or UMAP)
        cluster_sizes_level_<L>.png    cluster-size distribution of each level

The page works from disk and inside ``mlflow ui``'s artifact viewer (no external
references). The report directory appears atomically: it is built under a temporary
name in ``sampling_dir`` and renamed into place.

The report stays small and fast whatever the survey size: the feature map draws a
seeded subsample of at most ``max_points`` pool points (read from the memory-mapped
feature matrix by sorted row index), the galleries read the pixels of a few dozen
cutouts only, and cluster counts come from ``bincount`` over the memory-mapped label
arrays. This module knows no MLflow: the stage that calls it logs the directory.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate import __version__
from astrocurate.errors import InvalidArgumentError, InvalidRunError
from astrocurate.io.cutout_store import read_manifest_rows
from astrocurate.stages.curated_sampling.outputs import BASELINE, CURATED, INFO, METRICS, SELECTED
from astrocurate.stages.feature_extraction.outputs import load_features

REPORT_DIR = "report"
INDEX = "index.html"

#: Default number of cutouts shown per gallery cluster.
DEFAULT_GALLERY_SIZE = 12
#: Default number of largest (and of smallest) clusters given a gallery.
DEFAULT_GALLERY_CLUSTERS = 3
#: Percentiles of each cutout mapped to black and white before the asinh stretch.
STRETCH_PERCENTILES = (0.5, 99.5)
#: Softening ``a`` of the stretch ``asinh(a x) / asinh(a)`` (larger: more faint-end contrast).
ASINH_SOFTENING = 10.0
#: Thumbnails wider than this are downsampled (area average) to it before encoding.
THUMBNAIL_PX = 96
#: Columns of the merged manifest that reading pixels (and truth classes) needs.
PIXEL_COLUMNS = (
    "cutout_id",
    "mosaic",
    "mosaic_path",
    "window_size",
    "x0",
    "y0",
    "nan_fraction",
    "store",
    "array_file",
    "array_row",
)
#: Manifest rows decoded at a time when picking rows out of a Parquet row group.
SETS = ("pool", "random", "curated")
SET_COLOURS = {"pool": "#999999", "random": "#4477aa", "curated": "#ee6677"}
PROJECTIONS = ("auto", "pca", "umap")


# =========================================================================== inputs


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


def _entropies(
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


# =========================================================================== manifest and pixels


def asinh_stretch(
    image: np.ndarray,
    percentiles: tuple[float, float] = STRETCH_PERCENTILES,
    softening: float = ASINH_SOFTENING,
) -> np.ndarray:
    """Map a cutout to 8-bit grey: clip to its percentiles, then an asinh stretch.

    ``x = clip((v - lo) / (hi - lo), 0, 1)`` with ``lo, hi`` the cutout's
    ``percentiles`` of its finite pixels, shown as ``asinh(a x) / asinh(a)``,
    ``a = softening``. Non-finite pixels and constant cutouts are black.

    Parameters
    ----------
    image : numpy.ndarray, shape (h, w)
    percentiles : tuple of float
        Lower and upper percentile (0-100).
    softening : float
        ``a`` > 0.

    Returns
    -------
    numpy.ndarray of uint8, shape (h, w)
    """
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    out = np.zeros(values.shape, dtype=np.uint8)
    if not finite.any():
        return out
    lo, hi = np.percentile(values[finite], percentiles)
    if not hi > lo:
        return out
    scaled = np.clip((np.where(finite, values, lo) - lo) / (hi - lo), 0.0, 1.0)
    stretched = np.arcsinh(softening * scaled) / np.arcsinh(softening)
    return np.round(stretched * 255.0).astype(np.uint8)


def thumbnail_png(image: np.ndarray, max_px: int = THUMBNAIL_PX) -> bytes:
    """Encode a cutout as a grey PNG, stretched by :func:`asinh_stretch`.

    Cutouts wider than ``max_px`` are area-averaged down by an integer factor first.
    Rows are flipped so that the image shows FITS-style (origin at the lower left).
    """
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    factor = int(np.ceil(max(values.shape) / max_px))
    if factor > 1:
        h, w = (values.shape[0] // factor) * factor, (values.shape[1] // factor) * factor
        values = values[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    grey = asinh_stretch(values)[::-1]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grey), mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@dataclass
class Thumbnail:
    """One gallery cutout."""

    cutout_id: int
    window_size: int
    curated: bool
    truth_class: str | None
    png: bytes


@dataclass
class Gallery:
    """Cutouts of one top-level cluster."""

    cluster: int
    kind: str  # "largest" or "smallest"
    rank: int
    pool_count: int
    curated_count: int
    thumbnails: list[Thumbnail]


def gallery_clusters(pool_counts: np.ndarray, n: int) -> list[tuple[str, int, int]]:
    """Return the ``n`` largest and ``n`` smallest non-empty clusters as ``(kind, rank, id)``.

    Ranks count from 1 among the non-empty clusters, largest first; with fewer than
    ``2 n`` non-empty clusters the two lists share them out without repeats.
    """
    nonempty = np.flatnonzero(pool_counts > 0)
    order = nonempty[np.lexsort((nonempty, -pool_counts[nonempty]))]
    n_large = min(n, len(order))
    n_small = min(n, len(order) - n_large)
    largest = [("largest", r + 1, int(c)) for r, c in enumerate(order[:n_large])]
    small_ranks = range(len(order) - n_small, len(order))
    smallest = [("smallest", r + 1, int(order[r])) for r in reversed(small_ranks)]
    return largest + smallest


def pick_gallery_rows(
    members: np.ndarray, selected: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Choose up to ``size`` cluster members: about half curated, the rest not.

    A plain random pick would seldom show a curated cutout of a large cluster (balanced
    sampling thins those out), so curated members fill up to half the gallery and
    others the rest; either side fills the other's unused places.

    Returns
    -------
    rows : numpy.ndarray of int64
        Chosen feature rows: curated ones first, each part sorted.
    curated : numpy.ndarray of bool
        Whether each chosen row is in the curated sample.
    """
    inside = np.isin(members, selected, assume_unique=True)
    cur, other = members[inside], members[~inside]
    n_cur = min(len(cur), max(size - len(other), (size + 1) // 2))
    n_other = min(len(other), size - n_cur)
    take_cur = np.sort(rng.choice(cur, n_cur, replace=False)) if n_cur else cur[:0]
    take_other = np.sort(rng.choice(other, n_other, replace=False)) if n_other else other[:0]
    rows = np.concatenate([take_cur, take_other]).astype(np.int64)
    return rows, np.arange(len(rows)) < n_cur


def build_galleries(
    run: SamplingRun,
    top_counts: LevelCounts,
    *,
    n_clusters: int,
    size: int,
    rng: np.random.Generator,
) -> list[Gallery]:
    """Read and encode the gallery cutouts of the largest and smallest top-level clusters."""
    labels = run.point_labels[run.top - 1]
    picks = []
    for kind, rank, cluster in gallery_clusters(top_counts.counts["pool"], n_clusters):
        members = _members(labels, cluster)
        rows, curated = pick_gallery_rows(members, run.selected, size, rng)
        picks.append((kind, rank, cluster, rows, curated))
    all_rows = np.unique(np.concatenate([p[3] for p in picks])) if picks else np.empty(0, np.int64)
    images, classes = _read_cutouts(run.merged_dir, all_rows)
    galleries = []
    for kind, rank, cluster, rows, curated in picks:
        thumbs = [
            Thumbnail(
                cutout_id=int(row),
                window_size=int(images[int(row)].shape[0]),
                curated=bool(flag),
                truth_class=classes.get(int(row)),
                png=thumbnail_png(images[int(row)]),
            )
            for row, flag in zip(rows, curated, strict=True)
        ]
        galleries.append(
            Gallery(
                cluster=cluster,
                kind=kind,
                rank=rank,
                pool_count=int(top_counts.counts["pool"][cluster]),
                curated_count=int(top_counts.counts["curated"][cluster]),
                thumbnails=thumbs,
            )
        )
    return galleries


def _members(labels: np.ndarray, cluster: int) -> np.ndarray:
    """Feature rows of one cluster, scanning the labels in chunks."""
    chunk = 1 << 22
    parts = [
        start + np.flatnonzero(np.asarray(labels[start : start + chunk]) == cluster)
        for start in range(0, len(labels), chunk)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def _read_cutouts(
    merged_dir: Path, rows: np.ndarray
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Pixels (and truth classes, with a catalogue) of some merged cutouts, by cutout ID."""
    from astrocurate.io.cutout_store import MOSAICS, CutoutReader
    from astrocurate.io.labels import truth_labels_for_manifest

    table = read_manifest_rows(merged_dir, rows, PIXEL_COLUMNS)
    mosaics_path = Path(merged_dir) / MOSAICS
    mosaics = pd.read_parquet(mosaics_path) if mosaics_path.is_file() else None
    reader = CutoutReader(table, Path(merged_dir), mosaics, max_open=8)
    try:
        images = {int(row): reader[i] for i, row in enumerate(rows)}
    finally:
        reader.close()
    labels = truth_labels_for_manifest(table) if len(table) else None
    classes = {} if labels is None else {int(r): str(c) for r, c in zip(rows, labels, strict=True)}
    return images, classes


# =========================================================================== feature map


@dataclass
class FeatureMap:
    """A 2-D projection of a subsample of the features.

    Attributes
    ----------
    method : str
        ``"PCA"`` or ``"UMAP"``.
    pool_xy : numpy.ndarray, shape (p, 2)
        Projected pool points (a uniform subsample of the pool).
    pool_labels : numpy.ndarray of int64, shape (p,)
        Their top-level clusters.
    curated_xy : numpy.ndarray, shape (c, 2)
        Projected curated points (a uniform subsample of the curated sample).
    explained : tuple of float or None
        PCA's explained variance ratio of the two axes.
    """

    method: str
    pool_xy: np.ndarray
    pool_labels: np.ndarray
    curated_xy: np.ndarray
    explained: tuple[float, float] | None


def feature_map(
    run: SamplingRun, *, max_points: int, projection: str, rng: np.random.Generator
) -> FeatureMap:
    """Project up to ``max_points`` pool points and ``max_points // 4`` curated points to 2-D.

    Only the subsampled rows of the memory-mapped feature matrix are read (sorted fancy
    indexing), so memory is bounded by ``max_points`` whatever the survey size.
    """
    features = load_features(run.features_dir, random_access=True)
    pool_rows = _subsample(run.input_indices, max_points, rng)
    curated_rows = _subsample(run.selected, max(1, max_points // 4), rng)
    rows, inverse = np.unique(np.concatenate([pool_rows, curated_rows]), return_inverse=True)
    X = np.asarray(features[rows], dtype=np.float32)  # noqa: N806
    X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)  # noqa: N806
    method, xy, explained = _project(X, projection, int(rng.integers(2**31)))
    labels = np.asarray(run.point_labels[run.top - 1][pool_rows], dtype=np.int64)
    return FeatureMap(
        method=method,
        pool_xy=xy[inverse[: len(pool_rows)]],
        pool_labels=labels,
        curated_xy=xy[inverse[len(pool_rows) :]],
        explained=explained,
    )


def _subsample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` of ``rows``, uniformly without replacement, sorted."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= limit:
        return rows
    return np.sort(rows[rng.choice(len(rows), limit, replace=False)])


def _umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def _check_projection(projection: str) -> None:
    """Refuse an unknown projection, or UMAP without the ``umap`` package."""
    if projection not in PROJECTIONS:
        raise InvalidArgumentError(f"projection: expected one of {PROJECTIONS}, got {projection!r}")
    if projection == "umap" and not _umap_available():
        raise InvalidArgumentError(
            "projection='umap' needs the umap-learn package (pip install umap-learn); "
            "use 'pca' or 'auto'"
        )


def _project(
    X: np.ndarray,  # noqa: N803
    projection: str,
    seed: int,
) -> tuple[str, np.ndarray, tuple[float, float] | None]:
    """Project rows to 2-D with UMAP (when asked for or available) or PCA."""
    _check_projection(projection)
    use_umap = projection == "umap" or (projection == "auto" and _umap_available())
    if use_umap and len(X) > 10:
        import umap

        xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(X)
        return "UMAP", np.asarray(xy, dtype=np.float64), None
    return ("PCA", *_pca(X, seed))


def _pca(X: np.ndarray, seed: int) -> tuple[np.ndarray, tuple[float, float] | None]:  # noqa: N803
    """First two principal components (zeros where the data has fewer dimensions)."""
    from sklearn.decomposition import PCA

    xy = np.zeros((len(X), 2))
    n_components = min(2, len(X), X.shape[1] if X.ndim == 2 else 0)
    if n_components < 1 or len(X) < 2:
        return xy, None
    solver = "randomized" if min(X.shape) > 50 else "full"
    pca = PCA(n_components=n_components, svd_solver=solver, random_state=seed)
    xy[:, :n_components] = pca.fit_transform(X)
    ratios = [float(r) for r in np.nan_to_num(pca.explained_variance_ratio_)] + [0.0]
    return xy, (ratios[0], ratios[1])


# =========================================================================== figures


@dataclass
class Figure:
    """A PNG figure of the report."""

    name: str
    title: str
    caption: str
    png: bytes


def _new_figure(width: float, height: float) -> Any:
    """Return a matplotlib figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=100)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def balance_figure(counts: LevelCounts, entropies: Mapping[str, float]) -> Figure:
    """Share of each cluster of a level in the pool, the random baseline and the curated sample."""
    pool = counts.counts["pool"]
    order = np.lexsort((np.arange(len(pool)), -pool))
    order = order[pool[order] > 0]
    fig = _new_figure(10, 3.8)
    ax = fig.subplots()
    sets = [s for s in SETS if s in counts.counts]
    _plot_shares(ax, {s: counts.counts[s][order] for s in sets}, [str(c) for c in order])
    ax.set_xlabel(
        f"level-{counts.level} cluster, largest in the pool first ({len(order)} non-empty)"
    )
    ax.set_title("normalised entropy: " + ", ".join(f"{s} {_fmt(entropies.get(s))}" for s in sets))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.16, top=0.9)
    return Figure(
        name=f"balance_level_{counts.level}.png",
        title=f"Level {counts.level} clusters: pool vs random vs curated",
        caption=(
            "Share of each cluster in each set (log scale). Balanced sampling flattens the "
            "pool's long tail: big clusters lose share, small ones gain; a uniform random "
            "sample follows the pool. Entropy 1 means evenly spread over the pool's clusters."
        ),
        png=_png(fig),
    )


def class_figure(shares: ClassShares) -> Figure:
    """Truth-class shares of the pool, the random baseline and the curated sample."""
    fig = _new_figure(10, 3.8)
    ax = fig.subplots()
    sets = [s for s in SETS if s in shares.shares]
    _plot_shares(ax, {s: shares.shares[s] for s in sets}, shares.names)
    ax.set_title(
        "class entropy: " + ", ".join(f"{s} {_fmt(shares.entropies.get(s))}" for s in sets)
    )
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.16, top=0.9)
    return Figure(
        name="balance_classes.png",
        title="Truth classes: pool vs random vs curated",
        caption="Share of each truth class (from the survey's truth catalogue) in each set.",
        png=_png(fig),
    )


def _plot_shares(ax: Any, counts: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
    """Draw grouped bars (up to 60 labelled categories) or step lines of the shares."""
    x = np.arange(len(names))
    width = 0.8 / max(len(counts), 1)
    for i, (name, values) in enumerate(counts.items()):
        share = np.asarray(values, dtype=np.float64) / max(float(np.sum(values)), 1e-300)
        share = np.where(share > 0, share, np.nan)  # log scale: leave zeros out
        if len(x) <= 60:
            offset = (i - (len(counts) - 1) / 2) * width
            ax.bar(x + offset, share, width=width, color=SET_COLOURS[name], label=name)
        else:
            ax.step(x, share, where="mid", color=SET_COLOURS[name], label=name)
    if len(x) <= 60:
        ax.set_xticks(x, list(names), rotation=90 if len(x) > 20 else 0, fontsize="small")
    ax.set_yscale("log")
    ax.set_ylabel("share of the set")
    ax.legend(loc="upper right", fontsize="small")


def _marker_size(n: int, scale: float, low: float, high: float) -> float:
    """Scatter marker area shrinking with the number of points drawn."""
    return float(np.clip(scale / np.sqrt(max(n, 1)), low, high))


def map_figure(fmap: FeatureMap, top: int) -> Figure:
    """Scatter of the projected pool coloured by top-level cluster, curated points ringed."""
    fig = _new_figure(8, 7)
    ax = fig.subplots()
    ax.scatter(
        fmap.pool_xy[:, 0],
        fmap.pool_xy[:, 1],
        c=fmap.pool_labels % 20,
        cmap="tab20",
        vmin=0,
        vmax=19,
        s=_marker_size(len(fmap.pool_xy), 240.0, 1.5, 20.0),
        alpha=0.7,
        linewidths=0,
        rasterized=True,
    )
    ax.scatter(
        fmap.curated_xy[:, 0],
        fmap.curated_xy[:, 1],
        facecolors="none",
        edgecolors="black",
        s=_marker_size(len(fmap.curated_xy), 400.0, 4.0, 24.0),
        linewidths=0.6,
        label=f"curated ({len(fmap.curated_xy)} drawn)",
    )
    axis = ["1", "2"]
    if fmap.explained is not None:
        axis = [f"1 ({fmap.explained[0]:.0%} of variance)", f"2 ({fmap.explained[1]:.0%})"]
    ax.set_xlabel(f"{fmap.method} {axis[0]}")
    ax.set_ylabel(f"{fmap.method} {axis[1]}")
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(f"{len(fmap.pool_xy)} pool points coloured by level-{top} cluster")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.08, top=0.94)
    return Figure(
        name="feature_map.png",
        title=f"Feature map ({fmap.method})",
        caption=(
            f"{fmap.method} of a uniform subsample of the pool's features, coloured by "
            f"level-{top} cluster (20 colours, repeating); black rings: curated cutouts."
        ),
        png=_png(fig),
    )


def cluster_size_figure(counts: LevelCounts) -> Figure:
    """Distribution of pool points per cluster of one level, and per-cluster sample counts."""
    pool = counts.counts["pool"]
    fig = _new_figure(10, 3.4)
    left, right = fig.subplots(1, 2)
    nonempty = pool[pool > 0]
    bins = np.unique(np.geomspace(1, max(2, int(pool.max()) + 1), 40).astype(int))
    left.hist(nonempty, bins=bins, color=SET_COLOURS["pool"])
    left.set_xscale("log")
    left.set_xlabel("pool points per cluster")
    left.set_ylabel("clusters")
    order = np.lexsort((np.arange(len(pool)), -pool))
    rank = np.arange(1, len(pool) + 1)
    for name in SETS:
        if name in counts.counts:
            values = counts.counts[name][order].astype(float)
            right.plot(
                rank, np.where(values > 0, values, np.nan), color=SET_COLOURS[name], label=name
            )
    right.set_yscale("log")
    right.set_xlabel("cluster rank (by pool size)")
    right.set_ylabel("points")
    right.legend(loc="upper right", fontsize="small")
    fig.suptitle(
        f"level {counts.level}: {len(pool)} clusters, {int((pool == 0).sum())} empty, "
        f"pool sizes {int(nonempty.min()) if len(nonempty) else 0}-{int(pool.max())}"
    )
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.16, top=0.86, wspace=0.25)
    return Figure(
        name=f"cluster_sizes_level_{counts.level}.png",
        title=f"Level {counts.level}: cluster sizes",
        caption="Left: how many clusters hold how many pool points. Right: points per "
        "cluster, clusters ranked by pool size, for each set.",
        png=_png(fig),
    )


# =========================================================================== HTML


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table.kv{border-collapse:collapse;font-size:.9em}
table.kv td{padding:.15em .8em .15em 0;vertical-align:top}
table.kv td:first-child{color:#666}
img.fig{max-width:100%;height:auto;display:block}
p.caption,p.note{color:#555;font-size:.9em}
div.gallery{display:flex;flex-wrap:wrap;gap:6px}
figure.thumb{margin:0;text-align:center;font-size:.7em;color:#444}
figure.thumb img{width:96px;height:96px;image-rendering:pixelated;
 border:3px solid #ccc;display:block}
figure.thumb.curated img{border-color:#ee6677}
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-images-broken", String(broken.length));
  document.body.setAttribute("data-images-ok", broken.length === 0 ? "true" : "false");
});
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f'<table class="kv">{cells}</table>'


def _header_html(
    run: SamplingRun, entropies: Mapping[str, float], classes: ClassShares | None
) -> str:
    """Title, run parameters and key numbers."""
    p = run.params
    parameters = [
        (k, p[k])
        for k in (
            "num_samples",
            "strategy",
            "level",
            "baseline",
            "seed",
            "n_levels",
            "pool_size",
            "clustering_run_id",
        )
        if k in p
    ]
    parameters += [("clusters per level", " / ".join(str(k) for k in run.n_clusters))]
    parameters += [(k, p[k]) for k in ("clustering_dir", "features_dir", "merged_dir") if k in p]
    largest = run.metrics.get(f"level_{run.top}_largest_share_curated")
    numbers = [
        ("pool points", f"{run.n_pool:,}"),
        ("curated cutouts", f"{len(run.selected):,}"),
        (
            f"level-{run.top} entropy pool / random / curated",
            " / ".join(_fmt(entropies.get(s)) for s in SETS),
        ),
    ]
    if largest is not None:
        numbers.append(
            (f"largest level-{run.top} cluster's share of the curated sample", _fmt(largest))
        )
    if classes is not None:
        numbers.append(
            (
                "class entropy pool / random / curated",
                " / ".join(_fmt(classes.entropies.get(s)) for s in SETS),
            )
        )
    return (
        f'<h1>Curated sample report</h1><p class="note">{html.escape(str(run.directory))}</p>'
        f"<h2>Key numbers</h2>{_kv_table(numbers)}<h2>Run parameters</h2>{_kv_table(parameters)}"
    )


def _figure_html(figure: Figure) -> str:
    return (
        f"<h3>{html.escape(figure.title)}</h3>"
        f'<img class="fig" src="{_data_uri(figure.png)}" alt="{html.escape(figure.title)}">'
        f'<p class="caption">{html.escape(figure.caption)} '
        f'(<a href="{html.escape(figure.name)}">{html.escape(figure.name)}</a>)</p>'
    )


def _gallery_html(gallery: Gallery, top: int) -> str:
    items = []
    for t in gallery.thumbnails:
        label = f"#{t.cutout_id} · {t.window_size}px" + (
            f" · {t.truth_class}" if t.truth_class else ""
        )
        css = "thumb curated" if t.curated else "thumb"
        alt = f"cutout {t.cutout_id}" + (" (curated)" if t.curated else "")
        items.append(
            f'<figure class="{css}"><img src="{_data_uri(t.png)}" alt="{html.escape(alt)}" '
            f'title="{html.escape(label)}"><figcaption>{html.escape(label)}</figcaption></figure>'
        )
    title = (
        f"{gallery.kind} #{gallery.rank}: level-{top} cluster {gallery.cluster} — "
        f"{gallery.pool_count:,} pool points, {gallery.curated_count:,} curated"
    )
    return f'<h3>{html.escape(title)}</h3><div class="gallery">{"".join(items)}</div>'


def render_html(
    run: SamplingRun,
    *,
    entropies: Mapping[str, float],
    classes: ClassShares | None,
    balance: Sequence[Figure],
    feature_map_figure: Figure,
    galleries: Sequence[Gallery],
    sizes: Sequence[Figure],
) -> str:
    """Assemble the page (every image embedded as a data URI)."""
    lo, hi = STRETCH_PERCENTILES
    stretch = (
        f"Each cutout is clipped to its own {lo:g}th-{hi:g}th percentile and shown as "
        f"asinh({ASINH_SOFTENING:g}·x)/asinh({ASINH_SOFTENING:g}), x in [0, 1], origin at the "
        f"lower left; cutouts over {THUMBNAIL_PX} px are area-averaged down. Red frames: in the "
        "curated sample; grey: not. Each gallery shows up to half curated cutouts, the rest "
        "drawn from the cluster's other members."
    )
    body = [
        _header_html(run, entropies, classes),
        "<h2>Balance</h2>",
        *(_figure_html(f) for f in balance),
        "<h2>Feature map</h2>",
        _figure_html(feature_map_figure),
        f"<h2>Galleries: largest and smallest level-{run.top} clusters</h2>",
        f'<p class="note">{html.escape(stretch)}</p>',
        *(_gallery_html(g, run.top) for g in galleries),
        "<h2>Cluster sizes per level</h2>",
        *(_figure_html(f) for f in sizes),
        f'<p class="note">astrocurate {html.escape(__version__)}</p>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>astrocurate: curated sample report</title>"
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# =========================================================================== entry point


def write_report(
    sampling_dir: Path | str,
    *,
    max_points: int = 20000,
    gallery_size: int = DEFAULT_GALLERY_SIZE,
    gallery_clusters: int = DEFAULT_GALLERY_CLUSTERS,
    projection: str = "auto",
    random_state: int = 0,
) -> Path:
    """Write the HTML report of a sampling run to ``<sampling_dir>/report/index.html``.

    Parameters
    ----------
    sampling_dir : path-like
        A ``curated_sampling`` run directory.
    max_points : int, default 20000
        Most pool points drawn on the feature map (a seeded uniform subsample; a quarter
        as many curated points are drawn on top).
    gallery_size : int, default 12
        Cutouts shown per gallery cluster.
    gallery_clusters : int, default 3
        Galleries for this many largest and this many smallest top-level clusters.
    projection : {"auto", "pca", "umap"}, default "auto"
        Feature map projection; ``auto`` uses UMAP when the ``umap`` package is
        importable, else PCA.
    random_state : int, default 0
        Seed of the subsamples (same inputs and seed: same report).

    Returns
    -------
    Path
        The ``index.html`` written (its PNG figures lie beside it).

    Raises
    ------
    InvalidArgumentError
        If a parameter is out of range.
    InvalidRunError
        If the directory is not a complete sampling run.
    """
    _check_positive(
        max_points=max_points, gallery_size=gallery_size, gallery_clusters=gallery_clusters
    )
    _check_projection(projection)
    run = load_sampling_run(sampling_dir)
    rng = np.random.default_rng(random_state)
    counts = level_counts(run)
    top = counts[run.top - 1]
    entropies = _entropies(top.counts, run.metrics, f"level_{run.top}_entropy")
    classes = class_shares(run)
    balance = [balance_figure(top, entropies)] + ([class_figure(classes)] if classes else [])
    fmap = map_figure(
        feature_map(run, max_points=max_points, projection=projection, rng=rng), run.top
    )
    galleries = build_galleries(run, top, n_clusters=gallery_clusters, size=gallery_size, rng=rng)
    sizes = [cluster_size_figure(c) for c in counts]
    page = render_html(
        run,
        entropies=entropies,
        classes=classes,
        balance=balance,
        feature_map_figure=fmap,
        galleries=galleries,
        sizes=sizes,
    )
    return _publish(run.directory, page, [*balance, fmap, *sizes])


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidArgumentError(f"{name}: expected a positive integer, got {value!r}")


#: Prefix of the temporary folders of :func:`_publish` (``.tmp-report-<pid>-...``): a
#: ``.tmp`` name, so that hashing and ``astrocurate verify`` skip them (they are no output).
_TMP_PREFIX = f".tmp-{REPORT_DIR}-"


def _publish(directory: Path, page: str, figures: Sequence[Figure]) -> Path:
    """Write the report under a temporary name in ``directory``, then rename it into place.

    The new report is complete under ``.tmp-report-<pid>-*`` before anything is renamed;
    then the old ``report/`` is renamed out of the way and the new one into place. A
    process killed at any point leaves ``report/`` either as the complete old (or new)
    report or absent, never partial; the folders it leaves behind are removed by the next
    call.
    """
    final = directory / REPORT_DIR
    _remove_leftovers(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=directory))
    old = None
    try:
        for figure in figures:
            (tmp / figure.name).write_bytes(figure.png)
        (tmp / INDEX).write_text(page, encoding="utf-8")
        os.chmod(tmp, 0o755)
        if final.exists():
            old = directory / f"{_TMP_PREFIX}{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():  # put the old report back
            with contextlib.suppress(OSError):
                os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final / INDEX


def _remove_leftovers(directory: Path) -> None:
    """Remove the temporary folders of report writers that are no longer running."""
    for path in directory.glob(f"{_TMP_PREFIX}*"):
        pid = path.name[len(_TMP_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (a foreign one counts as running)."""
    if pid == os.getpid():
        return False  # an earlier, interrupted call of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
