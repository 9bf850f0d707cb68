"""Step 3 under faults: ``scripts/feature_extraction.py`` killed at seeded points, then rerun.

The default backbone on the 84 cutouts of 64 px of the session survey, resized to 32 px
(quick), in shards of 16 rows: the matrix is ``features.npy.partial`` and each finished
shard leaves ``progress/<start>.done``; the sidecar, then the matrix under its final name
appear when every shard is done. Kill points: right after a seeded shard's marker, from
outside at a seeded time inside the next shard, and with every shard done but the matrix
not yet renamed, and a kill right after that rename.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import (
    FULL,
    PYTHON,
    ROOT,
    At,
    Watch,
    assert_same_outputs,
    check_finished_runs,
    rerun_to_the_end,
    rng,
    runs_of,
)

pytestmark = pytest.mark.slow

SHARD_ROWS = 16
RESIZE = 32
BATCH = 16


@dataclass(frozen=True)
class Reference:
    run_id: str
    output_dir: Path
    root: Path  # parent of feature_extraction/ (the merge run's)


@pytest.fixture(scope="module")
def reference(fault_inputs, tracking_db) -> Reference:
    """The uninterrupted run, in-process, with the options the command is given."""
    from astrocurate.stages.feature_extraction.run import FeatureOptions, extract_features

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", f"faults-features-ref-{uuid.uuid4().hex[:10]}")
        patch.chdir(fault_inputs.work)  # MLflow puts new experiments' artifacts in ./mlruns
        run = extract_features(
            fault_inputs.merged64_id,
            FeatureOptions(resize=RESIZE, shard_rows=SHARD_ROWS),
            batch_size=BATCH,
        )
    return Reference(run.run_id, run.output_dir, run.output_dir.parent.parent)


def _argv(merged_id: str) -> list[str]:
    return [
        PYTHON,
        str(ROOT / "scripts" / "feature_extraction.py"),
        "--merged-cutouts-id",
        merged_id,
        "--resize",
        str(RESIZE),
        "--shard-rows",
        str(SHARD_ROWS),
        "--batch-size",
        str(BATCH),
    ]


def _n_shards(reference: Reference) -> int:
    import numpy as np

    rows = np.load(reference.output_dir / "features.npy", mmap_mode="r").shape[0]
    return -(-rows // SHARD_ROWS)


def test_features_killed_at_seeded_points_resume_to_the_same_result(
    fault_inputs, fault_env, reference
):
    shards = _n_shards(reference)
    assert shards >= 4, "the test wants several shards"
    r = rng(3)
    done = int(r.integers(1, shards // 2 + 1))  # markers after the first kill
    kills = [
        At("*/progress/*.done", nth=done, when="after"),
        Watch(
            reference.root / "feature_extraction",
            "*/progress/*.done",
            count=1,  # the next shard's marker
            delay=float(r.uniform(0.05, 0.4)),  # blocks take well under a second now
        ),
        At("*/features.npy", when="before"),
    ]
    if FULL:  # also right after the sidecar, before the matrix is renamed
        kills.insert(-1, At("*/features.json", when="after"))
    runner = fault_env.runner("faulted")
    experiment = fault_env.use("faulted")
    argv = _argv(fault_inputs.merged64_id)
    for kill in kills:
        attempt = runner.run(argv, kill)
        if not attempt.fired or attempt.returncode == 0:
            # the run ended before this kill point (or before a delayed kill landed)
            assert attempt.returncode == 0, attempt.where()
            break
        assert attempt.returncode == -9, runner.summary()
        check_finished_runs(experiment)

    _, run = rerun_to_the_end(runner, argv, experiment, "feature_extraction")
    assert_same_outputs(reference.output_dir, run.output_dir, context=f"\n{runner.summary()}")


def test_features_killed_between_final_rename_and_marker_cleanup(
    fault_inputs, fault_env, reference
):
    runner = fault_env.runner("faulted")
    experiment = fault_env.use("faulted")
    argv = _argv(fault_inputs.merged64_id)
    attempt = runner.run(argv, At("*/features.npy", when="after"))
    assert attempt.fired and attempt.returncode == -9, runner.summary()
    from astrocurate.stages.feature_extraction.run import FeatureOptions, extract_features

    rerun = extract_features(  # the command's code, in-process (a subprocess costs seconds)
        fault_inputs.merged64_id,
        FeatureOptions(resize=RESIZE, shard_rows=SHARD_ROWS),
        batch_size=BATCH,
    )
    assert rerun.resumed
    runs = runs_of(experiment, "feature_extraction")
    assert [r.status for r in runs] == ["FINISHED"], runner.summary()
    check_finished_runs(experiment)
    assert_same_outputs(reference.output_dir, runs[0].output_dir, context=f"\n{runner.summary()}")
