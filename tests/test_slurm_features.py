"""``features --slurm-array N``: the job-array script, its quoting, and a real SLURM run.

The script is checked three ways: its content; with a hostile directory name (spaces,
quotes, ``;``, ``$(...)``, backquotes), run in each of its modes against a stand-in
``sbatch`` and a stand-in Python that record the words they were given; and on the real
single-node SLURM cluster of :mod:`slurm_cluster`, where two array tasks and the
finishing job must give the matrix of the single-process run. The two tasks of one
``srun`` step with ``--shard auto`` must give it too.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from astrocurate.cli import main
from astrocurate.launch import SlurmOptions
from astrocurate.stages.feature_extraction.job_array import ArrayScript, render_array_script
from slurm_cluster import SlurmCluster
from test_features_sharded import (
    THREADS_ENV,
    Inputs,
    assert_same_as_reference,
    build_inputs,
    feature_args,
    fresh_experiment,
    one_torch_thread,
    the_run,
)

HOSTILE = "we ird \"q\" 'a'; $(touch PWNED) `touch PWNED2` $HOME & %j 100% *"
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def inputs(tracking_db: str, tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return build_inputs(tracking_db, tmp_path_factory)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture
def experiment(inputs: Inputs, tracking_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    return fresh_experiment(monkeypatch, inputs, "slurm")


def bash_syntax_ok(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- content


def test_script_content(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel/mlflow.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "survey A")
    script = ArrayScript(
        ["/opt/py", "-m", "astrocurate.cli", "features", "--merged-cutouts-id", "abc"],
        4,
        Path("/data/logs"),
        SlurmOptions("acct", "gpu", "02:00:00", None, gres="gpu:1", cpus_per_task=4),
    )
    text = render_array_script(script.validate())
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in lines
    assert f"export MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/rel/mlflow.db" in lines
    assert "export MLFLOW_EXPERIMENT_NAME='survey A'" in lines
    command = "/opt/py -m astrocurate.cli features --merged-cutouts-id abc"
    assert f'        exec {command} --shard "$SLURM_ARRAY_TASK_ID/4" ;;' in lines
    assert "tasks=0-3" in lines
    assert '        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"' in lines
    assert f"    --finish) exec {command} --finish ;;" in lines
    assert (
        'submit "the job array" --array="$tasks" --job-name=astrocurate-features --account=acct '
        "--partition=gpu --time=02:00:00 --gres=gpu:1 --cpus-per-task=4 --requeue "
        '--open-mode=append --output=/data/logs/features-%A_%a.out "$0" --task'
    ) in lines
    assert (
        'submit "the finishing job" --dependency=afterok:"$array" '
        "--job-name=astrocurate-features-finish --account=acct --partition=gpu "
        "--time=02:00:00 --kill-on-invalid-dep=yes "
        '--output=/data/logs/features-finish-%j.out "$0" --finish'
    ) in lines  # no GPU for the finishing job
    assert lines[-1] == 'echo "$array $finish"'
    assert "#SBATCH" not in text  # every option on sbatch's command line, shell-quoted
    path = tmp_path / "features.sh"
    path.write_text(text)
    bash_syntax_ok(path)


def fake_programs(directory: Path) -> tuple[Path, Path]:
    """A stand-in ``sbatch`` and Python that append the words they get to ``calls.jsonl``."""
    directory.mkdir()
    record = (
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "with open(os.environ['CALLS'], 'a') as f:\n"
        "    f.write(json.dumps({'prog': os.path.basename(sys.argv[0]), 'args': sys.argv[1:],\n"
        "        'uri': os.environ.get('MLFLOW_TRACKING_URI')}) + '\\n')\n"
    )
    sbatch = directory / "sbatch"
    sbatch.write_text(record + "n = sum(1 for _ in open(os.environ['CALLS']))\nprint(f'{n}00;c')\n")
    python = directory / "python"
    python.write_text(record)
    for path in (sbatch, python):
        path.chmod(0o755)
    return sbatch, python


def test_hostile_directory_names_are_quoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    hostile = tmp_path / HOSTILE
    hostile.mkdir()
    sbatch, python = fake_programs(tmp_path / "bin")
    store = f"sqlite:///{hostile}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", HOSTILE)
    command = [str(python), "-m", "astrocurate.cli", "features", "--output_path", str(hostile)]
    script = ArrayScript(command, 2, hostile / "logs", SlurmOptions())
    path = hostile / "features 2 shards.sh"
    path.write_text(render_array_script(script))
    path.chmod(0o755)
    bash_syntax_ok(path)

    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{sbatch.parent}:{os.environ['PATH']}", "CALLS": str(calls)}
    env["SLURM_ARRAY_TASK_ID"] = "1"  # what --task reads
    for mode in ([], ["--task"], ["--finish"]):
        result = subprocess.run(
            [str(path), *mode], cwd=hostile, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in calls.read_text().splitlines()]
    array, finish, task, finisher = lines
    assert array["prog"] == finish["prog"] == "sbatch"
    assert array["args"][-2:] == [str(path), "--task"]
    escaped = str(hostile).replace("%", "%%")  # sbatch's file name patterns
    assert f"--output={escaped}/logs/features-%A_%a.out" in array["args"]
    assert "--array=0-1" in array["args"]
    assert finish["args"][:2] == ["--parsable", "--dependency=afterok:100"]  # ";c" cut off
    assert finish["args"][-2:] == [str(path), "--finish"]
    assert task["args"] == [*command[1:], "--shard", "1/2"]
    assert finisher["args"] == [*command[1:], "--finish"]
    assert task["uri"] == finisher["uri"] == store
    assert (hostile / "logs").is_dir()
    assert not list(tmp_path.rglob("PWNED*"))


def test_cli_writes_an_executable_script(
    experiment: str, inputs: Inputs, tmp_path: Path, capsys
) -> None:
    output = tmp_path / HOSTILE
    argv = ["features", *feature_args(inputs, output), "--slurm-array", "3"]
    assert (
        main(
            [
                *argv,
                "--slurm_gres",
                "gpu:1",
                "--slurm_time",
                "1:00:00",
                "--slurm-cpus-per-task",
                "3",
            ]
        )
        == 0
    )
    path = Path(capsys.readouterr().out.strip())
    assert path.parent == output and path.name == f"features_{inputs.merged_id[:8]}_3shards.sh"
    assert path.stat().st_mode & stat.S_IXUSR
    bash_syntax_ok(path)
    text = path.read_text()
    assert "tasks=0-2" in text and "--gres=gpu:1" in text and "--time=1:00:00" in text
    assert "--cpus-per-task=3" in text
    assert inputs.merged_id in text and "--shard-rows 6" in text and "--resize 32" in text
    for bad, fragment in (
        (["--slurm-array", "0"], "--slurm-array: expected N >= 1"),
        (["--slurm-array", "2", "--slurm_gres", "gpu:1;id"], "--slurm_gres="),
        (["--slurm-array", "2", "--slurm_time", "soon"], "--slurm_time="),
        (["--slurm-array", "2", "--slurm_cpus_per_task", "0"], "--slurm_cpus_per_task: expected"),
        (["--slurm-array", "2", "--shard", "0/2"], "--shard: not with --slurm-array"),
    ):
        assert main(["features", *feature_args(inputs, output), *bad]) == 1
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- real SLURM


@pytest.mark.slow
def test_two_array_tasks_then_the_finishing_job_on_slurm(
    slurm_cluster: SlurmCluster, experiment: str, inputs: Inputs, tmp_path: Path, capsys
) -> None:
    cluster = slurm_cluster
    output = tmp_path / HOSTILE  # %j and 100% in the log directory: escaped for sbatch
    argv = ["features", *feature_args(inputs, output), "--slurm-array", "2"]
    argv += ["--slurm_account", cluster.account, "--slurm_partition", cluster.partition]
    assert main([*argv, "--slurm_time", "00:10:00"]) == 0
    script = Path(capsys.readouterr().out.strip())

    env = {**cluster.env, "OMP_NUM_THREADS": "1"}  # as in test_features_sharded
    submit = subprocess.run(
        [str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert submit.returncode == 0, submit.stderr + cluster.logs()
    array, finish = submit.stdout.split()
    cluster.wait_for_jobs([array, finish], TIMEOUT)

    logs = output / "logs"
    tasks = [(logs / f"features-{array}_{k}.out").read_text() for k in range(2)]
    finisher = (logs / f"features-finish-{finish}.out").read_text()
    info = cluster.job_info(finish)
    assert info["JobState"] == "COMPLETED", finisher + "".join(tasks) + cluster.logs()
    assert info["Account"] == cluster.account and info["TimeLimit"] == "00:10:00"
    run = the_run(experiment)
    assert "shard 0/2: rows 0-17" in tasks[0] and "shard 1/2: rows 18-41" in tasks[1]
    assert sum(f"finished feature_extraction run {run.run_id}" in t for t in tasks) == 1
    assert f"feature_extraction run {run.run_id} is already finished" in finisher
    assert finisher.split()[-1] == run.run_id
    assert_same_as_reference(run.run_id, inputs)


@pytest.mark.slow
def test_a_task_resubmitted_alone_computes_its_own_shard(
    slurm_cluster: SlurmCluster, experiment: str, inputs: Inputs, tmp_path: Path, capsys
) -> None:
    """``sbatch --array=K FILE --task`` (SLURM_ARRAY_TASK_MIN = MAX = K) runs shard K of N."""
    cluster = slurm_cluster
    output = tmp_path / "resubmit"
    argv = ["features", *feature_args(inputs, output), "--slurm-array", "2"]
    assert main([*argv, "--slurm_account", cluster.account, "--slurm_time", "00:10:00"]) == 0
    script = Path(capsys.readouterr().out.strip())
    env = {**cluster.env, "OMP_NUM_THREADS": "1"}

    alone = tmp_path / "task1.out"
    submit = subprocess.run(
        ["sbatch", "--parsable", "--array=1", f"--output={alone}", str(script), "--task"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    cluster.wait_for_jobs([submit.stdout.strip().split(";")[0]], TIMEOUT)
    log = alone.read_text()
    assert "shard 1/2: rows 18-41" in log, log + cluster.logs()  # not "shard 0/1: rows 0-41"

    again = subprocess.run(
        [str(script), "--resubmit", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr + cluster.logs()
    array, finish = again.stdout.split()
    cluster.wait_for_jobs([array, finish], TIMEOUT)
    task = (output / "logs" / f"features-{array}_0.out").read_text()
    assert "shard 0/2: rows 0-17" in task
    assert cluster.job_info(finish)["JobState"] == "COMPLETED", task + cluster.logs()
    assert_same_as_reference(the_run(experiment).run_id, inputs)

    for bad in ("2", "x", ""):
        refused = subprocess.run(
            [str(script), "--resubmit", bad], env=env, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 2 and "--resubmit" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_a_refused_job_stops_the_script_with_sbatch_s_message(
    slurm_cluster: SlurmCluster, experiment: str, inputs: Inputs, tmp_path: Path, capsys
) -> None:
    """The test cluster has no GPUs: a gres request is refused, nothing says submitted."""
    cluster = slurm_cluster
    argv = ["features", *feature_args(inputs, tmp_path / "gres"), "--slurm-array", "2"]
    assert main([*argv, "--slurm_gres", "gpu:1"]) == 0
    script = Path(capsys.readouterr().out.strip())
    result = subprocess.run(
        [str(script)], env=cluster.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "sbatch refused the job" in result.stderr and "gres" in result.stderr
    assert "submitted" not in result.stderr


def test_a_log_directory_with_a_backslash_is_refused_in_one_line(
    experiment: str, inputs: Inputs, tmp_path: Path, capsys
) -> None:
    output = tmp_path / "back\\slash"
    for argv in (
        ["features", *feature_args(inputs, output), "--slurm-array", "2"],
        ["cutouts", "--mosaics_path", str(inputs.work / "survey"), "--output_path", str(output),
         "--window_size", "32", "--slurm-array", "2"],
    ):  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--output_path" in err and "backslash" in err, err
        assert not output.exists()


@pytest.mark.slow
def test_the_tasks_of_one_srun_step_are_the_shards(
    slurm_cluster: SlurmCluster, experiment: str, inputs: Inputs, tmp_path: Path
) -> None:
    """``srun -n 2 ... --shard auto`` in a batch job: SLURM_PROCID/SLURM_STEP_NUM_TASKS."""
    cluster = slurm_cluster
    output, log = tmp_path / "srun out", tmp_path / "srun.out"
    command = [sys.executable, "-m", "astrocurate.cli", "features"]
    command += [*feature_args(inputs, output), "--shard", "auto"]
    batch = tmp_path / "srun.sh"
    # one thread per task, as the reference: the default backbone's sums depend on the count
    threads = " ".join(f"{k}={v}" for k, v in THREADS_ENV.items())
    batch.write_text(f"#!/bin/bash\nexport {threads}\nexec srun --ntasks=2 {shlex.join(command)}\n")
    submit = cluster.command(
        "sbatch", "--parsable", "--ntasks=2", "--cpus-per-task=1", f"--account={cluster.account}",
        f"--output={log}", str(batch),
    )  # fmt: skip
    job = submit.stdout.strip().split(";")[0]
    cluster.wait_for_jobs([job], TIMEOUT)
    text = log.read_text()
    assert cluster.job_info(job)["JobState"] == "COMPLETED", text + cluster.logs()
    run = the_run(experiment)
    assert "shard 0/2: rows 0-17" in text and "shard 1/2: rows 18-41" in text
    assert text.splitlines().count(run.run_id) == 2  # each task prints the run it filled
    assert_same_as_reference(run.run_id, inputs)
