"""The tracking layer against a real MLflow sqlite store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from astrocurate import __version__, tracking
from astrocurate.errors import InvalidRunError, RunNotFoundError
from astrocurate.tracking import get_run, parse_run_id, require_run, tracked_step


def _write(run: tracking.StepRun, text: str = "payload") -> None:
    (run.output_dir / "data.txt").write_text(text)


def _artifact_json(run_id: str, name: str) -> dict:
    path = tracking.client().download_artifacts(run_id, name)
    return json.loads(Path(path).read_text())


def test_git_state_says_whether_tracked_files_changed(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        identity = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
        subprocess.run(
            ["git", *identity, "-C", str(tmp_path), *args], check=True, capture_output=True
        )

    assert tracking.git_state(tmp_path) == (None, None)  # not a checkout
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "first")
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert tracking.git_state(tmp_path) == (head, False)
    (tmp_path / "notes.txt").write_text("untracked files do not count")
    assert tracking.git_state(tmp_path) == (head, False)
    (tmp_path / "code.py").write_text("x = 2\n")
    assert tracking.git_state(tmp_path) == (head, True)


def test_runs_record_the_commit_and_whether_the_tree_was_dirty(store: Path) -> None:
    commit, dirty = tracking.git_state()
    with tracked_step("cutting_out", {"window_size": 16}) as run:
        _write(run)
    record = get_run(run.run_id)
    metadata = _artifact_json(run.run_id, "metadata.json")
    assert metadata["git_commit"] == commit and metadata["git_dirty"] == dirty
    if commit is None:  # an installed copy, not a checkout
        assert tracking.TAG_GIT_DIRTY not in record.tags
    else:
        assert record.tags[tracking.TAG_GIT_COMMIT] == commit
        assert record.tags[tracking.TAG_GIT_DIRTY] == str(dirty).lower()


def test_finished_run_records_lineage(store: Path) -> None:
    with tracked_step("cutting_out", {"window_size": 64}) as parent:
        _write(parent, "a")
    with tracked_step(
        "merge_cutouts", {"dedup_sky": True}, input_run_ids=[parent.run_id], seed=7
    ) as run:
        _write(run, "b")
        run.log_metrics({"n_rows": 3})

    record = get_run(run.run_id)
    assert record.status == "FINISHED"
    assert record.name == "merge_cutouts"
    assert record.params["dedup_sky"] == "True"
    assert record.params["seed"] == "7"
    assert json.loads(record.params["input_run_ids"]) == [parent.run_id]
    assert record.input_run_ids == [parent.run_id]
    assert record.tags[tracking.TAG_VERSION] == __version__
    assert record.output_dir == store / "outputs" / "merge_cutouts" / run.run_id
    expected_hash, listing = tracking.hash_outputs(run.output_dir)
    assert record.tags[tracking.TAG_CONTENT_HASH] == expected_hash
    assert list(listing) == ["data.txt"]
    assert _artifact_json(run.run_id, "outputs.json") == listing
    metadata = _artifact_json(run.run_id, "metadata.json")
    assert metadata["input_run_ids"] == [parent.run_id]
    assert metadata["content_hash"] == expected_hash


def test_content_hash_changes_with_content(store: Path) -> None:
    with tracked_step("cutting_out", {"window_size": 1}) as a:
        _write(a, "one")
    with tracked_step("cutting_out", {"window_size": 2}) as b:
        _write(b, "two")
    assert (
        get_run(a.run_id).tags[tracking.TAG_CONTENT_HASH]
        != get_run(b.run_id).tags[tracking.TAG_CONTENT_HASH]
    )


@pytest.mark.parametrize(
    ("error", "status"),
    [(RuntimeError("disk on fire"), "FAILED"), (KeyboardInterrupt(), "KILLED")],
    ids=["exception-failed", "interrupt-killed"],
)
def test_failure_marks_run(store: Path, error: BaseException, status: str) -> None:
    run_id = None
    with pytest.raises(type(error)), tracked_step("cutting_out", {"window_size": 64}) as run:
        run_id = run.run_id
        raise error
    record = get_run(run_id)
    assert record.status == status
    assert tracking.TAG_CONTENT_HASH not in record.tags


def test_sigterm_marks_run_killed(store: Path) -> None:
    code = textwrap.dedent(
        """
        import sys, time
        from astrocurate.tracking import tracked_step
        with tracked_step("cutting_out", {"window_size": 64}) as run:
            print(run.run_id, flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    proc.terminate()
    assert proc.wait(timeout=60) != 0
    assert get_run(run_id).status == "KILLED"


def test_same_inputs_reuse_finished_run(store: Path) -> None:
    with tracked_step(
        "cutting_out", {"window_size": 64, "workers": 2}, volatile_params=["workers"]
    ) as first:
        _write(first)
    with tracked_step(
        "cutting_out", {"window_size": 64, "workers": 1}, volatile_params=["workers"]
    ) as again:
        assert again.reused
    assert again.run_id == first.run_id
    with tracked_step(
        "cutting_out", {"window_size": 64, "workers": 1}, volatile_params=["workers"], force=True
    ) as forced:
        assert not forced.reused
        _write(forced)
    assert forced.run_id != first.run_id


def test_interrupted_run_resumes_in_same_directory(store: Path) -> None:
    with pytest.raises(KeyboardInterrupt), tracked_step("cutting_out", {"window_size": 64}) as run:
        (run.output_dir / "part-0").write_text("done")
        raise KeyboardInterrupt
    with tracked_step("cutting_out", {"window_size": 64}) as again:
        assert again.resumed and not again.reused
        assert (again.output_dir / "part-0").read_text() == "done"
        (again.output_dir / "part-1").write_text("done")
    assert again.run_id == run.run_id
    assert get_run(run.run_id).status == "FINISHED"


def test_locked_run_is_not_resumed(store: Path) -> None:
    """A run another process is still working on gets a new run, not a second writer."""
    with pytest.raises(KeyboardInterrupt), tracked_step("cutting_out", {"window_size": 8}) as run:
        raise KeyboardInterrupt
    holder = tracking.try_lock(run.output_dir)
    try:
        with tracked_step("cutting_out", {"window_size": 8}) as other:
            _write(other)
    finally:
        holder.close()
    assert other.run_id != run.run_id and not other.resumed


def test_deleted_output_dir_is_recomputed(store: Path) -> None:
    import shutil

    with tracked_step("cutting_out", {"window_size": 64}) as first:
        _write(first)
    shutil.rmtree(first.output_dir)
    with tracked_step("cutting_out", {"window_size": 64}) as again:
        assert not again.reused
        _write(again)
    assert again.run_id != first.run_id


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("CUTOUTS_RUN_ID_64", "$CUTOUTS_RUN_ID_64"),
        ("", "empty run ID"),
        ("1234", "32 hexadecimal"),
    ],
    ids=["placeholder", "empty", "short"],
)
def test_parse_run_id_rejects(text: str, fragment: str) -> None:
    with pytest.raises(RunNotFoundError, match=fragment.replace("$", r"\$")):
        parse_run_id(text, "--cutouts-id")


