"""Cutting one mosaic, in a worker process, and assembling the run's tables.

:func:`cut_mosaic` slides the window over one mosaic band by band (about
:data:`BAND_PIXELS` pixels and at least one window row; neighbouring bands share the rows of
overlapping windows; the next band is read in a thread meanwhile, :mod:`.bands`), so memory
stays bounded whatever the mosaic's size. The statistics come straight from the band
(:func:`astrocurate.algorithms.windows.window_moments`, then the robust ones for the kept
windows only), with the rms map's rows beside it (:mod:`.companions`); only the kept windows
of a copied store are copied, :data:`WRITE_PIXELS` pixels at a time. A finished mosaic leaves
``parts/<n>.npz`` (its cutout rows: the numeric columns of the manifest) and
``parts/<n>.json`` (its summary, written last); :mod:`.assembly` joins the parts.

The module the worker processes run: numpy and astropy, not pandas (nor pyarrow, whose
conversions import pandas), which would add a quarter of a second to every worker's start.
:mod:`.run` imports it only when it has mosaics to cut, so a rerun that reuses a finished
run starts quickly.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astrocurate.algorithms import windows
from astrocurate.io import mosaics as mosaic_io
from astrocurate.io.atomic import atomic_path, write_json
from astrocurate.io.cutout_store import NAN_FILL_VALUE, PIXELS_DIR, NpyStackWriter
from astrocurate.stages.cutting_out import bands, companions

PARTS_DIR = "parts"
#: A mosaic's cutout rows: numeric column name to values (one value per kept window).
Columns = dict[str, np.ndarray]
#: Pixels of a mosaic read and reduced at once (32 MiB of float32; at least one window row).
BAND_PIXELS = 1 << 23
#: Pixels of kept windows copied at once before they are written (16 MiB of float32).
WRITE_PIXELS = 1 << 22


@dataclass(frozen=True)
class MosaicTask:
    """One mosaic to cut: its number, file, name, the run directory, options, companions."""

    index: int
    path: str
    name: str
    run_dir: str
    options: Any  # run.CutoutOptions (window size, overlap, blanks, store)
    beside: companions.Companions = field(default_factory=companions.Companions)


def summary_path(task: MosaicTask) -> Path:
    """Return the path of the mosaic's summary under ``parts/`` (written last: it is done)."""
    return Path(task.run_dir) / PARTS_DIR / f"{task.index:05d}.json"


def rows_path(task: MosaicTask) -> Path:
    """Return the path of the mosaic's cutout rows under ``parts/``."""
    return Path(task.run_dir) / PARTS_DIR / f"{task.index:05d}.npz"


def is_cut(task: MosaicTask) -> bool:
    """Whether the mosaic's rows and summary are written (an earlier attempt may have)."""
    return summary_path(task).is_file() and rows_path(task).is_file()


def pixel_file(task: MosaicTask) -> str:
    """Return the copied store's pixel file of the mosaic, relative to the run directory."""
    safe = re.sub(r"[^A-Za-z0-9+._-]", "_", task.name)
    return f"{PIXELS_DIR}/{task.index:05d}-{safe}.npy"


def cut_mosaic(task: MosaicTask) -> dict:
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
    with atomic_path(rows_path(task)) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, allow_pickle=False, **rows)
    write_json(summary_path(task), summary)
    return summary


def _skip_message(path: str, reason: str) -> str:
    """One line naming the skipped file and why (reasons usually start with the path)."""
    return f"skipping {reason}" if reason.startswith(path) else f"skipping {path}: {reason}"


def _cut_windows(task: MosaicTask, notes: list[str]) -> tuple[Columns, dict]:
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
        writer = None
        if opts.store == "copy":
            (Path(task.run_dir) / PIXELS_DIR).mkdir(exist_ok=True)
            writer = NpyStackWriter(Path(task.run_dir) / pixel_file(task), w)
        try:
            tables = _cut_bands(mosaic, rms, x0, y0, w, opts, writer)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
        rows = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]} if tables else {}
        rows = rows or _empty_rows()
        n_kept = len(rows["x0"])
        if n_kept:
            ra, dec = mosaic.pixel_to_icrs(rows["x0"] + (w - 1) / 2, rows["y0"] + (w - 1) / 2)
            rows["ra"], rows["dec"] = ra, dec
            _add_catalogue_columns(rows, task, mosaic, notes)
        rows["pixel_scale_arcsec"] = np.full(n_kept, mosaic.pixel_scale_arcsec)
    if n_kept and not (rows["mean"].any() or rows["std"].any()):  # cutouts of nothing
        if opts.store == "copy":
            (Path(task.run_dir) / pixel_file(task)).unlink(missing_ok=True)
        raise mosaic_io.InvalidMosaicError(f"{task.path}: every pixel is 0 (an empty image)")
    if n_kept == 0 and len(x0):
        notes.append(
            f"{task.path}: every window is blank beyond --max-nan-fraction "
            f"{opts.max_nan_fraction}; 0 cutouts"
        )
    return rows, {"status": "ok", "n_kept": n_kept, "n_skipped": int(len(x0) - n_kept), **info}


