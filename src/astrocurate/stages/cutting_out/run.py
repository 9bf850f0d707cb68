"""Step 1: cut FITS mosaics into sliding-window cutouts (run name ``cutting_out``).

Each mosaic is cut on its own, in parallel worker processes (:mod:`.cutting`: band by
band, bounded memory); a finished mosaic leaves its rows and summary under ``parts/``, so a
rerun after an interruption skips it. When every mosaic is done the parts are joined into
``manifest.parquet`` and ``mosaics.parquet`` (see :mod:`astrocurate.io.cutout_store`)
and partial files of interrupted attempts are removed.

The run is keyed from the file listing alone (names, sizes, times of the mosaics and their
companions: :mod:`.companions`), so a rerun that reuses a finished run opens no FITS file
and imports neither astropy nor pandas; the files are checked, and :mod:`.cutting` is
imported, only when there is work to do.

Workers return their warnings (bad file, no WCS, nothing to cut) with the
mosaic's summary; the main process logs them, one per problem and file. Workers
exit when the main process dies, so a killed run leaves nothing running.
Mosaics are numbered in discovery order and every output is written per
mosaic, so the result does not depend on ``workers`` or on interruptions.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from astrocurate import steps
from astrocurate.cpus import usable_cpus
from astrocurate.errors import InvalidArgumentError
from astrocurate.io import mosaic_files
from astrocurate.launch.workers import map_in_workers, start_forkserver
from astrocurate.stages.cutting_out import companions
from astrocurate.tracking import StepRun, require_run, tracked_step

log = logging.getLogger(__name__)

STEP = steps.CUTTING_OUT
STORES = ("copy", "virtual")
#: The module the workers run (imported by the fork server before it forks them).
_WORKER_MODULE = "astrocurate.stages.cutting_out.cutting"


@dataclass(frozen=True)
class CutoutOptions:
    """Parameters of a cutout run (validated by :func:`validate_options`)."""

    window_size: int
    overlap: float = 0.5
    max_nan_fraction: float = 0.0
    store: str = "copy"
    rms_maps: str = companions.AUTO
    catalogue: str = companions.AUTO
    sources_id: str | None = None


def validate_options(options: CutoutOptions) -> None:
    """Check cutout parameters, raising one clear error per problem."""
    if not isinstance(options.window_size, int) or options.window_size <= 0:
        raise InvalidArgumentError(
            f"--window_size: expected a positive integer, got {options.window_size!r}"
        )
    if not 0.0 <= options.overlap < 1.0:
        raise InvalidArgumentError(
            f"--overlap: expected a fraction in [0, 1), got {options.overlap}"
        )
    if not 0.0 <= options.max_nan_fraction < 1.0:
        raise InvalidArgumentError(
            f"--max-nan-fraction: expected a fraction in [0, 1), got {options.max_nan_fraction}"
        )
    if options.store not in STORES:
        raise InvalidArgumentError(
            f"--store: expected one of {', '.join(STORES)}, got {options.store!r}"
        )
    companions.check_specs(options.rms_maps, options.catalogue)


def make_cutouts(
    mosaics_path: Path,
    output_path: Path,
    options: CutoutOptions,
    *,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> StepRun:
    """Cut every mosaic under ``mosaics_path`` and record one ``cutting_out`` run.

    Parameters
    ----------
    mosaics_path : Path
        Directory searched recursively for FITS mosaics.
    output_path : Path
        Parent directory; the run writes ``<output_path>/cutting_out/<run_id>/``.
    options : CutoutOptions
        Window size, overlap, blank policy, store, and where the mosaics' rms maps and
        source catalogues are (:mod:`.companions`).
    workers : int, optional
        Mosaics cut in parallel; default the cores this process may use
        (:func:`astrocurate.cpus.usable_cpus`). Does not change the output.
    shard : (int, int), optional
        ``(K, N)``: cut only shard K of N (0 <= K < N), the mosaics at positions K, K + N,
        K + 2N, ... of the survey sorted by relative path; each shard is its own run, and
        the merge step joins them. Default: every mosaic.
    force : bool
        Recompute even if an identical finished run exists.
    progress : bool, optional
        Show a progress bar; default only on a terminal.

    Returns
    -------
    StepRun
        The run (``reused`` is true when an identical finished run was found).
    """
    validate_options(options)
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise InvalidArgumentError(f"--workers: expected a positive integer, got {workers!r}")
    mosaics_path, output_path = Path(mosaics_path).resolve(), Path(output_path).resolve()
    survey = _discover(mosaics_path)
    found = select_shard(survey, shard)
    _check_output_path(output_path, mosaics_path)
    sources, beside = _companions(found, options)
    workers = workers or usable_cpus()
    params = _run_params(mosaics_path, output_path, options, survey, found, beside, shard)
    params["workers"] = workers

    def before_work() -> None:
        if workers > 1 and len(found) > 1:
            start_forkserver([_WORKER_MODULE])  # imports overlap checking companions
        companions.check_companions(found, beside)

    with tracked_step(
        STEP,
        params,
        input_run_ids=[sources.run_id] if sources else [],
        output_root=output_path,
        volatile_params=["workers"],
        force=force,
        before_work=before_work,
    ) as run:
        if run.reused:
            log.info("%s run %s already holds these cutouts", STEP, run.run_id)
            return run
        summaries = _cut_and_assemble(run, options, found, beside, workers, progress)
        if shard is None and all(s["status"] == "invalid" for s in summaries):
            shutil.rmtree(run.output_dir, ignore_errors=True)  # nothing in it worth resuming
            raise InvalidArgumentError(_nothing_readable(mosaics_path, summaries))
        _log_summary(run, summaries)
    return run


def _cut_and_assemble(
    run: StepRun,
    options: CutoutOptions,
    found: list,
    beside: list[companions.Companions],
    workers: int,
    progress: bool | None,
) -> list[dict]:
    """Cut the mosaics not cut yet and assemble the tables; return the mosaics' summaries."""
    from astrocurate.stages.cutting_out import assembly, cutting

    if run.resumed and assembly.assembled(run.output_dir):
        log.info("resuming: every mosaic is cut and assembled; finishing the run")
        return assembly.read_summaries(run.output_dir)
    tasks = [
        cutting.MosaicTask(i, str(m.path), m.name, str(run.output_dir), options, c)
        for i, (m, c) in enumerate(zip(found, beside, strict=True))
    ]
    _cut_all(tasks, workers, _show_progress(progress))
    return assembly.assemble(run.output_dir, tasks)


