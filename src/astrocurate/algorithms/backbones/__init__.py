"""Feature backbones: a registry of named models and the code that builds each family.

The public API: :func:`create_backbone` and :func:`list_backbones` (:mod:`.registry`),
the :class:`Backbone` they return (:mod:`.base`), what describes one without building it
(:func:`describe_backbone` in :mod:`.describe`; :class:`BackboneCard`,
:class:`Preprocessing` in :mod:`.spec`),
the scattering names (:mod:`.scattering_spec`) and :class:`WeightsError`.

Names are imported on first use: describing a backbone needs no torch, building one does.
"""

from __future__ import annotations

from astrocurate.lazy import lazy_exports

_EXPORTS = {
    "CHANNEL_MODES": "spec",
    "Backbone": "base",
    "BackboneCard": "spec",
    "Preprocessing": "spec",
    "ScatteringSpec": "scattering_spec",
    "WeightsError": "spec",
    "create_backbone": "registry",
    "describe_backbone": "describe",
    "list_backbones": "registry",
    "parse_scattering_name": "scattering_spec",
    "register_backbone": "registry",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
