"""Survey geometry: validated parameters, the grid of mosaics, their headers and footprints.

Mosaics lie on rows of constant declination around the survey centre; each has a
SIN-projection WCS centred on it and a circular footprint (the rest is blanked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

__all__ = [
    "FOOTPRINT_RADIUS_FRACTION",
    "LAYOUTS",
    "LOTSS_FILE_NAME",
    "LOTSS_RMS_NAME",
    "ORIGIN",
    "REFERENCE_FREQUENCY_HZ",
    "SurveyMosaic",
    "SurveyParams",
    "grid_rows",
    "in_footprint",
    "layout_mosaics",
    "mosaic_header",
    "mosaic_wcs",
    "spacing_deg",
]

FOOTPRINT_RADIUS_FRACTION = 0.45
"""Radius of the usable (non-NaN) circle as a fraction of the mosaic width."""

LAYOUTS: tuple[str, ...] = ("lotss", "flat")
"""File layouts: ``<name>/mosaic-blanked.fits`` (LoTSS) or ``<name>.fits`` (flat)."""

LOTSS_FILE_NAME = "mosaic-blanked.fits"
#: The noise map beside a LoTSS-layout mosaic (``<name>/mosaic.rms.fits``); beside a flat
#: one it is ``<name>.rms.fits``.
LOTSS_RMS_NAME = "mosaic.rms.fits"
ORIGIN = "astrocurate synthetic survey"
REFERENCE_FREQUENCY_HZ = 144e6  # LOFAR HBA, as LoTSS


@dataclass(frozen=True)
class SurveyParams:
    """Validated survey parameters."""

    n_mosaics: int
    mosaic_size: int
    pixel_scale_arcsec: float
    beam_fwhm_arcsec: float
    noise_rms_jy: float
    source_density_per_deg2: float
    class_fractions: dict[str, float]  # normalised, every class present
    centre_ra_deg: float
    centre_dec_deg: float
    overlap_fraction: float
    seed: int
    layout: str
    noise_edge_factor: float = 1.0  # noise rms at the footprint's edge over the centre's

    @property
    def footprint_radius_px(self) -> float:
        """Radius of the non-blank circle around the mosaic centre, in pixels."""
        return FOOTPRINT_RADIUS_FRACTION * self.mosaic_size

    @property
    def width_deg(self) -> float:
        """Width (and height) of a mosaic in degrees."""
        return self.mosaic_size * self.pixel_scale_arcsec / 3600.0


@dataclass(frozen=True)
class SurveyMosaic:
    """One mosaic of the survey grid."""

    index: int
    name: str
    ra_deg: float
    dec_deg: float
    relpath: str

    @property
    def rms_relpath(self) -> str:
        """Path of the mosaic's noise (rms) map, relative to the survey root."""
        if self.relpath.endswith(f"/{LOTSS_FILE_NAME}"):
            return f"{self.relpath.rsplit('/', 1)[0]}/{LOTSS_RMS_NAME}"
        return f"{self.relpath.removesuffix('.fits')}.rms.fits"


def grid_rows(n: int) -> list[int]:
    """Count the mosaics in each grid row (south to north) for ``n`` mosaics."""
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    return [min(ncols, n - r * ncols) for r in range(nrows)]


def spacing_deg(p: SurveyParams) -> float:
    """Angular distance between neighbouring mosaic centres."""
    return p.width_deg * (1.0 - p.overlap_fraction)


def layout_mosaics(p: SurveyParams) -> list[SurveyMosaic]:
    """Place the mosaics on rows of constant declination, row-major from the south-east."""
    spacing = spacing_deg(p)
    rows = grid_rows(p.n_mosaics)
    centres = []
    for r, m in enumerate(rows):
        dec = p.centre_dec_deg + (r - (len(rows) - 1) / 2.0) * spacing
        for c in range(m):
            ra = p.centre_ra_deg + (c - (m - 1) / 2.0) * spacing / math.cos(math.radians(dec))
            centres.append((ra % 360.0, dec))
    names = _mosaic_names(centres)
    mosaics = []
    for i, ((ra, dec), name) in enumerate(zip(centres, names, strict=True)):
        relpath = f"{name}/{LOTSS_FILE_NAME}" if p.layout == "lotss" else f"{name}.fits"
        mosaics.append(SurveyMosaic(i, name, ra, dec, relpath))
    return mosaics


