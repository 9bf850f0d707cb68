"""Probes and sky-grouped folds of the evaluation step (astrocurate.algorithms.probes)."""

from __future__ import annotations

import numpy as np
import pytest

from astrocurate.algorithms.probes import (
    cross_validate_probes,
    evaluate_probes,
    primary_strata,
    rarest_category,
    sky_folds,
)
from astrocurate.errors import InvalidArgumentError


def _clusters(n_per_class: int, n_classes: int, d: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d)) * 10
    classes = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[classes] + rng.normal(size=(classes.size, d))
    labels = np.eye(n_classes, dtype=bool)[classes]
    order = rng.permutation(classes.size)
    return features[order], labels[order]


def _sliding_windows(n_side: int = 12, step: float = 0.1, radius: float = 0.1):
    """A grid of windows at 50% overlap: each overlaps its neighbours."""
    dec, ra = np.meshgrid(np.arange(n_side) * step + 30.0, np.arange(n_side) * step + 150.0)
    return ra.ravel(), dec.ravel(), np.full(ra.size, radius)


# ----------------------------------------------------------------- probes


def test_separable_clusters_score_about_one():
    features, labels = _clusters(40, 3)
    categories = ["a", "b", "c"]
    scores = evaluate_probes(
        features[:90], labels[:90], features[90:], labels[90:], categories=categories, k=5
    )
    assert scores["knn_balanced_accuracy"] == pytest.approx(1.0)
    assert scores["linear_balanced_accuracy"] == pytest.approx(1.0)
    present = [c for i, c in enumerate(categories) if labels[90:, i].any()]
    assert {f"knn_recall_{c}" for c in present} <= set(scores)


def test_random_labels_score_about_chance():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(600, 16))
    labels = np.eye(3, dtype=bool)[rng.integers(0, 3, 600)]
    scores = evaluate_probes(
        features[:400], labels[:400], features[400:], labels[400:], categories="abc", k=15
    )
    assert abs(scores["knn_balanced_accuracy"] - 1 / 3) < 0.12
    assert abs(scores["linear_balanced_accuracy"] - 1 / 3) < 0.12


def test_multilabel_hand_computed():
    # k=1 on exact copies: each test row is predicted as its train twin's labels.
    train_x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    train_y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    test_x = train_x.copy()
    test_y = np.array([[1, 0], [1, 1], [1, 1], [0, 1]], dtype=bool)
    scores = evaluate_probes(train_x, train_y, test_x, test_y, categories=["a", "b"], k=1)
    # knn predicts train_y: a: TP=2 (rows 0, 2), FN=1 (row 1), TN=1 -> recall 2/3, TNR 1
    # b: TP=2 (rows 1, 2), FN=1 (row 3), FP=0, TN=1 (row 0) -> recall 2/3, TNR 1
    assert scores["knn_recall_a"] == pytest.approx(2 / 3)
    assert scores["knn_recall_b"] == pytest.approx(2 / 3)
    balanced_a = balanced_b = (2 / 3 + 1) / 2
    assert scores["knn_balanced_accuracy"] == pytest.approx((balanced_a + balanced_b) / 2)
    assert "linear_balanced_accuracy" in scores


def test_multilabel_category_without_train_positive_is_never_predicted():
    features, single = _clusters(20, 2, seed=3)
    labels = np.column_stack([single, np.zeros(len(single), bool)])
    labels[:, 0] |= labels[:, 1]
    labels[-1, 2] = True  # only test positive of "c"; label rows now multi-hot
    labels[-2, :2] = True
    scores = evaluate_probes(
        features[:30], labels[:30], features[30:], labels[30:], categories="abc", k=3
    )
    assert scores["knn_recall_c"] == 0.0
    assert scores["linear_recall_c"] == 0.0


