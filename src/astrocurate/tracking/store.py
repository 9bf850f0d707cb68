"""The tracking store: its URI, the process's MLflow client, the experiment, the tag names.

The store is ``MLFLOW_TRACKING_URI`` when set, otherwise the embedded
``sqlite:///mlflow.db`` of the current directory (what ``mlflow ui`` opens when
started there). The path is made absolute so that a step started from another
directory (``run.sh`` in a clustering directory) writes to the same store. One client
per process and tracking URI (:func:`client`): MLflow's, or on an existing local sqlite
store of a known schema a :class:`~astrocurate.tracking.direct_client.DirectClient`, which
writes it without importing MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrocurate import steps

#: Run names of the pipeline steps, in pipeline order (the guide's names), then the optional
#: steps (``source_finding``).
STEP_NAMES: tuple[str, ...] = steps.ALL_STEPS

DEFAULT_EXPERIMENT = "astrocurate"
TAG_STEP = "astrocurate.step"
TAG_OUTPUT_DIR = "astrocurate.output_dir"
TAG_INPUTS = "astrocurate.input_run_ids"
TAG_RUN_KEY = "astrocurate.run_key"
TAG_CONTENT_HASH = "astrocurate.content_hash"
TAG_VERSION = "astrocurate.version"
TAG_HOST = "astrocurate.host"
TAG_PID = "astrocurate.pid"
TAG_ERROR = "astrocurate.error"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
#: "true" when the run's code had tracked changes not in that commit.
TAG_GIT_DIRTY = "astrocurate.git_dirty"
TAG_SOURCE = "mlflow.source.name"
TAG_USER = "mlflow.user"
TAG_NOTE = "mlflow.note.content"

LOCK_NAME = ".astrocurate.lock"
#: Set to ``0`` to read and write runs through MLflow even on a local sqlite store.
FAST_LOOKUP_ENV = "ASTROCURATE_FAST_LOOKUP"
#: MLflow status of a completed run.
FINISHED = "FINISHED"
#: Tag of a run prepared by one command and completed by a script in its output directory
#: (clustering: step 4a writes ``run.sh``, step 4b runs it). Until it finishes, such a run
#: is found like a finished one: running or resuming it means finding its directory first.
TAG_RUN_SCRIPT = "astrocurate.run_script"


def tracking_uri() -> str:
    """Return the tracking URI every step uses.

    Returns
    -------
    str
        ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


_URI_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#]*)@")
_URI_SECRET_QUERY = re.compile(
    r"(?i)(?P<name>[?&;][^=&;#]*(?:pass|pwd|secret|token|key|auth|credential)[^=&;#]*=)[^&;#]*"
)


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password or token replaced by ``***``.

    ``postgresql://user:pw@host/db`` gives ``postgresql://user:***@host/db``,
    ``https://TOKEN@host`` gives ``https://***@host``, and query values whose name
    looks secret (``?password=...``, ``&token=...``) become ``***``. Used wherever a
    tracking URI is printed, logged or written into a file.
    """
    match = _URI_USERINFO.match(uri)
    if match:
        user, colon, _ = match["userinfo"].partition(":")
        masked = f"{user}:***" if colon else "***"
        uri = f"{match['scheme']}{masked}@{uri[match.end() :]}"
    return _URI_SECRET_QUERY.sub(lambda m: f"{m['name']}***", uri)


def experiment_name() -> str:
    """Return the MLflow experiment name (``MLFLOW_EXPERIMENT_NAME`` or ``astrocurate``)."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT


@dataclass(frozen=True)
class StoreAddress:
    """Where a later process finds this one's runs: tracking URI and experiment name."""

    uri: str
    experiment: str

    @classmethod
    def current(cls) -> StoreAddress:
        """Return the store and experiment this process uses."""
        return cls(tracking_uri(), experiment_name())

    @property
    def redacted(self) -> str:
        """Return the URI without its password or token (:func:`redact_uri`)."""
        return redact_uri(self.uri)


#: One ``MlflowClient`` per process and tracking URI (see :func:`client`).
_CLIENTS: dict[tuple[int, str], Any] = {}
#: One direct client per process and tracking URI; None where the schema is not known.
_DIRECT: dict[tuple[int, str], Any] = {}
#: Experiment IDs already looked up, by process, tracking URI and experiment name.
_EXPERIMENTS: dict[tuple[int, str, str], str] = {}
_CACHE_LOCK = threading.Lock()


