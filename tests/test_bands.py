"""Tests of astrocurate.stages.cutting_out.bands: bands read ahead equal bands read directly."""

from __future__ import annotations

import gzip
import itertools
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrocurate.algorithms.windows import row_bands, window_origins
from astrocurate.io.fits_image import InvalidMosaicError
from astrocurate.io.mosaics import open_mosaic
from astrocurate.stages.cutting_out.bands import read_ahead

pytestmark = pytest.mark.filterwarnings("error")

RNG = np.random.default_rng(3)
SHAPE = (61, 23)


def _plain(path: Path, data: np.ndarray) -> Path:
    fits.PrimaryHDU(data).writeto(path)
    return path


def _scaled_int16(path: Path, data: np.ndarray) -> Path:
    raw = np.round(np.nan_to_num(data) * 1000).astype(np.int16)
    hdu = fits.PrimaryHDU(raw, do_not_scale_image_data=True)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.001, 5.0
    hdu.writeto(path)
    return path


def _gzipped(path: Path, data: np.ndarray) -> Path:
    plain = _plain(path.with_name("plain.fits"), data)
    with open(plain, "rb") as fin, gzip.open(path.with_suffix(".fits.gz"), "wb") as fout:
        shutil.copyfileobj(fin, fout)
    return path.with_suffix(".fits.gz")


def _tiled(path: Path, data: np.ndarray) -> Path:
    fits.HDUList(
        [fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="GZIP_1", tile_shape=(5, 23))]
    ).writeto(path)
    return path


WRITERS = {
    "float32": lambda p, d: _plain(p, d),
    "float64": lambda p, d: _plain(p, d.astype(np.float64)),
    "int16-scaled": _scaled_int16,
    "gzip": _gzipped,
    "tile-compressed": _tiled,
}


@pytest.mark.parametrize("kind", list(WRITERS), ids=list(WRITERS))
def test_bands_read_ahead_equal_rows_read_directly(tmp_path, kind):
    data = RNG.normal(size=SHAPE).astype(np.float32)
    data[3:9, 4] = np.nan
    image = WRITERS[kind](tmp_path / "image.fits", data)
    rms = _plain(tmp_path / "rms.fits", np.abs(data[::-1]))
    _, y0 = window_origins(SHAPE, 8, 0.5)
    spans = row_bands(y0, 8, 17)  # overlapping bands of unequal heights
    assert len(spans) > 2 and any(b1 > c0 for (_, b1), (c0, _) in itertools.pairwise(spans))
    with open_mosaic(image) as mosaic, open_mosaic(rms) as rms_map:
        seen = []
        for (b0, b1), (band, rms_band) in zip(
            spans, read_ahead([mosaic, rms_map], spans), strict=True
        ):
            np.testing.assert_array_equal(band, mosaic.read_rows(b0, b1))
            np.testing.assert_array_equal(rms_band, rms_map.read_rows(b0, b1))
            assert band.dtype == np.float32 and band.shape == (b1 - b0, SHAPE[1])
            seen.append(band.copy())
        assert sum(len(b) for b in seen) >= SHAPE[0] - 8


@pytest.mark.parametrize("kind", list(WRITERS), ids=list(WRITERS))
@pytest.mark.parametrize("step", [2, 4, 8])
def test_a_source_read_one_row_in_step_gets_those_rows_of_each_band(tmp_path, kind, step):
    """The rms map's robust-grid rows only: the rows a band shares are kept, the rest read."""
    data = RNG.normal(size=SHAPE).astype(np.float32)
    data[3:9, 4] = np.nan
    image = _plain(tmp_path / "image.fits", data)
    rms = WRITERS[kind](tmp_path / "rms.fits", np.abs(data[::-1]))
    _, y0 = window_origins(SHAPE, 16, 0.5)  # windows every 8 rows
    spans = row_bands(y0, 16, 30)
    assert any(b1 > c0 for (_, b1), (c0, _) in itertools.pairwise(spans))
    with open_mosaic(image) as mosaic, open_mosaic(rms) as rms_map:
        full = rms_map.read_rows(0, SHAPE[0])
        for (b0, b1), (band, rms_band) in zip(
            spans, read_ahead([mosaic, rms_map], spans, [1, step]), strict=True
        ):
            np.testing.assert_array_equal(band, mosaic.read_rows(b0, b1))
            np.testing.assert_array_equal(rms_band, full[b0:b1:step])
            np.testing.assert_array_equal(rms_band, rms_map.read_rows(b0, b1, step=step))
        with pytest.raises(ValueError, match="multiple of the row steps"):
            next(read_ahead([rms_map], [(3, 20)], [2]))


@pytest.mark.parametrize("kind", ["float32", "gzip"])
def test_rows_read_from_two_threads_at_once_are_right(tmp_path, kind):
    # One stream position per mosaic: reads from two threads must take turns, not
    # interleave their seeks (the read-ahead thread and a caller reading the same file).
    data = RNG.normal(size=(400, 301)).astype(np.float32)
    spans = [(y, y + 37) for y in range(0, 360, 9)]
    with open_mosaic(WRITERS[kind](tmp_path / "image.fits", data)) as mosaic:

        def read_all(order):
            for b0, b1 in order * 5:
                np.testing.assert_array_equal(mosaic.read_rows(b0, b1), data[b0:b1])

        with ThreadPoolExecutor(2) as pool:
            for job in [pool.submit(read_all, spans), pool.submit(read_all, spans[::-1])]:
                job.result()


def test_rows_read_into_a_given_array(tmp_path):
    data = RNG.normal(size=SHAPE).astype(np.float32)
    with open_mosaic(_plain(tmp_path / "image.fits", data)) as mosaic:
        out = np.full((10, SHAPE[1]), -1.0, np.float32)
        assert mosaic.read_rows(4, 14, out=out) is out
    np.testing.assert_array_equal(out, data[4:14])


def test_a_truncated_file_fails_where_its_band_is_used(tmp_path):
    path = _plain(tmp_path / "image.fits", RNG.normal(size=(200, 50)).astype(np.float32))
    with open_mosaic(path) as mosaic:
        with open(path, "r+b") as handle:
            handle.truncate(2880 + 100 * 50 * 4)
        spans = [(0, 60), (50, 110), (100, 160)]
        reader = read_ahead([mosaic], spans)
        first = next(reader)[0]
        assert first.shape == (60, 50)
        with pytest.raises(InvalidMosaicError, match="cannot read rows"):
            list(reader)
