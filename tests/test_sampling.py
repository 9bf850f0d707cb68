"""Tests of astrocurate.algorithms.sampling: budget splitting, balanced and random samples,
metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from astrocurate.algorithms.sampling import (
    _distance_order,
    _group_stably,
    aligned_counts,
    balanced_sample,
    enrichment,
    largest_share,
    normalized_entropy,
    random_sample,
    split_budget,
)
from astrocurate.errors import InvalidArgumentError

pytestmark = pytest.mark.filterwarnings("error")


def points_from_sizes(leaf_sizes, leaf_parents_per_level, seed=0):
    """Labels per level for points grouped in leaves of the given sizes, points shuffled.

    ``leaf_parents_per_level[j]`` maps each level-j cluster to its level-(j+1) cluster.
    """
    leaves = np.repeat(np.arange(len(leaf_sizes)), leaf_sizes)
    leaves = leaves[np.random.default_rng(seed).permutation(leaves.size)]
    levels = [leaves]
    for parents in leaf_parents_per_level:
        levels.append(np.asarray(parents)[levels[-1]])
    return levels


def per_cluster(labels, selected, k):
    return np.bincount(labels[selected], minlength=k).tolist()


# -- split_budget -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "budget", "expected"),
    [
        ([4, 2, 7], 13, [4, 2, 7]),  # exactly everything
        ([4, 2, 7], 100, [4, 2, 7]),  # more than everything
        ([10, 3, 1], 9, [5, 3, 1]),  # t = 5: 5 + 3 + 1 = 9; t = 6 would give 10
        ([10, 3, 1], 7, [3, 3, 1]),  # t = 3
        ([10, 3, 1], 5, [2, 2, 1]),  # t = 2
        ([1, 1, 50, 50], 40, [1, 1, 19, 19]),  # small clusters below their even share of 10
        ([6, 6, 6, 6], 12, [3, 3, 3, 3]),  # even split, no remainder
        ([5, 0, 5], 4, [2, 0, 2]),  # an empty cluster
        ([3, 3], 0, [0, 0]),  # nothing to give
        ([], 5, []),
    ],
    ids=[
        "all-fit-exact",
        "all-fit-more",
        "t5",
        "t3",
        "t2",
        "small-below-share",
        "even",
        "empty-cluster",
        "budget-0",
        "no-clusters",
    ],
)
def test_split_budget_by_hand(sizes, budget, expected):
    assert split_budget(sizes, budget, rng=0).tolist() == expected


def test_split_budget_remainder_goes_to_random_clusters_larger_than_t():
    # [6, 6, 6, 2], 13: the 2 is taken whole, t = (13 - 2) // 3 = 3, 3 * 3 + 2 = 11,
    # remainder 2 goes as +1 to two of the three clusters of size 6.
    seen = set()
    for seed in range(60):
        allocation = split_budget([6, 6, 6, 2], 13, rng=seed).tolist()
        assert sum(allocation) == 13
        assert allocation[3] == 2
        assert sorted(allocation[:3]) == [3, 4, 4]
        seen.add(tuple(allocation))
    assert seen == {(4, 4, 3, 2), (4, 3, 4, 2), (3, 4, 4, 2)}


def test_split_budget_remainder_never_to_clusters_at_most_t():
    # [10, 3, 1], 6: the 1 is whole, t = (6 - 1) // 2 = 2, remainder 1 goes to the 10 or
    # the 3 (both > t), never to the 1.
    seen = {tuple(split_budget([10, 3, 1], 6, rng=seed).tolist()) for seed in range(40)}
    assert seen == {(3, 2, 1), (2, 3, 1)}


def test_split_budget_remainder_is_roughly_uniform():
    hits = np.zeros(5)
    for seed in range(2000):
        hits += split_budget([9, 9, 9, 9, 9], 12, rng=seed) - 2  # t = 2, remainder 2
    shares = hits / hits.sum()
    assert np.allclose(shares, 0.2, atol=0.03)


def test_split_budget_is_seeded():
    sizes = np.arange(1, 200)
    first = split_budget(sizes, 1001, rng=5)
    assert np.array_equal(first, split_budget(sizes, 1001, rng=5))
    assert np.array_equal(first, split_budget(sizes, 1001, rng=np.random.default_rng(5)))


def brute_force_t(sizes, budget):
    t = 0
    while np.minimum(t + 1, sizes).sum() <= budget and t < sizes.max():
        t += 1
    return t


@pytest.mark.parametrize("seed", range(6), ids=lambda s: f"seed{s}")
def test_split_budget_matches_the_rule_on_random_sizes(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, size=rng.integers(1, 30))
    for budget in [0, 1, 7, int(sizes.sum()) // 2, int(sizes.sum()) - 1, int(sizes.sum())]:
        budget = max(budget, 0)
        allocation = split_budget(sizes, budget, rng=seed)
        assert allocation.sum() == min(budget, sizes.sum())
        assert (allocation <= sizes).all()
        if sizes.sum() > budget:
            t = brute_force_t(sizes, budget)
            extra = allocation - np.minimum(t, sizes)
            assert set(extra.tolist()) <= {0, 1}
            assert (extra[sizes <= t] == 0).all()


@pytest.mark.parametrize(
    ("sizes", "budget", "match"),
    [
        ([3, -1], 2, "sizes must be non-negative"),
        ([1.5, 2.0], 2, "sizes must hold integers"),
        ([[1, 2]], 2, "sizes must be 1-D"),
        ([1, 2], -1, r"budget=-1 must be >= 0"),
        ([1, 2], 2.0, r"budget=2.0 must be an integer"),
    ],
    ids=["negative-size", "float-sizes", "2d-sizes", "negative-budget", "float-budget"],
)
def test_split_budget_rejects(sizes, budget, match):
    with pytest.raises(InvalidArgumentError, match=match):
        split_budget(sizes, budget)


# -- balanced_sample on hand-built trees ---------------------------------------------------

# Two levels: leaves 0, 1, 2 (sizes 8, 1, 3) in top cluster A = 0 (12 points),
# leaves 3, 4 (sizes 2, 2) in top cluster B = 1 (4 points); n = 16.
TWO_LEVELS = points_from_sizes([8, 1, 3, 2, 2], [[0, 0, 0, 1, 1]], seed=1)

# Three levels: leaves L0..L6 (sizes 10, 2, 1, 1, 9, 20, 1); mids M0 = {L0, L1} (12),
# M1 = {L2} (1), M2 = {L3, L4} (10), M3 = {L5, L6} (21); roots R0 = {M0, M1} (13),
# R1 = {M2, M3} (31); n = 44.
THREE_LEVELS = points_from_sizes(
    [10, 2, 1, 1, 9, 20, 1], [[0, 0, 1, 2, 2, 3, 3], [0, 0, 1, 1]], seed=2
)


@pytest.mark.parametrize(
    ("levels", "budget", "level", "expected_leaves"),
    [
        # top [12, 4], 9: B whole (4), t = 5 for A; A's leaves [8, 1, 3], 5: the 1 whole,
        # t = (5 - 1) // 2 = 2 -> [2, 1, 2].
        (TWO_LEVELS, 9, None, [2, 1, 2, 2, 2]),
        # roots [13, 31], 12: t = 6 each. R0: [M0 12, M1 1], 6 -> M1 whole, M0 5.
        # R1: [M2 10, M3 21], 6 -> 3 and 3. M0: [10, 2], 5 -> [3, 2]. M1: [1].
        # M2: [1, 9], 3 -> [1, 2]. M3: [20, 1], 3 -> [2, 1].
        (THREE_LEVELS, 12, None, [3, 2, 1, 1, 2, 2, 1]),
        # From level 1: mids [12, 1, 10, 21], 13: M1 whole, t = (13 - 1) // 3 = 4.
        # M0: [10, 2], 4 -> [2, 2]; M2: [1, 9], 4 -> [1, 3]; M3: [20, 1], 4 -> [3, 1].
        (THREE_LEVELS, 13, 1, [2, 2, 1, 1, 3, 3, 1]),
        # From level 0: leaves sorted [1, 1, 1, 2, 9, 10, 20], 14: four whole (5 points),
        # t = (14 - 5) // 3 = 3 -> [3, 2, 1, 1, 3, 3, 1].
        (THREE_LEVELS, 14, 0, [3, 2, 1, 1, 3, 3, 1]),
    ],
    ids=["2lvl-b9", "3lvl-b12", "3lvl-from-level1-b13", "3lvl-from-level0-b14"],
)
@pytest.mark.parametrize("strategy", ["r", "c", "f"])
def test_balanced_sample_allocations_by_hand(levels, budget, level, expected_leaves, strategy):
    distances = np.random.default_rng(3).random(levels[0].size)
    for seed in range(5):
        selected = balanced_sample(
            levels, budget, strategy=strategy, distances=distances, level=level, random_state=seed
        )
        assert selected.size == budget
        assert np.array_equal(selected, np.unique(selected))
        assert per_cluster(levels[0], selected, len(expected_leaves)) == expected_leaves


def test_balanced_sample_top_and_leaf_allocations_with_remainder():
    # TWO_LEVELS, 10: top [12, 4] -> B whole, A gets 6; A's leaves [8, 1, 3], 6: the 1
    # whole, t = 2, remainder 1 goes to leaf 0 or leaf 2.
    seen = set()
    for seed in range(40):
        selected = balanced_sample(TWO_LEVELS, 10, random_state=seed)
        assert per_cluster(TWO_LEVELS[1], selected, 2) == [6, 4]
        seen.add(tuple(per_cluster(TWO_LEVELS[0], selected, 5)))
    assert seen == {(3, 1, 2, 2, 2), (2, 1, 3, 2, 2)}


def test_balanced_sample_top_remainder_3_levels():
    # THREE_LEVELS, 13: roots [13, 31] -> t = 6, remainder 1 to either root.
    seen = set()
    for seed in range(40):
        selected = balanced_sample(THREE_LEVELS, 13, random_state=seed)
        assert selected.size == 13
        seen.add(tuple(per_cluster(THREE_LEVELS[2], selected, 2)))
    assert seen == {(7, 6), (6, 7)}


@pytest.mark.parametrize("budget", [1, 2, 5, 17, 43, 44, 45, 1000], ids=lambda b: f"b{b}")
@pytest.mark.parametrize("level", [None, 1, 0], ids=["top", "level1", "level0"])
def test_balanced_sample_size_and_uniqueness(budget, level):
    selected = balanced_sample(THREE_LEVELS, budget, level=level, random_state=budget)
    n = THREE_LEVELS[0].size
    assert selected.dtype == np.int64
    assert selected.size == min(budget, n)
    assert np.array_equal(selected, np.unique(selected))
    assert selected.min() >= 0
    assert selected.max() < n


def test_balanced_sample_budget_above_n_gives_all_points():
    n = THREE_LEVELS[0].size
    assert balanced_sample(THREE_LEVELS, n + 10).tolist() == list(range(n))
    assert balanced_sample(THREE_LEVELS, n).tolist() == list(range(n))


def test_balanced_sample_is_deterministic_by_seed():
    levels = points_from_sizes(np.arange(1, 41), [np.arange(40) // 7], seed=4)
    first = balanced_sample(levels, 100, random_state=11)
    assert np.array_equal(first, balanced_sample(levels, 100, random_state=11))
    assert not np.array_equal(first, balanced_sample(levels, 100, random_state=12))


def test_balanced_sample_random_strategy_reaches_every_point():
    # One leaf of 6 points, budget 2: over seeds every point gets picked.
    seen = set()
    for seed in range(60):
        seen.update(balanced_sample([np.zeros(6, dtype=int)], 2, random_state=seed).tolist())
    assert seen == set(range(6))


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("c", [1, 4, 6, 7]), ("f", [0, 3, 5, 9])],
    ids=["closest", "farthest"],
)
def test_balanced_sample_strategies_pick_by_distance(strategy, expected):
    # Leaf 0: points 0-4, leaf 1: points 5-9; budget 4 -> 2 from each leaf.
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    distances = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 7.0, 1.0, 2.0, 3.0, 4.0])
    selected = balanced_sample([labels], 4, strategy=strategy, distances=distances)
    assert selected.tolist() == expected


def test_balanced_sample_distance_ties_go_to_lower_index():
    labels = np.zeros(5, dtype=int)
    distances = np.array([1.0, 0.5, 0.5, 0.5, 2.0])
    assert balanced_sample([labels], 2, strategy="c", distances=distances).tolist() == [1, 2]
    assert balanced_sample([labels], 2, strategy="f", distances=distances).tolist() == [0, 4]


def test_balanced_sample_accepts_gaps_and_large_label_values():
    leaves = np.array([5, 5, 5, 5, 9, 9, 2])  # labels with gaps
    tops = np.array([10**12, 10**12, 10**12, 10**12, 3, 3, 3])  # labels far beyond n
    selected = balanced_sample([leaves, tops], 4, random_state=0)
    # tops [4, 3], 4 -> 2 each; top 3 holds leaves 9 (2 points) and 2 (1 point) -> [1, 1].
    assert np.bincount(leaves[selected], minlength=10)[[5, 9, 2]].tolist() == [2, 1, 1]


def test_balanced_sample_ignores_levels_above_level():
    leaves = np.array([0, 0, 1, 1])
    broken_top = np.array([0, 1, 0, 1])  # does not nest, but level=0 ignores it
    assert balanced_sample([leaves, broken_top], 2, level=0, random_state=0).size == 2
    with pytest.raises(InvalidArgumentError, match="does not nest"):
        balanced_sample([leaves, broken_top], 2)


# -- refusals -----------------------------------------------------------------------------

LEAVES = np.array([0, 0, 1, 1, 2])
TOPS = np.array([0, 0, 0, 1, 1])  # leaf 1 lies in tops 0 and 1


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([LEAVES], 0), {}, r"budget=0 must be >= 1"),
        (([LEAVES], -3), {}, r"budget=-3 must be >= 1"),
        (([LEAVES], 2.5), {}, r"budget=2.5 must be an integer"),
        (([LEAVES], True), {}, r"budget=True must be an integer"),
        (([LEAVES], 2), {"strategy": "x"}, r"strategy='x' is not valid; use one of 'r'"),
        (([LEAVES], 2), {"strategy": "c"}, r"strategy='c' needs distances"),
        (([LEAVES], 2), {"strategy": "f"}, r"strategy='f' needs distances"),
        (([LEAVES], 2), {"strategy": "c", "distances": [1.0]}, r"distances must have shape"),
        (
            ([LEAVES], 2),
            {"strategy": "c", "distances": [1.0, np.nan, 0, 0, 0]},
            "distances must be finite",
        ),
        (([LEAVES, TOPS[:4]], 2), {}, r"point_labels_per_level\[1\] has 4 labels"),
        (([LEAVES, TOPS], 2), {}, "does not nest: level-0 cluster 1"),
        (([LEAVES, LEAVES], 2), {"level": 2}, r"level=2 is out of range: there are 2 levels"),
        (([LEAVES], 2), {"level": -1}, r"level=-1 is out of range"),
        (([LEAVES], 2), {"level": 0.5}, r"level=0.5 must be None or an integer"),
        (([], 2), {}, "point_labels_per_level is empty"),
        ((LEAVES, 2), {}, "got a single 1-D array"),
        (([LEAVES.astype(float)], 2), {}, r"point_labels_per_level\[0\] must hold integers"),
        (([LEAVES - 1], 2), {}, r"point_labels_per_level\[0\] must be non-negative"),
        (([LEAVES], 2), {"random_state": "seed"}, "random_state='seed' must be None"),
    ],
    ids=[
        "budget-0",
        "budget-negative",
        "budget-float",
        "budget-bool",
        "unknown-strategy",
        "c-without-distances",
        "f-without-distances",
        "distances-shape",
        "distances-nan",
        "lengths-differ",
        "not-nested",
        "level-too-high",
        "level-negative",
        "level-float",
        "no-levels",
        "bare-array",
        "float-labels",
        "negative-labels",
        "bad-random-state",
    ],
)
def test_balanced_sample_rejects(args, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        balanced_sample(*args, **kwargs)


def test_refusals_are_value_errors():
    with pytest.raises(ValueError, match="budget"):
        balanced_sample([LEAVES], 0)


# -- random_sample ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "budget", "size"),
    [(100, 10, 10), (100, 100, 100), (5, 9, 5), (0, 3, 0), (1, 1, 1)],
    ids=["small", "all", "above-n", "empty-pool", "one"],
)
def test_random_sample_size_and_uniqueness(n, budget, size):
    selected = random_sample(n, budget, random_state=0)
    assert selected.dtype == np.int64
    assert selected.size == size
    assert np.array_equal(selected, np.unique(selected))
    assert ((selected >= 0) & (selected < n)).all()


def test_random_sample_is_deterministic_by_seed():
    assert np.array_equal(random_sample(1000, 50, 3), random_sample(1000, 50, 3))
    assert not np.array_equal(random_sample(1000, 50, 3), random_sample(1000, 50, 4))


@pytest.mark.parametrize(
    ("n", "budget", "match"),
    [(10, 0, "budget=0"), (-1, 3, "n=-1"), (10.0, 3, "n=10.0")],
    ids=["budget-0", "n-negative", "n-float"],
)
def test_random_sample_rejects(n, budget, match):
    with pytest.raises(InvalidArgumentError, match=match):
        random_sample(n, budget)


# -- metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "n_categories", "expected"),
    [
        ([5, 5, 5, 5], None, 1.0),
        ([7, 0], None, 0.0),
        ([1, 1], 4, 0.5),  # log 2 / log 4
        ([3, 1], None, -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)),
        ([9], None, 1.0),  # a single category is as even as it gets
    ],
    ids=["uniform", "one-of-two", "half-of-pool-categories", "skewed", "single"],
)
def test_normalized_entropy_by_hand(counts, n_categories, expected):
    assert normalized_entropy(counts, n_categories) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("counts", "n_categories", "match"),
    [
        ([], None, "non-empty"),
        ([0, 0], None, "sum to 0"),
        ([1, -1], None, "non-negative"),
        ([1, 1, 1], 2, "n_categories=2 is smaller than the 3 non-zero counts"),
    ],
    ids=["empty", "zeros", "negative", "too-few-categories"],
)
def test_normalized_entropy_rejects(counts, n_categories, match):
    with pytest.raises(InvalidArgumentError, match=match):
        normalized_entropy(counts, n_categories)


def test_largest_share():
    assert largest_share([2, 6, 2]) == pytest.approx(0.6)
    with pytest.raises(InvalidArgumentError, match="sum to 0"):
        largest_share([0])


def test_aligned_counts_and_enrichment_by_hand():
    pool = np.array(["point"] * 8 + ["double"] * 2)
    sample = np.array(["point", "point", "double", "double"])
    categories, pool_counts, sample_counts = aligned_counts(pool, sample)
    assert categories.tolist() == ["double", "point"]
    assert pool_counts.tolist() == [2, 8]
    assert sample_counts.tolist() == [2, 2]
    # double: 0.5 / 0.2 = 2.5; point: 0.5 / 0.8 = 0.625
    assert enrichment(pool, sample) == pytest.approx({"double": 2.5, "point": 0.625})
    assert enrichment([0, 0, 1], [0]) == pytest.approx({0: 1.5, 1: 0.0})


def test_enrichment_rejects_foreign_categories_and_empty_samples():
    with pytest.raises(InvalidArgumentError, match="not in pool_labels"):
        enrichment([0, 1], [2])
    with pytest.raises(InvalidArgumentError, match="sample_labels is empty"):
        enrichment([0, 1], [])
    with pytest.raises(InvalidArgumentError, match="pool_labels is empty"):
        aligned_counts([], [])


# -- statistics: balanced beats random on a long tail -------------------------------------


def zipf_concepts(n_concepts=30, largest=12000, exponent=1.5):
    """Concept sizes 12000 / (i + 1) ** 1.5 (12000 ... 73), as in docs/design.md section 4."""
    return np.maximum((largest / np.arange(1, n_concepts + 1) ** exponent).astype(int), 1)


def concept_entropy(concepts, selected, n_concepts):
    return normalized_entropy(np.bincount(concepts[selected], minlength=n_concepts))


def test_balanced_sampling_flattens_a_long_tail():
    sizes = zipf_concepts()
    concepts = np.repeat(np.arange(sizes.size), sizes)
    n, budget = concepts.size, 1500
    balanced = balanced_sample([concepts], budget, random_state=0)
    uniform = random_sample(n, budget, random_state=0)
    pool_entropy = normalized_entropy(np.bincount(concepts))
    random_entropy = concept_entropy(concepts, uniform, sizes.size)
    balanced_entropy = concept_entropy(concepts, balanced, sizes.size)
    # 1500 / 30 = 50 per concept and every concept has >= 73 points: perfectly even.
    assert balanced_entropy == pytest.approx(1.0)
    assert random_entropy == pytest.approx(pool_entropy, abs=0.05)
    assert random_entropy < 0.75
    assert balanced_entropy - random_entropy > 0.25
    assert enrichment(concepts, concepts[balanced])[29] > 10


def test_hierarchy_balances_concepts_better_than_flat_leaves():
    # Each concept is split into more sub-clusters the larger it is (about sqrt(size) / 3,
    # 37 ... 3), as k-means on the raw density does: flat balancing over the leaves still
    # favours the big concepts, balancing from the concept level does not.
    sizes = zipf_concepts()
    leaves_per_concept = np.ceil(np.sqrt(sizes) / 3).astype(int)
    leaf_to_concept = np.repeat(np.arange(sizes.size), leaves_per_concept)
    leaf_sizes = np.concatenate(
        [
            np.diff(np.linspace(0, size, m + 1).astype(int))
            for size, m in zip(sizes, leaves_per_concept, strict=True)
        ]
    )
    levels = points_from_sizes(leaf_sizes, [leaf_to_concept], seed=5)
    flat = balanced_sample(levels, 1500, level=0, random_state=0)
    hierarchical = balanced_sample(levels, 1500, random_state=0)
    uniform = random_sample(levels[0].size, 1500, random_state=0)
    entropies = [concept_entropy(levels[1], s, sizes.size) for s in (uniform, flat, hierarchical)]
    assert entropies[0] < entropies[1] - 0.1
    assert entropies[1] < entropies[2] - 0.05
    assert entropies[2] == pytest.approx(1.0)


# -- the fast orderings equal a stable argsort --------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [
        np.array([0.5, -0.0, 0.0, -2.0, 0.5, 3.0, -2.0, 1e-30, -1e-30], dtype=np.float32),
        np.random.default_rng(0).integers(0, 50, 5000).astype(np.float32),  # many ties
        np.random.default_rng(1).normal(size=5000).astype(np.float32),
        np.random.default_rng(2).integers(0, 50, 5000).astype(np.float64),  # many ties
        np.random.default_rng(3).normal(size=5000),  # no ties
        np.array([2.0, 1.0, 2.0, 1.0], dtype=np.float16),
    ],
    ids=["f32-signs-zeros", "f32-ties", "f32-normal", "f64-ties", "f64-normal", "f16"],
)
def test_distance_order_is_a_stable_argsort(keys):
    assert np.array_equal(_distance_order(keys), np.argsort(keys, kind="stable"))


def test_group_stably_keeps_the_given_order_within_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, 2000)
    order = rng.permutation(2000)
    expected = order[np.argsort(labels[order], kind="stable")]
    assert np.array_equal(_group_stably(labels, order), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64], ids=lambda d: d.__name__)
def test_closest_and_farthest_with_distance_dtypes(dtype):
    labels = np.array([0, 0, 0, 1, 1, 1])
    distances = np.array([3, 1, 2, 1, 1, 0], dtype=dtype)
    closest = balanced_sample([labels], 4, strategy="c", distances=distances)
    farthest = balanced_sample([labels], 4, strategy="f", distances=distances)
    assert closest.tolist() == [1, 2, 3, 5]  # leaf 1: 0.0 at 5, then the tie 3 < 4
    assert farthest.tolist() == [0, 2, 3, 4]
