"""Noise-aware quality: rms-map statistics, empty and noisy flags, companion files."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from astrocurate.algorithms import noise_flags, windows
from astrocurate.io.mosaic_names import is_companion_name
from astrocurate.io.mosaics import scan_mosaics
from astrocurate.synthetic.survey import make_survey


def _brute_medians(image: np.ndarray, x0: np.ndarray, y0: np.ndarray, w: int) -> np.ndarray:
    k = windows.robust_step(w)
    out = []
    for x, y in zip(x0, y0, strict=True):
        grid = image[y : y + w : k, x : x + w : k]
        out.append(np.nanmedian(grid) if np.isfinite(grid).any() else np.nan)
    return np.array(out)


@pytest.mark.parametrize("w", [16, 64, 100])
def test_window_medians_match_a_direct_median_with_blanks(w: int) -> None:
    rng = np.random.default_rng(w)
    image = rng.gamma(2.0, 1.0, size=(300, 280)).astype(np.float32)
    image[:40, :] = np.nan  # a blank edge: windows there are partly or wholly blank
    image[100:110, 50:60] = np.nan
    x0 = rng.integers(0, 280 - w + 1, size=200)
    y0 = rng.integers(0, 300 - w + 1, size=200)
    got = windows.window_medians(image, x0, y0, w)
    np.testing.assert_allclose(got, _brute_medians(image, x0, y0, w), rtol=1e-6)
    assert got.dtype == np.float64


def test_window_medians_refuse_windows_outside_the_image() -> None:
    with pytest.raises(ValueError, match="outside"):
        windows.window_medians(np.zeros((10, 10)), [5], [0], 8)


def test_flags_use_the_rms_map_where_known_and_the_robust_noise_elsewhere() -> None:
    columns = {
        "peak_snr": np.array([3.0, 10.0, 3.0, np.nan]),
        "peak_snr_map": np.array([8.0, np.nan, np.nan, np.nan]),
        "noise_mad": np.array([1.0, 1.0, 1.0, 1.0]),
        "rms_map": np.array([1.0, np.nan, np.nan, np.nan]),
    }
    flags = noise_flags.flag_noise(columns, np.zeros(4), min_peak_snr=5.0)
    np.testing.assert_array_equal(flags.snr[:3], [8.0, 10.0, 3.0])
    np.testing.assert_array_equal(flags.empty, [False, False, True, True])  # NaN: empty
    assert flags.noisy is None
    np.testing.assert_array_equal(flags.flagged, flags.empty)


def test_noise_ratio_is_taken_within_each_group() -> None:
    noise = np.array([1.0, 1.0, 3.0, 10.0, 10.0, 40.0, np.nan])
    groups = np.array(["a", "a", "a", "b", "b", "b", "b"])
    ratio = noise_flags.noise_ratio(noise, groups)
    np.testing.assert_allclose(ratio[:6], [1.0, 1.0, 3.0, 1.0, 1.0, 4.0])
    assert np.isnan(ratio[6])
    np.testing.assert_array_equal(
        noise_flags.too_noisy(ratio, 2.5), [False, False, True, False, False, True, False]
    )


def test_missing_noise_columns_count_as_unknown() -> None:
    flags = noise_flags.flag_noise({"peak_snr": [6.0, 2.0]}, ["m", "m"], 5.0, 2.0)
    np.testing.assert_array_equal(flags.empty, [False, True])
    np.testing.assert_array_equal(flags.noisy, [False, False])  # no noise known: not noisy


@pytest.mark.parametrize(
    ("name", "companion"),
    [
        ("mosaic.rms.fits", True),
        ("P000+23_rms.fits.gz", True),
        ("P000+23-rms.fits", True),
        ("image.pybdsf.srl.fits", True),
        ("mosaic.resid.fits", True),
        ("mosaic-blanked.fits", False),
        ("P000+23.fits", False),
        ("rmsfield.fits", False),
        ("catalogue.csv", False),
    ],
)
def test_companion_names(name: str, companion: bool) -> None:
    assert is_companion_name(name) is companion


def test_synthetic_survey_writes_the_rms_map_it_drew_the_noise_with(tmp_path) -> None:
    make_survey(
        tmp_path,
        n_mosaics=1,
        mosaic_size=256,
        seed=3,
        noise_edge_factor=3.0,
        source_density_per_deg2=0.0,
    )
    scan = scan_mosaics(tmp_path)
    assert [m.relative_path for m in scan.mosaics] == ["P180+50/mosaic-blanked.fits"]
    image, header = fits.getdata(scan.mosaics[0].path, header=True)
    rms, rms_header = fits.getdata(tmp_path / "P180+50" / "mosaic.rms.fits", header=True)
    assert rms.shape == image.shape and rms_header["CRVAL1"] == header["CRVAL1"]
    np.testing.assert_array_equal(np.isnan(rms), np.isnan(image))
    assert np.nanmin(rms) == pytest.approx(1e-4, rel=1e-3)
    assert np.nanmax(rms) == pytest.approx(3e-4, rel=0.02)
    # the noise of the image follows the map: a ring near the edge is ~2.5x the centre's
    y, x = np.indices(image.shape)
    r = np.hypot(x - 127.5, y - 127.5) / header["FOOTRAD"]
    centre = image[(r < 0.3)]
    edge = image[(r > 0.85) & (r < 0.95)]

    def mad(v):
        return 1.4826 * np.median(np.abs(v - np.median(v)))

    assert mad(edge) / mad(centre) == pytest.approx(
        np.nanmedian(rms[(r > 0.85) & (r < 0.95)]) / np.nanmedian(rms[r < 0.3]), rel=0.15
    )


def test_uniform_noise_survey_is_unchanged_by_the_rms_maps(tmp_path) -> None:
    """The pixels of a default survey are those made before rms maps existed (8318edc)."""
    import hashlib

    info = make_survey(tmp_path, n_mosaics=2, mosaic_size=128, seed=1)
    digests = [
        hashlib.sha256(fits.getdata(p).tobytes()).hexdigest()[:16] for p in info.mosaic_paths
    ]
    assert digests == ["44b07cf313f77564", "362a39b22b2eab2f"]
