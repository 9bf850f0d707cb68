"""Tests of astrocurate.launch.workers: the steps' one process pool."""

from __future__ import annotations

import os

import pytest

from astrocurate.errors import AstrocurateError, WorkerDiedError
from astrocurate.launch.workers import map_in_workers


def test_results_come_back_in_order_from_worker_processes():
    got: list[int] = []
    map_in_workers(
        abs, [-3, 1, -2, 5, -8], workers=2, preload=[], consume=got.extend, what="in a test"
    )
    assert got == [3, 1, 2, 5, 8]


def test_one_worker_or_one_task_runs_in_this_process():
    pids: list[int] = []
    for workers, tasks in ((1, [0, 1, 2]), (4, [0])):
        map_in_workers(
            _own_pid, tasks, workers=workers, preload=[], consume=pids.extend, what="in a test"
        )
    assert pids == [os.getpid()] * 4


def _own_pid(_task: int) -> int:
    return os.getpid()


def test_a_worker_that_dies_stops_the_map_in_one_line():
    with pytest.raises(WorkerDiedError) as info:
        map_in_workers(
            os._exit, [9, 9], workers=2, preload=[], consume=list, what="cutting the mosaics"
        )
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, AstrocurateError)
    assert message.startswith("a worker process cutting the mosaics ended abruptly")
    assert "rerun the same command to resume" in message
