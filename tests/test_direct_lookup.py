"""The direct sqlite lookup reads MLflow's private tables: it must answer as MLflow does.

:func:`astrocurate.tracking.direct.search_runs` and ``read_run`` read a local ``sqlite:///``
store with :mod:`sqlite3`, without importing MLflow. Here both ways answer the same
questions side by side on one store holding every run state MLflow has (finished, failed,
killed, running, scheduled), deleted runs, and a deleted experiment; any difference,
e.g. after an MLflow upgrade changes its schema or its ordering, fails the test.
``pyproject.toml`` bounds mlflow to the versions this test has passed on.
"""

from __future__ import annotations

import itertools
import time
import uuid

import pytest

from astrocurate import tracking

STATES = ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED")


def _make_runs(experiment: str) -> list[str]:
    """Runs of two steps in every state, two per key, some deleted; return their IDs."""
    client = tracking.client()
    experiment_id = client.create_experiment(experiment)
    ids = []
    for i, (step, state) in enumerate(itertools.product(("cutting_out", "merge_cutouts"), STATES)):
        tags = {
            tracking.TAG_STEP: step,
            tracking.TAG_RUN_KEY: f"key-{i % 2}",
            "mlflow.runName": step,
        }
        run = client.create_run(experiment_id, run_name=step, tags=tags)
        client.log_param(run.info.run_id, "window_size", str(16 * (i + 1)))
        if state != "RUNNING":
            client.set_terminated(run.info.run_id, status=state)
        ids.append(run.info.run_id)
        time.sleep(0.002)  # distinct start times, newest last
    for _ in range(2):  # two runs with one start time: the order of ties
        ids.append(
            client.create_run(experiment_id, run_name="cutting_out", start_time=1).info.run_id
        )
    for run_id in ids[1:10:4]:  # deleted runs (not the tied pair)
        client.delete_run(run_id)
    return ids


def _answers(direct: bool) -> list[tuple]:
    """Every question find_runs asks, answered one way: (run ID, name, status, params, tags)."""
    out = []
    for step, key, unfinished in itertools.product(
        (None, "cutting_out", "merge_cutouts", "nothing"), (None, "key-0", "key-9"), (True, False)
    ):
        if direct:
            path = tracking.direct.local_store()
            assert path is not None
            records = tracking.direct.search_runs(path, step, key, unfinished)
        else:
            records = tracking.reads.search_records(step, key, unfinished, tracking.client())
        out.append([(r.run_id, r.name, r.status, r.start_time, r.params, r.tags) for r in records])
    return out


@pytest.mark.parametrize("deleted_experiment", [False, True], ids=["active", "deleted-experiment"])
def test_direct_lookup_answers_as_mlflow_does(store, monkeypatch, deleted_experiment) -> None:
    experiment = f"lookup-{uuid.uuid4().hex[:8]}"
    tracking.client()  # creates the store's tables
    ids = _make_runs(experiment)
    if deleted_experiment:
        client = tracking.client()
        client.delete_experiment(client.get_experiment_by_name(experiment).experiment_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)

    direct, through_mlflow = _answers(direct=True), _answers(direct=False)
    assert direct == through_mlflow
    # an active experiment's questions find runs (the comparison is not of empty lists);
    # a deleted experiment's runs are found by neither
    assert any(direct) != deleted_experiment

    path = tracking.direct.local_store()
    for run_id in ids:  # one run by ID, deleted ones included
        record, _ = tracking.direct.read_run(path, run_id)
        expected = tracking.RunRecord.from_mlflow(tracking.client().get_run(run_id))
        assert record == expected, run_id
    assert tracking.direct.read_run(path, uuid.uuid4().hex) is None
