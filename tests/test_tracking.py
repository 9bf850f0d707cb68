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
