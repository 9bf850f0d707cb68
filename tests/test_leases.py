"""The lease that serialises feature shards holds where ``flock`` does not (several nodes).

Two processes whose ``fcntl.flock`` does nothing stand for two nodes of a Lustre mount with
``localflock`` (each node's flock sees only its own holders): they must still never be
inside the run lock at once. The other tests take over leases whose owner died, on this
host or (as the file says) on another, and keep a live owner's lease.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from astrocurate.io.leases import FileLease

#: Enter feature_shards.run_lock N times with flock disabled; log each stay in the lock.
TWO_NODES = """\
import fcntl, os, sys, time
fcntl.flock = lambda *args, **kwargs: None  # node-local flock: blind to the other process
from astrocurate.stages.feature_extraction.shards import run_lock
root, journal, go, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
while not os.path.exists(go):
    time.sleep(0.005)
for _ in range(n):
    with run_lock(root, "key") as held:
        assert held
        with open(journal, "a") as f:
            f.write(f"{os.getpid()} in\\n")
        time.sleep(0.02)
        with open(journal, "a") as f:
            f.write(f"{os.getpid()} out\\n")
"""


def test_two_processes_without_a_shared_flock_never_hold_the_run_lock_at_once(tmp_path):
    journal, go = tmp_path / "journal.txt", tmp_path / "go"
    argv = [sys.executable, "-c", TWO_NODES, str(tmp_path), str(journal), str(go), "12"]
    processes = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    lines = [line.split() for line in journal.read_text().splitlines()]
    assert len(lines) == 2 * 2 * 12
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter[1] == "in" and leave == [enter[0], "out"], lines  # never interleaved
    assert not list((tmp_path / "feature_extraction").glob(".lease-*"))  # released


def test_a_lease_whose_owner_was_killed_is_taken_over_at_once(tmp_path):
    path = tmp_path / "lease"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "60"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert path.is_file()  # left behind by the kill
    started = time.monotonic()
    lease = FileLease(path)
    assert lease.acquire(timeout=10)  # dead PID on this host: no stale_after wait (60 s)
    assert time.monotonic() - started < 10
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lease.release()
    assert not path.exists()


def test_a_silent_lease_of_another_node_is_taken_over_after_stale_after(tmp_path):
    path = tmp_path / "lease"
    path.write_text(json.dumps({"host": "another-node", "pid": 1, "token": "theirs"}))
    started = time.monotonic()
    lease = FileLease(path, stale_after=0.5, poll=0.02)
    assert lease.acquire(timeout=10)
    assert time.monotonic() - started >= 0.5
    lease.release()


def test_a_live_owner_s_heartbeat_keeps_its_lease(tmp_path):
    path = tmp_path / "lease"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "4", "0.05"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        waiter = FileLease(path, stale_after=0.5, poll=0.02)
        started = time.monotonic()
        assert not waiter.acquire(timeout=1.5)  # three stale periods, each with heartbeats
        assert time.monotonic() - started >= 1.5
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_an_owner_that_stalled_does_not_remove_its_successor_s_lease(tmp_path):
    path = tmp_path / "lease"
    first = FileLease(path, heartbeat=3600)  # stalls: no refresh in this test
    assert first.acquire(timeout=1)
    second = FileLease(path, stale_after=0.3, poll=0.02)
    assert second.acquire(timeout=10)  # took the silent lease over
    first.release()
    assert json.loads(path.read_text())["token"] == second._token
    second.release()
    assert not path.exists()


#: Take a lease on argv[1], say so, hold it argv[2] seconds (heartbeat argv[3]).
HOLD = """\
import sys, time
from astrocurate.io.leases import FileLease
heartbeat = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
lease = FileLease(sys.argv[1], heartbeat=heartbeat)
assert lease.acquire(timeout=10)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lease.release()
"""
