"""Tests of astrocurate.algorithms.windows: window origins, extraction, statistics, NaN filling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.nddata import Cutout2D

from astrocurate.algorithms import windows
from astrocurate.algorithms.windows import (
    DEFAULT_FILL_VALUE,
    add_robust_statistics,
    cutout_statistics,
    extract_windows,
    fill_nan,
    robust_step,
    row_bands,
    window_centres,
    window_moments,
    window_origins,
    window_statistics,
    window_stride,
)

pytestmark = pytest.mark.filterwarnings("error")

RNG = np.random.default_rng(7)


# -- origins ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "w", "overlap", "x0", "y0"),
    [
        ((5, 5), 2, 0.0, [0, 2, 0, 2], [0, 0, 2, 2]),
        ((4, 6), 4, 0.5, [0, 2], [0, 0]),
        ((6, 4), 4, 0.5, [0, 0], [0, 2]),
        ((5, 11), 5, 0.5, [0, 3, 6], [0, 0, 0]),  # 2.5 rounds half up to 3
        ((3, 5), 3, 0.9, [0, 1, 2], [0, 0, 0]),  # 0.3 rounds to 0 -> stride 1
        ((4, 4), 4, 0.5, [0], [0]),  # exactly one window
        ((3, 10), 4, 0.5, [], []),  # image lower than the window
        ((10, 3), 4, 0.0, [], []),  # image narrower than the window
        ((0, 0), 1, 0.0, [], []),
        ((3, 7), 3, 1 / 3, [0, 2, 4], [0, 0, 0]),
    ],
    ids=[
        "no-overlap",
        "half-overlap-wide",
        "half-overlap-tall",
        "stride-rounds-half-up",
        "stride-at-least-one",
        "image-equals-window",
        "image-too-low",
        "image-too-narrow",
        "empty-image",
        "third-overlap",
    ],
)
def test_window_origins_by_hand(shape, w, overlap, x0, y0):
    got_x0, got_y0 = window_origins(shape, w, overlap)
    assert got_x0.dtype == np.int64 and got_y0.dtype == np.int64
    assert got_x0.tolist() == x0
    assert got_y0.tolist() == y0


def test_window_origins_are_row_major_and_inside():
    x0, y0 = window_origins((300, 200), 64, 0.5)
    assert np.all(np.diff(y0 * 1000 + x0) > 0)  # sorted by y then x
    assert x0.max() + 64 <= 200 and y0.max() + 64 <= 300
    assert len(x0) == len(range(0, 300 - 63, 32)) * len(range(0, 200 - 63, 32))


@pytest.mark.parametrize(
    ("w", "overlap", "stride"),
    [(128, 0.5, 64), (256, 0.5, 128), (64, 0.0, 64), (5, 0.5, 3), (3, 0.5, 2), (10, 0.75, 3)],
    ids=["128-half", "256-half", "no-overlap", "5-half", "3-half", "10-three-quarters"],
)
def test_window_stride(w, overlap, stride):
    assert window_stride(w, overlap) == stride


@pytest.mark.parametrize(
    ("w", "overlap", "argument"),
    [
        (0, 0.5, "window_size"),
        (-4, 0.5, "window_size"),
        (2.5, 0.5, "window_size"),
        (True, 0.5, "window_size"),
        ("4", 0.5, "window_size"),
        (4, -0.1, "overlap"),
        (4, 1.0, "overlap"),
        (4, 1.5, "overlap"),
        (4, math.nan, "overlap"),
        (4, "0.5", "overlap"),
    ],
    ids=[
        "size-zero",
        "size-negative",
        "size-float",
        "size-bool",
        "size-str",
        "overlap-negative",
        "overlap-one",
        "overlap-above-one",
        "overlap-nan",
        "overlap-str",
    ],
)
def test_invalid_arguments_name_the_argument(w, overlap, argument):
    with pytest.raises(ValueError, match=argument):
        window_origins((10, 10), w, overlap)


def test_numpy_integer_window_size_is_accepted():
    x0, _ = window_origins((8, 8), np.int32(4), 0.5)
    assert x0.tolist() == [0, 2, 4] * 3


@pytest.mark.parametrize("shape", [(5,), (-1, 4), ("a", 3)], ids=["one-axis", "negative", "str"])
def test_invalid_shape(shape):
    with pytest.raises(ValueError, match="shape"):
        window_origins(shape, 2, 0.5)


# -- centres, extraction, bands -----------------------------------------------------------


@pytest.mark.parametrize("w", [4, 5], ids=["even", "odd"])
def test_windows_equal_cutout2d_at_their_centres(w):
    data = RNG.normal(size=(23, 19)).astype(np.float32)
    x0, y0 = window_origins(data.shape, w, 0.5)
    xc, yc = window_centres(x0, y0, w)
    stack = extract_windows(data, x0, y0, w)
    assert stack.shape == (len(x0), w, w) and stack.flags.c_contiguous
    for i in range(len(x0)):
        cut = Cutout2D(data, (xc[i], yc[i]), w, mode="strict")
        np.testing.assert_array_equal(stack[i], cut.data)
        np.testing.assert_array_equal(stack[i], data[y0[i] : y0[i] + w, x0[i] : x0[i] + w])


def test_window_centres_by_hand():
    xc, yc = window_centres(np.array([0, 10]), np.array([4, 0]), 4)
    assert xc.tolist() == [1.5, 11.5] and yc.tolist() == [5.5, 1.5]


def test_extract_windows_rejects_windows_outside():
    with pytest.raises(ValueError, match="outside"):
        extract_windows(np.zeros((4, 4)), np.array([1]), np.array([0]), 4)
    assert extract_windows(np.zeros((4, 4)), np.array([], int), np.array([], int), 3).shape == (
        0,
        3,
        3,
    )


@pytest.mark.parametrize(
    ("starts", "w", "max_rows", "expected"),
    [
        ([0, 2, 4, 6], 4, 8, [(0, 8), (6, 10)]),
        ([0, 2, 4, 6], 4, 100, [(0, 10)]),
        ([0, 2, 4, 6], 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),  # at least one window row
        ([4, 0, 0, 4], 4, 8, [(0, 8)]),  # repeats and order do not matter
        ([], 4, 8, []),
    ],
    ids=["two-bands", "one-band", "max-below-window", "repeats", "none"],
)
def test_row_bands_by_hand(starts, w, max_rows, expected):
    assert row_bands(starts, w, max_rows) == expected


def test_every_window_is_in_exactly_one_band():
    w = 16
    _, y0 = window_origins((200, 50), w, 0.5)
    bands = row_bands(y0, w, 50)
    member = np.array([[lo <= y and y + w <= hi for lo, hi in bands] for y in y0])
    assert np.all(member.sum(axis=1) == 1)
    assert all(hi - lo <= 50 for lo, hi in bands)


# -- statistics ---------------------------------------------------------------------------

NAN = np.nan


def test_statistics_by_hand():
    stack = np.array(
        [
            [[1, 2], [3, 4]],
            [[NAN, 1], [2, 10]],
            [[NAN, NAN], [NAN, NAN]],
            [[5, 5], [5, 5]],
            [[0, 0], [0, 7]],
        ],
        dtype=np.float32,
    )
    stats = cutout_statistics(stack)
    assert set(stats) == {
        "nan_fraction",
        "mean",
        "std",
        "max",
        "median",
        "noise_mad",
        "peak_snr",
    }
    assert all(v.dtype == np.float64 and v.shape == (5,) for v in stats.values())
    s = 1.4826
    expected = {
        "nan_fraction": [0.0, 0.25, 1.0, 0.0, 0.0],
        "mean": [2.5, 13 / 3, NAN, 5.0, 1.75],
        "std": [
            math.sqrt(1.25),
            math.sqrt(((1 - 13 / 3) ** 2 + (2 - 13 / 3) ** 2 + (10 - 13 / 3) ** 2) / 3),
            NAN,
            0.0,
            math.sqrt(3 * 1.75**2 + 5.25**2) / 2,
        ],
        "max": [4.0, 10.0, NAN, 5.0, 7.0],
        "median": [2.5, 2.0, NAN, 5.0, 0.0],
        # |v - median|: [1.5, .5, .5, 1.5] -> 1; [1, 0, 8] -> 1; [0]*4 -> 0; [0, 0, 0, 7] -> 0
        "noise_mad": [s, s, NAN, 0.0, 0.0],
        "peak_snr": [1.5 / s, 8 / s, NAN, NAN, NAN],  # NaN where the noise is 0
    }
    for key, values in expected.items():
        np.testing.assert_allclose(stats[key], values, rtol=1e-12, atol=0, err_msg=key)


@pytest.mark.parametrize(
    ("hw", "nan_probability"),
    [((7, 9), 0.2), ((6, 8), 0.2), ((7, 9), 0.0), ((6, 8), 0.0)],
    ids=["odd-with-nan", "even-with-nan", "odd-no-nan", "even-no-nan"],
)
def test_statistics_match_numpy_reference(monkeypatch, hw, nan_probability):
    monkeypatch.setattr(windows, "_CHUNK_ELEMENTS", 100)  # several chunks
    stack = RNG.normal(3.0, 2.0, size=(40, *hw)).astype(np.float32)
    stack[RNG.random(stack.shape) < nan_probability] = np.nan
    stack[5] = np.nan
    stack[6, 0, 0] = np.nan
    stats = cutout_statistics(stack)
    flat = stack.reshape(40, -1).astype(np.float64)
    ok = np.ones(40, bool)
    ok[5] = False
    median = np.nanmedian(flat[ok], axis=1)
    mad = np.nanmedian(np.abs(flat[ok] - median[:, None]), axis=1)
    np.testing.assert_allclose(stats["nan_fraction"], np.isnan(flat).mean(axis=1))
    np.testing.assert_allclose(stats["mean"][ok], np.nanmean(flat[ok], axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats["std"][ok], np.nanstd(flat[ok], axis=1), rtol=1e-12)
    np.testing.assert_array_equal(stats["max"][ok], np.nanmax(flat[ok], axis=1))
    np.testing.assert_allclose(stats["median"][ok], median, rtol=1e-12)
    # |v - median| is formed in float32: ~1e-7 relative error in the noise
    np.testing.assert_allclose(stats["noise_mad"][ok], 1.4826 * mad, rtol=1e-6)
    np.testing.assert_allclose(
        stats["peak_snr"][ok], (np.nanmax(flat[ok], axis=1) - median) / (1.4826 * mad), rtol=1e-6
    )
    assert all(np.isnan(v[5]) for k, v in stats.items() if k != "nan_fraction")


@pytest.mark.parametrize("n_pixels", [(4, 4), (3, 5)], ids=["even-count", "odd-count"])
def test_median_without_nan_uses_both_middle_values(n_pixels):
    stack = RNG.permutation(np.arange(np.prod(n_pixels), dtype=np.float32)).reshape(1, *n_pixels)
    assert cutout_statistics(stack)["median"][0] == np.median(stack)


def test_statistics_of_an_empty_stack():
    stats = cutout_statistics(np.zeros((0, 4, 4), np.float32))
    assert all(v.shape == (0,) for v in stats.values())


def test_statistics_reject_a_2d_array():
    with pytest.raises(ValueError, match="stack"):
        cutout_statistics(np.zeros((4, 4), np.float32))


def test_statistics_accumulate_in_float64():
    stack = np.full((1, 64, 64), 1e4, np.float32) + np.float32(0.1)
    assert cutout_statistics(stack)["std"][0] == 0.0


# -- robust grid --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "k"), [(1, 1), (8, 1), (63, 1), (64, 2), (100, 3), (128, 4), (256, 8)]
)
def test_robust_step_by_hand(w, k):
    assert robust_step(w) == k


def _reference(window: np.ndarray) -> dict[str, float]:
    """Straightforward statistics of one window, in float64, robust ones on the grid."""
    v = window.astype(np.float64)
    valid = v[~np.isnan(v)]
    k = max(1, min(v.shape) // 32)
    grid = v[::k, ::k]
    grid = grid[~np.isnan(grid)]
    if grid.size == 0:  # the grid is blank but the window is not
        grid = valid
    median = np.median(grid)
    noise = 1.4826 * np.median(np.abs(grid - median))
    return {
        "mean": valid.mean(),
        "std": valid.std(),
        "max": valid.max(),
        "median": median,
        "noise_mad": noise,
        "peak_snr": (valid.max() - median) / noise,
    }


def _assert_reference(stats: dict[str, np.ndarray], stack: np.ndarray) -> None:
    for i, window in enumerate(stack):
        expected = _reference(window)
        for key, value in expected.items():
            # |v - median| is formed in float32: ~1e-7 relative error in the noise
            rtol = 1e-6 if key in ("noise_mad", "peak_snr") else 1e-12
            assert stats[key][i] == pytest.approx(value, rel=rtol, abs=0), (i, key)


@pytest.mark.parametrize("w", [64, 96, 128, 200])
def test_medians_from_the_grid_rows_alone_are_the_same(w):
    """A smooth map read one row in k (its robust-grid rows) gives the same medians."""
    k = windows.robust_step(w)
    image = RNG.normal(1.0, 0.1, size=(3 * w + 5, 2 * w + 3)).astype(np.float32)
    image[w : w + 9, 5:40] = np.nan
    rows = np.arange(0, image.shape[0] - w + 1, k)
    y0, x0 = np.repeat(rows, 3), np.tile([0, 7, w + 3], len(rows))
    expected = windows.window_medians(image, x0, y0, w)
    got = windows.window_medians(image[::k], x0, y0, w, row_step=k)
    assert got.tobytes() == expected.tobytes()
    with pytest.raises(ValueError, match="row_step"):
        windows.window_medians(image[::k], x0, y0 + 1, w, row_step=k)  # off the grid rows
    with pytest.raises(ValueError, match="row_step"):
        windows.window_medians(image[:: k + 1], x0, y0, w, row_step=k + 1)
    needed = y0.max() // k + len(range(0, w, k))  # grid rows up to the last window's end
    assert windows.window_medians(image[::k][:needed], x0, y0, w, row_step=k).size == len(x0)
    with pytest.raises(ValueError, match="outside"):
        windows.window_medians(image[::k][: needed - 1], x0, y0, w, row_step=k)


def test_large_cutouts_take_median_and_noise_on_the_grid():
    stack = RNG.normal(0.0, 1e-4, size=(6, 128, 100)).astype(np.float32)
    stack[1, :40, :] = np.nan
    stack[2, 5, 7] = np.float32(1.0)  # a bright pixel: in max and mean, not on the grid
    stats = cutout_statistics(stack)
    _assert_reference(stats, stack)
    assert stats["max"][2] == 1.0
    full = stack[0].astype(np.float64)
    assert stats["median"][0] != np.median(full)  # not every pixel: the 34x34 grid (k=3)


def test_blank_grid_falls_back_to_every_pixel():
    stack = RNG.normal(size=(2, 64, 64)).astype(np.float32)
    stack[0, ::2, ::2] = np.nan  # the k=2 grid is blank, 3/4 of the pixels are not
    stats = cutout_statistics(stack)
    _assert_reference(stats, stack)
    assert np.isfinite(stats["noise_mad"]).all()


def test_grid_noise_is_close_to_the_full_window_noise():
    """1024 grid pixels of independent Gaussian noise: ~3.5 % scatter, no bias."""
    stack = RNG.normal(5.0, 2.0, size=(100, 128, 128)).astype(np.float32)
    flat = stack.reshape(100, -1).astype(np.float64)
    median = np.median(flat, axis=1)
    full = 1.4826 * np.median(np.abs(flat - median[:, None]), axis=1)
    ratio = cutout_statistics(stack)["noise_mad"] / full
    assert np.all(np.abs(ratio - 1) < 0.15)
    assert abs(ratio.mean() - 1) < 0.02


# -- statistics straight from an image ----------------------------------------------------


def _image(shape, level=100.0, noise=2.0, nan_probability=0.0, dtype=np.float32):
    image = RNG.normal(level, noise, size=shape).astype(dtype)
    image[RNG.random(shape) < nan_probability] = np.nan
    image[: shape[0] // 2, : shape[1] // 2] = np.nan  # a blank corner
    image[shape[0] // 2 :, shape[1] // 2 :][:20, :20] = level  # a flat patch
    return image


def _assert_same_statistics(image, x0, y0, w):
    """window_statistics == cutout_statistics(extract_windows(...)) within stated rounding."""
    fast = window_statistics(image, x0, y0, w)
    slow = cutout_statistics(extract_windows(image, x0, y0, w))
    assert fast.keys() == slow.keys()
    for key in ("nan_fraction", "max", "median", "noise_mad", "peak_snr"):
        np.testing.assert_array_equal(fast[key], slow[key], err_msg=key)
    np.testing.assert_allclose(fast["mean"], slow["mean"], rtol=1e-13, atol=0)
    np.testing.assert_allclose(fast["std"], slow["std"], rtol=1e-9, atol=0)
    return fast


@pytest.mark.parametrize(
    ("shape", "w", "overlap", "nan_probability"),
    [
        ((90, 120), 8, 0.5, 0.0),
        ((90, 121), 9, 0.3, 0.05),
        ((200, 260), 64, 0.5, 0.01),
        ((150, 300), 70, 0.9, 0.0),
        ((40, 40), 10, 0.0, 0.1),
    ],
    ids=["w8", "w9-odd-overlap", "w64-grid", "w70-dense", "no-overlap"],
)
def test_window_statistics_equal_the_reference(shape, w, overlap, nan_probability):
    image = _image(shape, nan_probability=nan_probability)
    x0, y0 = window_origins(shape, w, overlap)
    stats = _assert_same_statistics(image, x0, y0, w)
    assert (stats["nan_fraction"] == 1).any()
    if w <= 10:  # windows inside the flat patch
        assert (stats["std"] == 0).any()


def test_window_statistics_at_any_origins():
    image = _image((120, 150), nan_probability=0.05)
    x0 = RNG.integers(0, 150 - 16 + 1, 300)
    y0 = RNG.integers(0, 120 - 16 + 1, 300)
    x0[:3], y0[:3] = 0, 0  # repeated windows
    _assert_same_statistics(image, x0, y0, 16)


def test_window_statistics_far_from_the_reference_level(monkeypatch):
    """Windows 5000 sigma above the image's level are redone with two passes."""
    image = _image((100, 100), level=1e6, noise=1.0)
    image[60:, 60:] += np.float32(5e3)
    x0, y0 = window_origins(image.shape, 20, 0.5)
    redone = []
    two_pass = windows._moments_two_pass
    monkeypatch.setattr(
        windows, "_moments_two_pass", lambda x: redone.append(len(x)) or two_pass(x)
    )
    window_statistics(image, x0, y0, 20)
    assert redone and redone[0] >= 4  # at least the 2x2 windows inside the bright corner
    monkeypatch.undo()
    stats = _assert_same_statistics(image, x0, y0, 20)
    bright = (x0 >= 60) & (y0 >= 60)
    np.testing.assert_allclose(stats["std"][bright], 1.0, rtol=0.2)


