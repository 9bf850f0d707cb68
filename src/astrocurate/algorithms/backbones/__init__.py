"""Feature backbones: a registry of named models and the code that builds each family.

The public API: :func:`create_backbone` and :func:`list_backbones` (:mod:`.registry`),
the :class:`Backbone` they return with its :class:`Preprocessing` (:mod:`.base`), the
scattering names (:mod:`.scattering`) and :class:`WeightsError` (:mod:`.weights`).
"""

from astrocurate.algorithms.backbones.base import Backbone, Preprocessing
from astrocurate.algorithms.backbones.channels import CHANNEL_MODES
from astrocurate.algorithms.backbones.registry import (
    create_backbone,
    list_backbones,
    register_backbone,
)
from astrocurate.algorithms.backbones.scattering import ScatteringSpec, parse_scattering_name
from astrocurate.algorithms.backbones.weights import WeightsError

__all__ = [
    "CHANNEL_MODES",
    "Backbone",
    "Preprocessing",
    "ScatteringSpec",
    "WeightsError",
    "create_backbone",
    "list_backbones",
    "parse_scattering_name",
    "register_backbone",
]
