"""Reading a mosaic and its rms map band by band, the next band read while one is cut.

:func:`read_ahead` yields the rows of each band of every source (the mosaic and its rms
map), reading the next band in a thread meanwhile (file reads release the GIL, so reading
from the disk overlaps computing). Each source has two buffers, used in turn, so a band
costs no new memory; the rows that a band shares with the one before (overlapping windows)
are copied from it, not read again.
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
    sources: Sequence[Mosaic], spans: Sequence[tuple[int, int]]
) -> Iterator[list[np.ndarray]]:
    """Yield rows ``b0:b1`` of every source for each span ``(b0, b1)``, reading ahead.

    Parameters
    ----------
    sources : sequence of Mosaic
        Open mosaics of the same number of rows (a mosaic and its rms map).
    spans : sequence of (int, int)
        Row ranges in increasing order (e.g. from
        :func:`astrocurate.algorithms.windows.row_bands`).

    Yields
    ------
    list of numpy.ndarray
        float32, shape ``(b1 - b0, nx)`` per source. A band is overwritten once the band
        after the next is read: use it, or copy it, before asking for the next one.

    Raises
    ------
    InvalidMosaicError
        If a file cannot be read (raised where the band is yielded).
    """
    if not spans:
        return
    height = max(b1 - b0 for b0, b1 in spans)
    buffers = [[np.empty((height, s.shape[1]), np.float32) for s in sources] for _ in range(2)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="astrocurate-read") as pool:
        pending = pool.submit(_read, sources, buffers[0], spans[0], None)
        for i, span in enumerate(spans):
            bands = pending.result()
            if i + 1 < len(spans):
                before = (span, bands)
                pending = pool.submit(_read, sources, buffers[(i + 1) % 2], spans[i + 1], before)
            yield bands


def _read(
    sources: Sequence[Mosaic],
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
    for k, source in enumerate(sources):
        band = buffers[k][: b1 - b0]
        if shared:
            band[:shared] = before[1][k][b0 - before[0][0] : b0 - before[0][0] + shared]
        if b0 + shared < b1:
            source.read_rows(b0 + shared, b1, out=band[shared:])
        bands.append(band)
    return bands
