"""Frozen-encoder probes on labelled cutouts: sky-grouped folds, a kNN and a linear probe.

The evaluation step compares encoders by how well their frozen features separate a
few hundred hand-labelled cutouts. Two things make that comparison honest:

**Folds never share sky** (:func:`sky_folds`). Sliding windows overlap, so a test cutout
may have a train neighbour showing the same sources. The cutouts are grouped into sky
cells: rows of constant declination ``side`` degrees high, cut into cells ``side``
degrees wide in ``ra * cos(dec_row)`` (``dec_row`` the row's central declination), where
``side`` is :data:`CELL_FOOTPRINTS` times the largest footprint diameter. Whole cells go
to one test fold, assigned by :class:`~sklearn.model_selection.StratifiedGroupKFold` on
one stratum per cutout (:func:`primary_strata`). Cells alone cannot separate footprints
that straddle a cell border, so every train cutout whose footprint (a disc of
``radius_deg`` around its centre) overlaps a test footprint is then dropped from that
fold's train set (a :class:`~scipy.spatial.cKDTree` on unit vectors, chord distance).
Each cutout is tested exactly once.

**Metrics are computed once on pooled predictions** (:func:`cross_validate_probes`):
each fold predicts its test cutouts, and balanced accuracy and recalls are computed on
all predictions together, so that a class with a handful of examples counts each of
them once instead of giving a noisy (or undefined) score per fold.

Single-label data (every cutout exactly one category) get multiclass probes; otherwise
each category is a binary (one-vs-rest) problem, and ``*_balanced_accuracy`` is the mean
over categories of the binary balanced accuracy (see :func:`evaluate_probes`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from astrocurate.errors import InvalidArgumentError
from astrocurate.validation import check_int

__all__ = [
    "CELL_FOOTPRINTS",
    "cross_validate_probes",
    "evaluate_probes",
    "primary_strata",
    "rarest_category",
    "sky_folds",
]

#: Side of a sky cell (:func:`sky_folds`), in largest footprint diameters.
CELL_FOOTPRINTS = 4.0
#: Iterations allowed to the linear probe (lbfgs on standardised 512-d features).
_MAX_ITER = 5000

Fold = tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------- folds


def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _chord(angle_deg: np.ndarray | float) -> np.ndarray:
    """Chord length on the unit sphere of an angular separation in degrees."""
    return 2.0 * np.sin(np.radians(np.minimum(angle_deg, 180.0)) / 2.0)


def _sky_cells(ra_deg: np.ndarray, dec_deg: np.ndarray, side: float) -> np.ndarray:
    """Group id of each centre: cells of ``side`` degrees in (dec, ra * cos(dec_row))."""
    row = np.floor((dec_deg + 90.0) / side)
    dec_row = np.clip(-90.0 + (row + 0.5) * side, -90.0, 90.0)
    width = np.maximum(np.cos(np.radians(dec_row)), side / 360.0)
    column = np.floor(np.mod(ra_deg, 360.0) * width / side)
    _, groups = np.unique(np.column_stack([row, column]), axis=0, return_inverse=True)
    return groups.reshape(-1).astype(np.int64)


def _check_positions(
    ra_deg: np.ndarray, dec_deg: np.ndarray, radius_deg: np.ndarray, strata: np.ndarray
) -> tuple[np.ndarray, ...]:
    ra, dec, radius = (
        np.asarray(a, dtype=np.float64).reshape(-1) for a in (ra_deg, dec_deg, radius_deg)
    )
    strata = np.asarray(strata).reshape(-1)
    n = ra.size
    for name, array in (("dec_deg", dec), ("radius_deg", radius), ("strata", strata)):
        if array.size != n:
            raise InvalidArgumentError(f"{name} has {array.size} values, expected {n} like ra_deg")
    if not (np.isfinite(ra).all() and np.isfinite(dec).all() and np.isfinite(radius).all()):
        raise InvalidArgumentError("ra_deg, dec_deg and radius_deg must be finite (no NaN)")
    if (radius < 0).any() or (np.abs(dec) > 90).any():
        raise InvalidArgumentError("radius_deg must be >= 0 and dec_deg within [-90, 90]")
    return ra, dec, radius, strata


def _drop_overlapping(
    train: np.ndarray, test: np.ndarray, vectors: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """Return ``train`` without the cutouts whose footprint overlaps a test footprint."""
    if train.size == 0 or test.size == 0:
        return train
    tree = cKDTree(vectors[train])
    reach = _chord(radius[test] + radius[train].max())
    touched = np.zeros(train.size, dtype=bool)
    for t, candidates in zip(test, tree.query_ball_point(vectors[test], reach), strict=True):
        if not candidates:
            continue
        candidates = np.asarray(candidates)
        gap = np.linalg.norm(vectors[train[candidates]] - vectors[t], axis=1)
        angle = np.degrees(2.0 * np.arcsin(np.minimum(gap / 2.0, 1.0)))
        touched[candidates[angle < radius[t] + radius[train[candidates]]]] = True
    return train[~touched]


def sky_folds(
    ra_deg: np.ndarray,
    dec_deg: np.ndarray,
    radius_deg: np.ndarray,
    strata: np.ndarray,
    n_folds: int = 5,
    seed: int = 0,
) -> list[Fold]:
    """Split cutouts into folds whose train and test sets never share sky.

    Parameters
    ----------
    ra_deg, dec_deg : ndarray, shape (n,)
        ICRS centre of each cutout, degrees.
    radius_deg : ndarray, shape (n,)
        Radius of each cutout's footprint (half the window diagonal), degrees.
    strata : ndarray of int, shape (n,)
        One class id per cutout to balance over folds (:func:`primary_strata`).
    n_folds : int
        Folds wanted; reduced to the number of sky cells when there are fewer.
    seed : int
        Seed of the assignment of cells to folds.

    Returns
    -------
    list of (ndarray, ndarray)
        ``(train_idx, test_idx)`` int64 per fold. Every index is in exactly one test set;
        train sets exclude every cutout whose footprint overlaps a test footprint.

    Raises
    ------
    InvalidArgumentError
        Inconsistent inputs, or the cutouts all fall in one sky cell.
    """
    ra, dec, radius, strata = _check_positions(ra_deg, dec_deg, radius_deg, strata)
    n_folds = check_int("n_folds", n_folds, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    side = max(CELL_FOOTPRINTS * 2.0 * float(radius.max(initial=0.0)), 1e-6)
    groups = _sky_cells(ra, dec, side)
    n_groups = int(groups.max(initial=-1)) + 1
    if n_groups < 2:
        raise InvalidArgumentError(
            f"the {ra.size} labelled cutouts fall in {n_groups} sky cell of {side:.3g} deg:"
            " need at least 2 to keep train and test apart"
        )
    splitter = StratifiedGroupKFold(min(n_folds, n_groups), shuffle=True, random_state=seed)
    vectors = _unit_vectors(ra, dec)
    folds = []
    with warnings.catch_warnings():
        # Rare classes have fewer members than folds: expected with hand labels.
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(np.zeros(ra.size), strata, groups))
    for train, test in splits:
        train = _drop_overlapping(train.astype(np.int64), test.astype(np.int64), vectors, radius)
        folds.append((train, test.astype(np.int64)))
    return folds


# --------------------------------------------------------------------------- strata


def _check_labels(labels: np.ndarray, categories: Sequence[str], name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != len(categories):
        raise InvalidArgumentError(
            f"{name} has shape {labels.shape}, expected (n, {len(categories)}) for the categories"
        )
    if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
        raise InvalidArgumentError(f"{name} must be boolean (multi-hot)")
    return labels.astype(bool)


def primary_strata(labels: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """Return one stratum per cutout: the index of its rarest category.

    Rarity is the number of positives over all cutouts (ties: the later category). A
    cutout without any category gets the stratum ``len(categories)``.

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    labels = _check_labels(labels, categories, "labels")
    counts = labels.sum(axis=0)
    # Rank categories by rarity: rank 0 = fewest positives, ties broken by later index.
    order = np.lexsort((-np.arange(counts.size), counts))
    rank = np.empty(counts.size, dtype=np.int64)
    rank[order] = np.arange(counts.size)
    ranked = np.where(labels, rank, counts.size)
    best = ranked.min(axis=1, initial=counts.size)
    strata = np.full(labels.shape[0], len(categories), dtype=np.int64)
    has = best < counts.size
    strata[has] = order[best[has]]
    return strata


