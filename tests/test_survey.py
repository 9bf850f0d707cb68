"""Tests of the synthetic LoTSS-like survey generator."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from astrocurate.synthetic.survey import (
    CATALOGUE_COLUMNS,
    CLASS_NAMES,
    DEFAULT_CLASS_FRACTIONS,
    FOOTPRINT_RADIUS_FRACTION,
    SurveyInfo,
    load_truth_catalogue,
    make_survey,
)

SEED = 7
RMS = 1e-4  # default noise_rms_jy
SCALE = 1.5  # default pixel_scale_arcsec
BEAM = 6.0  # default beam_fwhm_arcsec
SIZE = 512  # default mosaic_size
BEAM_PX = BEAM / SCALE
NAME_RE = re.compile(r"^P(\d{3}(?:\.\d+)?)([+-]\d{2}(?:\.\d+)?)$")


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> SurveyInfo:
    """The default survey: 4 mosaics of 512 px (about 4 MB)."""
    return make_survey(tmp_path_factory.mktemp("survey"), seed=SEED)


@pytest.fixture(scope="module")
def truth(survey: SurveyInfo) -> pd.DataFrame:
    return load_truth_catalogue(survey.catalogue_path)


@pytest.fixture(scope="module")
def mosaics(survey: SurveyInfo) -> dict[str, tuple[np.ndarray, WCS, fits.Header]]:
    """Mosaic name -> (data, WCS, header)."""
    out = {}
    for name, path in zip(survey.mosaic_names, survey.mosaic_paths, strict=True):
        with fits.open(path) as hdul:
            header = hdul[0].header.copy()
            out[name] = (np.array(hdul[0].data), WCS(header), header)
    return out


@pytest.fixture(scope="module")
def noise_only(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A single mosaic without sources, shape (512, 512)."""
    info = make_survey(
        tmp_path_factory.mktemp("noise"), n_mosaics=1, source_density_per_deg2=0.0, seed=3
    )
    return fits.getdata(info.mosaic_paths[0])


def _radius_map(n: int) -> np.ndarray:
    """Distance of every pixel from the image centre, shape (n, n)."""
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[:n, :n]
    return np.hypot(xx - c, yy - c)


def _at(data: np.ndarray, x: float, y: float) -> float:
    return float(data[round(y), round(x)])


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("layout", "pattern"),
    [("lotss", "{name}/mosaic-blanked.fits"), ("flat", "{name}.fits")],
    ids=["lotss", "flat"],
)
def test_layout_writes_expected_files(tmp_path: Path, layout: str, pattern: str) -> None:
    info = make_survey(tmp_path, n_mosaics=3, mosaic_size=64, layout=layout)
    assert len(info.mosaic_paths) == len(info.mosaic_names) == 3
    assert len(set(info.mosaic_names)) == 3
    for name, path in zip(info.mosaic_names, info.mosaic_paths, strict=True):
        assert path == tmp_path.resolve() / pattern.format(name=name)
        assert path.is_file()
    assert info.catalogue_path == tmp_path.resolve() / "truth_catalogue.parquet"
    assert info.catalogue_path.is_file() and info.catalogue_csv_path.is_file()
    meta = json.loads(info.metadata_path.read_text())
    assert [m["name"] for m in meta["mosaics"]] == info.mosaic_names
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"


def test_single_mosaic_is_named_after_the_centre(tmp_path: Path) -> None:
    info = make_survey(tmp_path, n_mosaics=1, mosaic_size=64)
    assert info.mosaic_names == ["P180+50"]
    assert info.mosaic_centres == [(180.0, 50.0)]


def test_mosaic_names_encode_centres(survey: SurveyInfo) -> None:
    for name, (ra, dec) in zip(survey.mosaic_names, survey.mosaic_centres, strict=True):
        match = NAME_RE.match(name)
        assert match, name
        decimals = len(match.group(1).partition(".")[2])
        tol = 0.5 * 10.0**-decimals + 1e-9
        assert abs(float(match.group(1)) - ra) <= tol
        assert abs(float(match.group(2)) - dec) <= tol


# --------------------------------------------------------------------------- headers and WCS


