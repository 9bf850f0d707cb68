"""Joining the mosaics' parts of a cutting run into its tables, in the main process.

Each worker leaves ``parts/<n>.npz`` (a mosaic's cutout rows, numeric columns) and
``parts/<n>.json`` (its summary, written last) (:mod:`.cutting`); :func:`assemble` adds the
columns that name the mosaic and the store, and joins them into ``manifest.parquet``
(columns and types of :data:`~astrocurate.io.cutout_store.MANIFEST_TYPES`, ``cutout_id``
numbered in mosaic order) and ``mosaics.parquet`` (one summary per mosaic), then removes
the parts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from astrocurate.io.cutout_store import (
    MANIFEST,
    MANIFEST_COLUMNS,
    MANIFEST_TYPES,
    MOSAICS,
    PIXELS_DIR,
    write_parquet_atomic,
)
from astrocurate.stages.cutting_out.cutting import (
    PARTS_DIR,
    MosaicTask,
    pixel_file,
    rows_path,
    summary_path,
)

_TEXT = ("mosaic", "mosaic_path", "store", "array_file")


def assemble(run_dir: Path, tasks: list[MosaicTask]) -> list[dict]:
    """Join the per-mosaic parts into the manifest and mosaics tables, then drop the parts."""
    summaries = [json.loads(summary_path(t).read_text()) for t in tasks]
    tables = [_read_rows(t) for t in tasks]
    tables = [t for t in tables if len(t)]
    manifest = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
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


def _read_rows(task: MosaicTask) -> pd.DataFrame:
    """Read a mosaic's rows; add the columns that name its mosaic and where they are stored."""
    with np.load(rows_path(task), allow_pickle=False) as columns:
        rows = pd.DataFrame({name: columns[name] for name in columns.files})
    copied = task.options.store == "copy"
    rows["mosaic"] = task.name
    rows["mosaic_path"] = task.path
    rows["window_size"] = int(task.options.window_size)
    rows["store"] = task.options.store
    rows["array_file"] = pixel_file(task) if copied else None
    rows["array_row"] = np.arange(len(rows), dtype=np.int64) if copied else -1
    return rows


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
