"""Outlier scores of cutouts in feature space, with scikit-learn's isolation forest.

An isolation forest (Liu et al. 2008) isolates a point by random axis-aligned splits; points
that few splits isolate are anomalous. It is fitted on a uniform subsample (its trees only
ever look at ``max_samples`` points each) and scores every row in blocks, so its cost grows
linearly with the pool: a survey of millions of cutouts is scored in minutes on a CPU.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from astrocurate.validation import check_int

#: Rows the forest is fitted on (a uniform subsample of larger pools).
FIT_ROWS = 100_000
#: Rows scored at a time.
SCORE_BLOCK = 65_536


def outlier_scores(
    features: ArrayLike,
    rows: ArrayLike | None = None,
    *,
    n_estimators: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """Return an outlier score per row: higher is more anomalous.

    Parameters
    ----------
    features : array_like, shape (n, d)
        Feature vectors (a memory map is read a block at a time).
    rows : array_like of int, optional
        Rows of ``features`` to score (e.g. the pool); default all.
    n_estimators : int
        Trees of the forest.
    seed : int
        Seed of the subsample and of the trees.

    Returns
    -------
    ndarray of float64, shape (len(rows),)
        The negated ``score_samples`` of :class:`sklearn.ensemble.IsolationForest`: about
        0.5 for ordinary points, towards 1 for outliers.
    """
    from sklearn.ensemble import IsolationForest

    check_int("n_estimators", n_estimators, 1)
    rows = np.arange(len(features)) if rows is None else np.asarray(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(rows, min(len(rows), FIT_ROWS), replace=False))
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed)
    forest.fit(np.asarray(features[fit_rows], dtype=np.float32))
    scores = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), SCORE_BLOCK):
        block = np.asarray(features[rows[start : start + SCORE_BLOCK]], dtype=np.float32)
        scores[start : start + SCORE_BLOCK] = -forest.score_samples(block)
    return scores


def top_outliers(scores: ArrayLike, share: float) -> np.ndarray:
    """Positions of the ``ceil(share * n)`` highest scores, highest first (ties: lower index)."""
    scores = np.asarray(scores, dtype=np.float64)
    count = int(np.ceil(share * len(scores)))
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:count]
