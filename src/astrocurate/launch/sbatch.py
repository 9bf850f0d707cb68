"""The one renderer of every script astrocurate writes, and the sbatch helpers they share.

A stage describes a script (:class:`Script`: comments, tracking environment, body, and
for a batch job a :class:`Job` whose options become the ``#SBATCH`` header) and
:func:`render_script` writes its text. A script that submits jobs itself gives their
options on sbatch's command line (:meth:`Job.words`) and uses :func:`submit_functions`;
log file patterns given to sbatch go through :func:`sbatch_path_pattern`.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from astrocurate.errors import InvalidArgumentError
from astrocurate.launch.slurm import SlurmOptions

#: A ``#SBATCH`` value that needs no quotes.
_PLAIN = re.compile(r"[A-Za-z0-9_.:+\-/%=@,]*")


def cli_command(subcommand: str, *arguments: str, python: str | None = None) -> list[str]:
    """Return the words running ``astrocurate SUBCOMMAND ARGUMENTS`` with ``python``.

    Parameters
    ----------
    subcommand : str
        The astrocurate subcommand.
    *arguments : str
        Its arguments.
    python : str, optional
        The interpreter (default this one, :data:`sys.executable`).
    """
    return [python or sys.executable, "-m", "astrocurate.cli", subcommand, *arguments]


def shell_words(words: Sequence[str]) -> str:
    """Return ``words`` as one bash command line, each word quoted."""
    return " ".join(shlex.quote(str(w)) for w in words)


@dataclass(frozen=True)
class Job:
    """The sbatch options of one SLURM job.

    Attributes
    ----------
    name : str
        ``--job-name``.
    slurm : SlurmOptions
        The step's ``--slurm_*`` options (validated), right after the name.
    options : tuple of str
        The job's own sbatch options (``--array=0-3``, ``--requeue``, ...), after them.
    """

    name: str
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    options: tuple[str, ...] = ()

    def sbatch_options(self) -> list[str]:
        """Return every option of the job, in the order it is written."""
        return [f"--job-name={self.name}", *self.slurm.sbatch_options(), *self.options]

    def header(self) -> list[str]:
        """Return the job's ``#SBATCH`` lines (a value with other characters double-quoted)."""
        lines = []
        for option in self.sbatch_options():
            key, sep, value = option.partition("=")
            if sep and not _PLAIN.fullmatch(value):
                escaped = value.replace('"', '\\"')  # sbatch's quoting of #SBATCH values
                option = f'{key}="{escaped}"'
            lines.append(f"#SBATCH {option}")
        return lines

    def words(self) -> str:
        """Return the job's options as words of sbatch's command line, shell-quoted."""
        return shell_words(self.sbatch_options())


@dataclass(frozen=True)
class Script:
    """A bash script astrocurate writes.

    Attributes
    ----------
    comments : sequence of str
        What the script does, one comment line each (without ``#``).
    body : sequence of str
        The commands, after the environment.
    environment : sequence of str
        Lines selecting the tracking store (from
        :func:`~astrocurate.launch.environment.script_environment` or
        :func:`~astrocurate.launch.environment.tracking_environment`) and any more exports.
    job : Job, optional
        A batch job's options, written as ``#SBATCH`` lines after the ``#!`` line.
    directory : Path, optional
        Where the script changes to before the environment.
    """

    comments: Sequence[str]
    body: Sequence[str]
    environment: Sequence[str] = ()
    job: Job | None = None
    directory: Path | None = None


def render_script(script: Script) -> str:
    """Return the text of ``script``: ``#!``, ``#SBATCH`` lines, comments, strict mode, body."""
    lines = ["#!/usr/bin/env bash"]
    if script.job is not None:
        lines += script.job.header()
    lines += [f"# {c}".rstrip() for c in script.comments]
    lines.append("set -euo pipefail")
    if script.directory is not None:
        lines.append(f"cd {shlex.quote(str(script.directory))}")
    lines += [*script.environment, *script.body]
    return "\n".join(lines) + "\n"