@pytest.mark.parametrize("pad", [0.0, 37.25], ids=["zeros", "constant"])
def test_constant_windows_are_exact_without_a_second_pass(monkeypatch, pad):
    """Zero-padded borders: mean and std as the two passes give them, without the passes."""
    image = _image((96, 128), level=500.0, noise=3.0)
    image[:, :48] = pad  # every window left of column 48 is constant
    image[70:, 100:] = np.nan
    x0, y0 = window_origins(image.shape, 16, 0.5)
    redone = []
    two_pass = windows._moments_two_pass
    monkeypatch.setattr(
        windows, "_moments_two_pass", lambda x: redone.append(len(x)) or two_pass(x)
    )
    stats = window_statistics(image, x0, y0, 16)
    constant = x0 + 16 <= 48
    assert not redone
    monkeypatch.undo()
    reference = cutout_statistics(extract_windows(image, x0, y0, 16))
    for key in ("mean", "std"):
        np.testing.assert_array_equal(stats[key][constant], reference[key][constant])
    assert (stats["mean"][constant] == pad).all() and (stats["std"][constant] == 0).all()
    _assert_same_statistics(image, x0, y0, 16)


def test_window_statistics_of_integers_and_float64():
    x0, y0 = window_origins((30, 30), 6, 0.5)
    ints = RNG.integers(-50, 50, size=(30, 30))
    _assert_same_statistics(ints, x0, y0, 6)
    _assert_same_statistics(_image((30, 30), dtype=np.float64), x0, y0, 6)


