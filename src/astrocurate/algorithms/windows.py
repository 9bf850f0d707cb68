"""Sliding windows over 2-D images and per-cutout statistics (pure array functions).

Conventions: an image is ``data[y, x]`` (numpy order). A window of size ``w`` with origin
``(x0, y0)`` is ``data[y0:y0 + w, x0:x0 + w]``: ``x0`` is the 0-based column and ``y0``
the 0-based row of its first pixel, which is the lower-left corner when the image is
displayed FITS-style (origin lower). Its centre, in the same 0-based pixel coordinates,
is ``(x0 + (w - 1) / 2, y0 + (w - 1) / 2)``; ``astropy.nddata.Cutout2D`` at that position
with size ``w`` selects the same pixels.

Statistics (:func:`cutout_statistics`, and :func:`window_statistics` which computes
the same ones straight from an image): ``mean``, ``std``, ``max`` and ``nan_fraction``
use every pixel; the robust ``median`` and ``noise_mad`` (and so ``peak_snr``) use the
pixels on a fixed grid of every ``k``-th row and column of the window
(:func:`robust_step`: ``k = max(1, w // 32)``, so 32x32 to 63x63 pixels; every pixel
below 64 px). Neighbouring pixels of a radio image are correlated over the beam (a few
pixels), so the grid keeps most of the independent samples: on the synthetic survey
(beam-correlated noise) the grid noise of 128-px windows is within 4.4 % of the
all-pixel value for 90 % of the windows, without bias (median difference 0.05 %); ``k``
halved would give 1.3 % but makes the statistics about 2.8 times slower.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

from astrocurate.algorithms.medians import MAD_TO_SIGMA, median_and_mad, median_rows
from astrocurate.validation import check_int, check_real

__all__ = [
    "DEFAULT_FILL_VALUE",
    "MAD_TO_SIGMA",
    "ROBUST_GRID",
    "add_robust_statistics",
    "cutout_statistics",
    "extract_windows",
    "fill_nan",
    "robust_step",
    "row_bands",
    "window_centres",
    "window_medians",
    "window_moments",
    "window_origins",
    "window_statistics",
    "window_stride",
]

#: Value that replaces NaN in kept cutouts: the background level of a radio image in
#: Jy/beam (zero-mean noise). Pass another value (e.g. the median) for images with a sky
#: pedestal.
DEFAULT_FILL_VALUE = 0.0
#: Elements processed at once by the statistics (16 MiB per float64 temporary).
_CHUNK_ELEMENTS = 1 << 21
#: The median and MAD of a window of side ``w`` use a grid of about ROBUST_GRID pixels
#: a side (see :func:`robust_step`).
ROBUST_GRID = 32


def _check_window_size(window_size: Any) -> int:
    return check_int("window_size", window_size, minimum=1)


def _check_overlap(overlap: Any) -> float:
    return check_real("overlap", overlap, 0.0, 1.0, low_open=False)


def window_stride(window_size: int, overlap: float) -> int:
    """Step between neighbouring windows: ``max(1, round(w * (1 - overlap)))``.

    Rounding is half up (``w=5, overlap=0.5`` gives 3), not Python's half-to-even.

    Parameters
    ----------
    window_size : int
        Window side ``w`` in pixels, > 0.
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).

    Returns
    -------
    int
        The stride in pixels, >= 1.

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """
    w = _check_window_size(window_size)
    ov = _check_overlap(overlap)
    return max(1, math.floor(w * (1.0 - ov) + 0.5))


def window_origins(
    shape: tuple[int, int], window_size: int, overlap: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Origins of the sliding windows that lie fully inside an image.

    Windows start at row and column 0 and step by :func:`window_stride`; a margin
    narrower than the stride at the right/top edge is not covered.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(ny, nx)``.
    window_size : int
        Window side ``w`` in pixels, > 0.
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).

    Returns
    -------
    x0, y0 : numpy.ndarray
        int64, shape ``(n,)``: column and row of each window's first pixel, in row-major
        order (by ``y0``, then ``x0``). Empty when the image is smaller than the window.

    Raises
    ------
    ValueError
        If an argument is invalid; the message names it.
    """
    stride = window_stride(window_size, overlap)
    ny, nx = _check_shape(shape)
    ys = np.arange(0, ny - window_size + 1, stride, dtype=np.int64)
    xs = np.arange(0, nx - window_size + 1, stride, dtype=np.int64)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    return x0.ravel(), y0.ravel()


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        ny, nx = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape={shape!r} must be two integers (ny, nx)") from None
    if ny < 0 or nx < 0:
        raise ValueError(f"shape={shape!r} must not be negative")
    return ny, nx


