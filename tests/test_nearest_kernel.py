"""The fused TF32 nearest-centroid kernel (astrocurate.algorithms.kmeans.nearest_kernel).

Without a GPU the kernel's logic runs in Triton's numpy interpreter (``TRITON_INTERPRET=1``,
set before Triton wraps the kernel, hence a subprocess): its labels must equal
``torch.argmin`` of the float32 scores, ties and ragged tiles included, and a k-means fit
through it must equal the plain CPU fit. On a CUDA machine the TF32 labels are checked
against exact distances.
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

from astrocurate.algorithms.kmeans.assignment import fused_assignment
from astrocurate.algorithms.kmeans.bounds import score_error_factor
from astrocurate.algorithms.kmeans.estimator import KMeans
from astrocurate.algorithms.kmeans.hierarchical import HierarchicalKMeans
from triton_kernels import kernel_cannot_build, kernel_warnings

pytest.importorskip("triton")

INTERPRETED = textwrap.dedent(
    """
    import json
    import numpy as np
    import torch
    from astrocurate.algorithms.kmeans import nearest_kernel
    from astrocurate.algorithms.kmeans.estimator import KMeans

    out = {"cases": []}
    gen = torch.Generator().manual_seed(0)
    # ragged row and centroid tiles, d below, at and above one 16-wide feature step
    for n, k, d in [(1, 1, 3), (37, 5, 3), (100, 33, 40), (257, 70, 16), (64, 17, 33)]:
        x = torch.randn(n, d, generator=gen)
        c = torch.randn(k, d, generator=gen)
        if k > 4:
            c[4] = c[1]  # an exact duplicate: the first of the two must win
        c_sq = (c * c).sum(1)
        ref = torch.argmin(c_sq - 2 * x @ c.T, dim=1)
        got = nearest_kernel.nearest(x, c, c_sq)
        out["cases"].append([n, k, d, bool(torch.equal(got, ref)), got.dtype == torch.int64])
    # rows that are a strided view (every other row of a bigger matrix)
    big = torch.randn(80, 24, generator=gen)
    c = torch.randn(19, 24, generator=gen)
    c_sq = (c * c).sum(1)
    got = nearest_kernel.nearest(big[::2], c, c_sq)
    out["strided"] = bool(torch.equal(got, torch.argmin(c_sq - 2 * big[::2] @ c.T, dim=1)))
    out["empty"] = list(nearest_kernel.nearest(big[:0], c, c_sq).shape)
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(500, 8)) + rng.integers(0, 6, size=(500, 1)) * 4).astype(np.float32)
    km = KMeans(12, n_iters=4, random_state=1).fit(x)
    out["fit"] = {"labels": km.labels_.tolist(), "centers": km.cluster_centers_.tolist(),
                  "recomputed": km.n_recomputed_}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_interpreted_kernel_labels_equal_torch_argmin(interpreted: dict) -> None:
    for n, k, d, equal, int64 in interpreted["cases"]:
        assert equal, f"labels differ for n={n} k={k} d={d}"
        assert int64
    assert interpreted["strided"]
    assert interpreted["empty"] == [0]


def test_interpreted_fit_equals_plain_cpu_fit(interpreted: dict) -> None:
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(500, 8)) + rng.integers(0, 6, size=(500, 1)) * 4).astype(np.float32)
    plain = KMeans(12, n_iters=4, random_state=1, bounds=False).fit(x)
    fused = interpreted["fit"]
    np.testing.assert_array_equal(np.asarray(fused["labels"]), plain.labels_)
    np.testing.assert_array_equal(np.asarray(fused["centers"], np.float32), plain.cluster_centers_)
    assert fused["recomputed"] == []  # no bounds by default where the fused kernel assigns


