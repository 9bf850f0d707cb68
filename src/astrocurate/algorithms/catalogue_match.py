"""Catalogue sources matched to cutout windows, and steering labels from their columns.

:func:`match_sources` counts, for every window of one mosaic, the catalogue sources whose
position falls inside it (:data:`CATALOGUE_COLUMNS`); :func:`steering_labels` bins such a
column (or any other) into categories, and :func:`dominant_s_code` sums up a window's
source codes in one word.

Pixel convention: a window of side ``w`` at origin ``(x0, y0)`` is
``data[y0:y0 + w, x0:x0 + w]``, and pixel centres lie at integer positions, so a source at
0-based pixel position ``(x, y)`` (numpy column, row) is inside when
``x0 - 0.5 <= x < x0 + w - 0.5`` and ``y0 - 0.5 <= y < y0 + w - 0.5``: when the pixel that
holds it, ``(floor(x + 0.5), floor(y + 0.5))``, is one of the window's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from astrocurate.errors import InvalidArgumentError
from astrocurate.validation import check_int, is_int

__all__ = [
    "CATALOGUE_COLUMNS",
    "UNKNOWN",
    "dominant_s_code",
    "match_sources",
    "steering_labels",
]

#: Per-cutout catalogue columns, in order; all float64, so that NaN can mean "no catalogue".
CATALOGUE_COLUMNS: tuple[str, ...] = (
    "n_sources",
    "max_flux_jy",
    "max_size_arcsec",
    "n_single",
    "n_multiple",
    "n_complex",
)
#: Category of missing values in :func:`steering_labels` and :func:`dominant_s_code`.
UNKNOWN = "unknown"
_CODE_COLUMNS = {"S": "n_single", "M": "n_multiple", "C": "n_complex"}
#: (source, window) pairs handled at a time by :func:`match_sources`: bounds its memory
#: to about a hundred MB whatever the numbers of sources and windows.
_MAX_PAIRS = 1 << 20


# --------------------------------------------------------------------------- matching


def match_sources(
    x: Any,
    y: Any,
    total_flux: Any,
    major: Any,
    s_code: Any,
    x0: Any,
    y0: Any,
    window_size: int,
    *,
    max_pairs: int = _MAX_PAIRS,
) -> dict[str, np.ndarray]:
    """Catalogue columns of every window: its sources, their largest flux and size, codes.

    Windows may be any set (a regular grid, a grid with blank windows left out, overlapping
    or repeated windows). Windows are sorted once by ``(x0, y0)``; each source takes the
    distinct ``x0`` within ``w`` of its pixel (binary search), and for each of them the
    run of windows whose ``y0`` is within ``w`` (one more binary search on the sorted
    ``(x0, y0)`` keys). Cost: ``O(m log m + (n + P) log m + M)`` for ``m`` windows, ``n``
    sources, ``P`` (source, ``x0``) pairs (at most ``n * min(w, distinct x0)``; about
    ``n * w / stride`` on a grid) and ``M`` (source, window) matches. Memory:
    ``O(m + n + max_pairs)``: pairs go in chunks of at most ``max_pairs`` (or one source's).

    Parameters
    ----------
    x, y : array_like of float, shape (n,)
        0-based pixel positions of the sources (numpy column and row); sources with a
        non-finite position are in no window.
    total_flux : array_like of float, shape (n,)
        Total flux density of each source, Jy (NaN where unknown).
    major : array_like of float, shape (n,)
        Major axis FWHM of each source, arcsec (NaN where unknown).
    s_code : array_like of str, shape (n,)
        PyBDSF source code of each source: ``"S"``, ``"M"``, ``"C"``, or anything else
        (``""``) where unknown.
    x0, y0 : array_like of int, shape (m,)
        Origins of the windows (numpy column and row of their first pixel).
    window_size : int
        Side ``w`` of every window, pixels.
    max_pairs : int
        Largest number of (source, candidate) pairs held at once.

    Returns
    -------
    dict of str to ndarray
        One float64 array of shape (m,) per name of :data:`CATALOGUE_COLUMNS`, in the
        order of the windows: ``n_sources``; ``max_flux_jy`` and ``max_size_arcsec``, the
        largest known ``total_flux`` and ``major`` of its sources (NaN with no source or
        none known); ``n_single``, ``n_multiple``, ``n_complex``, its sources of code
        S, M, C (NaN where one of its sources has no known code).

    Raises
    ------
    InvalidArgumentError
        Arrays not 1-D or of different lengths, origins not integers, ``window_size`` or
        ``max_pairs`` below 1, coordinates too large to combine.
    """
    sources = _source_arrays(x, y, total_flux, major, s_code)
    ox, oy = _window_origins(x0, y0)
    w = check_int("window_size", window_size, minimum=1)
    max_pairs = check_int("max_pairs", max_pairs, minimum=1)
    m = ox.size
    acc = {name: np.zeros(m) for name in (*CATALOGUE_COLUMNS, "n_unknown")}
    acc["max_flux_jy"][:] = acc["max_size_arcsec"][:] = np.nan
    if m == 0 or sources["px"].size == 0:
        return _finish(acc, np.arange(m))
    keys, order, (xmin, ymin, span) = _sorted_windows(ox, oy)
    distinct_x = np.unique(ox) - xmin
    px, py = sources["px"] - xmin, sources["py"] - ymin
    first = np.searchsorted(distinct_x, px - w + 1, side="left")
    stop = np.searchsorted(distinct_x, px + 1, side="left")
    for source, column in _expand_ranges(first, stop - first, max_pairs):
        base = distinct_x[column] * span
        low = base + np.clip(py[source] - w + 1, 0, span)
        high = base + np.clip(py[source] + 1, 0, span)
        start = np.searchsorted(keys, low, side="left")
        end = np.searchsorted(keys, high, side="left")
        for pair, window in _expand_ranges(start, end - start, max_pairs):
            _accumulate(acc, window, sources, source[pair])
    return _finish(acc, order)


def _sorted_windows(
    ox: np.ndarray, oy: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Sort windows by ``(x0, y0)``: keys ``(x0 - xmin) * span + y0 - ymin``, sorted.

    Returns the sorted keys, the order that sorts the windows, and ``(xmin, ymin, span)``
    with ``span`` the number of rows from the lowest ``y0`` to the highest.
    """
    xmin, ymin = int(ox.min()), int(oy.min())
    span = int(oy.max()) - ymin + 1
    if (int(ox.max()) - xmin + 1) * span >= 2**62:
        raise InvalidArgumentError(
            f"window origins span {int(ox.max()) - xmin + 1} x {span} pixels; "
            "expected under 2**62 pixels in all"
        )
    keys = (ox - xmin) * span + (oy - ymin)
    order = np.argsort(keys, kind="stable")
    return keys[order], order, (xmin, ymin, span)


def _source_arrays(x: Any, y: Any, flux: Any, major: Any, code: Any) -> dict[str, np.ndarray]:
    """Keep sources with a finite position: pixel indices, flux, size, code indicators."""
    arrays = {
        "x": np.asarray(x, dtype=np.float64),
        "y": np.asarray(y, dtype=np.float64),
        "total_flux": np.asarray(flux, dtype=np.float64),
        "major": np.asarray(major, dtype=np.float64),
        "s_code": np.asarray(code).astype(str),
    }
    n = arrays["x"].shape
    for name, array in arrays.items():
        if array.ndim != 1 or array.shape != n:
            raise InvalidArgumentError(
                f"{name} has shape {array.shape}; expected shape {n}, like x (one per source)"
            )
    keep = np.isfinite(arrays["x"]) & np.isfinite(arrays["y"])
    codes = np.char.upper(np.char.strip(arrays["s_code"][keep]))
    limit = 2.0**52  # far outside any image, and safe from int64 overflow
    out = {
        "px": np.floor(np.clip(arrays["x"][keep], -limit, limit) + 0.5).astype(np.int64),
        "py": np.floor(np.clip(arrays["y"][keep], -limit, limit) + 0.5).astype(np.int64),
        "total_flux": arrays["total_flux"][keep],
        "major": arrays["major"][keep],
    }
    for code, column in _CODE_COLUMNS.items():
        out[column] = codes == code
    out["n_unknown"] = ~np.isin(codes, tuple(_CODE_COLUMNS))
    return out


def _window_origins(x0: Any, y0: Any) -> tuple[np.ndarray, np.ndarray]:
    """Window origins as int64 arrays of one shape."""
    arrays = []
    for name, values in (("x0", x0), ("y0", y0)):
        array = np.asarray(values)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise InvalidArgumentError(
                f"{name} has dtype {array.dtype} and shape {array.shape}; "
                "expected a 1-D array of integers"
            )
        arrays.append(array.astype(np.int64))
    if arrays[0].shape != arrays[1].shape:
        raise InvalidArgumentError(
            f"x0 has shape {arrays[0].shape} and y0 {arrays[1].shape}; expected one shape"
        )
    return arrays[0], arrays[1]


def _expand_ranges(
    starts: np.ndarray, lengths: np.ndarray, max_total: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (item, index) for every index in ``starts[item] + range(lengths[item])``.

    In chunks of whole items, at most ``max_total`` indices each unless one item alone has
    more; items of length 0 are skipped.
    """
    items = np.flatnonzero(lengths > 0)
    if items.size == 0:
        return
    lengths = lengths[items].astype(np.int64)
    ends = np.cumsum(lengths)
    i = 0
    while i < items.size:
        before = int(ends[i - 1]) if i else 0
        j = max(int(np.searchsorted(ends, before + max_total, side="right")), i + 1)
        chunk = lengths[i:j]
        total = int(ends[j - 1]) - before
        owner = np.repeat(np.arange(i, j), chunk)
        offset = np.arange(total) - np.repeat(ends[i:j] - chunk - before, chunk)
        yield items[owner], starts[items[owner]] + offset
        i = j


def _accumulate(
    acc: dict[str, np.ndarray], window: np.ndarray, sources: dict[str, np.ndarray], source: Any
) -> None:
    """Add the matched (window, source) pairs to the per-window sums and maxima."""
    np.add.at(acc["n_sources"], window, 1.0)
    np.fmax.at(acc["max_flux_jy"], window, sources["total_flux"][source])
    np.fmax.at(acc["max_size_arcsec"], window, sources["major"][source])
    for column in (*_CODE_COLUMNS.values(), "n_unknown"):
        flags = sources[column][source]
        np.add.at(acc[column], window[flags], 1.0)


def _finish(acc: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    """Columns in the windows' own order, code counts NaN where a code is unknown."""
    incomplete = acc["n_unknown"] > 0
    out = {}
    for name in CATALOGUE_COLUMNS:
        column = np.empty_like(acc[name])
        column[order] = acc[name]
        if name in _CODE_COLUMNS.values():
            column[order[incomplete]] = np.nan
        out[name] = column
    return out


# --------------------------------------------------------------------------- labels


def dominant_s_code(n_single: Any, n_multiple: Any, n_complex: Any) -> np.ndarray:
    """Return the most complex source code of each window.

    Parameters
    ----------
    n_single, n_multiple, n_complex : array_like of float
        Counts of sources of code S, M and C per window (NaN where unknown), as
        :func:`match_sources` gives them.

    Returns
    -------
    ndarray of str
        ``"C"`` if the window has a C source, else ``"M"`` if it has an M one, else
        ``"S"`` if an S one, ``"none"`` without sources, and :data:`UNKNOWN` where a count
        is NaN.
    """
    counts = [np.asarray(values, dtype=np.float64) for values in (n_single, n_multiple, n_complex)]
    single, multiple, complex_ = np.broadcast_arrays(*counts)
    unknown = np.isnan(single) | np.isnan(multiple) | np.isnan(complex_)
    return np.select(
        [unknown, complex_ > 0, multiple > 0, single > 0],
        [UNKNOWN, "C", "M", "S"],
        default="none",
    )


def steering_labels(
    column_values: Any, bins: int | Sequence[float] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Categories of a column: numeric bins, or one category per distinct text value.

    Parameters
    ----------
    column_values : array_like, shape (n,)
        Numbers (NaN where missing) or text (``None``, NaN or ``""`` where missing).
    bins : int or sequence of float, optional
        For numbers: ``N``, that many quantile bins of the finite values (edges that
        coincide merged, so there may be fewer), or the increasing edges
        ``e0 < e1 < ... < ek`` of bins ``[e0, e1), ..., [ek-1, ek]``; values below ``e0``
        or above ``ek`` get categories of their own, ``"< e0"`` and ``"> ek"``. Ignored for
        text.

    Returns
    -------
    labels : ndarray of int64, shape (n,)
        Category of each value, an index into ``names``.
    names : list of str
        Category names in label order: the bins low to high (``"[0.01, 0.1)"``), or the
        sorted distinct texts; then :data:`UNKNOWN` if any value is missing. Categories
        with no value are left out, except the bins themselves.

    Raises
    ------
    InvalidArgumentError
        Values not one-dimensional; numbers without ``bins``, ``bins`` below 1, or edges
        that are fewer than two, not numbers, or not strictly increasing.
    """
    values = np.asarray(column_values)
    if values.ndim != 1:
        raise InvalidArgumentError(f"column_values has shape {values.shape}; expected a 1-D column")
    if values.dtype.kind in "iuf":
        return _numeric_labels(values.astype(np.float64), bins)
    if values.dtype.kind == "O" and not any(isinstance(item, str) for item in values):
        try:
            return _numeric_labels(values.astype(np.float64), bins)
        except (TypeError, ValueError):
            pass
    return _text_labels(values)


def _text_labels(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """One category per distinct non-empty text, then :data:`UNKNOWN`."""
    if values.dtype.kind in "USb":
        texts = values.astype(str).astype(object)
    else:
        texts = np.array(
            [item if isinstance(item, str) else "" for item in values.tolist()], dtype=object
        )
    missing = texts == ""
    names, inverse = np.unique(texts[~missing].astype(str), return_inverse=True)
    labels = np.full(values.size, names.size, dtype=np.int64)
    labels[~missing] = inverse
    return labels, [*names.tolist(), *([UNKNOWN] if missing.any() else [])]


def _numeric_labels(
    values: np.ndarray, bins: int | Sequence[float] | None
) -> tuple[np.ndarray, list[str]]:
    """Bins of numbers (module docstring of :func:`steering_labels`), then :data:`UNKNOWN`."""
    missing = np.isnan(values)
    finite = values[~missing]
    edges = _bin_edges(finite, bins)
    labels = np.full(values.size, -1, dtype=np.int64)
    names: list[str] = []
    if edges.size:
        below, above = values < edges[0], values > edges[-1]
        inner = np.searchsorted(edges[1:-1], values, side="right")
        offset = int(below.any())
        labels[:] = inner + offset
        if offset:
            labels[below] = 0
            names.append(f"< {edges[0]:.4g}")
        names.extend(_bin_names(edges))
        if above.any():
            labels[above] = len(names)
            names.append(f"> {edges[-1]:.4g}")
    if missing.any():
        labels[missing] = len(names)
        names.append(UNKNOWN)
    return labels, names


def _bin_edges(finite: np.ndarray, bins: int | Sequence[float] | None) -> np.ndarray:
    """Check or compute increasing bin edges; empty when quantiles have nothing to split."""
    if is_int(bins):
        n = check_int("bins", bins, minimum=1)
        if finite.size == 0:
            return np.empty(0)
        edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, n + 1)))
        return edges if edges.size > 1 else np.repeat(edges, 2)
    try:
        edges = np.asarray(bins, dtype=np.float64)
    except (TypeError, ValueError):
        edges = np.empty(0)
    if (
        bins is None
        or edges.ndim != 1
        or edges.size < 2
        or np.isnan(edges).any()
        or (np.diff(edges) <= 0).any()
    ):
        raise InvalidArgumentError(
            f"bins={bins!r} must be a number of quantile bins >= 1 or at least two "
            "strictly increasing edges"
        )
    return edges


def _bin_names(edges: np.ndarray) -> list[str]:
    """Name the bins: ``[a, b)`` for every bin but the last, ``[a, b]`` for the last."""
    names = [f"[{a:.4g}, {b:.4g})" for a, b in itertools.pairwise(edges)]
    names[-1] = names[-1][:-1] + "]"
    return names
