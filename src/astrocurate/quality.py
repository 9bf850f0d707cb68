"""How well features separate known classes: a cross-validated kNN score.

Used to choose the offline default backbone and logged with every feature run
on a survey that has a truth catalogue (the demo survey does).
"""

from __future__ import annotations

import numpy as np


def knn_balanced_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    *,
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

    Returns
    -------
    float or None
        Balanced accuracy in [0, 1], or None with fewer than two usable classes.
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
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
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    predicted = cross_val_predict(model, x, y, cv=folds)
    return float(balanced_accuracy_score(y, predicted))