def sbatch_path_pattern(directory: Path, name_pattern: str, argument: str) -> str:
    """Return ``directory/name_pattern`` for sbatch's ``--output``, the directory escaped.

    sbatch expands ``%`` patterns (``%j``, ``%A``, ``%a``) in file names: a ``%`` of the
    directory becomes ``%%``. A backslash anywhere turns the patterns off, and a newline
    cannot be given, so a directory with either is refused.

    Parameters
    ----------
    directory : Path
        Where the logs go.
    name_pattern : str
        The file name with its patterns, e.g. ``features-%A_%a.out``.
    argument : str
        The option that chose the directory, for the error message.

    Raises
    ------
    InvalidArgumentError
        If the directory holds a backslash or a newline.
    """
    text = str(directory)
    if any(c in text for c in "\n\r\\"):
        raise InvalidArgumentError(
            f"{argument}: {text!r} holds a newline or backslash; SLURM cannot name the job's "
            f"log files in it (choose another {argument})"
        )
    return f"{text.replace('%', '%%')}/{name_pattern}"


#: The bash functions of a script that submits jobs (see :func:`submit_functions`).
_SUBMIT = r"""submitted=()
submit() {  # submit WHAT [sbatch options] FILE [ARGS]: submit a job, keep its ID in submitted
    local what=$1 out id
    shift
    if ! out=$(sbatch --parsable "$@" 2>&1); then refused "$what" "$out"; fi
    id=${out##*$'\n'}
    id=${id%%;*}
    if [[ ! "$id" =~ ^[0-9]+$ ]]; then refused "$what" "$out"; fi
    if [[ "$out" == *$'\n'* ]]; then echo "${out%$'\n'*}" >&2; fi  # sbatch's warnings
    submitted+=("$id")
}
refused() {  # refused WHAT MESSAGE: cancel the jobs submitted so far, explain, exit 1
    local what=$1 message=${2//$'\n'/ } hint cancelled=""
    case "${message,,}" in
        *gres*|*"generic resource"*) hint=$(gres_hint "$what") ;;
        *account*|*association*)
            hint="check --slurm_account (sacctmgr show associations user=\$USER lists yours)" ;;
        *partition*)
            hint="check --slurm_partition (sinfo lists the partitions)" ;;
        *qos*)
            hint="check --slurm_qos (sacctmgr show qos lists them)" ;;
        *"time limit"*)
            hint="lower --slurm_time to the partition's limit (sinfo -o '%P %l' shows it)" ;;
        *)
            hint="change what sbatch objects to" ;;
    esac
    if ((${#submitted[@]})); then
        scancel "${submitted[@]}" 2>/dev/null || true
        cancelled=" (cancelled the jobs already submitted: ${submitted[*]})"
    fi
    echo "SCRIPT: sbatch refused $what: $message. Hint: $hint; THEN$cancelled" >&2
    exit 1
}"""


def submit_functions(script: str, gres_hint: str, then: str) -> str:
    """Return the bash functions with which a generated script submits its SLURM jobs.

    ``submit WHAT [sbatch options] FILE [ARGS]`` appends the job ID to the array
    ``submitted``. When sbatch refuses a job, the jobs already submitted are cancelled and
    the script exits 1 with one line: sbatch's message, a hint in the user's terms (by the
    kind of refusal: gres, account, partition, QOS, time limit) and what to do next. It
    never reports as submitted a job that was not.

    Parameters
    ----------
    script : str
        The script's name, starting the message.
    gres_hint : str
        Body of the bash function ``gres_hint WHAT`` that prints the hint for a refused
        generic resource (GPUs).
    then : str
        What to do once the hint is followed (how to write the script again and rerun).

    Returns
    -------
    str
        Bash text defining ``submitted``, ``submit``, ``refused`` and ``gres_hint``.
    """
    body = _SUBMIT.replace("SCRIPT", script).replace("THEN", then.replace('"', '\\"'))
    head = "gres_hint() {  # gres_hint WHAT: the hint for a refused GPU request"
    return f"{head}\n{gres_hint}\n}}\n{body}"
