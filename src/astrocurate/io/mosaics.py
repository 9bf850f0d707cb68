"""Find and read FITS survey mosaics: files in, float32 row bands and sky positions out.

This is the data layer under the cutouts stage. It knows nothing of MLflow or the
command line. The image inside the file (which HDU, its stored values) is read by
:mod:`astrocurate.io.fits_image`; sky positions come from :mod:`astrocurate.io.wcs`.

* :func:`scan_mosaics` / :func:`discover_mosaics` find FITS images under a directory.
* :func:`open_mosaic` opens one mosaic as a :class:`Mosaic`: the first HDU holding a 2-D
  image (degenerate radio axes squeezed), its celestial WCS, and bounded-memory reads of
  bands of rows with BSCALE/BZERO/BLANK applied.
* :func:`file_fingerprint` is a cheap content checksum to detect a changed or moved file.

Pixel convention: arrays are in numpy order, ``data[y, x]``; ``x`` is the 0-based column
(FITS axis 1) and ``y`` the 0-based row (FITS axis 2).

How each storage form is read (a band is rows ``y0:y1`` at full width):

* plain ``.fits``: each band is copied out of a memory map of the file
  (:class:`~astrocurate.io.fits_image.MappedRows`), float32 byte-swapped on the way into
  the caller's array: one pass over the band instead of a ``readinto`` and a swap
  (2-3x faster from the page cache). The band's pages are then dropped from the
  process, so resident memory stays bounded by the band (pages left mapped count until
  the file is closed: 357 vs 102 MiB peak RSS measured on a 256 MiB mosaic), and the
  next band's pages are asked for, so a cold disk reads them meanwhile.
  :meth:`Mosaic.read_region` (random windows) uses astropy's memory map.
* tile-compressed (``CompImageHDU``, e.g. ``.fz``): astropy's ``section`` decompresses
  only the tiles crossing the band.
* gzip (``.fits.gz``): astropy's ``fits.open`` already decompresses through the image
  data (it seeks past it), and its ``section`` rewinds the gzip stream on every read, so
  each band would cost a decompression from the start of the file. Bands are therefore
  read here with a forward stream reader: bands in increasing ``y0`` decompress the file
  once more, i.e. about twice the gunzip time per mosaic in all.
* For gzip and tile-compressed sources the last band read is kept, so overlapping bands
  (sliding windows with overlap) do not decompress the same rows twice.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from astropy.io import fits

from astrocurate.io.fits_image import (
    BITPIX_DTYPES,
    GzipRows,
    ImageChoice,
    InvalidMosaicError,
    MappedRows,
    Scaling,
    check_plain_size,
    corrupt_message,
    open_image_hdu,
    stored_nbytes,
)
from astrocurate.io.mosaic_files import (  # discovery, re-exported: astrocurate.io.mosaics API
    MosaicFile,
    MosaicScan,
    discover_mosaics,
    listing_digest,
    scan_mosaics,
    unreadable_reason,
)
from astrocurate.io.mosaic_names import mosaic_name
from astrocurate.io.wcs import celestial_wcs, icrs_to_pixel, pixel_scale_arcsec, world_to_icrs

__all__ = [
    "Mosaic",
    "MosaicFile",
    "MosaicScan",
    "discover_mosaics",
    "file_fingerprint",
    "fingerprint_mismatch",
    "fits_problem",
    "is_fits_file",
    "listing_digest",
    "open_mosaic",
    "scan_mosaics",
    "unreadable_reason",
]


_GZIP_MAGIC = b"\x1f\x8b"
_FITS_MAGIC = b"SIMPLE  ="
_FINGERPRINT_VERSION = b"astrocurate-fingerprint-v1"


# --------------------------------------------------------------------------------------
# File checks
# --------------------------------------------------------------------------------------


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def fits_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a FITS file, or None if it starts like one.

    Checks the ``SIMPLE  =`` card at the start of the file, through gzip when the file is
    gzip-compressed. Does not check the rest of the file.

    Parameters
    ----------
    path : str or PathLike
        File to check.

    Returns
    -------
    str or None
        A short reason (``"empty file"``, ``"not a FITS file ..."``), or None.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file"
        if _is_gzip(path):
            with gzip.open(path, "rb") as fh:
                head = fh.read(len(_FITS_MAGIC))
            if not head:
                return "empty gzip stream"
        else:
            with open(path, "rb") as fh:
                head = fh.read(len(_FITS_MAGIC))
    except (OSError, EOFError, zlib.error) as exc:
        return f"cannot read file: {exc}"
    if head != _FITS_MAGIC:
        return f"not a FITS file (starts with {head[:9]!r}, not 'SIMPLE  =')"
    return None


def is_fits_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with a FITS ``SIMPLE`` card (read through gzip)."""
    return fits_problem(path) is None


