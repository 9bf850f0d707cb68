"""Find a survey's mosaic files: a directory walk, names, a listing digest (no astropy).

The light half of :mod:`astrocurate.io.mosaics`: a step that may reuse a finished run
finds its mosaics and keys its run without importing astropy. Files are chosen by name
(:mod:`astrocurate.io.mosaic_names`); what is inside them is read by
:mod:`astrocurate.io.mosaics`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from astrocurate.io.mosaic_names import is_companion_name, is_fits_name, unique_names

__all__ = [
    "MosaicFile",
    "MosaicScan",
    "discover_mosaics",
    "listing_digest",
    "scan_mosaics",
    "unreadable_reason",
]


@dataclass(frozen=True)
class MosaicFile:
    """A FITS file found by discovery.

    Attributes
    ----------
    path : Path
        Absolute path of the file.
    name : str
        Mosaic name, unique within one discovery (see :func:`scan_mosaics`).
    relative_path : str
        POSIX path of the file relative to the discovery root.
    """

    path: Path
    name: str
    relative_path: str


@dataclass(frozen=True)
class MosaicScan:
    """Result of :func:`scan_mosaics`.

    Attributes
    ----------
    root : Path
        Absolute discovery root.
    mosaics : tuple of MosaicFile
        FITS-named files, sorted by relative path.
    ignored : tuple of Path
        Files skipped because their name is not a FITS name (or is hidden), or is the
        name of a mosaic's companion (:func:`~astrocurate.io.mosaic_names.is_companion_name`:
        an rms map, a source list), sorted.
    unreadable : tuple of Path
        Sub-directories that could not be listed and FITS-named entries that are not
        regular files (e.g. broken links), sorted.
    """

    root: Path
    mosaics: tuple[MosaicFile, ...]
    ignored: tuple[Path, ...]
    unreadable: tuple[Path, ...]

    def describe_ignored(self, max_examples: int = 3) -> str:
        """Summarise the ignored files, e.g. ``"12 other files, e.g. a.txt, b.png"``.

        Parameters
        ----------
        max_examples : int
            How many file names (relative to the root) to quote.

        Returns
        -------
        str
            The summary; ``"no other files"`` when nothing was ignored.
        """
        n = len(self.ignored)
        if n == 0:
            return "no other files"
        examples = ", ".join(
            p.relative_to(self.root).as_posix() for p in self.ignored[:max_examples]
        )
        noun = "file" if n == 1 else "files"
        return f"{n} other {noun}, e.g. {examples}"

    def describe_unreadable(self) -> str:
        """Summarise the skipped entries, e.g. ``"1 skipped, e.g. /s/x.fits (broken ...)"``.

        Returns
        -------
        str
            How many, and the first one with its reason (:func:`unreadable_reason`);
            empty when nothing was skipped.
        """
        if not self.unreadable:
            return ""
        first = self.unreadable[0]
        return f"{len(self.unreadable)} skipped, e.g. {first} ({unreadable_reason(first)})"


def _check_root(root: str | os.PathLike[str]) -> Path:
    """Absolute, normalised root; raise a clear OSError when it cannot be listed."""
    path = Path(os.path.abspath(os.fspath(root)))
    if not path.exists():
        if path.is_symlink():
            raise FileNotFoundError(
                f"mosaics path {path} is a broken symbolic link to {os.readlink(path)}"
            )
        raise FileNotFoundError(f"mosaics path {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"mosaics path {path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(f"mosaics path {path} is not readable (permission denied)")
    return path


def unreadable_reason(path: Path) -> str:
    """Why a FITS-named entry or a sub-directory could not be read, in a few words."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link to {os.readlink(path)}"
    if path.exists() and not os.access(path, os.R_OK):
        return "permission denied"
    if path.exists() and not (path.is_file() or path.is_dir()):
        return "not a regular file"
    return "cannot be read"


def _walk_files(root: Path) -> tuple[list[Path], list[Path]]:
    """All non-hidden-directory files under ``root`` (following links, once per dir)."""
    files: list[Path] = []
    unreadable: list[Path] = []
    visited: set[str] = set()

    def on_error(exc: OSError) -> None:
        unreadable.append(Path(exc.filename) if exc.filename else root)

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # symlink loop or a directory reached twice
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames)
    return files, unreadable


def _may_be_mosaic(filename: str) -> bool:
    """Tell whether a file is a visible FITS file and not a companion (rms map, source list)."""
    return (
        not filename.startswith(".") and is_fits_name(filename) and not is_companion_name(filename)
    )


def listing_digest(paths: Iterable[str | os.PathLike[str]]) -> str:
    """Hash a list of files by path, size and modification time (16 hex digits).

    A survey whose files were added, removed, replaced or touched gets another digest, so
    a step keyed by it makes a new run.
    """
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def scan_mosaics(root: str | os.PathLike[str]) -> MosaicScan:
    """Find every FITS image under ``root``, recursively, by file name.

    FITS names end with one of :data:`~astrocurate.io.mosaic_names.FITS_SUFFIXES`
    (case-insensitive). Hidden files and directories (name starting with ``.``) and a
    mosaic's companions (rms maps, source lists:
    :func:`~astrocurate.io.mosaic_names.is_companion_name`) are skipped; symbolic links are
    followed.

    Mosaic names are the file stem without FITS suffixes, or for the LoTSS layout
    ``<mosaic>/mosaic-blanked.fits`` the folder name. When several files would get the same
    name, each of those files is named after its relative path instead, with ``/``
    replaced by ``__`` and the FITS suffix dropped (``dr2/P000+23/mosaic.fits`` ->
    ``dr2__P000+23``; ``a/x.fits`` -> ``a__x``); if that still clashes (``x.fits`` beside
    ``x.fits.gz``) the suffix is kept (``x.fits``, ``x.fits.gz``); any remaining clash gets
    ``~1``, ``~2``, ... in path order.

    Parameters
    ----------
    root : str or PathLike
        Directory to search.

    Returns
    -------
    MosaicScan
        Mosaics sorted by relative path, and the files that were ignored.

    Raises
    ------
    FileNotFoundError, NotADirectoryError, PermissionError
        If ``root`` does not exist, is not a directory or cannot be listed; the message
        names the path.
    """
    root_path = _check_root(root)
    files, unreadable = _walk_files(root_path)
    if root_path in unreadable:
        raise PermissionError(f"mosaics path {root_path} could not be listed")
    candidates: list[tuple[str, Path]] = []
    ignored: list[Path] = []
    for path in files:
        if not _may_be_mosaic(path.name):
            ignored.append(path)
        elif not path.is_file():
            unreadable.append(path)
        else:
            candidates.append((path.relative_to(root_path).as_posix(), path))
    candidates.sort(key=lambda c: c[0])
    rels = [rel for rel, _ in candidates]
    names = unique_names(root_path, rels)
    mosaics = tuple(
        MosaicFile(path=path, name=name, relative_path=rel)
        for (rel, path), name in zip(candidates, names, strict=True)
    )
    return MosaicScan(root_path, mosaics, tuple(sorted(ignored)), tuple(sorted(unreadable)))


def discover_mosaics(root: str | os.PathLike[str]) -> list[MosaicFile]:
    """Find every FITS image under ``root``; see :func:`scan_mosaics` for the rules.

    Parameters
    ----------
    root : str or PathLike
        Directory to search.

    Returns
    -------
    list of MosaicFile
        Sorted by relative path, with unique names.
    """
    return list(scan_mosaics(root).mosaics)