def _add_catalogue_columns(rows: Columns, task: MosaicTask, mosaic, notes: list) -> None:
    """Add the catalogue's per-cutout columns to a mosaic's rows (NaN without a WCS)."""
    catalogue = task.beside.catalogue
    if catalogue is None:
        return
    if mosaic.wcs is None:
        notes.append(f"{task.path}: no celestial WCS to place the sources of {catalogue}")
        return
    w = int(task.options.window_size)
    rows.update(companions.catalogue_columns(catalogue, mosaic, rows["x0"], rows["y0"], w))


def _cut_bands(
    mosaic: Any,
    rms: Any,
    x0: np.ndarray,
    y0: np.ndarray,
    w: int,
    opts: Any,
    writer: NpyStackWriter | None,
) -> list[Columns]:
    """Cut a mosaic's windows band by band (the next band read meanwhile); their rows.

    Of the rms map only the rows of the windows' robust grids are read, when every window
    starts on one (the usual strides: a multiple of :func:`~.windows.robust_step`).
    """
    spans = windows.row_bands(y0, w, _band_rows(mosaic.shape[1], w))
    sources, steps = [mosaic], [1]
    if rms is not None:
        k = windows.robust_step(w)
        sources.append(rms)
        steps.append(k if not np.any(y0 % k) else 1)
    tables = []
    for (b0, b1), read in zip(spans, bands.read_ahead(sources, spans, steps), strict=True):
        inside = (y0 >= b0) & (y0 + w <= b1)
        rms_band = read[1] if rms is not None else None
        xs, ys = x0[inside], y0[inside] - b0
        tables.append(_cut_band(read[0], rms_band, xs, ys, b0, w, opts, writer, steps[-1]))
    return tables


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
    opts: Any,
    writer: NpyStackWriter | None,
    rms_step: int = 1,
) -> Columns:
    """Cut the windows of one band of rows; write the kept ones; return their rows.

    ``xs``, ``ys`` are window origins relative to the band, whose first row is row
    ``band_y0`` of the mosaic; ``rms_band``, if any, holds every ``rms_step``-th of the
    same rows of its rms map.
    Statistics come straight from the band: the blank fraction of every window, the rest
    for the kept windows only; only kept windows of a copied store are copied, a bounded
    number at a time.
    """
    moments = windows.window_moments(band, xs, ys, w)
    nan_fraction = moments["nan_fraction"]
    keep = (nan_fraction <= opts.max_nan_fraction) & (nan_fraction < 1.0)
    xs, ys = xs[keep], ys[keep]
    kept = {key: values[keep] for key, values in moments.items()}
    stats = windows.add_robust_statistics(band, xs, ys, w, kept)
    if rms_band is not None:
        stats.update(companions.rms_columns(rms_band, xs, ys, w, stats, rms_step))
    if writer is not None:
        _write_windows(band, xs, ys, w, opts, writer)
    return {"x0": xs.astype(np.int64), "y0": ys.astype(np.int64) + band_y0, **stats}


def _write_windows(
    band: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    w: int,
    opts: Any,
    writer: NpyStackWriter,
) -> None:
    """Append windows of a band to the pixel file, NaN filled when blanks are allowed."""
    chunk = max(1, WRITE_PIXELS // (w * w))
    for i in range(0, len(xs), chunk):
        stack = windows.extract_windows(band, xs[i : i + chunk], ys[i : i + chunk], w)
        if opts.max_nan_fraction > 0:
            windows.fill_nan(stack, NAN_FILL_VALUE, copy=False)
        writer.append(stack)


def _mosaic_info(mosaic, task: MosaicTask) -> dict:
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


def _empty_rows() -> Columns:
    return {c: np.empty(0) for c in ("x0", "y0", "ra", "dec", "nan_fraction")}


#: glibc's ``mallopt`` parameters: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Arrays up to this size come from the heap (a band read at once: 32 MiB).
_FROM_HEAP = 1 << 27
#: Freed memory a worker keeps for reuse (the statistics' temporaries: 4-16 MiB each).
_KEEP_FREED = 1 << 30


def keep_freed_memory() -> None:
    """Let glibc keep the memory a worker frees, to reuse it (no-op on other C libraries).

    By default glibc maps arrays of 32 MiB and more (a band of a mosaic and of its rms map,
    two buffers each) afresh and unmaps them when they are freed, and gives freed memory
    back above a threshold, so a worker paid 35-46k page faults of zeroed pages per mosaic
    of 8192 px, 0.1-0.15 s of system time (a third of its CPU time). Served from the heap
    and kept there, they cost none; the worker's resident memory stays at its peak
    instead of dropping between mosaics.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):  # no mallopt (macOS): nothing to tune
        return
    if mallopt(_M_MMAP_THRESHOLD, _FROM_HEAP):
        mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED)
