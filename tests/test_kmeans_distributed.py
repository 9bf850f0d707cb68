"""torch.distributed k-means: real ``torchrun`` (and srun-style) launches on the CPU with gloo.

Two ranks share the rows of a memory-mapped ``.npy``; the result must equal the one-process
result for the same seed: the same initial centres and labels, and centroids equal up to
the order of the float64 sums.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from astrocurate.algorithms.kmeans.assignment import assign
from astrocurate.algorithms.kmeans.estimator import KMeans
from astrocurate.algorithms.kmeans.hierarchical import HierarchicalKMeans
from astrocurate.errors import InvalidArgumentError

TORCHRUN = Path(sys.executable).with_name("torchrun")

#: Run by every rank: fit on the memmap, rank 0 saves what it learned.
WORKER = """
import sys
import numpy as np
import torch
from astrocurate.algorithms.kmeans.distributed import init_distributed
from astrocurate.algorithms.kmeans.hierarchical import HierarchicalKMeans
from astrocurate.algorithms.kmeans.assignment import assign
from astrocurate.algorithms.kmeans.estimator import KMeans

torch.set_num_threads(1)
data, out = sys.argv[1], sys.argv[2]
rank, world = init_distributed()
x = np.load(data, mmap_mode="r")
res = {"world": np.array(world)}
for init in ("k-means++", "random"):
    km = KMeans(7, init=init, n_iters=6, random_state=3).fit(x)
    res[f"{init}_centers"] = km.cluster_centers_
    res[f"{init}_labels"] = km.labels_
    res[f"{init}_sq"] = km.sq_distances_
    res[f"{init}_init"] = km.init_indices_
    res[f"{init}_history"] = np.array(km.potential_history_)
    res[f"{init}_ranks"] = np.array(km.n_ranks_)
    full = KMeans(7, init=init, n_iters=6, random_state=3, bounds=False).fit(x)
    res[f"{init}_full_centers"] = full.cluster_centers_
    res[f"{init}_full_labels"] = full.labels_
    res[f"{init}_recomputed"] = np.array(km.n_recomputed_)
h = HierarchicalKMeans(
    [12, 4], n_iters=5, n_resampling_steps=[3, 2], sample_size=[6, 2],
    sampling_strategy=["c", "r"], random_state=5,
).fit(x)
for lvl in range(2):
    res[f"h{lvl}_centers"] = h.centroids_[lvl]
    res[f"h{lvl}_labels"] = h.labels_[lvl]