def test_header_essentials(survey: SurveyInfo, mosaics: dict) -> None:
    for name, (ra, dec) in zip(survey.mosaic_names, survey.mosaic_centres, strict=True):
        data, _, h = mosaics[name]
        assert data.dtype.kind == "f" and data.dtype.itemsize == 4
        assert data.shape == (SIZE, SIZE)
        assert (h["NAXIS"], h["BITPIX"], h["NAXIS1"], h["NAXIS2"]) == (2, -32, SIZE, SIZE)
        assert h["BUNIT"] == "JY/BEAM"
        assert (h["CTYPE1"], h["CTYPE2"]) == ("RA---SIN", "DEC--SIN")
        assert h["CDELT1"] == pytest.approx(-SCALE / 3600) and h["CDELT2"] == pytest.approx(
            SCALE / 3600
        )
        assert h["CRPIX1"] == h["CRPIX2"] == (SIZE + 1) / 2
        assert (h["CRVAL1"], h["CRVAL2"]) == pytest.approx((ra, dec))
        assert (h["RADESYS"], h["EQUINOX"]) == ("ICRS", 2000.0)
        assert h["BMAJ"] == h["BMIN"] == pytest.approx(BEAM / 3600)
        assert h["BPA"] == 0.0
        assert h["OBJECT"] == name
        assert h["ORIGIN"] == "astrocurate synthetic survey"
        assert h["SEED"] == SEED


def test_wcs_pixel_sky_round_trip(mosaics: dict) -> None:
    rng = np.random.default_rng(0)
    for _, wcs, h in mosaics.values():
        assert wcs.naxis == 2 and wcs.celestial.naxis == 2
        xy = rng.uniform(0, SIZE - 1, size=(1000, 2))
        sky = wcs.pixel_to_world(xy[:, 0], xy[:, 1])
        back = np.column_stack(wcs.world_to_pixel(sky))
        assert np.max(np.abs(back - xy)) < 1e-6
        centre = wcs.pixel_to_world((SIZE - 1) / 2, (SIZE - 1) / 2)
        assert centre.ra.deg == pytest.approx(h["CRVAL1"]) and centre.dec.deg == pytest.approx(
            h["CRVAL2"]
        )
        assert proj_plane_pixel_scales(wcs) * 3600 == pytest.approx([SCALE, SCALE])
        east = wcs.pixel_to_world((SIZE - 1) / 2 - 10, (SIZE - 1) / 2)  # RA grows to the left
        assert centre.position_angle(east).deg == pytest.approx(90.0, abs=0.1)


# --------------------------------------------------------------------------- pixels


def test_nan_outside_footprint_and_finite_inside(mosaics: dict) -> None:
    r = _radius_map(SIZE)
    radius = FOOTPRINT_RADIUS_FRACTION * SIZE
    for data, _, h in mosaics.values():
        assert h["FOOTRAD"] == pytest.approx(radius)
        assert np.isnan(data[r > radius + 0.5]).all()
        assert np.isfinite(data[r < radius - 0.5]).all()


def test_pure_noise_rms_matches_request(noise_only: np.ndarray) -> None:
    finite = noise_only[np.isfinite(noise_only)]
    assert finite.std() == pytest.approx(RMS, rel=0.05)
    assert abs(finite.mean()) < 0.1 * RMS


def _disc(shape: tuple[int, int], x: float, y: float, r_in: float, r_out: float) -> tuple:
    """Index arrays of the pixels with r_in <= distance from (x, y) <= r_out."""
    y0, y1 = max(math.floor(y - r_out), 0), min(math.ceil(y + r_out) + 1, shape[0])
    x0, x1 = max(math.floor(x - r_out), 0), min(math.ceil(x + r_out) + 1, shape[1])
    yy, xx = np.mgrid[y0 : max(y1, y0), x0 : max(x1, x0)]  # empty when off the image
    r = np.hypot(xx - x, yy - y)
    keep = (r >= r_in) & (r <= r_out)
    return yy[keep], xx[keep]


def test_noise_rms_away_from_sources(truth: pd.DataFrame, mosaics: dict) -> None:
    # Mask generously around every source of the survey (also those of the neighbours).
    sources = truth.drop_duplicates("source_id")
    radius = (1.2 * sources["size_arcsec"].to_numpy() + 3 * BEAM) / SCALE
    for data, wcs, _ in mosaics.values():
        x, y = wcs.wcs_world2pix(sources["ra"], sources["dec"], 0)
        free = np.isfinite(data)
        for xi, yi, ri in zip(x, y, radius, strict=True):
            free[_disc(data.shape, xi, yi, 0.0, ri)] = False
        assert free.sum() > 1000
        assert data[free].std() == pytest.approx(RMS, rel=0.10)
        mad_rms = 1.4826 * np.median(np.abs(data[free]))
        assert mad_rms == pytest.approx(RMS, rel=0.10)