def test_fused_assignment_only_for_float32_tf32_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """On GPUs with TF32 tensor cores (compute capability 8.0 on); older ones take cuBLAS."""
    from astrocurate.algorithms.kmeans import assignment

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for capability, fused in (((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)):
        assignment._has_tf32_cores.cache_clear()
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert fused_assignment(cuda, torch.float32, "tf32") is fused
    assignment._has_tf32_cores.cache_clear()
    assert not fused_assignment(cuda, torch.float32, "highest")
    assert not fused_assignment(cuda, torch.float64, "tf32")
    assert not fused_assignment(cpu, torch.float32, "tf32")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert fused_assignment(cpu, torch.float32, "highest")
    assert not fused_assignment(cpu, torch.float64, "highest")


COMPILED = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from astrocurate.algorithms.kmeans import nearest_kernel as nk

    types = {"x_ptr": "*fp32", "c_ptr": "*fp32", "c_sq_ptr": "*fp32", "labels_ptr": "*i64",
             "n": "i32", "k": "i32", "d": "i32", "stride_x": "i32", "stride_c": "i32"}
    signature = {name: types.get(name, "constexpr") for name in nk._nearest_kernel.arg_names}
    limits = {80: 163 << 10, 86: 99 << 10, 90: 227 << 10}  # shared memory of a block, bytes
    for arch, limit in limits.items():
        for tried, (m, n, k, warps, stages) in enumerate(nk._GPU_TILES, 1):
            tile = {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}
            options = {"num_warps": warps, "num_stages": stages}
            src = ASTSource(nk._nearest_kernel, signature, tile)
            kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
            if kernel.asm["cubin"] and kernel.metadata.shared <= limit:
                print("sm_%d: tile %d fits" % (arch, tried))
                break
        else:
            print("sm_%d: no tile fits" % arch)
    """
)


def test_the_kernel_compiles_with_tiles_that_fit_every_tf32_gpu_without_a_gpu(tmp_path) -> None:
    """The autotuner drops the tiles a GPU has too little shared memory for; on every GPU
    with TF32 tensor cores (A100, A10 and RTX 30/40 with less, H100) one must be left."""
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-c", COMPILED], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["sm_80", "sm_86", "sm_90"]
    assert not [line for line in lines if "no tile" in line], lines


def test_a_kernel_that_cannot_build_hands_the_assignment_to_the_plain_steps(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No C compiler for Triton's launcher: the block is assigned by the plain product,
    the fused kernels stay off (one warning). Other errors propagate."""
    from astrocurate.algorithms.kmeans import assignment, nearest_kernel

    error = RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
    calls = kernel_cannot_build(monkeypatch, "nearest_kernel", "nearest", error)
    gen = torch.Generator().manual_seed(4)
    x, centers = torch.randn((300, 8), generator=gen), torch.randn((20, 8), generator=gen)
    c_sq = (centers * centers).sum(dim=1)
    expected = torch.cdist(x, centers).argmin(dim=1)
    for _ in range(2):
        assert torch.equal(assignment.nearest(x, centers, c_sq, centroid_block=7), expected)
    assert calls == [0]
    assert not assignment.fused_seeding(torch.device("cpu"), torch.float32)
    warnings = kernel_warnings(caplog)
    assert len(warnings) == 1 and "RuntimeError: Failed to find C compiler" in warnings[0]

    monkeypatch.setattr(assignment, "_KERNEL_FAILURE", [])
    monkeypatch.setattr(nearest_kernel, "nearest", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        assignment.nearest(x, centers, c_sq, centroid_block=7)
    assert assignment.fused_seeding(torch.device("cpu"), torch.float32)


def test_bounds_default_prunes_on_the_cpu() -> None:
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(500, 8)) + rng.integers(0, 6, size=(500, 1)) * 4).astype(np.float32)
    default = KMeans(12, n_iters=4, random_state=1).fit(x)
    assert len(default.n_recomputed_) == 5  # one count per Lloyd pass: bounds are on


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_tf32_labels_are_nearest_within_the_tf32_error() -> None:
    from astrocurate.algorithms.kmeans import nearest_kernel

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(20_000, 384, device="cuda", generator=gen)
    c = torch.randn(3_000, 384, device="cuda", generator=gen)
    c[7] = c[2]
    c_sq = (c * c).sum(1)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        got = nearest_kernel.nearest(x, c, c_sq)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    exact = torch.cdist(x.double(), c.double()).square_()
    best = exact.min(dim=1).values
    chosen = exact.gather(1, got[:, None]).squeeze(1)
    rho = score_error_factor(torch.float32, 384, x.device) + 2.0**-9
    bound = 2 * rho * (x.double().norm(dim=1) + c.double().norm(dim=1).max()) ** 2
    assert bool((chosen - best <= bound).all())
    assert float((got == exact.argmin(dim=1)).double().mean()) > 0.9
    assert not bool((got == 7).any())  # the duplicate of centre 2 never wins


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_tf32_fit_matches_cpu_on_separated_blobs() -> None:
    rng = np.random.default_rng(5)
    means = rng.normal(scale=20.0, size=(10, 16))
    x = (means[rng.integers(0, 10, 3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    kw = {"n_iters": 10, "random_state": 6}
    cpu = KMeans(10, **kw).fit(x)
    gpu = KMeans(10, device="cuda", matmul_precision="tf32", **kw).fit(x)
    np.testing.assert_array_equal(gpu.labels_, cpu.labels_)
    np.testing.assert_allclose(gpu.cluster_centers_, cpu.cluster_centers_, rtol=1e-5, atol=1e-4)
    cfg = {"n_clusters": [10, 3], "n_resampling_steps": [2, 2], "sample_size": [50, 3], **kw}
    hc = HierarchicalKMeans(**cfg).fit(x)
    hg = HierarchicalKMeans(**cfg, device="cuda", matmul_precision="tf32").fit(x)
    for lvl in range(2):
        np.testing.assert_array_equal(hg.labels_[lvl], hc.labels_[lvl])
