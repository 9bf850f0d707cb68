"""The features job array: a script that submits N shards and the job finishing their run.

``astrocurate features ... --slurm-array N`` writes it (:func:`write_array_script`);
:func:`astrocurate.launch.render_script` renders it. See
:mod:`astrocurate.stages.feature_extraction.shards` for what a shard does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from astrocurate import launch
from astrocurate.errors import InvalidArgumentError
from astrocurate.launch import SlurmOptions


@dataclass(frozen=True)
class ArrayScript:
    """What a feature job-array script runs.

    Attributes
    ----------
    command : list of str
        The ``features`` command of every task, without ``--shard`` (absolute paths).
    n_shards : int
        Array size N; task K runs ``--shard K/N``.
    log_dir : Path
        Where the tasks' and the finishing job's logs go.
    slurm : SlurmOptions
        The ``--slurm_*`` options of the array tasks; the finishing job takes the same
        but ``gres`` and ``cpus_per_task`` (it computes nothing).
    name : str
        Job name of the array (the finishing job adds ``-finish``).
    """

    command: list[str]
    n_shards: int
    log_dir: Path
    slurm: SlurmOptions
    name: str = "astrocurate-features"

    def validate(self) -> ArrayScript:
        """Check N and the SLURM options (raises :class:`InvalidArgumentError`); return self."""
        if self.n_shards < 1:
            raise InvalidArgumentError(f"--slurm-array: expected N >= 1, got {self.n_shards}")
        self.slurm.validate()
        return self

    def jobs(self) -> tuple[launch.Job, launch.Job]:
        """Return the sbatch options of the array tasks and of the finishing job."""
        logs = self.log_dir
        array = launch.Job(
            self.name,
            self.slurm,
            (
                "--requeue",
                "--open-mode=append",
                "--output="
                + launch.sbatch_path_pattern(logs, "features-%A_%a.out", "--output_path"),
            ),
        )
        finish = launch.Job(
            f"{self.name}-finish",
            replace(self.slurm, gres=None, cpus_per_task=None),
            (
                "--kill-on-invalid-dep=yes",
                "--output="
                + launch.sbatch_path_pattern(logs, "features-finish-%j.out", "--output_path"),
            ),
        )
        return array, finish


#: The features array's hint when sbatch refuses the tasks' GPUs.
_GRES_HINT = (
    '    echo "the array tasks ask for --slurm_gres; on a partition without GPUs leave it out"'
)
_AFTER_A_REFUSAL = "write the script again with the corrected flags (features ... --slurm-array N)"

#: What the script says it does (``{n}``: the number of shards).
_COMMENTS = """\
astrocurate: feature extraction in {n} shards of one feature_extraction run.
Run this file (do not sbatch it): it submits a SLURM job array whose task K
computes shard K/{n}, and a job that finishes the run once every task succeeded;
it prints the two job IDs. A task that failed or ran out of time: run this file
with --resubmit K (several: --resubmit 3,5); it submits them again with the same
options, and a new finishing job. The run ID ends each task's log."""


def render_array_script(script: ArrayScript) -> str:
    """Return a bash script that submits a feature job array and its finishing job.

    Run it (not ``sbatch`` it): it submits N tasks (``sbatch --array=0-<N-1>``), task K
    running the command with ``--shard K/N`` (N is written into the script, so a task
    resubmitted alone still computes its own shard), then the command with ``--finish`` as
    a job that starts once every task succeeded (``--dependency=afterok``), and prints the
    two job IDs. ``--resubmit K[,K...]`` submits those tasks again with the same options,
    and a new finishing job. sbatch runs the same file with ``--task`` or ``--finish``. If
    sbatch refuses a job, the script stops with its message (cancelling the tasks it
    submitted). Every interpolated value is shell-quoted; the options are given to sbatch
    on its command line (:meth:`~astrocurate.launch.Job.words`), not in ``#SBATCH`` lines.
    """
    array, finish = script.jobs()
    body = [
        *_dispatch(script),
        "if ! command -v sbatch >/dev/null; then",
        '    echo "$0: sbatch not found: run this where SLURM is" >&2',
        "    exit 1",
        "fi",
        f"mkdir -p {launch.shell_words([str(script.log_dir)])}",
        launch.submit_functions("features job array", _GRES_HINT, _AFTER_A_REFUSAL),
        f'submit "the job array" --array="$tasks" {array.words()} "$0" --task',
        "array=${submitted[-1]}",
        f'submit "the finishing job" --dependency=afterok:"$array" {finish.words()} "$0" --finish',
        "finish=${submitted[-1]}",
        'echo "submitted feature shards $tasks as job array $array, finishing job $finish" >&2',
        'echo "$array $finish"',
    ]
    comments = _COMMENTS.format(n=script.n_shards).splitlines()
    environment = launch.script_environment("features job array")
    return launch.render_script(launch.Script(comments, body, environment))


