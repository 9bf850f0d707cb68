"""The survey's sky model: sources drawn once on the sky, class by class.

Each source is a set of elliptical Gaussian components (:class:`Components`), and the
bright ``artefact`` sources also carry a pattern of ripples and spokes
(:class:`Ripples`). Positions are uniform on the sphere inside the mosaic footprints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from astrocurate.io.labels import CLASS_NAMES
from astrocurate.synthetic.geometry import SurveyParams, grid_rows, in_footprint, spacing_deg

__all__ = ["FWHM_PER_SIGMA", "STAMP_FLOOR_RMS", "Components", "Ripples", "Sky", "make_sky"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
STAMP_FLOOR_RMS = 0.01  # stamps extend until a component falls below this many rms


@dataclass(frozen=True)
class Components:
    """Elliptical Gaussian components; offsets and sizes in arcsec, shapes ``(m,)``."""

    src: np.ndarray  # source index
    de: np.ndarray  # offset east of the source centre
    dn: np.ndarray  # offset north of the source centre
    flux: np.ndarray  # total flux, Jy
    maj: np.ndarray  # intrinsic FWHM along the major axis (0 = unresolved)
    mnr: np.ndarray  # intrinsic FWHM along the minor axis
    pa: np.ndarray  # position angle of the major axis, deg east of north

    @staticmethod
    def concat(parts: list[Components]) -> Components:
        """Concatenate component sets (an empty list gives no components)."""
        fields = ("src", "de", "dn", "flux", "maj", "mnr", "pa")
        if not parts:
            return Components(np.zeros(0, np.int64), *(np.zeros(0) for _ in fields[1:]))
        return Components(*(np.concatenate([getattr(c, f) for c in parts]) for f in fields))


@dataclass(frozen=True)
class Ripples:
    """Artefact patterns around bright sources; arrays of shape ``(a,)``."""

    src: np.ndarray
    peak_jy: np.ndarray  # peak of the bright source the pattern scales with
    ring_amp: np.ndarray  # ring amplitude as a fraction of the peak
    ring_wave: np.ndarray  # ring wavelength, arcsec
    ring_scale: np.ndarray  # Gaussian envelope of the rings, arcsec
    ring_skew: np.ndarray  # azimuthal modulation of the rings, 0 (round) to 1
    n_spokes: np.ndarray  # lines through the source (each gives two opposite spokes)
    spoke_pa: np.ndarray  # position angle of the first spoke, deg east of north
    spoke_amp: np.ndarray
    spoke_width: np.ndarray  # Gaussian sigma across a spoke, arcsec
    spoke_scale: np.ndarray  # Gaussian envelope along a spoke, arcsec
    extent: np.ndarray  # radius beyond which the pattern is negligible, arcsec


@dataclass(frozen=True)
class _ClassDraw:
    """Sources of one class, indexed locally ``0..n-1``."""

    comps: Components
    size_arcsec: np.ndarray
    pa_deg: np.ndarray
    ripples: Ripples | None = None


@dataclass(frozen=True)
class Sky:
    """The survey-wide sky model."""

    sources: pd.DataFrame  # source_id, class, ra, dec, flux_jy, peak_snr, size_arcsec, pa_deg
    comp_ra: np.ndarray
    comp_dec: np.ndarray
    comps: Components
    ripple_ra: np.ndarray
    ripple_dec: np.ndarray
    ripples: Ripples


def make_sky(p: SurveyParams, wcss: list[WCS], rng: np.random.Generator) -> Sky:
    """Draw every source of the survey: positions, classes, components and artefacts."""
    ra, dec = _draw_positions(p, wcss, rng)
    counts = _class_counts(len(ra), p.class_fractions)
    labels = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), counts))
    builders = (_draw_points, _draw_doubles, _draw_diffuse, _draw_artefacts)

    size = np.zeros(len(ra))
    pa = np.zeros(len(ra))
    parts: list[Components] = []
    ripple_parts: list[Ripples] = []
    for k, build in enumerate(builders):
        idx = np.flatnonzero(labels == k)
        draw = build(rng, len(idx), p)
        size[idx] = draw.size_arcsec
        pa[idx] = draw.pa_deg
        parts.append(_reindex(draw.comps, idx))
        if draw.ripples is not None:
            ripple_parts.append(_reindex(draw.ripples, idx))
    comps = Components.concat(parts)
    ripples = _concat_ripples(ripple_parts)

    cos_dec = np.cos(np.radians(dec[comps.src]))
    comp_ra = (ra[comps.src] + comps.de / 3600.0 / cos_dec) % 360.0
    comp_dec = dec[comps.src] + comps.dn / 3600.0
    flux = np.bincount(comps.src, weights=comps.flux, minlength=len(ra))
    sources = pd.DataFrame(
        {
            "source_id": np.arange(len(ra), dtype=np.int64),
            "class": np.asarray(CLASS_NAMES, dtype=object)[labels],
            "ra": ra,
            "dec": dec,
            "flux_jy": flux,
            "peak_snr": _model_peaks(comps, len(ra), p.beam_fwhm_arcsec) / p.noise_rms_jy,
            "size_arcsec": size,
            "pa_deg": pa,
        }
    )
    return Sky(sources, comp_ra, comp_dec, comps, ra[ripples.src], dec[ripples.src], ripples)


def _draw_positions(
    p: SurveyParams, wcss: list[WCS], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform positions on the sphere inside the union of the mosaic footprints.

    Draws ``round(density * area)`` points in a RA/Dec box around the survey and keeps
    those inside at least one footprint.

    Returns
    -------
    ra, dec : numpy.ndarray, shape (n,)
        Degrees, ICRS, ``ra`` in [0, 360).
    """
    ra_lo, ra_hi, dec_lo, dec_hi = _sky_box(p)
    s_lo, s_hi = math.sin(math.radians(dec_lo)), math.sin(math.radians(dec_hi))
    area_deg2 = math.radians(ra_hi - ra_lo) * (s_hi - s_lo) * (180.0 / math.pi) ** 2
    n_box = round(p.source_density_per_deg2 * area_deg2)
    ra = rng.uniform(ra_lo, ra_hi, n_box) % 360.0
    dec = np.degrees(np.arcsin(rng.uniform(s_lo, s_hi, n_box)))
    keep = np.zeros(n_box, bool)
    for wcs in wcss:
        keep |= in_footprint(p, wcs, ra, dec)[0]
    return ra[keep], dec[keep]