def test_rare_class_with_one_example_does_not_crash():
    features, labels = _clusters(30, 2, seed=2)
    rare = np.zeros((1, 3), bool)
    rare[0, 2] = True
    features = np.vstack([features, features[:1] + 50])
    labels = np.vstack([np.column_stack([labels, np.zeros(len(labels), bool)]), rare])
    ra, dec = np.arange(len(labels)) * 1.0, np.zeros(len(labels))
    strata = primary_strata(labels, "abc")
    folds = sky_folds(ra, dec, np.full(len(labels), 0.05), strata, n_folds=5)
    scores = cross_validate_probes(features, labels, folds, categories="abc", k=50)
    assert scores["knn_recall_c"] == 0.0  # its only example is in the test fold
    assert scores["linear_balanced_accuracy"] > 0.6


def test_cross_validation_pools_predictions():
    features, labels = _clusters(30, 3, seed=4)
    folds = [(np.arange(0, 45), np.arange(45, 90)), (np.arange(45, 90), np.arange(0, 45))]
    scores = cross_validate_probes(features, labels, folds, categories="abc", k=5)
    assert scores["knn_balanced_accuracy"] == pytest.approx(1.0)
    with pytest.raises(InvalidArgumentError, match="disjoint"):
        cross_validate_probes(features, labels, [folds[0], folds[0]], categories="abc")


def test_strata_and_rarest_category():
    labels = np.array([[1, 1, 0], [1, 0, 1], [1, 0, 0], [0, 0, 0]], dtype=bool)
    assert primary_strata(labels, "abc").tolist() == [1, 2, 0, 3]
    assert rarest_category(labels, "abc") == "c"  # b and c tie: the later wins
    with pytest.raises(InvalidArgumentError, match="shape"):
        primary_strata(labels, "ab")


# ----------------------------------------------------------------- folds


def test_overlapping_windows_never_cross_train_and_test():
    ra, dec, radius = _sliding_windows()
    strata = np.arange(ra.size) % 3
    folds = sky_folds(ra, dec, radius, strata, n_folds=4, seed=7)
    tested = np.concatenate([test for _, test in folds])
    assert np.sort(tested).tolist() == list(range(ra.size))
    for train, test in folds:
        assert train.dtype == np.int64 and test.dtype == np.int64
        assert train.size > 0
        # Flat-sky separation is accurate at this scale.
        dra = (ra[train][:, None] - ra[test][None]) * np.cos(np.radians(dec[test]))[None]
        gap = np.hypot(dra, dec[train][:, None] - dec[test][None])
        assert (gap >= 2 * 0.1 * 0.999).all()


def test_folds_are_deterministic_for_a_seed():
    ra, dec, radius = _sliding_windows()
    strata = np.zeros(ra.size, int)
    first = sky_folds(ra, dec, radius, strata, seed=3)
    again = sky_folds(ra, dec, radius, strata, seed=3)
    assert all(
        (a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(first, again, strict=True)
    )


def test_fewer_groups_than_folds():
    ra = np.array([10.0, 10.0, 50.0, 50.0])
    dec = np.zeros(4)
    folds = sky_folds(ra, dec, np.full(4, 0.1), np.zeros(4, int), n_folds=5)
    assert len(folds) == 2
    with pytest.raises(InvalidArgumentError, match="sky cell"):
        sky_folds(ra[:2], dec[:2], np.full(2, 0.1), np.zeros(2, int))
    with pytest.raises(InvalidArgumentError, match="dec_deg"):
        sky_folds(ra, dec[:2], np.full(4, 0.1), np.zeros(4, int))


def test_windows_across_ra_zero_never_cross_train_and_test():
    ra = np.mod(np.arange(40) * 0.1 - 2.0, 360.0)  # 358.0 .. 359.9, 0.0 .. 1.9
    dec = np.zeros(ra.size)
    folds = sky_folds(ra, dec, np.full(ra.size, 0.1), np.zeros(ra.size, int), n_folds=3)
    for train, test in folds:
        gap = np.abs(((ra[train][:, None] - ra[test][None]) + 180.0) % 360.0 - 180.0)
        assert (gap >= 0.2 * 0.999).all()