def test_flat_windows_have_zero_std():
    image = np.full((64, 64), 1e4, np.float32) + np.float32(0.1)
    x0, y0 = window_origins(image.shape, 16, 0.5)
    assert (window_statistics(image, x0, y0, 16)["std"] == 0.0).all()


def test_window_statistics_without_windows():
    stats = window_statistics(np.zeros((4, 4), np.float32), [], [], 3)
    assert all(v.shape == (0,) for v in stats.values())


def test_window_statistics_reject_windows_outside():
    with pytest.raises(ValueError, match="outside"):
        window_statistics(np.zeros((4, 4), np.float32), [1], [0], 4)
    with pytest.raises(ValueError, match="2-D"):
        window_statistics(np.zeros((4, 4, 1), np.float32), [0], [0], 1)


def test_moments_then_robust_statistics_of_some_windows():
    """The two halves, the second for some windows only, give window_statistics's values."""
    image = _image((130, 170), nan_probability=0.02)
    x0, y0 = window_origins(image.shape, 20, 0.5)
    whole = window_statistics(image, x0, y0, 20)
    moments = window_moments(image, x0, y0, 20)
    assert list(moments) == ["nan_fraction", "mean", "std", "max"]
    some = (moments["nan_fraction"] < 0.5) & (RNG.random(len(x0)) < 0.7)
    part = add_robust_statistics(
        image, x0[some], y0[some], 20, {k: v[some] for k, v in moments.items()}
    )
    assert list(part) == list(whole)
    for key, values in whole.items():
        np.testing.assert_array_equal(part[key], values[some], err_msg=key)


