"""Step 1 under faults: ``scripts/cutouts.py`` killed at seeded points, then rerun.

The cutouts carry the columns of each mosaic's rms map (beside it) and of a survey-wide
source catalogue (``--catalogue``), which must come out the same too.

The survey has 4 mosaics, cut one at a time (``--workers 1``); each mosaic leaves its
pixel file, then its rows and summary under ``parts/``; assembly writes the tables and
drops ``parts/``. First a SIGTERM after the first mosaic (graceful: the run is marked
KILLED, exit 130), then SIGKILL right after a seeded mosaic's pixel file appears (its
summary missing), right before a later mosaic's summary appears, and in the middle of
assembly; every rerun continues the same run.
"""

from __future__ import annotations

import pandas as pd
import pytest
from faultkit import (
    FULL,
    PYTHON,
    ROOT,
    At,
    assert_same_outputs,
    check_finished_runs,
    rerun_to_the_end,
    rng,
    runs_of,
)

from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts

pytestmark = pytest.mark.slow

WINDOW = 32


def _catalogue(survey, directory) -> str:
    """A survey-wide source list (PyBDSF's CSV columns and units) from the survey's truth."""
    import numpy as np
    import pandas as pd

    truth = pd.read_parquet(survey / "truth_catalogue.parquet").drop_duplicates("source_id")
    path = directory / "sources.csv"
    pd.DataFrame(
        {
            "RA": truth["ra"],
            "DEC": truth["dec"],
            "Total_flux": truth["flux_jy"],
            "Maj": truth["size_arcsec"] / 3600.0,
            "S_Code": np.array(["S", "M", "C"])[truth["source_id"].to_numpy() % 3],
        }
    ).to_csv(path, index=False)
    return str(path)


def _argv(survey, output, catalogue) -> list[str]:
    return [
        PYTHON,
        str(ROOT / "scripts" / "cutouts.py"),
        "--mosaics_path",
        str(survey),
        "--output_path",
        str(output),
        "--window_size",
        str(WINDOW),
        "--workers",
        "1",
        "--catalogue",
        catalogue,
    ]


def test_cutouts_killed_at_seeded_points_resume_to_the_same_result(fault_inputs, fault_env):
    output = fault_env.work / "cut"
    fault_env.use("reference")
    catalogue = _catalogue(fault_inputs.survey, fault_env.work)
    options = CutoutOptions(WINDOW, catalogue=catalogue)
    reference = make_cutouts(fault_inputs.survey, output, options, workers=1)
    manifest = pd.read_parquet(reference.output_dir / "manifest.parquet")
    assert manifest["rms_map"].notna().all() and manifest["n_sources"].sum() > 0

    r = rng(1)
    first, second = int(r.integers(1, 3)), int(r.integers(2, 4))
    kills = [
        At("*/parts/00000.json", when="after", signal="SIGTERM"),
        At(f"*/pixels/{first:05d}-*.npy", when="after"),
        At(f"*/parts/{second:05d}.json", when="before"),
        At("*/manifest.parquet", when="after"),
    ]
    if FULL:  # also between the two tables of assembly
        kills.insert(-1, At("*/mosaics.parquet", when="after"))
    runner = fault_env.runner("faulted")
    experiment = fault_env.use("faulted")
    argv = _argv(fault_inputs.survey, output, catalogue)
    for kill in kills:
        attempt = runner.run(argv, kill)
        assert attempt.fired, runner.summary()
        runs = runs_of(experiment, "cutting_out")
        assert len(runs) == 1, f"one interrupted run expected:\n{runner.summary()}"
        if kill.signal == "SIGTERM":  # graceful: marked KILLED, told to rerun
            assert attempt.returncode == 130, attempt.where()
            assert "rerun the same command to resume" in attempt.stderr, attempt.where()
            assert runs[0].status == "KILLED", runner.summary()
        else:
            assert attempt.returncode == -9, attempt.where()
            assert runs[0].status == "RUNNING", runner.summary()
        check_finished_runs(experiment)

    final, run = rerun_to_the_end(runner, argv, experiment, "cutting_out")
    assert final.stdout.strip() == run.run_id
    assert_same_outputs(reference.output_dir, run.output_dir, context=f"\n{runner.summary()}")


def test_a_killed_cutting_worker_stops_the_run_in_one_line_and_the_rerun_resumes(
    fault_inputs, fault_env
):
    """A worker process dies (the system's out-of-memory killer, say) while the step runs."""
    output = fault_env.work / "cut"
    fault_env.use("reference")
    catalogue = _catalogue(fault_inputs.survey, fault_env.work)
    reference = make_cutouts(
        fault_inputs.survey, output, CutoutOptions(WINDOW, catalogue=catalogue), workers=1
    )
    runner = fault_env.runner("faulted")
    experiment = fault_env.use("faulted")
    argv = _argv(fault_inputs.survey, output, catalogue)
    argv[argv.index("--workers") + 1] = "2"
    attempt = runner.run(argv, At("*/parts/*.json", when="before", in_worker=True))
    assert attempt.fired and attempt.returncode == 1, attempt.where()
    error = attempt.stderr.strip().splitlines()[-1]
    assert error.startswith("cutouts.py: error: a worker process cutting the mosaics ended"), (
        attempt.where()
    )
    assert "Traceback" not in attempt.stderr, attempt.where()
    assert [r.status for r in runs_of(experiment, "cutting_out")] == ["FAILED"], runner.summary()

    _, run = rerun_to_the_end(runner, argv, experiment, "cutting_out")
    assert_same_outputs(reference.output_dir, run.output_dir, context=f"\n{runner.summary()}")
