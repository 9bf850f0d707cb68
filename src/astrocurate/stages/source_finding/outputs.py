"""What a ``source_finding`` run leaves, and light readers for later steps.

A source-finding run directory holds::

    sources.parquet              the index: one row per mosaic (see INDEX_COLUMNS)
    catalogues/<stem>.srl.fits   PyBDSF's source list of the mosaic (FITS table, one row
                                 per source: RA, DEC in degrees, fluxes in Jy, sizes ...)
    rms/<stem>.rms.fits          PyBDSF's background rms map, in Jy/beam, on the mosaic's
                                 pixel grid (degenerate FREQ/STOKES axes kept)
    logs/<stem>.pybdsf.log       PyBDSF's own log of the mosaic

``<stem>`` is the mosaic's name (:func:`file_stem`: characters outside letters, digits and
``+._~-`` percent-encoded). Only mosaics with status ``ok`` have a catalogue and an rms map;
a mosaic without any source gets a catalogue with no rows and the main columns.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from astrocurate.errors import InvalidRunError

__all__ = [
    "CATALOGUES_DIR",
    "INDEX",
    "INDEX_COLUMNS",
    "LOGS_DIR",
    "RMS_DIR",
    "catalogue_path",
    "file_stem",
    "log_path",
    "read_catalogue",
    "read_index",
    "read_rms_map",
    "rms_map_path",
]

INDEX = "sources.parquet"
CATALOGUES_DIR = "catalogues"
RMS_DIR = "rms"
LOGS_DIR = "logs"
CATALOGUE_SUFFIX = ".srl.fits"
RMS_SUFFIX = ".rms.fits"
#: Columns of ``sources.parquet``; file paths are relative to the run directory ("" when
#: the mosaic failed).
INDEX_COLUMNS: tuple[str, ...] = (
    "mosaic",
    "mosaic_path",
    "catalogue_file",
    "rms_file",
    "n_sources",
    "status",
    "reason",
    "seconds",
    "bmaj_arcsec",
    "bmin_arcsec",
    "bpa_deg",
    "frequency_hz",
)


def file_stem(mosaic_name: str) -> str:
    """File-name stem of a mosaic's outputs: its name, made safe for any file system.

    Letters, digits and ``+._~-`` are kept, anything else is percent-encoded (``/`` ->
    ``%2F``), so two mosaic names never give the same stem; a leading ``.`` is encoded
    too (hidden and temporary names start with one).

    Parameters
    ----------
    mosaic_name : str
        The mosaic's name (:attr:`astrocurate.io.mosaics.MosaicFile.name`).

    Returns
    -------
    str
        The stem, e.g. ``"P000+23"``.
    """
    stem = quote(mosaic_name, safe="+~")
    return "%2E" + stem[1:] if stem.startswith(".") else stem


def catalogue_path(run_dir: Path | str, mosaic_name: str) -> Path:
    """Path of a mosaic's PyBDSF source list (``catalogues/<stem>.srl.fits``)."""
    return Path(run_dir) / CATALOGUES_DIR / f"{file_stem(mosaic_name)}{CATALOGUE_SUFFIX}"


def rms_map_path(run_dir: Path | str, mosaic_name: str) -> Path:
    """Path of a mosaic's PyBDSF rms map (``rms/<stem>.rms.fits``)."""
    return Path(run_dir) / RMS_DIR / f"{file_stem(mosaic_name)}{RMS_SUFFIX}"


def log_path(run_dir: Path | str, mosaic_name: str) -> Path:
    """Path of PyBDSF's log of a mosaic (``logs/<stem>.pybdsf.log``)."""
    return Path(run_dir) / LOGS_DIR / f"{file_stem(mosaic_name)}.pybdsf.log"


def read_index(run_dir: Path | str) -> pd.DataFrame:
    """Read ``sources.parquet``: one row per mosaic, columns :data:`INDEX_COLUMNS`.

    Raises
    ------
    InvalidRunError
        When the run directory has no index (not a finished source-finding run).
    """
    path = Path(run_dir) / INDEX
    if not path.is_file():
        raise InvalidRunError(f"{path}: no source index (is this a finished source_finding run?)")
    return pd.read_parquet(path)


def read_catalogue(run_dir: Path | str, mosaic_name: str) -> pd.DataFrame:
    """Read a mosaic's source list as a DataFrame (one row per source, PyBDSF's columns).

    Raises
    ------
    InvalidRunError
        When the mosaic has no catalogue in this run (unknown or failed mosaic).
    """
    from astropy.table import Table

    path = catalogue_path(run_dir, mosaic_name)
    if not path.is_file():
        raise InvalidRunError(f"{path}: no source list for mosaic {mosaic_name!r} in this run")
    table = Table.read(path, format="fits")
    return table.to_pandas()


def read_rms_map(run_dir: Path | str, mosaic_name: str) -> np.ndarray:
    """Read a mosaic's rms map as a 2-D float32 array ``[y, x]`` (NaN where blank).

    Raises
    ------
    InvalidRunError
        When the mosaic has no rms map in this run.
    """
    from astropy.io import fits

    path = rms_map_path(run_dir, mosaic_name)
    if not path.is_file():
        raise InvalidRunError(f"{path}: no rms map for mosaic {mosaic_name!r} in this run")
    with fits.open(path, memmap=False) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float32)
    return data.reshape(data.shape[-2:])
