"""The optional source-finding step under faults: killed after its first mosaic, then rerun.

Two small mosaics, one at a time (``--workers 1``); each finished mosaic leaves its source
list and rms map, then its summary ``parts/<stem>.json``. SIGKILL right after the first
summary appears leaves one RUNNING run; the same command resumes it, skips that mosaic and
finishes it.
"""

from __future__ import annotations

import pytest
from faultkit import PYTHON, At, check_finished_runs, runs_of

from astrocurate.stages.source_finding import outputs
from astrocurate.synthetic.survey import make_survey
from needs import unavailable

pytestmark = pytest.mark.slow


def test_source_finding_killed_after_one_mosaic_resumes_without_redoing_it(fault_env):
    try:
        import bdsf  # noqa: F401
    except ImportError:
        unavailable("PyBDSF is not installed (pip install 'astrocurate[sources]')")
    survey = make_survey(fault_env.work / "survey", n_mosaics=2, mosaic_size=128, seed=5)
    argv = [PYTHON, "-m", "astrocurate.cli", "find-sources", "--workers", "1"]
    argv += ["--mosaics_path", str(survey.output_dir)]
    runner = fault_env.runner("faulted")
    experiment = fault_env.use("faulted")

    attempt = runner.run(argv, At("*/parts/*.json", when="after"))
    assert attempt.fired and attempt.returncode == -9, runner.summary()
    (run,) = runs_of(experiment, "source_finding")
    assert run.status == "RUNNING", runner.summary()
    first = outputs.catalogue_path(run.output_dir, survey.mosaic_names[0])
    done_at = first.stat().st_mtime_ns

    final = runner.run(argv)
    assert final.returncode == 0, final.where()
    assert "resuming: 1 of 2 mosaics already done" in final.stderr, final.where()
    assert final.stdout.strip() == run.run_id
    assert first.stat().st_mtime_ns == done_at  # not redone
    assert set(outputs.read_index(run.output_dir)["status"]) == {"ok"}
    check_finished_runs(experiment)
