"""Source catalogues of mosaics: read PyBDSF source lists, find a mosaic's companion files.

:func:`read_catalogue` reads a source list (``.srl``) as PyBDSF writes it, or any table
with the same columns, into one canonical table (:data:`CANONICAL_COLUMNS`):

``ra_deg``, ``dec_deg``
    Position of the source (PyBDSF ``RA``, ``DEC``: the centroid), ICRS degrees.
``total_flux_jy``, ``peak_flux_jy``
    Total and peak flux density (``Total_flux``, ``Peak_flux``) in Jy (the peak in
    Jy/beam); NaN where the table has no such column.
``major_arcsec``
    FWHM of the source's major axis (``Maj``, not the deconvolved ``DC_Maj``) in arcsec;
    NaN where absent.
``s_code``
    PyBDSF source code (``S_Code``): ``"S"`` one Gaussian, ``"M"`` several Gaussians,
    ``"C"`` one Gaussian in an island with other sources; ``""`` where absent or unknown.

File formats, by suffix (case-insensitive; :data:`CATALOGUE_SUFFIXES`):

* FITS binary tables (``.fits``, ``.fit``, ``.fits.gz``, ``.fit.gz``): the first table
  HDU, read with :meth:`astropy.table.Table.read`. A column's ``TUNIT`` is converted
  (``mJy`` -> Jy, ``deg`` -> arcsec ...; upper-case spellings such as ``JY/BEAM`` or
  ``DEG`` too): the LoTSS releases give fluxes in mJy and sizes in arcsec, PyBDSF in Jy
  and degrees.
* Text tables (``.csv``; ``.srl`` and ``.txt`` for PyBDSF's ``ascii`` format): PyBDSF
  writes ``#`` comment lines, then the column names as one more comment line
  (``# Source_id, Isl_id, RA, E_RA, ...``), then the rows. A plain CSV with a header row
  is read too. Columns are separated by commas if the header line has any, by white
  space otherwise.
* Parquet (``.parquet``), e.g. a table written from this module's output.

Without a unit in the file, a column has the unit of PyBDSF's convention
(``bdsf/gaul2srl.py``, the source list's column definitions): degrees for ``RA``,
``DEC`` and ``Maj``, Jy for ``Total_flux``, Jy/beam for ``Peak_flux``; the canonical
names (``major_arcsec``, ``total_flux_jy``, ...) carry their own unit. Column names are
matched case-insensitively against :data:`COLUMN_ALIASES`, first alias first.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate.errors import InvalidArgumentError

__all__ = [
    "CANONICAL_COLUMNS",
    "CATALOGUE_SUFFIXES",
    "COLUMN_ALIASES",
    "read_catalogue",
]

logger = logging.getLogger(__name__)

#: Columns of the table :func:`read_catalogue` returns, in order.
CANONICAL_COLUMNS: tuple[str, ...] = (
    "ra_deg",
    "dec_deg",
    "total_flux_jy",
    "peak_flux_jy",
    "major_arcsec",
    "s_code",
)
#: Accepted names of each canonical column (lower case; matched case-insensitively, first
#: first) with the unit a column of that name has when the file gives none.
COLUMN_ALIASES: dict[str, tuple[tuple[str, str], ...]] = {
    "ra_deg": (("ra", "deg"), ("ra_deg", "deg"), ("raj2000", "deg")),
    "dec_deg": (("dec", "deg"), ("dec_deg", "deg"), ("dej2000", "deg"), ("decj2000", "deg")),
    "total_flux_jy": (("total_flux", "Jy"), ("total_flux_jy", "Jy")),
    "peak_flux_jy": (("peak_flux", "Jy"), ("peak_flux_jy", "Jy")),
    "major_arcsec": (("maj", "deg"), ("major_arcsec", "arcsec")),
    "s_code": (("s_code", ""),),
}
_ALIAS_NAMES = frozenset(alias for aliases in COLUMN_ALIASES.values() for alias, _ in aliases)
#: Units of the canonical numeric columns.
_TARGET_UNITS = {
    "ra_deg": "deg",
    "dec_deg": "deg",
    "total_flux_jy": "Jy",
    "peak_flux_jy": "Jy",
    "major_arcsec": "arcsec",
}
#: Unit names of catalogue columns in other case or spelling (FITS headers often give
#: ``JY/BEAM`` or ``DEG``), lower case -> astropy name; applied to each side of a ``/``.
_UNIT_SPELLINGS = {
    "deg": "deg",
    "degree": "deg",
    "degrees": "deg",
    "arcsec": "arcsec",
    "arcmin": "arcmin",
    "jy": "Jy",
    "mjy": "mJy",
    "ujy": "uJy",
    "beam": "beam",
}
#: PyBDSF source codes kept in ``s_code``; any other value becomes ``""``.
S_CODES: tuple[str, ...] = ("S", "M", "C")

_FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")
_TEXT_SUFFIXES = (".csv", ".srl", ".txt")
_PARQUET_SUFFIXES = (".parquet",)
#: File-name endings :func:`read_catalogue` accepts (case-insensitive).
CATALOGUE_SUFFIXES: tuple[str, ...] = _FITS_SUFFIXES + _TEXT_SUFFIXES + _PARQUET_SUFFIXES

# --------------------------------------------------------------------------- reading


def read_catalogue(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a source list into the canonical table.

    Parameters
    ----------
    path : str or PathLike
        A PyBDSF source list or a table with its columns, in one of the formats of
        :data:`CATALOGUE_SUFFIXES` (module docstring).

    Returns
    -------
    DataFrame
        Columns :data:`CANONICAL_COLUMNS`: float64 except ``s_code`` (str). Rows with a
        NaN RA or DEC are left out (logged); ``attrs["n_dropped"]`` says how many,
        ``attrs["path"]`` is the file.

    Raises
    ------
    InvalidArgumentError
        Missing file, unknown suffix or unreadable table, no RA/DEC columns, RA/DEC not
        numeric, RA outside [0, 360] or DEC outside [-90, 90], a unit that does not convert
        (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"catalogue {path}: no such file")
    names, columns = _read_columns(path)
    table = _canonical_table(names, columns, path)
    keep = ~(np.isnan(table["ra_deg"].to_numpy()) | np.isnan(table["dec_deg"].to_numpy()))
    n_dropped = int(np.count_nonzero(~keep))
    if n_dropped:
        logger.warning("catalogue %s: %d rows without RA/DEC left out", path, n_dropped)
        table = table.loc[keep].reset_index(drop=True)
    _check_positions(table, path)
    table.attrs["n_dropped"] = n_dropped
    table.attrs["path"] = str(path)
    return table


def _suffix_kind(path: Path) -> str | None:
    """``"fits"``, ``"text"``, ``"parquet"`` or None, from the file name's ending."""
    lower = path.name.lower()
    for kind, suffixes in (
        ("fits", _FITS_SUFFIXES),
        ("text", _TEXT_SUFFIXES),
        ("parquet", _PARQUET_SUFFIXES),
    ):
        if lower.endswith(suffixes):
            return kind
    return None