def _companions(found: list, options: CutoutOptions) -> tuple[Any, list[companions.Companions]]:
    """Return the source-finding run asked for (or None) and every mosaic's companions."""
    sources = None
    if options.sources_id:
        sources = require_run(options.sources_id, steps.SOURCE_FINDING, "--sources-id")
    directory = sources.output_dir if sources else None
    return sources, companions.find_companions(
        found, options.rms_maps, options.catalogue, directory
    )


def _run_params(
    mosaics_path: Path,
    output_path: Path,
    options: CutoutOptions,
    survey: list,
    found: list,
    beside: list[companions.Companions],
    shard: tuple[int, int] | None,
) -> dict[str, Any]:
    """Return the run's parameters (a run without companions keyed as before they existed)."""
    params = {
        "mosaics_path": str(mosaics_path),
        "output_path": str(output_path),
        **asdict(options),
        "n_mosaics": len(found),
        "mosaics_digest": mosaic_files.listing_digest([m.path for m in found]),
    }
    digest = companions.digest(beside)
    if digest is not None:
        params["companions_digest"] = digest
    for name in ("rms_maps", "catalogue"):
        if digest is None and params[name] == companions.AUTO:
            del params[name]
    if params["sources_id"] is None:
        del params["sources_id"]
    if shard is not None:
        params["shard"] = f"{shard[0]}/{shard[1]}"
        params["survey_digest"] = mosaic_files.listing_digest([m.path for m in survey])
    return params


