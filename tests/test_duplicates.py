"""Semantic near-duplicates inside clusters (algorithms/duplicates.py)."""

from __future__ import annotations

import numpy as np
import pytest

from astrocurate.algorithms.duplicates import near_duplicates, pairs_within
from astrocurate.errors import InvalidArgumentError


def _brute_pairs(features, groups, threshold, subset):
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    count = 0
    for a_pos, a in enumerate(subset):
        for b in subset[a_pos + 1 :]:
            if groups[a] == groups[b] and unit[a] @ unit[b] >= threshold:
                count += 1
    return count


def test_copies_are_marked_as_duplicates_of_the_highest_priority_one():
    base = np.eye(4, dtype=np.float32)
    features = np.vstack([base[0], base[0] * 2, base[1], base[0] * 3])
    result = near_duplicates(features, [0, 0, 0, 0], 0.99, priority=[1.0, 5.0, 0.0, 2.0])
    assert result.duplicate_of.tolist() == [1, -1, -1, 1]
    assert result.kept.tolist() == [False, True, True, False]
    assert np.allclose(result.similarity[[0, 3]], 1.0) and np.isnan(result.similarity[1])
    assert result.n_duplicates == 2


def test_groups_are_compared_only_within_themselves():
    features = np.ones((4, 3), dtype=np.float32)
    result = near_duplicates(features, [0, 1, 0, 1], 0.9)
    assert result.duplicate_of.tolist() == [-1, -1, 0, 1]


def test_a_chain_keeps_its_ends_when_they_are_apart():
    angles = np.radians([0.0, 20.0, 40.0])  # cos 20 deg = 0.94, cos 40 deg = 0.77
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    result = near_duplicates(features, [0, 0, 0], 0.9, priority=[3.0, 2.0, 1.0])
    assert result.duplicate_of.tolist() == [-1, 0, -1]


@pytest.mark.parametrize("seed", [0, 1])
def test_no_two_kept_cutouts_of_a_group_are_near_duplicates(seed, monkeypatch):
    import astrocurate.algorithms.duplicates as duplicates

    monkeypatch.setattr(duplicates, "BLOCK_ROWS", 7)  # several blocks per group
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 8))
    features = (centres[rng.integers(0, 6, 300)] + rng.normal(scale=0.3, size=(300, 8))).astype(
        np.float32
    )
    groups = rng.integers(0, 3, 300)
    result = near_duplicates(features, groups, 0.95, priority=rng.random(300))
    kept = np.flatnonzero(result.kept)
    assert result.n_duplicates > 0
    assert _brute_pairs(features, groups, 0.95, kept) == 0
    assert pairs_within(features, groups, 0.95, kept) == 0
    everything = np.arange(300)
    assert pairs_within(features, groups, 0.95, everything) == _brute_pairs(
        features, groups, 0.95, everything
    )
    marked = np.flatnonzero(~result.kept)
    assert result.kept[result.duplicate_of[marked]].all()  # each names a kept cutout
    assert (groups[result.duplicate_of[marked]] == groups[marked]).all()


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.5, float("nan")])
def test_a_threshold_out_of_range_is_refused(threshold):
    with pytest.raises(InvalidArgumentError, match="--dedup-threshold"):
        near_duplicates(np.ones((2, 2)), [0, 0], threshold)


def test_a_shared_component_is_taken_out_by_the_center():
    rng = np.random.default_rng(0)
    features = 100.0 + rng.normal(size=(50, 6))  # every vector points the same way
    assert near_duplicates(features, np.zeros(50), 0.98).n_duplicates == 49
    centred = near_duplicates(features, np.zeros(50), 0.98, center=features.mean(axis=0))
    assert centred.n_duplicates == 0
    assert pairs_within(features, np.zeros(50), 0.98, np.arange(50), center=features.mean(0)) == 0


def test_pairs_at_the_threshold_are_decided_in_float64() -> None:
    """Near-threshold pairs follow the float64 cosine of the float32 unit rows, whatever
    the float32 product's rounding (which depends on how BLAS splits it)."""
    from astrocurate.algorithms.duplicates import near_duplicates, pairs_within

    rng = np.random.default_rng(7)
    threshold = 0.995
    base = rng.normal(size=(400, 64)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    noise = rng.normal(size=(400, 64)).astype(np.float32)
    noise -= (noise * base).sum(axis=1, keepdims=True) * base  # orthogonal to base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    angle = np.arccos(threshold + rng.uniform(-3e-7, 3e-7, size=400))[:, None]
    other = (np.cos(angle) * base + np.sin(angle) * noise).astype(np.float32)
    features = np.empty((800, 64), dtype=np.float32)
    features[0::2], features[1::2] = base, other
    groups = np.repeat(np.arange(400), 2)  # each pair alone in its group
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    exact = np.einsum("ij,ij->i", unit[0::2].astype(np.float64), unit[1::2].astype(np.float64))
    found = near_duplicates(features, groups, threshold)
    np.testing.assert_array_equal(
        found.duplicate_of[1::2] == np.arange(0, 800, 2), exact >= threshold
    )
    assert 0 < (exact >= threshold).sum() < 400  # both sides of the threshold are hit
    assert pairs_within(features, groups, threshold, np.arange(800)) == (exact >= threshold).sum()
