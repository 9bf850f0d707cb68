"""K-means and hierarchical k-means (astrocurate.algorithms.kmeans.estimator): tiny hand-checked
cases and checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from astrocurate.algorithms.kmeans import assignment, hierarchical, level
from astrocurate.algorithms.kmeans import bounds as km_bounds
from astrocurate.algorithms.kmeans import rows as km_rows
from astrocurate.algorithms.kmeans import seeding as km_seeding
from astrocurate.algorithms.kmeans.assignment import assign
from astrocurate.algorithms.kmeans.estimator import KMeans, KMeansState, NotFittedError
from astrocurate.algorithms.kmeans.hierarchical import HierarchicalKMeans
from astrocurate.algorithms.kmeans.level import cluster_level, sort_clusters
from astrocurate.algorithms.kmeans.seeding import GreedySeeding, n_candidates
from astrocurate.errors import InvalidArgumentError
from host_reads import CudaSyncsPerCallback, HostReads
from kmeans_data import mixture, ties


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run single-threaded: the problems are tiny, and on a busy shared 2-core runner
    intra-op threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def blobs(n_per: int = 40, k: int = 5, d: int = 3, spread: float = 20.0, seed: int = 0):
    """``k`` well separated Gaussian blobs of ``n_per`` points (float32) and their labels."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-spread, spread, (k, d))
    x = np.concatenate([rng.normal(m, 1.0, (n_per, d)) for m in means]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def unstructured(n: int = 300, d: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def brute_force_sq(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    return ((x64[:, None, :] - c64[None, :, :]) ** 2).sum(-1)


def as_set(rows: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(np.round(r.astype(np.float64), 4)) for r in rows}


def lloyd_state(x: np.ndarray, centers: list[list[float]]) -> KMeansState:
    """A state that starts Lloyd iterations from given centres."""
    c = torch.tensor(centers, dtype=torch.float32)
    return KMeansState(
        phase="lloyd",
        step=0,
        centers=c,
        center_indices=np.full(len(centers), -1, dtype=np.int64),
        min_sq_distances=None,
        potential_history=[],
        rng=np.random.default_rng(0),
    )


# --------------------------------------------------------------------------------------
# KMeans: tiny hand-checked cases
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_one_dimensional_obvious_clusters(init: str) -> None:
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0], [100.0], [101.0], [102.0]])
    found = False
    for seed in range(10):  # random init may start two centres in one group; some seed won't
        km = KMeans(3, init=init, n_iters=10, random_state=seed).fit(x)
        if sorted(km.cluster_centers_[:, 0].tolist()) == [1.0, 11.0, 101.0]:
            found = True
            break
    assert found
    assert km.inertia_ == pytest.approx(6.0)  # each group: 1 + 0 + 1
    assert len(set(km.labels_[:3])) == len(set(km.labels_[3:6])) == 1
    assert len(set(km.labels_[[0, 3, 6]])) == 3
    np.testing.assert_allclose(km.sq_distances_, [1, 0, 1] * 3)
    np.testing.assert_array_equal(
        km.predict(np.array([[-5.0], [50.0], [99.0]])), km.labels_[[0, 3, 6]]
    )


def test_kmeanspp_finds_the_three_groups_with_any_seed() -> None:
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0], [100.0], [101.0], [102.0]])
    for seed in range(5):
        km = KMeans(3, n_iters=10, random_state=seed).fit(x)
        assert sorted(km.cluster_centers_[:, 0].tolist()) == [1.0, 11.0, 101.0]


def test_k_equals_n_puts_every_point_alone() -> None:
    x = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [7.0, 7.0], [-2.0, 5.0]], np.float32)
    km = KMeans(5, random_state=0).fit(x)
    assert km.inertia_ == 0.0
    assert as_set(km.cluster_centers_) == as_set(x)
    assert sorted(km.labels_.tolist()) == [0, 1, 2, 3, 4]
    assert sorted(km.init_indices_.tolist()) == [0, 1, 2, 3, 4]


def test_one_cluster_is_the_mean() -> None:
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]], np.float32)
    km = KMeans(1, n_iters=3, random_state=0).fit(x)
    np.testing.assert_allclose(km.cluster_centers_, [[1.0, 2.0]])
    assert km.inertia_ == pytest.approx(20.0)  # 4 * (1 + 4)
    np.testing.assert_array_equal(km.labels_, [0, 0, 0, 0])


@pytest.mark.parametrize("k", [2, 5], ids=["k2", "k_equals_n"])
def test_duplicate_points(k: int) -> None:
    x = np.array([[0.0], [0.0], [0.0], [5.0], [5.0]], np.float32)
    km = KMeans(k, n_iters=5, random_state=3).fit(x)
    assert km.inertia_ == 0.0
    assert {0.0, 5.0} <= set(km.cluster_centers_[:, 0].tolist())
    assert len(set(km.labels_[:3])) == len(set(km.labels_[3:])) == 1
    assert len(set(km.init_indices_.tolist())) == k  # distinct input rows


def test_all_points_identical_kmeanspp_picks_distinct_rows() -> None:
    x = np.ones((6, 2), np.float32)
    km = KMeans(3, random_state=0).fit(x)
    assert len(set(km.init_indices_.tolist())) == 3
    assert km.inertia_ == 0.0


def test_empty_cluster_keeps_its_centroid() -> None:
    x = np.array([[0.0], [1.0], [2.0]], np.float32)
    km = KMeans(3, n_iters=4).fit(x, state=lloyd_state(x, [[0.0], [1.5], [100.0]]))
    np.testing.assert_allclose(km.cluster_centers_[:, 0], [0.0, 1.5, 100.0])
    np.testing.assert_array_equal(km.labels_, [0, 1, 1])
    assert km.inertia_ == pytest.approx(0.5)


def test_update_keeps_empty_and_averages_in_float64() -> None:
    sums = torch.tensor([[6.0], [0.0]], dtype=torch.float64)
    counts = torch.tensor([3, 0])
    old = torch.tensor([[1.0], [-7.0]])
    new = assignment.update_centers(sums, counts, old)
    assert new.dtype == torch.float32
    np.testing.assert_allclose(new.numpy(), [[2.0], [-7.0]])


