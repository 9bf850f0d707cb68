"""The cutouts stage on small FITS files built here, in every form a survey comes in."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from astrocurate import cli, tracking
from astrocurate.errors import InvalidArgumentError
from astrocurate.io.cutout_store import (
    MANIFEST,
    MANIFEST_COLUMNS,
    MOSAICS,
    NAN_FILL_VALUE,
    PIXELS_DIR,
    CutoutReader,
    CutoutStoreError,
    read_manifest,
)
from astrocurate.stages.cutting_out import cutting
from astrocurate.stages.cutting_out.run import STEP, CutoutOptions, make_cutouts
from astrocurate.synthetic.survey import make_survey

ROOT = Path(__file__).resolve().parents[1]
W = 8  # window size of the zoo run
OVERLAP = 0.5
STRIDE = 4

INT_COLUMNS = ("cutout_id", "window_size", "x0", "y0", "array_row")
FLOAT_COLUMNS = (
    "ra",
    "dec",
    "pixel_scale_arcsec",
    "nan_fraction",
    "mean",
    "std",
    "max",
    "noise_mad",
    "peak_snr",
)
TEXT_COLUMNS = ("mosaic", "mosaic_path", "store", "array_file")


# --------------------------------------------------------------------------- FITS builders


def _celestial_header(
    shape: tuple[int, int], frame: str = "icrs", proj: str = "TAN"
) -> fits.Header:
    ny, nx = shape
    wcs = WCS(naxis=2)
    if frame == "galactic":
        wcs.wcs.ctype = [f"GLON-{proj}", f"GLAT-{proj}"]
        wcs.wcs.crval = [30.0, 5.0]
    else:
        wcs.wcs.ctype = [f"RA---{proj}", f"DEC--{proj}"]
        wcs.wcs.crval = [150.0, 2.0]
        wcs.wcs.radesys = "ICRS"
    wcs.wcs.crpix = [nx / 2 + 0.3, ny / 2 - 0.7]
    wcs.wcs.cdelt = [-2.0 / 3600, 2.0 / 3600]
    return wcs.to_header()


def _radio_header(shape: tuple[int, int]) -> fits.Header:
    """A LOFAR-style 4-axis header: RA, DEC, FREQ, STOKES (the last two of length 1)."""
    ny, nx = shape
    header = fits.Header()
    for key, value in {
        "CTYPE1": "RA---SIN",
        "CRVAL1": 210.0,
        "CRPIX1": nx / 2,
        "CDELT1": -1.5 / 3600,
        "CUNIT1": "deg",
        "CTYPE2": "DEC--SIN",
        "CRVAL2": 54.0,
        "CRPIX2": ny / 2,
        "CDELT2": 1.5 / 3600,
        "CUNIT2": "deg",
        "CTYPE3": "FREQ",
        "CRVAL3": 1.44e8,
        "CRPIX3": 1.0,
        "CDELT3": 4.8e7,
        "CUNIT3": "Hz",
        "CTYPE4": "STOKES",
        "CRVAL4": 1.0,
        "CRPIX4": 1.0,
        "CDELT4": 1.0,
        "RADESYS": "ICRS",
    }.items():
        header[key] = value
    return header


def _write_raw_int(path: Path, raw: np.ndarray, header: fits.Header) -> None:
    """Write stored integers as they are, with BSCALE/BZERO/BLANK (astropy would rescale)."""
    cards = fits.PrimaryHDU(raw).header
    for key, value in header.items():
        cards[key] = value
    body = raw.astype(raw.dtype.newbyteorder(">")).tobytes()
    body += b"\0" * (-len(body) % 2880)
    path.write_bytes(cards.tostring().encode("ascii") + body)


def _noise(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1e-3, shape).astype(np.float32)


@dataclass
class Mosaic:
    """What a test knows about one FITS file it wrote."""

    name: str
    path: Path
    data: np.ndarray | None  # expected float32 image, NaN = blank; None for a bad file
    wcs: WCS | None  # celestial WCS of the image
    hdu: int = 0


def _write_zoo(root: Path) -> dict[str, Mosaic]:
    """One directory with good, odd and bad files; returns them by mosaic name."""
    root.mkdir(parents=True, exist_ok=True)
    zoo: dict[str, Mosaic] = {}

    def add(name: str, rel: str, data, header, hdu: int = 0) -> None:
        wcs = WCS(header).celestial if header is not None and "CTYPE1" in header else None
        zoo[name] = Mosaic(name, root / rel, data, wcs, hdu)

    shape = (36, 44)  # ny != nx catches swapped axes
    plain = _noise(shape, 1)
    header = _celestial_header(shape)
    fits.PrimaryHDU(plain, header=header).writeto(root / "plain.fits")
    add("plain", "plain.fits", plain, header)

    radio = _noise(shape, 2)
    radio[10:14, 20:30] = np.nan  # a blank patch: those windows are skipped
    rheader = _radio_header(shape)
    fits.PrimaryHDU(radio[None, None], header=rheader).writeto(root / "radio4d.fits")
    add("radio4d", "radio4d.fits", radio, rheader)

    rng = np.random.default_rng(3)
    for name, dtype, bscale, bzero, blank in [
        ("scaled_i16", np.int16, 0.5, -3.0, -32768),
        ("scaled_i32", np.int32, 0.25, 10.0, -(2**31)),
    ]:
        raw = rng.integers(-1000, 1000, (28, 33)).astype(dtype)
        raw[5, 7] = blank
        raw[20, 30] = blank
        iheader = _celestial_header(raw.shape)
        iheader["BSCALE"], iheader["BZERO"], iheader["BLANK"] = bscale, bzero, blank
        _write_raw_int(root / f"{name}.fits", raw, iheader)
        expected = (raw.astype(np.float64) * bscale + bzero).astype(np.float32)
        expected[raw == blank] = np.nan
        add(name, f"{name}.fits", expected, iheader)

    ext = np.random.default_rng(4).normal(5.0, 2.0, (30, 26))  # float64, big-endian on disk
    eheader = _celestial_header(ext.shape)
    table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.arange(3.0))])
    fits.HDUList([fits.PrimaryHDU(), table, fits.ImageHDU(ext, header=eheader)]).writeto(
        root / "ext.fits"
    )
    add("ext", "ext.fits", ext.astype(np.float32), eheader, hdu=2)

    gal = _noise(shape, 5)
    gheader = _celestial_header(shape, frame="galactic")
    fits.PrimaryHDU(gal, header=gheader).writeto(root / "galactic.fits")
    add("galactic", "galactic.fits", gal, gheader)

    nowcs = _noise((20, 24), 6)
    fits.PrimaryHDU(nowcs).writeto(root / "nowcs.fits")
    add("nowcs", "nowcs.fits", nowcs, None)

    gz = _noise(shape, 7)
    with gzip.open(root / "gzipped.fits.gz", "wb") as fh:
        fits.PrimaryHDU(gz, header=header).writeto(fh)
    add("gzipped", "gzipped.fits.gz", gz, header)

    tiled = _noise(shape, 8)
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.CompImageHDU(tiled, header=header, quantize_level=0.0, compression_type="GZIP_1"),
        ]
    ).writeto(root / "tiled.fits.fz")
    add("tiled", "tiled.fits.fz", tiled, header, hdu=1)

    lotss = _noise((40, 40), 9)
    yy, xx = np.mgrid[:40, :40]
    lotss[(yy - 19.5) ** 2 + (xx - 19.5) ** 2 > 18**2] = np.nan  # blank outside a circle
    (root / "P1").mkdir()
    lheader = _celestial_header((40, 40), proj="SIN")
    fits.PrimaryHDU(lotss, header=lheader).writeto(root / "P1" / "mosaic-blanked.fits")
    add("P1", "P1/mosaic-blanked.fits", lotss, lheader)

    tiny = _noise((6, 6), 10)
    fits.PrimaryHDU(tiny, header=_celestial_header((6, 6))).writeto(root / "tiny.fits")
    add("tiny", "tiny.fits", tiny, _celestial_header((6, 6)))

    blank = np.full((20, 20), np.nan, dtype=np.float32)
    fits.PrimaryHDU(blank, header=_celestial_header((20, 20))).writeto(root / "allblank.fits")
    add("allblank", "allblank.fits", blank, _celestial_header((20, 20)))

    fits.PrimaryHDU(_noise((40, 40), 11)).writeto(root / "corrupt.fits")
    with open(root / "corrupt.fits", "r+b") as fh:
        fh.truncate(2880 + 1000)  # header intact, data cut short
    zoo["corrupt"] = Mosaic("corrupt", root / "corrupt.fits", None, None)
    cube = np.zeros((3, 20, 24), dtype=np.float32)
    cheader = _radio_header((20, 24))
    del cheader["*4"]
    fits.PrimaryHDU(cube, header=cheader).writeto(root / "cube.fits")
    zoo["cube"] = Mosaic("cube", root / "cube.fits", None, None)
    (root / "notfits.fits").write_text("this is not a FITS file\n")
    zoo["notfits"] = Mosaic("notfits", root / "notfits.fits", None, None)
    (root / "README.txt").write_text("not a mosaic, ignored by name\n")
    return zoo


GOOD = (
    "plain",
    "radio4d",
    "scaled_i16",
    "scaled_i32",
    "ext",
    "galactic",
    "nowcs",
    "gzipped",
    "tiled",
    "P1",
)
WITH_WCS = tuple(n for n in GOOD if n != "nowcs")
BAD = ("corrupt", "notfits", "cube")
EMPTY = ("tiny", "allblank")


def _grid(shape: tuple[int, int], w: int, stride: int) -> list[tuple[int, int]]:
    ny, nx = shape
    return [(x, y) for y in range(0, ny - w + 1, stride) for x in range(0, nx - w + 1, stride)]


def _cutout2d(data: np.ndarray, x0: int, y0: int, w: int) -> np.ndarray:
    """Astropy's cutout of size w centred on the window (x0, y0): the reference."""
    centre = (x0 + (w - 1) / 2, y0 + (w - 1) / 2)
    return Cutout2D(data, centre, (w, w), mode="strict").data


