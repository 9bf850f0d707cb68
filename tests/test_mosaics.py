"""Tests of astrocurate.io.mosaics on tiny FITS files built here with astropy."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.wcs import WCS

from astrocurate.io import fits_image
from astrocurate.io.fits_image import InvalidMosaicError, UnsupportedCubeError
from astrocurate.io.mosaic_names import FITS_SUFFIXES, mosaic_name
from astrocurate.io.mosaics import (
    MosaicFile,
    discover_mosaics,
    file_fingerprint,
    fingerprint_mismatch,
    fits_problem,
    is_fits_file,
    open_mosaic,
    scan_mosaics,
)
from needs import (
    WITHOUT_DAC_OVERRIDE,
    dropping_dac_override_works,
    permission_bits_deny,
    unavailable,
)

pytestmark = pytest.mark.filterwarnings("error")

RNG = np.random.default_rng(42)


# -- builders -----------------------------------------------------------------------------


def celestial_header(
    shape: tuple[int, int],
    ctype: tuple[str, str] = ("RA---SIN", "DEC--SIN"),
    crval: tuple[float, float] = (150.0, 30.0),
    scale_arcsec: float = 1.5,
    extra: dict | None = None,
) -> fits.Header:
    """2-D celestial WCS header, reference pixel at the image centre."""
    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = list(ctype)
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    wcs.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    wcs.wcs.cunit = ["deg", "deg"]
    header = wcs.to_header()
    for key, value in (extra or {}).items():
        header[key] = value
    return header


def radio_header(shape: tuple[int, int]) -> fits.Header:
    """LOFAR-like 4-axis header (RA, DEC, FREQ, STOKES); data shape (1, 1, ny, nx)."""
    header = celestial_header(shape, extra={"RADESYS": "ICRS"})
    header["WCSAXES"] = 4
    for key, value in {
        "CTYPE3": "FREQ",
        "CRVAL3": 1.44e8,
        "CDELT3": 4.8e7,
        "CRPIX3": 1.0,
        "CUNIT3": "Hz",
        "CTYPE4": "STOKES",
        "CRVAL4": 1.0,
        "CDELT4": 1.0,
        "CRPIX4": 1.0,
    }.items():
        header[key] = value
    return header


def write(path: Path, hdus: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path)
    return path


def gzip_file(src: Path, dst: Path) -> Path:
    with open(src, "rb") as fin, gzip.open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    return dst


def image(shape: tuple[int, ...] = (40, 30), dtype=np.float32) -> np.ndarray:
    return RNG.normal(size=shape).astype(dtype)


def read_all(mosaic) -> np.ndarray:
    return mosaic.read_rows(0, mosaic.shape[0])


def touch(root: Path, rel: str, content: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# -- discovery ----------------------------------------------------------------------------


def test_discovery_finds_every_suffix_recursively_in_path_order(tmp_path):
    rels = [
        "z.fits",
        "a/b/deep.FITS",
        "a/one.fit",
        "a/two.fts",
        "b/three.fits.gz",
        "b/four.fit.gz",
        "c/five.fz",
        "c/six.fits.fz",
    ]
    for rel in rels:
        touch(tmp_path, rel)
    found = discover_mosaics(tmp_path)
    assert [m.relative_path for m in found] == sorted(rels)
    assert [m.name for m in found] == ["deep", "one", "two", "four", "three", "five", "six", "z"]
    assert all(m.path.is_absolute() and m.path == tmp_path / m.relative_path for m in found)


def test_every_declared_suffix_is_discovered(tmp_path):
    for i, suffix in enumerate(FITS_SUFFIXES):
        touch(tmp_path, f"m{i}{suffix.upper() if i % 2 else suffix}")
    assert len(discover_mosaics(tmp_path)) == len(FITS_SUFFIXES)


def test_non_fits_and_hidden_files_are_ignored_and_reported(tmp_path):
    touch(tmp_path, "good.fits")
    for rel in ["notes.txt", "a/table.csv", "a/good.fits.bak", ".hidden.fits"]:
        touch(tmp_path, rel)
    touch(tmp_path, ".cache/skipped.fits")  # hidden directories are not searched
    scan = scan_mosaics(tmp_path)
    assert [m.name for m in scan.mosaics] == ["good"]
    ignored = sorted(p.relative_to(tmp_path).as_posix() for p in scan.ignored)
    assert ignored == [".hidden.fits", "a/good.fits.bak", "a/table.csv", "notes.txt"]
    assert scan.describe_ignored(2) == "4 other files, e.g. .hidden.fits, a/good.fits.bak"


def test_describe_ignored_when_there_is_nothing(tmp_path):
    touch(tmp_path, "a.fits")
    assert scan_mosaics(tmp_path).describe_ignored() == "no other files"


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("P000+23/mosaic-blanked.fits", "P000+23"),
        ("P000+23/mosaic.fits", "P000+23"),
        ("dr2/P012+45/mosaic-blanked.fits.gz", "P012+45"),
        ("P1/MOSAIC-BLANKED.FITS", "P1"),
        ("P2/mosaic-weights.fits", "mosaic-weights"),
        ("plain/field.fits", "field"),
    ],
    ids=["blanked", "mosaic", "gz-nested", "upper-case", "other-stem", "plain"],
)
def test_lotss_layout_is_named_after_the_folder(tmp_path, rel, expected):
    touch(tmp_path, rel)
    assert [m.name for m in discover_mosaics(tmp_path)] == [expected]
    assert mosaic_name(tmp_path / rel) == expected


@pytest.mark.parametrize(
    ("rels", "expected"),
    [
        (["a/x.fits", "b/x.fits", "y.fits"], ["a__x", "b__x", "y"]),
        (["x.fits", "x.fits.gz"], ["x.fits", "x.fits.gz"]),
        (
            ["dr1/P1/mosaic.fits", "dr2/P1/mosaic-blanked.fits", "dr2/P2/mosaic.fits"],
            ["dr1__P1", "dr2__P1", "P2"],
        ),
        (["a/x.fits", "b/x.fits", "a__x.fits"], ["a__x.fits~1", "b__x", "a__x.fits~2"]),
    ],
    ids=["same-stem", "same-dir-two-suffixes", "lotss-two-releases", "pathological"],
)
def test_duplicate_names_are_disambiguated_deterministically(tmp_path, rels, expected):
    for rel in rels:
        touch(tmp_path, rel)
    found = discover_mosaics(tmp_path)
    by_rel = {m.relative_path: m.name for m in found}
    assert [by_rel[rel] for rel in rels] == expected
    assert len(set(by_rel.values())) == len(rels)
    assert discover_mosaics(tmp_path) == found


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_mosaics(tmp_path / "nope")


def test_root_that_is_a_file_is_a_clear_error(tmp_path):
    path = touch(tmp_path, "file.fits")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        discover_mosaics(path)


def test_unreadable_root_is_a_clear_error(tmp_path):
    root = tmp_path / "locked"
    root.mkdir()
    root.chmod(0)
    try:
        if permission_bits_deny():
            with pytest.raises(PermissionError, match="not readable"):
                discover_mosaics(root)
            return
        if not dropping_dac_override_works():
            unavailable("permission bits deny nothing here and setpriv cannot drop them")
        code = (  # as root without CAP_DAC_OVERRIDE (CI runs as root)
            "import sys\nfrom astrocurate.io.mosaics import discover_mosaics\n"
            "try:\n    discover_mosaics(sys.argv[1])\n"
            "except PermissionError as exc:\n    print('PermissionError', exc)\n"
        )
        result = subprocess.run(
            [*WITHOUT_DAC_OVERRIDE, sys.executable, "-c", code, str(root)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.stdout.startswith("PermissionError") and "not readable" in result.stdout
    finally:
        root.chmod(0o755)


def test_symlink_loop_does_not_hang(tmp_path):
    touch(tmp_path, "d/m.fits")
    (tmp_path / "d" / "loop").symlink_to(tmp_path / "d")
    assert [m.relative_path for m in discover_mosaics(tmp_path)] == ["d/m.fits"]


# -- file checks --------------------------------------------------------------------------


def test_is_fits_file_reads_through_gzip(tmp_path):
    plain = write(tmp_path / "a.fits", [fits.PrimaryHDU(image())])
    packed = gzip_file(plain, tmp_path / "a.fits.gz")
    text = touch(tmp_path, "t.fits", b"hello world, not a FITS file")
    text_gz = tmp_path / "t.fits.gz"
    with gzip.open(text_gz, "wb") as fh:
        fh.write(b"hello")
    assert is_fits_file(plain) and is_fits_file(packed)
    assert not is_fits_file(text) and not is_fits_file(text_gz)
    assert fits_problem(touch(tmp_path, "e.fits", b"")) == "empty file"


def test_fingerprint_is_stable_and_detects_changes(tmp_path):
    path = touch(tmp_path, "m.fits", bytes(RNG.integers(0, 256, 3 << 20, dtype=np.uint8)))
    first = file_fingerprint(path)
    assert set(first) == {"size", "mtime_ns", "sha256_sampled"}
    assert first["size"] == 3 << 20
    os.utime(path, ns=(1, 1))  # a copy changes the mtime, not the content
    assert file_fingerprint(path)["sha256_sampled"] == first["sha256_sampled"]
    assert fingerprint_mismatch(path, first) is None

    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # a header byte
    path.write_bytes(bytes(data))
    assert "content changed" in fingerprint_mismatch(path, first)
    path.write_bytes(bytes(data[:-10]))
    assert "size changed" in fingerprint_mismatch(path, first)
    path.unlink()
    assert "no longer exists" in fingerprint_mismatch(path, first)


def test_fingerprint_of_small_file(tmp_path):
    path = touch(tmp_path, "s.fits", b"abc")
    assert file_fingerprint(path)["size"] == 3
    other = touch(tmp_path, "t.fits", b"abd")
    assert file_fingerprint(other)["sha256_sampled"] != file_fingerprint(path)["sha256_sampled"]


# -- opening: layouts ---------------------------------------------------------------------


def test_plain_float_image(tmp_path):
    data = image((40, 30))
    path = write(tmp_path / "f.fits", [fits.PrimaryHDU(data, celestial_header(data.shape))])
    with open_mosaic(path) as mosaic:
        assert mosaic.shape == (40, 30)
        assert mosaic.hdu_index == 0
        assert mosaic.compression is None
        assert mosaic.name == "f"
        out = read_all(mosaic)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, data)
        assert mosaic.pixel_scale_arcsec == pytest.approx(1.5, rel=1e-9)


def test_float64_image_is_returned_as_float32(tmp_path):
    data = RNG.normal(size=(8, 9))
    path = write(tmp_path / "d.fits", [fits.PrimaryHDU(data)])
    with open_mosaic(path) as mosaic:
        out = read_all(mosaic)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data.astype(np.float32))


def test_open_from_mosaic_file_uses_its_name(tmp_path):
    write(tmp_path / "a" / "x.fits", [fits.PrimaryHDU(image())])
    write(tmp_path / "b" / "x.fits", [fits.PrimaryHDU(image())])
    first = discover_mosaics(tmp_path)[0]
    assert isinstance(first, MosaicFile)
    with open_mosaic(first) as mosaic:
        assert mosaic.name == "a__x"
        assert mosaic.path == first.path


def test_four_axis_radio_image_is_squeezed_with_celestial_wcs(tmp_path):
    plane = image((24, 32))
    header = radio_header(plane.shape)
    path = write(tmp_path / "radio.fits", [fits.PrimaryHDU(plane[None, None], header)])
    reference = WCS(celestial_header(plane.shape, extra={"RADESYS": "ICRS"}))
    with open_mosaic(path) as mosaic:
        assert mosaic.shape == (24, 32)
        np.testing.assert_array_equal(read_all(mosaic), plane)
        assert mosaic.wcs is not None and mosaic.wcs.naxis == 2
        assert list(mosaic.wcs.wcs.ctype) == ["RA---SIN", "DEC--SIN"]
        assert mosaic.header["NAXIS"] == 4
        x, y = np.array([0.0, 5.5, 31.0]), np.array([0.0, 12.0, 23.0])
        ra, dec = mosaic.pixel_to_icrs(x, y)
        exp_ra, exp_dec = reference.wcs_pix2world(x, y, 0)
        np.testing.assert_allclose(ra, exp_ra, rtol=0, atol=1e-10)
        np.testing.assert_allclose(dec, exp_dec, rtol=0, atol=1e-10)
        assert mosaic.pixel_scale_arcsec == pytest.approx(1.5)


def test_radio_image_with_singular_degenerate_axes_keeps_its_celestial_wcs(tmp_path):
    """CDELT = 0 on FREQ/STOKES makes the full WCS singular; the sky axes are fine."""
    plane = image((12, 16))
    header = radio_header(plane.shape)
    header["CDELT3"] = header["CDELT4"] = 0.0
    path = write(tmp_path / "singular.fits", [fits.PrimaryHDU(plane[None, None], header)])
    reference = WCS(celestial_header(plane.shape, extra={"RADESYS": "ICRS"}))
    with open_mosaic(path) as mosaic:
        assert mosaic.wcs is not None, mosaic.wcs_problem
        ra, dec = mosaic.pixel_to_icrs([0.0, 15.0], [0.0, 11.0])
    exp_ra, exp_dec = reference.wcs_pix2world([0.0, 15.0], [0.0, 11.0], 0)
    np.testing.assert_allclose(ra, exp_ra, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dec, exp_dec, rtol=0, atol=1e-10)


def test_three_axis_image_with_degenerate_first_axis(tmp_path):
    plane = image((10, 12))
    header = celestial_header(plane.shape)
    header["CTYPE3"] = "FREQ"
    path = write(tmp_path / "r3.fits", [fits.PrimaryHDU(plane[None], header)])
    with open_mosaic(path) as mosaic:
        assert mosaic.shape == (10, 12)
        np.testing.assert_array_equal(mosaic.read_rows(3, 7), plane[3:7])
        assert mosaic.wcs is not None


@pytest.mark.parametrize(
    "shape",
    [(2, 1, 10, 12), (3, 10, 12), (2, 2, 10, 12)],
    ids=["two-freqs", "3d-cube", "freq-and-stokes"],
)
def test_real_cube_is_refused(tmp_path, shape):
    path = write(tmp_path / "cube.fits", [fits.PrimaryHDU(np.zeros(shape, np.float32))])
    with pytest.raises(UnsupportedCubeError) as info:
        open_mosaic(path)
    message = str(info.value)
    assert str(path) in message and str(shape) in message and "\n" not in message
    assert isinstance(info.value, InvalidMosaicError) and isinstance(info.value, ValueError)


def test_image_in_extension_hdu(tmp_path):
    data = image((16, 20))
    ext = fits.ImageHDU(data, celestial_header(data.shape), name="SCI")
    path = write(tmp_path / "ext.fits", [fits.PrimaryHDU(), ext])
    with open_mosaic(path) as mosaic:
        assert mosaic.hdu_index == 1
        np.testing.assert_array_equal(read_all(mosaic), data)
        assert mosaic.wcs is not None


def test_first_two_dimensional_hdu_wins_over_later_ones(tmp_path):
    first, second = image((8, 9)), image((10, 11))
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(first), fits.ImageHDU(second)]
    path = write(tmp_path / "two.fits", hdus)
    with open_mosaic(path) as mosaic:
        assert mosaic.hdu_index == 1
        np.testing.assert_array_equal(read_all(mosaic), first)


@pytest.mark.parametrize(
    ("dtype", "bscale", "bzero", "blank"),
    [
        (np.int16, 0.5, 10.0, -32768),
        (np.int16, 1.0, 0.0, 0),
        (np.int32, 1e-6, -3.0, -1),
        (np.uint8, 2.0, -128.0, 255),
    ],
    ids=["int16-scaled", "int16-blank-zero", "int32-scaled", "uint8-signed-bytes"],
)
def test_integer_image_scaling_and_blank(tmp_path, dtype, bscale, bzero, blank):
    info = np.iinfo(dtype)
    raw = RNG.integers(info.min, info.max, size=(12, 10), endpoint=True).astype(dtype)
    raw[raw == blank] = blank + (1 if blank < info.max else -1)  # no accidental blanks
    raw[2, 3] = raw[7, 0] = raw[11, 9] = blank
    hdu = fits.PrimaryHDU(raw, do_not_scale_image_data=True)
    hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["BLANK"] = bscale, bzero, blank
    path = write(tmp_path / "int.fits", [hdu])
    expected = (raw.astype(np.float64) * bscale + bzero).astype(np.float32)
    expected[raw == blank] = np.nan
    with open_mosaic(path) as mosaic:
        out = read_all(mosaic)
        band = mosaic.read_rows(2, 8)
    assert out.dtype == np.float32
    assert np.isnan(out).sum() == 3
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(band, expected[2:8])


def test_float_image_ignores_blank_keyword(tmp_path):
    data = np.array([[0.0, 1.0], [2.0, np.nan]], np.float32)
    hdu = fits.PrimaryHDU(data)
    hdu.header["BLANK"] = 0  # illegal for floats; must not turn 0.0 into NaN
    with pytest.warns(VerifyWarning, match="BLANK"):
        path = write(tmp_path / "fb.fits", [hdu])
    with open_mosaic(path) as mosaic:
        np.testing.assert_array_equal(read_all(mosaic), data)
        assert any("BLANK" in w for w in mosaic.open_warnings)


def test_tile_compressed_integer_image_is_lossless_with_blank(tmp_path):
    raw = RNG.integers(-1000, 1000, size=(50, 40)).astype(np.int32)
    raw[5, 5] = -999999
    header = fits.Header()
    header["BLANK"] = -999999
    hdu = fits.CompImageHDU(raw, header=header, compression_type="RICE_1", tile_shape=(7, 40))
    path = write(tmp_path / "c.fits.fz", [fits.PrimaryHDU(), hdu])
    with open_mosaic(path) as mosaic:
        assert mosaic.compression == "tile" and mosaic.hdu_index == 1
        out = read_all(mosaic)
    expected = raw.astype(np.float32)
    expected[5, 5] = np.nan
    np.testing.assert_array_equal(out, expected)


def test_tile_compressed_scaled_integer_image(tmp_path):
    physical = np.linspace(-5.0, 5.0, 120).reshape(12, 10)
    hdu = fits.CompImageHDU(physical.copy(), compression_type="RICE_1")  # scale() mutates it
    hdu.scale("int16", bscale=0.01, bzero=1.0)
    stored = hdu.data.copy()
    path = write(tmp_path / "s.fits.fz", [fits.PrimaryHDU(), hdu])
    expected = (stored.astype(np.float64) * 0.01 + 1.0).astype(np.float32)
    with open_mosaic(path) as mosaic:
        assert mosaic.stored_dtype == np.dtype(">i2")
        np.testing.assert_array_equal(read_all(mosaic), expected)
    np.testing.assert_allclose(expected, physical, atol=0.006)


def test_tile_compressed_float_image_lossless(tmp_path):
    data = image((50, 40))
    data[3, 4] = np.nan
    hdu = fits.CompImageHDU(
        data,
        header=celestial_header(data.shape),
        compression_type="GZIP_2",
        quantize_level=0.0,
        tile_shape=(8, 40),
    )
    path = write(tmp_path / "f.fits.fz", [fits.PrimaryHDU(), hdu])
    with open_mosaic(path) as mosaic:
        assert mosaic.compression == "tile"
        np.testing.assert_array_equal(read_all(mosaic), data)
        assert mosaic.wcs is not None


def test_gzip_file(tmp_path):
    data = image((60, 30))
    plain = write(tmp_path / "g.fits", [fits.PrimaryHDU(data, celestial_header(data.shape))])
    path = gzip_file(plain, tmp_path / "g.fits.gz")
    with open_mosaic(path) as mosaic:
        assert mosaic.compression == "gzip" and mosaic.name == "g"
        np.testing.assert_array_equal(read_all(mosaic), data)
        assert mosaic.pixel_scale_arcsec == pytest.approx(1.5)


def test_gzip_file_with_image_not_last(tmp_path):
    """The gzip size trailer does not match the image end: the check reads the data."""
    data = image((20, 10))
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    plain = write(tmp_path / "t.fits", [fits.PrimaryHDU(data), table])
    path = gzip_file(plain, tmp_path / "t.fits.gz")
    with open_mosaic(path) as mosaic:
        np.testing.assert_array_equal(mosaic.read_rows(5, 9), data[5:9])


def _formats(tmp_path: Path, data: np.ndarray) -> dict[str, Path]:
    plain = write(tmp_path / "p.fits", [fits.PrimaryHDU(data)])
    comp = fits.CompImageHDU(
        data, compression_type="GZIP_1", quantize_level=0.0, tile_shape=(3, 17)
    )
    radio = write(tmp_path / "r.fits", [fits.PrimaryHDU(data[None, None])])
    middle = write(tmp_path / "m.fits", [fits.PrimaryHDU(data[:, None, :])])
    return {
        "plain": plain,
        "gzip": gzip_file(plain, tmp_path / "p.fits.gz"),
        "tile": write(tmp_path / "p.fits.fz", [fits.PrimaryHDU(), comp]),
        "radio": radio,
        "radio-gzip": gzip_file(radio, tmp_path / "r.fits.gz"),
        "degenerate-middle-axis": middle,
        "degenerate-middle-axis-gzip": gzip_file(middle, tmp_path / "m.fits.gz"),
    }


FORMATS = [
    "plain",
    "gzip",
    "tile",
    "radio",
    "radio-gzip",
    "degenerate-middle-axis",
    "degenerate-middle-axis-gzip",
]


BAND_SEQUENCES = {
    "overlapping-forward": [(0, 8), (4, 12), (8, 16), (12, 20), (16, 24)],
    "contained-and-backward": [(10, 20), (12, 15), (0, 5), (3, 25), (24, 25)],
    "empty-and-single": [(0, 0), (7, 8), (25, 25), (0, 25)],
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("sequence", list(BAND_SEQUENCES), ids=list(BAND_SEQUENCES))
def test_read_rows_equals_the_band_of_the_full_data(tmp_path, fmt, sequence):
    data = image((25, 17))
    path = _formats(tmp_path, data)[fmt]
    with open_mosaic(path) as mosaic:
        for y0, y1 in BAND_SEQUENCES[sequence]:
            band = mosaic.read_rows(y0, y1)
            assert band.shape == (y1 - y0, 17) and band.dtype == np.float32
            np.testing.assert_array_equal(band, data[y0:y1])
            band[...] = -1.0  # the caller owns the array: must not corrupt later reads
        np.testing.assert_array_equal(mosaic.read_rows(0, 25), data)


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_region(tmp_path, fmt):
    data = image((25, 17))
    path = _formats(tmp_path, data)[fmt]
    with open_mosaic(path) as mosaic:
        np.testing.assert_array_equal(mosaic.read_region(4, 9, 3, 11), data[4:9, 3:11])
        with pytest.raises(IndexError):
            mosaic.read_region(0, 5, 10, 18)


@pytest.mark.parametrize("fmt", [*FORMATS, "scaled-int16-blank"])
def test_read_windows_equals_each_region(tmp_path, fmt):
    """A batch of windows read at once: the values, in the order asked, of each region."""
    data = image((25, 17))
    if fmt == "scaled-int16-blank":
        stored = np.round(data * 1000).astype(np.int16)
        stored[3, 4] = -999
        hdu = fits.PrimaryHDU(stored)
        hdu.header.update(BSCALE=0.001, BZERO=0.5, BLANK=-999)
        path = write(tmp_path / "s.fits", [hdu])
        data = (stored.astype(np.float64) * 0.001 + 0.5).astype(np.float32)
        data[3, 4] = np.nan
    else:
        path = _formats(tmp_path, data)[fmt]
    y0, x0 = np.array([12, 0, 3, 20, 3]), np.array([5, 0, 2, 12, 2])
    with open_mosaic(path) as mosaic:
        windows = mosaic.read_windows(y0, x0, 5)
        assert windows.shape == (5, 5, 5) and windows.dtype == np.float32
        for window, y, x in zip(windows, y0, x0, strict=True):
            np.testing.assert_array_equal(window, mosaic.read_region(y, y + 5, x, x + 5))
            np.testing.assert_array_equal(window, data[y : y + 5, x : x + 5])
        into = np.full((5, 5, 5), -1.0, dtype=np.float32)
        assert mosaic.read_windows(y0, x0, 5, out=into) is into
        np.testing.assert_array_equal(into, windows)
        assert mosaic.read_windows(y0[:0], x0[:0], 5).shape == (0, 5, 5)
        for bad_y, bad_x in ((-1, 0), (21, 0), (0, 13)):
            with pytest.raises(IndexError, match="outside"):
                mosaic.read_windows(np.array([0, bad_y]), np.array([0, bad_x]), 5)


@pytest.mark.parametrize(("y0", "y1"), [(-1, 3), (5, 4), (0, 26)], ids=["neg", "reversed", "past"])
def test_read_rows_outside_the_image(tmp_path, y0, y1):
    path = write(tmp_path / "a.fits", [fits.PrimaryHDU(image((25, 17)))])
    with open_mosaic(path) as mosaic, pytest.raises(IndexError, match="outside"):
        mosaic.read_rows(y0, y1)


def test_read_after_close_fails(tmp_path):
    path = write(tmp_path / "a.fits", [fits.PrimaryHDU(image())])
    mosaic = open_mosaic(path)
    mosaic.close()
    mosaic.close()
    with pytest.raises(ValueError, match="closed"):
        mosaic.read_rows(0, 1)


@pytest.mark.parametrize("fmt", ["plain", "tile"])
def test_reading_a_band_does_not_load_the_whole_image(tmp_path, fmt):
    data = image((256, 256))  # 256 KiB of float32
    comp = fits.CompImageHDU(data, compression_type="GZIP_1", quantize_level=0.0)
    hdus = [fits.PrimaryHDU(data)] if fmt == "plain" else [fits.PrimaryHDU(), comp]
    path = write(tmp_path / f"{fmt}.fits", hdus)
    with open_mosaic(path) as mosaic:
        tracemalloc.start()
        try:
            band = mosaic.read_rows(100, 104)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    np.testing.assert_array_equal(band, data[100:104])
    # whole-image decoding would allocate at least data.nbytes (tile index arrays: ~80 KiB)
    assert peak < data.nbytes // 2, f"peak {peak} B for a 4-row band of a {data.nbytes} B image"


def _mapped_file_kb() -> int:
    """Resident pages of mapped files in this process, in KiB (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("RssFile:")).split()[1])


