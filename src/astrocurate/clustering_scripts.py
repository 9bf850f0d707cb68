"""Step 4 scripts: SLURM options, ``run.sh`` and the ``sbatch`` files of a clustering.

Holds :class:`SlurmOptions`, the rendering of ``run.sh`` and of one SLURM job per level
(one process, or several through torchrun / srun), and the tracking environment that
the scripts export (:func:`tracking_environment`, :func:`absolute_tracking_uri`).
"""

from __future__ import annotations

import logging
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrocurate.clustering_config import _SLURM_TOKEN, ClusteringConfig
from astrocurate.errors import InvalidArgumentError
from astrocurate.tracking import redact_uri

log = logging.getLogger(__name__)

_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


# =========================================================================== SLURM


@dataclass(frozen=True)
class SlurmOptions:
    """SLURM settings of a clustering experiment (``--slurm_*`` flags of step 4a).

    Attributes
    ----------
    account, partition, qos : str, optional
        ``--account``, ``--partition``, ``--qos`` of every job.
    time : str, optional
        Time limit per job (SLURM format, e.g. ``01:00:00`` or ``1-00:00:00``).
    """

    account: str | None = None
    partition: str | None = None
    time: str | None = None
    qos: str | None = None

    def validate(self) -> SlurmOptions:
        """Check every value (raises :class:`InvalidArgumentError`); return self."""
        for name in ("account", "partition", "qos"):
            value = getattr(self, name)
            if value is not None and not _SLURM_TOKEN.fullmatch(value):
                raise InvalidArgumentError(
                    f"--slurm_{name}={value!r}: expected a SLURM name (letters, digits, _ . + -)"
                )
        if self.time is not None and (
            not _SLURM_TIME.fullmatch(self.time) or _time_seconds(self.time) is None
        ):
            raise InvalidArgumentError(
                f"--slurm_time={self.time!r}: expected a SLURM time limit such as 01:00:00, "
                "90 (minutes), 2-00:00:00"
            )
        return self


def _time_seconds(text: str) -> int | None:
    """Seconds of a SLURM time limit, or None if it is malformed."""
    match = _SLURM_TIME.match(text.strip())
    if not match:
        return None
    days, a, b, c = match.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # days-hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
        h, m, s = parts
        return ((int(days) * 24 + h) * 60 + m) * 60 + s
    if len(parts) == 1:  # minutes
        return parts[0] * 60
    if len(parts) == 2:  # minutes:seconds
        return parts[0] * 60 + parts[1]
    h, m, s = parts
    return (h * 60 + m) * 60 + s


