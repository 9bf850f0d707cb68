"""Find the run a user means, and check that it is intact.

``find_run`` (behind ``scripts/find_run.py``) answers with the most recent matching
run and explains a miss in one line: which filters were used, how many runs carry
that name, and what values the filtered parameters take among them.

``verify_run`` (behind ``astrocurate verify``) hashes a run's outputs again, compares
them with what the run recorded when it finished, and walks its lineage.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astrocurate.errors import InvalidRunError, RunNotFoundError
from astrocurate.tracking import (
    STEP_NAMES,
    TAG_CONTENT_HASH,
    ProgressCallback,
    RunRecord,
    content_hash,
    find_runs,
    fingerprint_files,
    get_run,
    is_volatile,
    output_files,
    params_match,
    parse_run_id,
    quick_check_outputs,
    recorded_listing,
)
from astrocurate.tracking.store import TAG_RUN_SCRIPT


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


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class Finding:
    """One difference found by :func:`verify_run`.

    Attributes
    ----------
    kind : str
        ``missing``, ``extra``, ``changed``, ``no-dir``, ``unrecorded``, ``unfinished``,
        ``not-found`` or ``parent``.
    run_id : str
        The run it concerns.
    detail : str
        What differs, with the file or run named.
    note : bool
        True for a difference under a folder that may change after a run
        (``logs/``, ``report/``): reported, but not a failure unless asked.
    """

    kind: str
    run_id: str
    detail: str
    note: bool = False

    def line(self) -> str:
        """Return the finding as one line of text."""
        prefix = "note: " if self.note else ""
        return f"{prefix}{self.kind:<10} {self.run_id}  {self.detail}"


@dataclass
class VerifyReport:
    """What :func:`verify_run` found.

    Attributes
    ----------
    run_id : str
        The run verified.
    findings : list of Finding
        Every difference, in the order found.
    n_files, n_bytes : int
        Output files hashed and their bytes.
    seconds : float
        Time spent hashing.
    ancestors : list of str
        Parent runs checked (all generations).
    """

    run_id: str
    findings: list[Finding] = field(default_factory=list)
    n_files: int = 0
    n_bytes: int = 0
    seconds: float = 0.0
    ancestors: list[str] = field(default_factory=list)

    def problems(self, strict: bool = False) -> list[Finding]:
        """Return the findings that make verification fail (notes too when ``strict``)."""
        return [f for f in self.findings if strict or not f.note]

    def add(
        self, kind: str, run_id: str, detail: str, relative: str | None = None, note: bool = False
    ) -> None:
        """Record a finding; one about a file in a volatile folder is a note."""
        note = note or (relative is not None and is_volatile(relative))
        self.findings.append(Finding(kind, run_id, detail, note))

    def summary(self, strict: bool = False) -> str:
        """Return the one-line summary."""
        problems = self.problems(strict)
        notes = len(self.findings) - len(problems)
        hashed = (
            f"{self.n_files} files, {_human_bytes(self.n_bytes)} hashed in {self.seconds:.1f} s"
        )
        lineage = f"{len(self.ancestors)} parent run(s) checked"
        tail = f"; {notes} note(s) about logs/report" if notes else ""
        if problems:
            return (
                f"verify {self.run_id}: FAILED, {len(problems)} problem(s) "
                f"({hashed}; {lineage}){tail}"
            )
        return f"verify {self.run_id}: OK ({hashed}; {lineage}){tail}"


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - unreachable


def verify_run(
    run_id: str,
    *,
    parents: bool = True,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    on_total: Any = None,
) -> VerifyReport:
    """Hash a run's outputs again and compare them with what it recorded.

    Parameters
    ----------
    run_id : str
        The run to verify.
    parents : bool
        Also check its lineage: every run named by ``input_run_ids``, recursively, must
        exist and be FINISHED, with its output directory present and its files of the
        recorded sizes and sampled blocks (the quick check, not a full hash).
    workers : int, optional
        Files hashed in parallel; default :func:`astrocurate.tracking.default_hash_workers`.
    progress : callable, optional
        Called with byte counts while hashing.
    on_total : callable, optional
        Called once with the total number of bytes to hash, before hashing.

    Returns
    -------
    VerifyReport

    Raises
    ------
    RunNotFoundError
        If ``run_id`` is malformed or names no run.
    """
    record = get_run(run_id)
    report = VerifyReport(record.run_id)
    _verify_outputs(record, report, workers, progress, on_total)
    if parents:
        _verify_lineage(record, report)
    return report


def _verify_outputs(
    record: RunRecord,
    report: VerifyReport,
    workers: int | None,
    progress: ProgressCallback | None,
    on_total: Any,
) -> None:
    """Compare the run's output directory with its recorded listing, file by file."""
    rid = record.run_id
    if not record.finished:
        report.add(
            "unfinished",
            rid,
            f"{record.step} run is {record.status}, not FINISHED: its outputs were never "
            "recorded; rerun the step (the same command resumes it)",
        )
        return
    out = record.output_dir
    if out is None or not out.is_dir():
        report.add("no-dir", rid, f"output directory {out} is missing (moved or deleted?)")
        return
    listing = recorded_listing(rid)
    recorded_hash = record.tags.get(TAG_CONTENT_HASH)
    present = {p.relative_to(out).as_posix(): p for p in output_files(out)}
    if listing is None:
        report.add("unrecorded", rid, "no outputs.json artifact: comparing the content hash only")
        listing = {}
    elif recorded_hash and content_hash(listing) != recorded_hash:
        report.add("changed", rid, "outputs.json does not match the run's content hash tag")

    full = all("sha256" in entry for entry in listing.values())
    names = sorted(present)
    if on_total is not None:
        on_total(sum(present[n].stat().st_size for n in names))
    started = time.perf_counter()
    try:
        entries = fingerprint_files(
            [present[n] for n in names], full=full, workers=workers, progress=progress
        )
    except OSError as exc:
        report.add("changed", rid, f"cannot read an output file: {exc}")
        return
    report.seconds += time.perf_counter() - started
    current = dict(zip(names, entries, strict=True))
    report.n_files += len(current)
    report.n_bytes += sum(e["size"] for e in current.values())

    if not listing:
        if recorded_hash and content_hash(current) != recorded_hash:
            report.add("changed", rid, f"content hash of {out} differs from the recorded one")
        return
    if not full:
        report.add(
            "unrecorded",
            rid,
            "the run recorded sampled blocks only (ASTROCURATE_OUTPUT_HASH=sample): "
            "files were compared by size and sampled blocks",
            note=True,
        )
    for name in sorted(set(listing) | set(current)):
        _compare_file(report, rid, out, name, listing.get(name), current.get(name))


