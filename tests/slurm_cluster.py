"""A real single-node SLURM cluster for the tests, started from Debian's packages.

:func:`slurm_cluster` is a session-scoped pytest fixture: it installs the packages if
they are missing (``apt-get``, as root), writes a ``slurm.conf`` in a temporary directory,
starts a private ``munged`` (its own socket, so it neither needs nor disturbs a system
one), ``slurmctld`` and ``slurmd`` on free ports, waits until the node is idle and yields
a :class:`SlurmCluster`. At teardown it cancels every job, waits for them to end and stops
every daemon it started, by PID.

Register it with ``from slurm_cluster import slurm_cluster_fixture`` in a test module or
``conftest.py`` (the tests directory is on ``sys.path`` under pytest's default import
mode); tests then ask for ``slurm_cluster``. Pass
:attr:`SlurmCluster.env` to the processes that run SLURM commands (``run.sh``): it holds
``SLURM_CONF``. Jobs inherit the submitting environment (``sbatch --export=ALL``).

Where the daemons cannot be had (not root, no ``apt-get``) the tests that need the
cluster are skipped with the reason; in CI (``CI`` set) that is a failure instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from needs import unavailable

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "munged")
PARTITION = "astro"
ACCOUNT = "astro-test"
MUNGE_DIR = Path("/run/munge")
MUNGE_KEY = Path("/etc/munge/munge.key")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class SlurmUnavailableError(RuntimeError):
    """SLURM's daemons are not installed and cannot be installed here."""