def _sky_box(p: SurveyParams) -> tuple[float, float, float, float]:
    """RA/Dec box (degrees, RA unwrapped around the centre) containing every footprint."""
    radius = (
        math.degrees(math.asin(p.footprint_radius_px * math.radians(p.width_deg) / p.mosaic_size))
        * 1.02
        + 1e-6
    )
    spacing = spacing_deg(p)
    rows = grid_rows(p.n_mosaics)
    ra_lo, ra_hi = math.inf, -math.inf
    for r, m in enumerate(rows):
        dec = p.centre_dec_deg + (r - (len(rows) - 1) / 2.0) * spacing
        cos_dec = math.cos(math.radians(dec))
        half = math.degrees(math.asin(min(1.0, math.sin(math.radians(radius)) / cos_dec)))
        reach = (m - 1) / 2.0 * spacing / cos_dec + half * 1.02
        ra_lo, ra_hi = min(ra_lo, p.centre_ra_deg - reach), max(ra_hi, p.centre_ra_deg + reach)
    half_rows = (len(rows) - 1) / 2.0 * spacing + radius
    dec_lo = max(-90.0, p.centre_dec_deg - half_rows)
    dec_hi = min(90.0, p.centre_dec_deg + half_rows)
    return ra_lo, ra_hi, dec_lo, dec_hi


def _class_counts(n: int, fractions: dict[str, float]) -> np.ndarray:
    """Split ``n`` sources over the classes by deterministic largest-remainder rounding.

    Every class with a positive fraction gets at least one source when ``n`` allows.

    Returns
    -------
    numpy.ndarray of int, shape (len(CLASS_NAMES),)
        Counts in :data:`CLASS_NAMES` order, summing to ``n``.
    """
    f = np.array([fractions[c] for c in CLASS_NAMES])
    exact = n * f
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    if n >= np.count_nonzero(f):
        for k in np.flatnonzero((f > 0) & (counts == 0)):
            counts[np.argmax(counts)] -= 1
            counts[k] = 1
    return counts


