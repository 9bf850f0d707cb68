"""Report feature map: a bounded subsample of the features projected to 2-D (PCA or UMAP)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from astrocurate.errors import InvalidArgumentError
from astrocurate.stages.curated_sampling.report_data import SamplingRun
from astrocurate.stages.feature_extraction.outputs import load_features

__all__ = ["PROJECTIONS", "FeatureMap", "check_projection", "feature_map"]

PROJECTIONS = ("auto", "pca", "umap")


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
    """Whether the ``umap`` package (umap-learn) can be imported."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def check_projection(projection: str) -> None:
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
    check_projection(projection)
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
