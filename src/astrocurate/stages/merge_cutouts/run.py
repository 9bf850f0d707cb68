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

Speed: tables are read, joined, filtered and written with pyarrow (no pandas
copies of millions of rows). Same-sky pairs are searched only among cutouts near
another mosaic: a mosaic reaches as far from its centre as its farthest cutout,
and a cutout is a candidate only if it lies within half a stride of the reach of
another mosaic that can overlap its own. The tie-break order is computed only
for cutouts that have a same-sky partner.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from astrocurate import steps
from astrocurate.algorithms import windows
from astrocurate.errors import InvalidArgumentError
from astrocurate.io.atomic import atomic_path
from astrocurate.io.cutout_store import (
    COMPANION_COLUMNS,
    MANIFEST,
    MANIFEST_COLUMNS,
    MANIFEST_TYPES,
    MOSAICS,
    CutoutStoreError,
    write_parquet_atomic,
)
from astrocurate.tracking import (
    RunRecord,
    StepRun,
    parse_run_id,
    require_run,
    tracked_step,
)
from astrocurate.validation import check_real

log = logging.getLogger(__name__)

STEP = steps.MERGE_CUTOUTS
SOURCE_STEP = steps.source_of(STEP)
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
    min_peak_snr: float | None = None,
    max_noise_ratio: float | None = None,
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
    min_peak_snr : float, optional
        Leave out empty sky before features and clustering: cutouts whose peak stands
        less than this many noise sigma above their median (against the rms map where
        the cutouts have one, else their own robust noise;
        :mod:`astrocurate.algorithms.noise_flags`). Default: keep them.
    max_noise_ratio : float, optional
        Leave out cutouts whose noise is more than this many times the median noise of
        their mosaic and window size (too-noisy regions). Default: keep them.
    output_path : Path, optional
        Parent directory of the run directory; default the first input's.
    force : bool
        Recompute even if an identical finished run exists.

    Returns
    -------
    StepRun
    """
    noise = _noise_options(min_peak_snr, max_noise_ratio)
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
    if not any(t.num_rows for t in tables):
        names = ", ".join(r.run_id for r in runs)
        raise InvalidArgumentError(
            f"--cutouts-id: {names} hold no cutouts at all, so there is nothing to merge "
            "(every mosaic was smaller than the window or blank; see the cutting log)"
        )
    mosaics = pd.concat([_source_mosaics(r) for r in runs], ignore_index=True)
    if dedup_sky is None:
        dedup_sky = any(_has_sky(t) for t in tables)
    root = Path(output_path).resolve() if output_path else runs[0].output_dir.parent.parent
    params = {
        "cutouts_id": [r.run_id for r in runs],
        "dedup_sky": dedup_sky,
        "output_path": str(root),
    }
    params.update(noise)  # only those given: the run keys of earlier versions stay
    with tracked_step(STEP, params, input_run_ids=ids, output_root=root, force=force) as run:
        if run.reused:
            return run
        run.remove_temporaries()  # of an interrupted attempt
        try:
            _merge_into(run, runs, tables, mosaics, dedup_sky, noise)
        except BaseException:  # a full disk, SIGTERM: no partial file left behind
            run.remove_temporaries()
            raise
    return run


def _merge_into(
    run: StepRun,
    runs: Sequence[RunRecord],
    tables: list[pa.Table],
    mosaics: pd.DataFrame,
    dedup_sky: bool,
    noise: dict[str, float],
) -> None:
    """Join, de-duplicate, filter and write the merged tables into ``run.output_dir``."""
    merged = pa.concat_tables(tables).unify_dictionaries()
    n_before = merged.num_rows
    if dedup_sky:
        keep = sky_duplicates_mask(merged, mosaics, _strides(runs))
        merged = merged.filter(pa.array(keep))
    n_deduplicated = merged.num_rows
    flag_counts: dict[str, int] = {}
    if noise:
        merged, flag_counts = _drop_noise_flagged(merged, noise)
    ids_column = pa.array(np.arange(merged.num_rows, dtype=np.int64))
    merged = merged.add_column(0, pa.field("cutout_id", pa.int64()), ids_column)
    write_parquet_atomic(mosaics, run.output_dir / MOSAICS)
    _write_table_atomic(merged, run.output_dir / MANIFEST)
    sizes, counts = np.unique(_numpy(merged["window_size"]), return_counts=True)
    run.log_metrics(
        {
            "n_cutouts": merged.num_rows,
            "n_inputs": len(runs),
            "n_sky_duplicates_dropped": n_before - n_deduplicated,
            **flag_counts,
            **{f"n_cutouts_w{int(w)}": int(n) for w, n in zip(sizes, counts, strict=True)},
        }
    )
    log.info(
        "merged %d cutout runs: %d cutouts (%d sky duplicates dropped%s) in %s",
        len(runs),
        merged.num_rows,
        n_before - n_deduplicated,
        "".join(
            f", {n} {name.removeprefix('n_').replace('_', ' ')}" for name, n in flag_counts.items()
        ),
        run.output_dir,
    )


def _noise_options(min_peak_snr: float | None, max_noise_ratio: float | None) -> dict[str, float]:
    """Return the noise filters asked for, checked (one line for a value out of range)."""
    options = {}
    if min_peak_snr is not None:
        options["min_peak_snr"] = check_real("--min-peak-snr", min_peak_snr, 0.0)
    if max_noise_ratio is not None:
        options["max_noise_ratio"] = check_real("--max-noise-ratio", max_noise_ratio, 1.0)
    return options


def _drop_noise_flagged(table: pa.Table, noise: dict[str, float]) -> tuple[pa.Table, dict]:
    """Leave out empty and too-noisy cutouts; return the table and the counts dropped."""
    from astrocurate.algorithms.noise_flags import NOISE_COLUMNS, flag_noise

    columns = {name: _numpy(table[name]) for name in NOISE_COLUMNS}
    # group = (mosaic, window size) as one integer, from the text column's dictionary codes
    mosaic = _numpy(_dictionary(table["mosaic_path"]).combine_chunks().indices).astype(np.int64)
    window = _numpy(table["window_size"]).astype(np.int64)
    groups = mosaic * (int(window.max(initial=0)) + 1) + window
    flags = flag_noise(columns, groups, noise.get("min_peak_snr"), noise.get("max_noise_ratio"))
    counts = {}
    if flags.empty is not None:
        counts["n_empty_dropped"] = int(flags.empty.sum())
    if flags.noisy is not None:
        counts["n_noisy_dropped"] = int(flags.noisy.sum())
    return table.filter(pa.array(~flags.flagged)), counts


def _source_table(record: RunRecord) -> pa.Table:
    """Read one cutout run's manifest with absolute pixel references and its provenance.

    Returns an Arrow table with the merged manifest's columns but ``cutout_id``; text
    columns stay dictionary-encoded (a few distinct values: one per mosaic or run), so
    millions of rows are never turned into Python or Arrow strings one by one.
    """
    path = record.output_dir / MANIFEST
    if not path.is_file():
        raise CutoutStoreError(f"{path}: no cutout manifest (is this a cutout or merge run?)")
    text = [c for c in MANIFEST_COLUMNS if MANIFEST_TYPES[c] == pa.string()]
    present = set(pq.read_schema(path).names)
    table = pq.read_table(
        path, columns=[c for c in MANIFEST_COLUMNS if c in present], read_dictionary=text
    )
    for name in COMPANION_COLUMNS:  # a manifest written before they existed
        if name not in present:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
    columns = {
        "source_run_id": _constant(record.run_id, table.num_rows),
        "source_cutout_id": table["cutout_id"],
        **{c: table[c] for c in MANIFEST_COLUMNS[1:]},
    }
    for name in text:
        columns[name] = _dictionary(columns[name])
    base = str(record.output_dir) + "/"
    columns["array_file"] = pa.chunked_array(
        [
            pa.DictionaryArray.from_arrays(
                chunk.indices, pc.binary_join_element_wise(base, chunk.dictionary, "")
            )
            for chunk in columns["array_file"].chunks
        ],
        type=_TEXT_TYPE,
    )
    schema = pa.schema([(c, _TEXT_TYPE if c in text else MERGED_TYPES[c]) for c in columns])
    return pa.table(columns, schema=schema)


#: In-memory type of text columns; written to Parquet as plain strings (``store_schema``
#: off), so readers see :data:`MERGED_TYPES`.
_TEXT_TYPE = pa.dictionary(pa.int32(), pa.string())


def _dictionary(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Return a text column as ``dictionary<int32, string>``."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column.cast(pa.string()))
    return column.cast(_TEXT_TYPE)


def _constant(value: str, n: int) -> pa.ChunkedArray:
    """Return a text column of ``n`` copies of ``value`` (dictionary-encoded)."""
    indices = pa.array(np.zeros(n, dtype=np.int32))
    return pa.chunked_array([pa.DictionaryArray.from_arrays(indices, pa.array([value]))])


def _has_sky(table: pa.Table) -> bool:
    """Whether any cutout has a right ascension (not null, not NaN)."""
    ra = _numpy(table["ra"])
    return bool(ra.size and not np.isnan(ra).all())


def _numpy(column: Any) -> np.ndarray:
    """Return a column (Arrow, pandas or array-like) as a numpy array (nulls as NaN)."""
    if isinstance(column, pa.ChunkedArray | pa.Array):
        return column.to_numpy(zero_copy_only=False)
    return np.asarray(column)


#: Numeric manifest columns with few distinct values (dictionary-encoded in Parquet).
_FEW_VALUES = ("window_size", "x0", "y0")


def _write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write an Arrow table to Parquet (zstd) under a temporary name, fsync it, rename it.

    Without the Arrow schema in the file, dictionary-encoded text reads back as plain
    strings (it is stored as Parquet strings with dictionary pages either way). Only
    columns with few distinct values get dictionary pages (trying them on millions of
    distinct floats costs time for nothing).
    """
    few = [
        n
        for n in table.column_names
        if n in _FEW_VALUES or pa.types.is_dictionary(table.schema.field(n).type)
    ]
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", store_schema=False, use_dictionary=few)


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


