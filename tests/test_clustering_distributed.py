"""Step 4b in several processes: ``run.sh`` with ``torchrun`` (gloo on the CPU), SLURM scripts.

The ranks share the rows of every k-means run (:mod:`astrocurate.algorithms.kmeans.estimator`);
rank 0 alone
writes the outputs and talks to MLflow. The result must equal a one-process run with the
same seed: centroids up to the order of the float64 sums, labels exactly (the blobs have no
near-ties, points equidistant from two centroids within rounding, which either order of
the sums may send either way).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from astrocurate.errors import InvalidArgumentError
from astrocurate.launch import SlurmOptions
from astrocurate.stages.clustering.run import (
    LEVEL_ARRAYS,
    ClusteringConfig,
    compute_levels,
    prepare_clustering,
)
from astrocurate.tracking import client, get_run
from test_clustering import (
    GOLDEN,
    blobs,
    check_metrics_and_plots,
    check_outputs,
    config,
    fake_feature_run,
    normalise,
)

TORCHRUN = Path(sys.executable).with_name("torchrun")
#: Two CPU processes, one thread each (the runner is shared).
TWO = {"nprocs_per_node": 2, "ncpus_per_gpu": 1}


def subprocess_env() -> dict[str, str]:
    """The test's environment with one thread per process."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def assert_equal_up_to_summation(directory: Path, reference: Path) -> None:
    """Level arrays of a multi-process run against a one-process one."""
    n_levels = len(list(reference.glob("level_*/level.json")))
    assert n_levels and len(list(directory.glob("level_*/level.json"))) == n_levels
    for level in range(1, n_levels + 1):
        a, b = (
            {n: np.load(d / f"level_{level}" / f"{n}.npy") for n in LEVEL_ARRAYS}
            for d in (directory, reference)
        )
        for name in ("labels", "point_labels", "offsets"):
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"level {level} {name}")
        np.testing.assert_allclose(a["centroids"], b["centroids"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a["distances"], b["distances"], rtol=1e-5, atol=1e-5)
        assert a["centroids"].dtype == b["centroids"].dtype


# ----------------------------------------------------------------------------- config


def test_processes_per_node_and_in_all() -> None:
    assert config().n_processes(1) == 1  # CPU, no key: one process as before
    assert config(ngpus_per_node=1).n_processes(2) == 1
    assert config(**TWO).n_processes(1) == 2
    assert config(ngpus_per_node=4, nnodes=2).n_processes(2) == 8
    assert config(ngpus_per_node=4, nprocs_per_node=4).procs_per_node(1) == 4
    per_level = config(ngpus_per_node=[4, 0], nnodes=[2, 1], nprocs_per_node=[None, 3])
    assert [per_level.n_processes(level) for level in (1, 2)] == [8, 3]


def test_several_nodes_need_slurm(store) -> None:
    features_id = fake_feature_run(blobs(n=200))
    with pytest.raises(InvalidArgumentError, match=r"nnodes=\[2, 2\]: several nodes need SLURM"):
        prepare_clustering(features_id, config(nnodes=2))


# ----------------------------------------------------------------------------- scripts


def test_run_sh_and_sbatch_start_several_processes(store) -> None:
    features_id = fake_feature_run(blobs(n=200))
    local = prepare_clustering(features_id, config(**TWO))
    text = (local.directory / "run.sh").read_text()
    assert f"exec {TORCHRUN} --standalone --nproc_per_node 2 --local-ranks-filter 0 -m" in text
    assert "astrocurate.cli clustering-run" in text and '"$@"' in text

    slurm = SlurmOptions(account="astro", partition="gpu", time="01:00:00", qos="normal")
    gpus = ClusteringConfig.from_mapping({**config().as_dict(), "ngpus_per_node": 4, "nnodes": 2})
    prepared = prepare_clustering(features_id, gpus, slurm=slurm, force=True)
    for name in ("run.sh", "slurm/level_1.sbatch", "slurm/level_2.sbatch"):
        path = prepared.directory / name
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, name
        text = normalise(path.read_text(), prepared)
        golden = GOLDEN / "distributed" / Path(name).name
        if os.environ.get("UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{name} differs from {golden} (UPDATE_GOLDEN=1)"
    sbatch = (prepared.directory / "slurm" / "level_1.sbatch").read_text()
    for option in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8"):
        assert f"#SBATCH {option}\n" in sbatch
    assert "\nexec srun --kill-on-bad-exit=1 " in sbatch and "--level 1\n" in sbatch


def test_each_level_gets_its_own_resources(store) -> None:
    """Per-level ngpus_per_node / nnodes / nprocs_per_node: one golden sbatch per level."""
    features_id = fake_feature_run(blobs(n=200))
    per_level = {"n_clusters": [24, 6, 3], "n_iters": 8, "n_resampling_steps": [3, 2, 1]}
    per_level |= {"sample_size": [5, 3, None], "sampling_strategy": "r"}
    per_level |= {"ngpus_per_node": [4, 1, 0], "nnodes": [2, 1, 1]}
    per_level |= {"nprocs_per_node": [None, None, 3], "ncpus_per_gpu": 6}
    cfg = ClusteringConfig.from_mapping({"device": "cpu", **per_level})
    slurm = SlurmOptions(account="astro", partition="gpu", time="01:00:00")
    prepared = prepare_clustering(features_id, cfg, slurm=slurm)
    expected = {  # level: (nodes, tasks per node, GPUs per node, CPUs per task, srun)
        1: (2, 4, 4, 6, True),
        2: (1, 1, 1, 6, False),
        3: (1, 3, None, 6, True),
    }
    for level, (nodes, tasks, gpus, cpus, srun) in expected.items():
        path = prepared.directory / "slurm" / f"level_{level}.sbatch"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
        text = normalise(path.read_text(), prepared)
        golden = GOLDEN / "per_level" / path.name
        if os.environ.get("UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{path.name} differs from {golden} (UPDATE_GOLDEN=1)"
        options = [f"--nodes={nodes}", f"--ntasks-per-node={tasks}", f"--cpus-per-task={cpus}"]
        assert all(f"#SBATCH {o}\n" in text for o in options), (level, text)
        assert ("--gpus-per-node" in text) == (gpus is not None)
        assert gpus is None or f"#SBATCH --gpus-per-node={gpus}\n" in text
        assert ("\nexec srun " in text) == srun
    run_sh = (prepared.directory / "run.sh").read_text()
    assert "level_gpus=([1]=4 [2]=1 [3]=0)" in run_sh


def test_local_run_sh_starts_each_level_with_its_own_process_count(store) -> None:
    features_id = fake_feature_run(blobs(n=200))
    cfg = config(nprocs_per_node=[2, 1], ncpus_per_gpu=1)
    prepared = prepare_clustering(features_id, cfg)
    lines = (prepared.directory / "run.sh").read_text().splitlines()
    starts = [line for line in lines if "astrocurate.cli clustering-run" in line]
    assert len(starts) == 2
    assert starts[0].startswith(f"{TORCHRUN} --standalone --nproc_per_node 2 ")
    assert starts[0].endswith(' --level 1 "$@"')
    assert starts[1].startswith(f"exec {sys.executable} -m astrocurate.cli clustering-run ")
    assert "#   level 1: 2 process(es)" in lines and "#   level 2: 1 process(es)" in lines


# ----------------------------------------------------------------------------- running


def prepare_and_run(X: np.ndarray, cfg: ClusteringConfig):  # noqa: N803
    """Step 4a on ``X`` with ``cfg``, then ``./run.sh``; return the prepared run and the result."""
    prepared = prepare_clustering(fake_feature_run(X), cfg)
    result = subprocess.run(
        ["./run.sh"],
        cwd=prepared.directory,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert get_run(prepared.run_id).status == "FINISHED"
    check_outputs(prepared.directory, X)
    return prepared, result


@pytest.mark.slow
def test_run_sh_in_two_processes_equals_one_process(store, tmp_path) -> None:
    X = blobs(n=601, centres=14)  # noqa: N806 - odd: the two row slices differ in length
    cfg = config(**TWO)
    prepared, result = prepare_and_run(X, cfg)
    assert result.stdout.strip() == prepared.run_id  # rank 0 alone reaches the console
    check_metrics_and_plots(prepared.run_id)
    assert not (prepared.directory / "checkpoints").exists()
    logs = prepared.directory / "logs"
    assert "clustering in 2 processes" in (logs / "clustering.log").read_text()
    assert (logs / "clustering.rank1.log").is_file()
    runs = client().search_runs([client().get_run(prepared.run_id).info.experiment_id])
    assert [r.info.run_id for r in runs if r.info.run_name == "clustering"] == [prepared.run_id]

    compute_levels(X, cfg, tmp_path / "reference")
    assert_equal_up_to_summation(prepared.directory, tmp_path / "reference")


@pytest.mark.slow
def test_run_sh_with_per_level_process_counts_equals_one_process(store, tmp_path) -> None:
    """Level 1 in two processes (torchrun), level 2 in one: the one-process result."""
    X = blobs(n=601, centres=14)  # noqa: N806
    cfg = config(nprocs_per_node=[2, 1], ncpus_per_gpu=1)
    prepared, _ = prepare_and_run(X, cfg)
    log = (prepared.directory / "logs" / "clustering.log").read_text()
    assert "clustering in 2 processes" in log
    compute_levels(X, cfg, tmp_path / "reference")
    assert_equal_up_to_summation(prepared.directory, tmp_path / "reference")


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_two_processes_killed_then_rerun_give_the_uninterrupted_result(store, tmp_path) -> None:
    X = blobs(n=1500, centres=20)  # noqa: N806
    features_id = fake_feature_run(X)
    cfg = config(n_clusters=[30, 6], n_iters=[20, 8], n_resampling_steps=[3, 2], **TWO)
    prepared = prepare_clustering(features_id, cfg)
    run_sh = [str(prepared.directory / "run.sh")]
    step_0 = prepared.directory / "checkpoints" / "level_1" / "step_0.npz"
    process = subprocess.Popen(
        run_sh, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env()
    )
    workers: list[int] = []
    try:  # SIGKILL rank 0 after the first k-means run of level 1 was checkpointed
        deadline = time.monotonic() + 240
        while not step_0.is_file():
            assert process.poll() is None, process.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        workers = _children(process.pid)  # run.sh execs torchrun: its workers
        rank_0 = int(get_run(prepared.run_id).tags["astrocurate.pid"])
        assert rank_0 in workers
        os.kill(rank_0, signal.SIGKILL)
        process.wait(timeout=180)  # torchrun stops the other rank and fails
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode != 0
    assert get_run(prepared.run_id).status == "RUNNING"
    assert not (prepared.directory / "level_1" / "level.json").exists()

    resumed = subprocess.run(
        run_sh, capture_output=True, text=True, timeout=300, env=subprocess_env()
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert get_run(prepared.run_id).status == "FINISHED"
    # run 0 was checkpointed before the kill; on a loaded machine a later one may be too
    log_text = (prepared.directory / "logs" / "clustering.log").read_text()
    assert re.search(r"resuming after k-means run \d+", log_text), log_text[-2000:]
    compute_levels(X, cfg, tmp_path / "reference")
    assert_equal_up_to_summation(prepared.directory, tmp_path / "reference")