def rarest_category(labels: np.ndarray, categories: Sequence[str]) -> str:
    """Return the category with the fewest positives (ties: the later in ``categories``)."""
    labels = _check_labels(labels, categories, "labels")
    if not categories:
        raise InvalidArgumentError("categories is empty: expected at least one category")
    counts = labels.sum(axis=0)
    last = counts.size - 1 - int(np.argmin(counts[::-1]))
    return str(categories[last])


# --------------------------------------------------------------------------- probes


def _is_single_label(*labels: np.ndarray) -> bool:
    return all((y.sum(axis=1) == 1).all() for y in labels)


def _one_hot(classes: np.ndarray, n_categories: int) -> np.ndarray:
    out = np.zeros((classes.size, n_categories), dtype=bool)
    out[np.arange(classes.size), classes] = True
    return out


def _linear(seed: int) -> LogisticRegression:
    return LogisticRegression(class_weight="balanced", max_iter=_MAX_ITER, random_state=seed)


def _predict_single(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Multiclass kNN and linear predictions as one-hot (m, C) arrays."""
    classes = train_y.argmax(axis=1)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(classes)), metric="cosine")
    knn.fit(train_x, classes)
    if np.unique(classes).size < 2:  # one class in train: it is the only answer
        linear = DummyClassifier(strategy="most_frequent")
    else:
        linear = make_pipeline(StandardScaler(), _linear(seed))
    linear.fit(train_x, classes)
    c = train_y.shape[1]
    return _one_hot(knn.predict(test_x), c), _one_hot(linear.predict(test_x), c)


def _predict_multi(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest kNN (native multi-label) and per-category linear predictions, (m, C)."""
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), metric="cosine")
    knn_pred = knn.fit(train_x, train_y).predict(test_x).astype(bool)
    scaler = StandardScaler().fit(train_x)
    train_z, test_z = scaler.transform(train_x), scaler.transform(test_x)
    linear_pred = np.empty((len(test_x), train_y.shape[1]), dtype=bool)
    for c in range(train_y.shape[1]):
        column = train_y[:, c]
        if column.all() or not column.any():  # one value in train: predict it
            linear_pred[:, c] = column[0]
        else:
            linear_pred[:, c] = _linear(seed).fit(train_z, column).predict(test_z)
    return knn_pred, linear_pred