def _mosaic_names(centres: list[tuple[float, float]]) -> list[str]:
    """LoTSS-style names ``P<ra><+dec>`` with as few decimals as keep them unique.

    ``P180+50`` when whole degrees suffice, else e.g. ``P179.88+49.92``.
    """
    for decimals in range(7):
        width = 3 + (decimals + 1 if decimals else 0)
        names = [f"P{ra:0{width}.{decimals}f}{dec:+0{width}.{decimals}f}" for ra, dec in centres]
        if len(set(names)) == len(names):
            return names
    return [f"{name}_{i}" for i, name in enumerate(names)]


def mosaic_header(p: SurveyParams, m: SurveyMosaic) -> fits.Header:
    """FITS header of mosaic ``m``: SIN WCS, beam, units and provenance."""
    scale = p.pixel_scale_arcsec / 3600.0
    beam = p.beam_fwhm_arcsec / 3600.0
    crpix = (p.mosaic_size + 1) / 2.0
    cards = [
        ("BUNIT", "JY/BEAM", "Pixel unit: Jy per restoring beam"),
        ("BTYPE", "Intensity", ""),
        ("WCSAXES", 2, "Number of WCS axes"),
        ("CTYPE1", "RA---SIN", "Orthographic (SIN) projection"),
        ("CTYPE2", "DEC--SIN", "Orthographic (SIN) projection"),
        ("CUNIT1", "deg", ""),
        ("CUNIT2", "deg", ""),
        ("CRPIX1", crpix, "Reference pixel: mosaic centre (1-based)"),
        ("CRPIX2", crpix, "Reference pixel: mosaic centre (1-based)"),
        ("CRVAL1", m.ra_deg, "[deg] RA of the mosaic centre"),
        ("CRVAL2", m.dec_deg, "[deg] Dec of the mosaic centre"),
        ("CDELT1", -scale, "[deg] Pixel size along RA"),
        ("CDELT2", scale, "[deg] Pixel size along Dec"),
        ("RADESYS", "ICRS", "Celestial reference frame"),
        ("EQUINOX", 2000.0, "Equinox of the celestial coordinates"),
        ("BMAJ", beam, "[deg] Restoring beam major axis FWHM"),
        ("BMIN", beam, "[deg] Restoring beam minor axis FWHM"),
        ("BPA", 0.0, "[deg] Restoring beam position angle"),
        ("RESTFRQ", REFERENCE_FREQUENCY_HZ, "[Hz] Reference frequency"),
        ("OBJECT", m.name, "Mosaic name"),
        ("ORIGIN", ORIGIN, ""),
        ("MOSAICID", m.index, "Index of this mosaic in the survey"),
        ("SEED", p.seed, "Random seed of the survey"),
        ("NOISERMS", p.noise_rms_jy, "[Jy/beam] Pixel rms of the noise"),
        ("FOOTRAD", p.footprint_radius_px, "[pix] Radius of the non-blank circle"),
    ]
    header = fits.Header()
    for key, value, comment in cards:
        header[key] = (value, comment)
    return header


def mosaic_wcs(p: SurveyParams, m: SurveyMosaic) -> WCS:
    """Build the celestial WCS of mosaic ``m``."""
    return WCS(mosaic_header(p, m), naxis=2)


def in_footprint(
    p: SurveyParams, wcs: WCS, ra: np.ndarray, dec: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which sky positions lie safely inside a mosaic's footprint.

    Parameters
    ----------
    p : SurveyParams
        Survey parameters.
    wcs : astropy.wcs.WCS
        The mosaic's WCS.
    ra, dec : numpy.ndarray, shape (n,)
        Positions in degrees.

    Returns
    -------
    inside : numpy.ndarray of bool, shape (n,)
        The position is at least one pixel inside the footprint circle, so that the
        nearest pixel is never blank.
    x, y : numpy.ndarray, shape (n,)
        0-based pixel column and row.
    """
    if len(ra) == 0:
        return np.zeros(0, bool), np.zeros(0), np.zeros(0)
    x, y = wcs.wcs_world2pix(ra, dec, 0)
    c = (p.mosaic_size - 1) / 2.0
    inside = (x - c) ** 2 + (y - c) ** 2 <= (p.footprint_radius_px - 1.0) ** 2
    return inside & np.isfinite(x) & np.isfinite(y), x, y
