"""Training-ready exports of a curated sample: NumPy, HDF5, FITS and PNG.

Every writer reads the pixels through :class:`~astrocurate.io.cutout_store.CutoutReader`,
in chunks (memory is bounded by ``chunk`` cutouts, not by the sample), and makes each
file appear atomically under its final name. Layout under the export directory::

    npy/cutouts_w<W>.npy    float32 (n_W, W, W): the curated cutouts of side W, in the
                            order of the curated manifest
    npy/manifest.parquet    the curated manifest plus ``export_file`` / ``export_row``
    cutouts.h5              group ``w<W>`` per window size: dataset ``images``
                            (n_W, W, W) float32 and one dataset per numeric manifest column
    fits/<cutout_id>.fits   one image per cutout, its header the mosaic's celestial WCS
                            shifted to the cutout (CRPIX minus the cutout's origin)
    png/<cutout_id>.png     8-bit previews, one asinh stretch shared by every cutout

A sample usually mixes window sizes (the guide cuts 64 and 128 px), so NumPy and HDF5
hold one array per size rather than resampling anything. FITS and PNG files already
written are kept when an interrupted export is rerun.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate.errors import InvalidArgumentError
from astrocurate.io.atomic import atomic_path
from astrocurate.io.cutout_store import MANIFEST, CutoutReader, NpyStackWriter, write_parquet_atomic

EXPORT_FORMATS = ("npy", "hdf5", "fits", "png")
#: Percentiles of the pixels of the sample that set the PNG stretch.
PNG_PERCENTILES = (1.0, 99.7)
#: Softening of the asinh stretch, as a fraction of the stretch range.
PNG_SOFTENING = 0.02


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """Return the export formats in canonical order; refuse unknown ones.

    Parameters
    ----------
    formats : sequence of str
        Names from :data:`EXPORT_FORMATS` (repetitions are ignored).

    Raises
    ------
    InvalidArgumentError
        Naming the unknown format and the valid ones.
    """
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise InvalidArgumentError(
            f"--export: unknown format {unknown[0]!r}; expected some of {', '.join(EXPORT_FORMATS)}"
        )
    return tuple(f for f in EXPORT_FORMATS if f in formats)


def export_sample(
    manifest: pd.DataFrame,
    reader: CutoutReader,
    directory: Path,
    formats: Sequence[str],
    *,
    mosaics: pd.DataFrame | None = None,
    chunk: int = 512,
) -> dict[str, int]:
    """Write the curated cutouts in each of ``formats`` under ``directory``.

    Parameters
    ----------
    manifest : DataFrame
        The curated manifest: merged-manifest rows with ``cutout_id`` (the reader's row),
        ``window_size``, ``x0``, ``y0``, ``mosaic_path``.
    reader : CutoutReader
        Reader of the merged run the cutout IDs refer to.
    directory : Path
        Export directory (created).
    formats : sequence of str
        Any of :data:`EXPORT_FORMATS`.
    mosaics : DataFrame, optional
        The merged run's mosaics table (``mosaic_path``, ``wcs_header``), for FITS headers.
    chunk : int
        Cutouts read at a time.

    Returns
    -------
    dict of str to int
        Files written per format.
    """
    formats = check_formats(formats)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    if "npy" in formats:
        written["npy"] = export_npy(manifest, reader, directory / "npy", chunk)
    if "hdf5" in formats:
        written["hdf5"] = export_hdf5(manifest, reader, directory / "cutouts.h5", chunk)
    if "fits" in formats:
        written["fits"] = export_fits(manifest, reader, directory / "fits", mosaics, chunk)
    if "png" in formats:
        written["png"] = export_png(manifest, reader, directory / "png", chunk)
    return written


def _chunks(manifest: pd.DataFrame, chunk: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(manifest), chunk):
        yield manifest.iloc[start : start + chunk]


def _read(reader: CutoutReader, rows: pd.DataFrame) -> list[np.ndarray]:
    """Pixels of ``rows`` (any mix of sizes), float32, in the rows' order."""
    ids = rows["cutout_id"].to_numpy(dtype=np.int64)
    sizes = rows["window_size"].to_numpy()
    images: list[np.ndarray] = [np.empty(0, np.float32)] * len(ids)
    for size in np.unique(sizes):
        where = np.flatnonzero(sizes == size)
        block = reader.read(ids[where])
        for i, image in zip(where, block, strict=True):
            images[i] = np.asarray(image, dtype=np.float32)
    return images


def export_npy(manifest: pd.DataFrame, reader: CutoutReader, directory: Path, chunk: int) -> int:
    """Write a float32 ``.npy`` stack per window size and ``manifest.parquet``; count files."""
    directory.mkdir(parents=True, exist_ok=True)
    table = manifest.reset_index(drop=True).copy()
    table["export_file"] = ""
    table["export_row"] = np.int64(-1)
    for size, group in table.groupby("window_size", sort=True):
        name = f"cutouts_w{int(size)}.npy"
        table.loc[group.index, "export_file"] = name
        table.loc[group.index, "export_row"] = np.arange(len(group), dtype=np.int64)
        writer = NpyStackWriter(directory / name, int(size))
        try:
            for part in _chunks(group, chunk):
                writer.append(np.stack(_read(reader, part)))
        except BaseException:
            writer.abort()
            raise
        writer.close()
    write_parquet_atomic(table, directory / MANIFEST)
    return table["window_size"].nunique() + 1


def export_hdf5(manifest: pd.DataFrame, reader: CutoutReader, path: Path, chunk: int) -> int:
    """One HDF5 file, a group per window size with ``images`` and the numeric columns."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs["description"] = "astrocurate curated cutouts: one group per window size"
        for size, group in manifest.groupby("window_size", sort=True):
            node = handle.create_group(f"w{int(size)}")
            images = node.create_dataset(
                "images", shape=(len(group), int(size), int(size)), dtype="float32"
            )
            done = 0
            for part in _chunks(group, chunk):
                images[done : done + len(part)] = np.stack(_read(reader, part))
                done += len(part)
            for column in group.columns:
                values = group[column].to_numpy()
                if values.dtype.kind in "iuf":
                    node.create_dataset(column, data=values)
                else:
                    text = values.astype(str).astype(object)
                    node.create_dataset(column, data=text, dtype=h5py.string_dtype())
    return 1


def cutout_header(wcs_header: str, x0: int, y0: int) -> Any:
    """FITS header of a cutout: its mosaic's celestial WCS with the reference pixel shifted.

    Parameters
    ----------
    wcs_header : str
        The mosaic's WCS header cards separated by newlines (empty without a WCS).
    x0, y0 : int
        0-based column and row of the cutout's first pixel in the mosaic.

    Returns
    -------
    astropy.io.fits.Header
        FITS pixel ``(i, j)`` of the cutout is FITS pixel ``(i + x0, j + y0)`` of the mosaic.
    """
    from astropy.io import fits

    if not wcs_header:
        return fits.Header()
    header = fits.Header.fromstring(wcs_header, sep="\n")
    header["CRPIX1"] = header.get("CRPIX1", 0.0) - x0
    header["CRPIX2"] = header.get("CRPIX2", 0.0) - y0
    return header


def export_fits(
    manifest: pd.DataFrame,
    reader: CutoutReader,
    directory: Path,
    mosaics: pd.DataFrame | None,
    chunk: int,
) -> int:
    """One FITS file per cutout with a shifted WCS; return files written (existing kept)."""
    from astropy.io import fits

    directory.mkdir(parents=True, exist_ok=True)
    headers = {}
    if mosaics is not None and "wcs_header" in mosaics:
        headers = dict(zip(mosaics["mosaic_path"], mosaics["wcs_header"].fillna(""), strict=True))
    todo = manifest[[not (directory / f"{i}.fits").is_file() for i in manifest["cutout_id"]]]
    for part in _chunks(todo, chunk):
        for row, image in zip(part.itertuples(index=False), _read(reader, part), strict=True):
            header = cutout_header(headers.get(row.mosaic_path, ""), int(row.x0), int(row.y0))
            header["CUTOUTID"] = (int(row.cutout_id), "row of the merged manifest")
            header["MOSAIC"] = (str(row.mosaic)[:68], "source mosaic")
            header["X0"] = (int(row.x0), "0-based column of the first pixel in the mosaic")
            header["Y0"] = (int(row.y0), "0-based row of the first pixel in the mosaic")
            target = directory / f"{row.cutout_id}.fits"
            with atomic_path(target, sync=False) as tmp:
                fits.PrimaryHDU(image, header=header).writeto(tmp, overwrite=True)
    return len(todo)


def png_stretch(images: Sequence[np.ndarray]) -> tuple[float, float]:
    """Low and high pixel values of the shared PNG stretch (:data:`PNG_PERCENTILES`)."""
    pixels = np.concatenate([np.ravel(i) for i in images]) if images else np.zeros(1)
    pixels = pixels[np.isfinite(pixels)]
    if pixels.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(pixels, PNG_PERCENTILES)
    return float(low), float(high if high > low else low + 1.0)


def to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Asinh stretch of ``image`` between ``low`` and ``high`` to 0..255, flipped FITS-style."""
    scaled = np.clip((np.nan_to_num(image, nan=low) - low) / (high - low), 0.0, 1.0)
    stretched = np.arcsinh(scaled / PNG_SOFTENING) / np.arcsinh(1.0 / PNG_SOFTENING)
    return np.flipud((stretched * 255.0 + 0.5).astype(np.uint8))


def export_png(manifest: pd.DataFrame, reader: CutoutReader, directory: Path, chunk: int) -> int:
    """8-bit PNG previews with one stretch for the whole sample; return files written."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    probe = manifest.sample(n=min(len(manifest), 256), random_state=0)
    low, high = png_stretch(_read(reader, probe))
    todo = manifest[[not (directory / f"{i}.png").is_file() for i in manifest["cutout_id"]]]
    for part in _chunks(todo, chunk):
        for cutout_id, image in zip(part["cutout_id"], _read(reader, part), strict=True):
            target = directory / f"{cutout_id}.png"
            with atomic_path(target, sync=False) as tmp:
                Image.fromarray(to_uint8(image, low, high)).save(tmp, format="PNG")
    (directory / "stretch.txt").write_text(
        f"asinh stretch, softening {PNG_SOFTENING}, between {low!r} and {high!r} "
        f"(percentiles {PNG_PERCENTILES} of up to 256 sampled cutouts); north up\n"
    )
    return len(todo)
