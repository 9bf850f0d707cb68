"""Cutout storage: Parquet manifests, pixel arrays, and random access by ``cutout_id``.

A cutout run directory holds::

    manifest.parquet           one row per cutout (columns: :data:`MANIFEST_COLUMNS`)
    mosaics.parquet            one row per mosaic (size, HDU, fingerprint, WCS header,
                               centre, counts kept/skipped, status and warnings)
    pixels/<n>-<mosaic>.npy    float32 (n, w, w) per mosaic; absent with ``--store virtual``

Manifest columns (Arrow types in :data:`MANIFEST_TYPES`, the same for every run):

``cutout_id``
    Row number, 0..N-1.
``mosaic``, ``mosaic_path``
    Mosaic name and absolute path of its FITS file.
``window_size``, ``x0``, ``y0``
    The cutout is ``data[y0:y0 + w, x0:x0 + w]`` of its mosaic's 2-D image, where
    ``x0`` is the 0-based numpy column and ``y0`` the 0-based numpy row of its first
    pixel: the lower-left corner when the image is shown FITS-style (origin lower),
    FITS pixel ``(x0 + 1, y0 + 1)``.
``ra``, ``dec``
    ICRS degrees of the cutout centre, pixel ``(x0 + (w - 1) / 2, y0 + (w - 1) / 2)``
    through the mosaic's celestial WCS; NaN without one.
``pixel_scale_arcsec``
    Geometric mean pixel scale of the mosaic; NaN without a WCS.
``nan_fraction``
    Fraction of blank pixels; those are stored as :data:`NAN_FILL_VALUE`.
``mean``, ``std``, ``max``, ``noise_mad``, ``peak_snr``
    Statistics of the non-blank pixels (:func:`astrocurate.algorithms.windows.cutout_statistics`):
    mean, std and max of all of them; the median and ``noise_mad`` (1.4826 x MAD), and so
    ``peak_snr = (max - median) / noise_mad``, of those on the grid of every k-th row and
    column from the first pixel, ``k = max(1, w // 32)`` (every pixel below 64 px).
``rms_map``, ``peak_snr_map``
    From the mosaic's noise (rms) map, where one was found: the median of the map over the
    cutout (on the same grid as ``noise_mad``) and ``(max - median) / rms_map``; NaN
    without a map.
``n_sources``, ``max_flux_jy``, ``max_size_arcsec``, ``n_single``, ``n_multiple``, ``n_complex``
    From a source catalogue (a PyBDSF source list), where one was given: the sources whose
    position falls inside the cutout, the largest total flux and major axis among them, and
    how many have ``S_Code`` S, M and C; NaN without a catalogue (0 and NaN where it has
    no source inside).
``store``, ``array_file``, ``array_row``
    ``"copy"``: row ``array_row`` of the ``.npy`` file ``array_file`` (relative to the
    run directory; absolute in merged manifests). ``"virtual"``: read from the mosaic
    itself (``array_file`` null, ``array_row`` -1).

With the ``virtual`` store no pixels are copied: :class:`CutoutReader` reads the
window from the memory-mapped mosaic, after checking that the mosaic still has
the size and fingerprint recorded when the cutouts were made.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from astrocurate.algorithms.catalogue_match import CATALOGUE_COLUMNS
from astrocurate.errors import AstrocurateError
from astrocurate.io.atomic import atomic_path, start_writeback, temporary_path

if TYPE_CHECKING:  # pandas is imported where a table is read: counting rows needs none
    import pandas as pd

MANIFEST = "manifest.parquet"
MOSAICS = "mosaics.parquet"
PIXELS_DIR = "pixels"
#: Value written in place of blank (NaN) pixels of cutouts kept with ``max_nan_fraction > 0``:
#: 0 Jy/beam, the expected background of a radio image.
NAN_FILL_VALUE = 0.0

#: Columns from a mosaic's noise map and source catalogue; manifests written before they
#: existed lack them (readers take them as NaN).
COMPANION_COLUMNS: tuple[str, ...] = ("rms_map", "peak_snr_map", *CATALOGUE_COLUMNS)

#: Arrow type of every manifest column (the same whatever the rows, even with none).
MANIFEST_TYPES: dict[str, pa.DataType] = {
    "cutout_id": pa.int64(),
    "mosaic": pa.string(),
    "mosaic_path": pa.string(),
    "window_size": pa.int64(),
    "x0": pa.int64(),
    "y0": pa.int64(),
    "ra": pa.float64(),
    "dec": pa.float64(),
    "pixel_scale_arcsec": pa.float64(),
    "nan_fraction": pa.float64(),
    "mean": pa.float64(),
    "std": pa.float64(),
    "max": pa.float64(),
    "noise_mad": pa.float64(),
    "peak_snr": pa.float64(),
    **dict.fromkeys(COMPANION_COLUMNS, pa.float64()),
    "store": pa.string(),
    "array_file": pa.string(),
    "array_row": pa.int64(),
}

#: Columns of a cutout manifest, in order.
MANIFEST_COLUMNS: tuple[str, ...] = tuple(MANIFEST_TYPES)

_NPY_HEADER_BYTES = 128
#: Bytes of cutouts after which :class:`NpyStackWriter` starts their write-out to disk.
WRITEBACK_BYTES = 64 << 20
#: Rows decoded at a time by :func:`read_manifest_rows`.
_BATCH_ROWS = 65536


class CutoutStoreError(AstrocurateError, ValueError):
    """A cutout store is incomplete, or a mosaic it references has changed."""


# --------------------------------------------------------------------------- files


def write_parquet_atomic(
    table: pd.DataFrame, path: Path, types: dict[str, pa.DataType] | None = None
) -> None:
    """Write a DataFrame to Parquet under a temporary name, then rename it into place.

    Parameters
    ----------
    table : DataFrame
        The rows (the index is not written).
    path : Path
        Final path.
    types : dict of str to pyarrow.DataType, optional
        Arrow types of some columns (e.g. :data:`MANIFEST_TYPES`), so that the file's
        schema does not depend on the values (all-null or empty columns included).
    """
    path = Path(path)
    schema = None
    if types:
        inferred = pa.Schema.from_pandas(table, preserve_index=False)
        schema = pa.schema(
            [pa.field(f.name, types.get(f.name, f.type)) for f in inferred],
            metadata=inferred.metadata,
        )
    arrow = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")


def manifest_path(directory: Path | str) -> Path:
    """Return the manifest file of a cutout or merge run directory.

    Raises
    ------
    CutoutStoreError
        If the directory has no manifest.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CutoutStoreError(f"{path}: no cutout manifest (is this a cutout or merge run?)")
    return path