def _sums_blanks_zeroed(image, breaks, level):
    """Per-block column sums of v - level with every blank set to zero first (numpy's order)."""
    n, nx = len(breaks) - 1, image.shape[1]
    count, s1, s2 = np.zeros((n, nx)), np.zeros((n, nx)), np.zeros((n, nx))
    for i in range(n):
        d = image[breaks[i] : breaks[i + 1]].astype(np.float64) - level
        blank = np.isnan(d)
        d[blank] = 0.0
        count[i] = (~blank).sum(axis=0)
        s1[i] = d.sum(axis=0)
        s2[i] = (d * d).sum(axis=0)
    return count, s1, s2


@pytest.mark.parametrize("nx", [1, 2, 37, 300], ids=["1-column", "2-columns", "37", "300"])
def test_block_sums_are_those_with_blanks_zeroed_first(nx):
    """Bit for bit, though only the blocks with a blank are summed again without them."""
    image = (RNG.normal(0, 1, (90, nx)) * np.exp(RNG.normal(0, 6, (90, nx)))).astype(np.float32)
    image[RNG.random(image.shape) < 0.03] = np.nan
    image[:, nx // 2 :][40:50] = np.nan  # blank rows in some columns
    breaks = np.array([0, 7, 40, 45, 90])
    count, s1, s2, vmax, _ = windows._block_columns(image, breaks, 0.25)
    expected = _sums_blanks_zeroed(image, breaks, 0.25)
    for got, want in zip((count, s1, s2), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(vmax[1], np.nanmax(image[7:40], axis=0))
    if nx > 1:  # numpy adds the rows of a wide array in order (the sum of a column may not)
        d = image[7:40, 0].astype(np.float64) - 0.25
        assert s1[1, 0] == _added_in_order(d)


@pytest.mark.parametrize("elements", [1, 37, 300, 1 << 20], ids=["row", "part-row", "rows", "all"])
def test_block_sums_do_not_depend_on_the_chunks_a_block_is_cut_into(monkeypatch, elements):
    """Running sums continue down each column in row order, whatever the chunk size."""
    image = (RNG.normal(0, 1, (90, 37)) * np.exp(RNG.normal(0, 6, (90, 37)))).astype(np.float32)
    image[RNG.random(image.shape) < 0.03] = np.nan
    breaks = np.array([0, 7, 40, 45, 90])
    monkeypatch.setattr(windows, "_BLOCK_ELEMENTS", elements)
    count, s1, s2, vmax, _ = windows._block_columns(image, breaks, 0.25)
    expected = _sums_blanks_zeroed(image, breaks, 0.25)
    for got, want in zip((count, s1, s2), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(vmax[3], np.nanmax(image[45:90], axis=0))
    d = image[45:90, 5].astype(np.float64) - 0.25
    assert s1[3, 5] == _added_in_order(d)
    assert s2[3, 5] == _added_in_order(d * d)


@pytest.mark.parametrize("nx", [1, 3], ids=["1-column", "3-columns"])
def test_block_counts_of_tall_narrow_blocks_with_more_than_255_blanks(nx):
    """Chunks hold at most 255 rows, so a column's blanks in one chunk fit in a byte."""
    image = RNG.normal(0, 1, (700, nx)).astype(np.float32)
    image[:600:2] = np.nan  # 300 blanks in each column of the first block
    breaks = np.array([0, 640, 700])
    count, s1, s2, _, _ = windows._block_columns(image, breaks, 0.0)
    expected = _sums_blanks_zeroed(image, breaks, 0.0)
    np.testing.assert_array_equal(count[0], np.full(nx, 640 - 300))
    np.testing.assert_array_equal(count, expected[0])
    for got, want in zip((s1, s2), expected[1:], strict=True):  # a column's own order
        np.testing.assert_allclose(got, want, rtol=1e-13)


def _added_in_order(values):
    total = 0.0
    for v in values[~np.isnan(values)]:
        total += v
    return total


# -- filling ------------------------------------------------------------------------------


def test_fill_nan_copies_by_default():
    stack = np.array([[[NAN, 1.0], [np.inf, NAN]]], np.float32)
    out = fill_nan(stack)
    assert DEFAULT_FILL_VALUE == 0.0
    np.testing.assert_array_equal(out, [[[0.0, 1.0], [np.inf, 0.0]]])
    assert np.isnan(stack).sum() == 2 and out.dtype == np.float32


def test_fill_nan_in_place_with_value():
    stack = np.array([[[NAN, 1.0]]], np.float32)
    out = fill_nan(stack, -2.5, copy=False)
    assert out is stack
    np.testing.assert_array_equal(stack, [[[-2.5, 1.0]]])


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, "0", None], ids=["nan", "inf", "str", "none"]
)
def test_fill_nan_rejects_bad_values(value):
    with pytest.raises(ValueError, match="value"):
        fill_nan(np.zeros((1, 2, 2), np.float32), value)