def _read_every_band(mosaic, data: np.ndarray, rows: int) -> None:
    out = np.empty((rows, data.shape[1]), np.float32)
    for y0 in range(0, data.shape[0], rows):
        assert mosaic.read_rows(y0, y0 + rows, out=out) is out
        np.testing.assert_array_equal(out, data[y0 : y0 + rows])


@pytest.mark.skipif(
    not hasattr(fits_image.mmap.mmap, "madvise") or not Path("/proc/self/status").is_file(),
    reason="needs madvise and /proc (Linux)",
)
def test_a_full_pass_over_a_plain_file_leaves_only_a_band_mapped(tmp_path):
    """Each band's pages are dropped once copied: a pass does not map the whole file."""
    data = image((4096, 2048))  # 32 MiB
    path = write(tmp_path / "big.fits", [fits.PrimaryHDU(data)])
    with open_mosaic(path) as mosaic:
        before = _mapped_file_kb()
        _read_every_band(mosaic, data, rows=128)  # 1 MiB a band
        grown = _mapped_file_kb() - before
    assert grown < 8 * 1024, f"{grown} KiB of the 32 MiB file still mapped after a pass"


def test_plain_rows_are_right_where_madvise_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(fits_image, "_MADV_DONTNEED", None)
    monkeypatch.setattr(fits_image, "_MADV_WILLNEED", None)
    data = image((64, 48))
    with open_mosaic(write(tmp_path / "a.fits", [fits.PrimaryHDU(data)])) as mosaic:
        _read_every_band(mosaic, data, rows=16)