def read_manifest(directory: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read the manifest of a cutout or merge run directory.

    Raises
    ------
    CutoutStoreError
        If the directory has no manifest.
    """
    import pandas as pd

    path = manifest_path(directory)
    return pd.read_parquet(path, columns=list(columns) if columns else None)


def manifest_row_count(directory: Path | str) -> int:
    """Return the number of rows of a run directory's manifest (from the Parquet footer).

    Raises
    ------
    CutoutStoreError
        If the directory has no manifest.
    """
    path = manifest_path(directory)
    return int(pq.ParquetFile(path).metadata.num_rows)


def read_manifest_rows(
    directory: Path | str, rows: Sequence[int] | np.ndarray, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read some rows of a merged manifest, streaming the Parquet row groups that hold them.

    Memory stays bounded by one batch of decoded rows (plus the rows asked for),
    whatever the manifest's size, and row groups holding none of ``rows`` are not read.

    Parameters
    ----------
    directory : path-like
        A merge (or cutout) run directory.
    rows : sequence of int
        Distinct manifest rows, in any order.
    columns : sequence of str, optional
        Columns to read (those the manifest lacks are left out); default all.

    Returns
    -------
    DataFrame
        The rows, in the order of ``rows``, with a default index.
    """
    wanted = np.asarray(rows, dtype=np.int64)
    order = np.argsort(wanted, kind="stable")
    ordered = wanted[order]
    path = manifest_path(directory)
    schema = pq.read_schema(path)
    available = [c for c in (columns or schema.names) if c in schema.names]
    text = [c for c in available if pa.types.is_string(schema.field(c).type)]
    handle = pq.ParquetFile(path, read_dictionary=text)  # repeated paths: read compactly
    bounds = np.cumsum(
        [0] + [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
    )
    if len(ordered) and (ordered[0] < 0 or ordered[-1] >= bounds[-1]):
        raise CutoutStoreError(f"{path}: manifest rows out of range 0..{bounds[-1] - 1}")
    pieces = []
    groups = np.searchsorted(bounds, ordered, side="right") - 1
    for group in np.unique(groups):
        local = ordered[groups == group] - bounds[group]
        start = 0
        for batch in handle.iter_batches(_BATCH_ROWS, row_groups=[int(group)], columns=available):
            inside = local[(local >= start) & (local < start + batch.num_rows)] - start
            if len(inside):
                pieces.append(pa.Table.from_batches([batch.take(pa.array(inside))]))
            start += batch.num_rows
    if not pieces:
        import pandas as pd

        return pd.DataFrame({c: [] for c in available})
    table = pa.concat_tables(pieces)
    for name in text:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, table.column(name).cast(pa.string()))
    table = table.to_pandas()
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return table.iloc[inverse].reset_index(drop=True)


class NpyStackWriter:
    """Append (w, w) float32 cutouts to a ``.npy`` file whose final length is not yet known.

    Data go after a fixed 128-byte header; :meth:`close` writes the header with the
    final shape and renames the file into place, so a reader never sees a partial
    array under the final name. Every :data:`WRITEBACK_BYTES` written start going to disk
    while the next are written, so the final fsync waits for little.

    Parameters
    ----------
    path : Path
        Final ``.npy`` path.
    window_size : int
        Side of every cutout.
    """

    def __init__(self, path: Path, window_size: int) -> None:
        self.path = Path(path)
        self.window_size = int(window_size)
        self.count = 0
        self._tmp = temporary_path(self.path)
        self._handle = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._handle.write(b"\0" * _NPY_HEADER_BYTES)
        self._written_out = 0  # bytes whose write-out to disk has started

    def append(self, stack: np.ndarray) -> None:
        """Append cutouts of shape (n, w, w), converted to little-endian float32."""
        data = np.ascontiguousarray(stack, dtype="<f4")
        if data.ndim != 3 or data.shape[1:] != (self.window_size, self.window_size):
            raise ValueError(
                f"expected (n, {self.window_size}, {self.window_size}), got {data.shape}"
            )
        self._handle.write(data.data)
        self.count += len(data)
        written = self._handle.tell()
        if written - self._written_out >= WRITEBACK_BYTES:
            self._handle.flush()
            start_writeback(self._handle.fileno(), self._written_out, written - self._written_out)
            self._written_out = written

    def close(self) -> Path:
        """Write the header, flush to disk, and rename the file to its final name."""
        self._handle.seek(0)
        self._handle.write(_npy_header((self.count, self.window_size, self.window_size)))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        self._handle.close()
        self._tmp.unlink(missing_ok=True)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """Return a version 1.0 ``.npy`` header for little-endian float32, padded to 128 bytes."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}"
    room = _NPY_HEADER_BYTES - 10 - 1
    if len(text) > room:
        raise ValueError(f"shape {shape} does not fit a {_NPY_HEADER_BYTES}-byte header")
    body = text.ljust(room).encode("latin1") + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


# --------------------------------------------------------------------------- reading

MAX_OPEN = 64
"""Pixel files and mosaics a reader holds open at most (an open mosaic takes ~4 files)."""


class CutoutReader:
    """Random access to cutout pixels by row of a manifest.

    Works for copied and virtual stores and for merged manifests (whose
    ``array_file`` paths are absolute). Files are opened lazily, per process and at
    most ``max_open`` at a time (least recently used closed first), so a reader can
    be handed to ``torch.utils.data.DataLoader`` workers (forked or pickled) and
    read a survey of any number of mosaics. A virtual store's mosaic is checked
    against its recorded fingerprint when the reader first opens it in a process.

    Parameters
    ----------
    manifest : DataFrame
        Rows with at least ``store``, ``array_file``, ``array_row``, ``mosaic_path``,
        ``x0``, ``y0``, ``window_size``; row ``i`` is cutout ``i``.
    base_dir : Path, optional
        Directory that relative ``array_file`` paths are relative to.
    mosaics : DataFrame, optional
        The mosaics table, to check virtual mosaics against their fingerprints.
    max_open : int
        Most pixel files and mosaics held open at once.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        base_dir: Path | None = None,
        mosaics: pd.DataFrame | None = None,
        max_open: int = MAX_OPEN,
    ) -> None:
        if max_open < 1:
            raise ValueError(f"max_open={max_open} must be >= 1")
        self._store = manifest["store"].to_numpy()
        self._array_file = manifest["array_file"].to_numpy()
        self._array_row = manifest["array_row"].to_numpy(dtype=np.int64)
        self._mosaic_path = manifest["mosaic_path"].to_numpy()
        self._x0 = manifest["x0"].to_numpy(dtype=np.int64)
        self._y0 = manifest["y0"].to_numpy(dtype=np.int64)
        self._size = manifest["window_size"].to_numpy(dtype=np.int64)
        self._nan_fill = (
            manifest["nan_fraction"].to_numpy() > 0 if "nan_fraction" in manifest else None
        )
        self._base = Path(base_dir) if base_dir is not None else None
        self._fingerprints = _fingerprint_index(mosaics)
        self._max_open = int(max_open)
        self._open: dict[str, Any] = {}  # insertion order = least recently used first
        self._verified: set[str] = set()
        self._pid = os.getpid()

    @classmethod
    def from_directory(cls, directory: Path, max_open: int = MAX_OPEN) -> CutoutReader:
        """Open the store of a cutout or merge run directory."""
        import pandas as pd

        directory = Path(directory)
        mosaics_path = directory / MOSAICS
        mosaics = pd.read_parquet(mosaics_path) if mosaics_path.is_file() else None
        return cls(read_manifest(directory), directory, mosaics, max_open)

    def __len__(self) -> int:
        return len(self._store)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle or copy without open files (worker processes, reader threads)."""
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    def __getitem__(self, index: int) -> np.ndarray:
        """Return cutout ``index`` as a new (w, w) float32 array."""
        w = self.window_size(index) if 0 <= index < len(self) else 0  # else read() refuses it
        out = np.empty((w, w), dtype=np.float32)
        self.read([index], out=out[None])
        return out

    def window_size(self, index: int) -> int:
        """Return the side, in pixels, of cutout ``index``."""
        return int(self._size[index])

    def read(self, indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """Return cutouts as an (n, w, w) float32 array (all must share one window size).

        Consecutive rows of one copied pixel file are one slice; the other rows are read
        per pixel file (one gather) and per mosaic of a virtual store
        (:meth:`~astrocurate.io.mosaics.Mosaic.read_windows`). The copies release the
        GIL, so threads with a reader each read in parallel.

        Parameters
        ----------
        indices : sequence of int
            Rows of the manifest.
        out : ndarray, optional
            C-contiguous float32 array of shape (n, w, w) to read into (pinned memory,
            say); a new array by default.
        """
        ids = np.asarray(indices, dtype=np.int64)
        if not len(ids):
            return np.empty((0, 0, 0), dtype=np.float32) if out is None else out
        self._check_rows(ids)
        w = int(self._size[ids[0]])
        if (self._size[ids] != w).any():
            raise ValueError("cutouts read together must share one window size")
        if out is None:
            out = np.empty((len(ids), w, w), dtype=np.float32)
        if self._contiguous_copy(ids):
            start = int(self._array_row[ids[0]])
            np.copyto(out, self._array(str(self._array_file[ids[0]]))[start : start + len(ids)])
            return out
        virtual = self._store[ids] == "virtual"
        for name, at in _groups(np.where(virtual, self._mosaic_path[ids], self._array_file[ids])):
            rows = ids[at]
            if virtual[at[0]]:
                mosaic = self._handle(name, lambda name=name: self._open_mosaic(name))
                corners = self._y0[rows], self._x0[rows]
                if at[-1] - at[0] == len(at) - 1:  # next to each other: read in place
                    mosaic.read_windows(*corners, w, out=out[at[0] : at[-1] + 1])
                else:
                    out[at] = mosaic.read_windows(*corners, w)
                self._fill_blanks(out, at, rows)
            else:
                out[at] = self._array(name)[self._array_row[rows]]
        return out

    def _check_rows(self, ids: np.ndarray) -> None:
        """Refuse rows outside the manifest; drop the files a parent process opened."""
        if os.getpid() != self._pid:  # forked into a worker process: reopen files
            self._open, self._pid = {}, os.getpid()
        bad = ids[(ids < 0) | (ids >= len(self))]
        if len(bad):
            raise IndexError(f"cutout_id {bad[0]} out of range 0..{len(self) - 1}")

    def _array(self, name: str) -> np.ndarray:
        return self._handle(name, lambda: self._load_array(name))

    def _fill_blanks(self, out: np.ndarray, at: np.ndarray, rows: np.ndarray) -> None:
        """Set the blank pixels of virtual cutouts that have any to the fill value."""
        if self._nan_fill is None or not self._nan_fill[rows].any():
            return
        flagged = at[self._nan_fill[rows]]
        windows = out[flagged]
        windows[np.isnan(windows)] = NAN_FILL_VALUE
        out[flagged] = windows

    def _contiguous_copy(self, ids: np.ndarray) -> bool:
        """Whether ``ids`` are consecutive rows of one copied pixel file."""
        rows = self._array_row[ids]
        return bool(
            (self._store[ids] == "copy").all()
            and (self._array_file[ids] == self._array_file[ids[0]]).all()
            and (np.diff(rows) == 1).all()
        )

    def close(self) -> None:
        """Close every open file (the reader reopens them when read again)."""
        while self._open:
            _close(self._open.pop(next(iter(self._open))))

    def __del__(self) -> None:
        """Close the files of a reader dropped without :meth:`close`."""
        with contextlib.suppress(Exception):  # also half-built, or at interpreter exit
            self.close()

    def _handle(self, key: str, opener: Any) -> Any:
        """Return the open file ``key``, opening it (and closing the oldest) if needed."""
        handle = self._open.pop(key, None)
        if handle is None:
            handle = opener()
            while len(self._open) >= self._max_open:
                _close(self._open.pop(next(iter(self._open))))
        self._open[key] = handle
        return handle

    def _path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() or self._base is None else self._base / path

    def _load_array(self, name: str) -> np.ndarray:
        path = self._path(name)
        if not path.is_file():
            raise CutoutStoreError(f"{path}: cutout pixel file is missing (moved or deleted?)")
        return np.load(path, mmap_mode="r")

    def _open_mosaic(self, name: str) -> Any:
        expected = None if name in self._verified else self._fingerprints.get(name)
        mosaic = _open_virtual_mosaic(Path(name), expected)
        self._verified.add(name)
        return mosaic


def _groups(files: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """Yield each distinct file and the positions where it is (one file: no sort)."""
    if (files == files[0]).all():
        yield str(files[0]), np.arange(len(files))
        return
    names, group = np.unique(files.astype(str), return_inverse=True)
    for g, name in enumerate(names):
        yield str(name), np.flatnonzero(group == g)


def _close(handle: Any) -> None:
    """Close an open mosaic; a memory-mapped array closes when no longer referenced."""
    close = getattr(handle, "close", None)
    if callable(close) and not isinstance(handle, np.ndarray):
        close()


def _fingerprint_index(mosaics: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """Map mosaic path to the fingerprint recorded when it was cut."""
    if mosaics is None or "fingerprint" not in mosaics:
        return {}
    return {
        str(path): json.loads(fp)
        for path, fp in zip(mosaics["mosaic_path"], mosaics["fingerprint"], strict=True)
        if isinstance(fp, str) and fp
    }


def _open_virtual_mosaic(path: Path, expected: dict[str, Any] | None) -> Any:
    """Open a mosaic referenced by a virtual store, checking it is the one recorded."""
    from astrocurate.io import mosaics as mosaic_io

    if not path.is_file():
        raise CutoutStoreError(f"{path}: mosaic referenced by a virtual cutout store is missing")
    if expected is not None:
        problem = mosaic_io.fingerprint_mismatch(path, expected)
        if problem:
            raise CutoutStoreError(f"{problem} since the cutouts were made; rerun the cutouts")
    return mosaic_io.open_mosaic(path)
