"""Step 4b under faults: ``run.sh`` (and ``astrocurate clustering-run DIR``) killed, then rerun.

The experiment is prepared in-process (step 4a, as the session's finished clustering: same
features, same config, checkpoints after every k-means step), then run with the real
commands. Kill points: inside the first k-means run of level 1 (a seeded live
checkpoint), SIGTERM inside its second k-means run (graceful: checkpoint, KILLED, exit
130), between the levels (level 1 complete, its metrics not logged yet) and inside the
k-means run of level 2. The result must be bit for bit the session's uninterrupted
clustering. A rerun after a kill between levels says that it resumed.
"""

from __future__ import annotations

import logging
import re

import pytest
from faultkit import (
    CLUSTER_CONFIG,
    FULL,
    PYTHON,
    At,
    assert_same_outputs,
    check_finished_runs,
    rng,
    runs_of,
    said_resumed_or_reused,
)

from astrocurate.stages.clustering.run import ClusteringConfig, prepare_clustering, run_clustering
from astrocurate.tracking import get_run

pytestmark = pytest.mark.slow

#: Files of the experiment directory that name the run or its paths, or are logs.
NOT_RESULTS = ("logs/*", "run.json", "run.sh")


def _without_comments(data: bytes) -> bytes:
    return re.sub(rb"(?m)^#.*\n", b"", data)


def _level_json(data: bytes) -> bytes:
    from faultkit import drop_json_keys

    return drop_json_keys("seconds")(data)


NORMALISE = {"config.yaml": _without_comments, "level_*/level.json": _level_json}


def test_clustering_killed_inside_and_between_levels_resumes_to_the_same_result(
    fault_inputs, fault_env
):
    reference = get_run(fault_inputs.clustering_id)
    experiment = fault_env.use("faulted")
    config = ClusteringConfig.from_mapping(CLUSTER_CONFIG)
    prepared = prepare_clustering(fault_inputs.features_id, config)
    directory = prepared.directory
    run_sh = [str(directory / "run.sh")]
    cli = [PYTHON, "-m", "astrocurate.cli", "clustering-run", str(directory)]

    r = rng(4)
    kills = [
        # level 1 k-means: 14 k-means++ steps, then Lloyd iterations (each checkpointed)
        (run_sh, At("*/checkpoints/level_1/kmeans_0.npz", nth=int(r.integers(15, 25)))),
        (run_sh, At("*/checkpoints/level_1/kmeans_1.npz", nth=2, signal="SIGTERM")),
        (cli, At("*/level_1/level.json", when="after")),
        (run_sh, At("*/checkpoints/level_2/kmeans_0.npz", nth=int(r.integers(1, 5)))),  # k-means++
    ]
    if FULL:
        kills[1:1] = [(run_sh, At("*/checkpoints/level_1/step_0.npz"))]
        kills.append((run_sh, At("*/level_2/point_labels.npy", when="after")))
    runner = fault_env.runner("faulted")
    for argv, kill in kills:
        attempt = runner.run(argv, kill, cwd=directory)
        assert attempt.fired, runner.summary()
        status = get_run(prepared.run_id).status
        if kill.signal == "SIGTERM":  # graceful: checkpoint saved, run KILLED, exit 130
            assert attempt.returncode == 130, attempt.where()
            assert "rerun the same command to resume" in attempt.stderr, attempt.where()
            assert status == "KILLED", runner.summary()
        else:
            assert attempt.returncode == -9, attempt.where()
            assert status == "RUNNING", runner.summary()  # SIGKILL: nobody could mark it
        check_finished_runs(experiment)

    final = runner.run(run_sh, cwd=directory)
    assert final.returncode == 0, final.where()
    assert said_resumed_or_reused(final.stderr), final.where()
    runs = runs_of(experiment, "clustering")
    assert [(r.run_id, r.status) for r in runs] == [(prepared.run_id, "FINISHED")], runner.summary()
    check_finished_runs(experiment)
    assert not (directory / "checkpoints").exists()
    assert_same_outputs(
        reference.output_dir,
        directory,
        exclude=NOT_RESULTS,
        normalise=NORMALISE,
        context=f"\n{runner.summary()}",
    )


def test_clustering_rerun_after_a_kill_between_levels_says_it_resumed(
    fault_inputs, fault_env, caplog
):
    fault_env.use("faulted")
    prepared = prepare_clustering(
        fault_inputs.features_id, ClusteringConfig.from_mapping(CLUSTER_CONFIG)
    )
    runner = fault_env.runner("faulted")
    cli = [PYTHON, "-m", "astrocurate.cli", "clustering-run", str(prepared.directory)]
    attempt = runner.run(cli, At("*/level_1/level.json", when="after"))
    assert attempt.fired and attempt.returncode == -9, attempt.where()
    # the rerun in-process: what clustering-run runs, its messages are what it logs
    with caplog.at_level(logging.INFO, logger="astrocurate"):
        run_clustering(prepared.directory)
    assert get_run(prepared.run_id).status == "FINISHED"
    assert said_resumed_or_reused(caplog.text), caplog.text