def _reindex(obj: Components | Ripples, idx: np.ndarray) -> Components | Ripples:
    """Map local source indices ``0..n-1`` of one class to survey-wide indices."""
    return type(obj)(**{**obj.__dict__, "src": idx[obj.src]})


def _concat_ripples(parts: list[Ripples]) -> Ripples:
    """Concatenate artefact patterns (an empty set when there are none)."""
    names = list(Ripples.__dataclass_fields__)
    if not parts:
        return Ripples(
            **{f: np.zeros(0, np.int64 if f in ("src", "n_spokes") else float) for f in names}
        )
    return Ripples(**{f: np.concatenate([getattr(r, f) for r in parts]) for f in names})


def _power_law(
    rng: np.random.Generator, n: int, low: float, high: float, index: float
) -> np.ndarray:
    """Draw ``n`` values from ``dN/dS ~ S**-index`` on ``[low, high]`` (index != 1)."""
    a = 1.0 - index
    u = rng.random(n)
    return (low**a + u * (high**a - low**a)) ** (1.0 / a)


def _log_uniform(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """Draw ``n`` values uniformly in ``log`` between ``low`` and ``high``."""
    return np.exp(rng.uniform(math.log(low), math.log(high), n))


def _beam_dilution(maj: np.ndarray, mnr: np.ndarray, beam: float) -> np.ndarray:
    """Flux per unit peak (Jy per Jy/beam) of a Gaussian convolved with the beam."""
    return np.hypot(maj, beam) * np.hypot(mnr, beam) / beam**2


def _components(src: np.ndarray, **arrays: np.ndarray | float) -> Components:
    """Build components, broadcasting scalars to the length of ``src``."""
    n = len(src)
    fields = ("de", "dn", "flux", "maj", "mnr", "pa")
    return Components(
        src, *(np.broadcast_to(np.asarray(arrays[f], float), n).copy() for f in fields)
    )


def _draw_points(rng: np.random.Generator, n: int, p: SurveyParams) -> _ClassDraw:
    """Unresolved sources with peak S/N from a steep power law (mostly 5-100)."""
    flux = _power_law(rng, n, 5.0, 3000.0, 2.5) * p.noise_rms_jy
    comps = _components(np.arange(n), de=0.0, dn=0.0, flux=flux, maj=0.0, mnr=0.0, pa=0.0)
    return _ClassDraw(comps, np.full(n, p.beam_fwhm_arcsec), np.full(n, np.nan))


def _draw_doubles(rng: np.random.Generator, n: int, p: SurveyParams) -> _ClassDraw:
    """FR-II-like doubles: two lobes, a faint core and optional hotspots.

    ``size_arcsec`` is the lobe separation (tip to tip), ``pa_deg`` the jet axis.
    """
    sep = _log_uniform(rng, n, 20.0, 90.0)
    pa = rng.uniform(0.0, 180.0, n)
    maj = np.maximum(sep * rng.uniform(0.15, 0.3, n), 4.0)
    mnr = maj * rng.uniform(0.45, 0.75, n)
    lobe = (
        _power_law(rng, n, 15.0, 500.0, 2.2)
        * p.noise_rms_jy
        * _beam_dilution(maj, mnr, p.beam_fwhm_arcsec)
    )
    ratio = rng.uniform(0.5, 1.0, n)
    flip = rng.random(n) < 0.5
    f_plus, f_minus = lobe * np.where(flip, ratio, 1.0), lobe * np.where(flip, 1.0, ratio)
    d_lobe = sep * rng.uniform(0.36, 0.44, n)
    core = rng.uniform(0.01, 0.05, n) * (f_plus + f_minus)
    hot = rng.random(n) < 0.6
    hot_frac = rng.uniform(0.1, 0.3, n)

    e, nn = np.sin(np.radians(pa)), np.cos(np.radians(pa))
    src = np.arange(n)
    h = np.flatnonzero(hot)
    parts = [
        _components(src, de=d_lobe * e, dn=d_lobe * nn, flux=f_plus, maj=maj, mnr=mnr, pa=pa),
        _components(src, de=-d_lobe * e, dn=-d_lobe * nn, flux=f_minus, maj=maj, mnr=mnr, pa=pa),
        _components(src, de=0.0, dn=0.0, flux=core, maj=0.0, mnr=0.0, pa=0.0),
        _components(
            h,
            de=sep[h] / 2 * e[h],
            dn=sep[h] / 2 * nn[h],
            flux=hot_frac[h] * f_plus[h],
            maj=0.0,
            mnr=0.0,
            pa=0.0,
        ),
        _components(
            h,
            de=-sep[h] / 2 * e[h],
            dn=-sep[h] / 2 * nn[h],
            flux=hot_frac[h] * f_minus[h],
            maj=0.0,
            mnr=0.0,
            pa=0.0,
        ),
    ]
    return _ClassDraw(Components.concat(parts), sep, pa)


def _draw_diffuse(rng: np.random.Generator, n: int, p: SurveyParams) -> _ClassDraw:
    """Low-surface-brightness emission: elliptical halos and curved relic arcs.

    ``size_arcsec`` is the halo major-axis FWHM or the relic arc length; ``pa_deg`` the
    halo major axis or the relic chord.
    """
    relic = rng.random(n) < 0.4
    size = _log_uniform(rng, n, 40.0, 150.0)
    pa = rng.uniform(0.0, 180.0, n)
    snr = _log_uniform(rng, n, 3.0, 12.0)
    axis_ratio = rng.uniform(0.55, 1.0, n)
    width = rng.uniform(8.0, 20.0, n)
    curvature = rng.uniform(0.7, 1.5, n)  # radius of curvature / arc length

    halo = np.flatnonzero(~relic)
    mnr = size[halo] * axis_ratio[halo]
    flux = snr[halo] * p.noise_rms_jy * _beam_dilution(size[halo], mnr, p.beam_fwhm_arcsec)
    parts = [_components(halo, de=0.0, dn=0.0, flux=flux, maj=size[halo], mnr=mnr, pa=pa[halo])]
    parts.append(_relic_arcs(np.flatnonzero(relic), size, pa, snr, width, curvature, p))
    return _ClassDraw(Components.concat(parts), size, pa)


def _relic_arcs(
    idx: np.ndarray,
    length: np.ndarray,
    pa: np.ndarray,
    snr: np.ndarray,
    width: np.ndarray,
    curvature: np.ndarray,
    p: SurveyParams,
    n_comps: int = 8,
) -> Components:
    """Relics as chains of ``n_comps`` Gaussians along a circular arc.

    The arc passes through the source centre (its midpoint), its chord along ``pa``;
    each component is elongated along the arc's tangent.
    """
    radius = (curvature * length)[idx, None]
    phi = (length[idx, None] / radius) * np.linspace(-0.5, 0.5, n_comps)[None, :]
    pa_r = np.radians(pa[idx])[:, None]
    along_e, along_n = np.sin(pa_r), np.cos(pa_r)
    normal_e, normal_n = np.cos(pa_r), -np.sin(pa_r)
    s, bend = radius * np.sin(phi), radius * (1.0 - np.cos(phi))
    de, dn = s * along_e + bend * normal_e, s * along_n + bend * normal_n
    tangent_pa = np.degrees(
        np.arctan2(
            np.cos(phi) * along_e + np.sin(phi) * normal_e,
            np.cos(phi) * along_n + np.sin(phi) * normal_n,
        )
    )
    maj = np.repeat(0.25 * length[idx], n_comps)
    mnr = np.repeat(width[idx], n_comps)
    peak = np.repeat(snr[idx] / 1.6, n_comps) * p.noise_rms_jy  # neighbours overlap
    flux = peak * _beam_dilution(maj, mnr, p.beam_fwhm_arcsec)
    return _components(
        np.repeat(idx, n_comps),
        de=de.ravel(),
        dn=dn.ravel(),
        flux=flux,
        maj=maj,
        mnr=mnr,
        pa=tangent_pa.ravel(),
    )


def _draw_artefacts(rng: np.random.Generator, n: int, p: SurveyParams) -> _ClassDraw:
    """Very bright point sources with ring and spoke calibration artefacts.

    A third of the artefacts have rings only, a third spokes only, a third both.
    ``size_arcsec`` is the pattern diameter (4 x its envelope scale), ``pa_deg`` the
    first spoke (NaN without spokes).
    """
    peak = _power_law(rng, n, 1000.0, 20000.0, 2.5) * p.noise_rms_jy
    kind = rng.integers(0, 3, n)  # 0: rings and spokes, 1: rings, 2: spokes
    beam = p.beam_fwhm_arcsec
    ring_amp = rng.uniform(0.01, 0.03, n) * (kind != 2)
    ring_wave = beam * rng.uniform(2.5, 4.0, n)
    ring_scale = rng.uniform(15.0, 40.0, n)
    ring_skew = rng.uniform(0.0, 0.7, n)
    n_spokes = rng.integers(3, 7, n)
    spoke_pa = rng.uniform(0.0, 180.0, n)
    spoke_amp = rng.uniform(0.005, 0.02, n) * (kind != 1)
    spoke_width = beam / FWHM_PER_SIGMA * rng.uniform(1.0, 1.5, n)
    spoke_scale = rng.uniform(20.0, 60.0, n)

    scale = np.maximum(
        np.where(ring_amp > 0, ring_scale, 0), np.where(spoke_amp > 0, spoke_scale, 0)
    )
    amp = np.maximum(ring_amp, spoke_amp) * peak / (STAMP_FLOOR_RMS * p.noise_rms_jy)
    extent = scale * np.sqrt(2.0 * np.log(np.maximum(amp, math.e)))
    src = np.arange(n)
    ripples = Ripples(
        src,
        peak,
        ring_amp,
        ring_wave,
        ring_scale,
        ring_skew,
        n_spokes,
        spoke_pa,
        spoke_amp,
        spoke_width,
        spoke_scale,
        extent,
    )
    comps = _components(src, de=0.0, dn=0.0, flux=peak, maj=0.0, mnr=0.0, pa=0.0)
    pa = np.where(spoke_amp > 0, spoke_pa, np.nan)
    return _ClassDraw(comps, 4.0 * scale, pa, ripples)


def _model_peaks(comps: Components, n: int, beam: float) -> np.ndarray:
    """Peak brightness of each source's beam-convolved model, in Jy/beam.

    Evaluates the sum of a source's components at each component centre and keeps the
    largest value (exact for single components, close for blends).

    Returns
    -------
    numpy.ndarray, shape (n,)
        Zero for sources without components.
    """
    m = len(comps.src)
    order = np.argsort(comps.src, kind="stable")
    src = comps.src[order]
    group = np.bincount(src, minlength=n)
    start = np.cumsum(group) - group
    size = group[src]  # per component: components in its source
    i = np.repeat(np.arange(m), size)  # evaluation point (sorted index)
    j = start[src[i]] + (np.arange(len(i)) - np.repeat(np.cumsum(size) - size, size))
    oi, oj = order[i], order[j]
    values = _gaussian_sky(
        comps, oj, comps.de[oi] - comps.de[oj], comps.dn[oi] - comps.dn[oj], beam
    )
    at_centre = np.bincount(i, weights=values, minlength=m)
    peaks = np.zeros(n)
    np.maximum.at(peaks, src, at_centre)
    return peaks


def _gaussian_sky(
    comps: Components, k: np.ndarray, de: np.ndarray, dn: np.ndarray, beam: float
) -> np.ndarray:
    """Brightness (Jy/beam) of components ``k`` at offsets ``(de, dn)`` arcsec from them."""
    maj_c, mnr_c = np.hypot(comps.maj[k], beam), np.hypot(comps.mnr[k], beam)
    peak = comps.flux[k] * beam**2 / (maj_c * mnr_c)
    t = np.radians(comps.pa[k])
    u = de * np.sin(t) + dn * np.cos(t)
    v = de * np.cos(t) - dn * np.sin(t)
    return peak * np.exp(-4.0 * math.log(2.0) * ((u / maj_c) ** 2 + (v / mnr_c) ** 2))
