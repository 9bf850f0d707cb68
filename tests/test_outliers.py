"""Outlier scores in feature space (algorithms/outliers.py)."""

from __future__ import annotations

import numpy as np

from astrocurate.algorithms.outliers import outlier_scores, top_outliers


def test_points_far_from_the_crowd_score_highest():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 8)).astype(np.float32)
    features[[17, 1234]] += 12.0  # two far-away cutouts
    scores = outlier_scores(features, n_estimators=100)
    assert scores.shape == (2000,)
    assert set(top_outliers(scores, 0.001).tolist()) == {17, 1234}


def test_rows_select_the_scored_cutouts_and_the_seed_fixes_the_scores():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(500, 4))
    rows = np.arange(0, 500, 2)
    first = outlier_scores(features, rows, n_estimators=50, seed=3)
    assert first.shape == (250,)
    assert np.array_equal(first, outlier_scores(features, rows, n_estimators=50, seed=3))


def test_top_outliers_breaks_ties_by_position():
    assert top_outliers([0.5, 0.9, 0.9, 0.1], 0.5).tolist() == [1, 2]
