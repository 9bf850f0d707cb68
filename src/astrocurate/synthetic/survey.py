"""Synthetic LoTSS-DR2-like radio survey: FITS mosaics plus a truth catalogue.

The survey is the test fixture and demo data of astrocurate. Sources are drawn once on
the sky (RA/Dec, flux, shape) and rendered analytically into every mosaic whose
footprint contains them, through that mosaic's own SIN-projection WCS, so overlapping
mosaics show the same sky. Each mosaic carries independent beam-correlated Gaussian
noise and is blanked (NaN) outside a circular footprint, like the LoTSS
``mosaic-blanked.fits`` files.

Source classes form a long-tailed mix (:data:`CLASS_NAMES`):

``point``
    Unresolved sources: the restoring beam, peak S/N mostly 5-100.
``double``
    FR-II-like radio galaxies: two lobes elongated along the jet axis, symmetric about a
    faint core, separation 20-90 arcsec, optional compact hotspots at the lobe tips.
``diffuse``
    Low-surface-brightness emission 40-150 arcsec across: elliptical halos and curved
    relic arcs.
``artefact``
    A very bright point source surrounded by calibration artefacts: concentric ripples
    and radial spokes of alternating sign reaching well beyond the beam.

Examples
--------
>>> from astrocurate.synthetic.survey import make_survey, load_truth_catalogue
>>> info = make_survey("demo_survey", n_mosaics=4, seed=0)  # doctest: +SKIP
>>> truth = load_truth_catalogue(info.catalogue_path)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS
from scipy.ndimage import gaussian_filter

from astrocurate.io.atomic import atomic_path
from astrocurate.io.labels import (
    CATALOGUE_COLUMNS,
    CATALOGUE_NAME,
    CLASS_NAMES,
    EMPTY_LABEL,
    find_truth_catalogue,
    label_cutouts,
    load_truth_catalogue,
    truth_labels_for_manifest,
)

__all__ = [
    "CATALOGUE_COLUMNS",
    "CLASS_NAMES",
    "DEFAULT_CLASS_FRACTIONS",
    "DEFAULT_SOURCE_DENSITY_PER_DEG2",
    "EMPTY_LABEL",
    "FOOTPRINT_RADIUS_FRACTION",
    "LAYOUTS",
    "SurveyInfo",
    "find_truth_catalogue",
    "label_cutouts",
    "load_truth_catalogue",
    "make_survey",
    "truth_labels_for_manifest",
]

DEFAULT_CLASS_FRACTIONS: Mapping[str, float] = MappingProxyType(
    {"point": 0.85, "double": 0.10, "diffuse": 0.04, "artefact": 0.01}
)
"""Default fraction of sources in each class."""

DEFAULT_SOURCE_DENSITY_PER_DEG2 = 5000.0
"""Default source density; a few hundred sources in the default 4 x 512 px survey.

