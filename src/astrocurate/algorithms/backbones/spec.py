"""What describes a backbone without building it, and the checks every family shares.

No torch here: :mod:`.describe` uses these types to describe a backbone without building
it, and every builder receives the checked :class:`Options` and returns its
:class:`BackboneCard` with a module (:class:`~astrocurate.algorithms.backbones.base.Backbone`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from astrocurate.errors import AstrocurateError, InvalidArgumentError
from astrocurate.validation import check_int

__all__ = [
    "CHANNEL_MODES",
    "BackboneCard",
    "Options",
    "Preprocessing",
    "WeightsError",
    "check_options",
    "check_pooling",
    "reject",
    "sha256",
]

CHANNEL_MODES: tuple[str, ...] = ("repeat", "fold")


class WeightsError(AstrocurateError, ValueError):
    """Weights are missing, unreadable, or do not fit the requested architecture."""


@dataclass(frozen=True)
class Preprocessing:
    """What the caller must do to a cutout before it reaches a backbone's module.

    Attributes
    ----------
    input_size : int
        Square side ``S`` the module expects (resize to it).
    in_chans : int
        Channels fed to the module: 1, or 3 identical copies of the cutout.
    mean, std : tuple of float
        Per-channel standardisation ``(x - mean[c]) / std[c]``, applied after the
        astronomical normalisation; ``len == in_chans``.
    """

    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as plain JSON-serialisable values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class BackboneCard:
    """Everything that identifies a backbone's features, without its module.

    Attributes
    ----------
    name : str
        The name it was described from (``'scattering'``, ``'timm:resnet18'``, ...).
    dim : int
        Feature dimension ``D``.
    preprocessing : Preprocessing
        Input size, channels and standardisation the module expects.
    layer : str
        What gives the vector: ``'cls'``, ``'token-mean'``, ``'avg'``, ``'pooler'``,
        ``'scattering-logmean'``, ...
    weights_sha256 : str or None
        SHA-256 of the weights file(s) loaded; None for weight-free or random-init models.
    description : str
        One line for humans and run metadata.
    """

    name: str
    dim: int
    preprocessing: Preprocessing
    layer: str
    weights_sha256: str | None
    description: str


@dataclass(frozen=True)
class Options:
    """Validated options shared by every builder."""

    weights: Path | None
    arch: str | None
    pooling: str | None
    channels: str
    pretrained: bool
    input_size: int | None
    allow_pickle: bool


def check_options(
    name: Any,
    *,
    weights: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    pooling: str | None = None,
    channels: str = "repeat",
    pretrained: bool = True,
    input_size: int | None = None,
    allow_pickle: bool = False,
) -> tuple[str, Options]:
    """Check the options every backbone shares; return the stripped name and :class:`Options`.

    Raises
    ------
    InvalidArgumentError
        An empty name, an unknown channel mode, a bad input size.
    WeightsError
        ``weights`` is not a file.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"backbone name must be a non-empty string, got {name!r}")
    if channels not in CHANNEL_MODES:
        raise InvalidArgumentError(
            f"channels={channels!r} is not valid; valid values: {', '.join(CHANNEL_MODES)}"
        )
    if input_size is not None:
        check_int("input_size", input_size, minimum=8)
    path = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {str(path)!r} does not exist or is not a file")
    size = None if input_size is None else int(input_size)
    options = Options(path, arch, pooling, channels, bool(pretrained), size, allow_pickle)
    return name.strip(), options


def reject(options: Options, name: str, *fields: str) -> None:
    """Raise when an option that ``name`` does not use was given."""
    for option in fields:
        value = getattr(options, option)
        if value is not None:
            raise InvalidArgumentError(f"{option}={value!s} does not apply to backbone {name!r}")


def check_pooling(name: str, pooling: str, valid: Iterable[str]) -> str:
    """Return ``pooling`` when it is one of ``valid``; raise naming the valid ones."""
    valid = tuple(valid)
    if pooling not in valid:
        raise InvalidArgumentError(
            f"pooling={pooling!r} is not valid for backbone {name!r}; valid: {', '.join(valid)}"
        )
    return pooling


def sha256(*paths: Path) -> str:
    """SHA-256 of the concatenated bytes of ``paths`` (one file: its usual hash)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
