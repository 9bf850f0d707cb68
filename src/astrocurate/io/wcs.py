"""Sky frames of FITS images: the celestial WCS of a 2-D image, pixel to ICRS, pixel scale.

Pixel convention: 0-based ``x`` (column, FITS axis 1) and ``y`` (row, FITS axis 2).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

__all__ = ["celestial_wcs", "pixel_scale_arcsec", "world_to_icrs"]


def _build_wcs(header: fits.Header, axes: list[int] | None = None) -> WCS:
    """WCS of a header (optionally only FITS ``axes``, 1-based), set up and checked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header) if axes is None else WCS(header, naxis=axes)
        wcs.wcs.set()
    return wcs


def celestial_wcs(
    header: fits.Header, full_shape: tuple[int, ...], image_axes: tuple[int, int]
) -> tuple[WCS | None, str | None]:
    """2-D celestial WCS matching the image axes, or (None, reason).

    ``full_shape`` is the HDU's shape in numpy order (length-1 axes included) and
    ``image_axes`` the numpy axes of ``(y, x)`` in it. The full WCS is built first, so
    that celestial axes which are not the image axes are noticed. If it is invalid as a
    whole (e.g. CDELT = 0 on a degenerate FREQ axis, which makes the matrix singular), the
    image axes alone are tried.
    """
    naxis = len(full_shape)
    # numpy axis i is FITS axis naxis - i (1-based); FITS axis order is (x, y).
    fits_axes = sorted(naxis - i for i in image_axes)
    try:
        full = _build_wcs(header)
    except Exception as exc:  # astropy raises many types for bad headers
        try:
            celestial = _build_wcs(header, fits_axes)
        except Exception:
            return None, f"invalid WCS ({type(exc).__name__}: {' '.join(str(exc).split())})"
        if not (celestial.has_celestial and celestial.naxis == 2):
            return None, "no celestial WCS for the image axes"
    else:
        if not full.has_celestial:
            return None, "no celestial WCS in the header"
        celestial_axes = sorted((full.wcs.lng + 1, full.wcs.lat + 1))
        if fits_axes != celestial_axes:
            return None, f"celestial WCS axes {celestial_axes} are not the image axes {fits_axes}"
        celestial = full.sub(fits_axes)
    not_sky = _not_a_sky_frame(celestial)
    if not_sky:
        return None, not_sky
    try:
        ny, nx = (full_shape[a] for a in image_axes)
        world_to_icrs(celestial, np.array([(nx - 1) / 2]), np.array([(ny - 1) / 2]))
    except Exception as exc:
        return None, f"celestial WCS not usable ({type(exc).__name__}: {exc})"
    return celestial, None


#: Celestial axis types (the first four letters of the longitude's CTYPE) of solar and
#: body-fixed frames: WCS calls them celestial, but they are no place on the sky.
_NOT_SKY_FRAMES = {
    "HPLN": "helioprojective",
    "HGLN": "heliographic Stonyhurst",
    "CRLN": "heliographic Carrington",
    "SOLX": "heliocentric",
}


def _not_a_sky_frame(wcs: WCS) -> str | None:
    """Say why a 2-D celestial WCS has no RA/Dec (a solar or unknown frame), else None."""
    from astropy.wcs.utils import wcs_to_celestial_frame

    ctype = [str(c) for c in wcs.wcs.ctype]
    prefix = ctype[wcs.wcs.lng][:4].rstrip("-")
    axes = "/".join(c.split("-")[0] for c in ctype)
    if prefix in _NOT_SKY_FRAMES:
        return f"{_NOT_SKY_FRAMES[prefix]} WCS ({axes}), not a sky frame"
    try:
        wcs_to_celestial_frame(wcs)
    except ValueError:
        return f"{axes} WCS, not a sky frame astropy knows (RA/DEC, GLON/GLAT, ELON/ELAT)"
    return None


def world_to_icrs(wcs: WCS, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICRS (ra, dec) in degrees of 0-based pixel positions under a 2-D celestial WCS."""
    coords = wcs.pixel_to_world(x, y)
    if coords.frame.name != "icrs":
        coords = coords.icrs
    return (
        np.asarray(coords.ra.deg, dtype=np.float64),
        np.asarray(coords.dec.deg, dtype=np.float64),
    )


def icrs_to_pixel(wcs: WCS, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel positions (x, y) of ICRS positions in degrees under a 2-D celestial WCS."""
    from astropy.coordinates import SkyCoord

    coords = SkyCoord(np.asarray(ra, np.float64), np.asarray(dec, np.float64), unit="deg")
    x, y = wcs.world_to_pixel(coords)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def pixel_scale_arcsec(wcs: WCS | None) -> float:
    """Geometric mean of the two projection-plane pixel scales, in arcsec (NaN if none)."""
    if wcs is None:
        return math.nan
    scales = proj_plane_pixel_scales(wcs)
    units = [str(c) or "deg" for c in wcs.wcs.cunit]
    try:
        arcsec = [
            float(u.Quantity(s, unit).to_value(u.arcsec))
            for s, unit in zip(scales, units, strict=True)
        ]
    except (u.UnitsError, ValueError):
        return math.nan
    return math.sqrt(abs(arcsec[0] * arcsec[1]))