def test_lloyd_history_hand_checked() -> None:
    # centres 0 and 3 on [0, 1, 2, 6]: assign {0,1} {2,6}; potential 0+1+1+9 = 11;
    # update -> 0.5, 4; assign {0,1,2} {6}? 2 is 1.5 from 0.5 and 2 from 4 -> yes;
    # potential .25+.25+2.25+4 = 6.75; update -> 1, 6; potential 1+0+1+0 = 2; stable.
    x = np.array([[0.0], [1.0], [2.0], [6.0]], np.float32)
    km = KMeans(2, n_iters=5, tol=0.0).fit(x, state=lloyd_state(x, [[0.0], [3.0]]))
    np.testing.assert_allclose(km.potential_history_, [11.0, 6.75, 2.0, 2.0])
    assert km.n_iter_ == 3  # the third update changed nothing: early stop
    np.testing.assert_allclose(km.cluster_centers_[:, 0], [1.0, 6.0])


def test_n_iters_zero_only_assigns() -> None:
    x, _ = blobs()
    km = KMeans(5, n_iters=0, random_state=0).fit(x)
    assert km.n_iter_ == 0
    assert len(km.potential_history_) == 1
    np.testing.assert_allclose(km.cluster_centers_, x[km.init_indices_])


def test_n_candidates() -> None:
    assert [n_candidates(k) for k in (1, 2, 3, 8, 60000)] == [2, 2, 3, 4, 13]


# --------------------------------------------------------------------------------------
# KMeans: invariants
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["k-means++", "random"])
@pytest.mark.parametrize("data", [blobs(), (unstructured(), None)], ids=["blobs", "unstructured"])
def test_nearest_centroid_and_history(init: str, data) -> None:
    x, _ = data
    km = KMeans(7, init=init, n_iters=15, random_state=0).fit(x)
    d = brute_force_sq(x, km.cluster_centers_)
    chosen = d[np.arange(len(x)), km.labels_]
    np.testing.assert_allclose(chosen, d.min(1), rtol=1e-5, atol=1e-5)  # nearest, up to ties
    np.testing.assert_allclose(km.sq_distances_, chosen, rtol=1e-5, atol=1e-5)
    assert km.inertia_ == pytest.approx(chosen.sum(), rel=1e-5)
    hist = np.array(km.potential_history_)
    assert len(hist) == km.n_iter_ + 1
    assert np.all(np.diff(hist) <= 1e-6 * hist[:-1])  # never increases (up to rounding)
    assert hist[-1] == km.inertia_


def test_potential_never_increases_many_seeds() -> None:
    x = unstructured(400, 6, seed=5)
    for seed in range(6):
        hist = np.array(KMeans(12, n_iters=25, random_state=seed).fit(x).potential_history_)
        assert np.all(np.diff(hist) <= 1e-6 * hist[:-1])


def test_float64_accumulation_with_large_offset() -> None:
    # 2**17 values near 1e4: a float32 running sum reaches ~1.3e9, where one ulp is 128,
    # so float32 accumulation would visibly drift; float64 gives the mean to float32 rounding.
    rng = np.random.default_rng(0)
    x = (1e4 + rng.uniform(0, 1, (2**17, 2))).astype(np.float32)
    exact = x.astype(np.float64).mean(0)
    drift = abs(float(np.cumsum(x[:, 0], dtype=np.float32)[-1]) / len(x) - exact[0])
    assert drift > 0.01  # what float32 running sums would do
    km = KMeans(1, n_iters=1, random_state=0).fit(x)
    np.testing.assert_allclose(km.cluster_centers_[0], exact, rtol=0, atol=2e-3)


@pytest.mark.parametrize(
    ("block_size", "centroid_block_size"),
    [(1, None), (7, 3), (64, 1), (1000, 4), (299, 2), (300, None), (10_000, 7)],
    ids=["rows1", "rows7-cents3", "rows64-cents1", "rows1000", "rows299-cents2", "rows_n", "big"],
)
def test_blockwise_equals_unblocked(block_size: int, centroid_block_size: int | None) -> None:
    x, _ = blobs(n_per=60, k=5)
    ref = KMeans(8, n_iters=8, random_state=4, block_size=len(x)).fit(x)
    got = KMeans(
        8,
        n_iters=8,
        random_state=4,
        block_size=block_size,
        centroid_block_size=centroid_block_size,
    ).fit(x)
    np.testing.assert_array_equal(got.labels_, ref.labels_)
    np.testing.assert_array_equal(got.init_indices_, ref.init_indices_)
    np.testing.assert_allclose(got.cluster_centers_, ref.cluster_centers_, rtol=1e-6, atol=1e-5)
    labels, sq = assign(x, ref.cluster_centers_, block_size=block_size, centroid_block_size=3)
    np.testing.assert_array_equal(labels, ref.labels_)
    np.testing.assert_allclose(sq, ref.sq_distances_, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("file_dtype", "stream"),
    [("float32", False), ("float64", False), ("float32", True), ("float16", True)],
    ids=["f32-in-place", "f64-converted", "f32-streamed", "f16-streamed"],
)
def test_memmap_equals_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_dtype: str, stream: bool
) -> None:
    x, _ = blobs(n_per=50)
    x = x.astype(file_dtype)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    assert isinstance(mm, np.memmap)
    if stream:  # force block-by-block conversion even for small inputs
        monkeypatch.setattr(km_rows, "_PRELOAD_BYTES_CPU", 0)
        monkeypatch.setattr(km_rows.Rows, "_whole", lambda self: None)
    a = KMeans(6, n_iters=5, random_state=2, block_size=33).fit(mm)
    b = KMeans(6, n_iters=5, random_state=2, block_size=33).fit(np.array(x))
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    h1 = HierarchicalKMeans([8, 3], n_resampling_steps=2, sample_size=4, random_state=1)
    h2 = HierarchicalKMeans([8, 3], n_resampling_steps=2, sample_size=4, random_state=1)
    h1.fit(mm)
    h2.fit(np.array(x))
    for lvl in range(2):
        np.testing.assert_array_equal(h1.labels_[lvl], h2.labels_[lvl])


def test_tensor_and_list_inputs_equal_numpy() -> None:
    x, _ = blobs(n_per=20)
    ref = KMeans(4, random_state=0).fit(x)
    for inp in (torch.from_numpy(x), torch.from_numpy(x.astype(np.float64)), x.tolist()):
        got = KMeans(4, random_state=0).fit(inp)
        np.testing.assert_array_equal(got.labels_, ref.labels_)
        np.testing.assert_allclose(got.cluster_centers_, ref.cluster_centers_, rtol=1e-6)