def local_sqlite_store() -> Path | None:
    """Return the sqlite file that runs may be read and written in without MLflow, or None.

    Importing MLflow costs seconds, so an existing local ``sqlite:///`` store is read
    (:mod:`~astrocurate.tracking.direct`) and written
    (:mod:`~astrocurate.tracking.direct_client`) with :mod:`sqlite3`. Anything else goes
    through MLflow: a server, a URI with options, a store file that does not exist yet
    (MLflow creates it), MLflow workspaces, and ``ASTROCURATE_FAST_LOOKUP=0``.
    """
    if os.environ.get(FAST_LOOKUP_ENV, "").strip().lower() in ("0", "false", "no"):
        return None
    if os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() not in ("", "0", "false"):
        return None
    path = sqlite_file(tracking_uri())
    return path if path is not None and path.is_file() else None


def client() -> Any:
    """Return the process's client on :func:`tracking_uri`.

    On an existing local sqlite store of a known schema (:func:`local_sqlite_store`) it
    is a :class:`~astrocurate.tracking.direct_client.DirectClient`: the ``MlflowClient``
    methods the tracking layer uses, without importing MLflow; its other methods and
    whatever it cannot write as MLflow would go through MLflow. Otherwise it is an
    ``MlflowClient``; MLflow is imported on the first call only (it takes seconds). A
    client is created once per process and tracking URI, so a change of
    ``MLFLOW_TRACKING_URI`` (tests) gets a client on the new store.

    Returns
    -------
    DirectClient or mlflow.tracking.MlflowClient
    """
    uri = tracking_uri()
    path = local_sqlite_store()
    if path is not None:
        key = (os.getpid(), uri)
        if key not in _DIRECT:
            from astrocurate.tracking.direct_client import DirectClient

            _DIRECT[key] = DirectClient.open(path, uri, lambda: mlflow_client(uri))
        if _DIRECT[key] is not None:
            return _DIRECT[key]
    return mlflow_client(uri)


def mlflow_client(uri: str) -> Any:
    """Return the process's ``MlflowClient`` on ``uri`` (MLflow creates or migrates a store)."""
    key = (os.getpid(), uri)
    cached = _CLIENTS.get(key)
    if cached is None:
        from mlflow.tracking import MlflowClient

        with _CACHE_LOCK:
            cached = _CLIENTS.get(key)
            if cached is None:
                with store_init_lock(key[1]) as local:
                    cached = MlflowClient(tracking_uri=key[1])
                    if local:  # make MLflow create or migrate the store under the lock
                        cached.search_experiments(max_results=1)
                _CLIENTS[key] = cached
    return cached


def sqlite_file(uri: str) -> Path | None:
    """Return the file of a plain local ``sqlite:///`` store URI, or None for other stores."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or any(c in uri for c in "?#%"):
        return None
    return Path(uri[len(prefix) :])


@contextlib.contextmanager
def store_init_lock(uri: str) -> Iterator[bool]:
    """Hold a lock beside a local sqlite store while MLflow opens (creates, migrates) it.

    Processes that open a new store at once, such as the tasks of a SLURM job array,
    would otherwise all run MLflow's schema migrations, and all but one fail
    (``duplicate column``). Other stores need no lock. Yields whether the store is local.
    """
    path = sqlite_file(uri)
    if path is None:
        yield False
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def experiment_id(mlflow_client: Any, create: bool = True) -> str | None:
    """Return the experiment's ID, creating it when asked (safe against a concurrent create).

    Parameters
    ----------
    mlflow_client : DirectClient or mlflow.tracking.MlflowClient
        Client on the tracking store (:func:`client`).
    create : bool
        Create the experiment (:func:`experiment_name`) when it does not exist.

    Returns
    -------
    str or None
        The ID; None when the experiment does not exist and ``create`` is false.
        An ID once found is remembered for the process, store and name.
    """
    name = experiment_name()
    uri = getattr(mlflow_client, "tracking_uri", None)
    key = (os.getpid(), uri, name) if isinstance(uri, str) else None
    if key is not None and key in _EXPERIMENTS:
        return _EXPERIMENTS[key]
    found = _experiment_id(mlflow_client, name, create)
    if found is not None and key is not None:
        _EXPERIMENTS[key] = found
    return found


def _experiment_id(mlflow_client: Any, name: str, create: bool) -> str | None:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    try:
        return mlflow_client.create_experiment(name)
    except Exception:  # another process created it between our two calls
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
