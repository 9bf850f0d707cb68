"""The 2-D image inside a FITS file: its HDU, its completeness, its stored values.

Which HDU holds the image, whether the file holds all its data, and how the stored
values become float32.

Used by :func:`astrocurate.io.mosaics.open_mosaic`; the errors here are the ones it raises.
"""

from __future__ import annotations

import gzip
import math
import mmap
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from astrocurate.errors import AstrocurateError

__all__ = [
    "BITPIX_DTYPES",
    "GzipRows",
    "ImageChoice",
    "InvalidMosaicError",
    "MappedRows",
    "Scaling",
    "UnsupportedCubeError",
    "check_plain_size",
    "corrupt_message",
    "open_image_hdu",
    "stored_nbytes",
]

#: numpy dtype (big-endian) of each FITS BITPIX.
BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


class InvalidMosaicError(AstrocurateError, ValueError):
    """A file that cannot be used as a mosaic; the message names the file and why."""


class UnsupportedCubeError(InvalidMosaicError):
    """A FITS image with more than two non-degenerate axes (a real cube)."""


_IMAGE_HDU_TYPES = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)


@dataclass(frozen=True)
class ImageChoice:
    """The HDU chosen as the mosaic image and how its axes map to (ny, nx)."""

    index: int
    full_shape: tuple[int, ...]  # numpy order, degenerate axes included
    image_axes: tuple[int, int]  # numpy axes of (y, x) in full_shape


def _hdu_label(hdu: Any) -> str:
    shape = "x".join(str(n) for n in getattr(hdu, "shape", ()) or ()) or "empty"
    return f"{type(hdu).__name__} ({shape})"


def _choose_image_hdu(hdul: fits.HDUList, path: Path) -> ImageChoice:
    """First HDU with exactly two axes longer than 1; explain when there is none."""
    seen: list[str] = []
    cube: str | None = None
    zero_size: str | None = None
    for index, hdu in enumerate(hdul):
        seen.append(_hdu_label(hdu))
        if not isinstance(hdu, _IMAGE_HDU_TYPES) or isinstance(hdu, fits.GroupsHDU):
            continue
        shape = tuple(int(n) for n in (hdu.shape or ()))
        if not shape:
            continue
        if 0 in shape:
            zero_size = zero_size or f"HDU {index} is a zero-size image (shape {shape})"
            continue
        long_axes = tuple(i for i, n in enumerate(shape) if n > 1)
        if len(long_axes) == 2:
            return ImageChoice(index, shape, (long_axes[0], long_axes[1]))
        if len(long_axes) > 2 and cube is None:
            cube = f"HDU {index} has shape {shape}: {len(long_axes)} axes longer than 1"
    if cube is not None:
        raise UnsupportedCubeError(f"{path}: unsupported cube, {cube}; need a 2-D image")
    if zero_size is not None:
        raise InvalidMosaicError(f"{path}: {zero_size}")
    raise InvalidMosaicError(f"{path}: no 2-D image HDU (found {', '.join(seen) or 'none'})")


@dataclass(frozen=True)
class Scaling:
    """BSCALE/BZERO/BLANK of the stored values (FITS: physical = BZERO + BSCALE * stored)."""

    bscale: float
    bzero: float
    blank: int | None

    @classmethod
    def from_header(cls, header: fits.Header) -> Scaling:
        """Read the scaling keywords of an image header (BLANK only for integer data)."""
        blank = header.get("BLANK")
        is_int = int(header.get("BITPIX", -32)) > 0
        return cls(
            bscale=float(header.get("BSCALE", 1.0)),
            bzero=float(header.get("BZERO", 0.0)),
            blank=int(blank) if blank is not None and is_int else None,
        )

    @property
    def is_identity(self) -> bool:
        """Whether stored values are the pixels (BSCALE 1, BZERO 0)."""
        return self.bscale == 1.0 and self.bzero == 0.0

    def apply(self, raw: np.ndarray, owned: bool = False) -> np.ndarray:
        """Convert stored values (any dtype) to a new float32 array with blanks as NaN.

        With ``owned=True`` (``raw`` is a new array nobody else holds) float32 values are
        byte-swapped in place and returned: no second band-sized allocation.
        """
        if self.is_identity:
            if owned and raw.dtype.kind == "f" and raw.dtype.itemsize == 4:
                if raw.dtype.isnative:
                    return raw
                return raw.byteswap(inplace=True).view(raw.dtype.newbyteorder())
            out = np.array(raw, dtype=np.float32)
        else:  # float64 so that 32-bit integers scale exactly before the final rounding
            out = (raw.astype(np.float64) * self.bscale + self.bzero).astype(np.float32)
        if self.blank is not None and raw.dtype.kind in "iu":
            out[raw == self.blank] = np.nan
        return out


