"""Source catalogues (astrocurate.io.catalogues) and their match to cutouts
(astrocurate.algorithms.catalogue_match)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astrocurate.algorithms.catalogue_match import (
    CATALOGUE_COLUMNS,
    UNKNOWN,
    dominant_s_code,
    match_sources,
    steering_labels,
)
from astrocurate.errors import InvalidArgumentError
from astrocurate.io.catalogues import CANONICAL_COLUMNS, read_catalogue
from astrocurate.io.companion_files import (
    CATALOGUE_AUTO_NAMES,
    RMS_AUTO_NAMES,
    catalogue_for_mosaic,
    check_companion_spec,
    companion_file,
    rms_map_for_mosaic,
)

BEAM_ARCSEC = 6.0
PIXEL_ARCSEC = 1.5
#: (x, y, peak Jy/beam) of the point sources of the synthetic image (0-based pixels).
POINT_SOURCES = [(40, 50, 5e-3), (200, 60, 1e-2), (128, 128, 3e-3), (60, 200, 8e-3)]


def _one_line_error(excinfo: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    return message


# --------------------------------------------------------------------------- PyBDSF itself


def _synthetic_image(path: Path) -> None:
    """A 256 x 256 SIN-projected image: point sources of the beam's size plus noise."""
    from astropy.io import fits
    from astropy.wcs import WCS

    n = 256
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    wcs.wcs.crval = [150.0, 30.0]
    wcs.wcs.crpix = [n / 2 + 1, n / 2 + 1]
    wcs.wcs.cdelt = [-PIXEL_ARCSEC / 3600, PIXEL_ARCSEC / 3600]
    header = wcs.to_header()
    header["BMAJ"] = header["BMIN"] = BEAM_ARCSEC / 3600
    header["BPA"] = 0.0
    header["BUNIT"] = "JY/BEAM"
    header["RESTFRQ"] = 1.44e8
    sigma = BEAM_ARCSEC / PIXEL_ARCSEC / np.sqrt(8 * np.log(2))
    yy, xx = np.mgrid[0:n, 0:n]
    image = np.random.default_rng(0).normal(0.0, 1e-4, (n, n))
    for x, y, peak in POINT_SOURCES:
        image += peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    fits.PrimaryHDU(image.astype(np.float32), header).writeto(path)


