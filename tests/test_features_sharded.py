"""Sharded step 3 (``features --shard K/N``): one run and one matrix from N processes.

The inputs are the 42 cutouts of 32 px of a 2-mosaic survey, featurised by the default
backbone; the reference is the unsharded run of the same command, in its own MLflow
experiment (same parameters and inputs would otherwise reuse it). Each test that runs
shards uses a fresh experiment, so that its shards record a new run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from astrocurate.cli import main
from astrocurate.errors import InvalidArgumentError
from astrocurate.launch import parse_shard_spec, shard_from_environment
from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
from astrocurate.stages.feature_extraction.run import (
    FEATURES,
    PROGRESS_DIR,
    FeatureOptions,
    extract_features,
)
from astrocurate.stages.feature_extraction.shards import (
    TAG_SHARDS,
    describe_rows,
    shard_blocks,
    shard_of_block,
)
from astrocurate.stages.merge_cutouts.run import merge_cutouts
from astrocurate.synthetic.survey import make_survey
from astrocurate.tracking import TAG_CONTENT_HASH, StepRun, find_runs, get_run

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per process, here and in the shards' processes: two shards with two
# threads each on two cores make the default backbone tens of times slower (OpenMP
# threads spin), and a test run shares its cores. The features do not depend on it.
THREADS_ENV = {"OMP_NUM_THREADS": "1"}
RESIZE = 32
BLOCK_ROWS = 6  # 7 blocks: a shard has several, so it can be killed between two
BATCH = 6  # one forward pass per block: the default backbone costs per pass


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Compute in-process with one torch thread, as the shards' processes do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


# ----------------------------------------------------------------------------- which blocks


@pytest.mark.parametrize("n_blocks", [0, 1, 5, 21, 64])
@pytest.mark.parametrize("n_shards", [1, 2, 3, 7, 100])
def test_shards_tile_the_blocks_in_contiguous_balanced_ranges(n_blocks, n_shards) -> None:
    ranges = [shard_blocks(n_blocks, (k, n_shards)) for k in range(n_shards)]
    assert [b for r in ranges for b in r] == list(range(n_blocks))  # in order, each once
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1
    for k, blocks in enumerate(ranges):
        assert all(shard_of_block(b, n_blocks, n_shards) == k for b in blocks)


def test_block_boundaries_do_not_depend_on_the_number_of_shards() -> None:
    """A block is the unit of resuming: the same rows whatever N (here 7 blocks of 6 rows)."""
    starts = list(range(0, 42, BLOCK_ROWS))
    for n in (1, 2, 5):
        covered = [starts[b] for k in range(n) for b in shard_blocks(len(starts), (k, n))]
        assert covered == starts


def test_describe_rows_merges_adjacent_blocks() -> None:
    assert describe_rows([0, 2, 4, 10, 40], 2, 41) == "0-5, 10-11, 40"
    assert describe_rows([36, 38, 40], 2, 42) == "36-41"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "7",
          "SLURM_ARRAY_TASK_COUNT": "8"}, (3, 8)),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "4",
          "SLURM_ARRAY_TASK_COUNT": "4"}, (0, 4)),
        ({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "12",
          "SLURM_ARRAY_TASK_STEP": "4", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "2"},
         (2, 3)),  # no COUNT (older SLURM): from MIN and MAX
        ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (1, 4)),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0",
          "SLURM_ARRAY_TASK_MAX": "1", "RANK": "3", "WORLD_SIZE": "4"}, (0, 2)),  # array first
        ({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "3", "SLURM_NTASKS": "8"}, (2, 3)),
        ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_ARRAY_TASK_ID": "3",
          "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3"}, (3, 4)),  # array over srun
        ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "RANK": "1", "WORLD_SIZE": "2"},
         (1, 2)),  # torchrun inside srun: its ranks
    ],
    ids=["array-0-based", "array-1-based", "array-step", "array-no-count", "torchrun", "both",
         "srun", "array-task-step", "torchrun-in-srun"],
)  # fmt: skip
def test_shard_auto_reads_slurm_arrays_torchrun_and_srun(env, expected) -> None:
    assert shard_from_environment(env) == expected
    assert parse_shard_spec("auto", env) == expected


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({}, "none of SLURM_ARRAY_TASK_ID"),
        ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "9",
          "SLURM_ARRAY_TASK_COUNT": "3"}, "not evenly spaced"),  # --array=1,5,9 without a step
        ({"SLURM_ARRAY_TASK_ID": "x"}, "SLURM_ARRAY_TASK_ID='x' is not an integer"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, "RANK=4 is not in [0, 4)"),
        ({"RANK": "0"}, "none of"),  # half a torchrun environment
        ({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "3"}, "SLURM_PROCID=3 is not in [0, 3)"),
    ],
    ids=["none", "uneven-array", "not-a-number", "rank-out-of-range", "no-world-size",
         "procid-out-of-range"],
)  # fmt: skip
def test_shard_auto_fails_in_one_line(env, fragment) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        shard_from_environment(env)
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_bad_shard_values(text) -> None:
    with pytest.raises(InvalidArgumentError, match="--shard: expected K/N"):
        parse_shard_spec(text)
    assert parse_shard_spec(" 1/3") == (1, 3)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """The merge run, the unsharded reference run and its matrix."""

    work: Path
    merged_id: str
    reference_id: str
    reference_bytes: bytes
    reference_hash: str


_INPUTS: dict[str, Inputs] = {}


def build_inputs(tracking_db: str, tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """Survey, cutouts, merge and the unsharded reference run: once per session and store.

    Shared with ``test_slurm_features`` through this cache (a fixture imported into two
    modules would be computed twice).
    """
    if tracking_db in _INPUTS:
        return _INPUTS[tracking_db]
    work = tmp_path_factory.mktemp("sharded")
    with pytest.MonkeyPatch.context() as patch, one_torch_thread():
        patch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", f"sharded-inputs-{uuid.uuid4().hex[:8]}")
        patch.chdir(work)
        survey = make_survey(work / "survey", n_mosaics=2, mosaic_size=128, seed=5)
        cut = make_cutouts(survey.output_dir, work / "out", CutoutOptions(32), workers=1)
        merged = merge_cutouts([cut.run_id])
        options = FeatureOptions(resize=RESIZE, shard_rows=BLOCK_ROWS)
        reference = extract_features(merged.run_id, options, batch_size=BATCH, workers=0)
        record = get_run(reference.run_id)
    inputs = Inputs(
        work,
        merged.run_id,
        reference.run_id,
        (reference.output_dir / FEATURES).read_bytes(),
        record.tags[TAG_CONTENT_HASH],
    )
    _INPUTS[tracking_db] = inputs
    return inputs


@pytest.fixture(scope="module")
def inputs(tracking_db: str, tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return build_inputs(tracking_db, tmp_path_factory)


def fresh_experiment(monkeypatch: pytest.MonkeyPatch, inputs: Inputs, label: str) -> str:
    """Switch this test (and the processes it starts) to a new experiment; return its name."""
    name = f"sharded-{label}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    monkeypatch.chdir(inputs.work)
    return name


@pytest.fixture
def experiment(inputs: Inputs, tracking_db: str, monkeypatch: pytest.MonkeyPatch, request) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    return fresh_experiment(monkeypatch, inputs, request.node.name[:20])


def feature_args(inputs: Inputs, output: Path) -> list[str]:
    """The ``features`` arguments of every shard (and of the reference, but its output)."""
    return [
        "--merged-cutouts-id", inputs.merged_id,
        "--resize", str(RESIZE),
        "--shard-rows", str(BLOCK_ROWS),
        "--batch-size", str(BATCH),
        "--workers", "0",
        "--output_path", str(output),
    ]  # fmt: skip


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "astrocurate.cli", "features", *args]


def the_run(experiment: str):
    """The experiment's only feature run (every shard must have joined the same)."""
    runs = find_runs("feature_extraction", include_unfinished=True)
    assert len(runs) == 1, [(r.run_id, r.status) for r in runs]
    return runs[0]


