"""Where a mosaic's companion files are: its source list and its noise (rms) map.

:func:`companion_file` finds a file that belongs to one mosaic (its source list:
:func:`catalogue_for_mosaic`; its noise map: :func:`rms_map_for_mosaic`) from a *spec*:

``"auto"``
    The first existing file beside the mosaic among ``auto_names`` (e.g.
    :data:`CATALOGUE_AUTO_NAMES`), with ``{stem}`` the mosaic's file name without its
    FITS suffix; for a stem ending in ``-blanked`` (LoTSS ``mosaic-blanked.fits``) the
    same names follow with that ending removed (``mosaic.srl.fits``). None if none exists.
a pattern
    A path with placeholders ``{dir}`` (the mosaic's folder), ``{stem}`` and ``{name}``
    (the mosaic's name, e.g. the folder of a LoTSS ``<field>/mosaic-blanked.fits``),
    such as ``/data/catalogues/{name}.srl.fits``. None if the file does not exist.
a path
    One survey-wide file (no placeholder), which must exist.

Names and paths only (no file is opened): the cutting step resolves companions, and keys
its run by them, before it imports what reads them (:mod:`astrocurate.io.catalogues`,
:mod:`astrocurate.io.mosaics`).
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from pathlib import Path

from astrocurate.errors import InvalidArgumentError
from astrocurate.io.mosaic_names import strip_fits_suffix

__all__ = [
    "CATALOGUE_AUTO_NAMES",
    "PLACEHOLDERS",
    "RMS_AUTO_NAMES",
    "catalogue_for_mosaic",
    "check_companion_spec",
    "companion_file",
    "rms_map_for_mosaic",
]

#: Names of a mosaic's source list beside it, in order of preference.
CATALOGUE_AUTO_NAMES: tuple[str, ...] = (
    "{stem}.srl.fits",
    "{stem}.pybdsf.srl.fits",
    "{stem}.srl.csv",
    "{stem}.pybdsf.srl.csv",
)
#: Names of a mosaic's noise (rms) map beside it, in order of preference.
RMS_AUTO_NAMES: tuple[str, ...] = (
    "{stem}.rms.fits",
    "{stem}-rms.fits",
    "{stem}_rms.fits",
    "{stem}.pybdsf_rms.fits",
)
#: Placeholders of a companion-file pattern.
PLACEHOLDERS: tuple[str, ...] = ("dir", "stem", "name")
_BLANKED = "-blanked"


def check_companion_spec(spec: str, option_name: str) -> str:
    """Check a companion-file spec: ``"auto"``, a pattern or a path (module docstring).

    Parameters
    ----------
    spec : str
        The spec as the user wrote it.
    option_name : str
        The option it comes from, for messages (``"--catalogue"``).

    Returns
    -------
    str
        ``spec``.

    Raises
    ------
    InvalidArgumentError
        Empty spec, unbalanced braces, a placeholder other than :data:`PLACEHOLDERS`, or one
        with a conversion or format (``{stem!r}``, ``{name:10}``).
    """
    expected = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgumentError(
            f"{option_name}={spec!r} must be 'auto', a path, or a pattern with {expected}"
        )
    try:
        fields = [
            (field, conversion, fmt)
            for _, field, fmt, conversion in string.Formatter().parse(spec)
            if field is not None
        ]
    except ValueError as exc:
        raise InvalidArgumentError(
            f"{option_name}={spec!r}: {exc}; expected a path with placeholders {expected}"
        ) from exc
    for field, conversion, fmt in fields:
        if field not in PLACEHOLDERS or conversion or fmt:
            text = "{" + field + (f"!{conversion}" if conversion else "")
            text += (f":{fmt}" if fmt else "") + "}"
            raise InvalidArgumentError(
                f"{option_name}={spec!r}: unknown placeholder {text}; expected {expected}"
            )
    return spec


def _is_pattern(spec: str) -> bool:
    return any(field is not None for _, field, _, _ in string.Formatter().parse(spec))


def _mosaic_stem(mosaic_path: Path) -> str:
    return strip_fits_suffix(mosaic_path.name) or mosaic_path.name


def companion_file(
    spec: str | os.PathLike[str],
    mosaic_path: str | os.PathLike[str],
    mosaic_name: str,
    auto_names: Sequence[str],
    *,
    what: str = "companion file",
) -> Path | None:
    """Resolve the file that belongs to one mosaic, from a spec.

    Parameters
    ----------
    spec : str or PathLike
        ``"auto"``, a pattern with ``{dir}``, ``{stem}`` and/or ``{name}``, or the path of
        one survey-wide file (module docstring).
    mosaic_path : str or PathLike
        The mosaic's FITS file.
    mosaic_name : str
        The mosaic's name (``MosaicFile.name``; the folder of a LoTSS
        ``<field>/mosaic-blanked.fits``).
    auto_names : sequence of str
        File names tried beside the mosaic for ``"auto"``, with ``{stem}`` (e.g.
        :data:`CATALOGUE_AUTO_NAMES`).
    what : str
        What the file is, for messages.

    Returns
    -------
    Path or None
        The file; None for ``"auto"`` when no name matches, or a pattern whose file does
        not exist (the caller warns).

    Raises
    ------
    InvalidArgumentError
        A malformed spec (:func:`check_companion_spec`), or a survey-wide path that is not
        a file.
    """
    spec = os.fspath(spec)
    mosaic = Path(os.path.abspath(os.fspath(mosaic_path)))
    stem = _mosaic_stem(mosaic)
    if spec == "auto":
        stems = [stem]
        if stem.endswith(_BLANKED) and len(stem) > len(_BLANKED):
            stems.append(stem[: -len(_BLANKED)])
        for candidate_stem in stems:
            for name in auto_names:
                candidate = mosaic.parent / name.format(stem=candidate_stem)
                if candidate.is_file():
                    return candidate
        return None
    check_companion_spec(spec, what)
    if _is_pattern(spec):
        candidate = Path(spec.format(dir=str(mosaic.parent), stem=stem, name=mosaic_name))
        return candidate if candidate.is_file() else None
    path = Path(spec)
    if not path.is_file():
        raise InvalidArgumentError(f"{what} {spec}: no such file")
    return path


def catalogue_for_mosaic(
    spec: str | os.PathLike[str], mosaic_path: str | os.PathLike[str], mosaic_name: str
) -> Path | None:
    """Source list of a mosaic: :func:`companion_file` with :data:`CATALOGUE_AUTO_NAMES`."""
    return companion_file(spec, mosaic_path, mosaic_name, CATALOGUE_AUTO_NAMES, what="catalogue")


def rms_map_for_mosaic(
    spec: str | os.PathLike[str], mosaic_path: str | os.PathLike[str], mosaic_name: str
) -> Path | None:
    """Noise (rms) map of a mosaic: :func:`companion_file` with :data:`RMS_AUTO_NAMES`."""
    return companion_file(spec, mosaic_path, mosaic_name, RMS_AUTO_NAMES, what="rms map")