def sky_duplicates_mask(cutouts: Any, mosaics: pd.DataFrame, strides: dict[int, int]) -> np.ndarray:
    """Return a boolean mask of the cutouts to keep after sky de-duplication.

    See the module notes for the rule.

    Parameters
    ----------
    cutouts : pyarrow.Table or DataFrame
        Rows with ``window_size``, ``mosaic_path``, ``x0``, ``y0``, ``ra``, ``dec``,
        ``pixel_scale_arcsec``.
    mosaics : DataFrame
        Rows with ``mosaic_path``, ``centre_ra``, ``centre_dec``.
    strides : dict of int to int
        Window stride in pixels per window size.

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    sizes = _numpy(cutouts["window_size"])
    ra = _numpy(cutouts["ra"]).astype(np.float64)
    dec = _numpy(cutouts["dec"]).astype(np.float64)
    scale = _numpy(cutouts["pixel_scale_arcsec"]).astype(np.float64)
    keep = np.ones(len(sizes), dtype=bool)
    has_sky = np.isfinite(ra) & np.isfinite(dec)
    if not has_sky.any():
        return keep
    codes, names = _path_codes(cutouts["mosaic_path"])
    centres = mosaics.drop_duplicates("mosaic_path").set_index("mosaic_path")
    centre = _unit_vectors(
        centres["centre_ra"].reindex(names).to_numpy(np.float64),
        centres["centre_dec"].reindex(names).to_numpy(np.float64),
    )
    x0, y0 = _numpy(cutouts["x0"]), _numpy(cutouts["y0"])
    for size in np.unique(sizes):
        rows = np.flatnonzero((sizes == size) & has_sky)
        if np.count_nonzero(np.bincount(codes[rows], minlength=len(names))) < 2:
            continue
        scale_arcsec = float(np.nanmedian(scale[rows]))
        radius = np.radians(0.5 * strides[int(size)] * scale_arcsec / 3600)
        sky = _Sky(_unit_vectors(ra[rows], dec[rows]), codes[rows], centre, x0[rows], y0[rows])
        keep[rows[_same_sky_losers(sky, radius)]] = False
    return keep


class _Sky:
    """Cutouts of one window size with sky positions, as arrays."""

    def __init__(
        self, points: np.ndarray, codes: np.ndarray, centre: np.ndarray, x0: Any, y0: Any
    ) -> None:
        self.points = points  # (n, 3) unit vectors of the cutout centres
        self.codes = codes  # (n,) mosaic codes, in mosaic path order
        self.centre = centre  # (n_mosaics, 3) unit vectors of the mosaic centres
        self.x0, self.y0 = x0, y0
        self.closeness = np.einsum("ij,ij->i", points, centre[codes])  # cos(dist to centre)


def _path_codes(paths: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (codes, names): codes index the sorted distinct mosaic paths."""
    if isinstance(paths, pa.Array):
        paths = pa.chunked_array([paths])
    if isinstance(paths, pa.ChunkedArray):
        paths = _dictionary(paths).unify_dictionaries()
        chunks = paths.chunks
        if not chunks:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object)
        names = np.asarray(chunks[0].dictionary.to_pylist(), dtype=object)
        indices = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks])
        order = np.argsort(names, kind="stable")
        recode = np.empty(len(names), dtype=np.int64)
        recode[order] = np.arange(len(names))
        return recode[indices.astype(np.int64)], names[order]
    codes, names = pd.factorize(pd.Series(paths).astype(str), sort=True)
    return codes, np.asarray(names, dtype=object)


