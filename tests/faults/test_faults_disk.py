"""A full disk: the output directory on a small tmpfs, filled up but for a few KiB.

Expected of a step that runs out of space: exit status 1 with one clear line (no
traceback), its run FAILED, nothing under the final names that a later step could take
for a result, and after space is freed, the same command resumes it to the result of an
uninterrupted run. Needs ``mount -t tmpfs`` (root); skipped where it is not permitted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import (
    PYTHON,
    ROOT,
    Attempt,
    Runner,
    assert_one_line_disk_error,
    assert_same_outputs,
    check_finished_runs,
    result_files,
    runs_of,
    said_resumed_or_reused,
)

pytestmark = pytest.mark.slow

# --------------------------------------------------------------------------- cutouts


@dataclass
class CutoutsOnFullDisk:
    runner: Runner
    experiment: str
    argv: list[str]
    attempt: Attempt
    work: Path


@pytest.fixture(scope="module")
def cutouts_on_full_disk(fault_inputs, tracking_db, small_disk, tmp_path_factory):
    """``scripts/cutouts.py`` writing onto the full disk (run once for the tests below)."""
    import os

    work = tmp_path_factory.mktemp("disk-cutouts")
    experiment = f"faults-disk-{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_db,
        "MLFLOW_EXPERIMENT_NAME": experiment,
    }
    runner = Runner(env=env, cwd=work, logs=work / "logs")
    argv = [
        PYTHON,
        str(ROOT / "scripts" / "cutouts.py"),
        "--mosaics_path",
        str(fault_inputs.survey),
        "--output_path",
        str(small_disk.path / "cut"),
        "--window_size",
        "32",
        "--workers",
        "1",
    ]
    small_disk.fill(free=600 * 1024)  # about a mosaic and a half of pixels
    attempt = runner.run(argv)
    return CutoutsOnFullDisk(runner, experiment, argv, attempt, work)


def test_cutouts_on_a_full_disk_fail_cleanly_and_resume_once_space_is_freed(
    cutouts_on_full_disk, fault_env, fault_inputs, small_disk
):
    from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts

    case = cutouts_on_full_disk
    assert case.attempt.returncode == 1, case.attempt.where()
    fault_env.use("reference")
    reference = make_cutouts(
        fault_inputs.survey, fault_env.work / "cut", CutoutOptions(32), workers=1
    )
    fault_env.select(case.experiment)
    runs = runs_of(case.experiment, "cutting_out")
    assert [r.status for r in runs] == ["FAILED"], case.runner.summary()
    assert "No space left on device" in runs[0].tags.get("astrocurate.error", "")
    left = result_files(runs[0].output_dir)
    for name in ("manifest.parquet", "mosaics.parquet"):
        assert name not in left, f"{name} of a failed run: {sorted(left)}"
    assert not list(runs[0].output_dir.rglob(".tmp*")), "partial files left behind"

    small_disk.empty()
    final = case.runner.run(case.argv)
    assert final.returncode == 0, final.where()
    assert said_resumed_or_reused(final.stderr), final.where()
    runs = runs_of(case.experiment, "cutting_out")
    assert [r.status for r in runs] == ["FINISHED"], case.runner.summary()
    check_finished_runs(case.experiment)
    assert_same_outputs(reference.output_dir, runs[0].output_dir)


def test_cutouts_on_a_full_disk_say_so_in_one_line(cutouts_on_full_disk):
    assert_one_line_disk_error(cutouts_on_full_disk.attempt)


# --------------------------------------------------------------------------- features


def test_features_on_a_full_disk_fail_cleanly(fault_inputs, fault_env, small_disk):
    runner = fault_env.runner("faulted")
    experiment = fault_env.use("faulted")
    small_disk.fill(free=8 * 1024)  # less than one shard of the matrix
    try:
        attempt = runner.run(
            [
                PYTHON,
                str(ROOT / "scripts" / "feature_extraction.py"),
                "--merged-cutouts-id",
                fault_inputs.merged64_id,
                "--resize",
                "32",
                "--shard-rows",
                "16",
                "--batch-size",
                "16",
                "--output-path",
                str(small_disk.path / "features"),
            ]
        )
    finally:
        small_disk.empty()
    runs = runs_of(experiment, "feature_extraction")
    assert len(runs) == 1, runner.summary()
    assert not (runs[0].output_dir / "features.npy").exists()
    assert runs[0].status == "FAILED", f"run {runs[0].status}:\n{runner.summary()}"
    assert_one_line_disk_error(attempt)