# -- coordinates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ctype", "extra", "frame"),
    [
        (("GLON-TAN", "GLAT-TAN"), {}, "galactic"),
        (("RA---TAN", "DEC--TAN"), {"RADESYS": "FK5", "EQUINOX": 2000.0}, "fk5"),
        (("RA---TAN", "DEC--TAN"), {"RADESYS": "FK4", "EQUINOX": 1950.0}, "fk4"),
        (("RA---SIN", "DEC--SIN"), {"RADESYS": "ICRS"}, "icrs"),
    ],
    ids=["galactic", "fk5", "fk4", "icrs"],
)
def test_celestial_frames_are_converted_to_icrs(tmp_path, ctype, extra, frame):
    shape = (20, 30)
    header = celestial_header(shape, ctype=ctype, crval=(120.0, -25.0), extra=extra)
    path = write(tmp_path / "w.fits", [fits.PrimaryHDU(image(shape), header)])
    x = np.array([[0.0, 14.5], [29.0, 3.0]])
    y = np.array([[0.0, 9.5], [19.0, 12.0]])
    lon, lat = WCS(header).wcs_pix2world(x, y, 0)
    frame_args = {"equinox": "B1950"} if frame == "fk4" else {}
    expected = SkyCoord(lon * u.deg, lat * u.deg, frame=frame, **frame_args).icrs
    with open_mosaic(path) as mosaic:
        ra, dec = mosaic.pixel_to_icrs(x, y)
    assert ra.shape == dec.shape == (2, 2)
    np.testing.assert_allclose(ra, expected.ra.deg, rtol=0, atol=1e-9)
    np.testing.assert_allclose(dec, expected.dec.deg, rtol=0, atol=1e-9)
    if frame == "galactic":  # a real conversion happened
        assert np.abs(ra - lon).max() > 1.0


