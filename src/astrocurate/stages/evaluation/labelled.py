"""The labelled cutouts an evaluation scores encoders on, and their pixels.

Labels come from a user's label file (:mod:`astrocurate.io.label_files`: a CSV of
``file_path,categories``, ``cutout_id[,run_id],categories`` or
``mosaic,x0,y0,window_size,categories``) or, without one, from the survey's truth
catalogue (:mod:`astrocurate.io.labels`, the synthetic survey's). Either way they are
matched to rows of the merged manifest the sample was drawn from, and at most
``max_per_category`` cutouts are kept per category (the rarest category of a cutout
counts), drawn with a fixed seed so that every arm and seed scores the same cutouts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from astrocurate import steps
from astrocurate.algorithms.probes import primary_strata, rarest_category
from astrocurate.algorithms.ssl import resize_raw, robust_rms
from astrocurate.errors import InvalidArgumentError
from astrocurate.io.cutout_store import (
    MOSAICS,
    CutoutReader,
    read_manifest,
    read_manifest_rows,
)
from astrocurate.io.label_files import categories_matrix, match_labels, read_label_file
from astrocurate.io.labels import EMPTY_LABEL, truth_labels_for_manifest
from astrocurate.stages.evaluation.outputs import TRUTH

log = logging.getLogger(__name__)

#: Manifest columns kept for the labelled cutouts (positions, footprints, sky).
POSITION_COLUMNS = (
    "cutout_id",
    "mosaic",
    "mosaic_path",
    "window_size",
    "x0",
    "y0",
    "ra",
    "dec",
    "pixel_scale_arcsec",
)

#: ``LabelledSet.source`` of labels from the survey's truth catalogue.

#: Seed of the draw of at most ``max_per_category`` cutouts per category.
SUBSAMPLE_SEED = 0


@dataclass(frozen=True)
class LabelledSet:
    """Labelled cutouts of a merged manifest.

    Attributes
    ----------
    table : DataFrame
        One row per cutout: ``row`` (merged manifest row), :data:`POSITION_COLUMNS` and
        ``categories`` (the categories joined by ``;``).
    labels : ndarray of bool, shape (m, C)
        Multi-hot categories, columns in the order of ``categories``.
    categories : tuple of str
        Category names, most frequent first.
    source : str
        ``"truth catalogue"`` or the label file's path.
    unmatched : int
        Labels of the file that point at no cutout of the merged manifest.
    """

    table: pd.DataFrame
    labels: np.ndarray
    categories: tuple[str, ...]
    source: str
    unmatched: int = 0

    @property
    def rarest(self) -> str:
        """Return the rarest category (of the truth catalogue, the rarest source class)."""
        keep = [name != EMPTY_LABEL or self.source != TRUTH for name in self.categories]
        names = tuple(n for n, k in zip(self.categories, keep, strict=True) if k)
        return rarest_category(self.labels[:, keep], names)

    @property
    def rows(self) -> np.ndarray:
        """Merged manifest row of each labelled cutout."""
        return self.table["row"].to_numpy(dtype=np.int64)

    def footprint_radius_deg(self) -> np.ndarray:
        """Half the diagonal of each cutout on the sky, in degrees (its footprint's disc)."""
        side = self.table["window_size"].to_numpy(float) * self.table["pixel_scale_arcsec"]
        return np.asarray(side, dtype=np.float64) * np.sqrt(0.5) / 3600.0


def labelled_set(merged_dir: Path, label_file: Path | None, max_per_category: int) -> LabelledSet:
    """Return the labelled cutouts of a merged run, from ``label_file`` or the truth catalogue.

    Raises
    ------
    InvalidArgumentError
        When there are no labels (no file and no truth catalogue), when the file points at
        no cutout, or when fewer than two categories remain.
    """
    manifest = read_manifest(merged_dir, list(POSITION_COLUMNS))
    if label_file is not None:
        table = read_label_file(label_file)
        rows, categories, unmatched = match_labels(
            table,
            manifest,
            source=str(label_file),
            run_manifests=_run_manifests(table, label_file),
        )
        source = str(label_file)
    else:
        truth = truth_labels_for_manifest(manifest)
        if truth is None:
            raise InvalidArgumentError(
                f"--labels: the survey of {merged_dir} has no truth catalogue; pass --labels "
                "FILE (a CSV of file_path,categories or cutout_id,categories)"
            )
        rows = np.arange(len(manifest), dtype=np.int64)
        categories, unmatched, source = [(str(c),) for c in truth], 0, TRUTH
    labels, names = categories_matrix(list(categories))
    keep = _subsample(labels, names, max_per_category)
    labels = labels[keep]
    present = labels.any(axis=0)
    labels, names = labels[:, present], tuple(n for n, p in zip(names, present, strict=True) if p)
    if len(names) < 2:
        raise InvalidArgumentError(
            f"--labels: {source} gives {len(names)} category ({', '.join(names)}); "
            "a probe needs at least two"
        )
    table = manifest.iloc[rows[keep]].reset_index(drop=True)
    table.insert(0, "row", rows[keep])
    table["categories"] = [
        ";".join(n for n, on in zip(names, r, strict=True) if on) for r in labels
    ]
    if unmatched:
        log.warning("%s: %d labels point at no cutout of the evaluated run", source, unmatched)
    return LabelledSet(table, labels, names, source, unmatched)


def _run_manifests(table: pd.DataFrame, label_file: Path) -> dict[str, pd.DataFrame] | None:
    """Manifests of the cutting_out or merge_cutouts runs named by a ``run_id`` column."""
    run_ids = table["run_id"].dropna().astype(str).unique() if "run_id" in table else []
    if not len(run_ids):
        return None
    from astrocurate.tracking import get_run, require_run

    manifests = {}
    where = f"{label_file} run_id"
    for run_id in run_ids:
        record = get_run(run_id, where)
        cutout_steps = (steps.CUTTING_OUT, steps.MERGE_CUTOUTS)
        step = record.step if record.step in cutout_steps else steps.CUTTING_OUT
        record = require_run(record.run_id, step, where)
        columns = ["cutout_id", "mosaic", "mosaic_path", "window_size", "x0", "y0"]
        manifests[run_id] = read_manifest(record.output_dir, columns)
    return manifests


def _subsample(labels: np.ndarray, names: tuple[str, ...], limit: int) -> np.ndarray:
    """Positions of at most ``limit`` cutouts per (rarest) category, sorted."""
    strata = primary_strata(labels, names)
    rng = np.random.default_rng(SUBSAMPLE_SEED)
    keep = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        if len(members) > limit:
            members = rng.choice(members, limit, replace=False)
        keep.append(members)
    return np.sort(np.concatenate(keep))


def load_pixels(
    merged_dir: Path, rows: np.ndarray, image_size: int, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read cutouts of a merged run, resized to ``image_size``, and their robust rms.

    Parameters
    ----------
    merged_dir : Path
        The merged run directory (its manifest and store).
    rows : ndarray of int
        Merged manifest rows, any window sizes.
    image_size : int
        Side every cutout is resized to (raw pixel values, area-averaged).

    Returns
    -------
    images : Tensor, shape (n, image_size, image_size)
    rms : Tensor, shape (n,)
    """
    rows = np.asarray(rows, dtype=np.int64)
    table = read_manifest_rows(merged_dir, rows)
    mosaics = pd.read_parquet(merged_dir / MOSAICS) if (merged_dir / MOSAICS).is_file() else None
    reader = CutoutReader(table, merged_dir, mosaics)
    images = torch.empty((len(rows), image_size, image_size), dtype=torch.float32)
    for _, group in table.groupby("window_size", sort=True):
        positions = group.index.to_numpy(copy=True)  # writable: pandas' own view is not
        for start in range(0, len(positions), chunk):
            part = positions[start : start + chunk]
            images[part] = resize_raw(torch.tensor(reader.read(part)), image_size)
    return images, robust_rms(images)
