"""Step 4 scripts: ``run.sh`` and the ``sbatch`` files of a clustering.

Describes ``run.sh`` (local, per-level process counts, or the SLURM chain) and one SLURM
job per level (one process, or several through torchrun / srun);
:func:`astrocurate.launch.render_script` writes them. The SLURM options, the submission
functions and the tracking environment come from :mod:`astrocurate.launch`.
"""

from __future__ import annotations

import logging
import shlex
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from astrocurate.launch import (
    Job,
    Script,
    SlurmOptions,
    cli_command,
    render_script,
    shell_words,
    submit_functions,
    time_limit_seconds,
    tracking_environment,
)
from astrocurate.stages.clustering.config import ClusteringConfig

log = logging.getLogger(__name__)


def _signal_lead(time_limit: str | None) -> int:
    """Seconds before the time limit at which SLURM warns a job (SIGUSR1)."""
    seconds = time_limit_seconds(time_limit) if time_limit else None
    if seconds is None:
        return 300
    return int(min(300, max(30, seconds // 10)))


# =========================================================================== scripts


@dataclass(frozen=True)
class _Launch:
    """What a generated script needs to start ``clustering-run`` in a directory."""

    directory: Path
    run_id: str
    python: str
    pythonpath: str
    tracking_uri: str
    experiment: str

    def environment(self) -> list[str]:
        return [
            *tracking_environment(self.tracking_uri, self.experiment, "run.sh"),
            f'export PYTHONPATH={shlex.quote(self.pythonpath)}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        ]

    def words(self, *extra: str) -> list[str]:
        """``clustering-run DIR`` and ``extra``, one process."""
        return self.words_for("clustering-run", *extra)

    def words_for(self, subcommand: str, *extra: str) -> list[str]:
        return cli_command(subcommand, str(self.directory), *extra, python=self.python)

    def torchrun_words(self, nprocs: int, *extra: str) -> list[str]:
        """``clustering-run`` in ``nprocs`` processes on this machine (the venv's torchrun).

        Only rank 0 reaches the console (``--local-ranks-filter 0``); the other ranks log
        to ``logs/clustering.rank<R>.log``.
        """
        torchrun = str(Path(self.python).with_name("torchrun"))
        options = ["--standalone", "--nproc_per_node", str(nprocs), "--local-ranks-filter", "0"]
        return [torchrun, *options, *self.words(*extra)[1:]]

    def srun_words(self, *extra: str) -> list[str]:
        """``clustering-run`` in every task of the SLURM job (``srun``)."""
        return ["srun", "--kill-on-bad-exit=1", *self.words(*extra)]


def _render_run_script(
    launch: _Launch, config: ClusteringConfig, slurm: SlurmOptions | None
) -> str:
    """Return the text of ``run.sh``: run here, or submit the SLURM chain and wait.

    Without SLURM, each level runs in its own process count (:meth:`~ClusteringConfig.
    n_processes`): consecutive levels with the same count share one command, ``torchrun``
    when it is more than one.
    """
    title = f"Clustering run {launch.run_id}, prepared by astrocurate (guide step 4a)."
    if slurm is not None:
        return render_script(
            Script(
                [title, *_SLURM_RUN_COMMENTS.format(n_levels=config.n_levels).splitlines()],
                _slurm_run_body(launch, config),
                launch.environment(),
                directory=launch.directory,
            )
        )
    groups = _process_groups(config)
    distributed = any(nprocs > 1 for _, _, nprocs in groups)
    body = _loopback_gloo() if distributed else []
    for _, last, nprocs in groups:
        final = last == config.n_levels
        extra = () if final else ("--level", str(last))
        words = launch.torchrun_words(nprocs, *extra) if nprocs > 1 else launch.words(*extra)
        body.append(("exec " if final else "") + shell_words(words) + ' "$@"')
    comments = [title, *_local_comments(groups, distributed)]
    return render_script(Script(comments, body, launch.environment()))


def _local_comments(groups: list[tuple[int, int, int]], distributed: bool) -> list[str]:
    """Return what the comments of a ``run.sh`` running on this machine say."""
    if len(groups) > 1:
        lines = [
            "Runs every level on this machine, each in the processes its config entries ask",
            "for (ngpus_per_node, nprocs_per_node per level; torchrun when more than one):",
            *(f"  {_levels_text(a, b)}: {n} process(es)" for a, b, n in groups),
        ]
    elif distributed:
        lines = [
            f"Runs every level on this machine in {groups[0][2]} processes (torchrun; the ranks",
            "share the rows of every k-means run through torch.distributed).",
        ]
    else:
        lines = ["Runs every level on this machine."]
    if distributed:
        return [
            *lines,
            "After an interruption, run it again: it resumes from the checkpoints in this",
            "directory (saved after every k-means run of a level). Logs: logs/clustering.log",
            "(rank 0), logs/clustering.rank<R>.log (the others). The ranks talk over loopback",
            "only: torchrun --standalone meets on localhost, and gloo binds to the loopback",
            "device.",
        ]
    return [
        *lines,
        "After an interruption, run it again: it resumes from the checkpoints in this",
        "directory. Log: logs/clustering.log.",
    ]


def _process_groups(config: ClusteringConfig) -> list[tuple[int, int, int]]:
    """Return the runs of consecutive levels with one process count: (first, last, count)."""
    groups: list[tuple[int, int, int]] = []
    for level in range(1, config.n_levels + 1):
        nprocs = config.n_processes(level)
        if groups and groups[-1][2] == nprocs:
            groups[-1] = (groups[-1][0], level, nprocs)
        else:
            groups.append((level, level, nprocs))
    return groups


def _levels_text(first: int, last: int) -> str:
    return f"level {first}" if first == last else f"levels {first}-{last}"


def _loopback_gloo() -> list[str]:
    """Pin gloo to the loopback interface for a run on this machine (unless already set).

    Without it gloo listens on the address the host name resolves to, which may be
    reachable from the network; one machine's ranks need loopback only.
    """
    names = [n for _, n in socket.if_nameindex() if n == "lo" or n.startswith("lo")]
    if not names:
        return []
    return [f'export GLOO_SOCKET_IFNAME="${{GLOO_SOCKET_IFNAME:-{shlex.quote(names[0])}}}"']


#: run.sh's hint when sbatch refuses a level's GPUs (``level_gpus`` is set before it).
_GRES_HINT = "\n".join(
    [
        "    local level=${1#the job of level }",
        "    level=${level%% *}",
        '    echo "level $level asks for ${level_gpus[$level]} GPU(s) per node (config key" \\',
        '         "ngpus_per_node); on a partition without GPUs set ngpus_per_node: 0"',
    ]
)
_AFTER_A_REFUSAL = (
    "change it in your config file or step 4a's --slurm_* flags, prepare again with "
    "scripts/4_clustering.py (it reuses this run, which stays prepared), then run ./run.sh "
    "again"
)


#: The comments of a run.sh that submits the levels as SLURM jobs.
_SLURM_RUN_COMMENTS = """\
Submits one SLURM job per level ({n_levels}), chained with --dependency=afterok,
then waits for the last one; --no-wait returns at once. Prints the job IDs.
Run it again after a failure: finished levels are kept, a level resumes from its
checkpoints. Job logs: logs/level_<L>-<job>.out. While waiting it asks squeue
every ASTROCURATE_SLURM_POLL seconds (default 10). If sbatch refuses a job, the
jobs already submitted are cancelled and it stops with sbatch's message."""


def _level_words(level: int) -> str:
    """Return the words naming a level's job in run.sh's messages, quoted for bash."""
    return shlex.quote(f"the job of level {level} (slurm/level_{level}.sbatch)")


def _slurm_run_body(launch: _Launch, config: ClusteringConfig) -> list[str]:
    """Return the commands of a run.sh that submits the level jobs, after its environment."""
    n_levels = config.n_levels
    gpus = " ".join(f"[{lvl}]={config.ngpus_per_node[lvl - 1]}" for lvl in range(1, n_levels + 1))
    lines = [
        "wait_for_jobs=1",
        'for arg in "$@"; do',
        '    case "$arg" in',
        "        --no-wait) wait_for_jobs=0 ;;",
        '        *) echo "run.sh: unknown option $arg (only --no-wait)" >&2; exit 2 ;;',
        "    esac",
        "done",
        "if ! command -v sbatch >/dev/null; then",
        '    echo "run.sh: sbatch not found; this experiment was prepared for SLURM (--slurm_*" \\',
        '         "flags): run it where SLURM is, or prepare it again without them" >&2',
        "    exit 1",
        "fi",
        f"level_gpus=({gpus})  # GPUs per node of each level's job (ngpus_per_node)",
        submit_functions("run.sh", _GRES_HINT, _AFTER_A_REFUSAL),
        f"submit {_level_words(1)} slurm/level_1.sbatch",
    ]
    lines += [
        f'submit {_level_words(lvl)} --dependency=afterok:"${{submitted[-1]}}" '
        f"slurm/level_{lvl}.sbatch"
        for lvl in range(2, n_levels + 1)
    ]
    lines += [
        'echo "run.sh: submitted SLURM jobs ${submitted[*]} (logs in logs/)" >&2',
        'echo "${submitted[*]}"',
        'if [[ "$wait_for_jobs" == 0 ]]; then exit 0; fi',
        'poll="${ASTROCURATE_SLURM_POLL:-10}"',
        'while squeue --noheader --jobs="${submitted[-1]}" 2>/dev/null | grep -q .; do',
        '    sleep "$poll"',
        "done",
        "exec " + shell_words(launch.words_for("clustering-status")),
    ]
    return lines


def _render_sbatch(
    launch: _Launch, config: ClusteringConfig, slurm: SlurmOptions, level: int
) -> str:
    """Return the SLURM batch script of one level (1-based); paths only in its body.

    One process, or ``n_processes(level)`` tasks started by ``srun`` that share the rows
    of every k-means run.
    """
    n = config.n_processes(level)
    header = f"Level {level} of {config.n_levels} of clustering run {launch.run_id} (astrocurate)"
    if n > 1:
        comments = [
            f"{header},",
            f"in {n} tasks that share the rows of every k-means run",
            "(torch.distributed; rank 0 writes the outputs and talks to MLflow). Submitted by",
            "run.sh from the experiment directory; SIGUSR1 before the time limit goes to every",
            "task: they stop after the current k-means run, and rank 0 checkpoints and requeues",
            "the job.",
        ]
        body = ["exec " + shell_words(launch.srun_words("--level", str(level)))]
    else:
        comments = [
            f"{header}.",
            "Submitted by run.sh from the experiment directory; SIGUSR1 before the time limit",
            "makes it checkpoint and requeue itself. SIGUSR1 is ignored until the clustering",
            "installs its handler (and after it is done), so it never kills the job.",
        ]
        body = ["trap '' USR1", "exec " + shell_words(launch.words("--level", str(level)))]
    job = _level_job(launch, config, slurm, level)
    return render_script(Script(comments, body, launch.environment(), job))


def _level_job(launch: _Launch, config: ClusteringConfig, slurm: SlurmOptions, level: int) -> Job:
    """Return the sbatch options of one level's job.

    One process gets ``--signal=B:USR1`` (to the batch shell alone) and the CPUs of its
    GPUs; several tasks get ``USR1`` (to every task too) and ``ncpus_per_gpu`` each. The
    signal comes before the time limit, early enough to checkpoint.
    """
    gpus = config.ngpus_per_node[level - 1]
    if config.n_processes(level) > 1:
        tasks, cpus, signal = config.procs_per_node(level), config.ncpus_per_gpu, "USR1"
    else:
        tasks, cpus, signal = 1, config.ncpus_per_gpu * max(1, gpus), "B:USR1"
    options = [
        f"--nodes={config.nnodes[level - 1]}",
        f"--ntasks-per-node={tasks}",
        f"--gpus-per-node={gpus}" if gpus else None,
        f"--cpus-per-task={cpus}",
        "--requeue",
        "--open-mode=append",
        "--kill-on-invalid-dep=yes",
        f"--signal={signal}@{_signal_lead(slurm.time)}",
        f"--output=logs/level_{level}-%j.out",
    ]
    return Job(
        f"clustering-L{level}-{launch.run_id[:8]}",
        replace(slurm, partition=slurm.partition or config.slurm_partition),
        tuple(o for o in options if o),
    )
