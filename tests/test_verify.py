"""Integrity: ``astrocurate verify`` and the quick check of input runs (real MLflow and files)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from astrocurate import tracking
from astrocurate.cli import main
from astrocurate.errors import InvalidRunError
from astrocurate.tracking import (
    SAMPLE_BLOCK,
    fingerprint_file,
    require_run,
    sample_digest,
    sample_offsets,
    tracked_step,
)
from astrocurate.tracking.lookup import verify_run

MIB = 1 << 20


def _random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _flip(path: Path, offset: int) -> None:
    """Change one byte of a file in place (same size)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _make_run(
    step: str = "cutting_out",
    params: dict | None = None,
    inputs: tuple[str, ...] = (),
    big: int = 9 * MIB + 123,
) -> tracking.StepRun:
    """A finished run with a small file, a multi-block file and a file in a subfolder."""
    with tracked_step(step, params or {"window_size": 64}, input_run_ids=inputs, force=True) as run:
        (run.output_dir / "manifest.txt").write_text("rows\n")
        (run.output_dir / "pixels").mkdir()
        (run.output_dir / "pixels" / "big.npy").write_bytes(_random_bytes(big))
    return run


def _verify(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[str], str]:
    code = main(["verify", *argv])
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


# --------------------------------------------------------------------------- fingerprints


def test_sample_offsets_cover_small_files_and_sample_big_ones() -> None:
    assert sample_offsets(0) == []
    assert sample_offsets(10) == [0]
    assert sample_offsets(3 * SAMPLE_BLOCK + 1) == [i * SAMPLE_BLOCK for i in range(4)]
    size = 1000 * SAMPLE_BLOCK + 5
    offsets = sample_offsets(size)
    assert offsets == sample_offsets(size)  # seeded by the size
    assert offsets[0] == 0 and offsets[-1] == 1000 * SAMPLE_BLOCK
    assert len(offsets) == 6 and offsets == sorted(set(offsets))
    assert all(o % SAMPLE_BLOCK == 0 for o in offsets)


@pytest.mark.parametrize("size", [0, 5, SAMPLE_BLOCK, 20 * MIB + 7], ids=lambda n: f"{n}B")
def test_one_pass_fingerprint_matches_separate_hashes(tmp_path: Path, size: int) -> None:
    """The full hash is the file's SHA-256; the sampled blocks equal a direct pread of them."""
    path = tmp_path / "f.bin"
    data = _random_bytes(size, seed=size)
    path.write_bytes(data)
    entry = fingerprint_file(path)
    assert entry["size"] == size
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    sample = entry["sample"]
    assert sample["offsets"] == sample_offsets(size) and sample["block"] == SAMPLE_BLOCK
    assert sample["sha256"] == sample_digest(path, sample["offsets"])
    assert fingerprint_file(path, full=False) == {"size": size, "sample": sample}


def test_parallel_hashing_equals_sequential(tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / f"f{i}").write_bytes(_random_bytes(i * 700_000 + 1, seed=i))
    one = tracking.hash_outputs(tmp_path, workers=1)
    four = tracking.hash_outputs(tmp_path, workers=4)
    assert one == four


def test_content_hash_ignores_sampled_blocks() -> None:
    """Runs recorded before the sampled blocks existed keep their content hash."""
    old = {"a": {"size": 1, "sha256": "ab"}}
    new = {"a": {"size": 1, "sha256": "ab", "sample": {"block": 1, "offsets": [0], "sha256": "x"}}}
    assert tracking.content_hash(old) == tracking.content_hash(new)


# --------------------------------------------------------------------------- verify