def _icrs(wcs: WCS, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sky = wcs.pixel_to_world(x, y).icrs
    return sky.ra.deg, sky.dec.deg


# --------------------------------------------------------------------------- fixtures


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def module_store(tracking_db: str, tmp_path_factory: pytest.TempPathFactory):
    """An MLflow experiment shared by the runs this module makes once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracking_db)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", f"test-cutouts-{uuid.uuid4().hex[:12]}")
        yield tmp_path_factory.mktemp("cutouts")


@pytest.fixture(scope="module")
def zoo(module_store: Path) -> dict[str, Mosaic]:
    return _write_zoo(module_store / "zoo")


@pytest.fixture(scope="module")
def zoo_run(module_store: Path, zoo: dict[str, Mosaic]):
    """Cut the zoo in two worker processes, recording the log."""
    handler = _Records()
    logger = logging.getLogger("astrocurate")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        run = make_cutouts(
            module_store / "zoo", module_store / "out", CutoutOptions(W, OVERLAP), workers=2
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    manifest = pd.read_parquet(run.output_dir / MANIFEST)
    return run, manifest, handler


# --------------------------------------------------------------------------- manifest


def test_manifest_schema(zoo_run) -> None:
    run, manifest, _ = zoo_run
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    schema = pq.read_schema(run.output_dir / MANIFEST)
    assert schema.names == list(MANIFEST_COLUMNS)
    for column in INT_COLUMNS:
        assert manifest[column].dtype == np.int64, column
    for column in FLOAT_COLUMNS:
        assert manifest[column].dtype == np.float64, column
    for column in TEXT_COLUMNS:
        assert pd.api.types.is_string_dtype(manifest[column]), column
    assert manifest["cutout_id"].tolist() == list(range(len(manifest)))
    assert (manifest["window_size"] == W).all()
    assert (manifest["store"] == "copy").all()
    assert not manifest.duplicated(["mosaic", "x0", "y0"]).any()


def test_one_pixel_file_per_mosaic(zoo_run) -> None:
    run, manifest, _ = zoo_run
    files = sorted(p.name for p in (run.output_dir / PIXELS_DIR).iterdir())
    assert all(name.endswith(".npy") for name in files)
    assert len(files) <= len(GOOD) + len(EMPTY)
    for name, rows in manifest.groupby("mosaic"):
        (array_file,) = rows["array_file"].unique()
        array = np.load(run.output_dir / array_file, mmap_mode="r")
        assert array.dtype == np.float32 and array.shape == (len(rows), W, W), name
        assert rows["array_row"].tolist() == list(range(len(rows)))


def test_each_good_mosaic_is_cut(zoo_run) -> None:
    _, manifest, _ = zoo_run
    assert set(manifest["mosaic"]) == set(GOOD)


@pytest.mark.parametrize("name", GOOD)
def test_windows_are_the_blank_free_grid(zoo_run, zoo, name) -> None:
    _, manifest, _ = zoo_run
    mosaic = zoo[name]
    rows = manifest[manifest["mosaic"] == name]
    expected = [
        (x, y)
        for x, y in _grid(mosaic.data.shape, W, STRIDE)
        if not np.isnan(mosaic.data[y : y + W, x : x + W]).any()
    ]
    assert list(zip(rows["x0"], rows["y0"], strict=True)) == expected
    assert (rows["nan_fraction"] == 0).all()
    assert (rows["mosaic_path"] == str(mosaic.path)).all()


@pytest.mark.parametrize("name", GOOD)
def test_pixels_equal_astropy_cutout2d(zoo_run, zoo, name) -> None:
    run, manifest, _ = zoo_run
    mosaic = zoo[name]
    reader = CutoutReader.from_directory(run.output_dir)
    rows = manifest[manifest["mosaic"] == name]
    assert len(rows) >= 3
    for row in rows.itertuples():
        got = reader[row.cutout_id]
        assert got.dtype == np.float32 and got.shape == (W, W)
        reference = _cutout2d(mosaic.data, row.x0, row.y0, W)
        np.testing.assert_array_equal(got, reference)
        np.testing.assert_array_equal(got, mosaic.data[row.y0 : row.y0 + W, row.x0 : row.x0 + W])


@pytest.mark.parametrize("name", ["plain", "radio4d", "gzipped", "tiled"])
def test_float_mosaics_read_as_astropy_reads_them(zoo, name) -> None:
    """The references above are what astropy itself decodes from the files."""
    mosaic = zoo[name]
    data = np.squeeze(fits.getdata(mosaic.path, ext=mosaic.hdu))
    np.testing.assert_array_equal(data.astype(np.float32), mosaic.data)


@pytest.mark.parametrize("name", ["scaled_i16", "scaled_i32"])
def test_scaled_integers_match_astropy(zoo, name) -> None:
    assert fits.getheader(zoo[name].path)["BSCALE"] != 1
    np.testing.assert_array_equal(fits.getdata(zoo[name].path).astype(np.float32), zoo[name].data)


@pytest.mark.parametrize("name", WITH_WCS)
def test_sky_position_is_the_wcs_at_the_centre(zoo_run, zoo, name) -> None:
    _, manifest, _ = zoo_run
    mosaic = zoo[name]
    rows = manifest[manifest["mosaic"] == name]
    x = rows["x0"].to_numpy() + (W - 1) / 2
    y = rows["y0"].to_numpy() + (W - 1) / 2
    ra, dec = _icrs(mosaic.wcs, x, y)
    np.testing.assert_allclose(rows["ra"], ra, rtol=0, atol=1e-10)
    np.testing.assert_allclose(rows["dec"], dec, rtol=0, atol=1e-10)
    scale = np.sqrt(np.abs(np.linalg.det(mosaic.wcs.pixel_scale_matrix))) * 3600
    np.testing.assert_allclose(rows["pixel_scale_arcsec"], scale, rtol=1e-9)


def test_galactic_frame_is_converted_to_icrs(zoo_run, zoo) -> None:
    _, manifest, _ = zoo_run
    rows = manifest[manifest["mosaic"] == "galactic"]
    x = rows["x0"].to_numpy() + (W - 1) / 2
    y = rows["y0"].to_numpy() + (W - 1) / 2
    glon, glat = zoo["galactic"].wcs.pixel_to_world_values(x, y)
    icrs = SkyCoord(glon * u.deg, glat * u.deg, frame="galactic").icrs
    np.testing.assert_allclose(rows["ra"], icrs.ra.deg, rtol=0, atol=1e-9)
    np.testing.assert_allclose(rows["dec"], icrs.dec.deg, rtol=0, atol=1e-9)
    assert np.abs(rows["ra"].to_numpy() - glon).min() > 100  # (l, b) ~ (30, 5): ra ~ 277


def test_no_wcs_gives_nan_sky_and_one_warning(zoo_run, zoo) -> None:
    _, manifest, records = zoo_run
    rows = manifest[manifest["mosaic"] == "nowcs"]
    assert len(rows) == len(_grid(zoo["nowcs"].data.shape, W, STRIDE))
    assert rows["ra"].isna().all() and rows["dec"].isna().all()
    assert rows["pixel_scale_arcsec"].isna().all()
    path = str(zoo["nowcs"].path)
    assert len([m for m in records.warnings() if path in m]) == 1


def test_statistics(zoo_run, zoo) -> None:
    _, manifest, _ = zoo_run
    for name in ("plain", "ext", "scaled_i16"):
        rows = manifest[manifest["mosaic"] == name]
        for row in rows.iloc[:5].itertuples():
            v = zoo[name].data[row.y0 : row.y0 + W, row.x0 : row.x0 + W].astype(np.float64)
            median = np.median(v)
            mad = 1.4826 * np.median(np.abs(v - median))
            assert row.mean == pytest.approx(v.mean(), rel=1e-9, abs=1e-12)
            assert row.std == pytest.approx(v.std(), rel=1e-9)
            assert row.max == v.max()
            # |v - median| is formed in float32: ~1e-7 relative
            assert row.noise_mad == pytest.approx(mad, rel=1e-6)
            assert row.peak_snr == pytest.approx((v.max() - median) / mad, rel=1e-6)


@pytest.mark.parametrize("store_kind", ["copy", "virtual"])
def test_large_windows_cut_in_several_bands(store, monkeypatch, store_kind) -> None:
    """w=64 (median and noise on the 32x32 grid), bands of 100 rows: same as by hand."""
    monkeypatch.setattr(cutting, "BAND_PIXELS", 100 * 150)
    monkeypatch.setattr(cutting, "WRITE_PIXELS", 3 * 64 * 64)  # several writes per band
    (store / "survey").mkdir()
    data = _noise((260, 150), 5)
    data[:70, :40] = np.nan
    data[200:, 100:] += np.float32(0.05)
    fits.PrimaryHDU(data, header=_celestial_header(data.shape)).writeto(store / "survey/m.fits")
    options = CutoutOptions(64, 0.5, 0.3, store_kind)
    run = make_cutouts(store / "survey", store / "out", options, workers=1)
    manifest = pd.read_parquet(run.output_dir / MANIFEST)
    reader = CutoutReader.from_directory(run.output_dir)
    expected = [
        (x, y)
        for x, y in _grid(data.shape, 64, 32)
        if np.isnan(data[y : y + 64, x : x + 64]).mean() <= 0.3
    ]
    assert list(zip(manifest["x0"], manifest["y0"], strict=True)) == expected
    assert (manifest["nan_fraction"] > 0).any()
    for row in manifest.itertuples():
        v = _cutout2d(data, row.x0, row.y0, 64).astype(np.float64)
        np.testing.assert_array_equal(reader[row.cutout_id], np.nan_to_num(v, nan=NAN_FILL_VALUE))
        valid = v[~np.isnan(v)]
        grid = v[::2, ::2]
        grid = grid[~np.isnan(grid)]
        median = np.median(grid)
        mad = 1.4826 * np.median(np.abs(grid - median))
        assert row.nan_fraction == np.isnan(v).mean()
        assert row.mean == pytest.approx(valid.mean(), rel=1e-9, abs=1e-15)
        assert row.std == pytest.approx(valid.std(), rel=1e-9)
        assert row.max == valid.max()
        assert row.noise_mad == pytest.approx(mad, rel=1e-6)
        assert row.peak_snr == pytest.approx((valid.max() - median) / mad, rel=1e-6)


def test_mosaics_table(zoo_run, zoo) -> None:
    run, _, _ = zoo_run
    mosaics = pd.read_parquet(run.output_dir / MOSAICS).set_index("mosaic")
    for name in GOOD:
        ny, nx = zoo[name].data.shape
        assert (mosaics.loc[name, "ny"], mosaics.loc[name, "nx"]) == (ny, nx)
        assert mosaics.loc[name, "hdu"] == zoo[name].hdu
        assert mosaics.loc[name, "file_size"] == zoo[name].path.stat().st_size
    assert set(mosaics.loc[list(BAD), "status"]) == {"invalid"}
    assert mosaics["n_kept"].dtype == np.int64 and mosaics["n_skipped"].dtype == np.int64
    assert "NaN" in mosaics.loc["nowcs", "warnings"]
    assert mosaics.loc["plain", "warnings"] == ""


# --------------------------------------------------------------------------- bad input


def test_bad_files_are_skipped_with_one_warning_each(zoo_run, zoo) -> None:
    run, _, records = zoo_run
    warnings = records.warnings()
    for name in (*BAD, *EMPTY):
        path = str(zoo[name].path)
        named = [m for m in warnings if path in m]
        assert len(named) == 1, (name, warnings)
    assert "truncated" in next(m for m in warnings if str(zoo["corrupt"].path) in m)
    assert "not a FITS file" in next(m for m in warnings if str(zoo["notfits"].path) in m)
    assert "smaller than the window" in next(m for m in warnings if str(zoo["tiny"].path) in m)
    assert "cube" in next(m for m in warnings if str(zoo["cube"].path) in m)
    assert "blank" in next(m for m in warnings if str(zoo["allblank"].path) in m)
    for name in ("plain", "radio4d", "ext", "tiled", "P1"):
        assert not [m for m in warnings if str(zoo[name].path) in m], name
    assert not [m for m in warnings if "README" in m]
    record = tracking.get_run(run.run_id)
    assert record.status == "FINISHED"
    metrics = tracking.client().get_run(run.run_id).data.metrics
    assert metrics["n_mosaics_invalid"] == len(BAD)
    assert metrics["n_mosaics_cut"] == len(GOOD) + len(EMPTY)


def test_run_directory_is_clean(zoo_run) -> None:
    run, _, _ = zoo_run
    names = {p.relative_to(run.output_dir).as_posix() for p in run.output_dir.rglob("*")}
    assert not [n for n in names if "parts" in n or ".tmp" in n], names


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("overlap", "stride"),
    [(0.0, 8), (0.25, 6), (0.5, 4), (0.75, 2)],
    ids=["overlap-0", "overlap-0.25", "overlap-0.5", "overlap-0.75"],
)
def test_overlap_sets_the_stride(module_store, zoo, overlap, stride) -> None:
    src = module_store / f"one-{overlap}"
    src.mkdir()
    shutil.copy(zoo["plain"].path, src / "plain.fits")
    run = make_cutouts(src, module_store / "out-overlap", CutoutOptions(W, overlap), workers=1)
    manifest = pd.read_parquet(run.output_dir / MANIFEST)
    assert list(zip(manifest["x0"], manifest["y0"], strict=True)) == _grid(
        zoo["plain"].data.shape, W, stride
    )
    assert tracking.get_run(run.run_id).params["overlap"] == str(overlap)


def _blank_patch_survey(root: Path) -> np.ndarray:
    """A mosaic with a blank corner, so windows have every NaN fraction from 0 to 1."""
    root.mkdir()
    data = _noise((32, 40), 21)
    data[:13, :11] = np.nan
    fits.PrimaryHDU(data, header=_celestial_header(data.shape)).writeto(root / "m.fits")
    return data


@pytest.mark.parametrize("max_nan", [0.0, 0.3, 0.6], ids=["default-skip", "0.3", "0.6"])
def test_max_nan_fraction(store, max_nan) -> None:
    data = _blank_patch_survey(store / "survey")
    run = make_cutouts(store / "survey", store / "out", CutoutOptions(W, 0.5, max_nan), workers=1)
    manifest = pd.read_parquet(run.output_dir / MANIFEST)
    reader = CutoutReader.from_directory(run.output_dir)
    expected = []
    for x, y in _grid(data.shape, W, STRIDE):
        fraction = np.isnan(data[y : y + W, x : x + W]).mean()
        if fraction <= max_nan:
            expected.append((x, y, fraction))
    assert [(r.x0, r.y0, r.nan_fraction) for r in manifest.itertuples()] == expected
    assert any(f > 0 for *_, f in expected) == (max_nan > 0)
    for row in manifest.itertuples():
        window = data[row.y0 : row.y0 + W, row.x0 : row.x0 + W]
        np.testing.assert_array_equal(
            reader[row.cutout_id], np.where(np.isnan(window), NAN_FILL_VALUE, window)
        )
        assert row.mean == pytest.approx(np.nanmean(window.astype(np.float64)), rel=1e-9)


def test_a_survey_with_nothing_to_cut_gives_an_empty_manifest(store, caplog) -> None:
    (store / "survey").mkdir()
    fits.PrimaryHDU(_noise((6, 9), 1)).writeto(store / "survey" / "small.fits")
    with caplog.at_level(logging.WARNING, logger="astrocurate"):
        run = make_cutouts(store / "survey", store / "out", CutoutOptions(W), workers=1)
    assert tracking.get_run(run.run_id).status == "FINISHED"
    schema = pq.read_schema(run.output_dir / MANIFEST)
    assert schema.names == list(MANIFEST_COLUMNS)
    assert [str(schema.field(c).type) for c in INT_COLUMNS] == ["int64"] * len(INT_COLUMNS)
    assert [str(schema.field(c).type) for c in TEXT_COLUMNS] == ["string"] * len(TEXT_COLUMNS)
    assert len(pd.read_parquet(run.output_dir / MANIFEST)) == 0
    assert len(CutoutReader.from_directory(run.output_dir)) == 0
    assert any("smaller than the window" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- virtual store


@pytest.fixture
def small_survey(store: Path) -> Path:
    """Three small mosaics with blanks, WCS in several forms, in their own directory."""
    root = store / "survey"
    root.mkdir()
    _blank_patch_survey(root / "a")
    zoo = _write_zoo(store / "zoo")
    for name in ("radio4d", "scaled_i16", "ext"):
        shutil.copy(zoo[name].path, root / zoo[name].path.name)
    return root


def test_virtual_store_reads_the_same_pixels(store, small_survey) -> None:
    options = {"window_size": W, "overlap": 0.5, "max_nan_fraction": 0.4}
    copied = make_cutouts(small_survey, store / "out", CutoutOptions(**options), workers=1)
    virtual = make_cutouts(
        small_survey, store / "out", CutoutOptions(**options, store="virtual"), workers=1
    )
    assert not list(virtual.output_dir.rglob("*.npy"))
    assert not (virtual.output_dir / PIXELS_DIR).exists()
    a = pd.read_parquet(copied.output_dir / MANIFEST)
    b = pd.read_parquet(virtual.output_dir / MANIFEST)
    assert (b["store"] == "virtual").all() and b["array_file"].isna().all()
    same = [c for c in MANIFEST_COLUMNS if c not in ("store", "array_file", "array_row")]
    pd.testing.assert_frame_equal(a[same], b[same])
    assert (a["nan_fraction"] > 0).any()
    ra, rb = (
        CutoutReader.from_directory(copied.output_dir),
        CutoutReader.from_directory(virtual.output_dir),
    )
    assert len(ra) == len(rb) == len(a)
    for i in range(len(a)):
        np.testing.assert_array_equal(ra[i], rb[i])
    order = np.random.default_rng(0).permutation(len(a))[:20]
    np.testing.assert_array_equal(ra.read(order), rb.read(order))


def test_virtual_store_reads_every_file_form(module_store, zoo_run) -> None:
    """Gzip, tile-compressed, scaled integers, 4-axis, extension HDU: virtual == copied."""
    copied, manifest, _ = zoo_run
    virtual = make_cutouts(
        module_store / "zoo", module_store / "out", CutoutOptions(W, OVERLAP, store="virtual")
    )
    a, b = (
        CutoutReader.from_directory(copied.output_dir),
        CutoutReader.from_directory(virtual.output_dir),
    )
    assert len(a) == len(b) == len(manifest)
    order = np.random.default_rng(2).permutation(len(a))  # random access, any order
    np.testing.assert_array_equal(a.read(order), b.read(order))


def test_virtual_store_detects_a_changed_mosaic(store, small_survey) -> None:
    run = make_cutouts(small_survey, store / "out", CutoutOptions(W, store="virtual"), workers=1)
    reader = CutoutReader.from_directory(run.output_dir)
    manifest = pd.read_parquet(run.output_dir / MANIFEST)
    target = Path(manifest["mosaic_path"].iloc[0])
    before = target.stat().st_size
    with fits.open(target) as hdul:
        index = next(i for i, h in enumerate(hdul) if h.data is not None and h.data.ndim >= 2)
        data = np.array(hdul[index].data)
        header = hdul[index].header.copy()
    replaced = fits.HDUList([fits.PrimaryHDU()] * index + [fits.PrimaryHDU(data * 2 + 1, header)])
    if index == 0:
        fits.PrimaryHDU(data * 2 + 1, header).writeto(target, overwrite=True)
    else:
        replaced.writeto(target, overwrite=True)
    assert target.stat().st_size == before
    fresh = CutoutReader.from_directory(run.output_dir)
    with pytest.raises(CutoutStoreError, match="changed") as info:
        fresh[0]
    assert str(target) in str(info.value)
    assert "\n" not in str(info.value)
    del reader


# --------------------------------------------------------------------------- torch


class _TorchCutouts:
    """A minimal map-style dataset over a CutoutReader."""

    def __init__(self, reader: CutoutReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int):
        import torch

        return torch.from_numpy(self.reader[index]), index


@pytest.mark.parametrize("kind", ["copy", "virtual"])
def test_reader_in_a_dataloader_with_workers(store, small_survey, kind) -> None:
    from torch.utils.data import DataLoader

    run = make_cutouts(
        small_survey, store / "out", CutoutOptions(W, 0.5, 0.4, store=kind), workers=1
    )
    reader = CutoutReader.from_directory(run.output_dir)
    expected = reader.read(range(len(reader)))  # opens files in this process before forking
    loader = DataLoader(_TorchCutouts(reader), batch_size=7, num_workers=2, shuffle=False)
    images, indices = zip(*loader, strict=True)
    got = np.concatenate([b.numpy() for b in images])
    assert np.concatenate([i.numpy() for i in indices]).tolist() == list(range(len(reader)))
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- determinism


def _output_bytes(run_dir: Path) -> dict[str, bytes]:
    files = [
        MANIFEST,
        MOSAICS,
        *sorted(f"{PIXELS_DIR}/{p.name}" for p in (run_dir / PIXELS_DIR).glob("*")),
    ]
    return {name: (run_dir / name).read_bytes() for name in files}


def test_workers_do_not_change_the_output(module_store, zoo_run) -> None:
    run2, _, _ = zoo_run
    run1 = make_cutouts(
        module_store / "zoo", module_store / "out-serial", CutoutOptions(W, OVERLAP), workers=1
    )
    assert run1.run_id != run2.run_id
    assert _output_bytes(run1.output_dir) == _output_bytes(run2.output_dir)


def _descendants(pid: int) -> set[int]:
    """Process IDs of every descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _wait_gone(pids: set[int], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
        if not alive:
            return True
        time.sleep(0.05)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.full  # tests/faults kills this step at seeded points too
def test_kill_and_resume_gives_the_uninterrupted_result(store) -> None:
    make_survey(store / "survey", n_mosaics=4, mosaic_size=512, seed=3)
    out = store / "killed"
    argv = [
        sys.executable,
        str(ROOT / "scripts" / "cutouts.py"),
        "--mosaics_path",
        str(store / "survey"),
        "--output_path",
        str(out),
        "--window_size",
        "8",
        "--overlap",
        "0.5",
        "--workers",
        "2",
    ]
    env = dict(os.environ)
    process = subprocess.Popen(
        argv, env=env, cwd=store, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    parts: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None:
        parts = [p for p in out.glob(f"{STEP}/*/parts/*.json") if not p.name.startswith(".")]
        if parts:
            break
        time.sleep(0.01)
    workers = _descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert parts, "the cutouts script ended before a mosaic was done"
    assert workers, "the script ran no worker processes"
    assert _wait_gone(workers), "worker processes outlived the killed run"
    (run_dir,) = out.glob(f"{STEP}/*")
    run_id = run_dir.name
    assert not (run_dir / MANIFEST).exists()
    assert tracking.get_run(run_id).status == "RUNNING"
    time.sleep(0.5)

    rerun = subprocess.run(argv, env=env, cwd=store, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == run_id
    assert "resuming" in rerun.stderr
    record = tracking.get_run(run_id)
    assert record.status == "FINISHED"

    reference = make_cutouts(store / "survey", store / "clean", CutoutOptions(8, 0.5), workers=2)
    assert _output_bytes(run_dir) == _output_bytes(reference.output_dir)
    leftovers = [p for p in run_dir.rglob("*") if "parts" in p.parts or p.name.startswith(".tmp")]
    assert not leftovers
    assert (
        record.tags[tracking.TAG_CONTENT_HASH]
        == tracking.get_run(reference.run_id).tags[tracking.TAG_CONTENT_HASH]
    )


def test_resume_after_assembly_does_not_cut_again(store, monkeypatch) -> None:
    """Killed while hashing the outputs (long for a real survey): the rerun only finishes."""
    data = _blank_patch_survey(store / "survey")
    options = CutoutOptions(W)

    def broken_hash(*args, **kwargs):
        raise RuntimeError("killed while hashing")

    with monkeypatch.context() as patch:
        patch.setattr(tracking.lifecycle, "hash_outputs", broken_hash)
        with pytest.raises(RuntimeError, match="hashing"):
            make_cutouts(store / "survey", store / "out", options, workers=1)
    (run_dir,) = (store / "out" / STEP).iterdir()
    assert tracking.get_run(run_dir.name).status == "FAILED"
    before = _output_bytes(run_dir)

    def no_cutting(task):
        raise AssertionError(f"{task.path} cut again")

    monkeypatch.setattr(cutting, "cut_mosaic", no_cutting)
    run = make_cutouts(store / "survey", store / "out", options, workers=1)
    assert run.run_id == run_dir.name and run.resumed
    assert tracking.get_run(run.run_id).status == "FINISHED"
    assert _output_bytes(run_dir) == before
    manifest = pd.read_parquet(run_dir / MANIFEST)
    assert len(manifest) == len(
        [
            1
            for x, y in _grid(data.shape, W, STRIDE)
            if not np.isnan(data[y : y + W, x : x + W]).any()
        ]
    )
    metrics = tracking.client().get_run(run.run_id).data.metrics
    assert metrics["n_cutouts"] == len(manifest)


# --------------------------------------------------------------------------- command line


def test_progress_bar_counts_mosaics_and_cutouts(store, capsys) -> None:
    _blank_patch_survey(store / "survey")
    make_cutouts(store / "survey", store / "out", CutoutOptions(W), workers=1, progress=True)
    err = capsys.readouterr().err
    assert "cutting" in err and "1/1" in err and "mosaic" in err and "cutouts=" in err


def _no_runs() -> bool:
    return tracking.find_runs(include_unfinished=True) == []


@pytest.fixture
def survey_dir(store: Path) -> Path:
    root = store / "survey"
    root.mkdir()
    fits.PrimaryHDU(_noise((24, 24), 1), header=_celestial_header((24, 24))).writeto(
        root / "m.fits"
    )
    return root


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--window_size", "0"], "--window_size"),
        (["--window_size", "-8"], "--window_size"),
        (["--overlap", "1.0"], "--overlap"),
        (["--overlap", "-0.1"], "--overlap"),
        (["--overlap", "nan"], "--overlap"),
        (["--max-nan-fraction", "1.5"], "--max-nan-fraction"),
        (["--workers", "0"], "--workers"),
        (["--mosaics_path", "{store}/empty"], "no readable FITS files"),
        (["--mosaics_path", "{store}/missing"], "does not exist"),
        (["--output_path", "{store}/a_file"], "not a directory"),
        (["--output_path", "{store}/survey/out"], "inside --mosaics_path"),
        (["--output_path", "{store}/survey"], "inside --mosaics_path"),
    ],
    ids=[
        "window-zero",
        "window-negative",
        "overlap-one",
        "overlap-negative",
        "overlap-nan",
        "max-nan-above-one",
        "workers-zero",
        "no-fits",
        "missing-mosaics-path",
        "output-is-a-file",
        "output-inside-mosaics",
        "output-is-mosaics",
    ],
)
def test_bad_arguments_fail_before_any_run(store, survey_dir, capsys, args, fragment) -> None:
    (store / "empty").mkdir()
    (store / "empty" / "notes.txt").write_text("x")
    (store / "a_file").write_text("x")
    base = {
        "--mosaics_path": str(survey_dir),
        "--output_path": str(store / "out"),
        "--window_size": "8",
    }
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value.format(store=store)
    argv = ["cutouts"] + [item for pair in base.items() for item in pair]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("astrocurate cutouts: error: ") and fragment in lines[0]
    assert _no_runs()
    assert not (store / "survey" / "out").exists()


def test_same_command_reuses_the_finished_run(store, survey_dir, capsys) -> None:
    argv = [
        "cutouts",
        "--mosaics_path",
        str(survey_dir),
        "--output_path",
        str(store / "out"),
        "--window_size",
        "8",
        "--workers",
        "1",
    ]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out.strip()
    assert cli.main([*argv[:-1], "2"]) == 0  # workers do not change the result
    second = capsys.readouterr().out.strip()
    assert first == second and len(first) == 32
    runs = tracking.find_runs(STEP, include_unfinished=True)
    assert [r.run_id for r in runs] == [first]
    assert cli.main([*argv, "--window_size", "12"]) == 0  # a new window size is a new run
    assert capsys.readouterr().out.strip() != first


# --------------------------------------------------------------------------- shards


@pytest.mark.parametrize("text", ["2/2", "-1/3", "a/b", "3", "1/2/3", "0/0"])
def test_bad_shard_is_refused(text) -> None:
    from astrocurate.launch import parse_shard

    with pytest.raises(InvalidArgumentError, match="--shard: expected K/N"):
        parse_shard(text)


def test_shards_partition_the_sorted_survey_and_are_separate_runs(store: Path) -> None:
    from astrocurate.launch import parse_shard
    from astrocurate.stages.cutting_out.run import select_shard

    assert select_shard(list(range(7)), parse_shard("1/3")) == [1, 4]
    with pytest.raises(InvalidArgumentError, match="selects no mosaic, the survey has 2"):
        select_shard([0, 1], (2, 3))
    survey = make_survey(store / "survey", n_mosaics=3, mosaic_size=128, seed=4)
    runs = [
        make_cutouts(survey.output_dir, store / "out", CutoutOptions(64), workers=1, shard=(k, 2))
        for k in (0, 1)
    ]
    mosaics = [set(read_manifest(r.output_dir)["mosaic"]) for r in runs]
    assert mosaics[0].isdisjoint(mosaics[1]) and len(mosaics[0] | mosaics[1]) == 3
    params = [tracking.get_run(r.run_id).params for r in runs]
    assert [p["shard"] for p in params] == ["0/2", "1/2"]
    assert params[0]["survey_digest"] == params[1]["survey_digest"]


def test_slurm_array_script_runs_one_shard_per_task(store: Path, capsys) -> None:
    from astrocurate.cli import main

    survey = make_survey(store / "survey", n_mosaics=1, mosaic_size=64, seed=1)
    argv = ["cutouts", "--mosaics_path", str(survey.output_dir), "--output_path", "out"]
    argv += ["--window_size", "32", "--slurm-array", "4", "--slurm_time", "00:30:00"]
    assert main(argv) == 0
    script = Path(capsys.readouterr().out.strip())
    text = script.read_text()
    assert "#SBATCH --array=0-3\n" in text and "#SBATCH --time=00:30:00\n" in text
    assert '--shard "$SLURM_ARRAY_TASK_ID/4"' in text
    assert "export MLFLOW_TRACKING_URI=" in text
    assert main([*argv[:-2], "--slurm_time", "soon"]) == 1