def _same_sky_losers(sky: _Sky, radius: float) -> np.ndarray:
    """Return which cutouts of one window size to drop (bool, one per cutout of ``sky``).

    ``radius`` is half a stride in radians.
    """
    from scipy.spatial import cKDTree

    n = len(sky.codes)
    drop = np.zeros(n, dtype=bool)
    candidates = np.flatnonzero(_near_another_mosaic(sky, radius))
    if len(candidates) < 2:
        return drop
    tree = cKDTree(sky.points[candidates], balanced_tree=False, compact_nodes=False)
    pairs = candidates[tree.query_pairs(2 * np.sin(radius / 2), output_type="ndarray")]
    pairs = pairs[sky.codes[pairs[:, 0]] != sky.codes[pairs[:, 1]]]
    if not len(pairs):
        return drop
    nodes, local = np.unique(pairs, return_inverse=True)  # rank only cutouts in pairs
    order = np.lexsort((sky.x0[nodes], sky.y0[nodes], sky.codes[nodes], -sky.closeness[nodes]))
    rank = np.empty(len(nodes), dtype=np.int64)
    rank[order] = np.arange(len(nodes))
    drop[nodes[_greedy_suppression(local.reshape(-1, 2), rank)]] = True
    return drop


#: Mosaics with more possibly overlapping mosaics than this are not pre-filtered.
_MAX_NEIGHBOURS = 64
#: Angular slack (radians) in the pre-filter's comparisons, far above rounding.
_SLACK = 1e-9