def _read_columns(path: Path) -> tuple[list[str], dict[str, tuple[Any, Any]]]:
    """Read all column names, and name -> (values, astropy unit or None) of aliased columns."""
    kind = _suffix_kind(path)
    if kind is None:
        raise InvalidArgumentError(
            f"catalogue {path}: unknown format; expected one of {', '.join(CATALOGUE_SUFFIXES)}"
        )
    try:
        if kind == "fits":
            return _read_fits_columns(path)
        frame = pd.read_parquet(path) if kind == "parquet" else _read_text_table(path)
    except InvalidArgumentError:
        raise
    except Exception as exc:  # any reader error is the file's fault
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InvalidArgumentError(
            f"catalogue {path}: cannot read it as {kind} ({reason})"
        ) from exc
    names = [str(name) for name in frame.columns]
    wanted = {
        name: (frame[column].to_numpy(), None)
        for name, column in zip(names, frame.columns, strict=True)
        if name.lower() in _ALIAS_NAMES
    }
    return names, wanted


def _read_fits_columns(path: Path) -> tuple[list[str], dict[str, tuple[Any, Any]]]:
    """Column names of the first table HDU of a FITS file, and the aliased columns."""
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(path, memmap=True) as hdul:
        index = next(
            (i for i, hdu in enumerate(hdul) if isinstance(hdu, fits.BinTableHDU | fits.TableHDU)),
            None,
        )
        if index is None:
            raise InvalidArgumentError(f"catalogue {path}: no table HDU in this FITS file")
        table = Table.read(hdul, hdu=index, unit_parse_strict="silent")
        wanted = {
            name: (table[name].copy(), table[name].unit)
            for name in table.colnames
            if name.lower() in _ALIAS_NAMES
        }
    return list(table.colnames), wanted