def test_pixel_to_icrs_broadcasts_scalars(tmp_path):
    shape = (10, 10)
    path = write(tmp_path / "w.fits", [fits.PrimaryHDU(image(shape), celestial_header(shape))])
    with open_mosaic(path) as mosaic:
        ra, dec = mosaic.pixel_to_icrs(4.5, np.arange(3.0))
    assert ra.shape == dec.shape == (3,)
    assert ra[0] == pytest.approx(150.0) and dec[0] < dec[1] < dec[2]


@pytest.mark.parametrize(
    "header",
    [
        fits.Header(),
        fits.Header([("CTYPE1", "LINEAR"), ("CTYPE2", "LINEAR")]),
        fits.Header([("CTYPE1", "RA---XYZ"), ("CTYPE2", "DEC--XYZ")]),
    ],
    ids=["no-wcs", "linear-wcs", "invalid-projection"],
)
def test_file_without_celestial_wcs_gives_nan_coordinates(tmp_path, header):
    path = write(tmp_path / "nowcs.fits", [fits.PrimaryHDU(image((10, 12)), header)])
    with open_mosaic(path) as mosaic:
        assert mosaic.wcs is None
        assert isinstance(mosaic.wcs_problem, str) and mosaic.wcs_problem
        assert np.isnan(mosaic.pixel_scale_arcsec)
        ra, dec = mosaic.pixel_to_icrs(np.arange(4.0), np.zeros(4))
    assert ra.shape == dec.shape == (4,)
    assert np.isnan(ra).all() and np.isnan(dec).all()


