"""The report under faults: ``astrocurate report RUN_ID`` and sampling killed mid-report.

The report of a sampling run (:mod:`astrocurate.stages.curated_sampling.report`) is built in a
temporary folder
of the run directory, then swapped in by two renames: the old ``report/`` out of the
way, the new one into place. It is deterministic (seeded subsamples, PCA, PNGs without
timestamps): the same run gives the same bytes, so a regenerated report must equal the
first one bit for bit. The page names its run directory, so two runs' pages are
compared with that path replaced.

Kill points of ``astrocurate report``: with the new report complete but not yet in place
(before the rename onto ``report``; a seeded one of the points by default), right after
the old one was moved away, and with the new one in place but its artifacts not yet
logged. After each, ``report/index.html`` is either the complete old page or absent,
never half-written; the run still passes ``astrocurate verify`` (no stray files of the
killed attempt in its record); and a rerun writes the same bytes and leaves nothing
else behind.

Kill points of ``scripts/random_sampling.py`` (whose last act is the report): before and
after the rename of the report (one seeded by default), and from outside a seeded moment
after the report appeared (full sweep). The killed run stays RUNNING (never FINISHED
without a complete ``outputs.json``); the rerun resumes it to a FINISHED run whose
``outputs.json`` lists exactly the files on disk, the report included, bit for bit those
of an uninterrupted run.
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
    rng,
    runs_of,
    verify_exit_status,
)

from astrocurate.stages.curated_sampling.run import (
    SamplingOptions,
    curated_sample,
    regenerate_report,
)
from astrocurate.tracking import get_run, output_files, recorded_listing

pytestmark = pytest.mark.slow

STEP = "curated_sampling"
NUM_SAMPLES = 120


@dataclass(frozen=True)
class Reference:
    run_id: str
    output_dir: Path
    experiment: str
    report: dict[str, bytes]  # report/ file name -> bytes


def _report_files(directory: Path) -> dict[str, bytes]:
    folder = directory / "report"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


@pytest.fixture(scope="module")
def reference(fault_inputs, tracking_db) -> Reference:
    """An uninterrupted sampling run with its report, in-process, in its own experiment."""
    experiment = f"faults-report-ref-{uuid.uuid4().hex[:10]}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
        patch.chdir(fault_inputs.work)
        run = curated_sample(fault_inputs.clustering_id, SamplingOptions(NUM_SAMPLES))
    report = _report_files(run.output_dir)
    assert "index.html" in report, sorted(report)
    return Reference(run.run_id, run.output_dir, experiment, report)


def _same_run_dir(reference: Path, candidate: Path):
    """A normaliser of ``report/index.html``: the page names its own run directory."""

    def fix(data: bytes) -> bytes:
        return data.replace(str(reference).encode(), b"RUN").replace(
            str(candidate).encode(), b"RUN"
        )

    return fix


def _assert_listing_matches_disk(run_id: str, directory: Path) -> None:
    """The run's ``outputs.json`` lists exactly its files, with their sizes."""
    listing = recorded_listing(run_id)
    assert listing is not None, f"run {run_id} recorded no outputs.json"
    on_disk = {p.relative_to(directory).as_posix(): p for p in output_files(directory)}
    assert sorted(listing) == sorted(on_disk), (
        f"outputs.json of {run_id} and its directory differ: "
        f"missing {sorted(set(listing) - set(on_disk))}, "
        f"unrecorded {sorted(set(on_disk) - set(listing))}"
    )
    for name, path in on_disk.items():
        assert path.stat().st_size == listing[name]["size"], name
    assert any(name.startswith("report/") for name in listing), "no report in outputs.json"


def _assert_old_report_or_none(directory: Path, old: dict[str, bytes], context: str) -> None:
    """``report/`` holds the complete old report, or there is none (never a partial one)."""
    now = _report_files(directory)
    assert now in ({}, old), (
        f"report/ is neither the complete old report nor absent{context}: "
        f"{sorted(now)} (index.html {len(now.get('index.html', b''))} bytes, "
        f"old {len(old['index.html'])})"
    )


# --------------------------------------------------------------------------- regeneration


def _regeneration_kills() -> list[At]:
    points = [
        At("*/report", when="before"),  # new report complete, old one still in place
        At("*/.*report*", when="after"),  # the old report moved away, the new one not in
        At("*/report", when="after"),  # the new report in place, its artifacts not logged
    ]
    if FULL:
        return points
    return [points[int(rng(6).integers(len(points)))]]