def _compare_file(
    report: VerifyReport,
    rid: str,
    out: Path,
    name: str,
    recorded: Mapping[str, Any] | None,
    now: Mapping[str, Any] | None,
) -> None:
    """Add the finding for one output file, if it differs."""
    path = out / name
    if now is None:
        size = recorded["size"] if recorded else 0
        report.add("missing", rid, f"{path}: recorded ({size} bytes), now gone", name)
        return
    if recorded is None:
        report.add("extra", rid, f"{path}: not in the run's record ({now['size']} bytes)", name)
        return
    if now["size"] != recorded["size"]:
        report.add(
            "changed",
            rid,
            f"{path}: size {now['size']} bytes, recorded {recorded['size']}",
            name,
        )
    elif "sha256" in recorded and now.get("sha256") != recorded["sha256"]:
        report.add(
            "changed",
            rid,
            f"{path}: SHA-256 {now.get('sha256', '')[:12]}..., recorded "
            f"{recorded['sha256'][:12]}...",
            name,
        )
    elif (
        "sha256" not in recorded
        and "sample" in recorded
        and now["sample"]["sha256"] != recorded["sample"]["sha256"]
    ):
        report.add("changed", rid, f"{path}: sampled blocks differ", name)


def _verify_lineage(record: RunRecord, report: VerifyReport) -> None:
    """Check every ancestor: it exists, is FINISHED, and its outputs pass the quick check."""
    seen = {record.run_id}
    queue = [(record, parent) for parent in record.input_run_ids]
    while queue:
        child, parent_id = queue.pop(0)
        if parent_id in seen:
            continue
        seen.add(parent_id)
        report.ancestors.append(parent_id)
        try:
            parent = get_run(parent_id, "input run")
        except RunNotFoundError:
            report.add(
                "parent",
                parent_id,
                f"input of {child.step} run {child.run_id}: no such run in the tracking store",
            )
            continue
        where = f"{parent.step} run, input of {child.step} run {child.run_id}"
        if not parent.finished:
            report.add("parent", parent_id, f"{where}: {parent.status}, not FINISHED")
        elif parent.output_dir is None or not parent.output_dir.is_dir():
            report.add(
                "parent", parent_id, f"{where}: output directory {parent.output_dir} is missing"
            )
        else:
            try:
                quick_check_outputs(parent, "input run")
            except InvalidRunError as exc:
                detail = str(exc).removeprefix("input run: ").split("; rerun")[0]
                report.add("parent", parent_id, f"{where}: {detail}")
        queue.extend((parent, grandparent) for grandparent in parent.input_run_ids)