@pytest.mark.parametrize(
    ("ctype", "words"),
    [
        (("HPLN-TAN", "HPLT-TAN"), "helioprojective WCS (HPLN/HPLT), not a sky frame"),
        (("HGLN-CAR", "HGLT-CAR"), "heliographic Stonyhurst WCS (HGLN/HGLT), not a sky frame"),
        (("CRLN-CEA", "CRLT-CEA"), "heliographic Carrington WCS (CRLN/CRLT), not a sky frame"),
        (("ZZLN-TAN", "ZZLT-TAN"), "ZZLN/ZZLT WCS, not a sky frame astropy knows (RA/DEC,"),
    ],
    ids=["helioprojective", "stonyhurst", "carrington", "unknown-body"],
)
def test_solar_and_unknown_frames_are_named_not_a_sky_frame(tmp_path, ctype, words):
    shape = (16, 16)
    header = celestial_header(shape, ctype=ctype, crval=(10.0, 5.0))
    path = write(tmp_path / "sun.fits", [fits.PrimaryHDU(image(shape), header)])
    with open_mosaic(path) as mosaic:
        assert mosaic.wcs is None and mosaic.wcs_problem.startswith(words)
        ra, dec = mosaic.pixel_to_icrs(np.arange(3.0), np.zeros(3))
    assert np.isnan(ra).all() and np.isnan(dec).all()


