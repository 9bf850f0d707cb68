"""The guide's SLURM path, end to end, on a real single-node SLURM cluster.

The cluster comes from :mod:`slurm_cluster` (Debian's slurmctld, slurmd and munge, started
once per session). Each test makes a tiny fake feature run, prepares a clustering for
SLURM, runs ``run.sh`` from inside the experiment directory as the guide does, and
compares the levels with a local (non-SLURM) run of the same config and seed, computed in
this process.

Every SLURM job starts a Python that imports torch and MLflow (several seconds on a busy
two-core machine), so the tests keep the jobs few: one chain of two jobs for the guide's
path, plus one interruption each for ``scancel`` and for the time-limit signal.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from astrocurate.io.cutout_store import read_manifest
from astrocurate.launch import SlurmOptions
from astrocurate.stages.clustering.run import (
    PREPARED,
    clustering_status,
    compute_levels,
    load_config,
    prepare_clustering,
)
from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
from astrocurate.stages.merge_cutouts.run import merge_cutouts
from astrocurate.synthetic.survey import make_survey
from astrocurate.tracking import client, find_runs, get_run, tracked_step
from slurm_cluster import (
    SlurmCluster,
    leftover_processes,
    start_cluster,
    stop_cluster,
)
from test_clustering import blobs, fake_feature_run, level_arrays

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEMO = "configs/clusters/demo_2lvl_64_8.yaml"
TIME = "00:10:00"
TIMEOUT = 300.0  # seconds for a whole chain; it takes well under a minute


@pytest.fixture
def env(slurm_cluster: SlurmCluster, store: Path) -> dict[str, str]:
    """The test's environment (its MLflow store) with SLURM_CONF; run.sh polls every second."""
    return {**slurm_cluster.env, "ASTROCURATE_SLURM_POLL": "1"}


def prepare_with_script(
    features_id: str, cluster: SlurmCluster, env: dict[str, str], *overrides: str
) -> Path:
    """Guide step 4a with the SLURM flags, from the project root; return the directory.

    ``overrides`` are ``key=value`` config overrides after the guide's flags.
    """
    argv = [sys.executable, "scripts/4_clustering.py", "--features-id", features_id]
    argv += ["--config_file", DEMO, "--slurm_account", cluster.account]
    argv += ["--slurm_partition", cluster.partition, "--slurm_time", TIME, *overrides]
    result = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def prepare_slow(features_id: str, cluster: SlurmCluster) -> Path:
    """Prepare for SLURM with a checkpoint after every k-means step (slow enough to hit)."""
    slurm = SlurmOptions(account=cluster.account, partition=cluster.partition, time=TIME)
    cfg = load_config(ROOT / DEMO, {"checkpoint_period": 0})
    return prepare_clustering(features_id, cfg, slurm=slurm).directory


def local_levels(X: np.ndarray, directory: Path) -> dict[str, np.ndarray]:  # noqa: N803
    """The levels of a local (non-SLURM) clustering of ``X`` with the demo config.

    :func:`compute_levels` is what ``run.sh`` computes without SLURM, minus the MLflow
    bookkeeping; it runs here, in this process.
    """
    compute_levels(X, load_config(ROOT / DEMO), directory)
    return level_arrays(directory)


