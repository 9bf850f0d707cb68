"""Describe a backbone without building it: no torch, no weights loaded.

A feature run's reuse key holds the backbone's dimension, layer, preprocessing and
weights hash. For the weight-free scattering family these follow from the name alone, so
:func:`describe_backbone` returns them without importing torch: a rerun that reuses a
finished feature run answers in a fraction of a second. The same checks and the same card
serve :func:`~astrocurate.algorithms.backbones.registry.create_backbone`, which builds the
module on top of them.
"""

from __future__ import annotations

from typing import Any

from astrocurate.algorithms.backbones.scattering_spec import is_scattering, scattering_card
from astrocurate.algorithms.backbones.spec import BackboneCard, check_options

__all__ = ["describe_backbone"]


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
    if is_scattering(name):
        return scattering_card(name, checked)
    return None