def _near_another_mosaic(sky: _Sky, radius: float) -> np.ndarray:
    """Return which cutouts may show the same sky as a cutout of another mosaic.

    A cutout of mosaic ``A`` can have a partner in mosaic ``B`` only if it lies within
    ``reach(B) + radius`` of ``B``'s centre, where ``reach(B)`` is the distance from
    ``B``'s centre to its farthest cutout (triangle inequality), and ``B`` can overlap
    ``A`` only if their centres are within ``reach(A) + reach(B) + radius``. Exact: no
    same-sky pair is missed.
    """
    n = len(sky.codes)
    groups = _ByCode(sky.codes)
    if not np.isfinite(sky.centre[groups.codes]).all():
        return np.ones(n, dtype=bool)  # a mosaic centre is unknown: no pre-filter
    chord = np.linalg.norm(sky.points - sky.centre[sky.codes], axis=1)
    reach = np.zeros(len(sky.centre))
    reach[groups.codes] = groups.maximum(2 * np.arcsin(np.minimum(chord / 2, 1.0)))
    neighbours = _overlapping_mosaics(sky.centre, reach, groups.codes, radius)
    limit = np.cos(np.minimum(reach + radius + _SLACK, np.pi))
    candidate = np.zeros(n, dtype=bool)
    for code, rows in groups:
        others = neighbours[code]
        if len(others) > _MAX_NEIGHBOURS:
            candidate[rows] = True
        elif len(others):
            cosines = sky.points[rows] @ sky.centre[others].T
            candidate[rows[(cosines >= limit[others]).any(axis=1)]] = True
    return candidate


class _ByCode:
    """Rows grouped by code: ``codes`` (present, sorted) and, iterated, (code, rows)."""

    def __init__(self, codes: np.ndarray) -> None:
        self.order = np.argsort(codes, kind="stable")
        ordered = codes[self.order]
        self.starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.codes = ordered[self.starts]

    def maximum(self, values: np.ndarray) -> np.ndarray:
        """Return the largest value of each group, in the order of ``codes``."""
        return np.maximum.reduceat(values[self.order], self.starts)

    def __iter__(self):
        stops = np.r_[self.starts[1:], len(self.order)]
        for code, start, stop in zip(self.codes, self.starts, stops, strict=True):
            yield int(code), self.order[start:stop]


def _overlapping_mosaics(
    centre: np.ndarray, reach: np.ndarray, index: np.ndarray, radius: float
) -> list[np.ndarray]:
    """For each mosaic, the other mosaics whose cutouts may be within ``radius`` of its own.

    Only the mosaics ``index`` (those with cutouts) are considered.
    """
    from scipy.spatial import cKDTree

    neighbours: list[list[int]] = [[] for _ in range(len(centre))]
    widest = min(2 * reach[index].max() + radius + _SLACK, np.pi)
    pairs = cKDTree(centre[index]).query_pairs(2 * np.sin(widest / 2), output_type="ndarray")
    a, b = index[pairs[:, 0]], index[pairs[:, 1]]
    dist = 2 * np.arcsin(np.minimum(np.linalg.norm(centre[a] - centre[b], axis=1) / 2, 1.0))
    near = dist <= reach[a] + reach[b] + radius + _SLACK
    for i, j in zip(a[near].tolist(), b[near].tolist(), strict=True):
        neighbours[i].append(j)
        neighbours[j].append(i)
    return [np.asarray(nb, dtype=np.int64) for nb in neighbours]


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
