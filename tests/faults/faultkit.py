"""Helpers of the fault-injection suite: run a step's real command, fault it, check the store.

Two ways to interrupt a command, both from outside Python's control flow:

* :class:`At` (deterministic): the command kills itself at a file event, through
  ``hook/sitecustomize.py`` (the ``nth`` rename onto a path matching a pattern, before
  or after it). The same point is hit on every machine, whatever its speed.
* :class:`Watch` (external, like a scheduler): this process sends the signal once
  ``count`` more files match a glob under a directory than when the command started,
  after a seeded extra delay.

Every command runs in its own process group (killed whole afterwards), with its output
in files under ``logs`` (named in assertion messages).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HOOK_DIR = Path(__file__).resolve().parent / "hook"
PYTHON = sys.executable
#: Seed of the kill points (``ASTROCURATE_FAULT_SEED``; the suite's default 0).
SEED = int(os.environ.get("ASTROCURATE_FAULT_SEED", "0"))
#: ``full`` adds kill points to every chain (``ASTROCURATE_FAULTS=full``).
FULL = os.environ.get("ASTROCURATE_FAULTS", "").strip().lower() == "full"
#: Clustering of the sampling input and of the clustering test (tests/curation_pipeline.py
#: CONFIG, checkpointing after every k-means step so that kills land inside a level).
CLUSTER_CONFIG = {
    "n_clusters": [14, 4],
    "n_iters": [10, 10],
    "n_resampling_steps": [2, 1],
    "sample_size": [4, 2],
    "sampling_strategy": ["r", "r"],
    "checkpoint_period": 0,
    "ngpus_per_node": 0,
    "device": "cpu",
}

#: Seconds one command may take before the test fails (a hung resume).
COMMAND_TIMEOUT = 300


def rng(*key: int) -> np.random.Generator:
    """A generator for the kill points of one test, from :data:`SEED`."""
    return np.random.default_rng([SEED, *key])


@dataclass(frozen=True)
class At:
    """Signal the command from inside at its ``nth`` rename onto a path matching ``pattern``."""

    pattern: str
    nth: int = 1
    when: str = "after"
    signal: str = "SIGKILL"
    #: Fire in a worker process forked by the command (a pool worker), not in the command.
    in_worker: bool = False

    def describe(self) -> str:
        where = " in a worker" if self.in_worker else ""
        return f"{self.signal}{where} {self.when} rename #{self.nth} onto {self.pattern}"


@dataclass(frozen=True)
class Watch:
    """Signal the command from outside once ``count`` new paths match ``pattern`` under ``root``.

    New: beyond those that matched when the command started.
    """

    root: Path
    pattern: str
    count: int = 1
    delay: float = 0.0
    signal: str = "SIGKILL"

    def describe(self) -> str:
        return (
            f"{self.signal} {self.delay:.2f} s after {self.count} new {self.pattern} "
            f"under {self.root}"
        )


Fault = At | Watch


@dataclass
class Attempt:
    """One run of a command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    fault: Fault | None = None
    fired: bool = False
    log: Path | None = None

    @property
    def killed(self) -> bool:
        """Whether the fault stopped the command (it died of the signal or exited on it)."""
        return self.fired and self.returncode != 0

    def where(self) -> str:
        return f"{' '.join(self.argv)} (exit {self.returncode}; logs {self.log})"