@pytest.mark.parametrize("lag", [1, 2, 8], ids=["lag1", "lag2", "lag8"])
def test_noise_is_beam_correlated(noise_only: np.ndarray, lag: int) -> None:
    # White noise smoothed by a Gaussian of sigma s has correlation exp(-d^2 / (4 s^2)).
    sigma = BEAM_PX / (2 * math.sqrt(2 * math.log(2)))
    expected = math.exp(-(lag**2) / (4 * sigma**2))
    a, b = noise_only[:, :-lag], noise_only[:, lag:]
    ok = np.isfinite(a) & np.isfinite(b)
    measured = np.corrcoef(a[ok], b[ok])[0, 1]
    assert measured == pytest.approx(expected, abs=0.03)


# --------------------------------------------------------------------------- truth catalogue


def test_catalogue_schema(survey: SurveyInfo, truth: pd.DataFrame) -> None:
    assert tuple(truth.columns) == CATALOGUE_COLUMNS
    assert truth["source_id"].dtype == np.int64
    assert set(truth["class"]) <= set(CLASS_NAMES)
    assert set(truth["mosaic"]) <= set(survey.mosaic_names)
    assert not truth.duplicated(["source_id", "mosaic"]).any()
    relpaths = {
        n: str(p.relative_to(survey.output_dir))
        for n, p in zip(survey.mosaic_names, survey.mosaic_paths, strict=True)
    }
    assert (truth["mosaic_path"] == truth["mosaic"].map(relpaths)).all()
    assert truth["source_id"].nunique() == survey.n_sources
    assert np.isnan(truth.loc[truth["class"] == "point", "pa_deg"]).all()
    assert (truth["flux_jy"] > 0).all() and (truth["size_arcsec"] >= BEAM).all()


@pytest.mark.parametrize("source", ["dir", "parquet", "csv"])
def test_load_truth_catalogue_from_any_form(
    survey: SurveyInfo, truth: pd.DataFrame, source: str
) -> None:
    path = {
        "dir": survey.output_dir,
        "parquet": survey.catalogue_path,
        "csv": survey.catalogue_csv_path,
    }[source]
    pd.testing.assert_frame_equal(load_truth_catalogue(path), truth, check_dtype=False)


def test_load_truth_catalogue_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no truth catalogue"):
        load_truth_catalogue(tmp_path)


def test_catalogue_pixels_match_wcs(truth: pd.DataFrame, mosaics: dict) -> None:
    for name, rows in truth.groupby("mosaic"):
        data, wcs, _ = mosaics[name]
        sky = SkyCoord(rows["ra"].to_numpy() * u.deg, rows["dec"].to_numpy() * u.deg, frame="icrs")
        x, y = wcs.world_to_pixel(sky)
        assert np.max(np.abs(x - rows["x"])) < 1e-6 and np.max(np.abs(y - rows["y"])) < 1e-6
        values = data[np.round(rows["y"]).astype(int), np.round(rows["x"]).astype(int)]
        assert np.isfinite(values).all()


def test_bright_compact_sources_sit_on_their_positions(truth: pd.DataFrame, mosaics: dict) -> None:
    bright = truth[truth["class"].isin(["point", "artefact"]) & (truth["peak_snr"] >= 20)]
    assert len(bright) >= 10
    for row in bright.itertuples():
        data = mosaics[row.mosaic][0]
        assert _at(data, row.x, row.y) > 0.5 * row.peak_snr * RMS, row


def test_empty_positions_are_noise(truth: pd.DataFrame, mosaics: dict) -> None:
    # The same positions shifted well away from the sources are mostly noise.
    compact = truth[(truth["class"] == "point") & (truth["peak_snr"] >= 20)]
    values = []
    for row in compact.itertuples():
        data = mosaics[row.mosaic][0]
        value = _at(data, row.x + 17.3, row.y - 11.9)
        if np.isfinite(value):
            values.append(value)
    assert np.median(np.abs(values)) < 3 * RMS