labels, _ = assign(x, res["k-means++_centers"])
res["assign_labels"] = labels
res["dense_init"] = KMeans(200, n_iters=0, random_state=2).fit(x).init_indices_
ties = np.repeat(x[:6], 5, axis=0)
res["ties_init"] = KMeans(10, n_iters=0, random_state=4).fit(ties).init_indices_
if rank == 0:
    np.savez(out, **res)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded, like the workers: the data are tiny and the runner is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An odd number of rows (the two slices differ in length) of overlapping blobs."""
    rng = np.random.default_rng(11)
    means = rng.uniform(-6, 6, (9, 5))
    x = np.concatenate([rng.normal(m, 1.0, (rng.integers(20, 90), 5)) for m in means])
    x = x[rng.permutation(len(x))].astype(np.float32)
    if len(x) % 2 == 0:
        x = x[1:]
    path = tmp_path_factory.mktemp("dist") / "x.npy"
    np.save(path, x)
    return path


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_text(WORKER)
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD"))}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_process(x: np.ndarray) -> dict[str, np.ndarray]:
    """What the worker computes, in this process alone."""
    res = {}
    for init in ("k-means++", "random"):
        km = KMeans(7, init=init, n_iters=6, random_state=3).fit(x)
        res[f"{init}_centers"] = km.cluster_centers_
        res[f"{init}_labels"] = km.labels_
        res[f"{init}_sq"] = km.sq_distances_
        res[f"{init}_init"] = km.init_indices_
        res[f"{init}_history"] = np.array(km.potential_history_)
    h = HierarchicalKMeans(
        [12, 4],
        n_iters=5,
        n_resampling_steps=[3, 2],
        sample_size=[6, 2],
        sampling_strategy=["c", "r"],
        random_state=5,
    ).fit(x)
    for lvl in range(2):
        res[f"h{lvl}_centers"] = h.centroids_[lvl]
        res[f"h{lvl}_labels"] = h.labels_[lvl]
    # 200 centres for 465 rows: the k-means++ bounds leave most rows of each rank out
    res["dense_init"] = KMeans(200, n_iters=0, random_state=2).fit(x).init_indices_
    # 10 centres for 6 distinct rows: the potential reaches 0 and the last 4 are drawn uniformly
    ties = np.repeat(x[:6], 5, axis=0)
    res["ties_init"] = KMeans(10, n_iters=0, random_state=4).fit(ties).init_indices_
    return res


def _check_equal(got: np.lib.npyio.NpzFile, ref: dict[str, np.ndarray]) -> None:
    for init in ("k-means++", "random"):
        assert int(got[f"{init}_ranks"]) == 2, "the fit was not shared by the two ranks"
        np.testing.assert_array_equal(got[f"{init}_init"], ref[f"{init}_init"])
        np.testing.assert_array_equal(got[f"{init}_labels"], ref[f"{init}_labels"])
        np.testing.assert_allclose(got[f"{init}_centers"], ref[f"{init}_centers"], rtol=1e-6)
        np.testing.assert_allclose(got[f"{init}_sq"], ref[f"{init}_sq"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[f"{init}_history"], ref[f"{init}_history"], rtol=1e-9)
        # the pruned passes (bounds per rank) equal the full ones of the same ranks
        np.testing.assert_array_equal(got[f"{init}_full_labels"], got[f"{init}_labels"])
        np.testing.assert_array_equal(got[f"{init}_full_centers"], got[f"{init}_centers"])
        assert len(got[f"{init}_recomputed"]) == 7  # rank 0's rows, per pass
    for lvl in range(2):
        np.testing.assert_array_equal(got[f"h{lvl}_labels"], ref[f"h{lvl}_labels"])
        np.testing.assert_allclose(got[f"h{lvl}_centers"], ref[f"h{lvl}_centers"], rtol=1e-6)
    np.testing.assert_array_equal(got["assign_labels"], ref["k-means++_labels"])
    np.testing.assert_array_equal(got["dense_init"], ref["dense_init"])
    np.testing.assert_array_equal(got["ties_init"], ref["ties_init"])


def test_torchrun_two_ranks_equal_one_process(data: Path, worker: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(worker), str(data), str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = np.load(out)
    assert int(got["world"]) == 2
    _check_equal(got, _one_process(np.load(data)))


def test_srun_variables_two_ranks_equal_one_process(
    data: Path, worker: Path, tmp_path: Path
) -> None:
    """Ranks started the way ``srun`` starts them: SLURM_* variables only, no RANK."""
    out = tmp_path / "out.npz"
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = _env()
        env.update(
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_STEP_NUM_TASKS="2",
            SLURM_STEP_NUM_NODES="1",
            SLURM_STEP_NODELIST="localhost",
            SLURM_JOB_ID="4242",
            MASTER_PORT=port,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(worker), str(data), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    _check_equal(np.load(out), _one_process(np.load(data)))


def test_one_process_ignores_distributed_none_and_refuses_true() -> None:
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    km = KMeans(3, n_iters=2, random_state=0).fit(x)
    assert km.n_ranks_ == 1
    with pytest.raises(InvalidArgumentError, match=r"torch\.distributed is not initialised"):
        KMeans(3, distributed=True).fit(x)
    with pytest.raises(InvalidArgumentError, match="distributed='yes'"):
        KMeans(3, distributed="yes").fit(x)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="matmul_precision"):
        assign(x, x[:2], matmul_precision="fast")