def _read_text_table(path: Path) -> pd.DataFrame:
    """Read a CSV or PyBDSF ASCII table, with a header row or PyBDSF's commented header."""
    comment, first, n_before = _text_header_lines(path)
    if first is None:
        raise InvalidArgumentError(f"catalogue {path}: no rows and no header line")
    header_is_comment = comment is not None and not _has_ra_column(_split(first))
    header = comment if header_is_comment else first
    sep = "," if "," in header else r"\s+"
    if header_is_comment:
        names = _split(header)
        return pd.read_csv(
            path, sep=sep, skiprows=n_before, header=None, names=names, skipinitialspace=True
        )
    return pd.read_csv(path, sep=sep, skiprows=n_before, header=0, skipinitialspace=True)


def _text_header_lines(path: Path) -> tuple[str | None, str | None, int]:
    """Last ``#`` line (without ``#``), first other non-blank line, lines before that one."""
    comment = None
    with path.open("r", encoding="utf-8", errors="replace") as stream:
        for number, raw in enumerate(stream):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                comment = line.lstrip("#").strip()
                continue
            return comment, line, number
    return comment, None, 0


def _split(header: str) -> list[str]:
    """Column names of a header line: comma- or space-separated."""
    parts = header.split(",") if "," in header else header.split()
    return [part.strip() for part in parts]


def _has_ra_column(names: Sequence[str]) -> bool:
    lower = {name.lower() for name in names}
    return any(alias in lower for alias, _ in COLUMN_ALIASES["ra_deg"])


# --------------------------------------------------------------------------- canonical


def _find_column(columns: dict[str, Any], canonical: str) -> tuple[str, str] | None:
    """(file column name, default unit) of the first alias of ``canonical`` present."""
    by_lower: dict[str, str] = {}
    for name in columns:
        by_lower.setdefault(name.lower(), name)
    for alias, unit in COLUMN_ALIASES[canonical]:
        if alias in by_lower:
            return by_lower[alias], unit
    return None


def _canonical_table(
    names: Sequence[str], columns: dict[str, tuple[Any, Any]], path: Path
) -> pd.DataFrame:
    """Build the canonical columns, converted, from the file's aliased columns."""
    ra, dec = _find_column(columns, "ra_deg"), _find_column(columns, "dec_deg")
    if ra is None or dec is None:
        found = ", ".join(names) or "none"
        raise InvalidArgumentError(
            f"catalogue {path} has no RA/DEC columns (found: {found}); "
            "expected a PyBDSF source list"
        )
    n_rows = len(columns[ra[0]][0])
    out: dict[str, Any] = {}
    for canonical, target in _TARGET_UNITS.items():
        found_column = _find_column(columns, canonical)
        if found_column is None:
            out[canonical] = np.full(n_rows, np.nan)
            continue
        name, default_unit = found_column
        values, unit = columns[name]
        numbers = _float_values(values, name, path, strict=canonical in ("ra_deg", "dec_deg"))
        out[canonical] = numbers * _unit_factor(unit, default_unit, target, name, path)
    code = _find_column(columns, "s_code")
    out["s_code"] = _s_codes(columns[code[0]][0] if code else None, n_rows)
    return pd.DataFrame(out, columns=list(CANONICAL_COLUMNS))


