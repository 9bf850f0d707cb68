"""A clustering in two processes per SLURM job, on the real single-node test cluster.

``nprocs_per_node: 2`` makes every level's batch script ``srun`` two tasks
(``--ntasks-per-node=2``) that join one ``torch.distributed`` group (gloo) from SLURM's
variables (:func:`astrocurate.algorithms.kmeans.distributed.init_distributed`). The test prepares
such a
clustering with the guide's ``--slurm_*`` flags, runs ``./run.sh`` from the experiment
directory, waits for the chain of two jobs and compares the levels with a one-process
local run of the same config and seed (centroids up to the order of the float64 sums;
labels exactly, which holds because these blobs have no near-ties: no point equidistant
from two centroids within rounding).

The test cluster's node has two CPUs: each task gets one (``ncpus_per_gpu: 1``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from astrocurate.algorithms.kmeans.distributed import init_distributed, slurm_master_port
from astrocurate.errors import AstrocurateError
from astrocurate.stages.clustering.run import (
    PREPARED,
    clustering_status,
    compute_levels,
    load_config,
)
from astrocurate.tracking import client, get_run
from slurm_cluster import SlurmCluster
from test_clustering import blobs, fake_feature_run
from test_clustering_distributed import assert_equal_up_to_summation
from test_slurm import DEMO, ROOT, TIME, TIMEOUT, finish_run_sh, job_log, start_run_sh

#: Config overrides: two k-means processes per node, one CPU each (the node has two).
TWO_TASKS = ("nprocs_per_node=2", "ncpus_per_gpu=1")


@pytest.fixture
def env(slurm_cluster: SlurmCluster, store: Path) -> dict[str, str]:
    """The test's MLflow store, SLURM_CONF, one thread per task; run.sh polls every second."""
    return {**slurm_cluster.env, "ASTROCURATE_SLURM_POLL": "1", "OMP_NUM_THREADS": "1"}


def prepare_two_tasks(features_id: str, cluster: SlurmCluster, env: dict[str, str]) -> Path:
    """Guide step 4a with the SLURM flags and two processes per node; return the directory."""
    argv = [sys.executable, "scripts/4_clustering.py", "--features-id", features_id]
    argv += ["--config_file", DEMO, "--slurm_account", cluster.account]
    argv += ["--slurm_partition", cluster.partition, "--slurm_time", TIME, *TWO_TASKS]
    result = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


@pytest.mark.slow
def test_srun_two_tasks_per_level_equal_one_local_process(
    slurm_cluster: SlurmCluster, env, store, tmp_path
) -> None:
    cluster = slurm_cluster
    X = blobs(n=601, centres=14)  # noqa: N806 - odd: the two ranks' row slices differ
    features_id = fake_feature_run(X)
    directory = prepare_two_tasks(features_id, cluster, env)
    run = get_run(directory.name)
    assert run.status == PREPARED and run.params["nprocs_per_node"] == "[2, 2]"
    for level in (1, 2):
        sbatch = (directory / "slurm" / f"level_{level}.sbatch").read_text()
        assert "#SBATCH --nodes=1\n" in sbatch and "#SBATCH --ntasks-per-node=2\n" in sbatch
        assert "#SBATCH --cpus-per-task=1\n" in sbatch
        assert "\nexec srun --kill-on-bad-exit=1 " in sbatch

    process, jobs = start_run_sh(directory, env)
    status, out, err = finish_run_sh(process)
    logs = "".join(
        f"\n--- {path.name}\n{path.read_text()[-3000:]}" for path in (directory / "logs").glob("*")
    )
    assert status == 0, err + logs + cluster.logs()
    assert len(jobs) == 2 and out.split() == [run.run_id]  # clustering-status: FINISHED

    first, second = (cluster.job_info(job) for job in jobs)
    for info in (first, second):
        assert info["JobState"] == "COMPLETED", info
        assert info["NumTasks"] == "2" and info["NumNodes"] == "1", info
    assert second["StartTime"] >= first["EndTime"]
    for level, job, clusters in ((1, jobs[0], 64), (2, jobs[1], 8)):
        text = job_log(directory, level, job)
        assert "clustering in 2 processes (torch.distributed)" in text
        assert f"level {level}: {clusters} clusters" in text
    assert (directory / "logs" / "clustering.rank1.log").is_file()  # rank 1 logs apart

    record = clustering_status(directory)
    assert record.status == "FINISHED"
    assert record.tags["astrocurate.slurm_job_id"] == jobs[1]
    mlflow_run = client().get_run(run.run_id)
    assert {"level_1/inertia", "level_2/inertia"} <= set(mlflow_run.data.metrics)
    history = client().get_metric_history(run.run_id, "level_2/inertia")
    assert len(history) == 1  # rank 0 alone logs
    assert not (directory / "checkpoints").exists()

    compute_levels(X, load_config(ROOT / DEMO), tmp_path / "reference")
    assert_equal_up_to_summation(directory, tmp_path / "reference")
    assert np.load(directory / "level_1" / "point_labels.npy").shape == (len(X),)


# ----------------------------------------------------------------------------- rendezvous


def test_slurm_port_stays_below_the_ephemeral_range() -> None:
    ports = {slurm_master_port(job) for job in range(0, 200_000, 7)}
    assert min(ports) >= 20000 and max(ports) < 30000  # Linux's ephemeral ports start at 32768
    assert slurm_master_port("12345") == slurm_master_port(12345) == 22345


def test_a_taken_rendezvous_port_names_itself_and_the_way_out(monkeypatch) -> None:
    """What a job whose derived port is taken on its first node gets (seen on a shared node)."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for key, value in {
            "RANK": "0",
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(AstrocurateError, match=rf"127\.0\.0\.1:{port} .*set MASTER_PORT"):
            init_distributed("gloo")