@pytest.fixture(scope="module")
def blob_levels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The local levels of ``blobs()``, the features of the interruption tests."""
    return local_levels(blobs(), tmp_path_factory.mktemp("local"))


def assert_levels_equal(directory: Path, reference: dict[str, np.ndarray]) -> None:
    got = level_arrays(directory)
    assert sorted(got) == sorted(reference) and len(got) == 12  # 6 arrays x 2 levels
    for name, array in reference.items():
        assert np.array_equal(got[name], array), name


def start_run_sh(directory: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``./run.sh`` (it waits for the chain); return it and the job IDs it printed."""
    process = subprocess.Popen(
        ["./run.sh"],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    jobs = process.stdout.readline().split()
    return process, jobs


def finish_run_sh(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, out, err


def wait_for_checkpoint(cluster: SlurmCluster, directory: Path, job: str) -> None:
    """Wait until ``job`` runs level 1 and has saved a checkpoint (its handlers are set)."""
    checkpoints = directory / "checkpoints" / "level_1"
    deadline = time.monotonic() + TIMEOUT
    polls = 0
    while not list(checkpoints.glob("kmeans_*.npz")):
        if polls % 20 == 0:  # squeue once a second, the directory every 50 ms
            state = cluster.job_state(job)
            assert state in ("PENDING", "RUNNING", "CONFIGURING"), (state, cluster.logs())
        assert time.monotonic() < deadline, f"no checkpoint in {checkpoints}"
        polls += 1
        time.sleep(0.05)


def job_log(directory: Path, level: int, job: str) -> str:
    return (directory / "logs" / f"level_{level}-{job}.out").read_text()


# ----------------------------------------------------------------------------- the guide


def pipeline_features(work: Path) -> tuple[str, np.ndarray]:
    """Guide steps 1 and 2 on a tiny synthetic survey, a stand-in step 3: run ID and matrix.

    Step 5 follows the real lineage (features -> merge -> cutouts), so cutting and merging
    are real (548 cutouts, in this process). The features are blobs recorded as a
    ``feature_extraction`` run of that merge: a backbone would only add minutes here.
    """
    survey = make_survey(work / "survey", n_mosaics=2, mosaic_size=256, seed=5)
    outputs = work / "outputs"
    cut = [make_cutouts(survey.output_dir, outputs, CutoutOptions(w), workers=1) for w in (32, 64)]
    merged = merge_cutouts([c.run_id for c in cut])
    X = blobs(len(read_manifest(merged.output_dir)))  # noqa: N806
    params = {"rows": len(X), "stand_in": True}
    with tracked_step("feature_extraction", params, input_run_ids=[merged.run_id]) as run:
        np.save(run.output_dir / "features.npy", X)
        sidecar = {"model": "blobs", "n_rows": len(X), "dim": X.shape[1], "dtype": "float32"}
        (run.output_dir / "features.json").write_text(json.dumps(sidecar))
    return run.run_id, X


def test_guide_slurm_path_end_to_end(slurm_cluster: SlurmCluster, env, store) -> None:
    cluster = slurm_cluster
    features_id, X = pipeline_features(store)  # noqa: N806
    directory = prepare_with_script(features_id, cluster, env)
    run = get_run(directory.name)
    assert run.status == PREPARED
    sbatch = (directory / "slurm" / "level_2.sbatch").read_text()
    for option in (f"--account={cluster.account}", f"--partition={cluster.partition}"):
        assert f"#SBATCH {option}\n" in sbatch
    assert f"#SBATCH --time={TIME}\n" in sbatch and "#SBATCH --requeue\n" in sbatch

    process, jobs = start_run_sh(directory, env)
    status, out, err = finish_run_sh(process)
    assert status == 0, err + cluster.logs()
    assert len(jobs) == 2 and out.split() == [run.run_id]  # clustering-status: FINISHED

    first, second = (cluster.job_info(job) for job in jobs)
    for info in (first, second):
        assert info["JobState"] == "COMPLETED"
        assert info["Account"] == cluster.account and info["Partition"] == cluster.partition
        assert info["TimeLimit"] == TIME and info["Requeue"] == "1"
        assert info["WorkDir"] == str(directory)
    assert second["StartTime"] >= first["EndTime"]  # the chain: level 2 after level 1
    assert "level 1: 64 clusters" in job_log(directory, 1, jobs[0])
    assert "level 2: 8 clusters" in job_log(directory, 2, jobs[1])

    record = clustering_status(directory)
    assert record.status == "FINISHED"
    assert record.tags["astrocurate.slurm_job_id"] == jobs[1]
    metrics = client().get_run(run.run_id).data.metrics
    assert {"level_1/inertia", "level_2/inertia", "level_2/size_entropy"} <= set(metrics)
    assert not (directory / "checkpoints").exists()
    assert_levels_equal(directory, local_levels(X, store / "local"))
    guide_sampling(run.run_id, env)


def test_sbatch_refusal_stops_run_sh_loudly_and_the_corrected_rerun_works(
    slurm_cluster: SlurmCluster, env, blob_levels
) -> None:
    """The test cluster has no GPUs: a level asking for one is refused by sbatch (gres)."""
    cluster = slurm_cluster
    features_id = fake_feature_run(blobs())
    directory = prepare_with_script(features_id, cluster, env, "ngpus_per_node=1")

    refused = run_sh(directory, env)
    assert refused.returncode == 1 and refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr  # one line: sbatch's message, then the hint
    assert "sbatch refused the job of level 1 (slurm/level_1.sbatch)" in lines[0]
    assert "Invalid generic resource (gres) specification" in lines[0]
    assert "level 1 asks for 1 GPU(s) per node (config key ngpus_per_node)" in lines[0]
    assert "set ngpus_per_node: 0" in lines[0] and "submitted" not in lines[0]
    assert get_run(directory.name).status == PREPARED

    # level 1 on the CPU, level 2 on a GPU: level 1 is submitted, then cancelled
    again = prepare_with_script(features_id, cluster, env, "ngpus_per_node=[0, 1]")
    assert again == directory  # the same prepared run, its scripts rewritten
    refused = run_sh(directory, env)
    assert refused.returncode == 1, refused.stderr
    assert "sbatch refused the job of level 2" in refused.stderr
    cancelled = re.search(r"cancelled the jobs already submitted: (\d+)\)", refused.stderr)
    assert cancelled, refused.stderr
    # a job cancelled while it runs shows COMPLETING until its processes are gone
    cluster.wait_for_jobs([cancelled.group(1)], timeout=60)
    assert cluster.job_info(cancelled.group(1))["JobState"] == "CANCELLED"
    assert not (directory / "level_1" / "level.json").exists()
    assert get_run(directory.name).status != "FINISHED"

    assert prepare_with_script(features_id, cluster, env, "ngpus_per_node=[0, 0]") == directory
    done = run_sh(directory, env)
    assert done.returncode == 0, done.stderr + cluster.logs()
    assert get_run(directory.name).status == "FINISHED"
    assert_levels_equal(directory, blob_levels)


def run_sh(directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["./run.sh"], cwd=directory, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def guide_sampling(clustering_id: str, env: dict[str, str]) -> None:
    """Guide step 5 on the clustering finished by the SLURM jobs: a FINISHED sample."""
    script = ROOT / "scripts" / "random_sampling.py"
    argv = [sys.executable, str(script), "--clustering-id", clustering_id, "--num-samples", "50"]
    result = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    runs = find_runs("curated_sampling", include_unfinished=True)
    assert [run.status for run in runs] == ["FINISHED"]
    assert runs[0].input_run_ids == [clustering_id]


# ----------------------------------------------------------------------------- interruptions


def test_scancel_leaves_the_run_unfinished_and_run_sh_resumes(
    slurm_cluster: SlurmCluster, env, blob_levels
) -> None:
    cluster = slurm_cluster
    features_id = fake_feature_run(blobs())
    directory = prepare_slow(features_id, cluster)
    process, jobs = start_run_sh(directory, env)
    wait_for_checkpoint(cluster, directory, jobs[0])
    cluster.command("scancel", jobs[0])
    status, _, err = finish_run_sh(process)

    assert status == 1 and "run it again to resume" in err
    run = get_run(directory.name)
    assert run.status == "KILLED"
    assert cluster.job_info(jobs[0])["JobState"] == "CANCELLED"
    assert cluster.job_info(jobs[1])["JobState"] == "CANCELLED"  # its dependency failed
    assert not (directory / "level_1" / "level.json").exists()

    again = subprocess.run(
        ["./run.sh"], cwd=directory, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert again.returncode == 0, again.stderr + cluster.logs()
    assert get_run(run.run_id).status == "FINISHED"
    new_first = again.stdout.split()[0]
    assert re.search(r"resuming k-means run \d", job_log(directory, 1, new_first))
    assert_levels_equal(directory, blob_levels)


def test_time_limit_signal_requeues_the_job_which_resumes(
    slurm_cluster: SlurmCluster, env, blob_levels
) -> None:
    cluster = slurm_cluster
    features_id = fake_feature_run(blobs())
    directory = prepare_slow(features_id, cluster)
    process, jobs = start_run_sh(directory, env)
    wait_for_checkpoint(cluster, directory, jobs[0])
    # what SLURM sends --signal=B:USR1@<lead> seconds before the time limit
    cluster.command("scancel", "--signal=USR1", "--batch", jobs[0])
    status, _, err = finish_run_sh(process)

    assert status == 0, err + cluster.logs()
    first = cluster.job_info(jobs[0])
    assert first["JobState"] == "COMPLETED" and first["Restarts"] == "1"
    log = job_log(directory, 1, jobs[0])  # both runs of the job append to it
    assert "SLURM time limit near: checkpoint saved, requeueing" in log
    assert re.search(r"resuming k-means run \d", log)
    assert get_run(directory.name).status == "FINISHED"
    assert_levels_equal(directory, blob_levels)


# ----------------------------------------------------------------------------- the fixture


def test_teardown_stops_every_daemon_and_job(slurm_cluster: SlurmCluster, tmp_path) -> None:
    other, processes = start_cluster(tmp_path / "other")  # beside the session's cluster
    script = tmp_path / "sleep.sh"
    script.write_text("#!/bin/sh\nsleep 300\n")
    job = other.command("sbatch", "--parsable", f"--chdir={tmp_path}", str(script))
    job_id = job.stdout.strip()
    deadline = time.monotonic() + TIMEOUT
    while other.job_state(job_id) != "RUNNING":
        assert time.monotonic() < deadline, other.logs()
        time.sleep(0.1)
    assert leftover_processes(other.conf)  # the daemons and the job carry SLURM_CONF

    stop_cluster(other, processes)
    assert [p.poll() is not None for p in processes] == [True, True, True]
    assert leftover_processes(other.conf) == []
    assert not any(path.exists() for path in other.munge_files.values())
    assert slurm_cluster.command("sinfo", "--noheader").returncode == 0  # still there


# ----------------------------------------------------------------------------- cutouts array


def test_cutouts_job_array_cuts_the_survey_in_shards_that_merge_to_the_whole(
    slurm_cluster: SlurmCluster, env, store
) -> None:
    cluster = slurm_cluster
    survey = make_survey(store / "survey", n_mosaics=3, mosaic_size=192, seed=2)
    outputs = store / "outputs"
    argv = [sys.executable, "scripts/cutouts.py", "--mosaics_path", str(survey.output_dir)]
    argv += ["--output_path", str(outputs), "--window_size", "64", "--slurm-array", "2"]
    argv += ["--slurm_account", cluster.account, "--slurm_partition", cluster.partition]
    made = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    script = Path(made.stdout.strip())
    assert "#SBATCH --array=0-1\n" in script.read_text()
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--wait", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert submitted.returncode == 0, submitted.stderr + cluster.logs()
    runs = find_runs("cutting_out")
    assert sorted(r.params["shard"] for r in runs) == ["0/2", "1/2"]
    assert len({r.params["survey_digest"] for r in runs}) == 1
    assert all(r.finished for r in runs)
    sharded = merge_cutouts([r.run_id for r in runs], dedup_sky=False)
    whole = make_cutouts(survey.output_dir, store / "whole", CutoutOptions(64), workers=1)
    key = ["mosaic", "x0", "y0"]
    got = read_manifest(sharded.output_dir).sort_values(key)[key].reset_index(drop=True)
    want = read_manifest(whole.output_dir).sort_values(key)[key].reset_index(drop=True)
    assert got.equals(want)