def test_double_lobes_lie_along_position_angle(truth: pd.DataFrame, mosaics: dict) -> None:
    def box_max(data: np.ndarray, x: float, y: float) -> float:
        xi, yi = round(x), round(y)
        return float(np.nanmax(data[yi - 3 : yi + 4, xi - 3 : xi + 4]))

    radius = FOOTPRINT_RADIUS_FRACTION * SIZE - 10
    c = (SIZE - 1) / 2
    n_tested = n_along = 0
    for row in truth[truth["class"] == "double"].itertuples():
        if math.hypot(row.x - c, row.y - c) + row.size_arcsec / SCALE > radius:
            continue
        data = mosaics[row.mosaic][0]
        d = 0.4 * row.size_arcsec / SCALE
        pa = math.radians(row.pa_deg)
        dx, dy = -d * math.sin(pa), d * math.cos(pa)  # east is -x
        lobes = [box_max(data, row.x + s * dx, row.y + s * dy) for s in (1, -1)]
        across = [box_max(data, row.x + s * dy, row.y - s * dx) for s in (1, -1)]
        assert min(lobes) > 5 * RMS, row
        n_tested += 1
        n_along += sum(lobes) > sum(across)
    assert n_tested >= 10
    assert n_along >= 0.9 * n_tested


def test_artefacts_ripple_beyond_the_beam(truth: pd.DataFrame, mosaics: dict) -> None:
    def annulus_std(data: np.ndarray, x: float, y: float) -> float:
        return float(np.nanstd(data[_disc(data.shape, x, y, 2 * BEAM_PX, 4 * BEAM_PX)]))

    artefacts = truth[truth["class"] == "artefact"]
    points = truth[(truth["class"] == "point") & (truth["peak_snr"].between(20, 200))]
    assert len(artefacts) >= 3 and len(points) >= 3
    for row in artefacts.itertuples():
        assert annulus_std(mosaics[row.mosaic][0], row.x, row.y) > 2 * RMS, row
    control = [annulus_std(mosaics[r.mosaic][0], r.x, r.y) for r in points.itertuples()]
    assert np.median(control) < 1.5 * RMS


# --------------------------------------------------------------------------- overlaps


def test_neighbouring_mosaics_overlap(survey: SurveyInfo, truth: pd.DataFrame) -> None:
    shared = truth.groupby("source_id")["mosaic"].nunique()
    assert (shared >= 2).sum() >= 10
    per_source = truth.groupby("source_id")[["class", "ra", "dec", "flux_jy", "peak_snr"]]
    assert (per_source.nunique() == 1).all().all()
    ra, dec = np.array(survey.mosaic_centres).T
    centres = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    spacing = centres[0].separation(centres[1]).deg
    width = SIZE * SCALE / 3600
    assert spacing == pytest.approx(0.75 * width, rel=1e-3)


def test_overlapping_mosaics_agree_on_the_sky(truth: pd.DataFrame, mosaics: dict) -> None:
    fwhm2 = BEAM_PX**2
    pairs = truth[truth.duplicated("source_id", keep=False)]
    bright = pairs[(pairs["class"] == "point") & (pairs["peak_snr"] >= 10)]
    n_compared = 0
    for _, rows in bright.groupby("source_id"):
        (a, b) = list(rows.itertuples())[:2]
        data_a, wcs_a, _ = mosaics[a.mosaic]
        data_b, wcs_b, _ = mosaics[b.mosaic]
        # Same sky position through two independent WCSs.
        xb, yb = wcs_b.world_to_pixel(wcs_a.pixel_to_world(a.x, a.y))
        assert (float(xb), float(yb)) == pytest.approx((b.x, b.y), abs=1e-6)
        # Same peak once the pixel-grid phase is corrected for.
        peaks = []
        for row, data in ((a, data_a), (b, data_b)):
            d2 = (round(row.x) - row.x) ** 2 + (round(row.y) - row.y) ** 2
            peaks.append(_at(data, row.x, row.y) / math.exp(-4 * math.log(2) * d2 / fwhm2))
        assert abs(peaks[0] - peaks[1]) < 5 * math.sqrt(2) * RMS + 0.05 * max(peaks)
        n_compared += 1
    assert n_compared >= 3


