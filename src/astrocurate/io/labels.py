"""Truth labels of cutouts: a survey's source catalogue and the class of each cutout.

The synthetic survey (:mod:`astrocurate.synthetic.survey`) writes ``truth_catalogue.parquet``
beside its mosaics; the features, sampling and report steps read it from here to score
their outputs against the truth, when a survey has one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

CLASS_NAMES: tuple[str, ...] = ("point", "double", "diffuse", "artefact")
"""Source classes, from the most to the least common."""


CATALOGUE_COLUMNS: tuple[str, ...] = (
    "source_id",
    "class",
    "ra",
    "dec",
    "flux_jy",
    "peak_snr",
    "size_arcsec",
    "pa_deg",
    "mosaic",
    "mosaic_path",
    "x",
    "y",
)
"""Columns of the truth catalogue, in order."""

CATALOGUE_NAME = "truth_catalogue.parquet"


def load_truth_catalogue(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a survey's truth catalogue.

    Parameters
    ----------
    path : str or path-like
        The survey directory, or its ``truth_catalogue.parquet`` or ``.csv``.

    Returns
    -------
    pandas.DataFrame
        One row per (source, mosaic) with the columns of :data:`CATALOGUE_COLUMNS`:
        ``source_id`` (int, survey-wide), ``class``, ``ra``/``dec`` (deg, ICRS),
        ``flux_jy`` (total), ``peak_snr`` (model peak over noise rms), ``size_arcsec``
        (point: beam FWHM; double: lobe separation; diffuse: major axis or arc length;
        artefact: pattern diameter), ``pa_deg`` (east of north; NaN for points),
        ``mosaic`` (name), ``mosaic_path`` (relative to the survey directory), ``x``,
        ``y`` (0-based column and row of the source centre: ``data[round(y), round(x)]``).

    Raises
    ------
    FileNotFoundError
        If there is no catalogue at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CATALOGUE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no truth catalogue at {str(path)!r}")
    if path.suffix == ".csv":
        table = pd.read_csv(path, dtype={"class": str, "mosaic": str, "mosaic_path": str})
    else:
        table = pd.read_parquet(path)
    return table.loc[:, list(CATALOGUE_COLUMNS)].astype({"source_id": "int64"})


#: Label of a cutout that holds no catalogued source.
EMPTY_LABEL = "empty"


def find_truth_catalogue(mosaic_paths: Sequence[str | os.PathLike[str]]) -> Path | None:
    """Return the truth catalogue of the survey the mosaics belong to, if there is one.

    Looks in the mosaics' folders and up to two folders above them (the LoTSS layout
    puts each mosaic in its own folder).
    """
    for mosaic in list(dict.fromkeys(str(p) for p in mosaic_paths))[:3]:
        for folder in list(Path(mosaic).resolve().parents)[:3]:
            if (folder / CATALOGUE_NAME).is_file():
                return folder / CATALOGUE_NAME
    return None


def label_cutouts(manifest: pd.DataFrame, catalogue_path: str | os.PathLike[str]) -> np.ndarray:
    """Give each cutout the class of the rarest catalogued source inside it.

    Classes rank from common to rare as in :data:`CLASS_NAMES`; a cutout holding
    sources of several classes takes the rarest, one holding none is
    :data:`EMPTY_LABEL`. A source is inside when its rounded pixel position lies in
    ``[x0, x0 + w) x [y0, y0 + w)`` of the cutout's mosaic.

    Parameters
    ----------
    manifest : DataFrame
        Cutouts with ``mosaic_path``, ``window_size``, ``x0``, ``y0``.
    catalogue_path : path-like
        The survey's ``truth_catalogue.parquet``.

    Returns
    -------
    ndarray of str, shape (n,)
    """
    catalogue = load_truth_catalogue(catalogue_path)
    survey_dir = Path(catalogue_path).resolve().parent
    rank = {name: i + 1 for i, name in enumerate(CLASS_NAMES)}
    source_mosaic = np.array([str((survey_dir / p).resolve()) for p in catalogue["mosaic_path"]])
    best = np.zeros(len(manifest), dtype=np.int8)
    groups = manifest.groupby([manifest["mosaic_path"].astype(str), "window_size"], observed=True)
    for (mosaic, size), group in groups:
        sources = catalogue[source_mosaic == str(Path(mosaic).resolve())]
        if sources.empty:
            continue
        sx = np.rint(sources["x"].to_numpy()).astype(np.int64)
        sy = np.rint(sources["y"].to_numpy()).astype(np.int64)
        priority = sources["class"].map(rank).to_numpy(dtype=np.int8)
        rows = group.index.to_numpy()
        x0, y0 = group["x0"].to_numpy(), group["y0"].to_numpy()
        for start in range(0, len(sx), 256):
            part = slice(start, start + 256)
            inside = (
                (sx[part, None] >= x0)
                & (sx[part, None] < x0 + size)
                & (sy[part, None] >= y0)
                & (sy[part, None] < y0 + size)
            )
            found = np.where(inside, priority[part, None], 0).max(axis=0)
            best[rows] = np.maximum(best[rows], found)
    names = np.array([EMPTY_LABEL, *CLASS_NAMES], dtype=object)
    return names[best]


def truth_labels_for_manifest(manifest: pd.DataFrame) -> np.ndarray | None:
    """Return :func:`label_cutouts` for a manifest whose survey has a truth catalogue, else None."""
    if manifest.empty:
        return None
    catalogue = find_truth_catalogue(manifest["mosaic_path"].astype(str).unique()[:3])
    return None if catalogue is None else label_cutouts(manifest.reset_index(drop=True), catalogue)