def _nothing_readable(mosaics_path: Path, summaries: list[dict]) -> str:
    """One line for a survey none of whose files could be read: the first file and why."""
    more = f" (and {len(summaries) - 1} more)" if len(summaries) > 1 else ""
    return (
        f"--mosaics_path: none of the {len(summaries)} FITS files under {mosaics_path} can be "
        f"cut; {summaries[0]['reason']}{more}"
    )


def select_shard(mosaics: list, shard: tuple[int, int] | None) -> list:
    """Mosaics of shard ``(K, N)``: positions K, K + N, ... of the sorted survey listing."""
    if shard is None:
        return mosaics
    k, n = shard
    chosen = mosaics[k::n]
    if not chosen:
        raise InvalidArgumentError(
            f"--shard {k}/{n}: selects no mosaic, the survey has {len(mosaics)}; "
            f"use at most {len(mosaics)} shards"
        )
    return chosen


def render_array_script(
    argv: list[str],
    n_shards: int,
    window_size: int,
    log_dir: Path,
    slurm: Any,
) -> str:
    """SLURM job-array script that runs one cutouts shard per array task.

    Parameters
    ----------
    argv : list of str
        The cutouts command without ``--shard`` (absolute paths).
    n_shards : int
        Array size N; task K runs ``--shard K/N``.
    window_size : int
        For the job and log names.
    log_dir : Path
        Directory of the tasks' logs (``cutouts-w<W>-<job>_<task>.out``).
    slurm : SlurmOptions
        Account, partition, time limit and QOS of every task (validated).
    """
    from astrocurate import launch

    logs = launch.sbatch_path_pattern(log_dir, f"cutouts-w{window_size}-%A_%a.out", "--output_path")
    job = launch.Job(
        f"astrocurate-cutouts-w{window_size}",
        slurm,
        (f"--array=0-{n_shards - 1}", "--requeue", f"--output={logs}"),
    )
    comments = [
        f"astrocurate: cut a survey in {n_shards} shards, one cutting_out run per array task.",
        "Submit with sbatch; then merge the shards' runs (their IDs end each task's log).",
    ]
    body = [
        f'exec {launch.shell_words(argv)} --shard "$SLURM_ARRAY_TASK_ID/{n_shards}" '
        '--workers "${SLURM_CPUS_PER_TASK:-1}"'
    ]
    environment = launch.script_environment("cutouts job array")
    return launch.render_script(launch.Script(comments, body, environment, job))


def write_array_script(
    mosaics_path: Path, output_path: Path, options: CutoutOptions, n_shards: int, slurm: Any
) -> Path:
    """Write the job-array script of ``cutouts --slurm-array N``; return its path.

    Parameters
    ----------
    mosaics_path, output_path : Path
        The survey and the parent directory of the runs (made absolute in the script).
    options : CutoutOptions
        The parameters of every shard's run.
    n_shards : int
        Array size N (at least 1).
    slurm : SlurmOptions
        The ``--slurm_*`` options of every task.

    Returns
    -------
    Path
        ``OUTPUT_PATH/cutouts_w<W>_<N>shards.sbatch`` (logs go to ``OUTPUT_PATH/logs``).
    """
    from astrocurate.io.atomic import write_text
    from astrocurate.launch import cli_command

    validate_options(options)
    if n_shards < 1:
        raise InvalidArgumentError(f"--slurm-array: expected N >= 1, got {n_shards}")
    output = Path(output_path).resolve()
    argv = cli_command(
        "cutouts",
        "--mosaics_path", str(Path(mosaics_path).resolve()),
        "--output_path", str(output),
        "--window_size", str(options.window_size),
        "--overlap", repr(options.overlap),
        "--max-nan-fraction", repr(options.max_nan_fraction),
        "--store", options.store,
        "--rms-maps", options.rms_maps,
        "--catalogue", options.catalogue,
        *(["--sources-id", options.sources_id] if options.sources_id else []),
    )  # fmt: skip
    text = render_array_script(
        argv, n_shards, options.window_size, output / "logs", slurm.validate()
    )
    (output / "logs").mkdir(parents=True, exist_ok=True)
    path = output / f"cutouts_w{options.window_size}_{n_shards}shards.sbatch"
    write_text(path, text, 0o755)
    return path