def window_centres(
    x0: np.ndarray, y0: np.ndarray, window_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of windows, for sky positions and ``Cutout2D``.

    Parameters
    ----------
    x0, y0 : array_like
        Window origins, shape ``(n,)``.
    window_size : int
        Window side ``w``.

    Returns
    -------
    xc, yc : numpy.ndarray
        float64, shape ``(n,)``: ``x0 + (w - 1) / 2`` and ``y0 + (w - 1) / 2`` (0-based).
    """
    half = (_check_window_size(window_size) - 1) / 2.0
    return np.asarray(x0, dtype=np.float64) + half, np.asarray(y0, dtype=np.float64) + half


def row_bands(row_starts: Any, window_size: int, max_rows: int) -> list[tuple[int, int]]:
    """Group window rows into bands of image rows to read at once.

    Consecutive distinct row starts are grouped while the band they need stays within
    ``max_rows`` rows (a band always holds at least one window row, so it is at least
    ``window_size`` rows). A window with origin row ``y0`` belongs to exactly one band:
    the one with ``band_y0 <= y0`` and ``y0 + window_size <= band_y1``.

    Parameters
    ----------
    row_starts : array_like of int
        Window origin rows (e.g. ``y0`` from :func:`window_origins`; repeats allowed).
    window_size : int
        Window side ``w``.
    max_rows : int
        Preferred largest band height in rows (bounds memory: ``max_rows * nx`` pixels).

    Returns
    -------
    list of (int, int)
        ``(band_y0, band_y1)`` per band, in increasing order.
    """
    w = _check_window_size(window_size)
    check_int("max_rows", max_rows, minimum=1)
    starts = np.unique(np.asarray(row_starts, dtype=np.int64))
    bands: list[tuple[int, int]] = []
    first = last = None
    for y in starts.tolist():
        if first is not None and y + w - first > max_rows:
            bands.append((first, last + w))
            first = None
        if first is None:
            first = y
        last = y
    if first is not None:
        bands.append((first, last + w))
    return bands


def extract_windows(
    image: np.ndarray, x0: np.ndarray, y0: np.ndarray, window_size: int
) -> np.ndarray:
    """Copy square windows out of an image.

    Parameters
    ----------
    image : numpy.ndarray
        Shape ``(ny, nx)`` (e.g. a band of rows; origins are relative to it).
    x0, y0 : array_like of int
        Window origins, shape ``(n,)``; each window must lie inside ``image``.
    window_size : int
        Window side ``w``.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, w, w)``, same dtype as ``image``, C-contiguous:
        ``out[i] == image[y0[i]:y0[i] + w, x0[i]:x0[i] + w]``.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or a window falls outside it.
    """
    w = _check_window_size(window_size)
    image = np.asarray(image)
    x0, y0 = _check_origins(image, x0, y0, w)
    if x0.size == 0:
        return np.empty((0, w, w), dtype=image.dtype)
    views = np.lib.stride_tricks.sliding_window_view(image, (w, w))
    return np.ascontiguousarray(views[y0, x0])


def robust_step(window_size: int) -> int:
    """Grid step of the pixels that the median and MAD of a window are taken from.

    ``max(1, w // ROBUST_GRID)``: every pixel for windows narrower than
    ``2 * ROBUST_GRID`` (64 px), otherwise every ``k``-th pixel of every ``k``-th row,
    i.e. a grid of 32x32 to 63x63 pixels (e.g. ``w=128``: ``k=4``, 32x32 pixels).

    Parameters
    ----------
    window_size : int
        Window side ``w`` (the shorter side for a rectangular cutout), > 0.

    Returns
    -------
    int
        The step ``k`` >= 1.
    """
    return max(1, _check_window_size(window_size) // ROBUST_GRID)


def _robust_of_stack(stack: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD noise of each cutout of ``stack`` (n, h, w) on the robust grid.

    Cutouts whose grid pixels are all blank while other pixels are not use all their
    pixels instead (only possible with a grid step > 1).
    """
    n, h, w = stack.shape
    k = robust_step(min(h, w)) if h and w else 1
    grid = stack[:, ::k, ::k]
    grid = grid.reshape(n, grid.shape[1] * grid.shape[2])
    median, noise = median_and_mad(grid, count == h * w)
    empty = np.isnan(median) & (count > 0)
    if k > 1 and empty.any():
        median[empty], noise[empty] = median_and_mad(stack[empty].reshape(-1, h * w))
    return median, noise


def _finish(
    p: int, count: np.ndarray, mean: np.ndarray, std: np.ndarray, vmax: np.ndarray, robust: tuple
) -> dict[str, np.ndarray]:
    """Assemble the statistics dictionary (peak S/N, blank fraction)."""
    median, noise = robust
    nan_fraction = (p - count) / p if p else np.full(len(count), np.nan)
    return {
        "nan_fraction": np.asarray(nan_fraction, dtype=np.float64),
        "mean": mean,
        "std": std,
        "max": vmax,
        "median": median,
        "noise_mad": noise,
        "peak_snr": _peak_snr(vmax, median, noise),
    }


def _peak_snr(vmax: np.ndarray, median: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``(max - median) / noise``; NaN where the noise is not positive."""
    peak_snr = np.full(len(noise), np.nan)
    ok = noise > 0
    peak_snr[ok] = (vmax[ok] - median[ok]) / noise[ok]
    return peak_snr


def _moments_two_pass(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the valid count, mean and population std of the rows of ``x`` (m, p).

    NaN are ignored. Two passes in float64: the reference definition.
    """
    x = x.astype(np.float64)
    valid = ~np.isnan(x)
    count = valid.sum(axis=1)
    zeroed = np.where(valid, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = zeroed.sum(axis=1) / count
        dev = np.where(valid, x - mean[:, None], 0.0)
        std = np.sqrt(np.square(dev).sum(axis=1) / count)
    return count, mean, std


def _statistics_chunk(x: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of the cutouts of ``x`` (shape ``(m, h, w)``, float, NaN = blank)."""
    m, h, w = x.shape
    flat = x.reshape(m, h * w)
    count, mean, std = _moments_two_pass(flat)
    vmax = np.fmax.reduce(flat, axis=1).astype(np.float64) if h * w else np.full(m, np.nan)
    return _finish(h * w, count, mean, std, vmax, _robust_of_stack(x, count))


def cutout_statistics(stack: np.ndarray) -> dict[str, np.ndarray]:
    """Per-cutout statistics for quality filtering, NaN pixels ignored.

    The reference implementation, vectorised over the stack (processed in chunks of
    about 2M pixels). :func:`window_statistics` computes the same statistics straight
    from an image, much faster. Cutouts without any valid pixel get NaN statistics
    (``nan_fraction`` 1.0) and no warnings.

    Parameters
    ----------
    stack : numpy.ndarray
        Shape ``(n, h, w)``, float (NaN = blank).

    Returns
    -------
    dict of str to numpy.ndarray
        float64 arrays of shape ``(n,)``:

        * ``nan_fraction``: fraction of NaN pixels;
        * ``mean``, ``std`` (population, ddof=0), ``max`` of all valid pixels (mean and
          std in float64, two passes);
        * ``median``, ``noise_mad``: median ``m`` and robust noise
          ``1.4826 * median(|v - m|)`` of the valid pixels ``v`` on the grid
          ``v[::k, ::k]`` from the cutout's first pixel, ``k =``
          :func:`robust_step` ``(min(h, w))``: all pixels below 64 px, a 32x32 to
          63x63 grid above (where a grid holds no valid pixel but the cutout does, all
          pixels). Medians of an even count are the mean of the two middle values;
          ``|v - m|`` is formed in the input precision;
        * ``peak_snr``: ``(max - median) / noise_mad``; NaN when ``noise_mad`` is 0 (more
          than half the grid pixels share one value, e.g. a flat or zero-filled cutout)
          or NaN.

    Raises
    ------
    ValueError
        If ``stack`` is not 3-D.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"stack must have shape (n, h, w), got {stack.shape}")
    if stack.dtype.kind != "f":
        stack = stack.astype(np.float64)
    n, h, w = stack.shape
    chunk = max(1, _CHUNK_ELEMENTS // max(h * w, 1))
    parts = [_statistics_chunk(stack[i : i + chunk]) for i in range(0, n, chunk)]
    if not parts:
        parts = [_statistics_chunk(stack)]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


# --------------------------------------------------------------------------- fast path


def window_statistics(
    image: np.ndarray, x0: np.ndarray, y0: np.ndarray, window_size: int
) -> dict[str, np.ndarray]:
    """Statistics of square windows of an image, without copying the windows.

    Gives :func:`cutout_statistics` of :func:`extract_windows` ``(image, x0, y0, w)``
    (same keys and definitions) at a fraction of the cost:

    * ``nan_fraction``, ``max``, ``mean`` and ``std`` come from float64 sums of
      ``v - c``, ``(v - c)**2`` and the valid count over blocks of rows and columns cut
      at every window edge, so each pixel is read once whatever the overlap (``c`` is a
      reference level of the image: the median of a coarse grid of its pixels). The
      variance is ``E[(v - c)**2] - E[v - c]**2``; where that loses more than six of
      float64's sixteen digits (``|mean - c| > 1000 * std``, a flat window included)
      the window is redone with two passes. Relative differences from the reference:
      about 1e-15 for ``mean``, below 1e-9 for ``std``; ``max`` and ``nan_fraction``
      are exact.
    * ``median``, ``noise_mad`` and ``peak_snr`` are computed exactly as the reference
      does, from the same grid pixels (:func:`robust_step`), gathered straight from the
      image: identical values.

    It is :func:`window_moments` followed by :func:`add_robust_statistics`, which can be
    called apart to take the robust statistics of some windows only.

    Parameters
    ----------
    image : numpy.ndarray
        Shape ``(ny, nx)``, float (NaN = blank); e.g. a band of rows, origins relative
        to it.
    x0, y0 : array_like of int
        Window origins, shape ``(n,)``; each window must lie inside ``image``.
    window_size : int
        Window side ``w``.

    Returns
    -------
    dict of str to numpy.ndarray
        As :func:`cutout_statistics`, one value per window, in the order of ``x0``.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or a window falls outside it.
    """
    image, x0, y0, w = _float_image_and_windows(image, x0, y0, window_size)
    return add_robust_statistics(image, x0, y0, w, window_moments(image, x0, y0, w))


def window_moments(
    image: np.ndarray, x0: np.ndarray, y0: np.ndarray, window_size: int
) -> dict[str, np.ndarray]:
    """Compute the first half of :func:`window_statistics`: blanks, mean, std and max.

    With :func:`add_robust_statistics` for only some of the windows (e.g. those not too
    blank), the rest of :func:`window_statistics` costs only what those windows need.

    Parameters
    ----------
    image : numpy.ndarray
        Shape ``(ny, nx)``, float (NaN = blank).
    x0, y0 : array_like of int
        Window origins, shape ``(n,)``; each window must lie inside ``image``.
    window_size : int
        Window side ``w``.

    Returns
    -------
    dict of str to numpy.ndarray
        float64 arrays of shape ``(n,)``: ``nan_fraction``, ``mean``, ``std``, ``max``, as
        :func:`window_statistics` gives them.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or a window falls outside it.
    """
    image, x0, y0, w = _float_image_and_windows(image, x0, y0, window_size)
    if x0.size == 0:
        return {key: np.empty(0) for key in ("nan_fraction", "mean", "std", "max")}
    level = _reference_level(image)
    count, s1, s2, vmax, vmin = _window_sums(image, x0, y0, w, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        m1, m2 = s1 / count, s2 / count
        var = m2 - m1 * m1
        mean = level + m1
        std = np.sqrt(np.maximum(var, 0.0))
        # a constant window (zero-padded borders): exactly what the two passes give
        constant = (vmin == vmax) & np.isfinite(vmax)
        mean[constant], std[constant] = vmax[constant], 0.0
        # the one-pass variance keeps at least 10 digits where var > 1e-6 * E[(v - c)^2]
        redo = (count > 0) & ~(var * _WELL_CONDITIONED > m2) & ~constant
    if redo.any():
        _, mean[redo], std[redo] = _moments_two_pass(
            extract_windows(image, x0[redo], y0[redo], w).reshape(int(redo.sum()), -1)
        )
    nan_fraction = (w * w - count) / (w * w)
    return {"nan_fraction": nan_fraction, "mean": mean, "std": std, "max": vmax}


def add_robust_statistics(
    image: np.ndarray, x0: np.ndarray, y0: np.ndarray, window_size: int, moments: dict
) -> dict[str, np.ndarray]:
    """Add the second half of :func:`window_statistics`: median, MAD noise and peak S/N.

    Parameters
    ----------
    image : numpy.ndarray
        Shape ``(ny, nx)``, float (NaN = blank).
    x0, y0 : array_like of int
        Window origins, shape ``(n,)``; each window must lie inside ``image``.
    window_size : int
        Window side ``w``.
    moments : dict of str to numpy.ndarray
        :func:`window_moments` of these windows (``nan_fraction`` and ``max`` are used).

    Returns
    -------
    dict of str to numpy.ndarray
        A new dictionary: ``moments`` and the three robust statistics, as
        :func:`window_statistics` gives them.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or a window falls outside it.
    """
    image, x0, y0, w = _float_image_and_windows(image, x0, y0, window_size)
    median, noise = _robust_of_windows(image, x0, y0, w, moments["nan_fraction"])
    peak_snr = _peak_snr(moments["max"], median, noise)
    return {**moments, "median": median, "noise_mad": noise, "peak_snr": peak_snr}


#: ``var * _WELL_CONDITIONED > E[(v - c)^2]``: the one-pass variance is accurate.
_WELL_CONDITIONED = 1e6
#: Pixels reduced at once by :func:`_block_columns` (512 KiB of float64: they stay in cache).
_BLOCK_ELEMENTS = 1 << 16
#: Rows reduced at once at most: a column's count of blanks in a chunk fits in a byte.
_MAX_CHUNK_ROWS = 255


def _float_image_and_windows(
    image: Any, x0: Any, y0: Any, window_size: Any, height: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Validate an image and its windows; return a float image, int64 origins and ``w``.

    Windows are ``w`` wide and ``height`` rows of the image tall (default ``w``).
    """
    w = _check_window_size(window_size)
    image = np.asarray(image)
    if image.dtype.kind != "f":
        image = image.astype(np.float64)
    x0, y0 = _check_origins(image, x0, y0, w, height)
    return image, x0, y0, w


def _check_origins(
    image: np.ndarray, x0: Any, y0: Any, w: int, height: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate origins of windows ``w`` wide, ``height`` (default ``w``) tall; as int64."""
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    x0 = np.asarray(x0, dtype=np.int64)
    y0 = np.asarray(y0, dtype=np.int64)
    if x0.shape != y0.shape or x0.ndim != 1:
        raise ValueError(f"x0 and y0 must be 1-D of equal length, got {x0.shape}, {y0.shape}")
    ny, nx = image.shape
    h = w if height is None else height
    if x0.size and (x0.min() < 0 or y0.min() < 0 or x0.max() + w > nx or y0.max() + h > ny):
        raise ValueError(f"windows of size {w} fall outside the image of shape {image.shape}")
    return x0, y0


def _reference_level(image: np.ndarray) -> float:
    """Return a typical pixel value (median of a coarse grid), exact in float32."""
    step = max(1, int(math.sqrt(image.size / 4096)))
    sample = image[::step, ::step]
    sample = sample[~np.isnan(sample)]
    level = float(np.median(sample)) if sample.size else 0.0
    return float(np.float32(level)) if math.isfinite(level) else 0.0


def _window_sums(
    image: np.ndarray, x0: np.ndarray, y0: np.ndarray, w: int, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return each window's valid count, sums of ``v - level`` and its square, max and min.

    Rows are cut into blocks at every window's top and bottom edge; each block is
    reduced to per-column values once; a window row's columns sum its blocks. Columns
    are then cut the same way at every left and right edge.
    """
    rows, row_of = np.unique(y0, return_inverse=True)
    ybreaks = np.unique(np.concatenate([rows, rows + w]))
    blocks = _block_columns(image, ybreaks, level)  # 5 arrays of (n_blocks, nx)
    first = np.searchsorted(ybreaks, rows)
    stop = np.searchsorted(ybreaks, rows + w)
    bands = [_range_reduce(b, first, stop, op) for b, op in zip(blocks, _OPS, strict=True)]
    xbreaks = np.unique(np.concatenate([x0, x0 + w]))
    n_seg = len(xbreaks) - 1
    starts = xbreaks[:-1]
    segs = [
        op.reduceat(band[:, : xbreaks[-1]], starts, axis=1).ravel()
        for band, op in zip(bands, _OPS, strict=True)
    ]
    first = row_of * n_seg + np.searchsorted(xbreaks, x0)
    stop = row_of * n_seg + np.searchsorted(xbreaks, x0 + w)
    count, s1, s2, vmax, vmin = (
        _range_reduce(s, first, stop, op) for s, op in zip(segs, _OPS, strict=True)
    )
    return count, s1, s2, vmax.astype(np.float64), vmin.astype(np.float64)


_OPS = (np.add, np.add, np.add, np.fmax, np.fmin)


def _block_columns(image: np.ndarray, breaks: np.ndarray, level: float) -> list[np.ndarray]:
    """Per-column count, sum, sum of squares (of ``v - level``), max and min of row blocks.

    Block ``i`` is rows ``breaks[i]:breaks[i + 1]``, reduced :data:`_BLOCK_ELEMENTS` pixels
    at a time. Returns five arrays of shape ``(len(breaks) - 1, nx)``: float64 for the first
    three, the image dtype for max and min.
    """
    nx = image.shape[1]
    n_blocks = len(breaks) - 1
    count = np.zeros((n_blocks, nx))
    s1 = np.zeros((n_blocks, nx))
    s2 = np.zeros((n_blocks, nx))
    vmax = np.full((n_blocks, nx), np.nan, dtype=image.dtype)
    vmin = np.full((n_blocks, nx), np.nan, dtype=image.dtype)
    step = min(_MAX_CHUNK_ROWS, max(1, _BLOCK_ELEMENTS // max(nx, 1)))
    scratch = np.empty((min(step, image.shape[0]), nx))
    for i in range(n_blocks):
        b0, b1 = int(breaks[i]), int(breaks[i + 1])
        for a in range(b0, b1, step):
            rows = image[a : min(a + step, b1)]
            columns = (count[i], s1[i], s2[i], vmax[i], vmin[i])
            _add_columns(rows, level, scratch[: len(rows)], columns)
    return [count, s1, s2, vmax, vmin]


def _add_columns(
    rows: np.ndarray,
    level: float,
    scratch: np.ndarray,
    columns: tuple[np.ndarray, ...],
) -> None:
    """Add the valid count, sum and sum of squares of ``rows - level``, max and min by column.

    ``columns`` are the running ``(count, s1, s2, vmax, vmin)`` of one block, updated in place;
    ``scratch`` is a float64 array of the shape of ``rows``. Sums run down each column in
    row order in float64 (numpy's order for an array of several columns), blanks (NaN) as
    zeros, continuing from the running values (the running sum is folded into the first
    row), so they do not depend on how a block is cut into chunks. Blanks are looked for
    only where the column maximum says there are some.
    """
    count, s1, s2, vmax, vmin = columns
    top = np.maximum.reduce(rows, axis=0)  # NaN in the columns that hold a blank
    d = np.subtract(rows, level, out=scratch, dtype=np.float64)
    if np.isnan(top).any():
        blank = np.isnan(rows)
        np.copyto(d, 0.0, where=blank)
        count -= np.add.reduce(blank.view(np.uint8), axis=0, dtype=np.uint8)  # < 256 rows
        top, bottom = np.fmax.reduce(rows, axis=0), np.fmin.reduce(rows, axis=0)
    else:
        bottom = np.minimum.reduce(rows, axis=0)
    np.fmax(vmax, top, out=vmax)
    np.fmin(vmin, bottom, out=vmin)
    count += len(rows)
    first_squared = np.square(d[0])
    d[0] += s1
    np.add.reduce(d, axis=0, out=s1)
    np.square(d, out=d)
    np.add(s2, first_squared, out=d[0])
    np.add.reduce(d, axis=0, out=s2)


def _range_reduce(
    values: np.ndarray, first: np.ndarray, stop: np.ndarray, op: np.ufunc
) -> np.ndarray:
    """Reduce ``values[first[i]:stop[i]]`` along axis 0 with ``op`` (add or fmax).

    Ranges are short (a window spans about ``2 * w / stride`` blocks), so this loops
    over positions within a range, vectorised over ranges.
    """
    out = values[first].copy()
    span = stop - first
    for k in range(1, int(span.max(initial=1))):
        active = k < span
        if op is np.add:
            out[active] += values[first[active] + k]
        else:  # repeating a range's last block is harmless for a maximum
            op(out, values[np.minimum(first + k, stop - 1)], out=out)
    return out


def _robust_of_windows(
    image: np.ndarray, x0: np.ndarray, y0: np.ndarray, w: int, nan_fraction: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD noise of each window on the robust grid, gathered in chunks."""
    k = robust_step(w)
    medians, noises = [np.empty(0)], [np.empty(0)]
    for sl, grid in _grid_chunks(image, x0, y0, w):
        median, noise = median_and_mad(grid, nan_fraction[sl] == 0)
        empty = np.isnan(median) & (nan_fraction[sl] < 1)
        if k > 1 and empty.any():  # grid all blank, window not: use every pixel
            full = extract_windows(image, x0[sl][empty], y0[sl][empty], w)
            median[empty], noise[empty] = median_and_mad(full.reshape(-1, w * w))
        medians.append(median)
        noises.append(noise)
    return np.concatenate(medians), np.concatenate(noises)


def window_medians(
    image: np.ndarray, x0: np.ndarray, y0: np.ndarray, window_size: int, *, row_step: int = 1
) -> np.ndarray:
    """Median of each square window of an image on the robust grid, NaN pixels ignored.

    For smooth maps such as a noise (rms) map: the median of the pixels
    ``image[y0 + i * k, x0 + j * k]`` of each window, ``k =`` :func:`robust_step` ``(w)``
    (every pixel below 64 px), as :func:`window_statistics` takes its ``median``.

    Parameters
    ----------
    image : numpy.ndarray
        Shape ``(ny, nx)``, float (NaN = blank).
    x0, y0 : array_like of int
        Window origins, shape ``(n,)``; each window must lie inside ``image``.
    window_size : int
        Window side ``w``.
    row_step : int
        1, or ``k`` when ``image`` holds only every ``k``-th row of the image (its row
        ``i`` is row ``i * k``), all a window's median needs; ``y0`` are then rows of the
        whole image, multiples of ``k``. The medians are the same.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        NaN for a window whose grid pixels are all blank.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D, a window falls outside it, or ``row_step`` is neither
        1 nor ``k`` or does not divide every ``y0``.
    """
    w = _check_window_size(window_size)
    k, y0 = robust_step(w), np.asarray(y0, dtype=np.int64)
    if row_step not in (1, k) or np.any(y0 % row_step):
        raise ValueError(f"row_step {row_step}: expected 1, or {k} dividing every y0")
    height = w if row_step == 1 else len(range(0, w, k))  # rows of ``image`` a window spans
    image, x0, rows, w = _float_image_and_windows(image, x0, y0 // row_step, w, height)
    medians = [np.empty(0, dtype=np.float64)]
    for _, grid in _grid_chunks(image, x0, rows, w, row_step):
        medians.append(median_rows(grid))
    return np.concatenate(medians).astype(np.float64)


def _grid_chunks(
    image: np.ndarray, x0: np.ndarray, y0: np.ndarray, w: int, row_step: int = 1
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield the robust-grid pixels of the windows, a bounded chunk of windows at a time.

    Each item: the windows' slice of ``x0`` and their grid pixels, ``(chunk, side**2)``.
    With ``row_step`` = ``k``, ``image`` holds the grid rows only and ``y0`` are its rows
    (see :func:`window_medians`).
    """
    k = robust_step(w)
    side = len(range(0, w, k))
    view = np.lib.stride_tricks.sliding_window_view
    if row_step == 1:
        grid_views = view(image, (w, w))[:, :, ::k, ::k]
    else:
        grid_views = view(image, (side, w))[:, :, :, ::k]
    chunk = max(1, _CHUNK_ELEMENTS // (side * side))
    for i in range(0, len(x0), chunk):
        sl = slice(i, i + chunk)
        yield sl, grid_views[y0[sl], x0[sl]].reshape(-1, side * side)


def fill_nan(
    stack: np.ndarray, value: float = DEFAULT_FILL_VALUE, *, copy: bool = True
) -> np.ndarray:
    """Replace NaN pixels (blanks) of kept cutouts with a constant.

    The default, 0.0, is the background level of radio images in Jy/beam, so filled
    pixels look like empty sky without noise. Infinities are left alone.

    Parameters
    ----------
    stack : numpy.ndarray
        Float array of any shape, e.g. ``(n, w, w)``.
    value : float
        Finite fill value.
    copy : bool
        Return a filled copy (default), or fill ``stack`` in place and return it.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype as ``stack``, without NaN.

    Raises
    ------
    ValueError
        If ``value`` is not a finite number or ``stack`` is not a float array.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"value={value!r} must be a finite number")
    out = np.array(stack, copy=True) if copy else stack
    if not isinstance(out, np.ndarray) or out.dtype.kind != "f":
        raise ValueError("stack must be a float numpy array")
    np.copyto(out, value, where=np.isnan(out))
    return out
