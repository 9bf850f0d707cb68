"""Cutout storage: Parquet manifests, pixel arrays, and random access by ``cutout_id``.

A cutout run directory holds::

    manifest.parquet     one row per cutout (columns: :data:`MANIFEST_COLUMNS`)
    mosaics.parquet      one row per mosaic (size, fingerprint, WCS header, counts)
    pixels/<mosaic>.npy  float32 (n, w, w) per mosaic; absent with ``--store virtual``

Pixel convention: a cutout covers ``data[y0:y0 + w, x0:x0 + w]`` of its mosaic,
where ``x0`` is the 0-based numpy column and ``y0`` the 0-based numpy row of its
lower-left pixel (FITS pixel ``(x0 + 1, y0 + 1)``).

With the ``virtual`` store no pixels are copied: :class:`CutoutReader` reads the
window from the memory-mapped mosaic, after checking that the mosaic still has
the size and fingerprint recorded when the cutouts were made.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate.errors import AstrocurateError

MANIFEST = "manifest.parquet"
MOSAICS = "mosaics.parquet"
PIXELS_DIR = "pixels"
#: Value written in place of blank (NaN) pixels of cutouts kept with ``max_nan_fraction > 0``:
#: 0 Jy/beam, the expected background of a radio image.
NAN_FILL_VALUE = 0.0

MANIFEST_COLUMNS: tuple[str, ...] = (
    "cutout_id",
    "mosaic",
    "mosaic_path",
    "window_size",
    "x0",
    "y0",
    "ra",
    "dec",
    "pixel_scale_arcsec",
    "nan_fraction",
    "mean",
    "std",
    "max",
    "noise_mad",
    "peak_snr",
    "store",
    "array_file",
    "array_row",
)

_NPY_HEADER_BYTES = 128


class CutoutStoreError(AstrocurateError, ValueError):
    """A cutout store is incomplete, or a mosaic it references has changed."""


# --------------------------------------------------------------------------- files


def write_parquet_atomic(table: pd.DataFrame, path: Path) -> None:
    """Write a DataFrame to Parquet under a temporary name, then rename it into place."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    table.to_parquet(tmp, index=False, compression="zstd")
    os.replace(tmp, path)


def read_manifest(directory: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read the manifest of a cutout or merge run directory.

    Raises
    ------
    CutoutStoreError
        If the directory has no manifest.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CutoutStoreError(f"{path}: no cutout manifest (is this a cutout or merge run?)")
    return pd.read_parquet(path, columns=list(columns) if columns else None)


class NpyStackWriter:
    """Append (w, w) float32 cutouts to a ``.npy`` file whose final length is not yet known.

    Data go after a fixed 128-byte header; :meth:`close` writes the header with the
    final shape and renames the file into place, so a reader never sees a partial
    array under the final name.

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
        self._tmp = self.path.with_name(f".tmp-{os.getpid()}-{self.path.name}")
        self._handle = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._handle.write(b"\0" * _NPY_HEADER_BYTES)

    def append(self, stack: np.ndarray) -> None:
        """Append cutouts of shape (n, w, w), converted to little-endian float32."""
        data = np.ascontiguousarray(stack, dtype="<f4")
        if data.ndim != 3 or data.shape[1:] != (self.window_size, self.window_size):
            raise ValueError(
                f"expected (n, {self.window_size}, {self.window_size}), got {data.shape}"
            )
        self._handle.write(data.data)
        self.count += len(data)

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


class CutoutReader:
    """Random access to cutout pixels by row of a manifest.

    Works for copied and virtual stores and for merged manifests (whose
    ``array_file`` paths are absolute). Files are opened lazily and per process,
    so a reader can be handed to ``torch.utils.data.DataLoader`` workers.

    Parameters
    ----------
    manifest : DataFrame
        Rows with at least ``store``, ``array_file``, ``array_row``, ``mosaic_path``,
        ``x0``, ``y0``, ``window_size``; row ``i`` is cutout ``i``.
    base_dir : Path, optional
        Directory that relative ``array_file`` paths are relative to.
    mosaics : DataFrame, optional
        The mosaics table, to check virtual mosaics against their fingerprints.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        base_dir: Path | None = None,
        mosaics: pd.DataFrame | None = None,
    ) -> None:
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
        self._open: dict[str, Any] = {}
        self._pid = os.getpid()

    @classmethod
    def from_directory(cls, directory: Path) -> CutoutReader:
        """Open the store of a cutout or merge run directory."""
        directory = Path(directory)
        mosaics_path = directory / MOSAICS
        mosaics = pd.read_parquet(mosaics_path) if mosaics_path.is_file() else None
        return cls(read_manifest(directory), directory, mosaics)

    def __len__(self) -> int:
        return len(self._store)

    def __getitem__(self, index: int) -> np.ndarray:
        """Return cutout ``index`` as a (w, w) float32 array."""
        if os.getpid() != self._pid:  # forked into a DataLoader worker: reopen files
            self._open, self._pid = {}, os.getpid()
        if not 0 <= index < len(self):
            raise IndexError(f"cutout_id {index} out of range 0..{len(self) - 1}")
        if self._store[index] == "virtual":
            return self._read_virtual(index)
        array = self._array(str(self._array_file[index]))
        return np.asarray(array[self._array_row[index]], dtype=np.float32)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Return cutouts as an (n, w, w) float32 array (all must share one window size)."""
        return np.stack([self[int(i)] for i in indices]) if len(indices) else np.empty((0, 0, 0))

    def _path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() or self._base is None else self._base / path

    def _array(self, name: str) -> np.ndarray:
        if name not in self._open:
            path = self._path(name)
            if not path.is_file():
                raise CutoutStoreError(f"{path}: cutout pixel file is missing (moved or deleted?)")
            self._open[name] = np.load(path, mmap_mode="r")
        return self._open[name]

    def _read_virtual(self, index: int) -> np.ndarray:
        name = str(self._mosaic_path[index])
        if name not in self._open:
            self._open[name] = _open_virtual_mosaic(Path(name), self._fingerprints.get(name))
        x0, y0, w = self._x0[index], self._y0[index], self._size[index]
        window = np.array(self._open[name].read_region(y0, y0 + w, x0, x0 + w), dtype=np.float32)
        if self._nan_fill is not None and self._nan_fill[index]:
            window[np.isnan(window)] = NAN_FILL_VALUE
        return window


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
    from astrocurate import mosaics as mosaic_io

    if not path.is_file():
        raise CutoutStoreError(f"{path}: mosaic referenced by a virtual cutout store is missing")
    if expected is not None:
        problem = mosaic_io.fingerprint_mismatch(path, expected)
        if problem:
            raise CutoutStoreError(f"{problem} since the cutouts were made; rerun the cutouts")
    return mosaic_io.open_mosaic(path)