def test_overlap_pixels_correlate(survey: SurveyInfo, mosaics: dict) -> None:
    # Resample mosaic 1 onto the pixels of mosaic 0 inside the overlap: the shared sky makes
    # them correlate; the same pixels misregistered by a few beams do not.
    data_a, wcs_a, _ = mosaics[survey.mosaic_names[0]]
    data_b, wcs_b, _ = mosaics[survey.mosaic_names[1]]
    yy, xx = np.nonzero(np.isfinite(data_a))
    xb, yb = wcs_b.world_to_pixel(wcs_a.pixel_to_world(xx, yy))
    xb, yb = np.round(xb).astype(int), np.round(yb).astype(int)

    def correlation(shift: int) -> float:
        ok = (xb + shift >= 0) & (xb + shift < SIZE) & (yb >= 0) & (yb < SIZE)
        va = data_a[yy[ok], xx[ok]]
        vb = data_b[yb[ok], xb[ok] + shift]
        both = np.isfinite(va) & np.isfinite(vb)
        clip = (-5 * RMS, 50 * RMS)
        return float(np.corrcoef(np.clip(va[both], *clip), np.clip(vb[both], *clip))[0, 1])

    assert correlation(0) > 0.3
    assert abs(correlation(25)) < 0.5 * correlation(0)


# --------------------------------------------------------------------------- determinism


def _read_all(info: SurveyInfo) -> tuple[list[bytes], pd.DataFrame]:
    return [p.read_bytes() for p in info.mosaic_paths], load_truth_catalogue(info.catalogue_path)


def test_same_seed_gives_identical_outputs(tmp_path: Path) -> None:
    kwargs = {"n_mosaics": 2, "mosaic_size": 128, "source_density_per_deg2": 30000, "seed": 11}
    files_a, cat_a = _read_all(make_survey(tmp_path / "a", **kwargs))
    files_b, cat_b = _read_all(make_survey(tmp_path / "b", **kwargs))
    assert files_a == files_b
    pd.testing.assert_frame_equal(cat_a, cat_b)
    assert (tmp_path / "a/survey.json").read_text() == (tmp_path / "b/survey.json").read_text()


def test_different_seed_gives_different_outputs(tmp_path: Path) -> None:
    kwargs = {"n_mosaics": 2, "mosaic_size": 128, "source_density_per_deg2": 30000}
    a = make_survey(tmp_path / "a", seed=1, **kwargs)
    b = make_survey(tmp_path / "b", seed=2, **kwargs)
    for pa, pb in zip(a.mosaic_paths, b.mosaic_paths, strict=True):
        da, db = fits.getdata(pa), fits.getdata(pb)
        ok = np.isfinite(da)
        assert not np.allclose(da[ok], db[ok])
    cat_a, cat_b = load_truth_catalogue(a.catalogue_path), load_truth_catalogue(b.catalogue_path)
    assert not cat_a[["ra", "dec"]].equals(cat_b[["ra", "dec"]])


# --------------------------------------------------------------------------- class mix


def test_default_survey_has_rare_classes(survey: SurveyInfo, truth: pd.DataFrame) -> None:
    counts = truth.drop_duplicates("source_id")["class"].value_counts().to_dict()
    assert counts == {c: n for c, n in survey.class_counts.items() if n}
    assert 200 <= survey.n_sources <= 1000
    assert counts["artefact"] >= 3 and counts["diffuse"] >= 5 and counts["double"] >= 20


def test_class_fractions_respected(tmp_path: Path) -> None:
    info = make_survey(tmp_path, n_mosaics=1, mosaic_size=256, source_density_per_deg2=60000)
    n = info.n_sources
    assert n >= 300
    for name, fraction in DEFAULT_CLASS_FRACTIONS.items():
        assert abs(info.class_counts[name] - fraction * n) <= 1.0, name


def test_custom_class_fractions(tmp_path: Path) -> None:
    info = make_survey(
        tmp_path,
        n_mosaics=1,
        mosaic_size=256,
        source_density_per_deg2=20000,
        class_fractions={"point": 3, "double": 3},
    )
    truth = load_truth_catalogue(info.catalogue_path)
    assert set(truth["class"]) == {"point", "double"}
    assert abs(info.class_counts["point"] - info.class_counts["double"]) <= 1


def test_rare_classes_guaranteed_in_small_survey(tmp_path: Path) -> None:
    info = make_survey(tmp_path, n_mosaics=1, mosaic_size=128)
    assert 4 <= info.n_sources < 50
    assert all(info.class_counts[c] >= 1 for c in CLASS_NAMES)