class GzipRows:
    """Read rows of a plain image inside a gzip file, by position in the stream.

    A forward seek decompresses and skips; a backward seek restarts the stream. Length-1
    axes do not change the byte layout, so row ``y`` of the squeezed ``(ny, nx)`` image is
    ``nx`` values at ``y * nx`` from the start of the data.
    """

    def __init__(self, path: Path, data_offset: int, nx: int, dtype: str):
        self._fh = gzip.open(path, "rb")  # noqa: SIM115 (closed by close())
        self._offset = data_offset
        self._nx = nx
        self._dtype = np.dtype(dtype)
        self._row_bytes = nx * self._dtype.itemsize

    def __call__(self, y0: int, y1: int) -> np.ndarray:
        """Read the stored values of rows y0:y1 into a new array (y1 - y0, nx)."""
        start = self._offset + y0 * self._row_bytes
        if self._fh.tell() != start:
            self._fh.seek(start)
        out = np.empty((y1 - y0, self._nx), dtype=self._dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        filled = 0
        while filled < len(view):
            n = self._fh.readinto(view[filled:])
            if not n:
                missing = len(view) - filled
                raise EOFError(f"data ended {missing} bytes early in rows {y0}:{y1}")
            filled += n
        return out

    def close(self) -> None:
        """Close the stream."""
        self._fh.close()


class MappedRows:
    """Read rows of a plain (uncompressed, unzipped) image from a memory map of the file.

    A band is copied out of the map in one pass, its byte order converted on the way when
    the caller's array is native (:meth:`__call__` with ``out``): no read into a buffer
    and swap afterwards. The pages of the band are then dropped from the process
    (``MADV_DONTNEED``; they stay in the page cache), so resident memory stays bounded by
    the caller's band rather than growing to the whole file, and the pages of the next
    band of the same height are asked for (``MADV_WILLNEED``), so a disk reads them while
    the caller works on this one. Row ``y`` of the squeezed ``(ny, nx)`` image is ``nx``
    values at ``y * nx`` from the start of the data.
    """

    def __init__(self, path: Path, data_offset: int, nx: int, dtype: str):
        self._file = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self._file.close()
            raise
        self._offset = data_offset
        self._nx = nx
        self._dtype = np.dtype(dtype)
        self._row_bytes = nx * self._dtype.itemsize

    def __call__(
        self, y0: int, y1: int, out: np.ndarray | None = None, step: int = 1
    ) -> np.ndarray:
        """Copy the stored values of rows ``y0:y1:step`` into ``out`` or a new array.

        ``out``, if given, has their shape ``(len(range(y0, y1, step)), nx)`` and a dtype
        the stored one casts to safely (the native float32 of ``>f4``, say); a new array
        has the stored dtype. Only the pages of the rows taken are copied from.

        Raises
        ------
        EOFError
            If the file has been cut short since it was opened (checked before the pages
            are touched: touching a page past the end of a mapped file kills the process
            with SIGBUS, so a file cut during the copy still does; a rerun resumes).
        """
        start = self._offset + y0 * self._row_bytes
        end = start + (y1 - y0) * self._row_bytes
        size = os.fstat(self._file.fileno()).st_size
        if size < end:
            raise EOFError(f"data ended {end - size} bytes early in rows {y0}:{y1}")
        stored = np.frombuffer(self._map, self._dtype, (y1 - y0) * self._nx, start)
        try:
            stored = stored.reshape(y1 - y0, self._nx)[::step]
            if out is None:
                out = stored.copy()
            else:
                np.copyto(out, stored, casting="safe")
        finally:
            del stored  # an array over the map would keep it from closing
        self._advise(start, end, _MADV_DONTNEED)
        self._advise(end, min(len(self._map), 2 * end - start), _MADV_WILLNEED)
        return out

    def _advise(self, start: int, end: int, advice: int | None) -> None:
        """Give ``advice`` for the pages holding bytes start:end (where madvise exists)."""
        first = start - start % mmap.PAGESIZE
        if advice is not None and end > first:
            self._map.madvise(advice, first, end - first)

    def close(self) -> None:
        """Unmap and close the file."""
        self._map.close()
        self._file.close()


_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None) if hasattr(mmap.mmap, "madvise") else None
_MADV_WILLNEED = getattr(mmap, "MADV_WILLNEED", None) if hasattr(mmap.mmap, "madvise") else None


def open_image_hdu(path: Path) -> tuple[fits.HDUList, ImageChoice, list[str]]:
    """Open lazily, memory-mapped, without astropy's scaling; choose the image HDU.

    Returns the open HDU list, the choice and the warnings astropy emitted (truncation
    warnings left out: truncation is checked separately and is an error).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(
                path,
                mode="readonly",
                memmap=True,
                do_not_scale_image_data=True,
                lazy_load_hdus=True,
            )
        except Exception as exc:  # astropy raises OSError, VerifyError, ValueError, ...
            raise InvalidMosaicError(corrupt_message(path, exc)) from exc
        try:
            choice = _choose_image_hdu(hdul, path)
        except Exception as exc:
            hdul.close()
            if isinstance(exc, InvalidMosaicError):
                raise
            raise InvalidMosaicError(corrupt_message(path, exc)) from exc
    messages = [
        str(w.message)
        for w in caught
        if not issubclass(w.category, ResourceWarning) and "truncated" not in str(w.message)
    ]
    return hdul, choice, messages


def corrupt_message(path: Path, exc: BaseException) -> str:
    """One line saying that ``path`` is a corrupt FITS file, and astropy's reason."""
    return f"{path}: corrupt FITS file ({type(exc).__name__}: {exc})"


def stored_nbytes(header: fits.Header, choice: ImageChoice) -> int:
    """Bytes of the stored image data (without the padding to 2880 bytes)."""
    return abs(int(header["BITPIX"])) // 8 * math.prod(choice.full_shape)


def check_plain_size(path: Path, hdu: Any, choice: ImageChoice) -> None:
    """Raise InvalidMosaicError if an uncompressed file ends before its image data do.

    The padding of the data to a multiple of 2880 bytes may be missing.
    """
    end = int(hdu.fileinfo()["datLoc"]) + stored_nbytes(hdu.header, choice)
    size = path.stat().st_size
    if size < end:
        raise InvalidMosaicError(
            f"{path}: truncated file ({size} bytes, the image data need {end} bytes)"
        )
