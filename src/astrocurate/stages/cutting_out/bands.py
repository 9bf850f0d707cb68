"""Reading a mosaic and its rms map band by band, the next band read while one is cut.

:func:`read_ahead` yields the rows of each band of every source (the mosaic and its rms
map), reading the next band in a thread meanwhile (file reads release the GIL, so reading
from the disk overlaps computing). Each source has two buffers, used in turn, so a band
costs no new memory; the rows that a band shares with the one before (overlapping windows)
are copied from it, not read again. A source may be read one row in ``step`` (the rms map,
whose windows need only their robust-grid rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from astrocurate.io.mosaics import Mosaic

__all__ = ["read_ahead"]


def read_ahead(
    sources: Sequence[Mosaic],
    spans: Sequence[tuple[int, int]],
    steps: Sequence[int] | None = None,
) -> Iterator[list[np.ndarray]]:
    """Yield rows ``b0:b1`` of every source for each span ``(b0, b1)``, reading ahead.

    Parameters
    ----------
    sources : sequence of Mosaic
        Open mosaics of the same number of rows (a mosaic and its rms map).
    spans : sequence of (int, int)
        Row ranges in increasing order (e.g. from
        :func:`astrocurate.algorithms.windows.row_bands`).
    steps : sequence of int, optional
        Per source, read only every ``step``-th row, ``b0:b1:step`` (every ``b0`` must
        then be a multiple of it); default every row of every source.

    Yields
    ------
    list of numpy.ndarray
        float32, shape ``(len(range(b0, b1, step)), nx)`` per source. A band is
        overwritten once the band after the next is read: use it, or copy it, before
        asking for the next one.

    Raises
    ------
    InvalidMosaicError
        If a file cannot be read (raised where the band is yielded).
    """
    if not spans:
        return
    steps = list(steps) if steps is not None else [1] * len(sources)
    if any(b0 % step for b0, _ in spans for step in steps):
        raise ValueError(f"every band must start on a multiple of the row steps {steps}")
    height = max(b1 - b0 for b0, b1 in spans)
    shapes = [(-(-height // step), s.shape[1]) for s, step in zip(sources, steps, strict=True)]
    buffers = [[np.empty(shape, np.float32) for shape in shapes] for _ in range(2)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="astrocurate-read") as pool:
        pending = pool.submit(_read, sources, steps, buffers[0], spans[0], None)
        for i, span in enumerate(spans):
            bands = pending.result()
            if i + 1 < len(spans):
                before = (span, bands)
                following = (sources, steps, buffers[(i + 1) % 2], spans[i + 1], before)
                pending = pool.submit(_read, *following)
            yield bands


def _read(
    sources: Sequence[Mosaic],
    steps: Sequence[int],
    buffers: list[np.ndarray],
    span: tuple[int, int],
    before: tuple[tuple[int, int], list[np.ndarray]] | None,
) -> list[np.ndarray]:
    """Read one span of every source into its buffer; copy the rows shared with ``before``."""
    b0, b1 = span
    shared = 0
    if before is not None:
        (p0, p1), _ = before
        shared = max(0, min(p1, b1) - b0) if p0 <= b0 else 0
    bands = []
    for k, (source, step) in enumerate(zip(sources, steps, strict=True)):
        band = buffers[k][: len(range(b0, b1, step))]
        kept = len(range(b0, b0 + shared, step))  # rows taken that the band before holds
        if kept:
            first = (b0 - before[0][0]) // step
            band[:kept] = before[1][k][first : first + kept]
        if b0 + kept * step < b1:
            source.read_rows(b0 + kept * step, b1, out=band[kept:], step=step)
        bands.append(band)
    return bands