def test_zero_density_gives_empty_catalogue(tmp_path: Path) -> None:
    info = make_survey(tmp_path, n_mosaics=2, mosaic_size=64, source_density_per_deg2=0)
    truth = load_truth_catalogue(info.catalogue_path)
    assert info.n_sources == 0 and truth.empty
    assert tuple(truth.columns) == CATALOGUE_COLUMNS


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"n_mosaics": 0}, r"n_mosaics=0 must be >= 1", id="n_mosaics-zero"),
        pytest.param(
            {"n_mosaics": 2.0}, r"n_mosaics=2\.0 must be an integer", id="n_mosaics-float"
        ),
        pytest.param({"mosaic_size": 8}, r"mosaic_size=8 must be >= 32", id="mosaic_size-small"),
        pytest.param(
            {"pixel_scale_arcsec": -1.0},
            r"pixel_scale_arcsec=-1\.0 must be a finite number",
            id="pixel_scale-negative",
        ),
        pytest.param(
            {"beam_fwhm_arcsec": 2.0},
            r"beam_fwhm_arcsec=2\.0 must be >= 2 \* pixel_scale",
            id="beam-undersampled",
        ),
        pytest.param(
            {"noise_rms_jy": 0.0},
            r"noise_rms_jy=0\.0 must be a finite number in \(0, ",
            id="noise-zero",
        ),
        pytest.param(
            {"noise_rms_jy": math.nan}, r"noise_rms_jy=nan must be a finite number", id="noise-nan"
        ),
        pytest.param(
            {"source_density_per_deg2": -5},
            r"source_density_per_deg2=-5 must be",
            id="density-negative",
        ),
        pytest.param(
            {"class_fractions": {"galaxy": 1.0}},
            r"unknown class 'galaxy'; valid classes: point",
            id="fractions-unknown",
        ),
        pytest.param(
            {"class_fractions": {"point": -1.0}},
            r"class_fractions\['point'\]=-1\.0 must be >= 0",
            id="fractions-negative",
        ),
        pytest.param(
            {"class_fractions": {"point": 0.0}},
            r"class_fractions=.* must have a positive sum",
            id="fractions-zero-sum",
        ),
        pytest.param(
            {"class_fractions": [0.5, 0.5]},
            r"class_fractions=\[0\.5, 0\.5\] must be a mapping",
            id="fractions-not-mapping",
        ),
        pytest.param(
            {"overlap_fraction": 1.0},
            r"overlap_fraction=1\.0 must be a finite number in \[0, 1\)",
            id="overlap-one",
        ),
        pytest.param(
            {"centre_dec_deg": 95.0},
            r"centre_dec_deg=95\.0 must be a finite number in \[-90, 90\]",
            id="dec-out-of-range",
        ),
        pytest.param(
            {"centre_dec_deg": 85.0},
            r"centre_dec_deg=85\.0 puts mosaics at \|dec\|",
            id="dec-near-pole",
        ),
        pytest.param(
            {"mosaic_size": 65536},
            r"mosaic_size=65536 at pixel_scale_arcsec=1\.5 spans 27\.31 deg; .* <= 20",
            id="mosaic-too-wide",
        ),
        pytest.param({"seed": -1}, r"seed=-1 must be >= 0", id="seed-negative"),
        pytest.param(
            {"layout": "nested"},
            r"layout='nested' must be one of 'lotss', 'flat'",
            id="layout-unknown",
        ),
    ],
)
def test_invalid_arguments_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_survey(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_an_existing_survey_with_the_same_parameters_is_reused(tmp_path):
    from astrocurate.synthetic.survey import existing_or_new_survey

    first = existing_or_new_survey(tmp_path / "s", n_mosaics=2, mosaic_size=128, seed=1)
    mosaics = sorted(first.rglob("*.fits"))
    stamps = [p.stat().st_mtime_ns for p in mosaics]
    again = existing_or_new_survey(tmp_path / "s", n_mosaics=2, mosaic_size=128, seed=1)
    assert again == first and [p.stat().st_mtime_ns for p in mosaics] == stamps
    existing_or_new_survey(tmp_path / "s", n_mosaics=2, mosaic_size=128, seed=2)
    assert [p.stat().st_mtime_ns for p in mosaics] != stamps  # other parameters: made anew
