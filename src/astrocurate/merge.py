"""Step 2: merge cutout runs into one manifest (run name ``merge_cutouts``).

The merged ``manifest.parquet`` has one row per cutout, a new global
``cutout_id`` 0..N-1, the source run and row of each cutout, and absolute
pixel references: pixels are never copied. Inputs are ordered by window size,
then run ID, so the result does not depend on the order the IDs were given.

Sky de-duplication (``dedup_sky``): neighbouring survey mosaics overlap, so the
same sky is cut several times. Within one window size, two cutouts from
different mosaics show the same patch of sky when their centres are at most half
a window stride apart. Of such a group one cutout is kept: the one nearest the
centre of its own mosaic (where a radio mosaic is most sensitive and farthest
from its blank edge); ties go to the mosaic path, then row, then column that
sort first. The choice is greedy in that order: a cutout is kept unless a
better one of the same sky is already kept. Hence no two kept cutouts from
different mosaics lie within half a stride of each other, and every dropped
cutout has a kept cutout of the same sky from another mosaic, so no sky is lost.
Window sizes are never de-duplicated against each other; cutouts without sky
positions are always kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from astrocurate import windows
from astrocurate.cutout_store import (
    MANIFEST,
    MANIFEST_TYPES,
    MOSAICS,
    CutoutStoreError,
    read_manifest,
    write_parquet_atomic,
)
from astrocurate.errors import InvalidArgumentError
from astrocurate.tracking import RunRecord, StepRun, parse_run_id, require_run, tracked_step

log = logging.getLogger(__name__)

STEP = "merge_cutouts"
SOURCE_STEP = "cutting_out"
#: Arrow types of the merged manifest: the cutout manifest's plus the provenance columns.
MERGED_TYPES: dict[str, pa.DataType] = {
    **MANIFEST_TYPES,
    "source_run_id": pa.string(),
    "source_cutout_id": pa.int64(),
}


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
        Drop cutouts of the same sky from overlapping mosaics. Default: on when the
        inputs have sky positions (cutouts without them are always kept).
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
    mosaics = pd.concat([_source_mosaics(r) for r in runs], ignore_index=True)
    if dedup_sky is None:
        dedup_sky = any(t["ra"].notna().any() for t in tables)
    root = Path(output_path).resolve() if output_path else runs[0].output_dir.parent.parent
    params = {
        "cutouts_id": [r.run_id for r in runs],
        "dedup_sky": dedup_sky,
        "output_path": str(root),
    }
    with tracked_step(STEP, params, input_run_ids=ids, output_root=root, force=force) as run:
        if run.reused:
            return run
        merged = pd.concat(tables, ignore_index=True)
        n_before = len(merged)
        if dedup_sky:
            keep = sky_duplicates_mask(merged, mosaics, _strides(runs))
            merged = merged[keep].reset_index(drop=True)
        merged.insert(0, "cutout_id", np.arange(len(merged), dtype=np.int64))
        write_parquet_atomic(mosaics, run.output_dir / MOSAICS)
        write_parquet_atomic(merged, run.output_dir / MANIFEST, MERGED_TYPES)
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
    return table


def _source_mosaics(record: RunRecord) -> pd.DataFrame:
    """Read one cutout run's mosaics table (centres for de-duplication, fingerprints)."""
    path = record.output_dir / MOSAICS
    if not path.is_file():
        raise CutoutStoreError(
            f"--cutouts-id: {path} of cutting_out run {record.run_id} is missing; "
            "rerun that cutouts step"
        )
    table = pd.read_parquet(path)
    table.insert(0, "source_run_id", record.run_id)
    return table


def _strides(runs: Sequence[RunRecord]) -> dict[int, int]:
    """Return the smallest window stride (pixels) used for each window size."""
    strides: dict[int, int] = {}
    for run in runs:
        size = int(run.params["window_size"])
        stride = windows.window_stride(size, float(run.params.get("overlap", 0.0)))
        strides[size] = min(stride, strides.get(size, stride))
    return strides