def _fingerprint_offsets(size: int, head_tail: int, n_samples: int, sample: int) -> list[tuple]:
    """(offset, length) of the blocks hashed by :func:`file_fingerprint`."""
    blocks = [(0, min(head_tail, size)), (max(0, size - head_tail), min(head_tail, size))]
    for i in range(1, n_samples + 1):
        offset = (size * i // (n_samples + 1)) // 4096 * 4096
        blocks.append((offset, min(sample, size - offset)))
    return sorted(set(blocks))


def file_fingerprint(
    path: str | os.PathLike[str],
    *,
    head_tail_bytes: int = 1 << 20,
    n_samples: int = 16,
    sample_bytes: int = 1 << 16,
) -> dict[str, Any]:
    """Cheap content fingerprint of a (large) file.

    SHA-256 of the size, the first and last ``head_tail_bytes`` and ``n_samples`` evenly
    spaced blocks of ``sample_bytes`` (about 3 MiB read with the defaults, whatever the
    file size). A changed header, a truncated, re-written or replaced file changes it; an
    edit confined to unsampled bytes does not (that is the price of not reading 400 MB).

    Parameters
    ----------
    path : str or PathLike
        File to fingerprint.
    head_tail_bytes, n_samples, sample_bytes : int
        Sampling; keep the defaults so that fingerprints compare.

    Returns
    -------
    dict
        ``size`` (bytes, int), ``mtime_ns`` (int; informative, not part of the digest) and
        ``sha256_sampled`` (hex str).
    """
    path = Path(path)
    st = path.stat()
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    digest.update(st.st_size.to_bytes(8, "little"))
    with open(path, "rb") as fh:
        for offset, length in _fingerprint_offsets(
            st.st_size, head_tail_bytes, n_samples, sample_bytes
        ):
            fh.seek(offset)
            digest.update(offset.to_bytes(8, "little"))
            digest.update(fh.read(length))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_sampled": digest.hexdigest()}


def fingerprint_mismatch(path: str | os.PathLike[str], expected: dict[str, Any]) -> str | None:
    """Why ``path`` no longer matches a fingerprint, or None if it matches.

    Compares size and sampled digest (not the modification time, which a copy changes).

    Parameters
    ----------
    path : str or PathLike
        The file as it is now.
    expected : dict
        A fingerprint from :func:`file_fingerprint`.

    Returns
    -------
    str or None
        A one-line reason naming the file, or None.
    """
    path = Path(path)
    if not path.is_file():
        return f"{path}: file no longer exists"
    now = file_fingerprint(path)
    if now["size"] != expected["size"]:
        return f"{path}: size changed from {expected['size']} to {now['size']} bytes"
    if now["sha256_sampled"] != expected["sha256_sampled"]:
        return f"{path}: content changed (sampled checksum differs)"
    return None


# --------------------------------------------------------------------------------------
# Opening a mosaic
# --------------------------------------------------------------------------------------


_Compression = Literal["gzip", "tile"] | None
_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, IndexError, zlib.error)