def test_float64_dtype() -> None:
    x, _ = blobs(n_per=20)
    a = KMeans(5, random_state=0, dtype="float64").fit(x)
    b = KMeans(5, random_state=0, dtype=torch.float32).fit(x)
    assert a.cluster_centers_.dtype == np.float64
    assert b.cluster_centers_.dtype == np.float32
    np.testing.assert_array_equal(a.labels_, b.labels_)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_same_seed_same_result_different_seed_differs(init: str) -> None:
    x = unstructured(300, 4)
    a = KMeans(10, init=init, random_state=7).fit(x)
    b = KMeans(10, init=init, random_state=7).fit(x)
    c = KMeans(10, init=init, random_state=8).fit(x)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.potential_history_ == b.potential_history_
    assert not np.array_equal(a.init_indices_, c.init_indices_)
    g1 = KMeans(10, init=init, random_state=np.random.default_rng(3)).fit(x)
    g2 = KMeans(10, init=init, random_state=np.random.default_rng(3)).fit(x)
    np.testing.assert_array_equal(g1.cluster_centers_, g2.cluster_centers_)


def test_greedy_kmeanspp_beats_random_init() -> None:
    x, _ = blobs(n_per=30, k=12, d=4, spread=30.0, seed=3)
    pp = [KMeans(12, n_iters=0, random_state=s).fit(x).inertia_ for s in range(8)]
    rnd = [KMeans(12, init="random", n_iters=0, random_state=s).fit(x).inertia_ for s in range(8)]
    assert np.mean(pp) < 0.5 * np.mean(rnd)
    # with well separated blobs greedy k-means++ puts one centre in each blob
    for s in range(3):
        km = KMeans(12, n_iters=0, random_state=s).fit(x)
        assert len(set((km.init_indices_ // 30).tolist())) == 12


def test_random_init_picks_distinct_rows() -> None:
    x = unstructured(50, 2)
    km = KMeans(50, init="random", n_iters=0, random_state=0).fit(x)
    assert sorted(km.init_indices_.tolist()) == list(range(50))
    assert km.inertia_ == 0.0


def test_tol_stops_early() -> None:
    x, _ = blobs()
    km = KMeans(5, n_iters=100, tol=1e-9, random_state=0).fit(x)
    assert km.n_iter_ < 100
    assert len(km.potential_history_) == km.n_iter_ + 1


# --------------------------------------------------------------------------------------
# KMeans: checkpoint hooks (state + callback) resume to the same result
# --------------------------------------------------------------------------------------


class _KilledError(Exception):
    pass


@pytest.mark.parametrize(("phase", "step"), [("init", 1), ("init", 9), ("lloyd", 1), ("lloyd", 4)])
def test_resume_from_state_gives_the_same_result(phase: str, step: int) -> None:
    x = unstructured(500, 5)
    params = {"n_iters": 8, "random_state": 11, "block_size": 128}
    ref = KMeans(15, **params).fit(x)
    saved: dict = {}

    def killer(state: KMeansState) -> None:
        if state.phase == phase and state.step == step:
            saved.update(state.state_dict())
            raise _KilledError

    with pytest.raises(_KilledError):
        KMeans(15, **params).fit(x, callback=killer)
    state = KMeansState.from_state_dict(saved)
    got = KMeans(15, **params).fit(x, state=state)
    np.testing.assert_array_equal(got.cluster_centers_, ref.cluster_centers_)
    np.testing.assert_array_equal(got.labels_, ref.labels_)
    assert got.potential_history_ == ref.potential_history_
    np.testing.assert_array_equal(got.init_indices_, ref.init_indices_)


def test_callback_sees_every_step() -> None:
    x = unstructured(100, 3)
    seen: list[tuple[str, int]] = []
    KMeans(4, n_iters=3, random_state=0).fit(x, callback=lambda s: seen.append((s.phase, s.step)))
    expected = [("init", 1), ("init", 2), ("init", 3), ("init", 4)]
    expected += [("lloyd", 1), ("lloyd", 2), ("lloyd", 3), ("done", 3)]
    assert seen == expected


# --------------------------------------------------------------------------------------
# KMeans: pruning with triangle-inequality bounds is exact
# --------------------------------------------------------------------------------------


BOUNDS_CASES = {
    "blobs": (blobs(n_per=80, k=6, d=5)[0], 9, {}),
    "mixture-32d": (mixture(1500, 32, 12, 2), 40, {}),
    "mixture-blocks": (mixture(700, 16, 6, 3), 25, {"block_size": 64, "centroid_block_size": 7}),
    "unstructured": (unstructured(n=600, d=6), 30, {}),
    "ties-duplicates": (ties(), 8, {}),
    "k1": (mixture(300, 4, 3, 4), 1, {}),
    "float64": (mixture(800, 8, 5, 5).astype(np.float64), 20, {"dtype": "float64"}),
    "k-equals-n": (unstructured(n=40, d=3), 40, {}),
    # 30 groups of centres: rows are rescored against a few groups only
    "many-groups": (mixture(3000, 24, 40, 8), 300, {}),
    "many-groups-blocks": (mixture(2000, 24, 30, 9), 200, {"block_size": 300}),
}


def _fit_both(x: np.ndarray, k: int, init: str, **kw) -> tuple[KMeans, KMeans]:
    fits = []
    for bounds in (True, False):
        km = KMeans(k, init=init, n_iters=15, random_state=6, bounds=bounds, **kw)
        fits.append(km.fit(x))
    return fits[0], fits[1]


@pytest.mark.parametrize("init", ["k-means++", "random"])
@pytest.mark.parametrize("case", list(BOUNDS_CASES), ids=list(BOUNDS_CASES))
def test_bounds_give_exactly_the_full_computation(case: str, init: str) -> None:
    x, k, kw = BOUNDS_CASES[case]
    pruned, full = _fit_both(x, k, init, **kw)
    np.testing.assert_array_equal(pruned.labels_, full.labels_)
    np.testing.assert_array_equal(pruned.cluster_centers_, full.cluster_centers_)
    np.testing.assert_array_equal(pruned.sq_distances_, full.sq_distances_)
    assert pruned.potential_history_ == full.potential_history_
    assert len(pruned.n_recomputed_) == pruned.n_iter_ + 1
    assert pruned.n_recomputed_[0] == len(x) and full.n_recomputed_ == []


SEEDING_CASES = {
    "mixture-24d": (mixture(3000, 24, 40, 8), 300, {}),
    "mixture-blocks": (mixture(2000, 24, 30, 9), 200, {"block_size": 300}),
    "ties-duplicates": (ties(), 40, {}),  # more centres than distinct points
    "float64": (mixture(2000, 8, 30, 5).astype(np.float64), 150, {"dtype": "float64"}),
}


@pytest.mark.parametrize("case", list(SEEDING_CASES), ids=list(SEEDING_CASES))
def test_seeding_bounds_leave_out_only_rows_no_candidate_brings_closer(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, k, kw = SEEDING_CASES[case]
    left_out: list[float] = []
    original = GreedySeeding.seeding_rows

    def checked(self: GreedySeeding, local, state, cx, cx_sq, block_rows, d2):
        scored = original(self, local, state, cx, cx_sq, block_rows, d2)
        if scored is not None:
            out = np.ones(len(x), dtype=bool)
            out[scored.numpy()] = False
            exact = brute_force_sq(x[out], cx.numpy()).min(axis=1)
            assert (exact >= d2.numpy()[out]).all()
            left_out.append(float(out.mean()))
        return scored

    monkeypatch.setattr(GreedySeeding, "seeding_rows", checked)
    pruned = KMeans(k, n_iters=0, random_state=3, **kw).fit(x)
    full = KMeans(k, n_iters=0, random_state=3, bounds=False, **kw).fit(x)
    assert left_out and max(left_out) > 0.75  # the bounds did leave most rows out
    np.testing.assert_array_equal(pruned.init_indices_, full.init_indices_)
    np.testing.assert_array_equal(pruned.cluster_centers_, full.cluster_centers_)


def test_just_below_one_gives_the_double_below_a_potential() -> None:
    """``total * _JUST_BELOW_ONE`` is ``nextafter(total, 0)``, powers of two included."""
    rng = np.random.default_rng(0)
    powers = 2.0 ** np.arange(-1021, 1024.0)
    x = np.concatenate([np.exp(rng.uniform(-700, 700, 100_000)), powers, powers * 1.5])
    np.testing.assert_array_equal(x * km_seeding._JUST_BELOW_ONE, np.nextafter(x, 0))


@pytest.mark.parametrize(("bounds", "most"), [(None, 2), (False, 1)])
def test_a_greedy_seeding_step_reads_the_device_at_most_twice(bounds, most) -> None:
    """Candidates are drawn and scored on the device: the host reads only which rows to
    score (with the bounds) and the winner with the potential's total, so a GPU is not
    left idle four more times per centre (60,000 centres per k-means run in config A)."""
    x, k, _ = SEEDING_CASES["mixture-24d"]
    reads, per_step = HostReads(), []

    def count(state: KMeansState) -> None:
        if state.phase == "init":
            per_step.append(reads.count)
            reads.count = 0

    with reads:
        KMeans(k, n_iters=0, random_state=5, bounds=bounds).fit(torch.from_numpy(x), callback=count)
    assert len(per_step) == k and max(per_step[1:]) == most


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_greedy_seeding_step_on_cuda_synchronises_at_most_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same as the host reads above, counted by CUDA itself (sync debug mode), for the
    plain step (the fused steps: tests/test_seeding_kernel.py)."""
    monkeypatch.setattr(GreedySeeding, "fused", lambda *args: False)
    x, k, _ = SEEDING_CASES["mixture-24d"]
    with CudaSyncsPerCallback() as syncs:
        KMeans(k, n_iters=0, random_state=5, device="cuda").fit(
            torch.from_numpy(x).cuda(), callback=syncs
        )
    assert len(syncs.counts) == k and max(syncs.counts[2:]) <= 2


def test_resume_mid_seeding_with_bounds_gives_the_same_result() -> None:
    x, k, _ = SEEDING_CASES["mixture-24d"]
    params = {"n_iters": 2, "random_state": 11}
    ref = KMeans(k, **params).fit(x)
    saved: dict = {}

    def killer(state: KMeansState) -> None:
        if state.phase == "init" and state.step == 200:
            saved.update(state.state_dict())
            raise _KilledError

    with pytest.raises(_KilledError):
        KMeans(k, **params).fit(x, callback=killer)
    assert saved["nearest_centers"].shape == (len(x),)
    got = KMeans(k, **params).fit(x, state=KMeansState.from_state_dict(saved))
    np.testing.assert_array_equal(got.init_indices_, ref.init_indices_)
    np.testing.assert_array_equal(got.cluster_centers_, ref.cluster_centers_)
    np.testing.assert_array_equal(got.labels_, ref.labels_)


def test_rescoring_in_small_batches_gives_the_same_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    x = mixture(2500, 16, 30, 10)
    ref = KMeans(250, n_iters=12, random_state=2).fit(x)
    assert any(0 < r < len(x) for r in ref.n_recomputed_[1:])  # some rows rescored, not all
    monkeypatch.setattr(km_bounds, "_RESCORE_ROWS", 37)  # many flushes, across blocks
    small = KMeans(250, n_iters=12, random_state=2, block_size=500).fit(x)
    np.testing.assert_array_equal(small.labels_, ref.labels_)
    np.testing.assert_array_equal(small.cluster_centers_, ref.cluster_centers_)
    assert small.n_recomputed_ == ref.n_recomputed_


def test_moved_down_never_exceeds_the_exact_difference() -> None:
    gen = torch.Generator().manual_seed(0)
    lower = (torch.rand(200_000, generator=gen) * 100).reshape(-1, 8)
    shift64 = torch.rand(8, generator=gen, dtype=torch.float64) * 10
    got = km_bounds._moved_down(lower, km_bounds._up_f32(shift64)).to(torch.float64)
    exact = lower.to(torch.float64) - shift64
    assert bool((got <= exact).all())
    assert float((exact - got).max()) < 1e-4  # and only an ulp or two below


def test_bounds_with_duplicate_centres_keep_the_first_onties() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0]], np.float32)
    centers = [[1.0], [1.0], [10.0], [10.0], [50.0]]  # two exact duplicates, one far away
    first = KMeans(5, n_iters=0).fit(x, state=lloyd_state(x, centers))
    np.testing.assert_array_equal(first.labels_, [0, 0, 0, 0, 2, 2])  # ties: the first
    for n_iters in (1, 2, 4):
        fits = [
            KMeans(5, n_iters=n_iters, bounds=b).fit(x, state=lloyd_state(x, centers))
            for b in (True, False)
        ]
        np.testing.assert_array_equal(fits[0].labels_, fits[1].labels_)
        np.testing.assert_array_equal(fits[0].cluster_centers_, fits[1].cluster_centers_)
        assert fits[0].cluster_centers_[4, 0] == 50.0  # empty: kept


def test_bounds_skip_most_rows_in_late_iterations() -> None:
    x = mixture(4000, 16, 10, 7)
    km = KMeans(10, n_iters=20, random_state=1).fit(x)
    assert km.n_recomputed_[0] == len(x)  # the first pass computes everything
    late = km.n_recomputed_[-5:]
    assert max(late) < 0.1 * len(x), km.n_recomputed_
    ref = KMeans(10, n_iters=20, random_state=1, bounds=False).fit(x)
    np.testing.assert_array_equal(km.labels_, ref.labels_)


def test_nearest_groups_matches_brute_force() -> None:
    rng = np.random.default_rng(8)
    xb = torch.from_numpy(rng.normal(size=(50, 4)).astype(np.float32))
    centers = torch.from_numpy(rng.normal(size=(13, 4)).astype(np.float32))
    centers[5] = centers[2]  # an exact tie
    groups = torch.from_numpy(rng.integers(0, 3, 13))
    c_sq = (centers * centers).sum(1)
    scores = (c_sq - 2 * xb @ centers.T).numpy()
    for block in (13, 5, 1):
        labels, group_min = km_bounds._nearest_groups(xb, centers, c_sq, block, groups, 3)
        expected = assignment.nearest(xb, centers, c_sq, block)
        np.testing.assert_array_equal(labels.numpy(), expected.numpy())
        for g in range(3):
            masked = np.where(groups.numpy()[None, :] == g, scores, np.inf)
            masked[np.arange(50), labels.numpy()] = np.inf
            np.testing.assert_allclose(group_min[:, g].numpy(), masked.min(1), rtol=1e-5, atol=1e-5)


def test_lower_bounds_round_down_to_float32() -> None:
    values = torch.tensor([1 / 3, 2.0, math.inf, 0.0, 1e-50], dtype=torch.float64)
    down = km_bounds._down_f32(values)
    assert down.dtype == torch.float32
    assert bool((down.to(torch.float64) <= values).all())
    assert down[1] == 2.0 and math.isinf(down[2])


def test_score_error_factor() -> None:
    f32 = km_bounds.score_error_factor(torch.float32, 384, torch.device("cpu"))
    f64 = km_bounds.score_error_factor(torch.float64, 384, torch.device("cpu"))
    assert 384 * 2**-24 < f32 < 1e-4 and f64 < 1e-13
    assert km_bounds.score_error_factor(torch.bfloat16, 384, torch.device("cpu")) is None
    x = mixture(200, 8, 3, 9).astype(np.float16)
    km = KMeans(4, n_iters=3, random_state=0, dtype="float16").fit(x)
    assert km.n_recomputed_ == []  # 16-bit compute dtypes are not pruned


# --------------------------------------------------------------------------------------
# sorted clusters and resampling pools
# --------------------------------------------------------------------------------------


def test_sort_clusters_hand_checked() -> None:
    labels = np.array([1, 0, 1, 1, 0, 3])
    sq = np.array([0.5, 2.0, 0.1, 0.5, 1.0, 0.0])
    members, offsets, dist = sort_clusters(labels, sq, 4)
    np.testing.assert_array_equal(members, [4, 1, 2, 0, 3, 5])  # ties keep index order
    np.testing.assert_array_equal(offsets, [0, 2, 5, 5, 6])  # cluster 2 is empty
    np.testing.assert_array_equal(dist, [1.0, 2.0, 0.1, 0.5, 0.5, 0.0])


def test_resampling_pool_takes_first_s_per_cluster() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    keys = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 9.0])
    pool = level.first_per_cluster(labels, keys, 3, 2)
    np.testing.assert_array_equal(pool, [1, 2, 3, 4, 5])


# --------------------------------------------------------------------------------------
# HierarchicalKMeans
# --------------------------------------------------------------------------------------

CONFIGS = {
    "flat": {"n_clusters": [9]},
    "2lvl": {"n_clusters": [20, 5]},
    "3lvl-resample-r": {
        "n_clusters": [30, 10, 4],
        "n_resampling_steps": [3, 3, 2],
        "sample_size": [3, 2, 2],
        "sampling_strategy": ["r", "r", "r"],
    },
    "2lvl-resample-c": {
        "n_clusters": [25, 6],
        "n_resampling_steps": [4, 2],
        "sample_size": [2, 2],
        "sampling_strategy": ["c", "c"],
    },
    "splits": {"n_clusters": [6, 4], "n_splits": [3, 1]},
}


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def fitted(request: pytest.FixtureRequest) -> tuple[HierarchicalKMeans, np.ndarray]:
    x, _ = blobs(n_per=40, k=6, d=3, spread=15.0, seed=2)
    h = HierarchicalKMeans(**CONFIGS[request.param], n_iters=10, random_state=5).fit(x)
    return h, x


def level_inputs(h: HierarchicalKMeans, x: np.ndarray, lvl: int) -> np.ndarray:
    return x if lvl == 0 else h.centroids_[lvl - 1]


def test_levels_partition_their_inputs_exactly_once(fitted) -> None:
    h, x = fitted
    for lvl, (members, offsets) in enumerate(zip(h.members_, h.offsets_, strict=True)):
        n_in = len(level_inputs(h, x, lvl))
        k = len(h.centroids_[lvl])
        np.testing.assert_array_equal(np.sort(members), np.arange(n_in))
        assert offsets[0] == 0 and offsets[-1] == n_in and len(offsets) == k + 1
        for j in range(k):
            assert np.all(h.labels_[lvl][members[offsets[j] : offsets[j + 1]]] == j)
        np.testing.assert_array_equal(np.diff(offsets), h.cluster_sizes_[lvl])
        assert h.n_empty_[lvl] == int((np.diff(offsets) == 0).sum())


def test_sorted_clusters_non_decreasing(fitted) -> None:
    h, x = fitted
    for lvl in range(len(h.levels_)):
        d, off = h.distances_[lvl], h.offsets_[lvl]
        for j in range(len(off) - 1):
            assert np.all(np.diff(d[off[j] : off[j + 1]]) >= 0)
        c = h.centroids_[lvl][h.labels_[lvl][h.members_[lvl]]]
        y = level_inputs(h, x, lvl)[h.members_[lvl]].astype(np.float64)
        np.testing.assert_allclose(d, ((y - c) ** 2).sum(1), rtol=1e-5, atol=1e-5)


def test_every_input_at_its_nearest_centroid(fitted, request: pytest.FixtureRequest) -> None:
    h, x = fitted
    for lvl in range(len(h.levels_)):
        y = level_inputs(h, x, lvl)
        d = brute_force_sq(y, h.centroids_[lvl])
        if "splits" in request.node.callspec.id and lvl == 0:
            # a split keeps each input inside its parent cluster: nearest among siblings
            continue
        chosen = d[np.arange(len(y)), h.labels_[lvl]]
        np.testing.assert_allclose(chosen, d.min(1), rtol=1e-5, atol=1e-5)
        assert h.inertia_[lvl] == pytest.approx(chosen.sum(), rel=1e-5, abs=1e-6)


def test_point_labels_compose_and_sizes_count_points(fitted) -> None:
    h, x = fitted
    lab = h.labels_[0]
    for lvl in range(len(h.levels_)):
        if lvl:
            lab = h.labels_[lvl][lab]
        np.testing.assert_array_equal(h.point_labels(lvl), lab)
        sizes = h.cluster_sizes_in_points(lvl)
        assert sizes.sum() == len(x)
        np.testing.assert_array_equal(sizes, np.bincount(lab, minlength=len(h.centroids_[lvl])))


def test_hierarchy_hand_checked() -> None:
    x = np.array([[0.0], [1.0], [10.0], [11.0], [100.0], [101.0], [110.0], [111.0]])
    h = HierarchicalKMeans([4, 2], n_iters=10, random_state=0).fit(x)
    assert sorted(h.centroids_[0][:, 0].tolist()) == [0.5, 10.5, 100.5, 110.5]
    assert sorted(h.centroids_[1][:, 0].tolist()) == [5.5, 105.5]
    top = h.point_labels(1)
    assert len(set(top[:4])) == len(set(top[4:])) == 1 and top[0] != top[4]
    np.testing.assert_array_equal(h.cluster_sizes_in_points(1), [4, 4])
    np.testing.assert_array_equal(h.cluster_sizes_[1], [2, 2])
    assert h.inertia_ == pytest.approx([8 * 0.25, 4 * 25.0])


def test_splits_hand_checked() -> None:
    x = np.array([[0.0], [0.1], [1.0], [1.1], [10.0], [10.1], [11.0], [11.1]], np.float32)
    h = HierarchicalKMeans([2], n_splits=[2], n_iters=10, random_state=0).fit(x)
    np.testing.assert_allclose(
        np.sort(h.centroids_[0][:, 0]), [0.05, 1.05, 10.05, 11.05], rtol=1e-6
    )
    np.testing.assert_array_equal(h.cluster_sizes_[0], [2, 2, 2, 2])


def test_split_drops_empty_sub_clusters() -> None:
    # clusters {0,0,0} and {9}: the first cannot hold 2 non-empty sub-clusters, the second
    # has a single point, so only 2 clusters remain of the up to 2 x 2
    x = np.array([[0.0], [0.0], [0.0], [9.0]], np.float32)
    result = cluster_level(x, 2, n_splits=2, n_iters=3, random_state=0)
    assert sorted(result.centroids[:, 0].tolist()) == [0.0, 9.0]
    assert result.n_empty == 0
    np.testing.assert_array_equal(result.sizes[result.labels[[0, 3]]], [3, 1])


def test_resampling_changes_the_centroids_and_counts_steps() -> None:
    x, _ = blobs(n_per=40, k=6, d=3, seed=2)
    one = cluster_level(x, 12, n_iters=5, random_state=1)
    three = cluster_level(x, 12, n_iters=5, n_resampling_steps=3, sample_size=3, random_state=1)
    assert len(one.potential_history) == 1 and len(three.potential_history) == 3
    assert not np.array_equal(one.centroids, three.centroids)
    # the first step is the same full run
    assert three.potential_history[0] == one.potential_history[0]
    # each resampled run sees at most k * s points: at most 12 * 3 = 36 inputs
    assert three.potential_history[1][0] < one.potential_history[0][0]


def test_resampling_with_whole_clusters_smaller_than_s() -> None:
    x = np.array([[0.0], [0.2], [5.0], [5.2], [5.4], [20.0]], np.float32)
    for strategy in ("r", "c"):
        r = cluster_level(
            x,
            3,
            n_resampling_steps=3,
            sample_size=10,
            sampling_strategy=strategy,
            random_state=0,
        )
        np.testing.assert_allclose(np.sort(r.centroids[:, 0]), [0.1, 5.2, 20.0], rtol=1e-6)


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_hierarchical_seeded(config: str) -> None:
    x = unstructured(240, 3, seed=9)
    a = HierarchicalKMeans(**CONFIGS[config], n_iters=5, random_state=3).fit(x)
    b = HierarchicalKMeans(**CONFIGS[config], n_iters=5, random_state=3).fit(x)
    c = HierarchicalKMeans(**CONFIGS[config], n_iters=5, random_state=4).fit(x)
    for lvl in range(len(a.levels_)):
        np.testing.assert_array_equal(a.centroids_[lvl], b.centroids_[lvl])
        np.testing.assert_array_equal(a.members_[lvl], b.members_[lvl])
    assert not np.array_equal(a.centroids_[0], c.centroids_[0])


def test_hierarchical_resume_and_one_level_at_a_time() -> None:
    x, _ = blobs(n_per=40, k=6, d=3, seed=2)
    cfg = CONFIGS["3lvl-resample-r"]
    ref = HierarchicalKMeans(**cfg, n_iters=5, random_state=3).fit(x)
    saved = []
    HierarchicalKMeans(**cfg, n_iters=5, random_state=3).fit(
        x, last_level=0, level_callback=lambda lvl, r: saved.append(r)
    )
    for lvl in (1, 2):  # e.g. one SLURM job per level; X is not read again
        step = HierarchicalKMeans(**cfg, n_iters=5, random_state=3)
        step.fit(None, completed_levels=saved, last_level=lvl)
        saved = step.levels_
    for lvl in range(3):
        np.testing.assert_array_equal(saved[lvl].centroids, ref.centroids_[lvl])
        np.testing.assert_array_equal(saved[lvl].labels, ref.labels_[lvl])
    # a single level run on its own gives the same level 0 as the estimator
    level0 = cluster_level(
        x,
        30,
        n_iters=5,
        n_resampling_steps=3,
        sample_size=3,
        random_state=hierarchical.level_seed(np.random.SeedSequence(3), 1),
    )
    np.testing.assert_array_equal(level0.centroids, ref.centroids_[0])


class _ResumingHooks(level.NoLevelHooks):
    """Level hooks that keep every finished run and resume after the last one kept."""

    def __init__(self, kept: dict[int, level.FinishedRuns], stop_after: int | None) -> None:
        self.kept, self.stop_after = kept, stop_after

    def finished_runs(self, n_runs: int) -> level.FinishedRuns | None:
        return self.kept[max(self.kept)] if self.kept else None

    def run_done(self, runs: level.FinishedRuns, n_runs: int) -> None:
        self.kept[runs.last] = runs
        if runs.last == self.stop_after:
            raise _KilledError


def test_run_level_resumes_after_its_last_finished_run() -> None:
    """The hooks of the one level loop: a level stopped after a run resumes to the same."""
    x, _ = blobs(n_per=40, k=6, d=3, seed=2)
    p = level.validate_level(30, 5, 3, 3, "c", 1)
    settings = level.KMeansSettings()
    rows = km_rows.Rows(x, settings.device, settings.dtype)
    seed = hierarchical.level_seed(np.random.SeedSequence(3), 1)
    ref = level.run_level(rows, p, seed, settings)
    kept: dict[int, level.FinishedRuns] = {}
    with pytest.raises(_KilledError):
        level.run_level(rows, p, seed, settings, _ResumingHooks(kept, stop_after=1))
    assert sorted(kept) == [0, 1]
    got = level.run_level(rows, p, seed, settings, _ResumingHooks(kept, stop_after=None))
    np.testing.assert_array_equal(got.centroids, ref.centroids)
    np.testing.assert_array_equal(got.labels, ref.labels)
    assert got.potential_history == ref.potential_history


def test_not_fitted() -> None:
    h = HierarchicalKMeans([2])
    with pytest.raises(NotFittedError, match="not fitted"):
        h.point_labels(0)
    with pytest.raises(NotFittedError, match="not fitted"):
        KMeans(2).predict(np.zeros((3, 1)))


# --------------------------------------------------------------------------------------
# validation at the boundary
# --------------------------------------------------------------------------------------

X5 = np.arange(10, dtype=np.float32).reshape(5, 2)

KMEANS_ERRORS = [
    ({"n_clusters": 6}, X5, r"n_clusters=6 must be <= n_samples=5"),
    ({"n_clusters": 0}, X5, r"n_clusters=0 must be >= 1"),
    ({"n_clusters": 2.5}, X5, r"n_clusters=2.5 must be an integer"),
    ({"n_clusters": True}, X5, r"n_clusters=True must be an integer"),
    ({"n_clusters": 2, "init": "kmeans++"}, X5, r"init='kmeans\+\+' must be one of"),
    ({"n_clusters": 2, "n_iters": -1}, X5, r"n_iters=-1 must be >= 0"),
    ({"n_clusters": 2, "tol": -0.1}, X5, r"tol=-0.1 must be >= 0"),
    ({"n_clusters": 2, "tol": math.nan}, X5, r"tol=nan must be None or a finite number"),
    ({"n_clusters": 2, "random_state": -3}, X5, r"random_state=-3 must be >= 0"),
    ({"n_clusters": 2, "random_state": "a"}, X5, r"random_state='a' must be None, an integer"),
    ({"n_clusters": 2, "dtype": "int8"}, X5, r"dtype='int8' must be one of"),
    ({"n_clusters": 2, "device": "tpu"}, X5, r"device='tpu' is not a torch device"),
    ({"n_clusters": 2, "block_size": 0}, X5, r"block_size=0 must be >= 1"),
    ({"n_clusters": 2, "centroid_block_size": -1}, X5, r"centroid_block_size=-1 must be >= 1"),
    ({"n_clusters": 2, "bounds": "yes"}, X5, r"bounds=.yes. must be True, False or None"),
    ({"n_clusters": 2}, np.array([[0.0, 1.0], [np.nan, 2.0], [3, 4]]), r"non-finite.*row 1"),
    ({"n_clusters": 2}, np.array([[0.0, 1.0], [1.0, 2.0], [3, np.inf]]), r"non-finite.*row 2"),
    ({"n_clusters": 2}, np.array([[0.0], [1e39]]), r"non-finite.*float32.*row 1"),
    ({"n_clusters": 2}, np.arange(5.0), r"X must be 2-D \(n_samples, n_features\); got shape"),
    ({"n_clusters": 1}, np.zeros((0, 3)), r"at least one row and one column"),
    ({"n_clusters": 1}, np.array([["a", "b"]]), r"X has dtype <U1; expected a real numeric"),
]


@pytest.mark.parametrize(
    ("params", "x", "message"),
    KMEANS_ERRORS,
    ids=[
        "k>n",
        "k0",
        "k-float",
        "k-bool",
        "init",
        "n_iters",
        "tol",
        "tol-nan",
        "seed-neg",
        "seed-str",
        "dtype",
        "device",
        "block",
        "centroid-block",
        "bounds",
        "nan",
        "inf",
        "overflow",
        "1d",
        "empty",
        "strings",
    ],
)
def test_kmeans_validation(params: dict, x: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        KMeans(**params).fit(x)
    assert isinstance(info.value, ValueError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(InvalidArgumentError, match="CUDA is not available"):
        KMeans(2, device="cuda").fit(X5)


X40 = blobs(n_per=10, k=4, d=2)[0]

HIER_ERRORS = [
    ({"n_clusters": [50]}, r"n_clusters\[0\]=50 must be <= n_samples=40"),
    ({"n_clusters": [8, 9]}, r"n_clusters\[1\]=9 must be <= n_clusters\[0\]=8 \(the inputs"),
    ({"n_clusters": 8}, r"n_clusters=8 must be a list with one integer per level"),
    ({"n_clusters": [8, 4], "n_levels": 3}, r"n_clusters has 2 entries .* but n_levels=3"),
    ({"n_clusters": [8, 4], "n_iters": [5]}, r"n_iters has 1 entries \(\[5\]\) but n_levels=2"),
    (
        {"n_clusters": [8, 4], "n_resampling_steps": [1, 2, 3]},
        r"n_resampling_steps has 3 entries",
    ),
    (
        {"n_clusters": [8, 4], "sampling_strategy": ["r", "x"]},
        r"sampling_strategy\[1\]='x' must be one of 'r', 'c'",
    ),
    (
        {"n_clusters": [8, 4], "n_splits": [2, 1], "n_resampling_steps": [2, 1], "sample_size": 3},
        r"n_splits\[0\]=2 and n_resampling_steps\[0\]=2: splits and resampling cannot be",
    ),
    (
        {"n_clusters": [8, 4], "n_resampling_steps": [1, 3]},
        r"sample_size\[1\]=None but n_resampling_steps\[1\]=3",
    ),
    ({"n_clusters": [8, 4], "sample_size": [0, 2]}, r"sample_size\[0\]=0 must be >= 1"),
    ({"n_clusters": [8, 0]}, r"n_clusters\[1\]=0 must be >= 1"),
    ({"n_clusters": [8, 4], "n_splits": [1, 0]}, r"n_splits\[1\]=0 must be >= 1"),
    ({"n_clusters": [8, 4], "init": "greedy"}, r"init='greedy' must be one of"),
]


@pytest.mark.parametrize(
    ("params", "message"),
    HIER_ERRORS,
    ids=[
        "k0>n",
        "k1>k0",
        "scalar-k",
        "n_levels",
        "n_iters-len",
        "steps-len",
        "strategy",
        "splits+resampling",
        "no-sample-size",
        "sample-size0",
        "k1-zero",
        "splits0",
        "init",
    ],
)
def test_hierarchical_validation(params: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        HierarchicalKMeans(**params).fit(X40)


def test_runtime_level_checks() -> None:
    # after a split the next level's inputs are only known at run time
    x = np.array([[0.0], [0.0], [0.0], [9.0]], np.float32)
    with pytest.raises(InvalidArgumentError, match=r"n_clusters\[1\]=3 must be <= 2, the number"):
        HierarchicalKMeans([2, 3], n_splits=[2, 1], random_state=0).fit(x)
    h = HierarchicalKMeans([2, 1], random_state=0).fit(x)
    with pytest.raises(InvalidArgumentError, match=r"level=2 must be <= 1"):
        h.point_labels(2)
    with pytest.raises(InvalidArgumentError, match=r"last_level=5 must be <= 1"):
        HierarchicalKMeans([2, 1]).fit(x, last_level=5)
    with pytest.raises(InvalidArgumentError, match=r"completed_levels has 2 levels but"):
        HierarchicalKMeans([2, 1]).fit(x, completed_levels=h.levels_, last_level=0)


def test_resampling_pool_too_small_is_explained() -> None:
    # 3 clusters, one of them empty after reassignment cannot happen with k-means++ here,
    # so force it through a centroid that no input is closest to: k = n and s = 1 with
    # duplicates (two identical inputs give one empty cluster)
    x = np.array([[0.0], [0.0], [5.0]], np.float32)
    with pytest.raises(InvalidArgumentError, match=r"pooled only 2 inputs for n_clusters=3"):
        cluster_level(x, 3, n_resampling_steps=2, sample_size=1, random_state=0)


def test_assign_validation() -> None:
    with pytest.raises(InvalidArgumentError, match=r"centroids have 3 features but X has 2"):
        assign(X5, np.zeros((2, 3)))


# --------------------------------------------------------------------------------------
# CUDA equivalence
# --------------------------------------------------------------------------------------


CUDA_CASES = {
    # well separated blobs, one cluster per blob: no near ties, so float32 agrees exactly
    "f32-one-cluster-per-blob": ("float32", 10, [10, 4], [3, 3], [50, 2]),
    # clusters that cut blobs have near ties; float64 makes rounding differences negligible
    "f64-clusters-cut-blobs": ("float64", 25, [60, 12], [3, 3], [4, 3]),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("case", list(CUDA_CASES), ids=list(CUDA_CASES))
def test_cuda_matches_cpu(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dtype, k, levels, steps, sizes = CUDA_CASES[case]
    x, _ = blobs(n_per=300, k=10, d=16, spread=20.0, seed=4)
    kw = {"n_iters": 10, "random_state": 6, "dtype": dtype}
    cpu = KMeans(k, **kw).fit(x)
    gpu = KMeans(k, device="cuda", **kw).fit(x)
    np.testing.assert_array_equal(gpu.init_indices_, cpu.init_indices_)
    np.testing.assert_array_equal(gpu.labels_, cpu.labels_)
    np.testing.assert_allclose(gpu.cluster_centers_, cpu.cluster_centers_, rtol=1e-5, atol=1e-4)
    assert gpu.inertia_ == pytest.approx(cpu.inertia_, rel=1e-5)
    cfg = {"n_clusters": levels, "n_resampling_steps": steps, "sample_size": sizes, **kw}
    hc = HierarchicalKMeans(**cfg).fit(x)
    hg = HierarchicalKMeans(**cfg, device="cuda").fit(torch.from_numpy(x).cuda())
    for lvl in range(2):
        np.testing.assert_array_equal(hg.labels_[lvl], hc.labels_[lvl])
        np.testing.assert_allclose(hg.centroids_[lvl], hc.centroids_[lvl], rtol=1e-5, atol=1e-4)
    # rows copied to the GPU block by block on every pass give the same result
    monkeypatch.setattr(km_rows, "_PRELOAD_FRACTION_CUDA", 0.0)
    streamed = KMeans(k, device="cuda", block_size=257, **kw).fit(x)
    np.testing.assert_array_equal(streamed.labels_, gpu.labels_)
    labels, _ = assign(x, cpu.cluster_centers_, device="cuda", dtype=dtype)
    np.testing.assert_array_equal(labels, cpu.labels_)