def test_wcs_whose_celestial_axes_are_not_the_image_axes(tmp_path):
    """A position-frequency image: celestial axes 1 and 3, image axes 1 and 2."""
    header = fits.Header()
    for key, value in {
        "CTYPE1": "RA---SIN",
        "CTYPE2": "FREQ",
        "CTYPE3": "DEC--SIN",
        "CRVAL1": 10.0,
        "CRVAL3": 20.0,
        "CDELT1": -0.001,
        "CDELT3": 0.001,
        "CDELT2": 1e6,
        "CRVAL2": 1.4e8,
    }.items():
        header[key] = value
    path = write(tmp_path / "pv.fits", [fits.PrimaryHDU(image((1, 8, 9)), header)])
    with open_mosaic(path) as mosaic:
        assert mosaic.shape == (8, 9)
        assert mosaic.wcs is None and "not the image axes" in mosaic.wcs_problem


# -- bad input ----------------------------------------------------------------------------


def _assert_invalid(path: Path, *words: str) -> str:
    with pytest.raises(InvalidMosaicError) as info:
        open_mosaic(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    reason = message.replace(str(path), "")  # tmp_path holds the test name
    for word in words:
        assert word in reason
    return message


def test_text_file_with_fits_suffix(tmp_path):
    _assert_invalid(touch(tmp_path, "notes.fits", b"just some text\n" * 50), "not a FITS file")


def test_empty_file(tmp_path):
    _assert_invalid(touch(tmp_path, "empty.fits", b""), "empty file")


def test_gzip_of_text_with_fits_suffix(tmp_path):
    path = tmp_path / "t.fits.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"not fits at all" * 100)
    _assert_invalid(path, "not a FITS file")


def test_missing_file(tmp_path):
    _assert_invalid(tmp_path / "gone.fits", "does not exist")


def test_corrupt_header(tmp_path):
    path = touch(
        tmp_path, "bad.fits", b"SIMPLE  =                    T" + b"\x00\xff garbage" * 400
    )
    _assert_invalid(path, "corrupt")


@pytest.mark.parametrize("cut", [1, 2880, 4000], ids=["last-byte", "one-block", "into-data"])
def test_truncated_plain_file(tmp_path, cut):
    data = image((64, 50))  # 12800 bytes of data after a 2880-byte header
    full = write(tmp_path / "full.fits", [fits.PrimaryHDU(data)]).read_bytes()
    padding = len(full) - 2880 - data.nbytes
    path = touch(tmp_path, "cut.fits", full[: len(full) - padding - cut])
    _assert_invalid(path, "truncated")


def test_missing_padding_only_is_accepted(tmp_path):
    data = image((64, 50))
    full = write(tmp_path / "full.fits", [fits.PrimaryHDU(data)]).read_bytes()
    path = touch(tmp_path, "nopad.fits", full[: 2880 + data.nbytes])
    with open_mosaic(path) as mosaic:
        np.testing.assert_array_equal(read_all(mosaic), data)


def test_truncated_gzip_file(tmp_path):
    data = image((200, 100))  # random floats barely compress: the cut lands in the data
    plain = write(tmp_path / "full.fits", [fits.PrimaryHDU(data)])
    packed = gzip_file(plain, tmp_path / "full.fits.gz").read_bytes()
    path = touch(tmp_path, "cut.fits.gz", packed[: len(packed) * 3 // 4])
    _assert_invalid(path)


def test_gzip_of_a_truncated_fits_file(tmp_path):
    """A valid gzip stream whose content ends early: only the data read can tell."""
    data = image((200, 100))
    full = write(tmp_path / "full.fits", [fits.PrimaryHDU(data)]).read_bytes()
    path = tmp_path / "short.fits.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(full[: 2880 + data.nbytes // 2])
    _assert_invalid(path, "ended", "early")


def test_truncated_tile_compressed_file(tmp_path):
    data = image((100, 90))
    comp = fits.CompImageHDU(data, compression_type="GZIP_2", quantize_level=0.0)
    full = write(tmp_path / "full.fits", [fits.PrimaryHDU(), comp]).read_bytes()
    path = touch(tmp_path, "cut.fits.fz", full[: len(full) - 6000])
    _assert_invalid(path)


def test_zero_size_image(tmp_path):
    path = write(tmp_path / "zero.fits", [fits.PrimaryHDU(np.zeros((0, 5), np.float32))])
    _assert_invalid(path, "zero-size")


def test_no_image_hdu(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    path = write(tmp_path / "table.fits", [fits.PrimaryHDU(), table])
    _assert_invalid(path, "no 2-D image HDU", "BinTableHDU")


def test_one_dimensional_image_is_not_a_mosaic(tmp_path):
    path = write(tmp_path / "spec.fits", [fits.PrimaryHDU(np.zeros(10, np.float32))])
    _assert_invalid(path, "no 2-D image HDU")