def _scores(
    truth: np.ndarray, predicted: np.ndarray, categories: Sequence[str], single: bool, probe: str
) -> dict[str, float]:
    """Balanced accuracy and per-category recall of one probe's predictions."""
    present = [c for c in range(truth.shape[1]) if truth[:, c].any()]
    scores = {}
    with warnings.catch_warnings():
        # Predicted classes absent from the truth: sklearn warns, the score ignores them.
        warnings.simplefilter("ignore", UserWarning)
        if single:
            balanced = balanced_accuracy_score(truth.argmax(axis=1), predicted.argmax(axis=1))
        else:
            balanced = np.mean(
                [balanced_accuracy_score(truth[:, c], predicted[:, c]) for c in present]
            )
    scores[f"{probe}_balanced_accuracy"] = float(balanced)
    for c in present:
        recall = recall_score(truth[:, c], predicted[:, c], zero_division=0.0)
        scores[f"{probe}_recall_{categories[c]}"] = float(recall)
    return scores


def _predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, single: bool, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if len(train_x) == 0:
        raise InvalidArgumentError("a fold has no train cutout left: label cutouts in more sky")
    predict = _predict_single if single else _predict_multi
    return predict(np.asarray(train_x, dtype=np.float64), train_y, test_x, k, seed)


def _all_scores(
    truth: np.ndarray,
    knn: np.ndarray,
    linear: np.ndarray,
    categories: Sequence[str],
    single: bool,
) -> dict[str, float]:
    if not truth.any():
        raise InvalidArgumentError("no test cutout has a category: nothing to score")
    return {
        **_scores(truth, knn, categories, single, "knn"),
        **_scores(truth, linear, categories, single, "linear"),
    }