About six times the LoTSS-DR2 catalogue density, so that the rare classes appear in
small test surveys.
"""

FOOTPRINT_RADIUS_FRACTION = 0.45
"""Radius of the usable (non-NaN) circle as a fraction of the mosaic width."""

LAYOUTS: tuple[str, ...] = ("lotss", "flat")
"""File layouts: ``<name>/mosaic-blanked.fits`` (LoTSS) or ``<name>.fits`` (flat)."""


METADATA_NAME = "survey.json"
LOTSS_FILE_NAME = "mosaic-blanked.fits"
ORIGIN = "astrocurate synthetic survey"
REFERENCE_FREQUENCY_HZ = 144e6  # LOFAR HBA, as LoTSS

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_MAX_MOSAIC_WIDTH_DEG = 20.0
_MAX_ABS_DEC_DEG = 80.0
_MAX_DENSITY_PER_DEG2 = 1e6
_STAMP_FLOOR_RMS = 0.01  # stamps extend until a component falls below this many rms


@dataclass(frozen=True)
class SurveyInfo:
    """What :func:`make_survey` wrote.

    Attributes
    ----------
    output_dir : Path
        Root directory of the survey.
    mosaic_names : list of str
        Mosaic names (``P<ra>+<dec>``), in generation order.
    mosaic_paths : list of Path
        Absolute paths of the FITS mosaics, in the same order.
    mosaic_centres : list of tuple of float
        ``(ra_deg, dec_deg)`` of each mosaic centre (its CRVAL), ICRS.
    catalogue_path : Path
        The Parquet truth catalogue.
    catalogue_csv_path : Path
        Its CSV twin.
    metadata_path : Path
        ``survey.json``: parameters, mosaics and class counts.
    n_sources : int
        Number of distinct sources inside at least one footprint.
    class_counts : dict of str to int
        Number of distinct sources per class.
    mosaic_size : int
        Width and height of every mosaic in pixels.
    pixel_scale_arcsec : float
        Pixel size in arcsec.
    beam_fwhm_arcsec : float
        FWHM of the circular restoring beam in arcsec.
    noise_rms_jy : float
        Pixel rms of the noise in Jy/beam.
    footprint_radius_px : float
        Radius of the non-NaN circle around the mosaic centre, in pixels.
    seed : int
        The random seed.
    """

    output_dir: Path
    mosaic_names: list[str]
    mosaic_paths: list[Path]
    mosaic_centres: list[tuple[float, float]]
    catalogue_path: Path
    catalogue_csv_path: Path
    metadata_path: Path
    n_sources: int
    class_counts: dict[str, int]
    mosaic_size: int
    pixel_scale_arcsec: float
    beam_fwhm_arcsec: float
    noise_rms_jy: float
    footprint_radius_px: float
    seed: int


@dataclass(frozen=True)
class _Params:
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

    @property
    def footprint_radius_px(self) -> float:
        return FOOTPRINT_RADIUS_FRACTION * self.mosaic_size

    @property
    def width_deg(self) -> float:
        return self.mosaic_size * self.pixel_scale_arcsec / 3600.0


@dataclass(frozen=True)
class _Mosaic:
    """One mosaic of the survey grid."""

    index: int
    name: str
    ra_deg: float
    dec_deg: float
    relpath: str


@dataclass(frozen=True)
class _Components:
    """Elliptical Gaussian components; offsets and sizes in arcsec, shapes ``(m,)``."""

    src: np.ndarray  # source index
    de: np.ndarray  # offset east of the source centre
    dn: np.ndarray  # offset north of the source centre
    flux: np.ndarray  # total flux, Jy
    maj: np.ndarray  # intrinsic FWHM along the major axis (0 = unresolved)
    mnr: np.ndarray  # intrinsic FWHM along the minor axis
    pa: np.ndarray  # position angle of the major axis, deg east of north

    @staticmethod
    def concat(parts: list[_Components]) -> _Components:
        fields = ("src", "de", "dn", "flux", "maj", "mnr", "pa")
        if not parts:
            return _Components(np.zeros(0, np.int64), *(np.zeros(0) for _ in fields[1:]))
        return _Components(*(np.concatenate([getattr(c, f) for c in parts]) for f in fields))


@dataclass(frozen=True)
class _Ripples:
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

    comps: _Components
    size_arcsec: np.ndarray
    pa_deg: np.ndarray
    ripples: _Ripples | None = None


@dataclass(frozen=True)
class _Sky:
    """The survey-wide sky model."""

    sources: pd.DataFrame  # source_id, class, ra, dec, flux_jy, peak_snr, size_arcsec, pa_deg
    comp_ra: np.ndarray
    comp_dec: np.ndarray
    comps: _Components
    ripple_ra: np.ndarray
    ripple_dec: np.ndarray
    ripples: _Ripples


# --------------------------------------------------------------------------- public API


def make_survey(
    output_dir: str | os.PathLike[str],
    *,
    n_mosaics: int = 4,
    mosaic_size: int = 512,
    pixel_scale_arcsec: float = 1.5,
    beam_fwhm_arcsec: float = 6.0,
    noise_rms_jy: float = 1e-4,
    source_density_per_deg2: float = DEFAULT_SOURCE_DENSITY_PER_DEG2,
    class_fractions: Mapping[str, float] | None = None,
    centre_ra_deg: float = 180.0,
    centre_dec_deg: float = 50.0,
    overlap_fraction: float = 0.25,
    seed: int = 0,
    layout: str = "lotss",
) -> SurveyInfo:
    """Write a synthetic LoTSS-like radio survey and its truth catalogue.

    The mosaics lie on a grid of rows of constant declination around the survey centre,
    neighbours overlapping by ``overlap_fraction`` of the mosaic width. Files appear
    atomically; the catalogue is written last.

    Parameters
    ----------
    output_dir : str or path-like
        Directory to write into (created if missing; existing files are replaced).
    n_mosaics : int, default 4
        Number of mosaics.
    mosaic_size : int, default 512
        Width and height of each mosaic in pixels (LoTSS-DR2: about 8000-10000).
    pixel_scale_arcsec : float, default 1.5
        Pixel size in arcsec.
    beam_fwhm_arcsec : float, default 6.0
        FWHM of the circular restoring beam; at least two pixels.
    noise_rms_jy : float, default 1e-4
        Pixel rms of the beam-correlated noise in Jy/beam.
    source_density_per_deg2 : float, default :data:`DEFAULT_SOURCE_DENSITY_PER_DEG2`
        Sources per square degree (0 gives pure noise).
    class_fractions : mapping of str to float, optional
        Relative frequency of each class in :data:`CLASS_NAMES`; missing classes get
        0; normalised to sum 1. Default :data:`DEFAULT_CLASS_FRACTIONS`.
    centre_ra_deg, centre_dec_deg : float, default 180.0, 50.0
        Survey centre (ICRS, degrees).
    overlap_fraction : float, default 0.25
        Overlap of neighbouring mosaics as a fraction of the width, in [0, 1).
    seed : int, default 0
        Seed of every random draw; the same seed gives byte-identical files.
    layout : {"lotss", "flat"}, default "lotss"
        ``<output_dir>/<name>/mosaic-blanked.fits`` or ``<output_dir>/<name>.fits``.

    Returns
    -------
    SurveyInfo
        Paths and summary of what was written.

    Raises
    ------
    ValueError
        If a parameter is out of range; the message names it and the valid range.

    Notes
    -----
    The truth catalogue (``truth_catalogue.parquet`` and ``.csv``) has one row per
    source and mosaic whose footprint contains the source centre, with the columns of
    :data:`CATALOGUE_COLUMNS`; see :func:`load_truth_catalogue`.
    """
    p = _validate(
        n_mosaics=n_mosaics,
        mosaic_size=mosaic_size,
        pixel_scale_arcsec=pixel_scale_arcsec,
        beam_fwhm_arcsec=beam_fwhm_arcsec,
        noise_rms_jy=noise_rms_jy,
        source_density_per_deg2=source_density_per_deg2,
        class_fractions=class_fractions,
        centre_ra_deg=centre_ra_deg,
        centre_dec_deg=centre_dec_deg,
        overlap_fraction=overlap_fraction,
        seed=seed,
        layout=layout,
    )
    out = Path(output_dir).resolve()
    mosaics = _layout_mosaics(p)
    wcss = [_mosaic_wcs(p, m) for m in mosaics]
    sky_seed, noise_seed = np.random.SeedSequence(p.seed).spawn(2)
    sky = _make_sky(p, wcss, np.random.default_rng(sky_seed))

    out.mkdir(parents=True, exist_ok=True)
    for m, wcs, ss in zip(mosaics, wcss, noise_seed.spawn(p.n_mosaics), strict=True):
        image = _render_mosaic(p, wcs, sky, np.random.default_rng(ss))
        _write_fits(out / m.relpath, image, _mosaic_header(p, m))
        del image

    truth = _truth_catalogue(p, mosaics, wcss, sky)
    counts = sky.sources["class"].value_counts()
    class_counts = {c: int(counts.get(c, 0)) for c in CLASS_NAMES}
    info = SurveyInfo(
        output_dir=out,
        mosaic_names=[m.name for m in mosaics],
        mosaic_paths=[out / m.relpath for m in mosaics],
        mosaic_centres=[(m.ra_deg, m.dec_deg) for m in mosaics],
        catalogue_path=out / CATALOGUE_NAME,
        catalogue_csv_path=out / Path(CATALOGUE_NAME).with_suffix(".csv"),
        metadata_path=out / METADATA_NAME,
        n_sources=len(sky.sources),
        class_counts=class_counts,
        mosaic_size=p.mosaic_size,
        pixel_scale_arcsec=p.pixel_scale_arcsec,
        beam_fwhm_arcsec=p.beam_fwhm_arcsec,
        noise_rms_jy=p.noise_rms_jy,
        footprint_radius_px=p.footprint_radius_px,
        seed=p.seed,
    )
    _write_atomic(info.metadata_path, lambda tmp: tmp.write_text(_metadata_json(p, info)))
    _write_atomic(info.catalogue_csv_path, lambda tmp: truth.to_csv(tmp, index=False))
    _write_atomic(info.catalogue_path, lambda tmp: truth.to_parquet(tmp, index=False))
    return info


# --------------------------------------------------------------------------- validation


def _validate(**kw: object) -> _Params:
    """Check every argument of :func:`make_survey` and return them normalised."""
    p = _Params(
        n_mosaics=_check_int("n_mosaics", kw["n_mosaics"], 1, 10_000),
        mosaic_size=_check_int("mosaic_size", kw["mosaic_size"], 32, 65_536),
        pixel_scale_arcsec=_check_real("pixel_scale_arcsec", kw["pixel_scale_arcsec"], 0.0),
        beam_fwhm_arcsec=_check_real("beam_fwhm_arcsec", kw["beam_fwhm_arcsec"], 0.0),
        noise_rms_jy=_check_real("noise_rms_jy", kw["noise_rms_jy"], 0.0),
        source_density_per_deg2=_check_real(
            "source_density_per_deg2",
            kw["source_density_per_deg2"],
            0.0,
            _MAX_DENSITY_PER_DEG2,
            low_open=False,
        ),
        class_fractions=_check_fractions(kw["class_fractions"]),
        centre_ra_deg=_check_real("centre_ra_deg", kw["centre_ra_deg"]) % 360.0,
        centre_dec_deg=_check_real(
            "centre_dec_deg", kw["centre_dec_deg"], -90.0, 90.0, low_open=False, high_open=False
        ),
        overlap_fraction=_check_real(
            "overlap_fraction", kw["overlap_fraction"], 0.0, 1.0, low_open=False
        ),
        seed=_check_int("seed", kw["seed"], 0, 2**63 - 1),
        layout=_check_choice("layout", kw["layout"], LAYOUTS),
    )
    if p.beam_fwhm_arcsec < 2.0 * p.pixel_scale_arcsec:
        raise ValueError(
            f"beam_fwhm_arcsec={p.beam_fwhm_arcsec!r} must be >= 2 * pixel_scale_arcsec"
            f" = {2.0 * p.pixel_scale_arcsec!r} (the beam must span two pixels)"
        )
    if p.width_deg > _MAX_MOSAIC_WIDTH_DEG:
        raise ValueError(
            f"mosaic_size={p.mosaic_size} at pixel_scale_arcsec={p.pixel_scale_arcsec!r} spans"
            f" {p.width_deg:.4g} deg; a mosaic must span <= {_MAX_MOSAIC_WIDTH_DEG} deg"
        )
    rows = _grid_rows(p.n_mosaics)
    reach = ((len(rows) - 1) / 2.0 * _spacing_deg(p) + p.width_deg / 2.0) + abs(p.centre_dec_deg)
    if reach > _MAX_ABS_DEC_DEG:
        raise ValueError(
            f"centre_dec_deg={p.centre_dec_deg!r} puts mosaics at |dec| up to {reach:.1f} deg;"
            f" the survey must stay within |dec| <= {_MAX_ABS_DEC_DEG} deg"
        )
    return p


def _check_int(name: str, value: object, low: int, high: int) -> int:
    """Return ``value`` as int if it is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} must be an integer in [{low}, {high}]")
    if value < low:
        raise ValueError(f"{name}={value!r} must be >= {low}")
    if value > high:
        raise ValueError(f"{name}={value!r} must be <= {high}")
    return int(value)