def _dispatch(script: ArrayScript) -> list[str]:
    """Return the script's option handling: run a task, the finishing job, or resubmit."""
    n = script.n_shards
    command = launch.shell_words(script.command)
    return [
        f"tasks=0-{n - 1}",
        'case "${1:-}" in',
        "    --task)  # torch threads: the task's CPUs, not the node's (tasks share nodes)",
        '        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
        f'        exec {command} --shard "$SLURM_ARRAY_TASK_ID/{n}" ;;',
        f"    --finish) exec {command} --finish ;;",
        "    --resubmit)",
        '        tasks="${2:-}"',
        '        if [[ ! "$tasks" =~ ^[0-9]+(,[0-9]+)*$ ]]; then',
        f'            echo "$0: --resubmit expects task IDs such as 3 or 3,5 (0 to {n - 1})" >&2',
        "            exit 2",
        "        fi",
        "        for k in ${tasks//,/ }; do",
        f"            if ((k >= {n})); then",
        f'                echo "$0: --resubmit: task $k is not one of 0 to {n - 1}" >&2',
        "                exit 2",
        "            fi",
        "        done ;;",
        "    '') ;;",
        '    *) echo "$0: unknown option $1 (none, --resubmit K, --task, --finish)" >&2; exit 2;;',
        "esac",
    ]


def write_array_script(
    plan: Any, n_shards: int, slurm: SlurmOptions, *, batch_size: int, workers: int | None,
    device: str,
) -> Path:  # fmt: skip
    """Write the script of ``features --slurm-array N``; return its path.

    Parameters
    ----------
    plan : Extraction
        The planned run (:func:`~astrocurate.stages.feature_extraction.run.plan_extraction`:
        the merge run, the model and its weights are checked here, not in N jobs).
    n_shards : int
        Array size N.
    slurm : SlurmOptions
        The ``--slurm_*`` options of the tasks.
    batch_size, workers, device
        The tasks' ``--batch-size``, ``--workers`` and ``--device``.

    Returns
    -------
    Path
        ``<output root>/features_<merge run>_<N>shards.sh`` (logs in ``<output root>/logs``).
    """
    from astrocurate.io.atomic import write_text
    from astrocurate.tracking import make_output_root

    argv = feature_argv(plan, batch_size=batch_size, workers=workers, device=device)
    script = ArrayScript(launch.cli_command("features", *argv), n_shards, plan.root / "logs", slurm)
    text = render_array_script(script.validate())  # refuses a log directory sbatch cannot use
    path = plan.root / f"features_{plan.merged.run_id[:8]}_{n_shards}shards.sh"
    make_output_root(plan.root, [plan.merged.run_id])
    write_text(path, text, 0o755)
    return path


def feature_argv(plan: Any, *, batch_size: int, workers: int | None, device: str) -> list[str]:
    """Return the ``features`` arguments that name the run of ``plan`` from any directory."""
    o = plan.options
    n = o.normalization
    argv = [
        "--merged-cutouts-id", plan.merged.run_id,
        "--model", o.model,
        "--channels", o.channels,
        "--normalization", n.method,
        "--low-percentile", repr(n.low_percentile),
        "--high-percentile", repr(n.high_percentile),
        "--asinh-softening", repr(n.asinh_softening),
        "--sigma", repr(n.sigma),
        "--norm-mean", repr(n.mean),
        "--norm-std", repr(n.std),
        "--precision", o.precision,
        "--dtype", o.output_dtype,
        "--batch-size", str(batch_size),
        "--shard-rows", str(o.shard_rows),
        "--device", device,
        "--output_path", str(plan.root),
        "--no-progress",
    ]  # fmt: skip
    for flag, value in (("--arch", o.arch), ("--pooling", o.pooling), ("--resize", o.resize)):
        if value is not None:
            argv += [flag, str(value)]
    if o.weights is not None:
        argv += ["--weights", str(Path(o.weights).resolve())]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return argv