@dataclass
class SlurmCluster:
    """A running single-node SLURM cluster.

    Attributes
    ----------
    root : Path
        Directory holding ``slurm.conf``, the state, spool and log files.
    conf : Path
        The ``slurm.conf``.
    node : str
        The node's name (``hostname -s``).
    partition : str
        The only partition (the default).
    account : str
        An account name to submit with (no accounting database: any name is accepted).
    pids : list of int
        PIDs of the daemons started (munged, slurmctld, slurmd).
    munge_files : dict of str to Path
        The private munged's socket, PID, log and seed files (removed at teardown).
    """

    root: Path
    conf: Path
    node: str
    partition: str = PARTITION
    account: str = ACCOUNT
    pids: list[int] = field(default_factory=list)
    munge_files: dict[str, Path] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` as it is now plus ``SLURM_CONF``: for processes that use SLURM."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command (``squeue``, ``scancel``, ...) on this cluster."""
        return subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def job_state(self, job_id: str) -> str | None:
        """Return a job's state (``PENDING``, ``RUNNING``, ...), None once it left the queue."""
        result = self.command(
            "squeue", "--noheader", f"--jobs={job_id}", "--format=%T", check=False
        )
        return result.stdout.strip() or None

    def job_info(self, job_id: str) -> dict[str, str]:
        """Return ``scontrol show job`` as a mapping (``JobState``, ``Restarts``, ...)."""
        text = self.command("scontrol", "show", "job", "--oneliner", job_id).stdout
        pairs = (word.partition("=") for word in text.split())
        return {key: value for key, sep, value in pairs if sep}

    def wait_for_jobs(self, job_ids: Sequence[str], timeout: float) -> None:
        """Wait until every job in ``job_ids`` has left the queue.

        Raises
        ------
        TimeoutError
            With the queue and the controller's log tail, if they are still there.
        """
        deadline = time.monotonic() + timeout
        while any(self.job_state(j) for j in job_ids):
            if time.monotonic() > deadline:
                queue = self.command("squeue", check=False).stdout
                raise TimeoutError(f"jobs {list(job_ids)} still queued:\n{queue}{self.logs()}")
            time.sleep(0.2)

    def logs(self, lines: int = 30) -> str:
        """Return the last lines of every daemon log, for failure messages."""
        parts = []
        for path in sorted(self.root.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)


# --------------------------------------------------------------------------- packages


def ensure_installed() -> None:
    """Install SLURM and MUNGE with ``apt-get`` if any of their programs is missing.

    Raises
    ------
    SlurmUnavailableError
        If they are missing and cannot be installed (not root, no ``apt-get``, or the
        install failed).
    """
    if not _missing_binaries():
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise SlurmUnavailableError(
            f"SLURM is not installed ({', '.join(_missing_binaries())} missing) and apt-get "
            "cannot install it here (needs root and apt-get)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", *PACKAGES]
    if _run_quiet(install, env) != 0:  # no package lists yet on a fresh machine
        _run_quiet([apt, "update"], env)
        if _run_quiet(install, env) != 0:
            raise SlurmUnavailableError(f"{' '.join(install)} failed")
    if _missing_binaries():
        raise SlurmUnavailableError(
            f"still missing after apt-get: {', '.join(_missing_binaries())}"
        )


def _missing_binaries() -> list[str]:
    search = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [name for name in BINARIES if shutil.which(name, path=search) is None]


def _binary(name: str) -> str:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or name


def _run_quiet(argv: Sequence[str], env: dict[str, str]) -> int:
    return subprocess.run(argv, env=env, capture_output=True, check=False, timeout=600).returncode


# --------------------------------------------------------------------------- config


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_slurm_conf(
    root: Path, node: str, munge_socket: Path, ports: tuple[int, int], cpus: int
) -> str:
    """Return a minimal ``slurm.conf`` for one node named ``node`` on 127.0.0.1.

    Parameters
    ----------
    root : Path
        Where state, spool, PID and log files go.
    node : str
        The node and controller host name (``hostname -s``).
    munge_socket : Path
        The private munged's socket.
    ports : tuple of int
        ``(slurmctld, slurmd)`` ports.
    cpus : int
        CPUs of the node (``config_overrides``: may exceed the real count).
    """
    ctld_port, slurmd_port = ports
    settings = {
        "ClusterName": f"astro{uuid.uuid4().hex[:8]}",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "SlurmctldPort": ctld_port,
        "SlurmdPort": slurmd_port,
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        # cred_expire is also how long a requeued job waits before it may start again
        "AuthInfo": f"socket={munge_socket},cred_expire=5",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "SchedulerType": "sched/backfill",
        "MpiDefault": "none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "ReturnToService": 2,
        "SlurmdParameters": "config_overrides",
        "KillWait": 5,
        "MinJobAge": 600,
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool",
        "SlurmctldPidFile": root / "slurmctld.pid",
        "SlurmdPidFile": root / "slurmd.pid",
        "SlurmctldLogFile": root / "slurmctld.log",
        "SlurmdLogFile": root / "slurmd.log",
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines += [
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1024 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- daemons


def _ensure_munge_key(user: pwd.struct_passwd) -> None:
    """Create ``/etc/munge/munge.key`` (1 KiB of random bytes) if the package did not."""
    if MUNGE_KEY.is_file():
        return
    MUNGE_KEY.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(MUNGE_KEY.parent, user.pw_uid, user.pw_gid)
    MUNGE_KEY.write_bytes(os.urandom(1024))
    os.chown(MUNGE_KEY, user.pw_uid, user.pw_gid)
    MUNGE_KEY.chmod(0o400)


def _munge_paths(token: str) -> dict[str, Path]:
    base = MUNGE_DIR / f"astrocurate-{token}"
    return {
        name: base.with_name(f"{base.name}.{name}") for name in ("socket", "pid", "log", "seed")
    }


def _start_munged(token: str) -> tuple[subprocess.Popen[bytes], dict[str, Path]]:
    """Start a munged as the munge user on a private socket in ``/run/munge``."""
    user = pwd.getpwnam("munge")
    _ensure_munge_key(user)
    MUNGE_DIR.mkdir(mode=0o755, exist_ok=True)
    os.chown(MUNGE_DIR, user.pw_uid, user.pw_gid)
    paths = _munge_paths(token)
    argv = [_binary("munged"), "--foreground", f"--key-file={MUNGE_KEY}"]
    argv += [
        f"--{name}={path}"
        for name, path in (
            ("socket", paths["socket"]),
            ("pid-file", paths["pid"]),
            ("log-file", paths["log"]),
            ("seed-file", paths["seed"]),
        )
    ]
    process = subprocess.Popen(
        argv,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return process, paths


def _start_daemon(argv: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a SLURM daemon in the foreground (``-D``), its own session, output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    processes: Sequence[subprocess.Popen[bytes]],
    logs: Callable[[], str],
) -> None:
    """Poll ``predicate`` until true; fail early with logs if a daemon exits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited ({process.returncode}) {logs()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s {logs()}")
        time.sleep(0.2)


def _node_idle(cluster: SlurmCluster) -> bool:
    result = cluster.command(
        "sinfo", "--noheader", "--nodes", cluster.node, "--format=%T", check=False
    )
    return result.returncode == 0 and result.stdout.strip() == "idle"


def start_cluster(root: Path) -> tuple[SlurmCluster, list[subprocess.Popen[bytes]]]:
    """Start munged, slurmctld and slurmd with a config in ``root``.

    Returns
    -------
    cluster : SlurmCluster
        The running cluster (its node idle).
    processes : list of subprocess.Popen
        The daemons, in start order (stop them with :func:`stop_cluster`).
    """
    token = uuid.uuid4().hex[:10]
    node = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    munged, munge = _start_munged(token)
    processes.append(munged)
    conf = root / "slurm.conf"
    cpus = max(2, os.cpu_count() or 1)
    ports = (free_port(), free_port())
    conf.write_text(render_slurm_conf(root, node, munge["socket"], ports, cpus))
    cluster = SlurmCluster(root=root, conf=conf, node=node, munge_files=munge)
    env = cluster.env
    try:
        _wait_until(munge["socket"].exists, START_TIMEOUT, "munged socket", processes, cluster.logs)
        ctld = [_binary("slurmctld"), "-D", "-i", "-f", str(conf)]
        processes.append(_start_daemon(ctld, env, root / "slurmctld.out.log"))
        slurmd = [_binary("slurmd"), "-D", "-N", node, "-f", str(conf)]
        processes.append(_start_daemon(slurmd, env, root / "slurmd.out.log"))
        _wait_until(
            lambda: _node_idle(cluster), START_TIMEOUT, "node idle", processes, cluster.logs
        )
    except BaseException:
        stop_cluster(cluster, processes)
        raise
    cluster.pids = [p.pid for p in processes]
    return cluster, processes


def stop_cluster(cluster: SlurmCluster, processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Cancel every job, wait for them to end, stop the daemons (last started first) by PID."""
    if len(processes) > 1 and processes[1].poll() is None:  # slurmctld answers
        cluster.command("scancel", "--full", "--user=root", check=False)
        with contextlib.suppress(TimeoutError):
            _wait_until(
                lambda: not cluster.command("squeue", "--noheader", check=False).stdout.strip(),
                STOP_TIMEOUT,
                "jobs gone",
                [],
                cluster.logs,
            )
    for process in reversed(processes):
        _stop_process(process)
    for pid in leftover_processes(cluster.conf):  # job steps orphaned by slurmd
        _kill_pid(pid)
    for path in cluster.munge_files.values():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


def leftover_processes(conf: Path) -> list[int]:
    """PIDs of processes (other than this one) whose environment names ``conf``.

    The daemons and every job started on the cluster carry ``SLURM_CONF=<conf>``; after
    teardown none should be left.
    """
    needle = f"SLURM_CONF={conf}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def _kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


# --------------------------------------------------------------------------- fixture


def _unavailable(reason: str) -> None:
    """Skip with ``reason``; in CI fail instead (a skipped SLURM test would hide a gap)."""
    unavailable(f"no SLURM cluster: {reason}")


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """Fixture ``slurm_cluster``: a running single-node SLURM cluster for the session."""
    try:
        ensure_installed()
    except SlurmUnavailableError as exc:
        _unavailable(str(exc))
    cluster, processes = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        stop_cluster(cluster, processes)