class Mosaic:
    """An open FITS mosaic; use :func:`open_mosaic` to create one.

    Attributes
    ----------
    name : str
        Mosaic name.
    path : Path
        Absolute path of the file.
    shape : tuple of int
        ``(ny, nx)`` of the 2-D image (degenerate axes squeezed away).
    hdu_index : int
        Index of the image HDU in the file (0 = primary).
    header : astropy.io.fits.Header
        Header of the image HDU (for tile-compressed files: the image header). It still
        holds BSCALE/BZERO/BLANK, which :meth:`read_rows` has already applied.
    wcs : astropy.wcs.WCS or None
        2-D celestial WCS of the image, or None (see ``wcs_problem``).
    wcs_problem : str or None
        Why ``wcs`` is None (for one warning per mosaic), else None.
    pixel_scale_arcsec : float
        Geometric mean pixel scale in arcsec, NaN without a celestial WCS.
    stored_dtype : numpy.dtype
        Data type of the stored values (before scaling).
    compression : {"gzip", "tile", None}
        How the data are stored on disk.
    open_warnings : tuple of str
        Warnings astropy emitted while opening the file (FITS verification etc.).
    """

    def __init__(
        self,
        path: Path,
        name: str,
        hdul: fits.HDUList,
        choice: ImageChoice,
        compression: _Compression,
        open_warnings: Iterable[str] = (),
    ) -> None:
        hdu = hdul[choice.index]
        self.path = path
        self.name = name
        self.hdu_index = choice.index
        self.header: fits.Header = hdu.header
        ny, nx = (choice.full_shape[a] for a in choice.image_axes)
        self.shape: tuple[int, int] = (ny, nx)
        self.compression = compression
        self.stored_dtype = np.dtype(BITPIX_DTYPES[int(hdu.header["BITPIX"])])
        self.open_warnings = tuple(open_warnings)
        self.wcs, self.wcs_problem = celestial_wcs(hdu.header, choice.full_shape, choice.image_axes)
        self.pixel_scale_arcsec = pixel_scale_arcsec(self.wcs)
        self._hdul = hdul
        self._choice = choice
        self._scaling = Scaling.from_header(hdu.header)
        self._cache: tuple[int, int, np.ndarray] | None = None  # last band (gzip / tile)
        self._reading = threading.Lock()  # one stream position and cache: one read at a time
        self._row_reader: MappedRows | GzipRows | None = None
        self._memmap: np.ndarray | None = None  # plain files: for read_region
        self._read_raw = self._make_raw_reader(hdu)

    # -- reading ------------------------------------------------------------------------

    def _make_raw_reader(self, hdu: Any) -> Callable[..., np.ndarray]:
        """Build the function (y0, y1) -> stored values of rows y0:y1, shape (y1 - y0, nx).

        For plain files it is a :class:`MappedRows`, which also copies into a given array; in
        gzip a :class:`GzipRows`.
        """
        ny, nx = self.shape
        if isinstance(hdu, fits.CompImageHDU):
            return self._read_section
        offset = int(hdu.fileinfo()["datLoc"])
        if self.compression == "gzip":
            self._row_reader = GzipRows(self.path, offset, nx, self.stored_dtype.str)
        else:
            self._row_reader = MappedRows(self.path, offset, nx, self.stored_dtype.str)
            # opened with memmap=True and without scaling: a view, no read
            self._memmap = hdu.data.reshape(ny, nx)
        return self._row_reader

    def _read_section(self, y0: int, y1: int) -> np.ndarray:
        """Rows through astropy's ``section`` (decompresses only the tiles needed)."""
        key: list[int | slice] = [0] * len(self._choice.full_shape)
        ay, ax = self._choice.image_axes
        key[ay] = slice(y0, y1)
        key[ax] = slice(None)
        return np.asarray(self._hdul[self.hdu_index].section[tuple(key)])

    def _read_band(self, y0: int, y1: int) -> np.ndarray:
        """Rows y0:y1 as float32, reusing the cached previous band for compressed files."""
        if self._plain_float32:
            return self._read_raw(y0, y1, np.empty((y1 - y0, self.shape[1]), np.float32))
        if self.compression is None:
            return self._scaling.apply(self._read_raw(y0, y1), owned=True)
        return self._read_compressed(y0, y1)

    def _read_into(self, y0: int, y1: int, out: np.ndarray, step: int = 1) -> np.ndarray:
        """Rows y0:y1:step as float32 into ``out``: straight from the map for plain float32."""
        if self._plain_float32:
            return self._read_raw(y0, y1, out, step)  # the copy from the map swaps the bytes
        np.copyto(out, self._read_band(y0, y1)[::step])
        return out

    @property
    def _plain_float32(self) -> bool:
        """Uncompressed float32 without scaling: the stored values are the pixels."""
        stored = self.stored_dtype
        return self._scaling.is_identity and self.compression is None and stored == np.dtype(">f4")

    def _read_compressed(self, y0: int, y1: int) -> np.ndarray:
        """Rows y0:y1 of a gzip or tile-compressed file, reusing the cached previous band."""
        cached = self._cache
        if cached is not None and cached[0] <= y0 and y1 <= cached[1]:
            return cached[2][y0 - cached[0] : y1 - cached[0]].copy()
        if cached is not None and cached[0] <= y0 < cached[1] < y1:
            head = cached[2][y0 - cached[0] :]
            tail = self._scaling.apply(self._read_raw(cached[1], y1))
            band = np.concatenate([head, tail])
        else:
            band = self._scaling.apply(self._read_raw(y0, y1))
        self._cache = (y0, y1, band.copy())
        return band

    def _check_rows(self, y0: int, y1: int) -> tuple[int, int]:
        ny = self.shape[0]
        y0, y1 = int(y0), int(y1)
        if not 0 <= y0 <= y1 <= ny:
            raise IndexError(f"rows {y0}:{y1} outside 0:{ny} of mosaic {self.name}")
        return y0, y1

    def read_rows(
        self, y0: int, y1: int, out: np.ndarray | None = None, step: int = 1
    ) -> np.ndarray:
        """Read a band of rows at full width, or every ``step``-th row of it.

        Only these rows are read from an uncompressed file; gzip and tile-compressed files
        decompress what they must (see the module notes). Threads may call it at once:
        reads of one mosaic take turns (they share one stream position). BSCALE/BZERO are
        applied and BLANK pixels of integer images become NaN.

        Parameters
        ----------
        y0, y1 : int
            Row range, ``0 <= y0 <= y1 <= ny``.
        out : numpy.ndarray, optional
            C-contiguous float32 array of shape ``(n, nx)`` to read into (an uncompressed
            float32 file is read straight into it, without a new array).
        step : int
            Read rows ``y0, y0 + step, ...`` below ``y1`` only: ``n = len(range(y0, y1,
            step))`` rows (an uncompressed float32 file copies only those).

        Returns
        -------
        numpy.ndarray
            float32, shape ``(n, nx)``: ``out``, or a new array owned by the caller.

        Raises
        ------
        IndexError
            If the rows are outside the image.
        InvalidMosaicError
            If the file cannot be read (corrupt or truncated data).
        """
        y0, y1 = self._check_rows(y0, y1)
        if self._hdul is None:
            raise ValueError(f"mosaic {self.name} is closed")
        if step != 1 and out is None:
            out = np.empty((len(range(y0, y1, step)), self.shape[1]), np.float32)
        try:
            with self._reading:
                if out is None:
                    return self._read_band(y0, y1)
                return self._read_into(y0, y1, out, step)
        except _READ_ERRORS as exc:
            raise InvalidMosaicError(
                f"{self.path}: cannot read rows {y0}:{y1} ({type(exc).__name__}: {exc})"
            ) from exc

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Read ``data[y0:y1, x0:x1]`` as float32 (see :meth:`read_rows`).

        For an uncompressed file only the pixels of the region are read.

        Parameters
        ----------
        y0, y1, x0, x1 : int
            Row and column ranges inside the image.

        Returns
        -------
        numpy.ndarray
            float32, shape ``(y1 - y0, x1 - x0)``.
        """
        nx = self.shape[1]
        if not 0 <= int(x0) <= int(x1) <= nx:
            raise IndexError(f"columns {x0}:{x1} outside 0:{nx} of mosaic {self.name}")
        if self._memmap is not None:
            y0, y1 = self._check_rows(y0, y1)
            return self._scaling.apply(self._memmap[y0:y1, int(x0) : int(x1)])
        return np.ascontiguousarray(self.read_rows(y0, y1)[:, int(x0) : int(x1)])

    def read_windows(
        self, y0: np.ndarray, x0: np.ndarray, w: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Read the windows ``data[y0[i]:y0[i] + w, x0[i]:x0[i] + w]`` as float32.

        An uncompressed float file copies each window out of its memory map, converting
        as it copies; scaled integers are gathered and scaled; a compressed file
        decompresses the band of rows the windows span once (see :meth:`read_rows`), so
        windows close together (a batch of a sliding-window manifest) cost one band.

        Parameters
        ----------
        y0, x0 : array_like of int, shape (n,)
            Top-left corners.
        w : int
            Side of the windows.
        out : numpy.ndarray, optional
            C-contiguous float32 array of shape ``(n, w, w)`` to read into.

        Returns
        -------
        numpy.ndarray
            float32, shape ``(n, w, w)``: ``out``, or a new array.

        Raises
        ------
        IndexError
            If a window is not inside the image.
        """
        y0, x0, w = np.asarray(y0, np.int64), np.asarray(x0, np.int64), int(w)
        ny, nx = self.shape
        if out is None:
            out = np.empty((len(y0), w, w), np.float32)
        if not len(y0):
            return out
        if y0.min() < 0 or x0.min() < 0 or y0.max() + w > ny or x0.max() + w > nx:
            raise IndexError(f"windows of {w} px outside {ny}x{nx} pixels of mosaic {self.name}")
        view = np.lib.stride_tricks.sliding_window_view
        mapped, scaling = self._memmap, self._scaling
        if mapped is not None and self.stored_dtype.kind == "f" and scaling.is_identity:
            for window, y, x in zip(out, y0.tolist(), x0.tolist(), strict=True):
                np.copyto(window, mapped[y : y + w, x : x + w])  # one pass: swap and copy
        elif mapped is not None:
            np.copyto(out, scaling.apply(view(mapped, (w, w))[y0, x0], owned=True))
        else:
            top = int(y0.min())
            np.copyto(out, view(self.read_rows(top, int(y0.max()) + w), (w, w))[y0 - top, x0])
        return out

    # -- coordinates --------------------------------------------------------------------

    def pixel_to_icrs(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Sky position of pixel positions.

        Parameters
        ----------
        x, y : array_like
            0-based column and row positions (numpy order), broadcastable.

        Returns
        -------
        ra, dec : numpy.ndarray
            float64 degrees in ICRS, broadcast shape of ``x`` and ``y``; all NaN when the
            mosaic has no celestial WCS. Galactic, FK5, FK4, ... frames are converted.
        """
        xb, yb = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, np.float64))
        if self.wcs is None:
            nan = np.full(xb.shape, np.nan)
            return nan, nan.copy()
        return world_to_icrs(self.wcs, xb, yb)

    def icrs_to_pixel(self, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel positions ``(x, y)`` of ICRS positions in degrees.

        Raises
        ------
        InvalidMosaicError
            If the mosaic has no celestial WCS.
        """
        if self.wcs is None:
            raise InvalidMosaicError(f"{self.path}: {self.wcs_problem or 'no celestial WCS'}")
        return icrs_to_pixel(self.wcs, ra, dec)

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._memmap = None
        self._cache = None
        if self._row_reader is not None:
            self._row_reader.close()
            self._row_reader = None
        if self._hdul is not None:
            self._hdul.close()
            self._hdul = None

    def __enter__(self) -> Mosaic:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        ny, nx = self.shape
        wcs = "no WCS" if self.wcs is None else f'{self.pixel_scale_arcsec:.3g}"/px'
        return f"Mosaic({self.name!r}, {ny}x{nx}, HDU {self.hdu_index}, {wcs}, {self.path})"


def _check_compressed_complete(mosaic: Mosaic, hdu: Any) -> None:
    """Raise InvalidMosaicError if the image data of a gzip/tile-compressed file are cut.

    gzip: the gzip trailer (ISIZE = uncompressed size mod 2**32) must equal the end of
    the image HDU; otherwise (HDU not last in the file, multi-member gzip, truncation) the
    last row is read, which decompresses the whole file. Tile-compressed: the last row is
    read (one row of tiles).
    """
    if mosaic.compression == "gzip" and not isinstance(hdu, fits.CompImageHDU):
        info = hdu.fileinfo()
        start = int(info["datLoc"])
        ends = {start + int(info["datSpan"]), start + stored_nbytes(hdu.header, mosaic._choice)}
        with open(mosaic.path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = int.from_bytes(fh.read(4), "little")
        if isize in {e % 2**32 for e in ends}:
            return
    ny = mosaic.shape[0]
    mosaic.read_rows(ny - 1, ny)  # raises InvalidMosaicError when truncated or corrupt


def open_mosaic(
    source: str | os.PathLike[str] | MosaicFile,
    name: str | None = None,
) -> Mosaic:
    """Open a FITS mosaic for reading by bands of rows.

    The image is the first HDU (primary or extension, tile-compressed included) whose
    image has exactly two axes longer than 1; length-1 axes (radio FREQ/STOKES) are
    squeezed and the WCS reduced to its celestial part. The file is checked for
    truncation on opening.

    Parameters
    ----------
    source : str, PathLike or MosaicFile
        The FITS file.
    name : str, optional
        Mosaic name; defaults to the MosaicFile's name or :func:`mosaic_name`.

    Returns
    -------
    Mosaic
        Open mosaic; use as a context manager or call :meth:`Mosaic.close`.

    Raises
    ------
    InvalidMosaicError
        One line naming the file and why: missing or unreadable, not a FITS file,
        corrupt or truncated, no 2-D image, zero-size image.
    UnsupportedCubeError
        If the only images are cubes (more than two axes longer than 1).
    """
    if isinstance(source, MosaicFile):
        path, name = source.path, name or source.name
    else:
        path = Path(os.path.abspath(os.fspath(source)))
    name = name or mosaic_name(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise InvalidMosaicError(f"{path}: file {what}")
    problem = fits_problem(path)
    if problem is not None:
        raise InvalidMosaicError(f"{path}: {problem}")
    compression: _Compression = "gzip" if _is_gzip(path) else None
    hdul, choice, messages = open_image_hdu(path)
    hdu = hdul[choice.index]
    if isinstance(hdu, fits.CompImageHDU) and compression is None:
        compression = "tile"
    mosaic = None
    try:
        if compression is None:
            check_plain_size(path, hdu, choice)
        mosaic = Mosaic(path, name, hdul, choice, compression, messages)
        if compression is not None:
            _check_compressed_complete(mosaic, hdu)
    except Exception as exc:
        if mosaic is not None:
            mosaic.close()
        else:
            hdul.close()
        if isinstance(exc, InvalidMosaicError):
            raise
        raise InvalidMosaicError(corrupt_message(path, exc)) from exc
    return mosaic
