"""Report galleries: cutouts of the largest and smallest clusters, as stretched PNGs."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from astrocurate.io.cutout_store import read_manifest_rows
from astrocurate.stages.curated_sampling.report_data import LevelCounts, SamplingRun

__all__ = [
    "ASINH_SOFTENING",
    "PIXEL_COLUMNS",
    "STRETCH_PERCENTILES",
    "THUMBNAIL_PX",
    "Gallery",
    "Thumbnail",
    "asinh_stretch",
    "build_galleries",
    "gallery_clusters",
    "pick_gallery_rows",
    "quality_galleries",
    "thumbnail_png",
]

#: Percentiles of each cutout mapped to black and white before the asinh stretch.
STRETCH_PERCENTILES = (0.5, 99.5)
#: Softening ``a`` of the stretch ``asinh(a x) / asinh(a)`` (larger: more faint-end contrast).
ASINH_SOFTENING = 10.0
#: Thumbnails wider than this are downsampled (area average) to it before encoding.
THUMBNAIL_PX = 96
#: Columns of the merged manifest that reading pixels (and truth classes) needs.
PIXEL_COLUMNS = (
    "cutout_id",
    "mosaic",
    "mosaic_path",
    "window_size",
    "x0",
    "y0",
    "nan_fraction",
    "store",
    "array_file",
    "array_row",
)


def asinh_stretch(
    image: np.ndarray,
    percentiles: tuple[float, float] = STRETCH_PERCENTILES,
    softening: float = ASINH_SOFTENING,
) -> np.ndarray:
    """Map a cutout to 8-bit grey: clip to its percentiles, then an asinh stretch.

    ``x = clip((v - lo) / (hi - lo), 0, 1)`` with ``lo, hi`` the cutout's
    ``percentiles`` of its finite pixels, shown as ``asinh(a x) / asinh(a)``,
    ``a = softening``. Non-finite pixels and constant cutouts are black.

    Parameters
    ----------
    image : numpy.ndarray, shape (h, w)
    percentiles : tuple of float
        Lower and upper percentile (0-100).
    softening : float
        ``a`` > 0.

    Returns
    -------
    numpy.ndarray of uint8, shape (h, w)
    """
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    out = np.zeros(values.shape, dtype=np.uint8)
    if not finite.any():
        return out
    lo, hi = np.percentile(values[finite], percentiles)
    if not hi > lo:
        return out
    scaled = np.clip((np.where(finite, values, lo) - lo) / (hi - lo), 0.0, 1.0)
    stretched = np.arcsinh(softening * scaled) / np.arcsinh(softening)
    return np.round(stretched * 255.0).astype(np.uint8)


def thumbnail_png(image: np.ndarray, max_px: int = THUMBNAIL_PX) -> bytes:
    """Encode a cutout as a grey PNG, stretched by :func:`asinh_stretch`.

    Cutouts wider than ``max_px`` are area-averaged down by an integer factor first.
    Rows are flipped so that the image shows FITS-style (origin at the lower left).
    """
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    factor = int(np.ceil(max(values.shape) / max_px))
    if factor > 1:
        h, w = (values.shape[0] // factor) * factor, (values.shape[1] // factor) * factor
        values = values[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    grey = asinh_stretch(values)[::-1]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grey), mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@dataclass
class Thumbnail:
    """One gallery cutout."""

    cutout_id: int
    window_size: int
    curated: bool
    truth_class: str | None
    png: bytes


@dataclass
class Gallery:
    """Cutouts of one top-level cluster."""

    cluster: int
    kind: str  # "largest" or "smallest"
    rank: int
    pool_count: int
    curated_count: int
    thumbnails: list[Thumbnail]
    title: str | None = None  # a quality gallery's own title (outliers, near-duplicates)


def gallery_clusters(pool_counts: np.ndarray, n: int) -> list[tuple[str, int, int]]:
    """Return the ``n`` largest and ``n`` smallest non-empty clusters as ``(kind, rank, id)``.

    Ranks count from 1 among the non-empty clusters, largest first; with fewer than
    ``2 n`` non-empty clusters the two lists share them out without repeats.
    """
    nonempty = np.flatnonzero(pool_counts > 0)
    order = nonempty[np.lexsort((nonempty, -pool_counts[nonempty]))]
    n_large = min(n, len(order))
    n_small = min(n, len(order) - n_large)
    largest = [("largest", r + 1, int(c)) for r, c in enumerate(order[:n_large])]
    small_ranks = range(len(order) - n_small, len(order))
    smallest = [("smallest", r + 1, int(order[r])) for r in reversed(small_ranks)]
    return largest + smallest


def pick_gallery_rows(
    members: np.ndarray, selected: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Choose up to ``size`` cluster members: about half curated, the rest not.

    A plain random pick would seldom show a curated cutout of a large cluster (balanced
    sampling thins those out), so curated members fill up to half the gallery and
    others the rest; either side fills the other's unused places.

    Returns
    -------
    rows : numpy.ndarray of int64
        Chosen feature rows: curated ones first, each part sorted.
    curated : numpy.ndarray of bool
        Whether each chosen row is in the curated sample.
    """
    inside = np.isin(members, selected, assume_unique=True)
    cur, other = members[inside], members[~inside]
    n_cur = min(len(cur), max(size - len(other), (size + 1) // 2))
    n_other = min(len(other), size - n_cur)
    take_cur = np.sort(rng.choice(cur, n_cur, replace=False)) if n_cur else cur[:0]
    take_other = np.sort(rng.choice(other, n_other, replace=False)) if n_other else other[:0]
    rows = np.concatenate([take_cur, take_other]).astype(np.int64)
    return rows, np.arange(len(rows)) < n_cur


def build_galleries(
    run: SamplingRun,
    top_counts: LevelCounts,
    *,
    n_clusters: int,
    size: int,
    rng: np.random.Generator,
) -> list[Gallery]:
    """Read and encode the gallery cutouts of the largest and smallest top-level clusters."""
    labels = run.point_labels[run.top - 1]
    picks = []
    for kind, rank, cluster in gallery_clusters(top_counts.counts["pool"], n_clusters):
        members = _members(labels, cluster)
        rows, curated = pick_gallery_rows(members, run.selected, size, rng)
        picks.append((kind, rank, cluster, rows, curated))
    all_rows = np.unique(np.concatenate([p[3] for p in picks])) if picks else np.empty(0, np.int64)
    images, classes = _read_cutouts(run.merged_dir, all_rows)
    galleries = []
    for kind, rank, cluster, rows, curated in picks:
        thumbs = [
            Thumbnail(
                cutout_id=int(row),
                window_size=int(images[int(row)].shape[0]),
                curated=bool(flag),
                truth_class=classes.get(int(row)),
                png=thumbnail_png(images[int(row)]),
            )
            for row, flag in zip(rows, curated, strict=True)
        ]
        galleries.append(
            Gallery(
                cluster=cluster,
                kind=kind,
                rank=rank,
                pool_count=int(top_counts.counts["pool"][cluster]),
                curated_count=int(top_counts.counts["curated"][cluster]),
                thumbnails=thumbs,
            )
        )
    return galleries


def quality_galleries(run: SamplingRun, size: int) -> list[Gallery]:
    """Galleries of the run's outliers, near-duplicate pairs and noise-flagged cutouts.

    Only for a run sampled with ``--outliers``, ``--dedup-threshold``, ``--min-peak-snr``
    or ``--max-noise-ratio``: the outliers most anomalous first; the pairs with the highest
    similarity, each the cutout kept followed by the one left out; the empty cutouts with
    the lowest peak S/N and the noisiest ones.
    """
    from astrocurate.stages.curated_sampling.outputs import NEAR_DUPLICATES, OUTLIERS

    picks = _flag_picks(run, size)
    if (run.directory / OUTLIERS).is_file():
        top = pd.read_parquet(run.directory / OUTLIERS).head(size)
        title = f"outliers: the {len(top)} highest isolation-forest scores of the pool"
        picks.append(("outliers", top["cutout_id"].to_numpy(np.int64), title))
    if (run.directory / NEAR_DUPLICATES).is_file():
        pairs = pd.read_parquet(run.directory / NEAR_DUPLICATES)
        pairs = pairs.sort_values(["similarity", "cutout_id"], ascending=[False, True])
        pairs = pairs.head(max(1, size // 2))
        rows = np.column_stack([pairs["duplicate_of"], pairs["cutout_id"]]).ravel()
        title = (
            f"near-duplicates: the {len(pairs)} closest pairs, kept cutout then the left-out one"
        )
        picks.append(("near-duplicates", rows.astype(np.int64), title))
    if not picks:
        return []
    images, classes = _read_cutouts(
        run.merged_dir, np.unique(np.concatenate([p[1] for p in picks]))
    )
    selected = set(np.asarray(run.selected).tolist())
    return [
        Gallery(
            cluster=-1,
            kind=kind,
            rank=0,
            pool_count=len(rows),
            curated_count=sum(int(r) in selected for r in rows),
            thumbnails=[
                Thumbnail(
                    int(r),
                    int(images[int(r)].shape[0]),
                    int(r) in selected,
                    classes.get(int(r)),
                    thumbnail_png(images[int(r)]),
                )
                for r in rows
            ],
            title=title,
        )
        for kind, rows, title in picks
    ]


def _flag_picks(run: SamplingRun, size: int) -> list[tuple[str, np.ndarray, str]]:
    """Empty cutouts (lowest peak S/N first) and too-noisy ones (noisiest first), if flagged."""
    from astrocurate.stages.curated_sampling.outputs import QUALITY_FLAGS

    path = run.directory / QUALITY_FLAGS
    if not path.is_file():
        return []
    flags = pd.read_parquet(path)
    picks = []
    empty = flags[flags["empty"]].sort_values("peak_snr_local", na_position="first")
    if len(empty):
        title = f"empty sky: {len(empty)} left out, the {min(size, len(empty))} faintest"
        picks.append(("empty", empty["cutout_id"].to_numpy(np.int64)[:size], title))
    noisy = flags[flags["noisy"]].sort_values("noise_ratio", ascending=False)
    if len(noisy):
        title = (
            f"too noisy: {len(noisy)} left out, the {min(size, len(noisy))} noisiest "
            f"(up to {noisy['noise_ratio'].max():.2f}x their mosaic's median noise)"
        )
        picks.append(("noisy", noisy["cutout_id"].to_numpy(np.int64)[:size], title))
    return picks


def _members(labels: np.ndarray, cluster: int) -> np.ndarray:
    """Feature rows of one cluster, scanning the labels in chunks."""
    chunk = 1 << 22
    parts = [
        start + np.flatnonzero(np.asarray(labels[start : start + chunk]) == cluster)
        for start in range(0, len(labels), chunk)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def _read_cutouts(
    merged_dir: Path, rows: np.ndarray
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Pixels (and truth classes, with a catalogue) of some merged cutouts, by cutout ID."""
    from astrocurate.io.cutout_store import MOSAICS, CutoutReader
    from astrocurate.io.labels import truth_labels_for_manifest

    table = read_manifest_rows(merged_dir, rows, PIXEL_COLUMNS)
    mosaics_path = Path(merged_dir) / MOSAICS
    mosaics = pd.read_parquet(mosaics_path) if mosaics_path.is_file() else None
    reader = CutoutReader(table, Path(merged_dir), mosaics, max_open=8)
    try:
        images = {int(row): reader[i] for i, row in enumerate(rows)}
    finally:
        reader.close()
    labels = truth_labels_for_manifest(table) if len(table) else None
    classes = {} if labels is None else {int(r): str(c) for r, c in zip(rows, labels, strict=True)}
    return images, classes