def _signal_lead(time_limit: str | None) -> int:
    """Seconds before the time limit at which SLURM warns a job (SIGUSR1)."""
    seconds = _time_seconds(time_limit) if time_limit else None
    if seconds is None:
        return 300
    return int(min(300, max(30, seconds // 10)))


# =========================================================================== scripts


def absolute_tracking_uri(uri: str, cwd: Path | None = None) -> str:
    """Make a relative local tracking store absolute; leave any other URI as it is.

    ``run.sh`` and SLURM jobs run in the experiment directory (or wherever SLURM starts
    them), so ``sqlite:///mlflow.db`` or ``./mlruns`` written into them would name another
    store than the one step 4a used.

    Parameters
    ----------
    uri : str
        A tracking URI: ``sqlite:///rel.db``, ``sqlite:////abs.db``, a plain path,
        ``file:rel``, ``http://host:5000``, ``databricks``, ...
    cwd : Path, optional
        What relative paths are relative to (default the current directory).

    Returns
    -------
    str
        ``uri`` with a relative database or directory path made absolute.
    """
    base = Path.cwd() if cwd is None else cwd
    if uri.startswith("sqlite:///"):
        path, sep, query = uri[len("sqlite:///") :].partition("?")
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{(base / path).resolve()}{sep}{query}"
        return uri
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return f"file://{(base / uri[len('file:') :]).resolve()}"
    if uri and "://" not in uri and ":" not in uri and not uri.startswith("databricks"):
        return str((base / uri).resolve())  # a plain path: MLflow's file store
    return uri


def tracking_environment(uri: str, experiment: str, script: str) -> list[str]:
    """Bash lines of a generated script that select the tracking store and experiment.

    A URI without credentials is exported as it is. One with a password or token
    (``postgresql://user:pw@host/db``, ``https://token@host``) is never written into the
    file: the script then uses the ``MLFLOW_TRACKING_URI`` of the environment it runs in
    (SLURM jobs inherit the submitting shell's) and stops with one line if it is unset.

    Parameters
    ----------
    uri : str
        The tracking URI (absolute, see :func:`absolute_tracking_uri`).
    experiment : str
        The MLflow experiment name.
    script : str
        The script's name, for its error message.

    Returns
    -------
    list of str
        Lines, every value quoted with :func:`shlex.quote`.
    """
    q = shlex.quote
    shown = redact_uri(uri)
    if shown == uri:
        lines = [f"export MLFLOW_TRACKING_URI={q(uri)}"]
    else:
        message = (
            f"{script}: set MLFLOW_TRACKING_URI to the tracking store {shown} (it holds "
            "credentials, so it is not written in this script)"
        )
        lines = [
            "# The tracking URI holds credentials, so it is not written here: this script uses",
            "# the MLFLOW_TRACKING_URI of the environment it runs in (SLURM jobs inherit it",
            "# from the shell that submits them). For an MLflow server, the URI without",
            "# credentials plus MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD also work.",
            'if [[ -z "${MLFLOW_TRACKING_URI:-}" ]]; then',
            f"    echo {q(message)} >&2",
            "    exit 1",
            "fi",
        ]
    return [*lines, f"export MLFLOW_EXPERIMENT_NAME={q(experiment)}"]


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

    def command(self, *extra: str) -> str:
        return self.command_for("clustering-run", *extra)

    def command_for(self, subcommand: str, *extra: str) -> str:
        words = [self.python, "-m", "astrocurate.cli", subcommand, str(self.directory), *extra]
        return "exec " + " ".join(shlex.quote(w) for w in words)

    def torchrun_command(self, nprocs: int, *extra: str) -> str:
        """``clustering-run`` in ``nprocs`` processes on this machine (the venv's torchrun).

        Only rank 0 reaches the console (``--local-ranks-filter 0``); the other ranks log
        to ``logs/clustering.rank<R>.log``.
        """
        torchrun = str(Path(self.python).with_name("torchrun"))
        words = [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            str(nprocs),
            "--local-ranks-filter",
            "0",
            "-m",
            "astrocurate.cli",
            "clustering-run",
            str(self.directory),
            *extra,
        ]
        return "exec " + " ".join(shlex.quote(w) for w in words)

    def srun_command(self, *extra: str) -> str:
        """``clustering-run`` in every task of the SLURM job (``srun``)."""
        words = [
            "srun",
            "--kill-on-bad-exit=1",
            self.python,
            "-m",
            "astrocurate.cli",
            "clustering-run",
            str(self.directory),
            *extra,
        ]
        return "exec " + " ".join(shlex.quote(w) for w in words)


def _render_run_script(
    launch: _Launch, n_levels: int, slurm: SlurmOptions | None, nprocs: int = 1
) -> str:
    """Return the text of ``run.sh``: run here, or submit the SLURM chain and wait.

    ``nprocs > 1`` (no SLURM): ``torchrun`` starts that many k-means processes here.
    """
    head = [
        "#!/usr/bin/env bash",
        f"# Clustering run {launch.run_id}, prepared by astrocurate (guide step 4a).",
    ]
    if slurm is None and nprocs > 1:
        body = [
            f"# Runs every level on this machine in {nprocs} processes (torchrun; the ranks",
            "# share the rows of every k-means run through torch.distributed). After an",
            "# interruption, run it again: it resumes from the checkpoints in this directory",
            "# (saved after every k-means run of a level). Logs: logs/clustering.log (rank 0),",
            "# logs/clustering.rank<R>.log (the others). The ranks talk over loopback only:",
            "# torchrun --standalone meets on localhost, and gloo binds to the loopback device.",
            "set -euo pipefail",
            *launch.environment(),
            *_loopback_gloo(),
            launch.torchrun_command(nprocs) + ' "$@"',
        ]
        return "\n".join(head + body) + "\n"

    if slurm is None:
        body = [
            "# Runs every level on this machine. After an interruption, run it again: it",
            "# resumes from the checkpoints in this directory. Log: logs/clustering.log.",
            "set -euo pipefail",
            *launch.environment(),
            launch.command() + ' "$@"',
        ]
        return "\n".join(head + body) + "\n"
    return "\n".join(head + _slurm_run_body(launch, n_levels)) + "\n"


def _loopback_gloo() -> list[str]:
    """Pin gloo to the loopback interface for a run on this machine (unless already set).

    Without it gloo listens on the address the host name resolves to, which may be
    reachable from the network; one machine's ranks need loopback only.
    """
    names = [n for _, n in socket.if_nameindex() if n == "lo" or n.startswith("lo")]
    if not names:
        return []
    return [f'export GLOO_SOCKET_IFNAME="${{GLOO_SOCKET_IFNAME:-{shlex.quote(names[0])}}}"']


def _slurm_run_body(launch: _Launch, n_levels: int) -> list[str]:
    jobs = [f"job{lvl}" for lvl in range(1, n_levels + 1)]
    lines = [
        f"# Submits one SLURM job per level ({n_levels}), chained with --dependency=afterok,",
        "# then waits for the last one; --no-wait returns at once. Prints the job IDs.",
        "# Run it again after a failure: finished levels are kept, a level resumes from its",
        "# checkpoints. Job logs: logs/level_<L>-<job>.out. While waiting it asks squeue",
        "# every ASTROCURATE_SLURM_POLL seconds (default 10).",
        "set -euo pipefail",
        f"cd {shlex.quote(str(launch.directory))}",
        *launch.environment(),
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
        'submit() { local id; id=$(sbatch --parsable "$@"); echo "${id%%;*}"; }',
        "job1=$(submit slurm/level_1.sbatch)",
    ]
    for lvl in range(2, n_levels + 1):
        lines.append(
            f'job{lvl}=$(submit --dependency=afterok:"$job{lvl - 1}" slurm/level_{lvl}.sbatch)'
        )
    ids = " ".join(f"${j}" for j in jobs)
    lines += [
        f'echo "run.sh: submitted SLURM jobs {ids} (logs in logs/)" >&2',
        f'echo "{ids}"',
        'if [[ "$wait_for_jobs" == 0 ]]; then exit 0; fi',
        'poll="${ASTROCURATE_SLURM_POLL:-10}"',
        f'while squeue --noheader --jobs="${jobs[-1]}" 2>/dev/null | grep -q .; do',
        '    sleep "$poll"',
        "done",
        launch.command_for("clustering-status"),
    ]
    return lines


def _render_sbatch(
    launch: _Launch, config: ClusteringConfig, slurm: SlurmOptions, level: int
) -> str:
    """Return the SLURM batch script of one level (1-based); paths only in its body."""
    partition = slurm.partition or config.slurm_partition
    gpus = config.ngpus_per_node
    if config.n_processes > 1:
        return _render_distributed_sbatch(launch, config, slurm, level, partition)
    lines = _sbatch_header(
        launch,
        config,
        slurm,
        level,
        partition,
        tasks_per_node=1,
        cpus_per_task=config.ncpus_per_gpu * max(1, gpus),
        signal="B:USR1",
    )
    lines += [
        f"# Level {level} of {config.n_levels} of clustering run {launch.run_id} (astrocurate).",
        "# Submitted by run.sh from the experiment directory; SIGUSR1 before the time limit",
        "# makes it checkpoint and requeue itself. SIGUSR1 is ignored until the clustering",
        "# installs its handler (and after it is done), so it never kills the job.",
        "set -euo pipefail",
        *launch.environment(),
        "trap '' USR1",
        launch.command("--level", str(level)),
    ]
    return "\n".join(lines) + "\n"


def _sbatch_header(
    launch: _Launch,
    config: ClusteringConfig,
    slurm: SlurmOptions,
    level: int,
    partition: Any,
    *,
    tasks_per_node: int,
    cpus_per_task: int,
    signal: str,
) -> list[str]:
    """Return the shebang and ``#SBATCH`` lines of one level's job.

    ``signal`` is ``B:USR1`` (to the batch shell alone) or ``USR1`` (to every task too);
    it comes before the time limit, early enough to checkpoint.
    """
    gpus = config.ngpus_per_node
    options = [
        f"--job-name=clustering-L{level}-{launch.run_id[:8]}",
        f"--account={slurm.account}" if slurm.account else None,
        f"--partition={partition}" if partition else None,
        f"--qos={slurm.qos}" if slurm.qos else None,
        f"--time={slurm.time}" if slurm.time else None,
        f"--nodes={config.nnodes}",
        f"--ntasks-per-node={tasks_per_node}",
        f"--gpus-per-node={gpus}" if gpus else None,
        f"--cpus-per-task={cpus_per_task}",
        "--requeue",
        "--open-mode=append",
        "--kill-on-invalid-dep=yes",
        f"--signal={signal}@{_signal_lead(slurm.time)}",
        f"--output=logs/level_{level}-%j.out",
    ]
    return ["#!/usr/bin/env bash"] + [f"#SBATCH {o}" for o in options if o]


def _render_distributed_sbatch(
    launch: _Launch, config: ClusteringConfig, slurm: SlurmOptions, level: int, partition: Any
) -> str:
    """Return the batch script of one level run by ``srun`` in ``config.n_processes`` tasks."""
    lines = _sbatch_header(
        launch,
        config,
        slurm,
        level,
        partition,
        tasks_per_node=config.procs_per_node,
        cpus_per_task=config.ncpus_per_gpu,
        signal="USR1",
    )
    lines += [
        f"# Level {level} of {config.n_levels} of clustering run {launch.run_id} (astrocurate),",
        f"# in {config.n_processes} tasks that share the rows of every k-means run",
        "# (torch.distributed; rank 0 writes the outputs and talks to MLflow). Submitted by",
        "# run.sh from the experiment directory; SIGUSR1 before the time limit goes to every",
        "# task: they stop after the current k-means run, and rank 0 checkpoints and requeues",
        "# the job.",
        "set -euo pipefail",
        *launch.environment(),
        launch.srun_command("--level", str(level)),
    ]
    return "\n".join(lines) + "\n"