@dataclass
class Runner:
    """Runs the commands of one test, numbering their logs."""

    env: Mapping[str, str]
    cwd: Path
    logs: Path
    attempts: list[Attempt] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str],
        fault: Fault | None = None,
        *,
        cwd: Path | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> Attempt:
        """Run ``argv`` to its end, or until ``fault`` stops it; kill its process group."""
        self.logs.mkdir(parents=True, exist_ok=True)
        n = len(self.attempts) + 1
        out_path, err_path = self.logs / f"{n:02d}.out", self.logs / f"{n:02d}.err"
        env = dict(self.env)
        env.pop("ASTROCURATE_FAULT_ARMED", None)
        env.pop("ASTROCURATE_FAULT_HOOK", None)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HOOK_DIR), str(ROOT / "src")]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        if isinstance(fault, At):
            env["ASTROCURATE_FAULT_HOOK"] = json.dumps(
                {"pattern": fault.pattern, "nth": fault.nth, "when": fault.when,
                 "signal": fault.signal, "in_worker": fault.in_worker}
            )  # fmt: skip
        started = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd or self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            watcher = _Watcher(process, fault) if isinstance(fault, Watch) else None
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                if watcher is not None:
                    watcher.stop()
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                if returncode is None:
                    process.wait()
        stderr = err_path.read_text(errors="replace")
        attempt = Attempt(
            argv=list(argv),
            returncode=process.returncode if returncode is not None else -999,
            stdout=out_path.read_text(errors="replace"),
            stderr=stderr,
            seconds=time.monotonic() - started,
            fault=fault,
            log=err_path,
        )
        if isinstance(fault, At):
            attempt.fired = "fault hook:" in stderr
        elif watcher is not None:
            attempt.fired = watcher.fired
        self.attempts.append(attempt)
        assert returncode is not None, f"timed out after {timeout} s: {attempt.where()}"
        return attempt

    def summary(self) -> str:
        """One line per attempt, for assertion messages."""
        return "\n".join(
            f"  {i}. exit {a.returncode} after {a.seconds:.1f} s, "
            f"{a.fault.describe() if a.fault else 'no fault'}"
            f"{' (fired)' if a.fired else ''}: {a.log}"
            for i, a in enumerate(self.attempts, start=1)
        )


class _Watcher:
    """Polls for the paths of a :class:`Watch` and signals the process."""

    def __init__(self, process: subprocess.Popen, watch: Watch) -> None:
        self.process, self.watch = process, watch
        self.fired = False
        self._target = self._matches() + watch.count
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _matches(self) -> int:
        return len(list(self.watch.root.glob(self.watch.pattern)))

    def _poll(self) -> None:
        while not self._done.is_set() and self.process.poll() is None:
            if self._matches() >= self._target:
                if self.watch.delay and self._done.wait(self.watch.delay):
                    return
                if self.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.process.pid, getattr(signal, self.watch.signal))
                        self.fired = True
                return
            self._done.wait(0.01)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


# --------------------------------------------------------------------------- the store


def runs_of(experiment: str, step: str | None = None) -> list[Any]:
    """Every run of an experiment (any status), newest first, as ``RunRecord``."""
    from astrocurate.tracking import RunRecord, client

    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = mlflow_client.search_runs(
        [found.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"]
    )
    records = [RunRecord.from_mlflow(r) for r in runs]
    return [r for r in records if step is None or r.step == step]


def verify_exit_status(run_id: str, *, strict: bool = False) -> tuple[int, str]:
    """Exit status and output of ``astrocurate verify [--strict] RUN_ID`` (in-process)."""
    import io
    from contextlib import redirect_stdout

    from astrocurate.cli import main

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["verify", *(["--strict"] if strict else []), run_id])
    return code, buffer.getvalue()


def check_finished_runs(experiment: str) -> list[Any]:
    """(b): every FINISHED run of the experiment has its outputs, and verify passes.

    Returns the FINISHED runs.
    """
    finished = [r for r in runs_of(experiment) if r.finished]
    for record in finished:
        assert record.output_dir is not None and record.output_dir.is_dir(), (
            f"FINISHED {record.step} run {record.run_id} has no output directory "
            f"({record.output_dir})"
        )
        code, report = verify_exit_status(record.run_id)
        assert code == 0, f"verify {record.run_id} ({record.step}) exit {code}:\n{report}"
    return finished


# --------------------------------------------------------------------------- outputs

#: Never part of a result: the run lock, temporaries of interrupted writes.
ALWAYS_IGNORED = (".astrocurate.lock", ".tmp*", "*/.tmp*")


def result_files(
    directory: Path, exclude: Iterable[str] = (), include: Iterable[str] | None = None
) -> dict[str, Path]:
    """Files under ``directory`` by relative path, without ignored or excluded patterns."""
    patterns = (*ALWAYS_IGNORED, *exclude)
    files = {}
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(directory).as_posix()
        if any(fnmatch.fnmatch(relative, p) for p in patterns):
            continue
        if include is not None and not any(fnmatch.fnmatch(relative, p) for p in include):
            continue
        files[relative] = path
    return files


