"""What every generated script shares: the tracking store it logs to and sbatch's paths.

Every script astrocurate writes (``run.sh`` and the level jobs of a clustering, the cutouts
and features job arrays and the features finishing job) selects its tracking store through
:func:`script_environment`, the one place where a tracking URI is written into a file: a
URI holding a password or token is never written (:func:`tracking_environment`). Log file
patterns given to sbatch go through :func:`sbatch_path_pattern`; the ``--slurm_*`` flags of
every step are one :class:`SlurmOptions`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from astrocurate.errors import InvalidArgumentError
from astrocurate.tracking import experiment_name, redact_uri, tracking_uri

#: A SLURM account, partition or QOS name (fullmatch: no newline, nothing to quote).
SLURM_NAME = re.compile(r"[A-Za-z0-9_.+\-]+")
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


# =========================================================================== SLURM


@dataclass(frozen=True)
class SlurmOptions:
    """SLURM settings of every job of a step (its ``--slurm_*`` flags).

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
            if value is not None and not SLURM_NAME.fullmatch(value):
                raise InvalidArgumentError(
                    f"--slurm_{name}={value!r}: expected a SLURM name (letters, digits, _ . + -)"
                )
        if self.time is not None and (
            not _SLURM_TIME.fullmatch(self.time) or time_limit_seconds(self.time) is None
        ):
            raise InvalidArgumentError(
                f"--slurm_time={self.time!r}: expected a SLURM time limit such as 01:00:00, "
                "90 (minutes), 2-00:00:00"
            )
        return self


def time_limit_seconds(text: str) -> int | None:
    """Return the seconds of a SLURM time limit, or None if it is malformed."""
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


def script_environment(script: str) -> list[str]:
    """Bash lines selecting this process's tracking store and experiment in a script.

    Parameters
    ----------
    script : str
        The script's name, for its error message when a credential must come from the
        environment.

    Returns
    -------
    list of str
        :func:`tracking_environment` of the current store (made absolute) and experiment.
    """
    return tracking_environment(absolute_tracking_uri(tracking_uri()), experiment_name(), script)


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


def parse_shard(text: str, argument: str = "--shard") -> tuple[int, int]:
    """Parse ``"K/N"`` into ``(K, N)`` with ``0 <= K < N``.

    Raises
    ------
    InvalidArgumentError
        Naming ``argument`` and the expected form.
    """
    parts = str(text).split("/")
    try:
        k, n = (int(p) for p in parts)
    except ValueError:
        k, n = -1, 0
    if len(parts) != 2 or not 0 <= k < n:
        raise InvalidArgumentError(
            f"{argument}: expected K/N with 0 <= K < N (e.g. $SLURM_ARRAY_TASK_ID/8), got {text!r}"
        )
    return k, n