def _float_values(values: Any, name: str, path: Path, *, strict: bool) -> np.ndarray:
    """Values as float64, NaN for masked cells (and, unless ``strict``, for non-numbers).

    Raises
    ------
    InvalidArgumentError
        A column that is not one-dimensional, or not numeric where ``strict`` (RA, DEC)
        or not text either.
    """
    mask = np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) else None
    array = np.asarray(np.ma.getdata(values))
    numeric = array.dtype.kind in "iuf"
    if array.ndim != 1 or not (numeric or (not strict and array.dtype.kind in "OSU")):
        raise InvalidArgumentError(
            f"catalogue {path}: column {name} is not numeric (dtype {array.dtype}, "
            f"shape {array.shape}); expected one number per row"
        )
    if not numeric:
        array = pd.to_numeric(pd.Series(array.astype(str)), errors="coerce").to_numpy()
    numbers = array.astype(np.float64)
    if mask is not None:
        numbers[mask] = np.nan
    return numbers


def _unit_factor(unit: Any, default_unit: str, target: str, name: str, path: Path) -> float:
    """Factor from the column's unit (or ``default_unit``) to ``target``.

    A flux per beam (``Jy/beam``, ``mJy/beam``) counts as a flux: the peak flux is read
    per beam.
    """
    import astropy.units as u

    if unit is None or (isinstance(unit, u.UnitBase) and unit == u.dimensionless_unscaled):
        unit = u.Unit(default_unit)
    if isinstance(unit, u.UnrecognizedUnit):
        unit = _respelled_unit(unit.name) or unit
    if isinstance(unit, u.UnrecognizedUnit):
        raise InvalidArgumentError(
            f"catalogue {path}: column {name} has unknown unit {unit.name!r}; expected a unit "
            f"convertible to {target}"
        )
    if unit.is_equivalent(u.Jy / u.beam):
        unit = unit * u.beam
    try:
        return float(unit.to(target))
    except u.UnitConversionError as exc:
        raise InvalidArgumentError(
            f"catalogue {path}: column {name} in {unit} does not convert to {target}"
        ) from exc


def _respelled_unit(name: str) -> Any:
    """Parse a unit name in other case or spelling (``JY/BEAM``, ``DEG``); None if unknown."""
    import astropy.units as u

    parts = re.split(r"\s*/\s*", name.strip())
    spelled = "/".join(_UNIT_SPELLINGS.get(part.lower(), part) for part in parts)
    try:
        unit = u.Unit(spelled)
    except ValueError:
        return None
    return None if isinstance(unit, u.UnrecognizedUnit) else unit


def _s_codes(values: Any, n_rows: int) -> np.ndarray:
    """Source codes as str, ``""`` for missing or unknown ones."""
    if values is None:
        return np.full(n_rows, "", dtype=object)
    mask = np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) else None
    cells = np.asarray(np.ma.getdata(values))
    if cells.dtype.kind == "S":
        cells = np.char.decode(cells, "ascii", errors="replace")
    codes = np.char.upper(np.char.strip(cells.astype(str)))
    unknown = ~np.isin(codes, S_CODES)
    if mask is not None:
        unknown |= mask
    return np.where(unknown, "", codes).astype(object)


def _check_positions(table: pd.DataFrame, path: Path) -> None:
    """Raise if any RA is outside [0, 360] or DEC outside [-90, 90]."""
    ra, dec = table["ra_deg"].to_numpy(), table["dec_deg"].to_numpy()
    bad = ~((ra >= 0) & (ra <= 360) & (dec >= -90) & (dec <= 90))
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        first = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(
            f"catalogue {path}: {n_bad} rows have RA outside [0, 360] or DEC outside "
            f"[-90, 90] degrees (first: RA={ra[first]!r}, DEC={dec[first]!r})"
        )
