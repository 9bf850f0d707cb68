"""Synthetic LoTSS-DR2-like radio survey: FITS mosaics plus a truth catalogue.

The survey is the test fixture and demo data of astrocurate. Sources are drawn once on
the sky (RA/Dec, flux, shape) and rendered analytically into every mosaic whose
footprint contains them, through that mosaic's own SIN-projection WCS, so overlapping
mosaics show the same sky. Each mosaic carries independent beam-correlated Gaussian
noise and is blanked (NaN) outside a circular footprint, like the LoTSS
``mosaic-blanked.fits`` files.

This module is the API (:func:`make_survey`): it validates the arguments and writes the
files. The grid of mosaics is :mod:`.geometry`, the sources :mod:`.sky`, the pixels
:mod:`.render`.

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
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

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
from astrocurate.synthetic.geometry import (
    FOOTPRINT_RADIUS_FRACTION,
    LAYOUTS,
    ORIGIN,
    SurveyMosaic,
    SurveyParams,
    grid_rows,
    in_footprint,
    layout_mosaics,
    mosaic_header,
    mosaic_wcs,
    spacing_deg,
)
from astrocurate.synthetic.render import noise_rms_map, render_mosaic
from astrocurate.synthetic.sky import Sky, make_sky
from astrocurate.validation import check_choice, check_int, check_real

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

log = logging.getLogger(__name__)

METADATA_NAME = "survey.json"

_MAX_MOSAIC_WIDTH_DEG = 20.0
_MAX_ABS_DEC_DEG = 80.0
_MAX_DENSITY_PER_DEG2 = 1e6


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
    noise_edge_factor: float = 1.0,
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
        ``<output_dir>/<name>/mosaic-blanked.fits`` or ``<output_dir>/<name>.fits``; the
        noise (rms) map lies beside it as ``<name>/mosaic.rms.fits`` or ``<name>.rms.fits``.
    noise_edge_factor : float, default 1.0
        Noise rms at the edge of a mosaic's footprint over the rms at its centre, >= 1;
        the rms rises with the squared distance from the centre (a mosaic's primary-beam
        correction). 1 gives uniform noise.

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
    The rms maps hold the rms the noise was drawn with. The truth catalogue
    (``truth_catalogue.parquet`` and ``.csv``) has one row per source and mosaic whose
    footprint contains the source centre, with the columns of :data:`CATALOGUE_COLUMNS`;
    see :func:`load_truth_catalogue`.
    """
    p = _validate(**locals())  # the arguments, before any other local exists
    return _write_survey(Path(output_dir).resolve(), p)


def _write_survey(out: Path, p: SurveyParams) -> SurveyInfo:
    """Draw the sky and write the mosaics, their rms maps, the metadata and the truth."""
    mosaics = layout_mosaics(p)
    wcss = [mosaic_wcs(p, m) for m in mosaics]
    sky_seed, noise_seed = np.random.SeedSequence(p.seed).spawn(2)
    sky = make_sky(p, wcss, np.random.default_rng(sky_seed))
    out.mkdir(parents=True, exist_ok=True)
    _write_mosaics(out, p, mosaics, wcss, sky, noise_seed)
    truth = _truth_catalogue(p, mosaics, wcss, sky)
    info = _survey_info(out, p, mosaics, sky)
    _write_atomic(info.metadata_path, lambda tmp: tmp.write_text(_metadata_json(p, info)))
    _write_atomic(info.catalogue_csv_path, lambda tmp: truth.to_csv(tmp, index=False))
    _write_atomic(info.catalogue_path, lambda tmp: truth.to_parquet(tmp, index=False))
    return info


def _write_mosaics(
    out: Path,
    p: SurveyParams,
    mosaics: list[SurveyMosaic],
    wcss: list[WCS],
    sky: Sky,
    noise_seed: np.random.SeedSequence,
) -> None:
    """Render and write every mosaic, one at a time, each with its own noise stream."""
    for m, wcs, ss in zip(mosaics, wcss, noise_seed.spawn(p.n_mosaics), strict=True):
        image = render_mosaic(p, wcs, sky, np.random.default_rng(ss))
        _write_fits(out / m.relpath, image, mosaic_header(p, m))
        del image
        _write_fits(out / m.rms_relpath, noise_rms_map(p), mosaic_header(p, m))


def existing_or_new_survey(output_dir: str | os.PathLike[str], **parameters: Any) -> Path:
    """Return the survey in ``output_dir``, made by :func:`make_survey` unless already there.

    A survey is reused when its ``survey.json`` records the same values of the given
    ``parameters`` (so its mosaics, and the runs made from them, stay unchanged).
    """
    out = Path(output_dir)
    metadata = out / METADATA_NAME
    if metadata.is_file():
        recorded = json.loads(metadata.read_text()).get("parameters", {})
        if all(recorded.get(k) == v for k, v in parameters.items()):
            log.info("using the survey in %s", out)
            return out
    log.info("generating the survey in %s", out)
    return make_survey(out, **parameters).output_dir