def test_require_run_checks(store: Path) -> None:
    with tracked_step("cutting_out", {"window_size": 64}) as good:
        _write(good)
    with pytest.raises(RuntimeError), tracked_step("cutting_out", {"window_size": 9}) as bad:
        raise RuntimeError("boom")

    assert require_run(good.run_id, "cutting_out").run_id == good.run_id
    with pytest.raises(InvalidRunError, match="'cutting_out' run, expected a 'clustering' run"):
        require_run(good.run_id, "clustering", "--clustering-id")
    with pytest.raises(InvalidRunError, match="FAILED, not FINISHED"):
        require_run(bad.run_id, "cutting_out")
    with pytest.raises(RunNotFoundError, match=r"no run 0{32}"):
        require_run("0" * 32, "cutting_out")
    good.output_dir.rename(store / "moved")
    with pytest.raises(InvalidRunError, match="missing"):
        require_run(good.run_id, "cutting_out")


def test_find_runs_newest_first_and_numeric_params(store: Path) -> None:
    ids = []
    for size in (64, 128, 64):
        with tracked_step("cutting_out", {"window_size": size, "overlap": 0.5}, force=True) as run:
            _write(run)
        ids.append(run.run_id)
        time.sleep(0.01)
    found = tracking.find_runs("cutting_out", params={"window_size": "64", "overlap": ".5"})
    assert [r.run_id for r in found] == [ids[2], ids[0]]


