"""Reading runs: by ID (:func:`get_run`, :func:`require_run`) or by filters (:func:`find_runs`).

A local sqlite store is read directly (:mod:`astrocurate.tracking.direct`), any other
store, or one that cannot be read directly, through MLflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from astrocurate.errors import InvalidRunError, RunNotFoundError
from astrocurate.tracking import checks, direct
from astrocurate.tracking.records import RunRecord, params_match, parse_run_id
from astrocurate.tracking.store import (
    FINISHED,
    TAG_RUN_KEY,
    client,
    experiment_id,
    redact_uri,
    tracking_uri,
)

log = logging.getLogger(__name__)


def get_run(run_id: str, argument: str = "run ID") -> RunRecord:
    """Return the record of one run.

    Raises
    ------
    RunNotFoundError
        If ``run_id`` is malformed or names no run in the tracking store.
    """
    run_id = parse_run_id(run_id, argument)
    path = direct.local_store()
    if path is not None:
        try:
            found = direct.read_run(path, run_id)
        except direct.NoDirectReadError as exc:
            log.debug("reading run %s through MLflow: %s", run_id, exc)
        else:
            if found is None:
                store = redact_uri(tracking_uri())
                raise RunNotFoundError(f"{argument}: no run {run_id} in the tracking store {store}")
            return found[0]
    from mlflow.exceptions import MlflowException

    try:
        run = client().get_run(run_id)
    except MlflowException as exc:
        raise RunNotFoundError(
            f"{argument}: no run {run_id} in the tracking store {redact_uri(tracking_uri())}"
        ) from exc
    return RunRecord.from_mlflow(run)


def require_run(run_id: str, step: str, argument: str = "run ID") -> RunRecord:
    """Return a finished run of ``step`` whose output directory exists.

    Parameters
    ----------
    run_id : str
        The run ID given by the user.
    step : str
        The step the run must come from, e.g. ``"cutting_out"``.
    argument : str
        The command-line argument, named in messages.

    Raises
    ------
    RunNotFoundError
        If there is no such run.
    InvalidRunError
        If it is from another step, did not finish, or its outputs are gone or changed
        (sizes and sampled blocks, :func:`quick_check_outputs`; skipped when
        ``ASTROCURATE_SKIP_INPUT_CHECK=1``).
    """
    record = get_run(run_id, argument)
    if record.step != step:
        raise InvalidRunError(
            f"{argument}: run {record.run_id} is a {record.step!r} run, expected a {step!r} run"
        )
    if not record.finished:
        raise InvalidRunError(
            f"{argument}: {step} run {record.run_id} is {record.status}, not FINISHED; "
            f"rerun the {step} step (the same command resumes it) and wait for it to finish"
        )
    out = record.output_dir
    if out is None or not out.is_dir():
        raise InvalidRunError(
            f"{argument}: output directory {out} of {step} run {record.run_id} is missing "
            "(moved or deleted?); restore it or rerun that step"
        )
    if os.environ.get(checks.SKIP_INPUT_CHECK_ENV, "").strip() not in ("1", "true", "yes"):
        checks.quick_check_outputs(record, argument)
    return record


def find_runs(
    step: str | None = None,
    *,
    params: Mapping[str, str] | None = None,
    input_run_ids: Iterable[str] | None = None,
    run_key: str | None = None,
    include_unfinished: bool = False,
) -> list[RunRecord]:
    """Return matching runs, most recent first.

    Parameters
    ----------
    step : str, optional
        Run name to match.
    params : mapping, optional
        Parameter filters; values match as text or as equal numbers (``0.5 == .5``).
    input_run_ids : iterable of str, optional
        Match runs whose set of input runs is exactly this set (order-insensitive).
    run_key : str, optional
        Match runs with this reuse key (same step, inputs and parameters).
    include_unfinished : bool
        Also return runs that are RUNNING, FAILED or KILLED.

    Returns
    -------
    list of RunRecord

    Notes
    -----
    A local sqlite store is read directly, without importing MLflow
    (:mod:`astrocurate.tracking.direct`); other stores through MLflow's ``search_runs``.
    """
    records = search_records(step, run_key, include_unfinished)
    wanted_inputs = set(input_run_ids) if input_run_ids is not None else None
    return [
        r
        for r in records
        if params_match(r.params, params or {})
        and (wanted_inputs is None or set(r.input_run_ids) == wanted_inputs)
    ]


def search_records(
    step: str | None,
    run_key: str | None,
    include_unfinished: bool,
    mlflow_client: Any = None,
) -> list[RunRecord]:
    """Return the runs of the experiment matching the filters, newest first.

    Read directly from a local sqlite store unless ``mlflow_client`` is given.
    """
    path = direct.local_store() if mlflow_client is None else None
    if path is not None:
        try:
            return direct.search_runs(path, step, run_key, include_unfinished)
        except direct.NoDirectReadError as exc:
            log.debug("searching runs through MLflow: %s", exc)
    mlflow_client = mlflow_client if mlflow_client is not None else client()
    experiment = experiment_id(mlflow_client, create=False)
    if experiment is None:
        return []
    clauses = []
    if step:
        clauses.append(f"attributes.run_name = '{step}'")
    if run_key:
        clauses.append(f"tags.`{TAG_RUN_KEY}` = '{run_key}'")
    if not include_unfinished:
        clauses.append(f"attributes.status = '{FINISHED}'")
    runs = _search_all(mlflow_client, experiment, " and ".join(clauses))
    return [RunRecord.from_mlflow(run) for run in runs]


def _search_all(mlflow_client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Return every run matching the filter, newest first (follows page tokens)."""
    runs: list[Any] = []
    token = None
    while True:
        page = mlflow_client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            max_results=5000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs
