"""Greedy k-means++ in the fused Triton kernels (astrocurate.algorithms.kmeans.seeding_kernel).

Without a GPU the kernels run in Triton's numpy interpreter (``TRITON_INTERPRET=1``, set
before Triton wraps them, hence a subprocess): the kernels must score exactly the rows the
bounds keep and move exactly those that a plain step would, and a seeding through them must
choose the rows of the plain CPU seeding, across batches, when the potential falls to zero,
and when resumed. On a CUDA machine the fused steps are checked against the plain ones and
counted for waits on the device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from astrocurate.algorithms.kmeans.estimator import KMeans
from host_reads import CudaSyncsPerCallback
from kmeans_data import mixture, ties
from triton_kernels import kernel_cannot_build, kernel_warnings

pytest.importorskip("triton")

K = 40


def _repeated() -> np.ndarray:
    """60 distinct points, each three times: 70 centres exhaust the potential (small
    integers, so that a copy's squared distance to its chosen twin is exactly 0)."""
    return np.repeat(np.round(mixture(60, 8, 5, 2) * 4), 3, axis=0)


#: name: (rows, centres)
CASES = {
    "mixture": (lambda: mixture(700, 24, 12, 8), K),
    "ties": (ties, K),
    "repeated": (_repeated, 70),
}

INTERPRETED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from astrocurate.algorithms.kmeans import seeding, seeding_kernel
    from astrocurate.algorithms.kmeans.estimator import KMeans, KMeansState
    sys.path.insert(0, sys.argv[1])
    from test_seeding_kernel import CASES, K

    calls = {"fused": 0, "plain": 0}
    fused, plain = seeding.GreedySeeding.fused_steps, seeding.GreedySeeding.step
    def counted_fused(self, *args):
        calls["fused"] += 1
        return fused(self, *args)
    def counted_plain(self, *args):
        calls["plain"] += 1
        return plain(self, *args)
    seeding.GreedySeeding.fused_steps = counted_fused
    seeding.GreedySeeding.step = counted_plain

    def fit(x, k=K, **kw):
        calls.update(fused=0, plain=0)
        callbacks = []
        km = KMeans(k, n_iters=0, random_state=3).fit(
            x, callback=lambda s: callbacks.append(s.step) if s.phase == "init" else None, **kw)
        return {"init": km.init_indices_.tolist(), "centers": km.cluster_centers_.tolist(),
                "callbacks": callbacks, **calls}

    mixture = CASES["mixture"][0]
    out = {name: fit(make(), k) for name, (make, k) in CASES.items()}
    seeding_kernel._INTERPRETER_BLOCK_ROWS = 64  # the GPU's: many programs per launch
    out["gpu_blocks"] = {name: fit(make(), k) for name, (make, k) in CASES.items()}
    seeding_kernel._INTERPRETER_BLOCK_ROWS = 1024
    out["column_major"] = fit(torch.from_numpy(np.asfortranarray(mixture())))
    seeding.FUSED_BATCH = 7
    out["batches_of_7"] = fit(mixture())
    repeated = fit(CASES["repeated"][0](), 70)
    out["batches_of_7_repeated"] = {**repeated, "same": repeated["init"] == out["repeated"]["init"]}
    saved = {}
    class Stop(Exception):
        pass
    def stop(state):
        if state.phase == "init" and state.step >= 15:
            saved.update(state.state_dict())
            raise Stop
    try:
        KMeans(K, n_iters=0, random_state=3).fit(mixture(), callback=stop)
    except Stop:
        pass
    out["resumed_at"] = saved["step"]
    out["resumed"] = fit(mixture(), state=KMeansState.from_state_dict(saved))

    # the kernels alone, against torch on the same inputs
    gen = torch.Generator().manual_seed(0)
    n, d, L = 3000, 40, 11
    x = torch.randn(n, d, generator=gen) * 3
    x_sq = (x * x).sum(1)
    d2 = torch.rand(n, generator=gen) * 40
    nearest = torch.randint(0, 50, (n,), generator=gen)
    closest = torch.rand(50, generator=gen) * 200
    rho = 1e-3
    cand = torch.randint(0, n, (L,), generator=gen)
    cx = x[cand]
    cx_sq = (cx * cx).sum(1)
    largest = torch.tensor([x_sq.max(), -1.0, 0.0], dtype=torch.float64)
    new = torch.full((n, seeding_kernel.candidate_columns(L)), float("nan"))
    kept = torch.full((n,), 7, dtype=torch.int8)
    gains = seeding_kernel.score_candidates(
        x, x_sq, d2, nearest, closest, largest, rho, cx, cx_sq, (new, kept))
    err5 = 20 * rho * max(float(x_sq.max()), float(cx_sq.max()))
    keep = closest.double()[nearest] < 4 * d2.double() + err5
    ref = (torch.addmm(cx_sq, x, cx.T, alpha=-2) + x_sq[:, None]).clamp(min=0)
    ref = torch.minimum(ref, d2[:, None])
    ref_gains = ((d2.double()[:, None] - ref.double()) * keep.double()[:, None]).sum(0)
    best = ref_gains.argmax().view(1)
    total = torch.tensor([2.5], dtype=torch.float64)
    centers, c_sq = torch.zeros(90, d), torch.zeros(90)
    chosen, totals = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    record = (centers, c_sq, chosen, totals)
    d2_out, nearest_out = d2.clone(), nearest.clone()
    seeding_kernel.move_rows(d2_out, nearest_out, largest, cx, cx_sq, (new, kept), best,
                             cand, total, record, 77, 0)
    b = int(best)
    moved = keep & (ref[:, b] < d2)
    want_d2 = torch.where(moved, ref[:, b], d2)
    want_d2[cand[b]] = 0
    want_nearest = torch.where(moved, 77, nearest)
    want_nearest[cand[b]] = 77
    stay_d2, stay_nearest = torch.zeros_like(d2), nearest.clone()  # a zero total: all stays
    seeding_kernel.move_rows(stay_d2, stay_nearest, largest[1:], cx, cx_sq, (new, kept),
                             best, cand, total * 0, record, 5, 1)
    out["kernels"] = {
        "kept": int(keep.sum()),
        "keep_marked": bool(torch.equal(kept, keep.to(torch.int8))),
        "unwritten_nan": bool(new[~keep].isnan().all()),
        "written": bool(not new[keep][:, :L].isnan().any()),
        "new_error": float((new[keep][:, :L] - ref[keep]).abs().max()),
        "gain_error": float(((gains - ref_gains).abs() / ref_gains.abs().max()).max()),
        "argmax_equal": int(gains.argmax()) == int(best),
        "d2_equal": bool(torch.equal(d2_out, want_d2)),
        "nearest_equal": bool(torch.equal(nearest_out, want_nearest)),
        "recorded": bool(torch.equal(centers[77], cx[b]) and c_sq[77] == cx_sq[b]
                         and chosen[0] == cand[b] and totals.tolist() == [2.5, 0.0, 0.0]
                         and largest[1] == max(float(x_sq.max()), float(cx_sq[b]))
                         and torch.equal(centers[5], cx[b]) and largest[2] == largest[1]),
        "zero_total_unchanged": bool(torch.equal(stay_nearest, nearest) and not stay_d2.any()),
    }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    here = os.path.dirname(__file__)
    proc = subprocess.run(
        [sys.executable, "-c", INTERPRETED, here],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plain(case: str) -> KMeans:
    make, k = CASES[case]
    return KMeans(k, n_iters=0, random_state=3).fit(make())


@pytest.mark.parametrize("blocks", ["interpreter", "gpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_seeding_chooses_the_rows_of_the_plain_cpu_seeding(
    interpreted: dict, case: str, blocks: str
) -> None:
    """With the interpreter's 1024 rows per program and with the GPU's 64."""
    ref = _plain(case)
    got = interpreted[case] if blocks == "interpreter" else interpreted["gpu_blocks"][case]
    np.testing.assert_array_equal(got["init"], ref.init_indices_)
    np.testing.assert_array_equal(np.asarray(got["centers"], np.float32), ref.cluster_centers_)


def test_kernels_that_cannot_build_hand_the_seeding_to_the_plain_steps(monkeypatch, caplog):
    """A kernel that Triton cannot build here (``ptxas`` too old for it, say) fails its
    first step before anything moved: the generator is rewound, the plain steps choose the
    same rows, and the fused kernels stay off, with one warning. Other errors propagate."""
    from triton.runtime.errors import PTXASError

    from astrocurate.algorithms.kmeans import assignment, seeding_kernel

    error = PTXASError("ptxas fatal: Unsupported .version 9.0")
    calls = kernel_cannot_build(monkeypatch, "seeding_kernel", "score_candidates", error)
    x = mixture(700, 24, 12, 8)
    got = KMeans(K, n_iters=0, random_state=3, bounds=True).fit(x)
    assert calls == [0]  # tried once, then the plain steps for good
    np.testing.assert_array_equal(got.init_indices_, _plain("mixture").init_indices_)
    warnings = kernel_warnings(caplog)
    assert len(warnings) == 1 and "PTXASError: PTXAS error: ptxas fatal" in warnings[0]

    monkeypatch.setattr(assignment, "_KERNEL_FAILURE", [])

    def broken(*args):
        raise ValueError("a bug of ours")

    monkeypatch.setattr(seeding_kernel, "score_candidates", broken)
    with pytest.raises(ValueError, match="a bug of ours"):
        KMeans(K, n_iters=0, random_state=3, bounds=True).fit(x)


def test_rows_not_contiguous_take_the_plain_steps(interpreted: dict) -> None:
    got = interpreted["column_major"]
    assert (got["fused"], got["plain"]) == (0, K - 1)
    np.testing.assert_array_equal(got["init"], interpreted["mixture"]["init"])


def test_fused_steps_run_in_batches_with_one_callback_each(interpreted: dict) -> None:
    """Centre 0 is the plain first draw; then batches of 64 (all 39 steps in one)."""
    got = interpreted["mixture"]
    assert got["callbacks"] == [1, K]
    assert (got["fused"], got["plain"]) == (1, 0)
    small = interpreted["batches_of_7"]
    assert small["callbacks"] == [1, *range(8, K, 7), K]
    np.testing.assert_array_equal(small["init"], got["init"])


def test_a_zero_potential_hands_the_remaining_steps_to_the_plain_path(interpreted: dict) -> None:
    """36 distinct points, 40 centres: the fused batch keeps 35 (36 centres in all), the
    steps after are undone and chosen by the plain step, as on the CPU. With 60 distinct
    points and 70 centres the batch after the zero is not tried: plain steps to the end."""
    got = interpreted["ties"]
    assert got["fused"] == 1 and got["plain"] == K - 36
    repeated = interpreted["batches_of_7_repeated"]
    assert repeated["fused"] == 9 and repeated["plain"] == 70 - 60 and repeated["same"]


def test_fused_seeding_resumes_from_a_saved_batch(interpreted: dict) -> None:
    assert interpreted["resumed_at"] == 15  # saved at the end of the third batch of 7
    np.testing.assert_array_equal(interpreted["resumed"]["init"], _plain("mixture").init_indices_)


def test_the_kernels_score_and_move_exactly_the_rows_the_bounds_keep(interpreted: dict) -> None:
    got = interpreted["kernels"]
    assert 0 < got["kept"] < 3000  # the bounds keep some rows and leave others out
    assert got["keep_marked"] and got["unwritten_nan"] and got["written"]
    assert got["new_error"] < 1e-3 and got["gain_error"] < 1e-6
    assert got["argmax_equal"] and got["d2_equal"] and got["nearest_equal"]
    assert got["zero_total_unchanged"] and got["recorded"]


COMPILED = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from astrocurate.algorithms.kmeans import seeding_kernel as sk

    def signature(fn, types):
        return {name: types.get(name, "constexpr") for name in fn.arg_names}

    f32, f64, i32, i64 = "*fp32", "*fp64", "i32", "*i64"
    score = signature(sk._score_kernel, {
        "x_ptr": f32, "x_sq_ptr": f32, "d2_ptr": f32, "nearest_ptr": i64, "closest_ptr": f32,
        "largest_ptr": f64, "cx_ptr": f32, "cx_sq_ptr": f32, "new_ptr": f32, "keep_ptr": "*i8",
        "gains_ptr": f64, "n": i32, "d": i32, "n_cand": i32, "rho20": "fp64", "stride_x": i32,
        "stride_c": i32})
    move = signature(sk._move_kernel, {
        "d2_ptr": f32, "nearest_ptr": i64, "largest_ptr": f64, "cx_ptr": f32,
        "cx_sq_ptr": f32, "new_ptr": f32, "keep_ptr": "*i8", "best_ptr": i64, "cand_ptr": i64,
        "total_ptr": f64, "centers_ptr": f32, "c_sq_ptr": f32, "chosen_ptr": f64,
        "totals_ptr": f64, "n": i32, "d": i32, "step": i32, "t": i32, "stride_c": i32,
        "stride_centers": i32})
    tiles = {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 32}
    # the largest shared memory a block may have, in bytes (CUDA's table by generation)
    limits = {70: 96 << 10, 75: 64 << 10, 80: 163 << 10, 86: 99 << 10, 90: 227 << 10}
    for arch, limit in limits.items():
        target = GPUTarget("cuda", arch, 32)
        precisions = ("tf32", "ieee") if arch in (80, 90) else ("tf32",)
        sources = [
            ASTSource(sk._score_kernel, score, {**tiles, "PRECISION": precision})
            for precision in precisions
        ]
        for src in [*sources, ASTSource(sk._move_kernel, move, tiles)]:
            kernel = triton.compile(src, target=target, options={"num_warps": 4})
            assert kernel.asm["cubin"] and kernel.metadata.shared <= limit, arch
        print("compiled for sm_%d" % arch)
    """
)


def test_the_kernels_compile_for_every_gpu_generation_without_a_gpu(tmp_path) -> None:
    """Triton compiles for a named GPU without one: the interpreter does not check types,
    the compiler does (to PTX and SASS with the ptxas that Triton ships). Volta (V100),
    Turing (T4), Ampere (A100; A10 and RTX 30 with less shared memory) and Hopper, each
    within the shared memory a block may have there."""
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-c", COMPILED], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:-1] == [f"compiled for sm_{a}" for a in (70, 75, 80, 86, 90)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_seeding_on_cuda_chooses_the_plain_rows_and_waits_twice_per_batch() -> None:
    x = mixture(20_000, 32, 50, 4)
    k = 300
    plain = KMeans(k, n_iters=0, random_state=5).fit(x)
    with CudaSyncsPerCallback() as syncs:
        fused = KMeans(k, n_iters=0, random_state=5, device="cuda").fit(
            torch.from_numpy(x).cuda(), callback=syncs
        )
    np.testing.assert_array_equal(fused.init_indices_, plain.init_indices_)
    assert len(syncs.counts) == 1 + -(-(k - 1) // 64)  # the first centre, then batches of 64
    assert max(syncs.counts[2:]) <= 2  # is the potential zero? then the batch's results
