"""Find the run a user means: the logic behind ``scripts/find_run.py``.

``find_run`` answers with the most recent matching run and explains a miss in
one line: which filters were used, how many runs carry that name, and what
values the filtered parameters take among them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

from astrocurate.errors import InvalidRunError, RunNotFoundError
from astrocurate.tracking import STEP_NAMES, RunRecord, find_runs, params_match, parse_run_id

#: Tag of a run prepared by one command and completed by a script in its output directory
#: (clustering: step 4a writes ``run.sh``, step 4b runs it). Until it finishes, such a run
#: is found like a finished one: running or resuming it means finding its directory first.
TAG_RUN_SCRIPT = "astrocurate.run_script"


def parse_run_id_list(tokens: Sequence[str], argument: str = "--cutout-ids") -> list[str]:
    """Parse a list of run IDs written as ``[a, b]``, ``a,b`` or several words.

    Parameters
    ----------
    tokens : sequence of str
        The words following the option on the command line.
    argument : str
        Option name, for messages.

    Returns
    -------
    list of str
        The run IDs in the order given.

    Raises
    ------
    RunNotFoundError
        If the list is empty or an item is not a run ID.
    """
    text = " ".join(tokens)
    items = [t.strip("'\" ") for t in re.split(r"[\s,\[\]]+", text)]
    items = [t for t in items if t]
    if not items:
        raise RunNotFoundError(f"{argument}: expected one or more run IDs, got {text!r}")
    return [parse_run_id(item, argument) for item in items]


def find_run(
    run_name: str,
    *,
    params: Mapping[str, str] | None = None,
    input_run_ids: Sequence[str] | None = None,
    include_unfinished: bool = False,
) -> RunRecord:
    """Return the most recent run matching all filters.

    Parameters
    ----------
    run_name : str
        The step's run name, e.g. ``"cutting_out"``.
    params : mapping, optional
        Parameter filters (``{"window_size": "64"}``).
    input_run_ids : sequence of str, optional
        Exact set of input runs (for merge runs: the cutout runs merged).
    include_unfinished : bool
        Also consider runs that are running, failed or killed. Runs tagged
        :data:`TAG_RUN_SCRIPT` (a prepared clustering) are considered in any state.

    Raises
    ------
    RunNotFoundError
        With a one-line explanation when nothing matches.
    """
    params = dict(params or {})
    matches = find_runs(
        run_name, params=params, input_run_ids=input_run_ids, include_unfinished=True
    )
    matches = [r for r in matches if include_unfinished or r.finished or TAG_RUN_SCRIPT in r.tags]
    if matches:
        return matches[0]
    named = find_runs(run_name, include_unfinished=True)
    if not named and run_name not in STEP_NAMES:
        raise RunNotFoundError(
            f"unknown run name {run_name!r}; known run names: {', '.join(STEP_NAMES)}"
        )
    raise RunNotFoundError(
        _no_match_message(run_name, params, input_run_ids, include_unfinished, named)
    )


def output_path(record: RunRecord) -> str:
    """Return a run's output directory as text, or fail if it recorded none."""
    if record.output_dir is None:
        raise InvalidRunError(f"run {record.run_id} ({record.name}) recorded no output directory")
    return str(record.output_dir)


def _no_match_message(
    run_name: str,
    params: Mapping[str, str],
    input_run_ids: Sequence[str] | None,
    include_unfinished: bool,
    named: list[RunRecord],
) -> str:
    """Explain in one line why no run matched."""
    filters = [f"{k}={v}" for k, v in params.items()]
    if input_run_ids is not None:
        filters.append("inputs=[" + ", ".join(input_run_ids) + "]")
    what = ("" if include_unfinished else "finished ") + f"{run_name!r} run"
    message = f"no {what} matches " + (" and ".join(filters) if filters else "(no filters)")
    statuses = Counter(r.status.lower() for r in named)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    message += f"; {len(named)} {run_name!r} runs exist" + (f" ({summary})" if summary else "")
    for key in params:
        values = sorted({r.params[key] for r in named if key in r.params})
        if values:
            message += f"; {key} values seen: {', '.join(values)}"
        elif named:
            message += f"; no {run_name!r} run has a parameter {key!r}"
    unfinished = [
        r
        for r in named
        if not r.finished
        and params_match(r.params, params)
        and (input_run_ids is None or set(r.input_run_ids) == set(input_run_ids))
    ]
    if unfinished and not include_unfinished:
        message += (
            f"; {len(unfinished)} unfinished run(s) match (latest {unfinished[0].run_id}, "
            f"{unfinished[0].status}): rerun that step, or pass --include-unfinished"
        )
    return message
