"""A mosaic's companions in the cutting step: its noise (rms) map and its source catalogue.

Both are found in the main process before any work (:func:`find_companions`, paths only,
so that a rerun is keyed and reused without opening a file), beside each mosaic (``auto``:
the LoTSS and PyBDSF names, see :mod:`astrocurate.io.companion_files`), by a pattern, or (a
catalogue) as one survey-wide file. When the step computes, :func:`check_companions` opens
them first, so a map of another shape or WCS, or a catalogue without RA/DEC, stops the run
in one line before anything is written. The workers then add the columns of
:data:`~astrocurate.io.cutout_store.COMPANION_COLUMNS` to each mosaic's cutouts:

* :func:`rms_columns`, band by band beside the image: the map's median over each window
  (``rms_map``) and the peak S/N against it (``peak_snr_map``);
* :func:`catalogue_columns`, once per mosaic: the catalogue's sources inside each window
  (:func:`astrocurate.algorithms.catalogue_match.match_sources`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from astrocurate.errors import InvalidArgumentError
from astrocurate.io import companion_files
from astrocurate.io.mosaic_files import listing_digest

if TYPE_CHECKING:
    import pandas as pd

    from astrocurate.io.mosaics import Mosaic

log = logging.getLogger(__name__)

#: Where companions are looked for by default: beside each mosaic.
AUTO = "auto"
#: No companions at all.
NONE = "none"
#: Largest offset, in pixels, between a mosaic's and its rms map's pixel grids.
WCS_TOLERANCE_PX = 0.1


@dataclass(frozen=True)
class Companions:
    """Paths of one mosaic's companions (None: it has none)."""

    rms_map: str | None = None
    catalogue: str | None = None


def check_specs(rms_maps: str, catalogue: str) -> None:
    """Refuse an rms-map or catalogue option that is not auto, none or a valid pattern."""
    if rms_maps not in (AUTO, NONE):
        companion_files.check_companion_spec(rms_maps, "--rms-maps")
    if catalogue not in (AUTO, NONE):
        companion_files.check_companion_spec(catalogue, "--catalogue")


def find_companions(
    found: list, rms_maps: str, catalogue: str, sources_dir: Path | None = None
) -> list[Companions]:
    """Find the companions of every mosaic (paths only; :func:`check_companions` opens them).

    Parameters
    ----------
    found : list of MosaicFile
        The mosaics to cut.
    rms_maps, catalogue : str
        ``auto``, ``none``, a pattern with ``{dir}``, ``{stem}``, ``{name}``, or (a
        catalogue only) the path of one survey-wide file.
    sources_dir : Path, optional
        A ``source_finding`` run directory: with ``auto``, its rms maps and source lists
        are used instead of the files beside the mosaics.

    Raises
    ------
    InvalidArgumentError
        For a survey-wide catalogue that does not exist.
    """
    result = []
    for mosaic in found:
        rms = _resolve(rms_maps, mosaic, companion_files.rms_map_for_mosaic, sources_dir, "rms")
        source_list = _resolve(
            catalogue, mosaic, companion_files.catalogue_for_mosaic, sources_dir, "catalogue"
        )
        result.append(Companions(_text(rms), _text(source_list)))
    _log_found(result, rms_maps, catalogue)
    return result


def check_companions(found: list, beside: list[Companions]) -> None:
    """Open every companion; refuse the first bad one in one line.

    Raises
    ------
    InvalidArgumentError
        For an rms map of another shape or WCS than its mosaic, or a catalogue that cannot
        be read or has no RA/DEC.
    """
    for mosaic, companion in zip(found, beside, strict=True):
        if companion.rms_map is not None:
            _check_rms_map(Path(companion.rms_map), mosaic.path)
    for source_list in sorted({c.catalogue for c in beside if c.catalogue}):
        _read_catalogue(source_list)  # checked once, and cached for this process


def _resolve(spec: str, mosaic: Any, find: Any, sources_dir: Path | None, kind: str) -> Any:
    """One companion of a mosaic: from the source-finding run (auto), or by ``find``."""
    if spec == NONE:
        return None
    if spec == AUTO and sources_dir is not None:
        from astrocurate.stages.source_finding import outputs

        locate = outputs.rms_map_path if kind == "rms" else outputs.catalogue_path
        path = locate(sources_dir, mosaic.name)
        return path if path.is_file() else None
    return find(spec, mosaic.path, mosaic.name)