def _survey_info(out: Path, p: SurveyParams, mosaics: list[SurveyMosaic], sky: Sky) -> SurveyInfo:
    """Describe the survey written under ``out``."""
    counts = sky.sources["class"].value_counts()
    return SurveyInfo(
        output_dir=out,
        mosaic_names=[m.name for m in mosaics],
        mosaic_paths=[out / m.relpath for m in mosaics],
        mosaic_centres=[(m.ra_deg, m.dec_deg) for m in mosaics],
        catalogue_path=out / CATALOGUE_NAME,
        catalogue_csv_path=out / Path(CATALOGUE_NAME).with_suffix(".csv"),
        metadata_path=out / METADATA_NAME,
        n_sources=len(sky.sources),
        class_counts={c: int(counts.get(c, 0)) for c in CLASS_NAMES},
        mosaic_size=p.mosaic_size,
        pixel_scale_arcsec=p.pixel_scale_arcsec,
        beam_fwhm_arcsec=p.beam_fwhm_arcsec,
        noise_rms_jy=p.noise_rms_jy,
        footprint_radius_px=p.footprint_radius_px,
        seed=p.seed,
    )


# --------------------------------------------------------------------------- validation


def _validate(**kw: object) -> SurveyParams:
    """Check the arguments of :func:`make_survey`, by name, and return them normalised.

    ``kw`` is every argument of :func:`make_survey`; ``output_dir`` is not checked here.
    """
    p = SurveyParams(
        n_mosaics=check_int("n_mosaics", kw["n_mosaics"], 1, 10_000),
        mosaic_size=check_int("mosaic_size", kw["mosaic_size"], 32, 65_536),
        pixel_scale_arcsec=check_real("pixel_scale_arcsec", kw["pixel_scale_arcsec"], 0.0),
        beam_fwhm_arcsec=check_real("beam_fwhm_arcsec", kw["beam_fwhm_arcsec"], 0.0),
        noise_rms_jy=check_real("noise_rms_jy", kw["noise_rms_jy"], 0.0),
        source_density_per_deg2=check_real(
            "source_density_per_deg2",
            kw["source_density_per_deg2"],
            0.0,
            _MAX_DENSITY_PER_DEG2,
            low_open=False,
        ),
        class_fractions=_check_fractions(kw["class_fractions"]),
        centre_ra_deg=check_real("centre_ra_deg", kw["centre_ra_deg"]) % 360.0,
        centre_dec_deg=check_real(
            "centre_dec_deg", kw["centre_dec_deg"], -90.0, 90.0, low_open=False, high_open=False
        ),
        overlap_fraction=check_real(
            "overlap_fraction", kw["overlap_fraction"], 0.0, 1.0, low_open=False
        ),
        seed=check_int("seed", kw["seed"], 0, 2**63 - 1),
        layout=check_choice("layout", kw["layout"], LAYOUTS),
        noise_edge_factor=check_real(
            "noise_edge_factor", kw["noise_edge_factor"], 1.0, 100.0, low_open=False
        ),
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
    rows = grid_rows(p.n_mosaics)
    reach = ((len(rows) - 1) / 2.0 * spacing_deg(p) + p.width_deg / 2.0) + abs(p.centre_dec_deg)
    if reach > _MAX_ABS_DEC_DEG:
        raise ValueError(
            f"centre_dec_deg={p.centre_dec_deg!r} puts mosaics at |dec| up to {reach:.1f} deg;"
            f" the survey must stay within |dec| <= {_MAX_ABS_DEC_DEG} deg"
        )
    return p


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
    values = {c: check_real(f"class_fractions[{c!r}]", fractions.get(c, 0.0)) for c in CLASS_NAMES}
    for c, v in values.items():
        if v < 0:
            raise ValueError(f"class_fractions[{c!r}]={v!r} must be >= 0")
    total = sum(values.values())
    if total <= 0:
        raise ValueError(f"class_fractions={dict(fractions)!r} must have a positive sum")
    return {c: v / total for c, v in values.items()}


# --------------------------------------------------------------------------- outputs


def _truth_catalogue(
    p: SurveyParams, mosaics: list[SurveyMosaic], wcss: list[WCS], sky: Sky
) -> pd.DataFrame:
    """One row per (source, mosaic whose footprint contains the source centre)."""
    s = sky.sources
    frames = []
    for m, wcs in zip(mosaics, wcss, strict=True):
        inside, x, y = in_footprint(p, wcs, s["ra"].to_numpy(), s["dec"].to_numpy())
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


def _metadata_json(p: SurveyParams, info: SurveyInfo) -> str:
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
