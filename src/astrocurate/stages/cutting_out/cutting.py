"""Cutting one mosaic, in a worker process, and assembling the run's tables.

:func:`cut_mosaic` slides the window over one mosaic band by band (about
:data:`BAND_PIXELS` pixels and at least one window row; neighbouring bands share the rows of
overlapping windows; the next band is read in a thread meanwhile, :mod:`.bands`), so memory
stays bounded whatever the mosaic's size. The statistics come straight from the band
(:func:`astrocurate.algorithms.windows.window_moments`, then the robust ones for the kept
windows only), with the rms map's rows beside it (:mod:`.companions`); only the kept windows
of a copied store are copied, :data:`WRITE_PIXELS` pixels at a time. A finished mosaic leaves
``parts/<n>.parquet`` (its cutout rows) and ``parts/<n>.json`` (its summary, written last).
:func:`assemble` joins the parts into ``manifest.parquet`` and ``mosaics.parquet``.

The heavy half of the step (astropy, pandas, pyarrow): :mod:`.run` imports it only when it
has mosaics to cut, so a rerun that reuses a finished run starts quickly.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate.algorithms import windows
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
from astrocurate.stages.cutting_out import bands, companions

PARTS_DIR = "parts"
_TEXT = ("mosaic", "mosaic_path", "store", "array_file")
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


def _rows_path(task: MosaicTask) -> Path:
    return Path(task.run_dir) / PARTS_DIR / f"{task.index:05d}.parquet"


def _pixel_file(task: MosaicTask) -> str:
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
    write_parquet_atomic(rows, _rows_path(task))
    write_json(summary_path(task), summary)
    return summary


def _skip_message(path: str, reason: str) -> str:
    """One line naming the skipped file and why (reasons usually start with the path)."""
    return f"skipping {reason}" if reason.startswith(path) else f"skipping {path}: {reason}"


def _cut_windows(task: MosaicTask, notes: list[str]) -> tuple[pd.DataFrame, dict]:
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
            writer = NpyStackWriter(Path(task.run_dir) / _pixel_file(task), w)
        try:
            tables = _cut_bands(mosaic, rms, x0, y0, w, opts, writer)
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


def _add_catalogue_columns(rows: pd.DataFrame, task: MosaicTask, mosaic, notes: list) -> None:
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


def _cut_bands(
    mosaic: Any,
    rms: Any,
    x0: np.ndarray,
    y0: np.ndarray,
    w: int,
    opts: Any,
    writer: NpyStackWriter | None,
) -> list[pd.DataFrame]:
    """Cut a mosaic's windows band by band (the next band read meanwhile); their rows."""
    spans = windows.row_bands(y0, w, _band_rows(mosaic.shape[1], w))
    sources = [mosaic] if rms is None else [mosaic, rms]
    tables = []
    for (b0, b1), read in zip(spans, bands.read_ahead(sources, spans), strict=True):
        inside = (y0 >= b0) & (y0 + w <= b1)
        rms_band = read[1] if rms is not None else None
        xs, ys = x0[inside], y0[inside] - b0
        tables.append(_cut_band(read[0], rms_band, xs, ys, b0, w, opts, writer))
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
) -> pd.DataFrame:
    """Cut the windows of one band of rows; write the kept ones; return their rows.

    ``xs``, ``ys`` are window origins relative to the band, whose first row is row
    ``band_y0`` of the mosaic; ``rms_band`` holds the same rows of its rms map, if any.
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
        stats.update(companions.rms_columns(rms_band, xs, ys, w, stats))
    if writer is not None:
        _write_windows(band, xs, ys, w, opts, writer)
    table = pd.DataFrame(stats)
    table.insert(0, "x0", xs.astype(np.int64))
    table.insert(1, "y0", ys.astype(np.int64) + band_y0)
    return table


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


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype="float64") for c in ("x0", "y0", "ra", "dec", "nan_fraction")}
    )


# --------------------------------------------------------------------------- assembly


def assemble(run_dir: Path, tasks: list[MosaicTask]) -> list[dict]:
    """Join the per-mosaic parts into the manifest and mosaics tables, then drop the parts."""
    summaries = [json.loads(summary_path(t).read_text()) for t in tasks]
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


def assembled(run_dir: Path) -> bool:
    """Whether an interrupted run got past assembly (tables written, parts removed)."""
    return (
        (run_dir / MANIFEST).is_file()
        and (run_dir / MOSAICS).is_file()
        and not (run_dir / PARTS_DIR).exists()
    )


def read_summaries(run_dir: Path) -> list[dict]:
    """Return the mosaics' summaries of an assembled run (``mosaics.parquet``)."""
    return pd.read_parquet(run_dir / MOSAICS).to_dict("records")