def test_report_regeneration_killed_leaves_the_old_report_or_none(reference, fault_env):
    """On the reference run itself (deterministic: it ends with the same bytes)."""
    run_id, directory, old = reference.run_id, reference.output_dir, reference.report
    fault_env.select(reference.experiment)
    runner = fault_env.runner("faulted")
    argv = [PYTHON, "-m", "astrocurate.cli", "report", run_id]
    for kill in _regeneration_kills():
        if not (directory / "report").exists():  # killed with none in place: put it back
            _restore(directory, old)
        attempt = runner.run(argv, kill)
        assert attempt.fired and attempt.returncode == -9, runner.summary()
        context = f" after {kill.describe()}:\n{runner.summary()}"
        _assert_old_report_or_none(directory, old, context)
        assert get_run(run_id).status == "FINISHED", f"{get_run(run_id).status}{context}"
        code, text = verify_exit_status(run_id)
        assert code == 0, f"verify {run_id} exit {code}{context}\n{text}"

    page = regenerate_report(run_id)  # the command's code, in-process
    assert page == directory / "report" / "index.html"
    assert _report_files(directory) == old, "the regenerated report differs from the first"
    leftovers = sorted(p.name for p in directory.iterdir() if p.name.startswith("."))
    assert leftovers == [".astrocurate.lock"], f"left in the run directory: {leftovers}"
    code, text = verify_exit_status(run_id, strict=True)  # the report too is as recorded
    assert code == 0, text


def _restore(directory: Path, files: dict[str, bytes]) -> None:
    folder = directory / "report"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)


# --------------------------------------------------------------------------- sampling


def _sampling_kills(output: Path) -> list[At | Watch]:
    r = rng(7)
    points: list[At | Watch] = [At("*/report", when="before"), At("*/report", when="after")]
    if not FULL:
        return [points[int(r.integers(len(points)))]]
    return [*points, Watch(output, "*/report/index.html", delay=float(r.uniform(0.0, 0.5)))]


def test_sampling_killed_mid_report_is_never_finished_without_its_outputs(
    reference, fault_inputs, fault_env
):
    experiment = fault_env.use("faulted")
    runner = fault_env.runner("faulted")
    argv = [
        PYTHON,
        str(ROOT / "scripts" / "random_sampling.py"),
        "--clustering-id",
        fault_inputs.clustering_id,
        "--num-samples",
        str(NUM_SAMPLES),
    ]
    output = reference.output_dir.parent  # the runs of the clustering's output root
    for kill in _sampling_kills(output):
        attempt = runner.run(argv, kill)
        runs = runs_of(experiment, STEP)
        assert len(runs) == 1, runner.summary()
        if isinstance(kill, Watch) and not attempt.fired:
            assert attempt.returncode == 0, attempt.where()
            break
        assert attempt.fired and attempt.returncode == -9, runner.summary()
        context = f" after {kill.describe()}:\n{runner.summary()}"
        if runs[0].status == "FINISHED":  # killed after the run was marked FINISHED
            _assert_listing_matches_disk(runs[0].run_id, runs[0].output_dir)
        else:
            assert runs[0].status == "RUNNING", f"{runs[0].status}{context}"
            assert recorded_listing(runs[0].run_id) is None or isinstance(kill, Watch), (
                f"an unfinished run has an outputs.json{context}"
            )
        index = runs[0].output_dir / "report" / "index.html"
        if index.exists():
            assert index.read_bytes().endswith(b"</html>\n"), f"half-written page{context}"
        check_finished_runs(experiment)

    resumed = curated_sample(fault_inputs.clustering_id, SamplingOptions(NUM_SAMPLES))
    assert resumed.resumed or resumed.reused, runner.summary()
    runs = runs_of(experiment, STEP)
    assert [(r.run_id, r.status) for r in runs] == [(resumed.run_id, "FINISHED")]
    check_finished_runs(experiment)
    _assert_listing_matches_disk(resumed.run_id, resumed.output_dir)
    leftovers = sorted(p.name for p in resumed.output_dir.iterdir() if p.name.startswith("."))
    assert leftovers == [".astrocurate.lock"], f"left in the run directory: {leftovers}"
    assert_same_outputs(
        reference.output_dir,
        resumed.output_dir,
        normalise={"report/index.html": _same_run_dir(reference.output_dir, resumed.output_dir)},
        context=f"\n{runner.summary()}",
    )
