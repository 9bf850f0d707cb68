"""Mosaic names from FITS file names: suffixes, the LoTSS layout, unique names.

A mosaic is named after its file stem (``P000+23.fits.gz`` -> ``P000+23``), or after its
folder for the LoTSS layout ``<mosaic>/mosaic-blanked.fits``; :func:`unique_names`
disambiguates the names of one discovery.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

__all__ = [
    "COMPANION_MARKERS",
    "FITS_SUFFIXES",
    "LOTSS_FILE_STEMS",
    "is_companion_name",
    "is_fits_name",
    "mosaic_name",
    "strip_fits_suffix",
    "unique_names",
]

#: File-name endings recognised as FITS images (matched case-insensitively).
FITS_SUFFIXES: tuple[str, ...] = (
    ".fits.fz",
    ".fits.gz",
    ".fit.gz",
    ".fts.gz",
    ".fits",
    ".fit",
    ".fts",
    ".fz",
)
#: File stems of the LoTSS layout ``<mosaic>/mosaic-blanked.fits``: named after the folder.
LOTSS_FILE_STEMS: frozenset[str] = frozenset({"mosaic", "mosaic-blanked"})
#: Stem endings of the files a source finder writes beside a mosaic (PyBDSF, the LoTSS
#: releases): noise (rms) and residual maps, masks, source and Gaussian lists. Such files are
#: a mosaic's companions, never mosaics themselves (matched case-insensitively).
COMPANION_MARKERS: tuple[str, ...] = (
    ".rms",
    "-rms",
    "_rms",
    ".pybdsf_rms",
    ".resid",
    ".pybdsf_gaus_resid",
    ".pybdsmmask",
    ".mask",
    ".srl",
    ".gaul",
    ".cat",
)


def strip_fits_suffix(filename: str) -> str | None:
    """Return ``filename`` without its FITS suffix, or None if it has none.

    Parameters
    ----------
    filename : str
        A file name (no directory part).

    Returns
    -------
    str or None
        The stem, e.g. ``"P000+23"`` for ``"P000+23.fits.gz"``.
    """
    lower = filename.lower()
    for suffix in FITS_SUFFIXES:  # longest first where one is a suffix of another
        if lower.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


def is_fits_name(filename: str) -> bool:
    """Whether ``filename`` ends with one of :data:`FITS_SUFFIXES` (case-insensitive)."""
    return strip_fits_suffix(filename) is not None


def is_companion_name(filename: str) -> bool:
    """Whether ``filename`` is a FITS file a source finder writes beside a mosaic.

    E.g. ``mosaic.rms.fits``, ``P000+23_rms.fits`` or ``image.pybdsf.srl.fits``: its stem
    ends with one of :data:`COMPANION_MARKERS`.
    """
    stem = strip_fits_suffix(filename)
    return stem is not None and stem.lower().endswith(COMPANION_MARKERS)


def mosaic_name(path: str | os.PathLike[str]) -> str:
    """Name of a mosaic from its path, before any disambiguation.

    The file stem without FITS suffixes; for the LoTSS layout ``<mosaic>/mosaic.fits`` and
    ``<mosaic>/mosaic-blanked.fits`` (any FITS suffix) the parent folder's name.

    Parameters
    ----------
    path : str or PathLike
        Path of the file.

    Returns
    -------
    str
        The mosaic name.
    """
    p = Path(os.path.abspath(os.fspath(path)))
    stem = strip_fits_suffix(p.name) or p.name
    if stem.lower() in LOTSS_FILE_STEMS and p.parent.name:
        return p.parent.name
    return stem


def _relative_name(relative_path: str, keep_suffix: bool) -> str:
    """Relative path made into a name: ``a/b/x.fits`` -> ``a__b__x`` (or ``a__b__x.fits``)."""
    rel = PurePosixPath(relative_path)
    stem = strip_fits_suffix(rel.name) or rel.name
    if keep_suffix:
        parts = rel.parts
    elif stem.lower() in LOTSS_FILE_STEMS and len(rel.parts) > 1:
        parts = rel.parts[:-1]
    else:
        parts = (*rel.parts[:-1], stem)
    return "__".join(parts)


def unique_names(root: Path, relative_paths: Sequence[str]) -> list[str]:
    """Assign unique mosaic names, renaming only the files whose names clash.

    Clashing names are replaced, in turn, by the relative path without FITS suffix
    (``/`` -> ``__``), then with the suffix kept, then by appending ``~1``, ``~2``, ... in
    sorted-path order. Names that do not clash are never changed.
    """
    names = [mosaic_name(root / rel) for rel in relative_paths]
    renamers: list[Callable[[str], str]] = [
        lambda rel: _relative_name(rel, keep_suffix=False),
        lambda rel: _relative_name(rel, keep_suffix=True),
    ]
    for rename in renamers:
        clashing = {n for n, c in Counter(names).items() if c > 1}
        if not clashing:
            return names
        names = [
            rename(rel) if n in clashing else n
            for rel, n in zip(relative_paths, names, strict=True)
        ]
    seen: Counter[str] = Counter()
    counts = Counter(names)
    unique = []
    for n in names:
        if counts[n] > 1:
            seen[n] += 1
            n = f"{n}~{seen[n]}"
        unique.append(n)
    return unique
