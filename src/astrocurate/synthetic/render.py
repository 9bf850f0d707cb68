"""Rendering a mosaic: noise, sources, artefacts, blanking.

Beam-correlated Gaussian noise, the sources drawn through the mosaic's own WCS, the
artefact patterns around bright sources, and NaN outside the circular footprint.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS
from scipy.ndimage import gaussian_filter

from astrocurate.synthetic.geometry import SurveyParams
from astrocurate.synthetic.sky import FWHM_PER_SIGMA, STAMP_FLOOR_RMS, Ripples, Sky

__all__ = ["noise_rms_map", "render_mosaic"]


def render_mosaic(p: SurveyParams, wcs: WCS, sky: Sky, rng: np.random.Generator) -> np.ndarray:
    """Render one mosaic: noise, sources, artefacts, then blank outside the footprint.

    Returns
    -------
    numpy.ndarray of float32, shape (mosaic_size, mosaic_size)
        Jy/beam, NaN outside the footprint.
    """
    image = _beam_noise(p, rng)
    if p.noise_edge_factor != 1.0:
        image *= noise_rms_map(p) / np.float32(p.noise_rms_jy)
    _add_gaussians(image, p, wcs, sky)
    _add_ripples(image, p, wcs, sky)
    _blank_outside_footprint(image, p.footprint_radius_px)
    return image


def _beam_noise(p: SurveyParams, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise smoothed by the beam, scaled to pixel rms ``noise_rms_jy``.

    Returns
    -------
    numpy.ndarray of float32, shape (mosaic_size, mosaic_size)
    """
    sigma_px = p.beam_fwhm_arcsec / p.pixel_scale_arcsec / FWHM_PER_SIGMA
    white = rng.standard_normal((p.mosaic_size, p.mosaic_size), dtype=np.float32)
    noise = gaussian_filter(white, sigma_px, mode="wrap")
    del white
    noise *= np.float32(p.noise_rms_jy / _smoothing_gain(sigma_px))
    return noise


def noise_rms_map(p: SurveyParams) -> np.ndarray:
    """Return the noise rms of every pixel (what a source finder's rms map estimates).

    ``noise_rms_jy`` at the centre, rising with the squared distance from it to
    ``noise_edge_factor * noise_rms_jy`` at the footprint's edge (the primary-beam
    correction of a mosaic: noise grows towards its edges), NaN outside the footprint.

    Returns
    -------
    numpy.ndarray of float32, shape (mosaic_size, mosaic_size)
        Jy/beam.
    """
    n = p.mosaic_size
    c = (n - 1) / 2.0
    r2 = (np.arange(n, dtype=np.float32) - np.float32(c)) ** 2
    rms = r2[:, None] + r2[None, :]
    rms *= np.float32((p.noise_edge_factor - 1.0) / p.footprint_radius_px**2)
    rms += np.float32(1.0)
    rms *= np.float32(p.noise_rms_jy)
    _blank_outside_footprint(rms, p.footprint_radius_px)
    return rms


def _smoothing_gain(sigma_px: float) -> float:
    """Rms of unit white noise after :func:`scipy.ndimage.gaussian_filter` with ``sigma_px``.

    The root of the sum of the squared weights of the filter's impulse response.
    """
    half = math.ceil(4.0 * sigma_px) + 2
    impulse = np.zeros((2 * half + 1, 2 * half + 1))
    impulse[half, half] = 1.0
    response = gaussian_filter(impulse, sigma_px, mode="constant")
    return float(np.sqrt(np.sum(response**2)))