def test_outputs_record_sizes_hashes_and_sampled_blocks(store: Path) -> None:
    """outputs.json: per file its size, full SHA-256 and sampled blocks (the quick check)."""
    with tracked_step("cutting_out", {"window_size": 64}) as run:
        _write(run, "abc")
    entry = _artifact_json(run.run_id, "outputs.json")["data.txt"]
    assert entry["size"] == 3
    assert entry["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert entry["sample"]["offsets"] == [0]
    assert entry["sample"]["sha256"] == tracking.sample_digest(run.output_dir / "data.txt", [0])
    assert _artifact_json(run.run_id, "metadata.json")["output_hash"] == "full"
    assert tracking.quick_check_outputs(get_run(run.run_id)) == 1


# --------------------------------------------------------------------------- start-up cost


def _through_mlflow(monkeypatch: pytest.MonkeyPatch, lookup):
    """Return ``lookup()`` read through MLflow instead of directly from the sqlite file."""
    with monkeypatch.context() as patch:
        patch.setenv(tracking.FAST_LOOKUP_ENV, "0")
        assert tracking.direct.local_store() is None
        return lookup()


def test_direct_reads_match_mlflow(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookups read from the sqlite file give what MLflow's search_runs and get_run give."""
    monkeypatch.delenv(tracking.FAST_LOOKUP_ENV, raising=False)  # the direct path, even in CI's =0
    ids = {}
    for size in (64, 128, 64):
        with tracked_step("cutting_out", {"window_size": size}, force=True) as run:
            _write(run, str(size))
        ids.setdefault(size, []).append(run.run_id)
    with tracked_step("merge_cutouts", {"dedup": True}, input_run_ids=ids[64]) as merged:
        _write(merged)
    with pytest.raises(RuntimeError), tracked_step("cutting_out", {"window_size": 32}) as failed:
        raise RuntimeError("boom")
    with tracked_step("cutting_out", {"window_size": 16}) as deleted:
        _write(deleted)
    tracking.client().delete_run(deleted.run_id)
    with monkeypatch.context() as patch:  # a run of the same step in another experiment
        patch.setenv("MLFLOW_EXPERIMENT_NAME", f"{tracking.experiment_name()}-other")
        with tracked_step("cutting_out", {"window_size": 64}) as elsewhere:
            _write(elsewhere)

    assert tracking.direct.local_store() is not None
    key = get_run(ids[64][0]).tags[tracking.TAG_RUN_KEY]
    searches = [
        {},
        {"step": "cutting_out"},
        {"step": "cutting_out", "include_unfinished": True},
        {"step": "cutting_out", "params": {"window_size": "64.0"}},
        {"run_key": key, "include_unfinished": True},
        {"step": "merge_cutouts", "input_run_ids": list(reversed(ids[64]))},
        {"step": "clustering"},
    ]
    for kwargs in searches:
        direct = tracking.find_runs(**kwargs)
        assert direct or kwargs == {"step": "clustering"}
        assert direct == _through_mlflow(monkeypatch, lambda k=kwargs: tracking.find_runs(**k))
    assert elsewhere.run_id not in {r.run_id for r in tracking.find_runs()}
    assert deleted.run_id not in {r.run_id for r in tracking.find_runs(include_unfinished=True)}
    for run_id in [*ids[64], *ids[128], merged.run_id, failed.run_id, deleted.run_id]:
        direct = get_run(run_id)
        assert direct == _through_mlflow(monkeypatch, lambda r=run_id: get_run(r))
        listing = tracking.recorded_listing(run_id)
        assert listing == _through_mlflow(
            monkeypatch, lambda r=run_id: tracking.recorded_listing(r)
        )
    assert get_run(failed.run_id).status == "FAILED"
    assert tracking.recorded_listing(merged.run_id) == {"data.txt": _only_entry(merged)}
    with pytest.raises(RunNotFoundError, match="no run"):
        get_run("0" * 32)


def _only_entry(run: tracking.StepRun) -> dict:
    """Return the recorded listing entry of a run's only file, ``data.txt``."""
    return tracking.hash_outputs(run.output_dir)[1]["data.txt"]


def test_direct_store_only_for_an_existing_local_sqlite_file(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers, URIs with options, missing files and old schemas are read through MLflow."""
    monkeypatch.delenv(tracking.FAST_LOOKUP_ENV, raising=False)
    with tracked_step("cutting_out", {"window_size": 64}) as run:
        _write(run)
    assert tracking.direct.local_store() is not None
    uri = tracking.tracking_uri()
    for other in ("http://127.0.0.1:5000", f"{uri}?timeout=5", f"sqlite:///{store}/none.db"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
        assert tracking.direct.local_store() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert tracking.direct.local_store() is None
    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES")

    import sqlite3

    foreign = store / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE runs (run_uuid TEXT)")
    before = foreign.read_bytes()
    with pytest.raises(tracking.direct.NoDirectReadError, match="experiments lacks"):
        tracking.direct.search_runs(foreign, "cutting_out", None, False)
    assert foreign.read_bytes() == before  # opened read-only


def test_client_and_experiment_cached_per_store_and_name(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client per tracking URI; experiment IDs per store and name (env may change)."""
    tracking.experiment_id(tracking.client())  # the store exists: the client writes directly
    first = tracking.client()
    if tracking.direct.local_store() is not None:
        assert isinstance(first, tracking.direct_client.DirectClient)
    assert tracking.client() is first
    experiment = tracking.experiment_id(first)
    assert tracking.experiment_id(tracking.client(), create=False) == experiment

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"{tracking.experiment_name()}-2")
    assert tracking.experiment_id(first, create=False) is None
    second = tracking.experiment_id(first)
    assert second not in (None, experiment)
    assert first.get_experiment_by_name(tracking.experiment_name()).experiment_id == second

    uri = tracking.tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # never contacted
    server = tracking.client()
    assert server is not first and server.tracking_uri == "http://127.0.0.1:9"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.client() is first


def test_reused_step_and_lookups_do_not_import_mlflow(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reusing a finished run, get_run and find_runs on a local store never import MLflow."""
    monkeypatch.delenv(tracking.FAST_LOOKUP_ENV, raising=False)
    with tracked_step("cutting_out", {"window_size": 64}) as first:
        _write(first)
    code = textwrap.dedent(
        f"""
        import sys
        from astrocurate import tracking
        with tracking.tracked_step("cutting_out", {{"window_size": 64}}) as run:
            assert run.reused and run.run_id == {first.run_id!r}
        tracking.require_run(run.run_id, "cutting_out")
        assert [r.run_id for r in tracking.find_runs("cutting_out")] == [run.run_id]
        print(sorted(m for m in ("mlflow", "sqlalchemy", "alembic") if m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=store, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """A job array's tasks create the sqlite store together: MLflow's migrations must not race."""
    import os
    import subprocess
    import sys

    code = (
        "from astrocurate.tracking import client, experiment_id; "
        "print(experiment_id(client(), create=True))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'new.db'}"}
    env["MLFLOW_EXPERIMENT_NAME"] = "array"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), [err.decode()[-500:] for _, _, err in results]
    assert len({out.strip() for _, out, _ in results}) == 1  # one experiment, found by all


def test_before_work_runs_only_when_the_step_computes_and_a_refusal_leaves_nothing(
    store: Path,
) -> None:
    calls: list[str] = []
    with tracked_step("cutting_out", {"window_size": 48}, before_work=lambda: calls.append("new")):
        assert calls == ["new"]  # before the body, once
    with tracked_step(
        "cutting_out", {"window_size": 48}, before_work=lambda: calls.append("again")
    ) as run:
        assert run.reused
    assert calls == ["new"]  # a reused run does not call it

    def refuse() -> None:
        raise ValueError("bad companion file")

    runs_before = {r.run_id for r in tracking.find_runs(include_unfinished=True)}
    dirs_before = set((store / "outputs").rglob("*")) if (store / "outputs").exists() else set()
    with (
        pytest.raises(ValueError, match="bad companion file"),
        tracked_step("cutting_out", {"window_size": 49}, before_work=refuse),
    ):
        raise AssertionError("the body must not run")
    assert {r.run_id for r in tracking.find_runs(include_unfinished=True)} == runs_before
    after = set((store / "outputs").rglob("*")) if (store / "outputs").exists() else set()
    assert after == dirs_before


def test_before_work_may_add_volatile_parameters_only(store: Path) -> None:
    """Parameters known only once the step computes are logged; a keyed one is refused."""
    params = {"window_size": 50}
    with tracked_step(
        "cutting_out", params, volatile_params=["device"], before_work=lambda: {"device": "cpu"}
    ) as run:
        pass
    assert tracking.get_run(run.run_id).params["device"] == "cpu"
    with tracked_step(
        "cutting_out", params, volatile_params=["device"], before_work=lambda: {"device": "cuda"}
    ) as again:
        assert again.reused and again.run_id == run.run_id  # the key holds no device
    with (
        pytest.raises(ValueError, match="non-volatile"),
        tracked_step("cutting_out", {"window_size": 51}, before_work=lambda: {"overlap": 0.5}),
    ):
        raise AssertionError("the body must not run")
