"""Cheap checks of a finished run's outputs against what it recorded.

:func:`quick_check_outputs` checks sizes and sampled blocks: :func:`require_run` runs it
on every input run, :func:`check_reusable` before a rerun reuses a finished run.
``astrocurate verify`` (:mod:`astrocurate.tracking.lookup`) hashes everything instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from astrocurate.errors import InvalidRunError
from astrocurate.tracking import direct
from astrocurate.tracking.fingerprints import default_hash_workers, is_volatile, sample_digest
from astrocurate.tracking.records import RunRecord
from astrocurate.tracking.store import client

log = logging.getLogger(__name__)

#: Set to 1 to skip the quick check of an input run's outputs in :func:`require_run`.
SKIP_INPUT_CHECK_ENV = "ASTROCURATE_SKIP_INPUT_CHECK"
#: Most bytes the quick check of an input run reads (files past it are size-checked only).
QUICK_CHECK_BYTES = 64 << 20


def recorded_listing(run_id: str) -> dict[str, dict[str, Any]] | None:
    """Return the per-file listing a run recorded (artifact ``outputs.json``), or None.

    A local artifact store is read in place; a remote one (``mlflow server``) is
    downloaded without MLflow's progress bar.
    """
    path = direct.local_store()
    if path is not None:
        try:
            found = direct.read_run(path, run_id)
        except direct.NoDirectReadError as exc:
            log.debug("reading run %s through MLflow: %s", run_id, exc)
        else:
            local = _local_path(found[1]) if found is not None else None
            if local is not None:
                try:
                    return json.loads((local / "outputs.json").read_text())
                except (OSError, ValueError) as exc:
                    log.debug("run %s: no readable outputs.json: %s", run_id, exc)
                    return None
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client = client()
        local = _local_path(mlflow_client.get_run(run_id).info.artifact_uri or "")
        if local is not None:
            return json.loads((local / "outputs.json").read_text())
        with tempfile.TemporaryDirectory() as tmp, _no_artifact_progress_bar():
            path = mlflow_client.download_artifacts(run_id, "outputs.json", tmp)
            return json.loads(Path(path).read_text())
    except (MlflowException, OSError, ValueError) as exc:
        log.debug("run %s: no readable outputs.json: %s", run_id, exc)
        return None


def _local_path(uri: str) -> Path | None:
    """Return the directory of a ``file:`` (or plain path) URI; None for other schemes."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(uri) if uri and not parsed.scheme else None


@contextlib.contextmanager
def _no_artifact_progress_bar() -> Iterator[None]:
    """Keep MLflow from drawing a download progress bar on stderr."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _within_budget(sampled: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Return sampled files in a random order, up to :data:`QUICK_CHECK_BYTES` (at least one)."""
    random.shuffle(sampled)
    chosen, budget = [], QUICK_CHECK_BYTES
    for relative, sample in sampled:
        cost = len(sample["offsets"]) * sample["block"]
        if cost > budget and chosen:
            continue
        chosen.append((relative, sample))
        budget -= cost
    return chosen


def check_reusable(record: RunRecord) -> None:
    """Check a finished run cheaply before a rerun of its step reuses it.

    The outputs must still be those the run recorded (:func:`quick_check_outputs`:
    sizes of every file, sampled blocks). Skipped when ``ASTROCURATE_SKIP_INPUT_CHECK=1``.

    Raises
    ------
    InvalidRunError
        In one line naming the run and the first file missing or changed, and what to
        do: ``--force`` recomputes into a new run, ``astrocurate verify`` tells more.
    """
    if os.environ.get(SKIP_INPUT_CHECK_ENV, "").strip() in ("1", "true", "yes"):
        return
    quick_check_outputs(record, reuse=True)


def quick_check_outputs(record: RunRecord, argument: str = "run ID", *, reuse: bool = False) -> int:
    """Check a finished run's outputs cheaply against what it recorded.

    Every recorded file must exist with its recorded size; the sampled blocks of the
    files are hashed again (in a random order, up to :data:`QUICK_CHECK_BYTES` read,
    in parallel). Files under :data:`VOLATILE_DIRS` are skipped. A run that recorded
    no listing, or no sampled blocks (recorded before they existed), is checked as far
    as its record allows.

    Parameters
    ----------
    record : RunRecord
        A finished run whose output directory exists.
    argument : str
        The command-line argument, named in messages.
    reuse : bool
        The run is about to be reused by a rerun of its own step (the message says so).

    Returns
    -------
    int
        The number of files whose sampled blocks were checked.

    Raises
    ------
    InvalidRunError
        Naming the first file that is missing or differs.
    """
    out = record.output_dir
    listing = recorded_listing(record.run_id)
    if out is None or listing is None:
        log.warning(
            "%s: run %s recorded no outputs.json; its outputs are not checked",
            argument,
            record.run_id,
        )
        return 0

    def fail(relative: str, what: str) -> InvalidRunError:
        if reuse:
            return InvalidRunError(
                f"cannot reuse finished {record.step} run {record.run_id} (same inputs and "
                f"parameters): its output file {out / relative} {what} since it finished; "
                f"rerun with --force to recompute into a new run, or run "
                f"`astrocurate verify {record.run_id}` for a full report"
            )
        return InvalidRunError(
            f"{argument}: output file {out / relative} of {record.step} run {record.run_id} "
            f"{what} since the run finished; rerun the {record.step} step with --force, or "
            f"run `astrocurate verify {record.run_id}` for a full report"
        )

    sampled = []
    for relative, entry in listing.items():
        if is_volatile(relative):
            continue
        try:
            size = (out / relative).stat().st_size
        except FileNotFoundError:
            raise fail(relative, "was deleted") from None
        if size != entry["size"]:
            raise fail(relative, f"changed size ({size} bytes, recorded {entry['size']})")
        if "sample" in entry:
            sampled.append((relative, entry["sample"]))
    chosen = _within_budget(sampled)

    def changed(item: tuple[str, dict[str, Any]]) -> bool:
        relative, sample = item
        return sample_digest(out / relative, sample["offsets"], sample["block"]) != sample["sha256"]

    with ThreadPoolExecutor(max_workers=default_hash_workers()) as pool:
        for item, bad in zip(chosen, pool.map(changed, chosen), strict=True):
            if bad:
                raise fail(item[0], "changed (its sampled blocks differ)")
    return len(chosen)


# --------------------------------------------------------------------------- recording