def _check_real(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = True,
    high_open: bool = True,
) -> float:
    """Return ``value`` as float if it is finite and within the given bounds."""
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}, "
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    valid = "a finite number" + (f" in {lo or '(-inf, '}{hi or 'inf)'}" if lo or hi else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} must be {valid}")
    v = float(value)
    bad = not math.isfinite(v)
    bad |= low is not None and (v <= low if low_open else v < low)
    bad |= high is not None and (v >= high if high_open else v > high)
    if bad:
        raise ValueError(f"{name}={value!r} must be {valid}")
    return v


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, choices))}")
    return str(value)


def _check_fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    """Validate class fractions and normalise them to sum 1 over :data:`CLASS_NAMES`."""
    if fractions is None:
        fractions = DEFAULT_CLASS_FRACTIONS
    if not isinstance(fractions, Mapping):
        raise ValueError(
            f"class_fractions={fractions!r} must be a mapping from class name to fraction"
        )
    unknown = sorted(set(fractions) - set(CLASS_NAMES), key=str)
    if unknown:
        raise ValueError(
            f"class_fractions has unknown class {unknown[0]!r}; valid classes: "
            f"{', '.join(CLASS_NAMES)}"
        )
    values = {c: _check_real(f"class_fractions[{c!r}]", fractions.get(c, 0.0)) for c in CLASS_NAMES}
    for c, v in values.items():
        if v < 0:
            raise ValueError(f"class_fractions[{c!r}]={v!r} must be >= 0")
    total = sum(values.values())
    if total <= 0:
        raise ValueError(f"class_fractions={dict(fractions)!r} must have a positive sum")
    return {c: v / total for c, v in values.items()}


