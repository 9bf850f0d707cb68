"""Runs written directly to a local sqlite store read back as runs written by MLflow.

:class:`~astrocurate.tracking.direct_client.DirectClient` writes MLflow's private tables
with :mod:`sqlite3`. Here the same calls go to one store directly and to another through
MLflow, and both are read back with MLflow's own client (``get_run``, ``search_runs``,
``get_metric_history``, ``list_artifacts``) and compared, IDs and times aside; an MLflow
upgrade that changes what it writes fails here (``pyproject.toml`` bounds MLflow, and
``sqlite_writes.KNOWN_SCHEMAS`` names the schema revisions checked).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from astrocurate import tracking
from astrocurate.tracking import sqlite_writes, store
from astrocurate.tracking.direct_client import DirectClient, log_batch
from astrocurate.tracking.entities import Metric, Param, RunTag, is_store_error

EXPERIMENT = "compare"
#: Columns of ``runs`` compared row by row (the rest are IDs, times and paths).
RUN_COLUMNS = (
    "name, source_type, source_name, entry_point_name, user_id, status, source_version,"
    " lifecycle_stage, deleted_time, end_time IS NULL"
)


def _new_store(folder: Path) -> tuple[str, Path]:
    """Create a store and its experiment through MLflow; return its URI and file."""
    folder.mkdir(parents=True)
    path = folder / "mlflow.db"
    uri = f"sqlite:///{path}"
    with contextlib.chdir(folder):  # the default artifact root: <folder>/mlruns
        store.mlflow_client(uri).create_experiment(EXPERIMENT)
    return uri, path


def _no_mlflow() -> Any:
    raise AssertionError("the direct client fell back to MLflow")


def _inputs(tmp: Path) -> dict[str, Path]:
    """Files and folders to log as artifacts."""
    folder = tmp / "report"
    (folder / "figures").mkdir(parents=True)
    (folder / "index.html").write_text("<html></html>")
    (folder / "figures" / "a.png").write_bytes(b"\x89PNG" * 100)
    (tmp / "config.yaml").write_text("k: 1\n")
    (tmp / "metrics.json").write_text('{"a": 1}')
    return {"folder": folder, "config": tmp / "config.yaml", "metrics": tmp / "metrics.json"}


def _scenario(client: Any, experiment: str, files: dict[str, Path]) -> list[str]:
    """Every write the tracking layer makes, in every run state; return the run IDs."""
    tags = {"mlflow.runName": "cutting_out", "mlflow.user": "ana", "astrocurate.step": "x"}
    ids = []
    for status in ("FINISHED", "FAILED", "KILLED", "SCHEDULED", "RUNNING"):
        run = client.create_run(experiment, tags={**tags, "state": status}, run_name="cutting_out")
        run_id = run.info.run_id
        ids.append(run_id)
        assert run.info.status == "RUNNING" and run.data.tags["state"] == status
        log_batch(client, run_id, params=[Param("window_size", "64"), Param("seed", "1")])
        log_batch(client, run_id, params=[Param("seed", "1"), Param("extra", "")])
        metrics = [Metric("loss", v, 1000 + i, i) for i, v in enumerate((3.0, 2.0, 2.5))]
        metrics += [Metric("loss", 9.0, 5000, 1), Metric("loss", 2.5, 1002, 2)]  # older step
        metrics += [Metric("tie", 1.0, 10, 0), Metric("tie", 0.5, 10, 0), Metric("tie", 2.0, 9, 0)]
        metrics += [Metric("odd", math.nan, 1, 0), Metric("big", math.inf, 1, 0)]
        metrics += [Metric("neg", -math.inf, 1, 0), Metric("n", 4, 7, 3)]
        log_batch(client, run_id, metrics=metrics)
        log_batch(client, run_id, metrics=[Metric("loss", 1.0, 1, 2), Metric("odd", 1.0, 0, 0)])
        log_batch(client, run_id, metrics=[Metric(f"s{k}", float(k), 2, k) for k in range(30)])
        log_batch(client, run_id, tags=[RunTag("a", "1"), RunTag("b", "2"), RunTag("a", "3")])
        client.set_tag(run_id, "progress", 5)
        client.set_tag(run_id, "progress", "done")
        client.log_artifact(run_id, str(files["config"]))
        client.log_artifact(run_id, str(files["metrics"]), "plots")
        client.log_artifact(run_id, str(files["folder"]))
        client.log_artifacts(run_id, str(files["folder"]), "copy/of")
        client.update_run(run_id, status="RUNNING")
        if status in ("FINISHED", "FAILED", "KILLED"):
            client.set_terminated(run_id, status=status)
        elif status == "SCHEDULED":
            client.update_run(run_id, status=status)
    bare = client.create_run(experiment, run_name="merge_cutouts", start_time=7)
    ids.append(bare.info.run_id)
    client.set_terminated(bare.info.run_id)
    return ids


def _artifacts(client: Any, run_id: str, path: str | None = None) -> list[tuple]:
    """Return (path, is_dir, size) of every artifact of a run, recursively."""
    out = []
    for entry in client.list_artifacts(run_id, path):
        out.append((entry.path, entry.is_dir, entry.file_size))
        if entry.is_dir:
            out.extend(_artifacts(client, run_id, entry.path))
    return out


def _number(value: float) -> float | str:
    """Return ``value``, NaN as text (NaN equals nothing, not even itself)."""
    return "nan" if math.isnan(value) else value


def _summary(uri: str, path: Path) -> list[dict[str, Any]]:
    """Everything MLflow reads back of the experiment's runs, IDs and times left out."""
    client = store.mlflow_client(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    out = []
    for found in runs:
        run = client.get_run(found.info.run_id)
        assert repr(run.data.to_dictionary()) == repr(found.data.to_dictionary())
        run_id = run.info.run_id
        history = {
            key: [
                (_number(m.value), m.timestamp, m.step)
                for m in client.get_metric_history(run_id, key)
            ]
            for key in run.data.metrics
        }
        with sqlite3.connect(path) as db:
            row = db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_uuid = ?", (run_id,))
            raw = row.fetchone()
        out.append(
            {
                "name": run.info.run_name,
                "status": run.info.status,
                "user": run.info.user_id,
                "stage": run.info.lifecycle_stage,
                "ended": run.info.end_time is not None,
                "artifact_uri": run.info.artifact_uri.replace(run_id, "ID").rsplit("/", 3)[1:],
                "metrics": {k: _number(v) for k, v in run.data.metrics.items()},
                "params": run.data.params,
                "tags": run.data.tags,
                "history": {k: sorted(v, key=repr) for k, v in history.items()},
                "artifacts": sorted(_artifacts(client, run_id)),
                "row": raw,
            }
        )
    return sorted(out, key=lambda run: (run["name"], run["tags"].get("state", ""), run["status"]))


def test_direct_writes_read_back_as_mlflow_writes(tmp_path: Path) -> None:
    files = _inputs(tmp_path / "inputs")
    direct_uri, direct_path = _new_store(tmp_path / "direct")
    mlflow_uri, mlflow_path = _new_store(tmp_path / "mlflow")
    direct = DirectClient.open(direct_path, direct_uri, _no_mlflow)
    assert direct is not None
    through = store.mlflow_client(mlflow_uri)
    experiment = direct.get_experiment_by_name(EXPERIMENT)
    theirs = through.get_experiment_by_name(EXPERIMENT)
    for field in ("experiment_id", "name", "lifecycle_stage"):
        assert getattr(experiment, field) == getattr(theirs, field)
    assert experiment.artifact_location == str(direct_path.parent / "mlruns" / "1")
    assert direct.get_experiment_by_name("missing") is None

    ids = _scenario(direct, experiment.experiment_id, files)
    _scenario(through, experiment.experiment_id, files)

    written, expected = _summary(direct_uri, direct_path), _summary(mlflow_uri, mlflow_path)
    assert len(written) == 6
    assert written == expected
    for run_id in ids:  # the direct get_run reads what MLflow's get_run reads
        ours, theirs = direct.get_run(run_id), store.mlflow_client(direct_uri).get_run(run_id)
        assert ours.info.status == theirs.info.status
        assert ours.info.artifact_uri == theirs.info.artifact_uri
        assert ours.data.params == theirs.data.params and ours.data.tags == theirs.data.tags
        assert repr(ours.data.metrics) == repr(theirs.data.metrics)


def _step_scenario(outputs: Path, files: dict[str, Path]) -> None:
    """A finished, a failed and a killed step through the tracking layer."""
    params = {"window_size": 64, "label": "a b", "ratio": 0.5}
    with tracking.tracked_step("cutting_out", params, seed=3, output_root=outputs) as run:
        (run.output_dir / "data.txt").write_text("payload")
        run.log_params({"n_mosaics": 2})
        run.log_metrics({"n_cutouts": 10, "rate": 1.5})
        run.log_metrics({"loss": 0.5}, step=3)
        run.log_metric_series("inertia", [5.0, 4.0, 4.5])
        run.set_tags({"astrocurate.progress": "level 1 done"})
        run.log_folder(files["folder"], "report")
        run.log_artifact(files["config"])
        run.log_dict({"x": [1, 2]}, "extra.json")
    with (
        pytest.raises(RuntimeError),
        tracking.tracked_step("merge_cutouts", {"dedup": True}, output_root=outputs),
    ):
        raise RuntimeError("boom\nsecond line")
    with (
        pytest.raises(KeyboardInterrupt),
        tracking.tracked_step("clustering", {"k": 3}, output_root=outputs),
    ):
        raise KeyboardInterrupt


#: Tags and parameters that name this process, its paths or its outputs' directory.
_LOCAL = {"astrocurate.output_dir", "astrocurate.pid", "astrocurate.host", "output_dir"}


def _step_summary(uri: str, path: Path) -> list[dict[str, Any]]:
    runs = _summary(uri, path)
    for run in runs:
        run["tags"] = {k: v for k, v in run["tags"].items() if k not in _LOCAL}
        run["params"] = {k: v for k, v in run["params"].items() if k not in _LOCAL}
        run["history"] = {k: sorted((v, s) for v, _, s in h) for k, h in run["history"].items()}
        run["metrics"].pop("hash_seconds", None)
        run["history"].pop("hash_seconds", None)
        run["artifacts"] = [(p, d) for p, d, _ in run["artifacts"]]  # metadata.json: paths
    return runs


def test_steps_written_directly_read_back_as_steps_written_through_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _inputs(tmp_path / "inputs")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    summaries = []
    for name, fast in (("direct", "1"), ("mlflow", "0")):
        uri, path = _new_store(tmp_path / name)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv(tracking.FAST_LOOKUP_ENV, fast)
        with monkeypatch.context() as patch:
            if fast == "1":
                assert isinstance(tracking.client(), DirectClient)
                patch.setattr(DirectClient, "mlflow", lambda self: _no_mlflow())
            else:
                assert not isinstance(tracking.client(), DirectClient)
            _step_scenario(tmp_path / name / "outputs", files)
        summaries.append(_step_summary(uri, path))
    direct, through_mlflow = summaries
    assert [r["status"] for r in direct] == ["KILLED", "FINISHED", "FAILED"]  # by run name
    assert direct == through_mlflow


def test_a_new_run_in_a_fresh_process_does_not_import_mlflow(tmp_path: Path) -> None:
    """The common case: the store and experiment exist; the step creates a run."""
    uri, _ = _new_store(tmp_path / "project")
    code = textwrap.dedent(
        """
        import sys
        from astrocurate import tracking
        with tracking.tracked_step("cutting_out", {"window_size": 64}) as run:
            (run.output_dir / "data.txt").write_text("payload")
            run.log_metrics({"n": 1})
            run.log_folder(run.output_dir, "copy")
        try:
            with tracking.tracked_step("merge_cutouts", {"dedup": True}):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        tracking.require_run(run.run_id, "cutting_out")
        print(run.run_id)
        print(sorted(m for m in ("mlflow", "sqlalchemy", "alembic") if m in sys.modules))
        """
    )
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path / "project",
        env={**_environment(), **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    run_id, modules = done.stdout.split()
    assert modules == "[]"

    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.search_runs(experiment_names=[EXPERIMENT])
    finally:
        mlflow.set_tracking_uri(None)
    assert set(found["status"]) == {"FINISHED", "FAILED"}
    row = found[found["run_id"] == run_id].iloc[0]
    assert row["tags.mlflow.runName"] == "cutting_out" and row["params.window_size"] == "64"
    assert row["metrics.n"] == 1.0


def _environment() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ASTROCURATE_"))}


def test_what_is_not_written_directly_goes_through_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown schemas, remote artifact roots, renames and MLflow's errors: MLflow's way."""
    uri, path = _new_store(tmp_path / "a")
    calls: list[str] = []

    def fallback() -> Any:
        calls.append("mlflow")
        return store.mlflow_client(uri)

    client = DirectClient.open(path, uri, fallback)
    assert client is not None
    remote = client.create_experiment("remote", artifact_location="s3://bucket/root")
    run = client.create_run(remote, run_name="cutting_out")  # not a local artifact root
    assert run.info.artifact_uri == f"s3://bucket/root/{run.info.run_id}/artifacts"
    assert calls == ["mlflow", "mlflow"]
    local = client.get_experiment_by_name(EXPERIMENT).experiment_id
    run_id = client.create_run(local, run_name="cutting_out").info.run_id
    client.set_tag(run_id, "long", "x" * 9000)  # over MLflow's limit: its error or truncation
    assert len(calls) == 3
    log_batch(client, run_id, params=[Param("p", "1")])
    with pytest.raises(Exception, match="Changing param values is not allowed") as direct_error:
        log_batch(client, run_id, params=[Param("p", "2")])
    with pytest.raises(Exception, match="Changing param values is not allowed") as mlflow_error:
        log_batch(store.mlflow_client(uri), run_id, params=[Param("p", "2")])
    assert str(direct_error.value) == mlflow_error.value.message
    assert is_store_error(direct_error.value) and is_store_error(mlflow_error.value)
    assert not is_store_error(ValueError("other"))
    assert len(calls) == 3

    with sqlite3.connect(path) as db:  # a schema revision not checked here
        db.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    assert DirectClient.open(path, uri, fallback) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert not isinstance(tracking.client(), DirectClient)


def test_a_locked_store_falls_back_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sqlite error (here: still locked after the busy timeout) writes nothing directly."""
    uri, path = _new_store(tmp_path / "a")
    calls: list[str] = []

    def fallback() -> Any:
        calls.append("mlflow")
        return store.mlflow_client(uri)

    client = DirectClient.open(path, uri, fallback)
    assert client is not None
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    run_id = client.create_run(experiment, run_name="cutting_out").info.run_id
    monkeypatch.setattr(sqlite_writes, "BUSY_TIMEOUT", 0.05)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.0, lambda: holder.execute("ROLLBACK"))
    release.start()
    try:
        client.set_tag(run_id, "k", "v")  # MLflow waits up to 20 s for the lock
    finally:
        release.join()
        holder.close()
    assert calls == ["mlflow"]
    assert client.get_run(run_id).data.tags["k"] == "v"


def test_processes_writing_one_store_at_once_all_succeed(tmp_path: Path) -> None:
    uri, _ = _new_store(tmp_path / "project")
    code = textwrap.dedent(
        """
        import sys
        from astrocurate import tracking
        with tracking.tracked_step("cutting_out", {"window_size": int(sys.argv[1])}) as run:
            (run.output_dir / "data.txt").write_text(sys.argv[1])
            for step in range(20):
                run.log_metrics({"loss": 1.0 / (step + 1), "other": step}, step=step)
                run.set_tags({"progress": str(step)})
        """
    )
    env = {**_environment(), "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(size)],
            cwd=tmp_path / "project",
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for size in (16, 32, 64, 128)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    client = store.mlflow_client(uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert sorted(r.data.params["window_size"] for r in runs) == ["128", "16", "32", "64"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["loss"] == 1.0 / 20 and run.data.tags["progress"] == "19"
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 20


def test_a_store_made_by_mlflow_has_a_schema_written_directly(tmp_path: Path) -> None:
    """The installed MLflow's schema is one the direct writes were checked against."""
    _, path = _new_store(tmp_path / uuid.uuid4().hex[:8])
    assert sqlite_writes.schema_problem(path) is None
