"""Step 1: cut FITS mosaics into sliding-window cutouts (run name ``cutting_out``).

Each mosaic is cut on its own, in parallel worker processes, band of rows by
band of rows (about :data:`BAND_PIXELS` pixels and at least one window row;
neighbouring bands share the rows of overlapping windows), so memory stays
bounded whatever the mosaic's size. The
statistics are computed straight from the band
(:func:`astrocurate.algorithms.windows.window_statistics`); only the kept windows of a
copied store are copied, :data:`WRITE_PIXELS` pixels at a time. A
finished mosaic leaves ``parts/<n>.parquet`` (its cutout rows) and
``parts/<n>.json`` (its summary, written last); a rerun after an interruption
skips those mosaics. When every mosaic is done the parts are joined into
``manifest.parquet`` and ``mosaics.parquet`` (see :mod:`astrocurate.io.cutout_store`)
and partial files of interrupted attempts are removed.

Workers return their warnings (bad file, no WCS, nothing to cut) with the
mosaic's summary; the main process logs them, one per problem and file. Workers
exit when the main process dies, so a killed run leaves nothing running.
Mosaics are numbered in discovery order and every output is written per
mosaic, so the result does not depend on ``workers`` or on interruptions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate import steps
from astrocurate.algorithms import windows
from astrocurate.cpus import usable_cpus
from astrocurate.errors import InvalidArgumentError
from astrocurate.io import mosaics as mosaic_io
from astrocurate.io.atomic import write_json
from astrocurate.io.cutout_store import (
    MANIFEST,
    MANIFEST_COLUMNS,
    MANIFEST_TYPES,
    MOSAICS,
    NAN_FILL_VALUE,
    PIXELS_DIR,
    NpyStackWriter,
    write_parquet_atomic,
)
from astrocurate.stages.cutting_out import companions
from astrocurate.tracking import StepRun, require_run, tracked_step

log = logging.getLogger(__name__)

STEP = steps.CUTTING_OUT
STORES = ("copy", "virtual")
PARTS_DIR = "parts"
_TEXT = ("mosaic", "mosaic_path", "store", "array_file")
#: Pixels of a mosaic read and reduced at once (32 MiB of float32; at least one window row).
BAND_PIXELS = 1 << 23
#: Pixels of kept windows copied at once before they are written (16 MiB of float32).
WRITE_PIXELS = 1 << 22


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


@dataclass(frozen=True)
class _MosaicTask:
    index: int
    path: str
    name: str
    run_dir: str
    options: CutoutOptions
    beside: companions.Companions = field(default_factory=companions.Companions)


def validate_options(options: CutoutOptions) -> None:
    """Check cutout parameters, raising one clear error per problem."""
    if not isinstance(options.window_size, (int, np.integer)) or options.window_size <= 0:
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
    if workers > 1 and len(found) > 1:
        _start_forkserver()  # its imports overlap the tracking layer's start-up
    params = _run_params(mosaics_path, output_path, options, survey, found, beside, shard)
    params["workers"] = workers
    with tracked_step(
        STEP,
        params,
        input_run_ids=[sources.run_id] if sources else [],
        output_root=output_path,
        volatile_params=["workers"],
        force=force,
    ) as run:
        if run.reused:
            log.info("%s run %s already holds these cutouts", STEP, run.run_id)
            return run
        if run.resumed and _assembled(run.output_dir):
            log.info("resuming: every mosaic is cut and assembled; finishing the run")
            summaries = pd.read_parquet(run.output_dir / MOSAICS).to_dict("records")
        else:
            tasks = [
                _MosaicTask(i, str(m.path), m.name, str(run.output_dir), options, c)
                for i, (m, c) in enumerate(zip(found, beside, strict=True))
            ]
            _cut_all(tasks, workers, _show_progress(progress))
            summaries = _assemble(run.output_dir, tasks)
        if shard is None and all(s["status"] == "invalid" for s in summaries):
            shutil.rmtree(run.output_dir, ignore_errors=True)  # nothing in it worth resuming
            raise InvalidArgumentError(_nothing_readable(mosaics_path, summaries))
        _log_summary(run, summaries)
    return run


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
        "mosaics_digest": mosaic_io.listing_digest([m.path for m in found]),
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
        params["survey_digest"] = mosaic_io.listing_digest([m.path for m in survey])
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


def _assembled(run_dir: Path) -> bool:
    """Whether an interrupted run got past assembly (tables written, parts removed)."""
    return (
        (run_dir / MANIFEST).is_file()
        and (run_dir / MOSAICS).is_file()
        and not (run_dir / PARTS_DIR).exists()
    )


def _discover(mosaics_path: Path) -> list:
    """List the survey's FITS files, or fail before any work with one clear line."""
    try:
        scan = mosaic_io.scan_mosaics(mosaics_path)
    except OSError as exc:
        raise InvalidArgumentError(f"--mosaics_path: {exc}") from exc
    for path in scan.unreadable:
        log.warning("skipping %s: %s", path, mosaic_io.unreadable_reason(path))
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


