"""Shared fixtures: an isolated MLflow store and working directory per test.

Also how the suite splits over pytest-xdist workers (``make test`` runs ``-n logical``):
tests that share an expensive fixture run on one worker, heavy groups start first, and
each worker's processes get an equal share of the cores.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from slurm_cluster import slurm_cluster_fixture  # noqa: F401 - one SLURM cluster per session

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    # Before torch is imported anywhere: two workers with all-core OpenMP pools on the
    # same cores slow each other down many times over. Subprocesses inherit the share.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))


@pytest.fixture(scope="session")
def tracking_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real sqlite MLflow store for the session (creating one takes seconds)."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{path}"


@pytest.fixture
def store(tracking_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every step at the session store, in a fresh experiment and working directory.

    Returns the working directory; outputs go to ``<workdir>/outputs``.
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"test-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("ASTROCURATE_DATA_DIR", str(tmp_path / "outputs"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def curation_pipeline(tracking_db: str, tmp_path_factory: pytest.TempPathFactory):
    """A small finished pipeline up to the clustering (tests/curation_pipeline.py).

    Its runs live in their own experiment, which stays selected while the session lasts
    (tests that use ``store`` switch away and back).
    """
    from curation_pipeline import build_pipeline

    work = tmp_path_factory.mktemp("curation")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", f"curation-{uuid.uuid4().hex[:12]}")
        patch.setenv("ASTROCURATE_DATA_DIR", str(work / "outputs"))
        yield build_pipeline(work)


#: ``make test-full`` (``ASTROCURATE_FAULTS=full``) runs every test; ``make test`` skips
#: those marked ``full``, second checks of what the fault-injection suite already covers.
FULL_SWEEP = os.environ.get("ASTROCURATE_FAULTS", "").strip().lower() == "full"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``full`` unless asked for; order the tests for xdist."""
    if not FULL_SWEEP:
        skip = pytest.mark.skip(reason="full sweep only: make test-full (ASTROCURATE_FAULTS=full)")
        for item in items:
            if item.get_closest_marker("full"):
                item.add_marker(skip)
    _group_for_workers(items)


def worker_group(nodeid: str) -> str:
    """The xdist group of a test: one per module, one for SLURM, one for tests/faults.

    A group runs on one worker, so a module-scoped fixture is built once, the single
    SLURM cluster (``slurm_cluster``, only in ``tests/test_slurm*.py``) serves every
    test that needs one, and the fault suite's session inputs are built once.
    """
    path = Path(nodeid.split("::", 1)[0])
    if path.parent.name == "faults":
        return "faults"
    return "slurm" if path.name.startswith("test_slurm") else str(path)


def _group_for_workers(items: list[pytest.Item]) -> None:
    """Put the heaviest xdist groups first (``--dist loadgroup`` hands them out in order).

    The weight of a group counts its tests, 30 for one marked ``slow``, so the long
    groups start at once instead of last.
    """
    members: dict[str, list[pytest.Item]] = defaultdict(list)  # in collection order
    weight: dict[str, float] = defaultdict(float)
    for item in items:
        group = worker_group(item.nodeid)
        if "slurm_cluster" in getattr(item, "fixturenames", ()) and group != "slurm":
            raise pytest.UsageError(
                f"{item.nodeid} uses slurm_cluster: move it to a tests/test_slurm*.py module "
                "(one cluster per session runs on one worker)"
            )
        members[group].append(item)
        weight[group] += 30.0 if item.get_closest_marker("slow") else 1.0
    heaviest_first = sorted(members, key=lambda group: -weight[group])  # stable: ties keep order
    items[:] = [item for group in heaviest_first for item in members[group]]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """With ``--dist loadgroup``, each group of :func:`worker_group` runs on one worker.

    (xdist's own ``xdist_group`` marks do not reach the scheduler under pytest 9.)
    """
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return GroupScheduling(config, log)
