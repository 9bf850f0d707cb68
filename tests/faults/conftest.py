"""Fixtures of the fault-injection suite (issue 8): small real inputs, one experiment per use.

The inputs are built once per session in the session store (``tracking_db`` of
tests/conftest.py): a 4-mosaic synthetic survey, its cutouts of 32 and 64 px, a merge
of the 64 px cutouts (a few dozen rows, the input of the feature test), a merge of
both with stand-in features (tests/curation_pipeline.py) and a finished clustering of
those (the input of the sampling test).

Each test gets :class:`FaultEnv`: every experiment it names is fresh, so the
uninterrupted reference run and the faulted runs never reuse each other.

Fast subset and full sweep
--------------------------
By default (``make test``) each chain of kills takes a few seeded points, so that the
suite stays quick. The full sweep adds every other kill point (each rename before and
after, kills from outside at seeded moments, reruns through the real command)::

    make test-full                                  # the fault suite, full sweep
    ASTROCURATE_FAULTS=full pytest tests/faults     # the same
    ASTROCURATE_FAULT_SEED=3 pytest tests/faults    # other seeded kill points

``ASTROCURATE_FAULTS=full`` is read by ``faultkit.FULL``; the run's header and its
summary say which of the two ran.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import (
    CLUSTER_CONFIG,
    FULL,
    SEED,
    Runner,
    SmallDisk,
    mount_small_disk,
    unmount_small_disk,
)

SURVEY_SEED = 7

#: How to run the full sweep (shown in the header and the summary of a test run).
FULL_SWEEP_HINT = "make test-full, or ASTROCURATE_FAULTS=full pytest tests/faults"


def _mode() -> str:
    if FULL:
        return f"fault injection: full sweep (ASTROCURATE_FAULTS=full), seed {SEED}"
    return f"fault injection: fast subset, seed {SEED}; full sweep: {FULL_SWEEP_HINT}"


def pytest_report_header(config: pytest.Config) -> str:
    return _mode()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    ran = [
        r
        for key in ("passed", "failed", "error")
        for r in terminalreporter.stats.get(key, [])
        if "tests/faults/" in getattr(r, "nodeid", "")
    ]
    if ran:
        terminalreporter.write_line(_mode())


@dataclass(frozen=True)
class FaultInputs:
    """Finished runs the faulted steps start from."""

    work: Path
    survey: Path
    cutouts_ids: tuple[str, ...]  # the cutout runs of 32 and 64 px: the merge test's input
    merged64_id: str  # merge of the 64 px cutouts: the feature test's input
    features_id: str  # stand-in features of the 32 + 64 px merge
    clustering_id: str  # finished clustering of those features


@pytest.fixture(scope="session")
def fault_inputs(tracking_db: str, tmp_path_factory: pytest.TempPathFactory) -> FaultInputs:
    from astrocurate.io.cutout_store import read_manifest
    from astrocurate.stages.clustering.run import (
        ClusteringConfig,
        prepare_clustering,
        run_clustering,
    )
    from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
    from astrocurate.stages.merge_cutouts.run import merge_cutouts
    from astrocurate.synthetic.survey import make_survey
    from curation_pipeline import feature_run, features_from_manifest

    work = tmp_path_factory.mktemp("fault-inputs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", f"fault-inputs-{uuid.uuid4().hex[:12]}")
        patch.setenv("ASTROCURATE_DATA_DIR", str(work / "outputs"))
        patch.chdir(work)  # MLflow puts the artifacts of new experiments under ./mlruns
        survey = make_survey(work / "survey", n_mosaics=4, mosaic_size=256, seed=SURVEY_SEED)
        cuts = {
            size: make_cutouts(survey.output_dir, work / "outputs", CutoutOptions(size), workers=1)
            for size in (32, 64)
        }
        merged64 = merge_cutouts([cuts[64].run_id])
        merged = merge_cutouts([cuts[32].run_id, cuts[64].run_id])
        features = feature_run(
            merged.run_id, features_from_manifest(read_manifest(merged.output_dir))
        )
        config = ClusteringConfig.from_mapping(CLUSTER_CONFIG)
        prepared = prepare_clustering(features.run_id, config)
        run_clustering(prepared.directory)
    return FaultInputs(
        work,
        survey.output_dir,
        (cuts[32].run_id, cuts[64].run_id),
        merged64.run_id,
        features.run_id,
        prepared.run_id,
    )


class FaultEnv:
    """The store and working directory of one test; experiments made fresh on demand."""

    def __init__(self, tracking_db: str, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tracking_db = tracking_db
        self.work = work
        self._patch = monkeypatch
        self._tag = uuid.uuid4().hex[:10]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        monkeypatch.setenv("ASTROCURATE_DATA_DIR", str(work / "outputs"))
        monkeypatch.chdir(work)

    def experiment(self, name: str) -> str:
        """The (fresh) experiment ``name`` of this test."""
        return f"faults-{name}-{self._tag}"

    def use(self, name: str) -> str:
        """Point this process at experiment ``name`` (in-process steps and store checks)."""
        return self.select(self.experiment(name))

    def select(self, experiment: str) -> str:
        """Point this process at an experiment given by its full name."""
        self._patch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
        return experiment

    def runner(self, name: str) -> Runner:
        """A runner of commands in experiment ``name``, logs under ``<work>/logs/<name>``."""
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.tracking_db,
            "MLFLOW_EXPERIMENT_NAME": self.experiment(name),
            "ASTROCURATE_DATA_DIR": str(self.work / "outputs"),
        }
        return Runner(env=env, cwd=self.work, logs=self.work / "logs" / name)


@pytest.fixture
def fault_env(
    tracking_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultEnv]:
    yield FaultEnv(tracking_db, tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallDisk]:
    """A small tmpfs for the full-disk tests (skipped where mounting is not permitted)."""
    path = tmp_path_factory.mktemp("small-disk") / "mnt"
    reason = mount_small_disk(path)
    if reason is not None:
        pytest.skip(reason)
    try:
        yield SmallDisk(path)
    finally:
        unmount_small_disk(path)