# --------------------------------------------------------------------------- geometry


def _grid_rows(n: int) -> list[int]:
    """Count the mosaics in each grid row (south to north) for ``n`` mosaics."""
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    return [min(ncols, n - r * ncols) for r in range(nrows)]


def _spacing_deg(p: _Params) -> float:
    """Angular distance between neighbouring mosaic centres."""
    return p.width_deg * (1.0 - p.overlap_fraction)


def _layout_mosaics(p: _Params) -> list[_Mosaic]:
    """Place the mosaics on rows of constant declination, row-major from the south-east."""
    spacing = _spacing_deg(p)
    rows = _grid_rows(p.n_mosaics)
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
        mosaics.append(_Mosaic(i, name, ra, dec, relpath))
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


def _mosaic_header(p: _Params, m: _Mosaic) -> fits.Header:
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


def _mosaic_wcs(p: _Params, m: _Mosaic) -> WCS:
    """Build the celestial WCS of mosaic ``m``."""
    return WCS(_mosaic_header(p, m), naxis=2)


def _in_footprint(
    p: _Params, wcs: WCS, ra: np.ndarray, dec: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which sky positions lie safely inside a mosaic's footprint.

    Parameters
    ----------
    p : _Params
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


# --------------------------------------------------------------------------- sky model


def _make_sky(p: _Params, wcss: list[WCS], rng: np.random.Generator) -> _Sky:
    """Draw every source of the survey: positions, classes, components and artefacts."""
    ra, dec = _draw_positions(p, wcss, rng)
    counts = _class_counts(len(ra), p.class_fractions)
    labels = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), counts))
    builders = (_draw_points, _draw_doubles, _draw_diffuse, _draw_artefacts)

    size = np.zeros(len(ra))
    pa = np.zeros(len(ra))
    parts: list[_Components] = []
    ripple_parts: list[_Ripples] = []
    for k, build in enumerate(builders):
        idx = np.flatnonzero(labels == k)
        draw = build(rng, len(idx), p)
        size[idx] = draw.size_arcsec
        pa[idx] = draw.pa_deg
        parts.append(_reindex(draw.comps, idx))
        if draw.ripples is not None:
            ripple_parts.append(_reindex(draw.ripples, idx))
    comps = _Components.concat(parts)
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
    return _Sky(sources, comp_ra, comp_dec, comps, ra[ripples.src], dec[ripples.src], ripples)


