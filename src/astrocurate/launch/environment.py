"""The tracking store and experiment a generated script logs to.

:func:`script_environment` (or :func:`tracking_environment` for a stored URI) is the one
place where a tracking URI is written into a file: a URI holding a password or token is
never written, the script then takes it from the environment it runs in.
"""

from __future__ import annotations

import shlex
from pathlib import Path


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
    from astrocurate.tracking import redact_uri  # here: the command line imports launch

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
    from astrocurate.tracking import experiment_name, tracking_uri

    return tracking_environment(absolute_tracking_uri(tracking_uri()), experiment_name(), script)