def _discover(mosaics_path: Path) -> list:
    """List the survey's FITS files, or fail before any work with one clear line."""
    try:
        scan = mosaic_files.scan_mosaics(mosaics_path)
    except OSError as exc:
        raise InvalidArgumentError(f"--mosaics_path: {exc}") from exc
    for path in scan.unreadable:
        log.warning("skipping %s: %s", path, mosaic_files.unreadable_reason(path))
    if scan.ignored:
        log.info("ignoring files that are not mosaics: %s", scan.describe_ignored())
    if not scan.mosaics:
        skipped = f"; {scan.describe_unreadable()}" if scan.unreadable else ""
        raise InvalidArgumentError(
            f"--mosaics_path: no readable FITS files (.fits, .fit, .fits.gz, .fz) under "
            f"{mosaics_path} ({scan.describe_ignored()}{skipped})"
        )
    return list(scan.mosaics)


def _check_output_path(output_path: Path, mosaics_path: Path) -> None:
    if output_path.exists() and not output_path.is_dir():
        raise InvalidArgumentError(f"--output_path: {output_path} exists and is not a directory")
    if output_path == mosaics_path or mosaics_path in output_path.parents:
        raise InvalidArgumentError(
            f"--output_path: {output_path} is inside --mosaics_path {mosaics_path}; "
            "choose a directory outside the survey"
        )
    try:
        output_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgumentError(
            f"--output_path: cannot create {output_path}: {exc.strerror}"
        ) from exc
    if not os.access(output_path, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"--output_path: {output_path} is not writable")


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


# --------------------------------------------------------------------------- per mosaic


def _cut_all(tasks: list, workers: int, progress: bool) -> None:
    """Cut the mosaics that are not done yet, in parallel, logging each as it ends."""
    from astrocurate.stages.cutting_out import cutting

    todo = [t for t in tasks if not cutting.is_cut(t)]
    if len(todo) < len(tasks):
        log.info("resuming: %d of %d mosaics already cut", len(tasks) - len(todo), len(tasks))
    bar = _progress_bar(len(tasks), len(tasks) - len(todo), progress)
    map_in_workers(
        cutting.cut_mosaic,
        todo,
        workers=workers,
        preload=[_WORKER_MODULE],
        consume=lambda results: _drain(results, bar),
        what="cutting the mosaics",
        setup=cutting.keep_freed_memory,
    )


def _drain(results: Iterable[dict], bar: Any) -> None:
    """Log each mosaic's warnings and counts (in this process) as its summary arrives."""
    total = 0
    for summary in results:
        for message in summary.get("warnings", ()):
            log.warning("%s", message)
        total += summary["n_kept"]
        if summary["status"] == "ok":
            log.info(
                "%s: %d cutouts kept, %d skipped (blank)",
                summary["mosaic"],
                summary["n_kept"],
                summary["n_skipped"],
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(cutouts=total, refresh=False)
    if bar is not None:
        bar.close()


def _progress_bar(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="mosaic", desc="cutting", file=sys.stderr)


def _log_summary(run: StepRun, summaries: list[dict]) -> None:
    kept = sum(s["n_kept"] for s in summaries)
    skipped = sum(s["n_skipped"] for s in summaries)
    invalid = [s for s in summaries if s["status"] != "ok"]
    run.log_metrics(
        {
            "n_cutouts": kept,
            "n_windows_skipped": skipped,
            "n_mosaics_cut": len(summaries) - len(invalid),
            "n_mosaics_invalid": len(invalid),
        }
    )
    run.log_metric_series("cutouts_per_mosaic", [s["n_kept"] for s in summaries])
    run.log_dict(
        [{k: v for k, v in s.items() if k != "wcs_header"} for s in summaries], "mosaics.json"
    )
    log.info(
        "%d cutouts from %d mosaics (%d windows skipped, %d files invalid) in %s",
        kept,
        len(summaries) - len(invalid),
        skipped,
        len(invalid),
        run.output_dir,
    )
    if kept == 0:
        log.warning(
            "no cutouts at all: every mosaic is smaller than the window or blank (see the "
            "lines above); a merge of this run would have nothing to merge"
        )