def assert_same_outputs(
    reference: Path,
    candidate: Path,
    *,
    exclude: Iterable[str] = (),
    include: Iterable[str] | None = None,
    normalise: Mapping[str, Callable[[bytes], bytes]] | None = None,
    context: str = "",
) -> int:
    """(a): the same result files, bit for bit (after ``normalise`` per pattern).

    Returns the number of files compared.
    """
    exclude, include = tuple(exclude), None if include is None else tuple(include)
    ref = result_files(reference, exclude, include)
    got = result_files(candidate, exclude, include)
    assert ref, f"no result files under the reference {reference}"
    assert sorted(got) == sorted(ref), (
        f"result files differ from the uninterrupted run{context}:\n"
        f"  missing: {sorted(set(ref) - set(got))}\n  extra: {sorted(set(got) - set(ref))}"
    )
    different = []
    for relative, path in ref.items():
        a, b = path.read_bytes(), got[relative].read_bytes()
        for pattern, fix in (normalise or {}).items():
            if fnmatch.fnmatch(relative, pattern):
                a, b = fix(a), fix(b)
        if a != b:
            different.append(relative)
    assert not different, (
        f"{len(different)} of {len(ref)} result files differ from the uninterrupted "
        f"run{context}: {different[:10]}\n  reference {reference}\n  resumed   {candidate}"
    )
    return len(ref)


def drop_json_keys(*keys: str) -> Callable[[bytes], bytes]:
    """A normaliser removing top-level keys of a JSON file (timings)."""

    def fix(data: bytes) -> bytes:
        obj = json.loads(data)
        for key in keys:
            obj.pop(key, None)
        return json.dumps(obj, sort_keys=True).encode()

    return fix


def said_resumed_or_reused(text: str) -> bool:
    """(c): the command said it continued an interrupted run or reused a finished one."""
    lowered = text.lower()
    return any(
        word in lowered for word in ("resuming", "resumed", "reusing", "reused", "already finished")
    )


def rerun_to_the_end(
    runner: Runner, argv: Sequence[str], experiment: str, step: str
) -> tuple[Attempt, Any]:
    """Rerun ``argv`` without a fault; return the attempt and the one run of ``step`` it left.

    The rerun must succeed, say that it continued (or reused) a run, and leave exactly one
    FINISHED ``step`` run in ``experiment``, with every finished run intact.
    """
    final = runner.run(argv)
    assert final.returncode == 0, final.where()
    assert said_resumed_or_reused(final.stderr), final.where()
    runs = runs_of(experiment, step)
    assert [r.status for r in runs] == ["FINISHED"], runner.summary()
    check_finished_runs(experiment)
    return final, runs[0]


# --------------------------------------------------------------------------- a full disk

#: Size of the small disk (a tmpfs) of the full-disk tests.
DISK_SIZE = "8m"


class SmallDisk:
    """A mounted tmpfs; :meth:`fill` leaves ``free`` bytes (a ballast file takes the rest)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ballast = path / "ballast"

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, free: int) -> None:
        self.ballast.unlink(missing_ok=True)
        size = max(0, self.free_bytes() - free)
        with open(self.ballast, "wb") as handle:
            handle.write(b"\0" * size)

    def empty(self) -> None:
        self.ballast.unlink(missing_ok=True)


def mount_small_disk(path: Path) -> str | None:
    """Mount a tmpfs of :data:`DISK_SIZE` on ``path``; the reason it failed, or None."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return f"cannot mount a tmpfs here (root needed): {result.stderr.strip()}"
    return None


def unmount_small_disk(path: Path) -> None:
    """Unmount the tmpfs on ``path`` (lazily if it is busy)."""
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def assert_one_line_disk_error(attempt: Attempt) -> None:
    """Exit 1 and one clear line on stderr that says the disk is full."""
    assert attempt.returncode == 1, attempt.where()
    assert "Traceback" not in attempt.stderr, attempt.where()
    errors = [line for line in attempt.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "No space left on device" in errors[0], attempt.where()