def sky_duplicates_mask(
    cutouts: pd.DataFrame, mosaics: pd.DataFrame, strides: dict[int, int]
) -> np.ndarray:
    """Return a boolean mask of the cutouts to keep after sky de-duplication.

    See the module notes for the rule.

    Parameters
    ----------
    cutouts : DataFrame
        Rows with ``window_size``, ``mosaic_path``, ``x0``, ``y0``, ``ra``, ``dec``,
        ``pixel_scale_arcsec``, and a RangeIndex.
    mosaics : DataFrame
        Rows with ``mosaic_path``, ``centre_ra``, ``centre_dec``.
    strides : dict of int to int
        Window stride in pixels per window size.

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    keep = np.ones(len(cutouts), dtype=bool)
    centres = mosaics.drop_duplicates("mosaic_path").set_index("mosaic_path")
    for size, group in cutouts.groupby("window_size", observed=True, sort=True):
        sky = group[np.isfinite(group["ra"]) & np.isfinite(group["dec"])]
        if sky["mosaic_path"].nunique() < 2:
            continue
        scale_arcsec = float(np.nanmedian(sky["pixel_scale_arcsec"]))
        radius_deg = 0.5 * strides[int(size)] * scale_arcsec / 3600
        drop = _same_sky_losers(sky, centres, radius_deg)
        keep[sky.index[drop]] = False  # cutouts has a RangeIndex
    return keep


def _same_sky_losers(sky: pd.DataFrame, centres: pd.DataFrame, radius_deg: float) -> np.ndarray:
    """Return which cutouts of one window size to drop (bool, one per row of ``sky``)."""
    from scipy.spatial import cKDTree

    points = _unit_vectors(sky["ra"].to_numpy(), sky["dec"].to_numpy())
    codes, names = pd.factorize(sky["mosaic_path"].astype(str), sort=True)
    chord = 2 * np.sin(np.radians(radius_deg) / 2)
    tree = cKDTree(points, balanced_tree=False, compact_nodes=False)  # 3x faster to build
    pairs = tree.query_pairs(chord, output_type="ndarray")
    pairs = pairs[codes[pairs[:, 0]] != codes[pairs[:, 1]]]
    if not len(pairs):
        return np.zeros(len(sky), dtype=bool)
    centre = _unit_vectors(
        centres.loc[names, "centre_ra"].to_numpy(), centres.loc[names, "centre_dec"].to_numpy()
    )
    closeness = np.einsum("ij,ij->i", points, centre[codes])  # cosine of distance to centre
    order = np.lexsort((sky["x0"].to_numpy(), sky["y0"].to_numpy(), codes, -closeness))
    rank = np.empty(len(sky), dtype=np.int64)
    rank[order] = np.arange(len(sky))
    return _greedy_suppression(pairs, rank)


def _greedy_suppression(pairs: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Keep nodes in rank order unless a kept neighbour ranks better; return the dropped.

    Equivalent to visiting the nodes from best (rank 0) to worst, but vectorised: each
    round keeps every undecided node with no undecided better neighbour and drops the
    undecided neighbours of those kept. Rounds are few: same-sky groups are small.

    Parameters
    ----------
    pairs : ndarray of int, shape (m, 2)
        Neighbouring nodes (the same sky in two mosaics).
    rank : ndarray of int, shape (n,)
        Distinct ranks, 0 = best.

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    first_better = rank[pairs[:, 0]] < rank[pairs[:, 1]]
    better = np.where(first_better, pairs[:, 0], pairs[:, 1])
    worse = np.where(first_better, pairs[:, 1], pairs[:, 0])
    undecided, kept, dropped = 0, 1, -1
    state = np.full(len(rank), undecided, dtype=np.int8)
    while True:
        open_edges = (state[better] == undecided) & (state[worse] == undecided)
        blocked = np.zeros(len(rank), dtype=bool)
        blocked[worse[open_edges]] = True
        newly_kept = (state == undecided) & ~blocked
        if not newly_kept.any():
            return state == dropped
        state[newly_kept] = kept
        losers = worse[newly_kept[better] & (state[worse] == undecided)]
        state[losers] = dropped


def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Return (n, 3) unit vectors for sky positions in degrees."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