def _draw_positions(
    p: _Params, wcss: list[WCS], rng: np.random.Generator
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
        keep |= _in_footprint(p, wcs, ra, dec)[0]
    return ra[keep], dec[keep]


def _sky_box(p: _Params) -> tuple[float, float, float, float]:
    """RA/Dec box (degrees, RA unwrapped around the centre) containing every footprint."""
    radius = (
        math.degrees(math.asin(p.footprint_radius_px * math.radians(p.width_deg) / p.mosaic_size))
        * 1.02
        + 1e-6
    )
    spacing = _spacing_deg(p)
    rows = _grid_rows(p.n_mosaics)
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


def _reindex(obj: _Components | _Ripples, idx: np.ndarray) -> _Components | _Ripples:
    """Map local source indices ``0..n-1`` of one class to survey-wide indices."""
    return type(obj)(**{**obj.__dict__, "src": idx[obj.src]})


def _concat_ripples(parts: list[_Ripples]) -> _Ripples:
    """Concatenate artefact patterns (an empty set when there are none)."""
    names = list(_Ripples.__dataclass_fields__)
    if not parts:
        return _Ripples(
            **{f: np.zeros(0, np.int64 if f in ("src", "n_spokes") else float) for f in names}
        )
    return _Ripples(**{f: np.concatenate([getattr(r, f) for r in parts]) for f in names})


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


def _components(src: np.ndarray, **arrays: np.ndarray | float) -> _Components:
    """Build components, broadcasting scalars to the length of ``src``."""
    n = len(src)
    fields = ("de", "dn", "flux", "maj", "mnr", "pa")
    return _Components(
        src, *(np.broadcast_to(np.asarray(arrays[f], float), n).copy() for f in fields)
    )


def _draw_points(rng: np.random.Generator, n: int, p: _Params) -> _ClassDraw:
    """Unresolved sources with peak S/N from a steep power law (mostly 5-100)."""
    flux = _power_law(rng, n, 5.0, 3000.0, 2.5) * p.noise_rms_jy
    comps = _components(np.arange(n), de=0.0, dn=0.0, flux=flux, maj=0.0, mnr=0.0, pa=0.0)
    return _ClassDraw(comps, np.full(n, p.beam_fwhm_arcsec), np.full(n, np.nan))


def _draw_doubles(rng: np.random.Generator, n: int, p: _Params) -> _ClassDraw:
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
    return _ClassDraw(_Components.concat(parts), sep, pa)


def _draw_diffuse(rng: np.random.Generator, n: int, p: _Params) -> _ClassDraw:
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
    return _ClassDraw(_Components.concat(parts), size, pa)


def _relic_arcs(
    idx: np.ndarray,
    length: np.ndarray,
    pa: np.ndarray,
    snr: np.ndarray,
    width: np.ndarray,
    curvature: np.ndarray,
    p: _Params,
    n_comps: int = 8,
) -> _Components:
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


def _draw_artefacts(rng: np.random.Generator, n: int, p: _Params) -> _ClassDraw:
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
    spoke_width = beam / _FWHM_PER_SIGMA * rng.uniform(1.0, 1.5, n)
    spoke_scale = rng.uniform(20.0, 60.0, n)

    scale = np.maximum(
        np.where(ring_amp > 0, ring_scale, 0), np.where(spoke_amp > 0, spoke_scale, 0)
    )
    amp = np.maximum(ring_amp, spoke_amp) * peak / (_STAMP_FLOOR_RMS * p.noise_rms_jy)
    extent = scale * np.sqrt(2.0 * np.log(np.maximum(amp, math.e)))
    src = np.arange(n)
    ripples = _Ripples(
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


def _model_peaks(comps: _Components, n: int, beam: float) -> np.ndarray:
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
    comps: _Components, k: np.ndarray, de: np.ndarray, dn: np.ndarray, beam: float
) -> np.ndarray:
    """Brightness (Jy/beam) of components ``k`` at offsets ``(de, dn)`` arcsec from them."""
    maj_c, mnr_c = np.hypot(comps.maj[k], beam), np.hypot(comps.mnr[k], beam)
    peak = comps.flux[k] * beam**2 / (maj_c * mnr_c)
    t = np.radians(comps.pa[k])
    u = de * np.sin(t) + dn * np.cos(t)
    v = de * np.cos(t) - dn * np.sin(t)
    return peak * np.exp(-4.0 * math.log(2.0) * ((u / maj_c) ** 2 + (v / mnr_c) ** 2))


# --------------------------------------------------------------------------- rendering


def _render_mosaic(p: _Params, wcs: WCS, sky: _Sky, rng: np.random.Generator) -> np.ndarray:
    """Render one mosaic: noise, sources, artefacts, then blank outside the footprint.

    Returns
    -------
    numpy.ndarray of float32, shape (mosaic_size, mosaic_size)
        Jy/beam, NaN outside the footprint.
    """
    image = _beam_noise(p, rng)
    _add_gaussians(image, p, wcs, sky)
    _add_ripples(image, p, wcs, sky)
    _blank_outside_footprint(image, p.footprint_radius_px)
    return image


def _beam_noise(p: _Params, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise smoothed by the beam, scaled to pixel rms ``noise_rms_jy``.

    Returns
    -------
    numpy.ndarray of float32, shape (mosaic_size, mosaic_size)
    """
    sigma_px = p.beam_fwhm_arcsec / p.pixel_scale_arcsec / _FWHM_PER_SIGMA
    white = rng.standard_normal((p.mosaic_size, p.mosaic_size), dtype=np.float32)
    noise = gaussian_filter(white, sigma_px, mode="wrap")
    del white
    noise *= np.float32(p.noise_rms_jy / _smoothing_gain(sigma_px))
    return noise


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


def _add_gaussians(image: np.ndarray, p: _Params, wcs: WCS, sky: _Sky) -> None:
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
    sig_a, sig_b = maj_c / scale / _FWHM_PER_SIGMA, mnr_c / scale / _FWHM_PER_SIGMA
    reach = np.sqrt(
        2.0 * np.log(np.maximum(np.abs(peak) / (_STAMP_FLOOR_RMS * p.noise_rms_jy), math.e))
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


def _add_ripples(image: np.ndarray, p: _Params, wcs: WCS, sky: _Sky) -> None:
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


def _ripple_pattern(r: _Ripples, k: int, de: np.ndarray, dn: np.ndarray, beam: float) -> np.ndarray:
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


# --------------------------------------------------------------------------- outputs


def _truth_catalogue(
    p: _Params, mosaics: list[_Mosaic], wcss: list[WCS], sky: _Sky
) -> pd.DataFrame:
    """One row per (source, mosaic whose footprint contains the source centre)."""
    s = sky.sources
    frames = []
    for m, wcs in zip(mosaics, wcss, strict=True):
        inside, x, y = _in_footprint(p, wcs, s["ra"].to_numpy(), s["dec"].to_numpy())
        frame = s.loc[inside].copy()
        frame["mosaic"] = m.name
        frame["mosaic_path"] = m.relpath
        frame["x"], frame["y"] = x[inside], y[inside]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    return table.loc[:, list(CATALOGUE_COLUMNS)].astype(
        {"source_id": "int64", "class": object, "mosaic": object, "mosaic_path": object}
    )


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        write(tmp)


def _write_fits(path: Path, image: np.ndarray, header: fits.Header) -> None:
    """Write ``image`` as the float32 primary HDU of ``path``, atomically."""
    hdu = fits.PrimaryHDU(data=image, header=header)
    _write_atomic(path, lambda tmp: hdu.writeto(tmp, output_verify="exception"))


def _metadata_json(p: _Params, info: SurveyInfo) -> str:
    """Parameters, mosaics and class counts of the survey as JSON (no timestamps)."""
    params = dict(p.__dict__)
    doc = {
        "origin": ORIGIN,
        "parameters": params,
        "footprint_radius_px": info.footprint_radius_px,
        "mosaics": [
            {"name": name, "path": str(path.relative_to(info.output_dir)), "ra": ra, "dec": dec}
            for name, path, (ra, dec) in zip(
                info.mosaic_names, info.mosaic_paths, info.mosaic_centres, strict=True
            )
        ],
        "catalogue": CATALOGUE_NAME,
        "n_sources": info.n_sources,
        "class_counts": info.class_counts,
    }
    return json.dumps(doc, indent=2) + "\n"