@pytest.fixture(scope="module")
def pybdsf_lists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Source lists written by PyBDSF itself: FITS, CSV and ASCII."""
    bdsf = pytest.importorskip("bdsf")
    folder = tmp_path_factory.mktemp("pybdsf")
    image = folder / "field.fits"
    _synthetic_image(image)
    img = bdsf.process_image(str(image), quiet=True, frequency=1.44e8)
    lists = {
        "fits": folder / "field.srl.fits",
        "csv": folder / "field.srl.csv",
        "ascii": folder / "field.srl",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy: PyBDSF's header comment is truncated
        for fmt, path in lists.items():
            assert img.write_catalog(outfile=str(path), format=fmt, catalog_type="srl")
    return lists


def test_pybdsf_source_lists_read_the_same_in_every_format(pybdsf_lists) -> None:
    tables = {fmt: read_catalogue(path) for fmt, path in pybdsf_lists.items()}
    fits_table = tables["fits"]
    assert list(fits_table.columns) == list(CANONICAL_COLUMNS)
    assert len(fits_table) == len(POINT_SOURCES)
    for fmt in ("csv", "ascii"):
        pd.testing.assert_frame_equal(tables[fmt], fits_table, check_exact=False, rtol=1e-9)
    for column in CANONICAL_COLUMNS[:-1]:
        assert fits_table[column].dtype == np.float64
    assert set(fits_table["s_code"]) <= {"S", "M", "C"}


def test_pybdsf_units_are_degrees_and_jansky(pybdsf_lists) -> None:
    """Point sources: Maj is the beam (6 arcsec, written in degrees), fluxes in Jy."""
    from astropy.io import fits
    from astropy.wcs import WCS

    table = read_catalogue(pybdsf_lists["csv"]).sort_values("total_flux_jy")
    np.testing.assert_allclose(table["major_arcsec"], BEAM_ARCSEC, rtol=0.1)
    peaks = sorted(peak for _, _, peak in POINT_SOURCES)
    np.testing.assert_allclose(table["peak_flux_jy"], peaks, rtol=0.1)
    np.testing.assert_allclose(table["total_flux_jy"], peaks, rtol=0.1)  # unresolved
    image = pybdsf_lists["fits"].parent / "field.fits"
    x, y = WCS(fits.getheader(image)).celestial.world_to_pixel_values(
        table["ra_deg"], table["dec_deg"]
    )
    truth = sorted(POINT_SOURCES, key=lambda source: source[2])
    np.testing.assert_allclose(x, [s[0] for s in truth], atol=0.2)
    np.testing.assert_allclose(y, [s[1] for s in truth], atol=0.2)


# --------------------------------------------------------------------------- FITS tables


def _fits_table(path: Path, **overrides) -> Path:
    from astropy.table import Table

    columns = {
        "Source_id": [0, 1, 2],
        "RA": [10.0, 10.1, 359.9],
        "DEC": [20.0, -20.0, 89.0],
        "Total_flux": [1.5, 20.0, 0.3],
        "Peak_flux": [1.0, 10.0, 0.3],
        "Maj": [6.0 / 3600, 36.0 / 3600, 0.0025],
        "DC_Maj": [0.0, 0.009, 0.0],
        "S_Code": ["S", "M", "C"],
    }
    units = {
        "RA": "deg",
        "DEC": "deg",
        "Total_flux": "mJy",
        "Peak_flux": "mJy/beam",
        "Maj": "deg",
        "DC_Maj": "deg",
    }
    columns.update(overrides.pop("columns", {}))
    units.update(overrides.pop("units", {}))
    table = Table(columns)
    for name, unit in units.items():
        if name in table.colnames:
            table[name].unit = unit
    table.write(path)
    return path


@pytest.mark.parametrize("name", ["cat.fits", "cat.FIT", "cat.fits.gz"])
def test_fits_table_units_are_converted(tmp_path, name) -> None:
    table = read_catalogue(_fits_table(tmp_path / name))
    np.testing.assert_allclose(table["ra_deg"], [10.0, 10.1, 359.9])
    np.testing.assert_allclose(table["dec_deg"], [20.0, -20.0, 89.0])
    np.testing.assert_allclose(table["total_flux_jy"], [1.5e-3, 20e-3, 0.3e-3])
    np.testing.assert_allclose(table["peak_flux_jy"], [1e-3, 10e-3, 0.3e-3])
    np.testing.assert_allclose(table["major_arcsec"], [6.0, 36.0, 9.0])  # Maj, not DC_Maj
    assert table["s_code"].tolist() == ["S", "M", "C"]
    assert table.attrs["n_dropped"] == 0


def test_lotss_style_table_in_arcsec_and_mjy(tmp_path) -> None:
    path = _fits_table(
        tmp_path / "lotss.fits",
        columns={"Maj": [6.0, 36.0, 9.0]},
        units={"Maj": "arcsec", "Peak_flux": "mJy/beam"},
    )
    table = read_catalogue(path)
    np.testing.assert_allclose(table["major_arcsec"], [6.0, 36.0, 9.0])
    np.testing.assert_allclose(table["peak_flux_jy"], [1e-3, 10e-3, 0.3e-3])


def test_upper_case_units(tmp_path) -> None:
    path = tmp_path / "upper.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns about units it does not know
        _fits_table(path, units={"Maj": "DEG", "Peak_flux": "JY/BEAM", "Total_flux": "mJY"})
        table = read_catalogue(path)
    np.testing.assert_allclose(table["major_arcsec"], [6.0, 36.0, 9.0])
    np.testing.assert_allclose(table["peak_flux_jy"], [1.0, 10.0, 0.3])
    np.testing.assert_allclose(table["total_flux_jy"], [1.5e-3, 20e-3, 0.3e-3])


def test_fits_table_without_units_follows_pybdsf(tmp_path) -> None:
    from astropy.table import Table

    path = tmp_path / "bare.fits"
    Table({"ra": [1.0], "dec": [2.0], "maj": [0.001], "total_flux": [0.5]}).write(path)
    table = read_catalogue(path)
    np.testing.assert_allclose(table["major_arcsec"], [3.6])
    np.testing.assert_allclose(table["total_flux_jy"], [0.5])
    assert np.isnan(table["peak_flux_jy"]).all()
    assert table["s_code"].tolist() == [""]


def test_the_first_table_hdu_is_read(tmp_path) -> None:
    from astropy.io import fits
    from astropy.table import Table

    path = tmp_path / "two.fits"
    first = fits.table_to_hdu(Table({"RA": [1.0], "DEC": [2.0]}))
    second = fits.table_to_hdu(Table({"RA": [3.0], "DEC": [4.0]}))
    fits.HDUList([fits.PrimaryHDU(np.zeros((2, 2))), first, second]).writeto(path)
    assert read_catalogue(path)["ra_deg"].tolist() == [1.0]


def test_rows_without_position_are_dropped_and_logged(tmp_path, caplog) -> None:
    path = _fits_table(tmp_path / "nan.fits", columns={"RA": [10.0, np.nan, 11.0]})
    with caplog.at_level(logging.WARNING, logger="astrocurate.io.catalogues"):
        table = read_catalogue(path)
    assert table["ra_deg"].tolist() == [10.0, 11.0]
    assert table["s_code"].tolist() == ["S", "C"]
    assert table.attrs["n_dropped"] == 1
    assert "1 rows without RA/DEC" in caplog.text


# --------------------------------------------------------------------------- text, Parquet


PYBDSF_CSV = """\
# Source list for field.fits
# Generated by PyBDSF version 1.14.1
# Reference frequency of the detection ("ch0") image: 1.44000e+08 Hz
# Equinox : 2000.0 