def evaluate_probes(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    categories: Sequence[str],
    k: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """Fit a kNN and a linear probe on train features and score them on test features.

    **Single-label** (every train and test row has exactly one category): a multiclass
    kNN (cosine distance, majority vote of the ``min(k, n_train)`` nearest) and a
    multinomial logistic regression (``class_weight='balanced'``) on standardised
    features. ``*_balanced_accuracy`` is the mean recall over the classes present in the
    test set.

    **Multi-label** (otherwise): each category is a binary problem. The kNN votes per
    category (the fraction of neighbours with it, > 1/2 wins); the linear probe is one
    logistic regression per category. ``*_balanced_accuracy`` is the mean, over the
    categories with at least one test positive, of the binary balanced accuracy
    ``(TPR + TNR) / 2`` (``TPR`` alone when every test row has the category).

    Both: ``*_recall_<category>`` for each category with test positives (absent ones
    have no key). A category without train positives is never predicted (recall 0).

    Parameters
    ----------
    train_features, test_features : ndarray, shape (n, d) and (m, d)
        Frozen-encoder features.
    train_labels, test_labels : ndarray of bool, shape (n, C) and (m, C)
        Multi-hot categories.
    categories : sequence of str
        Name of each label column.
    k : int
        Neighbours of the kNN probe.
    seed : int
        Seed of the linear probe.

    Returns
    -------
    dict of str to float
        ``knn_balanced_accuracy``, ``linear_balanced_accuracy``, ``knn_recall_<c>``,
        ``linear_recall_<c>``.
    """
    k = check_int("k", k, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    train_y = _check_labels(train_labels, categories, "train_labels")
    test_y = _check_labels(test_labels, categories, "test_labels")
    train_x, test_x = (
        _check_features(train_features, train_y),
        _check_features(test_features, test_y),
    )
    single = _is_single_label(train_y, test_y)
    knn, linear = _predict(train_x, train_y, test_x, single, k, seed)
    return _all_scores(test_y, knn, linear, categories, single)


def _check_features(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(labels):
        raise InvalidArgumentError(
            f"features have shape {features.shape}, expected ({len(labels)}, d) like the labels"
        )
    if not np.isfinite(features).all():
        raise InvalidArgumentError("features must be finite (no NaN or inf)")
    return features


def cross_validate_probes(
    features: np.ndarray,
    labels: np.ndarray,
    folds: Sequence[Fold],
    *,
    categories: Sequence[str],
    k: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """Score both probes over cross-validation folds, on pooled test predictions.

    Each fold fits the probes on its train cutouts and predicts its test cutouts; the
    metrics of :func:`evaluate_probes` are then computed once on all test predictions
    together (pooling), so rare categories are scored on all their examples. The data
    are single-label when every labelled cutout has exactly one category.

    Parameters
    ----------
    features : ndarray, shape (n, d)
    labels : ndarray of bool, shape (n, C)
    folds : sequence of (ndarray, ndarray)
        ``(train_idx, test_idx)`` per fold (:func:`sky_folds`); test sets must be disjoint.
    categories : sequence of str
    k, seed : int
        As in :func:`evaluate_probes`.

    Returns
    -------
    dict of str to float
        The keys of :func:`evaluate_probes`.
    """
    k = check_int("k", k, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    y = _check_labels(labels, categories, "labels")
    x = _check_features(features, y)
    single = _is_single_label(y)
    tested = np.concatenate([np.asarray(test, dtype=np.int64) for _, test in folds] or [[]])
    tested = tested.astype(np.int64)
    if tested.size == 0 or np.unique(tested).size != tested.size:
        raise InvalidArgumentError("folds: expected non-empty, disjoint test sets")
    knn, linear = (
        np.zeros((tested.size, y.shape[1]), bool),
        np.zeros((tested.size, y.shape[1]), bool),
    )
    start = 0
    for train, test in folds:
        train, stop = np.asarray(train, dtype=np.int64), start + len(test)
        knn[start:stop], linear[start:stop] = _predict(x[train], y[train], x[test], single, k, seed)
        start = stop
    return _all_scores(y[tested], knn, linear, categories, single)