def _text(path: Path | str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _log_found(found: list[Companions], rms_maps: str, catalogue: str) -> None:
    n = len(found)
    n_rms = sum(c.rms_map is not None for c in found)
    n_cat = sum(c.catalogue is not None for c in found)
    log.info("rms maps for %d of %d mosaics; source catalogues for %d", n_rms, n, n_cat)
    for option, spec, count in (("--rms-maps", rms_maps, n_rms), ("--catalogue", catalogue, n_cat)):
        if spec not in (AUTO, NONE) and count < n:
            log.warning("%s %s: found for %d of %d mosaics", option, spec, count, n)


def _check_rms_map(rms_path: Path, mosaic_path: Path) -> None:
    """Refuse an rms map whose shape or pixel grid on the sky differs from its mosaic's."""
    from astrocurate.io import mosaics as mosaic_io

    try:
        with mosaic_io.open_mosaic(rms_path) as rms, mosaic_io.open_mosaic(mosaic_path) as image:
            if rms.shape != image.shape:
                raise InvalidArgumentError(
                    f"--rms-maps: {rms_path} has {rms.shape[0]}x{rms.shape[1]} pixels, "
                    f"expected {image.shape[0]}x{image.shape[1]} like its mosaic {mosaic_path}"
                )
            if rms.wcs is not None and image.wcs is not None:
                offset = _grid_offset(image, rms)
                if not offset <= WCS_TOLERANCE_PX:
                    raise InvalidArgumentError(
                        f"--rms-maps: {rms_path} has another WCS than its mosaic {mosaic_path} "
                        f"(pixels {offset:.3g} px apart on the sky); expected the same grid"
                    )
    except mosaic_io.InvalidMosaicError as exc:
        raise InvalidArgumentError(f"--rms-maps: {exc}") from exc


def _grid_offset(image: Mosaic, rms: Mosaic) -> float:
    """Largest distance, in pixels, between the same sky positions on the two grids."""
    ny, nx = image.shape
    x = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, (nx - 1) / 2])
    y = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, (ny - 1) / 2])
    ra, dec = image.pixel_to_icrs(x, y)
    x_rms, y_rms = rms.icrs_to_pixel(ra, dec)
    return float(np.max(np.hypot(x_rms - x, y_rms - y)))


def digest(found: list[Companions]) -> str | None:
    """Hash of the companions' paths, sizes and times (None when there are none)."""
    paths = sorted({p for c in found for p in (c.rms_map, c.catalogue) if p is not None})
    return listing_digest(paths) if paths else None


# --------------------------------------------------------------------------- in the workers


def rms_columns(
    rms_band: np.ndarray, xs: np.ndarray, ys: np.ndarray, w: int, stats: dict, row_step: int = 1
) -> dict:
    """``rms_map`` and ``peak_snr_map`` of the windows of one band of rows.

    ``stats`` are the windows' :func:`~astrocurate.algorithms.windows.window_statistics`
    (``max``, ``median``) from the image band with the same rows; ``rms_band`` may hold
    every ``row_step``-th of those rows only (see
    :func:`~astrocurate.algorithms.windows.window_medians`).
    """
    from astrocurate.algorithms import windows

    rms = windows.window_medians(rms_band, xs, ys, w, row_step=row_step)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(rms > 0, (stats["max"] - stats["median"]) / rms, np.nan)
    return {"rms_map": rms, "peak_snr_map": snr}


def catalogue_columns(
    catalogue: str, mosaic: Mosaic, x0: np.ndarray, y0: np.ndarray, w: int
) -> dict:
    """Per-cutout source counts, largest flux and size, S_Code mix of one mosaic's cutouts."""
    from astrocurate.algorithms.catalogue_match import match_sources

    table = _read_catalogue(catalogue)
    near = _near_mosaic(mosaic, table["ra_deg"].to_numpy(), table["dec_deg"].to_numpy())
    x, y = mosaic.icrs_to_pixel(table["ra_deg"].to_numpy()[near], table["dec_deg"].to_numpy()[near])
    ny, nx = mosaic.shape
    inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    return match_sources(
        x[inside],
        y[inside],
        table["total_flux_jy"].to_numpy()[near][inside],
        table["major_arcsec"].to_numpy()[near][inside],
        table["s_code"].to_numpy()[near][inside],
        x0,
        y0,
        w,
    )


def _near_mosaic(mosaic: Mosaic, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Return the sources within the mosaic's circumscribed circle on the sky (+5 %).

    A survey-wide catalogue (4.4M LoTSS-DR2 sources) serves hundreds of mosaics: only the
    sources near a mosaic go through its WCS.
    """
    ny, nx = mosaic.shape
    corners_x = np.array([-0.5, nx - 0.5, -0.5, nx - 0.5])
    corners_y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    c_ra, c_dec = (np.radians(v) for v in mosaic.pixel_to_icrs((nx - 1) / 2, (ny - 1) / 2))
    k_ra, k_dec = (np.radians(v) for v in mosaic.pixel_to_icrs(corners_x, corners_y))
    radius = 1.05 * _separation(c_ra, c_dec, k_ra, k_dec).max()
    return np.flatnonzero(_separation(c_ra, c_dec, np.radians(ra), np.radians(dec)) <= radius)


def _separation(ra1: Any, dec1: Any, ra2: Any, dec2: Any) -> np.ndarray:
    """Great-circle distance in radians (haversine)."""
    a = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@functools.lru_cache(maxsize=2)
def _read_catalogue(path: str) -> pd.DataFrame:
    """Read a source list once per process (a survey-wide one serves every mosaic)."""
    from astrocurate.io import catalogues

    try:
        return catalogues.read_catalogue(path)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"--catalogue: {exc}") from exc
