"""How well features separate known classes: a cross-validated kNN score.

Used to choose the offline default backbone and logged with every feature run
on a survey that has a truth catalogue (the demo survey does).

Cutouts overlap (50 % between neighbouring windows, and a 64-px window lies inside the
128-px ones on the same sky), so near-copies of a test cutout sit in the training folds of
a plain shuffled split and a kNN classifier scores high by recognising them. The folds
are therefore drawn by groups of sky (:func:`sky_patches`): no patch has cutouts in two
folds.
"""

from __future__ import annotations

import numpy as np

#: Side of a sky patch, in widths of the largest window.
PATCH_WINDOWS = 4


def sky_patches(
    ra: np.ndarray,
    dec: np.ndarray,
    mosaic: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    window_size: np.ndarray,
    pixel_scale_arcsec: np.ndarray,
    patch_windows: int = PATCH_WINDOWS,
) -> np.ndarray:
    """Return the sky patch of each cutout: the square cell that holds its centre.

    The cells are ``patch_windows`` times the largest window wide. With sky positions
    for every cutout they tile the sky (rows of constant declination, their width in
    right ascension scaled by ``cos(dec)``), so the overlap of neighbouring mosaics
    falls in one patch; otherwise they tile each mosaic's pixels.

    Parameters
    ----------
    ra, dec : ndarray, shape (n,)
        Sky centre of each cutout in degrees (NaN without a celestial WCS).
    mosaic : ndarray, shape (n,)
        Mosaic of each cutout (any hashable values).
    x0, y0, window_size : ndarray, shape (n,)
        Pixel box of each cutout.
    pixel_scale_arcsec : ndarray, shape (n,)
        Pixel scale of each cutout's mosaic.
    patch_windows : int
        Patch side in widths of the largest window (at least 1).

    Returns
    -------
    ndarray of int64, shape (n,)
        Patch index of each cutout (0 to the number of patches - 1).
    """
    if patch_windows < 1:
        raise ValueError(f"patch_windows={patch_windows} must be >= 1")
    ra, dec = np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)
    window = np.asarray(window_size, dtype=np.float64)
    scale = np.asarray(pixel_scale_arcsec, dtype=np.float64)
    if len(ra) and np.isfinite(ra).all() and np.isfinite(dec).all() and np.isfinite(scale).all():
        side = patch_windows * float(np.max(window * scale)) / 3600.0
        band = np.floor(dec / side)
        shrink = np.cos(np.radians(np.clip((band + 0.5) * side, -89.0, 89.0)))
        cells = np.stack([band, np.floor(ra * shrink / side)], axis=1)
        _, patch = np.unique(cells, axis=0, return_inverse=True)
        return patch.reshape(-1).astype(np.int64)
    side = patch_windows * float(np.max(window)) if len(window) else 1.0
    x = np.floor((np.asarray(x0) + window / 2) / side)
    y = np.floor((np.asarray(y0) + window / 2) / side)
    _, mosaic_index = np.unique(np.asarray(mosaic).astype(str), return_inverse=True)
    cells = np.stack([mosaic_index.reshape(-1), x, y], axis=1)
    _, patch = np.unique(cells, axis=0, return_inverse=True)
    return patch.reshape(-1).astype(np.int64)


def manifest_sky_patches(manifest, patch_windows: int = PATCH_WINDOWS) -> np.ndarray:
    """Return :func:`sky_patches` of a cutout manifest (a DataFrame of the cutout step)."""
    return sky_patches(
        manifest["ra"].to_numpy(),
        manifest["dec"].to_numpy(),
        manifest["mosaic_path"].to_numpy(),
        manifest["x0"].to_numpy(),
        manifest["y0"].to_numpy(),
        manifest["window_size"].to_numpy(),
        manifest["pixel_scale_arcsec"].to_numpy(),
        patch_windows,
    )


def knn_balanced_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_neighbors: int = 10,
    n_folds: int = 5,
    max_samples: int = 20000,
    random_state: int = 0,
) -> float | None:
    """Return the cross-validated balanced accuracy of a kNN classifier on the features.

    Features are standardised; classes with fewer members than ``n_folds`` are
    left out; at most ``max_samples`` rows are used (seeded random subset).

    Parameters
    ----------
    features : ndarray, shape (n, d)
    labels : ndarray, shape (n,)
        Class of each row.
    groups : ndarray, shape (n,), optional
        Group of each row (:func:`sky_patches`): the folds never split a group
        (``StratifiedGroupKFold``). Without it the folds are shuffled rows
        (``StratifiedKFold``), which overlapping cutouts make leak between folds.
    n_neighbors, n_folds, max_samples, random_state : int
        The classifier's neighbours, the folds, the row cap and the seed.

    Returns
    -------
    float or None
        Balanced accuracy in [0, 1], or None with fewer than two usable classes (or,
        with ``groups``, fewer than two groups or a training fold smaller than
        ``n_neighbors``; with fewer groups than ``n_folds``, one fold per group).
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    rng = np.random.default_rng(random_state)
    rows = np.arange(len(labels))
    if len(rows) > max_samples:
        rows = np.sort(rng.choice(rows, max_samples, replace=False))
    names, counts = np.unique(labels[rows], return_counts=True)
    usable = np.isin(labels[rows], names[counts >= n_folds])
    rows = rows[usable]
    if len(np.unique(labels[rows])) < 2:
        return None
    x = np.nan_to_num(np.asarray(features[rows], dtype=np.float64))
    y = labels[rows]
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=n_neighbors))
    if groups is None:
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=random_state)
        predicted = cross_val_predict(model, x, y, cv=folds)
    else:
        group = np.asarray(groups)[rows]
        n_groups = len(np.unique(group))
        if n_groups < 2:
            return None
        splits = min(n_folds, n_groups)  # a small survey: one fold per patch
        folds = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=random_state)
        pairs = list(folds.split(x, y, group))
        if min(len(train) for train, _ in pairs) < n_neighbors:
            return None  # one patch holds nearly every row: nothing to train on
        predicted = cross_val_predict(model, x, y, cv=pairs)
    return float(balanced_accuracy_score(y, predicted))
