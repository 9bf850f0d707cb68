"""Step 2 under faults: ``scripts/merge.py`` of several cutout runs killed, then rerun.

The session's cutout runs of 32 and 64 px (4 mosaics each, with sky positions, so the
sky de-duplication runs) are merged; the command gets their IDs in the reverse order of
the uninterrupted in-process reference (the result must not depend on it), and leave out
empty and too-noisy cutouts (``--min-peak-snr``, ``--max-noise-ratio``: the mosaics have
rms maps). The merge
writes ``mosaics.parquet``, then ``manifest.parquet``, each under a temporary name
renamed into place, then hashes them and marks the run FINISHED.

Kill points: SIGTERM right after the mosaics table appears (graceful: the run is marked
KILLED, exit 130), then SIGKILL just before or just after a rename (one seeded point by
default; every one of them, and a seeded moment after the manifest appeared, in the full
sweep). Every rerun continues the same run; the final outputs must be bit for bit the
reference's and no FINISHED run may fail ``astrocurate verify``. A full disk (the small
tmpfs) must give one error line, a FAILED run, no file under a final name and no
temporary left behind; once space is freed the same merge resumes to the same result.
"""

from __future__ import annotations

import pytest
from faultkit import (
    FULL,
    PYTHON,
    ROOT,
    At,
    Watch,
    assert_one_line_disk_error,
    assert_same_outputs,
    check_finished_runs,
    result_files,
    rng,
    runs_of,
    said_resumed_or_reused,
)

from astrocurate.stages.merge_cutouts.run import merge_cutouts

pytestmark = pytest.mark.slow

STEP = "merge_cutouts"
#: The renames of a merge, in the order they happen, each before and after.
RENAME_POINTS = [
    At("*/mosaics.parquet", when="before"),
    At("*/mosaics.parquet", when="after"),
    At("*/manifest.parquet", when="before"),
    At("*/manifest.parquet", when="after"),
]


#: The noise filters of the merge (they drop rows, so the reference must match them).
NOISE = {"min_peak_snr": 5.0, "max_noise_ratio": 1.2}


def _argv(ids, output, noise: dict = NOISE) -> list[str]:
    return [
        PYTHON,
        str(ROOT / "scripts" / "merge.py"),
        "--cutouts-id",
        *reversed(ids),
        "--output-path",
        str(output),
        *(f"--{k.replace('_', '-')}={v}" for k, v in noise.items()),
    ]


def _kills(output) -> list[At | Watch]:
    r = rng(2)
    kills: list[At | Watch] = [At("*/mosaics.parquet", when="after", signal="SIGTERM")]
    if not FULL:
        return [*kills, RENAME_POINTS[int(r.integers(len(RENAME_POINTS)))]]
    # every rename point, and from outside a seeded moment after the manifest appeared
    # (hashing the outputs, logging them, marking the run FINISHED) before the last one
    watch = Watch(output / STEP, "*/manifest.parquet", delay=float(r.uniform(0.0, 0.4)))
    return [*kills, *RENAME_POINTS[:3], watch, RENAME_POINTS[3]]


def test_merge_killed_before_and_after_its_renames_resumes_to_the_same_result(
    fault_inputs, fault_env
):
    output = fault_env.work / "merged"
    fault_env.use("reference")
    reference = merge_cutouts(list(fault_inputs.cutouts_ids), output_path=output, **NOISE)

    runner = fault_env.runner("faulted")
    experiment = fault_env.use("faulted")
    argv = _argv(fault_inputs.cutouts_ids, output)
    for kill in _kills(output):
        attempt = runner.run(argv, kill)
        runs = runs_of(experiment, STEP)
        if isinstance(kill, Watch) and not attempt.fired:  # finished before the signal
            assert attempt.returncode == 0, attempt.where()
            assert [r.status for r in runs] == ["FINISHED"], runner.summary()
            check_finished_runs(experiment)
            break
        assert attempt.fired, runner.summary()
        assert len(runs) == 1, f"one interrupted run expected:\n{runner.summary()}"
        if kill.signal == "SIGTERM":  # graceful: marked KILLED, told to rerun
            assert attempt.returncode == 130, attempt.where()
            assert "rerun the same command to resume" in attempt.stderr, attempt.where()
            assert runs[0].status == "KILLED", runner.summary()
        else:  # nobody could mark it; unless it was killed after being marked FINISHED
            assert attempt.returncode == -9, attempt.where()
            assert runs[0].status in ("RUNNING", "FINISHED"), runner.summary()
            if runs[0].status == "RUNNING":  # nothing a later step could take for a result
                assert not (runs[0].output_dir / "manifest.parquet").exists() or (
                    kill == RENAME_POINTS[3] or isinstance(kill, Watch)
                ), runner.summary()
        check_finished_runs(experiment)

    if FULL:  # the command itself
        final = runner.run(argv)
        assert final.returncode == 0, final.where()
        assert said_resumed_or_reused(final.stderr), final.where()
        assert final.stdout.strip() == runs[0].run_id
    else:  # its code, in-process (saves starting a process)
        run = merge_cutouts(list(fault_inputs.cutouts_ids), output_path=output, **NOISE)
        assert run.resumed or run.reused, runner.summary()
    runs = runs_of(experiment, STEP)
    assert [r.status for r in runs] == ["FINISHED"], runner.summary()
    check_finished_runs(experiment)
    assert not list(runs[0].output_dir.rglob(".tmp*")), "temporaries left in the finished run"
    assert_same_outputs(reference.output_dir, runs[0].output_dir, context=f"\n{runner.summary()}")


def test_merge_on_a_full_disk_fails_cleanly_and_resumes_once_space_is_freed(
    fault_inputs, fault_env, small_disk
):
    ids = list(fault_inputs.cutouts_ids)
    fault_env.use("reference")
    reference = merge_cutouts(ids, output_path=fault_env.work / "merged")

    runner = fault_env.runner("faulted")
    experiment = fault_env.use("faulted")
    output = small_disk.path / "merged"
    small_disk.fill(free=36 * 1024)  # the mosaics table fits, the manifest does not
    try:
        attempt = runner.run(_argv(ids, output, noise={}))
    finally:
        small_disk.empty()
    assert_one_line_disk_error(attempt)
    runs = runs_of(experiment, STEP)
    assert [r.status for r in runs] == ["FAILED"], runner.summary()
    assert "No space left on device" in runs[0].tags.get("astrocurate.error", "")
    # no manifest (what the next step reads); a mosaics table only if it is complete
    left = result_files(runs[0].output_dir)
    assert set(left) <= {"mosaics.parquet"}, f"files of a failed merge: {sorted(left)}"
    for name, path in left.items():
        assert path.read_bytes() == (reference.output_dir / name).read_bytes(), name
    assert not list(runs[0].output_dir.rglob(".tmp*")), "partial files left behind"

    resumed = merge_cutouts(ids, output_path=output)  # the same command's code, in-process
    assert resumed.resumed and resumed.run_id == runs[0].run_id
    assert [r.status for r in runs_of(experiment, STEP)] == ["FINISHED"]
    check_finished_runs(experiment)
    assert_same_outputs(reference.output_dir, resumed.output_dir)
