"""What every backbone family shares: the result, the options, the common checks.

A family returns a :class:`Backbone`, receives the validated :class:`Options`, and uses
the small checks and poolings here.

A builder is ``builder(name, spec, options) -> Backbone``: ``name`` as given, ``spec`` the
part after a registered prefix (``'resnet18'`` in ``'timm:resnet18'``), ``options`` the
validated :class:`Options`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from astrocurate.algorithms.backbones.spec import (
    BackboneCard,
    Options,
    Preprocessing,
    check_pooling,
    reject,
)
from astrocurate.errors import InvalidArgumentError

__all__ = [
    "Backbone",
    "Builder",
    "Options",
    "Preprocessing",
    "check_pooling",
    "finish",
    "import_optional",
    "pool_tokens",
    "reject",
]


@dataclass(frozen=True)
class Backbone(BackboneCard):
    """A feature extractor: its card (what identifies its features) and its module.

    The card's fields (``name``, ``dim``, ``preprocessing``, ``layer``, ``weights_sha256``,
    ``description``: see :class:`BackboneCard`) come first, then:

    Attributes
    ----------
    module : torch.nn.Module
        Eval-mode module mapping ``(B, in_chans, S, S)`` float to ``(B, dim)`` features.
    """

    module: nn.Module = field(repr=False)

    @classmethod
    def from_card(cls, card: BackboneCard, module: nn.Module) -> Backbone:
        """Return the backbone described by ``card`` computed by ``module``."""
        return cls(**_card_fields(card), module=module)

    @property
    def card(self) -> BackboneCard:
        """What identifies the features, without the module."""
        return BackboneCard(**_card_fields(self))

    def metadata(self) -> dict[str, Any]:
        """Return what identifies the features (for a sidecar or run parameters)."""
        return {
            "backbone": self.name,
            "dim": self.dim,
            "layer": self.layer,
            "weights_sha256": self.weights_sha256,
            "description": self.description,
            **self.preprocessing.to_dict(),
        }


def _card_fields(card: BackboneCard) -> dict[str, Any]:
    """Return the :class:`BackboneCard` fields of ``card`` (a card or a backbone), by name."""
    return {f.name: getattr(card, f.name) for f in fields(BackboneCard)}


Builder = Callable[[str, str, Options], Backbone]


def finish(module: nn.Module) -> nn.Module:
    """Put ``module`` in inference state: eval mode, no gradients."""
    module.eval()
    module.requires_grad_(False)
    return module


def pool_tokens(tokens: torch.Tensor, pooling: str, num_prefix: int) -> torch.Tensor:
    """Pool a ``(B, N, D)`` token sequence whose first ``num_prefix`` are cls/registers."""
    if pooling == "cls":
        return tokens[:, 0]
    mean = tokens[:, num_prefix:].mean(dim=1)
    if pooling in ("token-mean", "avg"):
        return mean
    if pooling == "cls+token-mean":
        return torch.cat([tokens[:, 0], mean], dim=1)
    raise ValueError(f"unknown token pooling {pooling!r}")


def import_optional(module: str, purpose: str) -> Any:
    """Import an optional dependency; raise saying how to install it when missing."""
    try:
        return __import__(module)
    except ImportError as error:
        raise InvalidArgumentError(
            f"{purpose} need the {module!r} package: pip install {module}"
        ) from error