def _stamp(
    n: int, x0: float, y0: float, half: int
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Pixel box of half-width ``half`` around ``(x0, y0)``, clipped to an ``n x n`` image.

    Returns
    -------
    (rows, cols), dx, dy : tuple of slice, numpy.ndarray of shape (1, w), shape (h, 1)
        The box and the pixel offsets from ``(x0, y0)``; None if the box is off the image.
    """
    xc, yc = math.floor(x0 + 0.5), math.floor(y0 + 0.5)
    x_lo, x_hi = max(xc - half, 0), min(xc + half + 1, n)
    y_lo, y_hi = max(yc - half, 0), min(yc + half + 1, n)
    if x_lo >= x_hi or y_lo >= y_hi:
        return None
    dx = (np.arange(x_lo, x_hi) - x0)[None, :]
    dy = (np.arange(y_lo, y_hi) - y0)[:, None]
    return (slice(y_lo, y_hi), slice(x_lo, x_hi)), dx, dy


def _add_gaussians(image: np.ndarray, p: SurveyParams, wcs: WCS, sky: Sky) -> None:
    """Add every beam-convolved Gaussian component that touches the image, in place.

    Each component is evaluated on a stamp that reaches until it falls below
    1 % of the noise rms.
    """
    c = sky.comps
    if len(c.src) == 0:
        return
    x, y = wcs.wcs_world2pix(sky.comp_ra, sky.comp_dec, 0)
    beam, scale = p.beam_fwhm_arcsec, p.pixel_scale_arcsec
    maj_c, mnr_c = np.hypot(c.maj, beam), np.hypot(c.mnr, beam)
    peak = c.flux * beam**2 / (maj_c * mnr_c)
    sig_a, sig_b = maj_c / scale / FWHM_PER_SIGMA, mnr_c / scale / FWHM_PER_SIGMA
    reach = np.sqrt(
        2.0 * np.log(np.maximum(np.abs(peak) / (STAMP_FLOOR_RMS * p.noise_rms_jy), math.e))
    )
    half = np.ceil(sig_a * reach).astype(np.int64)
    n = p.mosaic_size
    near = (x > -half - 1) & (x < n + half) & (y > -half - 1) & (y < n + half)
    sin_t, cos_t = np.sin(np.radians(c.pa)), np.cos(np.radians(c.pa))
    for k in np.flatnonzero(near):
        box = _stamp(n, x[k], y[k], int(half[k]))
        if box is None:
            continue
        rows_cols, dx, dy = box
        a, b = float(sig_a[k]), float(sig_b[k])
        if a == b:  # circular: separable, two 1-D profiles
            stamp = np.exp((-0.5 / a**2) * dy**2) * (peak[k] * np.exp((-0.5 / a**2) * dx**2))
        else:
            u = dy * cos_t[k] - dx * sin_t[k]  # along the major axis (east is -x)
            v = dx * cos_t[k] + dy * sin_t[k]
            stamp = peak[k] * np.exp(-0.5 * ((u / a) ** 2 + (v / b) ** 2))
        image[rows_cols] += stamp


def _add_ripples(image: np.ndarray, p: SurveyParams, wcs: WCS, sky: Sky) -> None:
    """Add the artefact patterns that touch the image, in place."""
    r = sky.ripples
    if len(r.src) == 0:
        return
    x, y = wcs.wcs_world2pix(sky.ripple_ra, sky.ripple_dec, 0)
    scale = p.pixel_scale_arcsec
    half = np.ceil(r.extent / scale).astype(np.int64)
    n = p.mosaic_size
    near = (x > -half - 1) & (x < n + half) & (y > -half - 1) & (y < n + half)
    for k in np.flatnonzero(near):
        box = _stamp(n, x[k], y[k], int(half[k]))
        if box is None:
            continue
        rows_cols, dx, dy = box
        de = (-scale * dx).astype(np.float32)  # float32 halves the cost of the big stamps
        dn = (scale * dy).astype(np.float32)
        image[rows_cols] += _ripple_pattern(r, k, de, dn, p.beam_fwhm_arcsec)


def _ripple_pattern(r: Ripples, k: int, de: np.ndarray, dn: np.ndarray, beam: float) -> np.ndarray:
    """Rings and spokes of artefact ``k`` at offsets ``de`` (1, w), ``dn`` (h, 1) arcsec.

    Concentric ripples ``cos(2 pi r / wavelength)``, brighter along one axis, and
    straight spokes through the source whose signs alternate, both under Gaussian
    envelopes and suppressed within about a beam of the centre, where the bright source
    itself dominates.

    Returns
    -------
    numpy.ndarray, shape (h, w)
        Brightness in Jy/beam.
    """
    amp_ring, wave, ring_scale, skew, spoke_pa, amp_spoke, width, spoke_scale, peak = (
        float(getattr(r, f)[k])
        for f in (
            "ring_amp",
            "ring_wave",
            "ring_scale",
            "ring_skew",
            "spoke_pa",
            "spoke_amp",
            "spoke_width",
            "spoke_scale",
            "peak_jy",
        )
    )
    rr = np.hypot(de, dn)
    azimuth = np.arctan2(de, dn) - math.radians(spoke_pa)
    value = (
        amp_ring
        * np.cos((2.0 * math.pi / wave) * rr)
        * np.exp((-0.5 / ring_scale**2) * rr**2)
        * (1.0 + skew * np.cos(2.0 * azimuth))
    )
    n_lines = int(r.n_spokes[k])
    for line in range(n_lines if amp_spoke > 0 else 0):
        t = math.radians(spoke_pa + line * 180.0 / n_lines)
        along = de * math.sin(t) + dn * math.cos(t)
        across = de * math.cos(t) - dn * math.sin(t)
        sign = 1.0 if line % 2 == 0 else -1.0
        value += (sign * amp_spoke) * np.exp(
            -0.5 * ((across / width) ** 2 + (along / spoke_scale) ** 2)
        )
    return (-peak) * np.expm1(-((rr / beam) ** 2)) * value


def _blank_outside_footprint(image: np.ndarray, radius: float) -> None:
    """Set pixels farther than ``radius`` from the image centre to NaN, in place.

    Row by row, so no image-sized temporary is needed.
    """
    n = image.shape[0]
    c = (n - 1) / 2.0
    for row in range(n):
        chord2 = radius**2 - (row - c) ** 2
        if chord2 < 0:
            image[row] = np.nan
            continue
        half = math.sqrt(chord2)
        image[row, : max(math.ceil(c - half), 0)] = np.nan
        image[row, math.floor(c + half) + 1 :] = np.nan