def test_verify_intact_run_exits_zero(store: Path, capsys: pytest.CaptureFixture) -> None:
    parent = _make_run()
    run = _make_run("merge_cutouts", {"dedup_sky": True}, (parent.run_id,))
    code, lines, _ = _verify(capsys, run.run_id)
    assert code == 0, lines
    assert lines == [lines[-1]]
    assert lines[-1].startswith(f"verify {run.run_id}: OK (2 files")
    assert "1 parent run(s) checked" in lines[-1]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: _flip(d / "pixels" / "big.npy", 5 * MIB + 17), ["changed", "SHA-256"]),
        (lambda d: _flip(d / "manifest.txt", 0), ["changed", "manifest.txt: SHA-256"]),
        (
            lambda d: os.truncate(d / "pixels" / "big.npy", 100),
            ["changed", "big.npy: size 100 bytes, recorded"],
        ),
        (lambda d: (d / "manifest.txt").unlink(), ["missing", "manifest.txt: recorded (5 bytes)"]),
        (lambda d: (d / "stray.txt").write_text("hello"), ["extra", "stray.txt: not in"]),
        (lambda d: shutil.rmtree(d), ["no-dir", "output directory", "is missing"]),
    ],
    ids=["middle-byte", "small-file-byte", "truncated", "deleted-file", "extra-file", "no-dir"],
)
def test_verify_reports_each_difference(
    store: Path, capsys: pytest.CaptureFixture, damage, expected: list[str]
) -> None:
    run = _make_run()
    damage(run.output_dir)
    code, lines, _ = _verify(capsys, run.run_id, "--no-parents")
    assert code == 1
    problem, summary = lines
    assert problem.split()[:2] == [expected[0], run.run_id]
    for fragment in expected[1:]:
        assert fragment in problem
    assert summary.startswith(f"verify {run.run_id}: FAILED, 1 problem(s)")


def test_verify_lists_every_problem(store: Path, capsys: pytest.CaptureFixture) -> None:
    run = _make_run()
    (run.output_dir / "manifest.txt").unlink()
    _flip(run.output_dir / "pixels" / "big.npy", 0)
    (run.output_dir / "new.txt").write_text("x")
    code, lines, _ = _verify(capsys, run.run_id)
    assert code == 1
    assert sorted(line.split()[0] for line in lines[:-1]) == ["changed", "extra", "missing"]
    assert "3 problem(s)" in lines[-1]


def test_verify_ignores_lock_and_temp_files(store: Path, capsys: pytest.CaptureFixture) -> None:
    run = _make_run()
    (run.output_dir / ".tmp-partial.npy").write_bytes(b"half")
    assert (run.output_dir / tracking.LOCK_NAME).exists()
    code, lines, _ = _verify(capsys, run.run_id)
    assert code == 0, lines


def test_verify_checks_parents_recursively(store: Path, capsys: pytest.CaptureFixture) -> None:
    grandparent = _make_run()
    parent = _make_run("merge_cutouts", {"dedup_sky": True}, (grandparent.run_id,))
    run = _make_run("feature_extraction", {"model": "m"}, (parent.run_id,))
    tracking.client().set_terminated(parent.run_id, status="FAILED")
    shutil.rmtree(grandparent.output_dir)

    code, lines, _ = _verify(capsys, run.run_id)
    assert code == 1
    assert lines[0].split()[:2] == ["parent", parent.run_id]
    assert "merge_cutouts run, input of feature_extraction run" in lines[0]
    assert "FAILED, not FINISHED" in lines[0]
    assert lines[1].split()[:2] == ["parent", grandparent.run_id]
    assert "output directory" in lines[1] and "is missing" in lines[1]
    assert "2 parent run(s) checked" in lines[-1]

    code, lines, _ = _verify(capsys, run.run_id, "--no-parents")
    assert code == 0, lines
    assert "0 parent run(s) checked" in lines[-1]


def test_verify_reports_changed_and_unknown_parents(
    store: Path, capsys: pytest.CaptureFixture
) -> None:
    parent = _make_run()
    ghost = "f" * 32
    run = _make_run("merge_cutouts", {"dedup_sky": True}, (parent.run_id, ghost))
    os.truncate(parent.output_dir / "pixels" / "big.npy", 10)
    code, lines, _ = _verify(capsys, run.run_id)
    assert code == 1
    by_run = {line.split()[1]: line for line in lines[:-1]}
    assert "big.npy" in by_run[parent.run_id] and "changed size" in by_run[parent.run_id]
    assert "no such run" in by_run[ghost]


