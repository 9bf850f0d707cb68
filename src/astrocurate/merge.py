"""Step 2: merge cutout runs into one manifest (run name ``merge_cutouts``).

The merged ``manifest.parquet`` has one row per cutout, a new global
``cutout_id`` 0..N-1, the source run and row of each cutout, and absolute
pixel references: pixels are never copied. Inputs are ordered by window size,
then run ID, so the result does not depend on the order the IDs were given.

Sky de-duplication (``dedup_sky``): neighbouring survey mosaics overlap, so the
same sky is cut several times. Within one window size, a cutout is dropped when
a cutout from another mosaic lies within half a window stride of it on the sky
and its centre is nearer to that other mosaic's centre than to its own: each
patch of sky is taken from the mosaic whose centre it is closest to, where a
radio mosaic is most sensitive. Coverage is never lost (near the boundary both
cutouts may stay); window sizes are never de-duplicated against each other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from astrocurate.cutout_store import MANIFEST, MOSAICS, read_manifest, write_parquet_atomic
from astrocurate.errors import InvalidArgumentError
from astrocurate.tracking import RunRecord, StepRun, parse_run_id, require_run, tracked_step

log = logging.getLogger(__name__)

STEP = "merge_cutouts"
SOURCE_STEP = "cutting_out"


def merge_cutouts(
    cutouts_ids: Sequence[str],
    *,
    dedup_sky: bool | None = None,
    output_path: Path | None = None,
    force: bool = False,
) -> StepRun:
    """Merge finished cutout runs and record one ``merge_cutouts`` run.

    Parameters
    ----------
    cutouts_ids : sequence of str
        IDs of finished ``cutting_out`` runs.
    dedup_sky : bool, optional
        Drop cutouts of the same sky from overlapping mosaics. Default: on when
        every input has sky positions.
    output_path : Path, optional
        Parent directory of the run directory; default the first input's.
    force : bool
        Recompute even if an identical finished run exists.

    Returns
    -------
    StepRun
    """
    ids = [parse_run_id(i, "--cutouts-id") for i in cutouts_ids]
    if not ids:
        raise InvalidArgumentError("--cutouts-id: expected at least one cutout run ID")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InvalidArgumentError(f"--cutouts-id: run {repeated[0]} is given more than once")
    runs = sorted(
        (require_run(i, SOURCE_STEP, "--cutouts-id") for i in ids),
        key=lambda r: (int(r.params.get("window_size", 0)), r.run_id),
    )
    tables = [_source_table(r) for r in runs]
    has_sky = all(t["ra"].notna().all() for t in tables)
    if dedup_sky is None:
        dedup_sky = has_sky
    root = Path(output_path).resolve() if output_path else runs[0].output_dir.parent.parent
    params = {"cutouts_id": [r.run_id for r in runs], "dedup_sky": dedup_sky}
    with tracked_step(STEP, params, input_run_ids=ids, output_root=root, force=force) as run:
        if run.reused:
            return run
        merged = pd.concat(tables, ignore_index=True)
        mosaics = pd.concat([_source_mosaics(r) for r in runs], ignore_index=True)
        n_before = len(merged)
        if dedup_sky:
            keep = sky_duplicates_mask(merged, mosaics, _strides(runs))
            merged = merged[keep].reset_index(drop=True)
        merged.insert(0, "cutout_id", np.arange(len(merged), dtype=np.int64))
        write_parquet_atomic(mosaics, run.output_dir / MOSAICS)
        write_parquet_atomic(merged, run.output_dir / MANIFEST)
        per_size = merged.groupby("window_size").size()
        run.log_metrics(
            {
                "n_cutouts": len(merged),
                "n_inputs": len(runs),
                "n_sky_duplicates_dropped": n_before - len(merged),
                **{f"n_cutouts_w{int(w)}": int(n) for w, n in per_size.items()},
            }
        )
        log.info(
            "merged %d cutout runs: %d cutouts (%d sky duplicates dropped) in %s",
            len(runs),
            len(merged),
            n_before - len(merged),
            run.output_dir,
        )
    return run


def _source_table(record: RunRecord) -> pd.DataFrame:
    """Read one cutout run's manifest with absolute pixel references and its provenance."""
    table = read_manifest(record.output_dir)
    table = table.rename(columns={"cutout_id": "source_cutout_id"})
    base = str(record.output_dir) + "/"
    copied = table["array_file"].notna()
    table["array_file"] = table["array_file"].where(~copied, base + table["array_file"].astype(str))
    table.insert(0, "source_run_id", record.run_id)
    for column in ("mosaic", "mosaic_path", "store", "array_file", "source_run_id"):
        table[column] = table[column].astype("category")
    return table


def _source_mosaics(record: RunRecord) -> pd.DataFrame:
    table = pd.read_parquet(record.output_dir / MOSAICS)
    table.insert(0, "source_run_id", record.run_id)
    return table


def _strides(runs: Sequence[RunRecord]) -> dict[int, int]:
    """Return the smallest window stride (pixels) used for each window size."""
    strides: dict[int, int] = {}
    for run in runs:
        size = int(run.params["window_size"])
        stride = max(1, round(size * (1 - float(run.params.get("overlap", 0.0)))))
        strides[size] = min(stride, strides.get(size, stride))
    return strides


def sky_duplicates_mask(
    cutouts: pd.DataFrame, mosaics: pd.DataFrame, strides: dict[int, int]
) -> np.ndarray:
    """Return a boolean mask of the cutouts to keep after sky de-duplication.

    Parameters
    ----------
    cutouts : DataFrame
        Rows with ``window_size``, ``mosaic_path``, ``ra``, ``dec``, ``pixel_scale_arcsec``.
    mosaics : DataFrame
        Rows with ``mosaic_path``, ``centre_ra``, ``centre_dec``.
    strides : dict of int to int
        Window stride in pixels per window size.

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    from scipy.spatial import cKDTree

    keep = np.ones(len(cutouts), dtype=bool)
    centres = mosaics.drop_duplicates("mosaic_path").set_index("mosaic_path")
    for size, group in cutouts.groupby("window_size", observed=True):
        sky = group[np.isfinite(group["ra"]) & np.isfinite(group["dec"])]
        if sky["mosaic_path"].nunique() < 2:
            continue
        radius_deg = 0.5 * strides[int(size)] * np.nanmedian(sky["pixel_scale_arcsec"]) / 3600
        points = _unit_vectors(sky["ra"].to_numpy(), sky["dec"].to_numpy())
        pairs = cKDTree(points).query_pairs(
            2 * np.sin(np.radians(radius_deg) / 2), output_type="ndarray"
        )
        mosaic_codes, mosaic_names = pd.factorize(sky["mosaic_path"].astype(str))
        pairs = pairs[mosaic_codes[pairs[:, 0]] != mosaic_codes[pairs[:, 1]]]
        if not len(pairs):
            continue
        centre = _unit_vectors(
            centres.loc[mosaic_names, "centre_ra"].to_numpy(),
            centres.loc[mosaic_names, "centre_dec"].to_numpy(),
        )
        drop = np.zeros(len(sky), dtype=bool)
        for a, b in ((pairs[:, 0], pairs[:, 1]), (pairs[:, 1], pairs[:, 0])):
            own = np.einsum("ij,ij->i", points[a], centre[mosaic_codes[a]])
            other = np.einsum("ij,ij->i", points[a], centre[mosaic_codes[b]])
            drop[a[other > own]] = True  # larger dot product = nearer centre
        keep[sky.index[drop]] = False  # cutouts has a RangeIndex
    return keep


def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Return (n, 3) unit vectors for sky positions in degrees."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
