"""Step 1: cut FITS mosaics into sliding-window cutouts (run name ``cutting_out``).

Each mosaic is cut on its own, in parallel worker processes, band of rows by
band of rows, so memory stays bounded by ``window_size x mosaic width``. A
finished mosaic leaves ``parts/<n>.parquet`` (its cutout rows) and
``parts/<n>.json`` (its summary, written last); a rerun after an interruption
skips those mosaics. When every mosaic is done the parts are joined into
``manifest.parquet`` and ``mosaics.parquet`` (see :mod:`astrocurate.cutout_store`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from astrocurate import mosaics as mosaic_io
from astrocurate import windows
from astrocurate.cutout_store import (
    MANIFEST,
    MANIFEST_COLUMNS,
    MOSAICS,
    NAN_FILL_VALUE,
    PIXELS_DIR,
    NpyStackWriter,
    write_parquet_atomic,
)
from astrocurate.errors import InvalidArgumentError
from astrocurate.tracking import StepRun, tracked_step

log = logging.getLogger(__name__)

STEP = "cutting_out"
STORES = ("copy", "virtual")
PARTS_DIR = "parts"


@dataclass(frozen=True)
class CutoutOptions:
    """Parameters of a cutout run (validated by :func:`validate_options`)."""

    window_size: int
    overlap: float = 0.5
    max_nan_fraction: float = 0.0
    store: str = "copy"


@dataclass(frozen=True)
class _MosaicTask:
    index: int
    path: str
    name: str
    run_dir: str
    options: CutoutOptions


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


def make_cutouts(
    mosaics_path: Path,
    output_path: Path,
    options: CutoutOptions,
    *,
    workers: int | None = None,
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
        Window size, overlap, blank policy and store.
    workers : int, optional
        Mosaics cut in parallel; default all cores. Does not change the output.
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
    mosaics_path, output_path = Path(mosaics_path).resolve(), Path(output_path).resolve()
    found = _discover(mosaics_path)
    _check_output_path(output_path, mosaics_path)
    workers = max(1, workers or os.cpu_count() or 1)
    params = {
        "mosaics_path": str(mosaics_path),
        "output_path": str(output_path),
        **asdict(options),
        "n_mosaics": len(found),
        "mosaics_digest": _listing_digest([m.path for m in found]),
        "workers": workers,
    }
    with tracked_step(
        STEP, params, output_root=output_path, volatile_params=["workers"], force=force
    ) as run:
        if run.reused:
            log.info("%s run %s already holds these cutouts", STEP, run.run_id)
            return run
        tasks = [
            _MosaicTask(i, str(m.path), m.name, str(run.output_dir), options)
            for i, m in enumerate(found)
        ]
        _cut_all(tasks, workers, _show_progress(progress))
        summaries = _assemble(run.output_dir, tasks)
        _log_summary(run, summaries)
    return run


def _discover(mosaics_path: Path) -> list:
    """List the survey's FITS files, or fail before any work with one clear line."""
    try:
        scan = mosaic_io.scan_mosaics(mosaics_path)
    except OSError as exc:
        raise InvalidArgumentError(f"--mosaics_path: {exc}") from exc
    for path in scan.unreadable:
        log.warning("skipping %s: cannot be read", path)
    if not scan.mosaics:
        raise InvalidArgumentError(
            f"--mosaics_path: no FITS files (.fits, .fit, .fits.gz, .fz) under {mosaics_path} "
            f"({scan.describe_ignored()})"
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


def _listing_digest(paths: list[Path]) -> str:
    """Hash the mosaic list (path, size, mtime) so a changed survey is a new run."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


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
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
        _drain(pool.map(_cut_mosaic, todo), bar)


def _drain(results, bar) -> None:
    for summary in results:
        if summary["status"] == "ok":
            log.info(
                "%s: %d cutouts kept, %d skipped (blank)",
                summary["mosaic"],
                summary["n_kept"],
                summary["n_skipped"],
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(cutouts=summary["n_kept"], refresh=False)
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
    try:
        rows, summary = _cut_windows(task)
    except mosaic_io.InvalidMosaicError as exc:
        log.warning("skipping %s: %s", task.path, exc)
        rows, summary = _empty_rows(), {"status": "invalid", "reason": str(exc), "n_kept": 0}
    summary = {"index": task.index, "mosaic": task.name, "mosaic_path": task.path, **summary}
    summary.setdefault("n_skipped", 0)
    write_parquet_atomic(rows, _rows_path(task))
    _write_json_atomic(summary, _summary_path(task))
    return summary


def _cut_windows(task: _MosaicTask) -> tuple[pd.DataFrame, dict]:
    """Slide the window over one mosaic band by band; return its rows and summary."""
    opts = task.options
    w = int(opts.window_size)
    with mosaic_io.open_mosaic(task.path) as mosaic:
        x0, y0 = windows.window_origins(mosaic.shape, w, opts.overlap)
        if mosaic.wcs is None:
            log.warning("%s: no celestial WCS; ra/dec will be NaN", task.path)
        info = _mosaic_info(mosaic, task)
        if len(x0) == 0:
            log.warning("%s: image %s is smaller than the window %d", task.path, mosaic.shape, w)
        tables = []
        writer = None
        if opts.store == "copy":
            (Path(task.run_dir) / PIXELS_DIR).mkdir(exist_ok=True)
            writer = NpyStackWriter(Path(task.run_dir) / _pixel_file(task), w)
        try:
            for row in np.unique(y0):
                band = mosaic.read_rows(int(row), int(row) + w)
                xs = x0[y0 == row]
                tables.append(_cut_band(band, xs, int(row), w, opts, writer))
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
    if n_kept == 0 and len(x0):
        log.warning("%s: every window is blank beyond --max-nan-fraction; 0 cutouts", task.path)
    return rows, {"status": "ok", "n_kept": n_kept, "n_skipped": len(x0) - n_kept, **info}


def _cut_band(
    band: np.ndarray,
    xs: np.ndarray,
    y0: int,
    w: int,
    opts: CutoutOptions,
    writer: NpyStackWriter | None,
) -> pd.DataFrame:
    """Cut the windows of one band of rows (w, nx); write the kept ones; return their rows."""
    views = np.lib.stride_tricks.sliding_window_view(band, (w, w))[0]  # (nx - w + 1, w, w)
    stack = views[xs]
    stats = windows.cutout_statistics(stack)
    nan_fraction = stats["nan_fraction"]
    keep = (nan_fraction <= opts.max_nan_fraction) & (nan_fraction < 1.0)
    kept = stack[keep]
    if writer is not None and len(kept):
        if opts.max_nan_fraction > 0:
            kept = np.where(np.isnan(kept), np.float32(NAN_FILL_VALUE), kept)
        writer.append(kept)
    table = pd.DataFrame({k: np.asarray(v)[keep] for k, v in stats.items()})
    table.insert(0, "x0", xs[keep].astype(np.int64))
    table.insert(1, "y0", np.full(int(keep.sum()), y0, dtype=np.int64))
    return table


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


def _write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


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
            manifest[column] = pd.Series(dtype="float64")
    manifest = manifest[list(MANIFEST_COLUMNS)]
    for column in ("x0", "y0", "window_size", "array_row"):
        manifest[column] = manifest[column].astype(np.int64)
    write_parquet_atomic(pd.DataFrame(summaries), run_dir / MOSAICS)
    write_parquet_atomic(manifest, run_dir / MANIFEST)
    shutil.rmtree(run_dir / PARTS_DIR, ignore_errors=True)
    return summaries


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
