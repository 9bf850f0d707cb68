"""A rerun never silently reuses a finished run whose outputs changed since it finished.

Rerunning a step with the same inputs and parameters reuses its finished run, after the
cheap check of that run's outputs (sizes of every file, sampled blocks): a truncated,
changed or deleted file stops the command with one line naming the run, the file and
what to do (``--force`` recomputes into a new run; ``astrocurate verify`` tells more).
A run whose whole output directory is gone is not reusable at all: the rerun computes
a new run, with a warning. The same holds for ``clustering-prepare``. In-process (the
commands' own code), on the session's cutout runs and features.
"""

from __future__ import annotations

import logging

import pytest
from faultkit import CLUSTER_CONFIG, check_finished_runs, runs_of

from astrocurate.errors import InvalidRunError
from astrocurate.stages.merge_cutouts.run import merge_cutouts

pytestmark = pytest.mark.slow


def _merge(fault_inputs, **kwargs):
    return merge_cutouts(list(fault_inputs.cutouts_ids), **kwargs)


def _assert_reuse_refused(excinfo, run_id: str, path) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for part in ("cannot reuse finished", run_id, str(path), "--force", f"verify {run_id}"):
        assert part in message, f"{part!r} not in {message!r}"


def test_rerun_refuses_to_reuse_a_run_with_a_truncated_file(fault_inputs, fault_env):
    experiment = fault_env.use("reuse")
    first = _merge(fault_inputs)
    manifest = first.output_dir / "manifest.parquet"
    assert _merge(fault_inputs).reused  # untouched: reused
    with open(manifest, "r+b") as handle:
        handle.truncate(manifest.stat().st_size // 2)

    with pytest.raises(InvalidRunError, match="changed size") as excinfo:
        _merge(fault_inputs)
    _assert_reuse_refused(excinfo, first.run_id, manifest)
    assert [r.run_id for r in runs_of(experiment)] == [first.run_id]  # no new run recorded

    again = _merge(fault_inputs, force=True)  # what the message says to do
    assert not again.reused and again.run_id != first.run_id
    assert _merge(fault_inputs).run_id == again.run_id  # the newest good run is reused


def test_rerun_refuses_to_reuse_a_run_with_a_changed_or_deleted_file(fault_inputs, fault_env):
    fault_env.use("reuse")
    first = _merge(fault_inputs)
    mosaics = first.output_dir / "mosaics.parquet"
    data = bytearray(mosaics.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    mosaics.write_bytes(bytes(data))
    with pytest.raises(InvalidRunError, match="sampled blocks differ") as excinfo:
        _merge(fault_inputs)
    _assert_reuse_refused(excinfo, first.run_id, mosaics)

    mosaics.unlink()
    with pytest.raises(InvalidRunError, match="was deleted") as excinfo:
        _merge(fault_inputs)
    _assert_reuse_refused(excinfo, first.run_id, mosaics)


def test_the_command_says_so_in_one_line(fault_inputs, fault_env, capsys):
    from astrocurate.cli import main

    fault_env.use("reuse")
    first = _merge(fault_inputs)
    (first.output_dir / "manifest.parquet").write_bytes(b"")
    capsys.readouterr()
    assert main(["merge", "--cutouts-id", *fault_inputs.cutouts_ids]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("astrocurate merge: error: cannot reuse finished"), (
        err
    )


def test_rerun_after_the_output_directory_was_deleted_computes_a_new_run(
    fault_inputs, fault_env, caplog
):
    import shutil

    experiment = fault_env.use("reuse")
    first = _merge(fault_inputs)
    shutil.rmtree(first.output_dir)
    with caplog.at_level(logging.WARNING, logger="astrocurate"):
        again = _merge(fault_inputs)
    assert not again.reused and again.run_id != first.run_id
    assert f"run {first.run_id}" in caplog.text and "no output directory" in caplog.text
    assert again.output_dir.is_dir()
    finished = {r.run_id for r in runs_of(experiment) if r.finished}
    assert finished == {first.run_id, again.run_id}  # the old record stays, as it was


def test_clustering_prepare_refuses_to_reuse_a_changed_finished_run(fault_inputs, fault_env):
    import shutil

    from astrocurate.stages.clustering.run import (
        ClusteringConfig,
        prepare_clustering,
        run_clustering,
    )

    experiment = fault_env.use("reuse")
    config = ClusteringConfig.from_mapping(CLUSTER_CONFIG)
    prepared = prepare_clustering(fault_inputs.features_id, config)
    run_clustering(prepared.directory)
    assert prepare_clustering(fault_inputs.features_id, config).reused
    check_finished_runs(experiment)

    labels = sorted(prepared.directory.glob("level_*/*.npy"))[0]
    with open(labels, "r+b") as handle:
        handle.truncate(labels.stat().st_size - 8)
    with pytest.raises(InvalidRunError, match="changed size") as excinfo:
        prepare_clustering(fault_inputs.features_id, config)
    _assert_reuse_refused(excinfo, prepared.run_id, labels)

    shutil.rmtree(prepared.directory)  # gone altogether: a new run is prepared
    fresh = prepare_clustering(fault_inputs.features_id, config)
    assert fresh.run_id != prepared.run_id and not fresh.reused