def assert_same_as_reference(run_id: str, inputs: Inputs) -> None:
    record = get_run(run_id)
    assert record.status == "FINISHED"
    assert (record.output_dir / FEATURES).read_bytes() == inputs.reference_bytes
    assert record.tags[TAG_CONTENT_HASH] == inputs.reference_hash  # outputs.json's hash
    assert not (record.output_dir / PROGRESS_DIR).exists()
    assert not list(record.output_dir.glob("*.partial"))


# ----------------------------------------------------------------------------- shards


@pytest.fixture(scope="module")
def sharded(inputs: Inputs, tracking_db: str, tmp_path_factory: pytest.TempPathFactory):
    """Two shards started at once as two processes of the real command: (run ID, outputs)."""
    output = tmp_path_factory.mktemp("two-shards")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        experiment = fresh_experiment(patch, inputs, "two")
        env = {**os.environ, **THREADS_ENV}
    argv = feature_args(inputs, output)
    procs = [
        subprocess.Popen(
            cli(*argv, "--shard", f"{k}/2"),
            cwd=inputs.work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    return experiment, [out.split() for out, _ in results], [err for _, err in results]


def test_two_concurrent_shards_give_the_matrix_of_one_process(
    sharded, inputs: Inputs, monkeypatch: pytest.MonkeyPatch, tracking_db: str
) -> None:
    experiment, outs, errs = sharded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    run = the_run(experiment)
    assert outs == [[run.run_id], [run.run_id]]  # both print the shared run
    assert run.tags[TAG_SHARDS] == "2"
    assert sum("created feature_extraction run" in e for e in errs) == 1
    assert sum(f"finished feature_extraction run {run.run_id}" in e for e in errs) == 1
    assert "shard 0/2: rows 0-17 (3 blocks)" in errs[0]
    assert "shard 1/2: rows 18-41 (4 blocks)" in errs[1]
    assert_same_as_reference(run.run_id, inputs)


def _model_args(model: str, tmp_path: Path) -> list[str]:
    """``features`` arguments choosing ``model``, with timm weights made here."""
    if model == "default":
        return ["--resize", str(RESIZE)]
    import timm
    import torch
    from safetensors.torch import save_file

    arch, size = {"cnn": ("resnet18", 32), "vit": ("vit_small_patch14_reg4_dinov2", 28)}[model]
    torch.manual_seed(1)
    kwargs = {"img_size": size} if model == "vit" else {}
    module = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    weights = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(weights))
    return ["--model", f"timm:{arch}", "--weights", str(weights), "--resize", str(size)]


@pytest.mark.parametrize("model", ["default", "cnn", "vit"])
def test_an_unfinished_run_resumes_only_with_its_own_batch_size(
    experiment: str, inputs: Inputs, tmp_path: Path, capsys, model: str
) -> None:
    """Features can differ at float rounding between batch sizes: no matrix mixes two."""
    output = tmp_path / "out"
    common = ["features", "--merged-cutouts-id", inputs.merged_id, "--shard-rows"]
    common += [str(BLOCK_ROWS), "--workers", "0", "--output_path", str(output)]
    common += _model_args(model, tmp_path)
    assert main([*common, "--batch-size", "6", "--shard", "0/2"]) == 0  # half the blocks
    run_id = capsys.readouterr().out.strip()
    assert not get_run(run_id).finished

    for argv in (["--shard", "1/2"], []):  # another shard, and a plain resume
        assert main([*common, "--batch-size", "12", *argv]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, err
        assert f"--batch-size 12: feature_extraction run {run_id} is unfinished" in err
        assert "started with batch_size=6" in err and "--batch-size 6 to resume it" in err
    assert not get_run(run_id).finished

    assert main([*common, "--batch-size", "6", "--shard", "1/2"]) == 0
    assert capsys.readouterr().out.strip() == run_id
    assert get_run(run_id).finished
    # a finished run is reused whatever the batch size: it mixes nothing
    assert main([*common, "--batch-size", "12"]) == 0
    assert capsys.readouterr().out.strip() == run_id


def test_torchrun_ranks_are_the_shards(experiment: str, inputs: Inputs, tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 ... --shard auto``: RANK/WORLD_SIZE pick the shards."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc-per-node", "2", "-m", "astrocurate.cli", "features"]
    result = subprocess.run(
        [*launcher, *feature_args(inputs, tmp_path), "--shard", "auto"],
        cwd=inputs.work,
        env={**os.environ, **THREADS_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = the_run(experiment)
    assert result.stdout.split() == [run.run_id, run.run_id]  # each rank prints the run
    assert run.tags[TAG_SHARDS] == "2"
    assert_same_as_reference(run.run_id, inputs)


def test_finishing_a_finished_run_changes_nothing(
    sharded, inputs: Inputs, monkeypatch: pytest.MonkeyPatch, tracking_db: str, capsys
) -> None:
    experiment, _, _ = sharded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    run = the_run(experiment)
    for _ in range(2):
        assert main(["features-finish", run.run_id]) == 0
        assert capsys.readouterr().out.split() == [run.run_id]
    again = main(["features", *feature_args(inputs, run.output_dir.parent.parent), "--finish"])
    assert again == 0 and capsys.readouterr().out.split() == [run.run_id]
    assert get_run(run.run_id).start_time == run.start_time
    assert_same_as_reference(run.run_id, inputs)


def test_clustering_prepare_accepts_the_sharded_run(
    sharded, inputs: Inputs, monkeypatch: pytest.MonkeyPatch, tracking_db: str, capsys, tmp_path
) -> None:
    experiment, _, _ = sharded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    run = the_run(experiment)
    config = str(ROOT / "configs" / "clusters" / "demo_2lvl_64_8.yaml")
    argv = ["clustering-prepare", "--features-id", run.run_id, "--config_file", config]
    status = main([*argv, "--output_path", str(tmp_path), "n_clusters=[4,2]"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert Path(captured.out.strip()).is_dir()


def test_killed_shard_resumes_and_finish_names_what_is_missing(
    experiment: str, inputs: Inputs, tmp_path: Path, capsys, caplog
) -> None:
    argv = feature_args(inputs, tmp_path)
    first = tmp_path / "feature_extraction" / "*" / PROGRESS_DIR / f"{0:012d}.done"
    proc = subprocess.Popen(
        cli(*argv, "--shard", "0/2"),
        cwd=inputs.work,
        env={**os.environ, **THREADS_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(str(first.relative_to(tmp_path)))):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = the_run(experiment)
    done = sorted(p.name for p in (run.output_dir / PROGRESS_DIR).glob("*.done"))
    assert 1 <= len(done) < 3, f"shard 0 has 3 blocks; {len(done)} were done when killed"
    assert run.status == "RUNNING"  # killed outright: no handler ran

    assert main(["features", *argv, "--shard", "1/2"]) == 0  # the other shard, in-process
    assert get_run(run.run_id).status == "RUNNING"  # shard 0's rows are missing
    capsys.readouterr()

    assert main(["features-finish", run.run_id]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is incomplete: rows " in err and "-17 of 42" in err
    assert "--shard 0/2" in err and "--shard 1/2" not in err

    caplog.set_level("INFO")
    assert main(["features", *argv, "--shard", "0/2"]) == 0  # rerun the killed shard
    assert f"resuming: {len(done)} of 3 blocks already done" in caplog.text
    assert f"finished feature_extraction run {run.run_id}" in caplog.text
    assert_same_as_reference(run.run_id, inputs)


def test_a_failing_shard_marks_the_run_failed_and_its_rerun_finishes_it(
    experiment: str, inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import astrocurate.stages.feature_extraction.extraction as features

    argv = feature_args(inputs, tmp_path)
    assert main(["features", *argv, "--shard", "0/2"]) == 0

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(features, "_features_of", broken)
        assert main(["features", *argv, "--shard", "1/2"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    run = the_run(experiment)
    assert run.status == "FAILED"
    assert run.tags["astrocurate.error"].startswith("shard 1/2: ")

    assert main(["features", *argv, "--shard", "1/2"]) == 0
    assert_same_as_reference(run.run_id, inputs)


def test_a_stopped_shard_leaves_a_finished_run_finished(
    experiment: str, inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another shard finished the run while this one was stopped: it stays FINISHED."""
    import astrocurate.stages.feature_extraction.shards as shards

    argv = feature_args(inputs, tmp_path)
    assert main(["features", *argv]) == 0  # the unsharded command fills the same run
    run = the_run(experiment)
    assert get_run(run.run_id).finished
    handle = StepRun(run.run_id, "feature_extraction", run.output_dir)
    failure = shards.shared_run(_plan(inputs, tmp_path)).working(handle.run_id, "shard 0/2")
    with pytest.raises(KeyboardInterrupt), failure:
        raise KeyboardInterrupt
    assert get_run(run.run_id).status == "FINISHED"


def _plan(inputs: Inputs, output: Path):
    from astrocurate.stages.feature_extraction.run import plan_extraction

    options = FeatureOptions(resize=RESIZE, shard_rows=BLOCK_ROWS)
    return plan_extraction(
        inputs.merged_id, options, batch_size=BATCH, workers=0, output_path=output
    )


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--shard", "auto"], "--shard auto: none of SLURM_ARRAY_TASK_ID"),
        (["--shard", "2/2"], "--shard: expected K/N"),
        (["--shard", "0/2", "--force"], "--force: not with --shard"),
        (["--shard", "0/2", "--finish"], "--shard: not with --finish"),
        (["--finish"], "--finish: no feature_extraction run of merge"),
    ],
    ids=["auto-outside-slurm", "bad-shard", "force", "shard-and-finish", "finish-nothing"],
)
def test_bad_shard_arguments_fail_in_one_line(
    experiment: str, inputs: Inputs, tmp_path: Path, monkeypatch, capsys, extra, fragment
) -> None:
    for name in (
        "SLURM_ARRAY_TASK_ID",
        "RANK",
        "WORLD_SIZE",
        "SLURM_PROCID",
        "SLURM_STEP_NUM_TASKS",
    ):
        monkeypatch.delenv(name, raising=False)
    assert main(["features", *feature_args(inputs, tmp_path), *extra]) == 1
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_features_finish_refuses_other_runs(inputs: Inputs, tracking_db, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    assert main(["features-finish", inputs.merged_id]) == 1
    assert "is a 'merge_cutouts' run, expected 'feature_extraction'" in capsys.readouterr().err
    assert main(["features-finish", "0" * 32]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_run_is_resumed_only_where_it_computes_in_the_precision_it_started_in(
    experiment: str, inputs: Inputs, tmp_path: Path, capsys, monkeypatch
) -> None:
    """``--precision bf16`` is fp32 on a CPU without bf16 units: an array over mixed CPUs
    must not write both into one matrix."""
    from astrocurate.algorithms import precision

    output = tmp_path / "out"
    common = ["features", "--merged-cutouts-id", inputs.merged_id, "--shard-rows"]
    common += [str(BLOCK_ROWS), "--workers", "0", "--output_path", str(output)]
    common += [*_model_args("cnn", tmp_path), "--precision", "bf16"]
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert main([*common, "--shard", "0/2"]) == 0  # half the blocks, computed in bf16
    run_id = capsys.readouterr().out.strip()
    assert get_run(run_id).params["computed_precision"] == "bf16"

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    for argv in (["--shard", "1/2"], []):  # another shard, and a plain resume
        assert main([*common, *argv]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, err
        assert f"--precision: feature_extraction run {run_id} is unfinished" in err
        assert "started with computed_precision=bf16, here it would be fp32" in err
        assert "resume it where --precision computes in bf16" in err
    assert not get_run(run_id).finished

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert main([*common, "--shard", "1/2"]) == 0
    assert capsys.readouterr().out.strip() == run_id
    assert get_run(run_id).finished
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert main(common) == 0  # a finished run is reused wherever: it mixes nothing
    assert capsys.readouterr().out.strip() == run_id


def test_a_run_started_before_the_precision_was_recorded_computed_in_fp32_on_the_cpu(
    experiment: str, inputs: Inputs, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Earlier versions autocast on CUDA only and recorded no ``computed_precision``."""
    from astrocurate.algorithms import precision
    from astrocurate.stages.feature_extraction.plan import Extraction

    output = tmp_path / "out"
    common = ["features", "--merged-cutouts-id", inputs.merged_id, "--shard-rows"]
    common += [str(BLOCK_ROWS), "--workers", "0", "--output_path", str(output)]
    common += [*_model_args("cnn", tmp_path), "--precision", "bf16"]
    recorded = Extraction.device_params

    def as_before(self: Extraction) -> dict:
        return {k: v for k, v in recorded(self).items() if k != "computed_precision"}

    with monkeypatch.context() as old_version:
        old_version.setattr(Extraction, "device_params", as_before)
        old_version.setattr(precision, "cpu_has_bf16", lambda: False)  # it computed in fp32
        assert main([*common, "--shard", "0/2"]) == 0
    run_id = capsys.readouterr().out.strip()
    assert "computed_precision" not in get_run(run_id).params

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert main(common) == 1
    err = capsys.readouterr().err
    assert "started with computed_precision=fp32, here it would be bf16" in err
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert main(common) == 0
    assert capsys.readouterr().out.strip() == run_id
    assert get_run(run_id).finished
