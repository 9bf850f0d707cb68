"""What describes a backbone without building it: no torch, no weights loaded.

A feature run's reuse key holds the backbone's dimension, layer, preprocessing and
weights hash. For the weight-free scattering family these follow from the name alone, so
:func:`describe_backbone` returns them without importing torch: a rerun that reuses a
finished feature run answers in a fraction of a second. The same checks and the same
description serve :func:`~astrocurate.algorithms.backbones.registry.create_backbone`,
which builds the module on top of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
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
    "describe_backbone",
    "register_description",
    "reject",
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
        The name it was described from.
    dim : int
        Feature dimension.
    preprocessing : Preprocessing
        Input size, channels and standardisation the module expects.
    layer : str
        What gives the vector.
    weights_sha256 : str or None
        SHA-256 of the weights; None for weight-free or random-init models.
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


Describer = Callable[[str, Options], BackboneCard]
#: Name prefixes (or whole names) whose card follows from the name and options alone.
_DESCRIBERS: dict[str, Describer] = {}


def register_description(prefix: str, describer: Describer) -> None:
    """Let names equal to or starting with ``prefix`` be described by ``describer``."""
    _DESCRIBERS[prefix] = describer


def describe_backbone(name: Any, **options: Any) -> BackboneCard | None:
    """Return the card of backbone ``name`` if it can be known without building it.

    Parameters
    ----------
    name : str
        A backbone name (see :func:`~astrocurate.algorithms.backbones.list_backbones`).
    **options
        The keyword arguments of
        :func:`~astrocurate.algorithms.backbones.registry.create_backbone`.

    Returns
    -------
    BackboneCard or None
        The card :func:`create_backbone` would give, checked the same way; None when the
        backbone must be built to be described (weights, timm or transformers models).
    """
    name, checked = check_options(name, **options)
    _register_builtin()
    for prefix, describer in _DESCRIBERS.items():
        if name == prefix or (prefix.endswith("-") and name.startswith(prefix)):
            return describer(name, checked)
    return None


def _register_builtin() -> None:
    """Register the torch-free describers shipped with the package (once)."""
    if not _DESCRIBERS:
        from astrocurate.algorithms.backbones.scattering_spec import scattering_card

        register_description("scattering", scattering_card)
        register_description("scattering-", scattering_card)