def test_verify_notes_logs_and_report_changes(store: Path, capsys: pytest.CaptureFixture) -> None:
    """SLURM appends to logs/ after the run finished, `astrocurate report` rewrites report/."""
    with tracked_step("clustering", {"levels": 2}) as run:
        (run.output_dir / "logs").mkdir()
        (run.output_dir / "logs" / "level_1-42.out").write_text("started\n")
        (run.output_dir / "centroids.npy").write_bytes(b"c" * 100)
    with open(run.output_dir / "logs" / "level_1-42.out", "a") as handle:
        handle.write("run finished\n")
    (run.output_dir / "logs" / "level_2-43.out").write_text("x")
    require_run(run.run_id, "clustering")  # the quick check skips logs/

    code, lines, _ = _verify(capsys, run.run_id)
    assert code == 0, lines
    assert [line.split()[:2] for line in lines[:-1]] == [["note:", "changed"], ["note:", "extra"]]
    assert lines[-1].endswith("2 note(s) about logs/report")
    code, lines, _ = _verify(capsys, run.run_id, "--strict")
    assert code == 1
    assert "2 problem(s)" in lines[-1]


def test_verify_unfinished_and_unknown_runs(store: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(RuntimeError), tracked_step("cutting_out", {"window_size": 3}) as failed:
        raise RuntimeError("boom")
    code, lines, _ = _verify(capsys, failed.run_id)
    assert code == 1
    assert lines[0].split()[:2] == ["unfinished", failed.run_id]
    assert "FAILED, not FINISHED" in lines[0]

    code, lines, err = _verify(capsys, "0" * 32)
    assert code == 1 and lines == []
    assert f"no run {'0' * 32}" in err


def test_verify_run_without_listing_compares_content_hash(store: Path) -> None:
    """A run whose outputs.json is gone is checked against its content hash tag."""
    run = _make_run()
    artifacts = Path(urlparse(tracking.client().get_run(run.run_id).info.artifact_uri).path)
    (artifacts / "outputs.json").unlink()
    report = verify_run(run.run_id)
    assert [f.kind for f in report.problems()] == ["unrecorded"]
    _flip(run.output_dir / "manifest.txt", 1)
    report = verify_run(run.run_id)
    assert [f.kind for f in report.problems()] == ["unrecorded", "changed"]
    assert "content hash" in report.problems()[1].detail


def test_sample_only_mode(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ASTROCURATE_OUTPUT_HASH=sample: sizes and sampled blocks only, verify says so."""
    monkeypatch.setenv(tracking.HASH_MODE_ENV, "sample")
    run = _make_run()
    listing = tracking.recorded_listing(run.run_id)
    assert all("sha256" not in entry and "sample" in entry for entry in listing.values())
    report = verify_run(run.run_id)
    assert report.problems() == [] and report.findings[0].note
    _flip(run.output_dir / "pixels" / "big.npy", 0)  # the first block is always sampled
    assert [f.kind for f in verify_run(run.run_id).problems()] == ["changed"]


def test_python_m_cli_verify(store: Path) -> None:
    run = _make_run(big=10)
    env = {**os.environ}
    result = subprocess.run(
        [sys.executable, "-m", "astrocurate.cli", "verify", run.run_id],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"verify {run.run_id}: OK")
    assert "hashed (" not in result.stderr  # no progress display when not on a terminal
    (run.output_dir / "manifest.txt").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "astrocurate.cli", "verify", run.run_id],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith(f"missing    {run.run_id}")


# --------------------------------------------------------------------------- quick check


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda d: _flip(d / "pixels" / "big.npy", 3), "changed (its sampled blocks differ)"),
        (lambda d: _flip(d / "pixels" / "big.npy", 9 * MIB + 100), "sampled blocks differ"),
        (lambda d: os.truncate(d / "pixels" / "big.npy", MIB), "changed size (1048576 bytes"),
        (lambda d: (d / "pixels" / "big.npy").unlink(), "was deleted"),
    ],
    ids=["first-block", "last-block", "truncated", "deleted"],
)
def test_consumer_rejects_changed_input(store: Path, damage, fragment: str) -> None:
    run = _make_run()
    damage(run.output_dir)
    with pytest.raises(InvalidRunError) as caught:
        require_run(run.run_id, "cutting_out", "--cutouts-id")
    message = str(caught.value)
    assert message.startswith(f"--cutouts-id: output file {run.output_dir / 'pixels' / 'big.npy'}")
    assert fragment in message
    assert f"astrocurate verify {run.run_id}" in message and "--force" in message


def test_consumer_check_can_be_skipped(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _make_run()
    _flip(run.output_dir / "manifest.txt", 0)
    with pytest.raises(InvalidRunError, match=r"manifest\.txt"):
        require_run(run.run_id, "cutting_out")
    monkeypatch.setenv(tracking.SKIP_INPUT_CHECK_ENV, "1")
    assert require_run(run.run_id, "cutting_out").run_id == run.run_id


def test_merge_step_checks_its_inputs(store: Path) -> None:
    """A real consumer: merge_cutouts refuses a cutout run whose manifest changed."""
    from astrocurate.stages.merge_cutouts.run import merge_cutouts

    run = _make_run()
    _flip(run.output_dir / "manifest.txt", 2)
    with pytest.raises(InvalidRunError, match=r"--cutouts-id: output file .*manifest\.txt"):
        merge_cutouts([run.run_id])


def test_quick_check_of_run_recorded_before_sampling(store: Path) -> None:
    """An older run (sizes and SHA-256 only) is size-checked; verify still catches the rest."""
    run = _make_run()
    listing = tracking.recorded_listing(run.run_id)
    old = {name: {"size": e["size"], "sha256": e["sha256"]} for name, e in listing.items()}
    run.log_dict(old, "outputs.json")
    assert tracking.recorded_listing(run.run_id) == old

    _flip(run.output_dir / "pixels" / "big.npy", 0)
    require_run(run.run_id, "cutting_out")  # same sizes: passes
    assert [f.kind for f in verify_run(run.run_id).problems()] == ["changed"]
    os.truncate(run.output_dir / "manifest.txt", 1)
    with pytest.raises(InvalidRunError, match="changed size"):
        require_run(run.run_id, "cutting_out")


def test_quick_check_reads_a_bounded_amount(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the byte budget, files are size-checked only (at least one is sampled)."""
    with tracked_step("cutting_out", {"window_size": 5}) as run:
        for i in range(5):
            (run.output_dir / f"p{i}.npy").write_bytes(_random_bytes(2 * MIB, seed=i))
    monkeypatch.setattr(tracking.checks, "QUICK_CHECK_BYTES", 4 * MIB)
    record = tracking.get_run(run.run_id)
    assert tracking.quick_check_outputs(record) == 2
    monkeypatch.setattr(tracking.checks, "QUICK_CHECK_BYTES", 1)
    assert tracking.quick_check_outputs(record) == 1
    listing = json.loads(json.dumps(tracking.recorded_listing(run.run_id)))
    assert sorted(listing) == [f"p{i}.npy" for i in range(5)]


def test_listing_read_through_artifact_download(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A remote artifact store is downloaded, without MLflow's progress bar on stderr."""
    run = _make_run(big=10)
    local = tracking.recorded_listing(run.run_id)
    monkeypatch.setattr(tracking.checks, "_local_path", lambda uri: None)
    capsys.readouterr()
    assert tracking.recorded_listing(run.run_id) == local
    assert capsys.readouterr().err == ""
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