# Source_id, Isl_id, RA, E_RA, DEC, E_DEC, Total_flux, E_Total_flux, Peak_flux, E_Peak_flux, Maj, E_Maj, DC_Maj, S_Code
   0,    0, 150.04232823904161, 0.00001461709254, 29.96749277398378, 0.00001384979780, 0.00502685411900, 0.00017432430671, 0.00500179719955, 0.00010029900295, 0.00169373688775, 0.00003442727366, 0.00020000000000, S   
   1,    1, 150.03272292159795, 0.00000901661898, 30.02999559802316, 0.00000897639924, 0.00809729473265, 0.00017599576502, 0.00797338945265, 0.00010057030158, 0.00500000000000, 0.00002128051235, 0.00400000000000, M   
"""  # noqa: E501, W291 - PyBDSF's own layout, trailing blanks included


def test_pybdsf_commented_csv_header(tmp_path) -> None:
    path = tmp_path / "field.srl.csv"
    path.write_text(PYBDSF_CSV)
    table = read_catalogue(path)
    np.testing.assert_allclose(table["ra_deg"], [150.04232823904161, 150.03272292159795])
    np.testing.assert_allclose(table["major_arcsec"], [0.00169373688775 * 3600, 18.0])
    np.testing.assert_allclose(table["total_flux_jy"], [0.005026854119, 0.00809729473265])
    assert table["s_code"].tolist() == ["S", "M"]


def test_pybdsf_ascii_header_is_space_separated(tmp_path) -> None:
    path = tmp_path / "field.srl"
    path.write_text(
        "# Source list for field.fits\n\n"
        "# Source_id Isl_id RA DEC Total_flux Maj S_Code\n"
        "   0    0 150.5 30.25 0.01 0.002 C   \n"
    )
    table = read_catalogue(path)
    assert table.iloc[0][["ra_deg", "dec_deg", "total_flux_jy"]].tolist() == [150.5, 30.25, 0.01]
    np.testing.assert_allclose(table["major_arcsec"], [7.2])
    assert table["s_code"].tolist() == ["C"]


def test_plain_csv_with_header_row_and_canonical_names(tmp_path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(
        "# made by hand\nRA_deg,Dec_Deg,total_flux_jy,major_arcsec,s_code\n"
        "1.0,2.0,0.5,12.0,s\n3.0,4.0,,,X\n"
    )
    table = read_catalogue(path)
    np.testing.assert_allclose(table["major_arcsec"], [12.0, np.nan])
    np.testing.assert_allclose(table["total_flux_jy"], [0.5, np.nan])
    assert table["s_code"].tolist() == ["S", ""]


def test_parquet_round_trip_of_the_canonical_table(tmp_path) -> None:
    path = tmp_path / "field.srl.csv"
    path.write_text(PYBDSF_CSV)
    table = read_catalogue(path)
    table.to_parquet(tmp_path / "canonical.parquet")
    again = read_catalogue(tmp_path / "canonical.parquet")
    pd.testing.assert_frame_equal(again, table, check_dtype=False)


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path) -> None:
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_catalogue(tmp_path / "absent.fits")
    _one_line_error(excinfo, "absent.fits", "no such file")


def test_unknown_suffix_names_the_accepted_ones(tmp_path) -> None:
    path = tmp_path / "cat.xlsx"
    path.write_text("x")
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_catalogue(path)
    _one_line_error(excinfo, "cat.xlsx", "unknown format", ".fits", ".csv", ".parquet")


@pytest.mark.parametrize("name", ["broken.fits", "broken.parquet"])
def test_unreadable_file(tmp_path, name) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00\x01 this is not a table" * 10)
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_catalogue(path)
    _one_line_error(excinfo, name, "cannot read it")


def test_fits_file_without_a_table(tmp_path) -> None:
    from astropy.io import fits

    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(path)
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_catalogue(path)
    _one_line_error(excinfo, "image.fits", "no table HDU")


def test_no_ra_dec_columns(tmp_path) -> None:
    path = tmp_path / "cat.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_catalogue(path)
    _one_line_error(
        excinfo, "cat.csv has no RA/DEC columns (found: a, b, c)", "expected a PyBDSF source list"
    )


def test_empty_text_file(tmp_path) -> None:
    path = tmp_path / "cat.csv"
    path.write_text("# nothing\n\n")
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_catalogue(path)
    _one_line_error(excinfo, "cat.csv", "no rows")


def test_ra_not_numeric(tmp_path) -> None:
    path = tmp_path / "cat.csv"
    path.write_text("RA,DEC\n10:00:00,+30:00:00\n")
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_catalogue(path)
    _one_line_error(excinfo, "cat.csv", "column RA is not numeric")


def test_positions_out_of_range_are_counted(tmp_path) -> None:
    path = tmp_path / "cat.csv"
    path.write_text("RA,DEC\n10,20\n-1,20\n10,95\n361,0\n")
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_catalogue(path)
    _one_line_error(excinfo, "cat.csv", "3 rows", "[0, 360]", "[-90, 90]")


@pytest.mark.parametrize(
    ("unit", "expected"), [("Jy", "does not convert to arcsec"), ("furlongs", "unknown unit")]
)
def test_a_unit_that_does_not_convert(tmp_path, unit, expected) -> None:
    path = tmp_path / "cat.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns about the unknown unit
        _fits_table(path, units={"Maj": unit})
        with pytest.raises(InvalidArgumentError) as excinfo:
            read_catalogue(path)
    _one_line_error(excinfo, "cat.fits", "column Maj", expected)


# --------------------------------------------------------------------------- companions


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_auto_finds_the_first_name_beside_the_mosaic(tmp_path) -> None:
    mosaic = _touch(tmp_path / "P000+23.fits.gz")
    assert catalogue_for_mosaic("auto", mosaic, "P000+23") is None
    csv = _touch(tmp_path / "P000+23.pybdsf.srl.csv")
    assert catalogue_for_mosaic("auto", mosaic, "P000+23") == csv
    fits_list = _touch(tmp_path / "P000+23.srl.fits")
    assert catalogue_for_mosaic("auto", mosaic, "P000+23") == fits_list
    assert rms_map_for_mosaic("auto", mosaic, "P000+23") is None
    rms = _touch(tmp_path / "P000+23_rms.fits")
    assert rms_map_for_mosaic("auto", mosaic, "P000+23") == rms


def test_auto_in_the_lotss_layout(tmp_path) -> None:
    mosaic = _touch(tmp_path / "P000+23" / "mosaic-blanked.fits")
    rms = _touch(tmp_path / "P000+23" / "mosaic.rms.fits")
    srl = _touch(tmp_path / "P000+23" / "mosaic.pybdsf.srl.fits")
    assert rms_map_for_mosaic("auto", mosaic, "P000+23") == rms
    assert catalogue_for_mosaic("auto", mosaic, "P000+23") == srl
    blanked = _touch(tmp_path / "P000+23" / "mosaic-blanked.srl.csv")
    assert catalogue_for_mosaic("auto", mosaic, "P000+23") == blanked  # own stem first


def test_auto_names_are_exported_in_order() -> None:
    assert CATALOGUE_AUTO_NAMES[0] == "{stem}.srl.fits"
    assert RMS_AUTO_NAMES == (
        "{stem}.rms.fits",
        "{stem}-rms.fits",
        "{stem}_rms.fits",
        "{stem}.pybdsf_rms.fits",
    )


def test_patterns_with_placeholders(tmp_path) -> None:
    mosaic = _touch(tmp_path / "fields" / "P000+23" / "mosaic-blanked.fits")
    cat = _touch(tmp_path / "cats" / "P000+23.srl.fits")
    pattern = str(tmp_path / "cats" / "{name}.srl.fits")
    assert catalogue_for_mosaic(pattern, mosaic, "P000+23") == cat
    assert catalogue_for_mosaic(pattern, mosaic, "P001+23") is None  # the caller warns
    beside = _touch(mosaic.parent / "mosaic-blanked.cat.fits")
    assert companion_file("{dir}/{stem}.cat.fits", mosaic, "P000+23", ()) == beside


def test_one_survey_wide_file(tmp_path) -> None:
    mosaic = _touch(tmp_path / "a.fits")
    survey = _touch(tmp_path / "LoTSS_DR2.srl.fits")
    assert catalogue_for_mosaic(str(survey), mosaic, "a") == survey
    assert catalogue_for_mosaic(survey, mosaic, "a") == survey
    with pytest.raises(InvalidArgumentError) as excinfo:
        catalogue_for_mosaic(str(tmp_path / "absent.fits"), mosaic, "a")
    _one_line_error(excinfo, "catalogue", "absent.fits", "no such file")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("/cats/{foo}.fits", "unknown placeholder {foo}"),
        ("/cats/{stem!r}.fits", "unknown placeholder {stem!r}"),
        ("/cats/{name:>10}.fits", "unknown placeholder {name:>10}"),
        ("/cats/{stem.fits", "expected a path with placeholders"),
        ("", "must be 'auto', a path, or a pattern"),
    ],
)
def test_malformed_specs(spec, expected) -> None:
    with pytest.raises(InvalidArgumentError) as excinfo:
        check_companion_spec(spec, "--catalogue")
    _one_line_error(excinfo, "--catalogue=", expected, "{dir}, {stem}, {name}")


def test_good_specs_pass() -> None:
    for spec in ("auto", "/data/{name}/{stem}.srl.fits", "{dir}/x.fits", "/one/file.fits"):
        assert check_companion_spec(spec, "--catalogue") == spec


# --------------------------------------------------------------------------- matching


def _brute_force(x, y, flux, major, codes, x0, y0, w) -> dict[str, np.ndarray]:
    """The definition, O(n m): every (window, source) pair tested."""
    inside = (
        (x0[:, None] - 0.5 <= x[None])
        & (x[None] < x0[:, None] + w - 0.5)
        & (y0[:, None] - 0.5 <= y[None])
        & (y[None] < y0[:, None] + w - 0.5)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        out = {
            "n_sources": inside.sum(axis=1).astype(float),
            "max_flux_jy": np.nanmax(np.where(inside, flux[None], np.nan), axis=1),
            "max_size_arcsec": np.nanmax(np.where(inside, major[None], np.nan), axis=1),
        }
    known = np.isin(codes, ["S", "M", "C"])
    incomplete = (inside & ~known[None]).any(axis=1)
    for code, name in (("S", "n_single"), ("M", "n_multiple"), ("C", "n_complex")):
        counts = (inside & (codes == code)[None]).sum(axis=1).astype(float)
        out[name] = np.where(incomplete, np.nan, counts)
    return out


def _random_case(rng: np.random.Generator):
    w = int(rng.integers(1, 24))
    stride = int(rng.integers(1, w + 4))  # overlapping, touching, or with gaps
    gx, gy = np.meshgrid(np.arange(3, 120, stride), np.arange(-2, 90, stride))
    keep = rng.random(gx.size) < rng.uniform(0.3, 1.0)  # blank windows dropped
    x0, y0 = gx.ravel()[keep], gy.ravel()[keep]
    if rng.random() < 0.3:  # not a grid at all, repeats included
        x0 = rng.integers(-10, 120, x0.size)
        y0 = np.concatenate([y0[: x0.size // 2], y0[: x0.size - x0.size // 2]])
    n = int(rng.integers(0, 400))
    x, y = rng.uniform(-15, 140, n), rng.uniform(-15, 110, n)
    edge = rng.random(n) < 0.4  # exactly on pixel borders
    x[edge] = np.round(x[edge]) + rng.choice([-0.5, 0.5], edge.sum())
    y[edge] = np.round(y[edge]) + rng.choice([-0.5, 0.5], edge.sum())
    x[rng.random(n) < 0.02] = np.nan
    flux, major = rng.random(n), rng.random(n) * 30
    flux[rng.random(n) < 0.1] = np.nan
    codes = rng.choice(np.array(["S", "M", "C", ""]), n, p=[0.6, 0.25, 0.1, 0.05])
    return x, y, flux, major, codes, x0.astype(np.int64), y0.astype(np.int64), w


@pytest.mark.parametrize("seed", range(40))
def test_match_sources_equals_brute_force(seed) -> None:
    rng = np.random.default_rng(seed)
    case = _random_case(rng)
    max_pairs = int(rng.choice([1, 7, 1000, 1 << 20]))  # chunks of every size
    got = match_sources(*case, max_pairs=max_pairs)
    expected = _brute_force(*case)
    assert list(got) == list(CATALOGUE_COLUMNS)
    for name in CATALOGUE_COLUMNS:
        assert got[name].dtype == np.float64
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_match_sources_on_a_small_example() -> None:
    x0 = np.array([0, 10, 0, 10])
    y0 = np.array([0, 0, 10, 10])
    got = match_sources(
        x=[-0.5, 9.49, 9.5, 15.0],
        y=[0.0, 9.0, 9.0, 15.0],
        total_flux=[1.0, 2.0, 3.0, np.nan],
        major=[5.0, 6.0, 7.0, 8.0],
        s_code=["S", "C", "M", "S"],
        x0=x0,
        y0=y0,
        window_size=10,
    )
    np.testing.assert_array_equal(got["n_sources"], [2, 1, 0, 1])
    np.testing.assert_array_equal(got["max_flux_jy"], [2.0, 3.0, np.nan, np.nan])
    np.testing.assert_array_equal(got["max_size_arcsec"], [6.0, 7.0, np.nan, 8.0])
    np.testing.assert_array_equal(got["n_complex"], [1, 0, 0, 0])
    assert dominant_s_code(got["n_single"], got["n_multiple"], got["n_complex"]).tolist() == [
        "C",
        "M",
        "none",
        "S",
    ]


def test_match_sources_without_windows_or_sources() -> None:
    empty = match_sources([], [], [], [], [], [], [], 8)
    assert all(values.shape == (0,) for values in empty.values())
    none = match_sources([], [], [], [], [], [0, 8], [0, 0], 8)
    np.testing.assert_array_equal(none["n_sources"], [0, 0])
    assert np.isnan(none["max_flux_jy"]).all()
    np.testing.assert_array_equal(none["n_single"], [0, 0])


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"y": [1.0]}, "y has shape (1,)"),
        ({"x0": [0.5, 1.0]}, "x0 has dtype float64"),
        ({"y0": [0]}, "x0 has shape (2,) and y0 (1,)"),
        ({"window_size": 0}, "window_size=0 must be"),
    ],
)
def test_match_sources_rejects_bad_arguments(kwargs, expected) -> None:
    arguments = {
        "x": [1.0, 2.0],
        "y": [1.0, 2.0],
        "total_flux": [1.0, 1.0],
        "major": [1.0, 1.0],
        "s_code": ["S", "S"],
        "x0": [0, 4],
        "y0": [0, 0],
        "window_size": 4,
    }
    arguments.update(kwargs)
    with pytest.raises(InvalidArgumentError) as excinfo:
        match_sources(**arguments)
    _one_line_error(excinfo, expected)


# --------------------------------------------------------------------------- labels


def test_quantile_bins_merge_equal_edges() -> None:
    values = np.array([0, 0, 0, 0, 0, 0, 1, 2, 3, np.nan])
    labels, names = steering_labels(values, 4)
    assert names == ["[0, 1)", "[1, 3]", UNKNOWN]
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]


def test_quantile_bins_split_evenly() -> None:
    values = np.random.default_rng(0).random(1000)
    labels, names = steering_labels(values, 5)
    assert len(names) == 5
    assert np.bincount(labels).tolist() == [200] * 5


def test_edges_with_values_outside() -> None:
    labels, names = steering_labels([0.5, 1.0, 2.0, 3.0, 4.0, 9.0, np.nan], [1.0, 3.0, 4.0])
    assert names == ["< 1", "[1, 3)", "[3, 4]", "> 4", UNKNOWN]
    assert labels.tolist() == [0, 1, 1, 2, 2, 3, 4]


def test_constant_and_all_missing_columns() -> None:
    labels, names = steering_labels([2.0, 2.0], 3)
    assert (labels.tolist(), names) == ([0, 0], ["[2, 2]"])
    labels, names = steering_labels([np.nan, np.nan], 3)
    assert labels.tolist() == [0, 0]
    assert names == [UNKNOWN]


def test_text_columns_are_categories() -> None:
    labels, names = steering_labels(np.array(["M", "S", None, "S", ""], dtype=object))
    assert names == ["M", "S", UNKNOWN]
    assert labels.tolist() == [0, 1, 2, 1, 2]
    labels, names = steering_labels(np.array(["C", "none", "C"]), bins=3)  # bins ignored
    assert (labels.tolist(), names) == ([0, 1, 0], ["C", "none"])
    labels, names = steering_labels(np.array([True, False]))
    assert (labels.tolist(), names) == ([1, 0], ["False", "True"])


@pytest.mark.parametrize("bins", [None, 0, [1.0], [2.0, 1.0], [1.0, np.nan], "abc", [[1, 2]]])
def test_bad_bins(bins) -> None:
    with pytest.raises(InvalidArgumentError) as excinfo:
        steering_labels([1.0, 2.0], bins)
    _one_line_error(excinfo, "bins=")


def test_dominant_s_code() -> None:
    got = dominant_s_code([0, 3, 1, 1, np.nan], [0, 0, 2, 0, 0], [0, 0, 0, 1, 0])
    assert got.tolist() == ["none", "S", "M", "C", UNKNOWN]