def _cut_all(tasks: list[_MosaicTask], workers: int, progress: bool) -> None:
    """Cut the mosaics that are not done yet, in parallel, logging each as it ends."""
    todo = [t for t in tasks if not _summary_path(t).is_file()]
    if len(todo) < len(tasks):
        log.info("resuming: %d of %d mosaics already cut", len(tasks) - len(todo), len(tasks))
    bar = _progress_bar(len(tasks), len(tasks) - len(todo), progress)
    if workers == 1 or len(todo) <= 1:
        results = map(_cut_mosaic, todo)
        _drain(results, bar)
        return
    context = _start_forkserver()
    lifeline, keep_alive = context.Pipe(duplex=False)
    try:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(lifeline,),
        ) as pool:
            _drain(pool.map(_cut_mosaic, todo), bar)
    finally:
        keep_alive.close()
        lifeline.close()


def _start_forkserver() -> Any:
    """Start the fork server that workers are forked from, with this module imported.

    Starting it early lets its imports (astropy, pandas) run in another process while
    this one opens the tracking store. Returns the multiprocessing context.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # workers start with the modules imported
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return context


def _init_worker(lifeline: Connection) -> None:
    """Make a worker exit as soon as the main process is gone.

    Only the main process holds the writing end of ``lifeline``; when it dies (even by
    SIGKILL) the pipe reports end-of-file and the worker exits. Without this, pool
    workers of a killed run would wait forever, and could still be writing into the run
    directory while a rerun resumes it.
    """
    threading.Thread(target=_exit_with_main, args=(lifeline,), daemon=True).start()


def _exit_with_main(lifeline: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv()  # nothing is ever sent: returns only at end-of-file
    os._exit(1)


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


def _summary_path(task: _MosaicTask) -> Path:
    return Path(task.run_dir) / PARTS_DIR / f"{task.index:05d}.json"


def _rows_path(task: _MosaicTask) -> Path:
    return Path(task.run_dir) / PARTS_DIR / f"{task.index:05d}.parquet"


def _pixel_file(task: _MosaicTask) -> str:
    safe = re.sub(r"[^A-Za-z0-9+._-]", "_", task.name)
    return f"{PIXELS_DIR}/{task.index:05d}-{safe}.npy"


def _cut_mosaic(task: _MosaicTask) -> dict:
    """Cut one mosaic; write its pixel file, its rows and (last) its summary."""
    parts = Path(task.run_dir) / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    try:
        rows, summary = _cut_windows(task, notes)
    except mosaic_io.InvalidMosaicError as exc:
        reason = str(exc)
        notes.append(_skip_message(task.path, reason))
        rows, summary = _empty_rows(), {"status": "invalid", "reason": reason, "n_kept": 0}
    summary = {"index": task.index, "mosaic": task.name, "mosaic_path": task.path, **summary}
    summary.setdefault("n_skipped", 0)
    summary["warnings"] = notes
    write_parquet_atomic(rows, _rows_path(task))
    write_json(_summary_path(task), summary)
    return summary


def _skip_message(path: str, reason: str) -> str:
    """One line naming the skipped file and why (reasons usually start with the path)."""
    return f"skipping {reason}" if reason.startswith(path) else f"skipping {path}: {reason}"


def _cut_windows(task: _MosaicTask, notes: list[str]) -> tuple[pd.DataFrame, dict]:
    """Slide the window over one mosaic band by band; return its rows and summary.

    Warnings for the user are appended to ``notes`` (logged by the main process).
    """
    opts = task.options
    w = int(opts.window_size)
    rms_path = task.beside.rms_map
    with (
        mosaic_io.open_mosaic(task.path) as mosaic,
        mosaic_io.open_mosaic(rms_path) if rms_path else contextlib.nullcontext() as rms,
    ):
        x0, y0 = windows.window_origins(mosaic.shape, w, opts.overlap)
        if mosaic.wcs is None:
            notes.append(f"{task.path}: {mosaic.wcs_problem or 'no celestial WCS'}; ra/dec are NaN")
        info = _mosaic_info(mosaic, task)
        if len(x0) == 0:
            notes.append(
                f"{task.path}: image of {mosaic.shape[0]}x{mosaic.shape[1]} pixels is smaller "
                f"than the window {w}; 0 cutouts"
            )
        tables = []
        writer = None
        if opts.store == "copy":
            (Path(task.run_dir) / PIXELS_DIR).mkdir(exist_ok=True)
            writer = NpyStackWriter(Path(task.run_dir) / _pixel_file(task), w)
        try:
            for b0, b1 in windows.row_bands(y0, w, _band_rows(mosaic.shape[1], w)):
                inside = (y0 >= b0) & (y0 + w <= b1)
                band = mosaic.read_rows(b0, b1)
                rms_band = rms.read_rows(b0, b1) if rms is not None else None
                tables.append(
                    _cut_band(band, rms_band, x0[inside], y0[inside] - b0, b0, w, opts, writer)
                )
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
        rows = pd.concat(tables, ignore_index=True) if tables else _empty_rows()
        if len(rows):
            ra, dec = mosaic.pixel_to_icrs(
                rows["x0"].to_numpy() + (w - 1) / 2, rows["y0"].to_numpy() + (w - 1) / 2
            )
            rows["ra"], rows["dec"] = ra, dec
            _add_catalogue_columns(rows, task, mosaic, notes)
        rows["pixel_scale_arcsec"] = mosaic.pixel_scale_arcsec
    rows["mosaic"] = task.name
    rows["mosaic_path"] = task.path
    rows["window_size"] = w
    rows["store"] = opts.store
    rows["array_file"] = _pixel_file(task) if opts.store == "copy" else None
    if opts.store == "copy":
        rows["array_row"] = np.arange(len(rows), dtype=np.int64)
    else:
        rows["array_row"] = -1
    n_kept = len(rows)
    if n_kept and not (rows["mean"].any() or rows["std"].any()):  # cutouts of nothing
        if opts.store == "copy":
            (Path(task.run_dir) / _pixel_file(task)).unlink(missing_ok=True)
        raise mosaic_io.InvalidMosaicError(f"{task.path}: every pixel is 0 (an empty image)")
    if n_kept == 0 and len(x0):
        notes.append(
            f"{task.path}: every window is blank beyond --max-nan-fraction "
            f"{opts.max_nan_fraction}; 0 cutouts"
        )
    return rows, {"status": "ok", "n_kept": n_kept, "n_skipped": int(len(x0) - n_kept), **info}


def _add_catalogue_columns(rows: pd.DataFrame, task: _MosaicTask, mosaic, notes: list) -> None:
    """Add the catalogue's per-cutout columns to a mosaic's rows (NaN without a WCS)."""
    catalogue = task.beside.catalogue
    if catalogue is None:
        return
    if mosaic.wcs is None:
        notes.append(f"{task.path}: no celestial WCS to place the sources of {catalogue}")
        return
    columns = companions.catalogue_columns(catalogue, mosaic, rows, int(task.options.window_size))
    for name, values in columns.items():
        rows[name] = values


def _band_rows(nx: int, w: int) -> int:
    """Rows read at once: about :data:`BAND_PIXELS` pixels, at least one window row."""
    return max(w, BAND_PIXELS // max(nx, 1))


def _cut_band(
    band: np.ndarray,
    rms_band: np.ndarray | None,
    xs: np.ndarray,
    ys: np.ndarray,
    band_y0: int,
    w: int,
    opts: CutoutOptions,
    writer: NpyStackWriter | None,
) -> pd.DataFrame:
    """Cut the windows of one band of rows; write the kept ones; return their rows.

    ``xs``, ``ys`` are window origins relative to the band, whose first row is row
    ``band_y0`` of the mosaic; ``rms_band`` holds the same rows of its rms map, if any.
    Statistics come straight from the band; only kept windows of a copied store are
    copied, a bounded number at a time.
    """
    stats = windows.window_statistics(band, xs, ys, w)
    if rms_band is not None:
        stats.update(companions.rms_columns(rms_band, xs, ys, w, stats))
    nan_fraction = stats["nan_fraction"]
    keep = (nan_fraction <= opts.max_nan_fraction) & (nan_fraction < 1.0)
    if writer is not None:
        _write_windows(band, xs[keep], ys[keep], w, opts, writer)
    table = pd.DataFrame({k: np.asarray(v)[keep] for k, v in stats.items()})
    table.insert(0, "x0", xs[keep].astype(np.int64))
    table.insert(1, "y0", ys[keep].astype(np.int64) + band_y0)
    return table


def _write_windows(
    band: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    w: int,
    opts: CutoutOptions,
    writer: NpyStackWriter,
) -> None:
    """Append windows of a band to the pixel file, NaN filled when blanks are allowed."""
    chunk = max(1, WRITE_PIXELS // (w * w))
    for i in range(0, len(xs), chunk):
        stack = windows.extract_windows(band, xs[i : i + chunk], ys[i : i + chunk], w)
        if opts.max_nan_fraction > 0:
            windows.fill_nan(stack, NAN_FILL_VALUE, copy=False)
        writer.append(stack)


def _mosaic_info(mosaic, task: _MosaicTask) -> dict:
    """Describe a mosaic for ``mosaics.parquet``: size, fingerprint, WCS, centre."""
    ny, nx = mosaic.shape
    centre_ra, centre_dec = mosaic.pixel_to_icrs(np.array([(nx - 1) / 2]), np.array([(ny - 1) / 2]))
    header = mosaic.wcs.to_header().tostring(sep="\n") if mosaic.wcs is not None else ""
    return {
        "nx": int(nx),
        "ny": int(ny),
        "hdu": int(mosaic.hdu_index),
        "file_size": Path(task.path).stat().st_size,
        "fingerprint": json.dumps(mosaic_io.file_fingerprint(task.path)),
        "centre_ra": float(centre_ra[0]),
        "centre_dec": float(centre_dec[0]),
        "pixel_scale_arcsec": float(mosaic.pixel_scale_arcsec),
        "wcs_header": header,
    }


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype="float64") for c in ("x0", "y0", "ra", "dec", "nan_fraction")}
    )


# --------------------------------------------------------------------------- assembly


def _assemble(run_dir: Path, tasks: list[_MosaicTask]) -> list[dict]:
    """Join the per-mosaic parts into the manifest and mosaics tables, then drop the parts."""
    summaries = [json.loads(_summary_path(t).read_text()) for t in tasks]
    tables = [pd.read_parquet(_rows_path(t)) for t in tasks]
    tables = [t for t in tables if len(t)]
    manifest = pd.concat(tables, ignore_index=True) if tables else _empty_rows()
    manifest["cutout_id"] = np.arange(len(manifest), dtype=np.int64)
    for column in MANIFEST_COLUMNS:
        if column not in manifest:
            manifest[column] = pd.Series(dtype="object" if column in _TEXT else "float64")
    manifest = manifest[list(MANIFEST_COLUMNS)]
    for column in ("x0", "y0", "window_size", "array_row"):
        manifest[column] = manifest[column].astype(np.int64)
    mosaics = pd.DataFrame(summaries)
    mosaics["warnings"] = mosaics["warnings"].map("\n".join)
    write_parquet_atomic(mosaics, run_dir / MOSAICS)
    write_parquet_atomic(manifest, run_dir / MANIFEST, MANIFEST_TYPES)
    shutil.rmtree(run_dir / PARTS_DIR, ignore_errors=True)
    _remove_temporaries(run_dir)
    return summaries


def _remove_temporaries(run_dir: Path) -> None:
    """Delete partial files left by an interrupted earlier attempt (``.tmp-*``)."""
    for directory in (run_dir, run_dir / PIXELS_DIR):
        for path in directory.glob(".tmp-*") if directory.is_dir() else ():
            path.unlink(missing_ok=True)


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
