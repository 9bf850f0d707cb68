"""Feature backbones: a registry of image encoders, each carrying its own preprocessing.

:func:`create_backbone` turns a name into a :class:`Backbone`: a ``torch.nn.Module`` in
eval mode that maps a batch ``(B, in_chans, S, S)`` to features ``(B, D)``, together with
the :class:`Preprocessing` the caller must apply first (resize to ``S``, channels,
per-channel standardisation after the astronomical normalisation) and the SHA-256 of the
weights file it loaded. The package knows no files besides weights, no MLflow and no
command line. This module holds the names; each family is built in its own module
(:mod:`.scattering`, :mod:`.timm_models`, :mod:`.hf`) on the shared :mod:`.base`, with
weights from :mod:`.weights` and the channel handling of :mod:`.channels`.

Names (:func:`list_backbones`):

``scattering``, ``scattering-*``
    Wavelet scattering transforms (kymatio's filters), no weights: the offline default family.
``timm:<model>``
    Any timm model: a registry name (``timm:resnet18``,
    ``timm:vit_small_patch14_reg4_dinov2.lvd142m``), a Hugging Face Hub model
    (``timm:hf_hub:mwalmsley/zoobot-encoder-convnext_nano``) or a local export
    (``timm:local-dir:/path``).
``hf:<model id or directory>``
    A Hugging Face transformers ``AutoModel`` (e.g. a fine-tuned DINOv2 folder).
``ssl:<arch>``
    A self-supervised checkpoint (solo-learn style ``{'state_dict': {'backbone.…'}}`` or
    a plain state dict) loaded into the timm architecture ``arch``.

Weights never come from the network. ``weights=FILE`` (safetensors or a torch state
dict) is loaded strictly; with ``pretrained=True`` and no file, weights are taken from
the local Hugging Face cache (``HF_HUB_CACHE``, ``HF_HOME``) or the torch hub cache
(``TORCH_HOME``) only, and their absence is an immediate :class:`WeightsError` that says
how to provide them.

Single-channel images meet RGB networks in one of two ways (``channels``): ``'repeat'``
feeds three identical channels; ``'fold'`` sums the first convolution's weights over its
input channels so the network takes one channel. The folded network on ``x`` equals the
original on ``x`` repeated three times (up to float rounding). With ``'fold'`` the
single-channel mean and std are the averages of the network's per-channel values, so
features differ slightly from ``'repeat'``, which applies the exact per-channel values.

Examples
--------
>>> backbone = create_backbone("scattering")  # doctest: +SKIP
>>> backbone.preprocessing  # doctest: +SKIP
Preprocessing(input_size=64, in_chans=1, mean=(0.0,), std=(1.0,))
>>> features = backbone.module(torch.rand(8, 1, 64, 64))  # (8, backbone.dim)  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

from astrocurate.algorithms.backbones.base import Backbone, Builder
from astrocurate.algorithms.backbones.hf import build_hf
from astrocurate.algorithms.backbones.scattering import build_scattering
from astrocurate.algorithms.backbones.scattering_spec import SCATTERING_NAMES
from astrocurate.algorithms.backbones.spec import check_options
from astrocurate.algorithms.backbones.timm_models import build_ssl, build_timm
from astrocurate.errors import InvalidArgumentError

__all__ = ["create_backbone", "list_backbones", "register_backbone"]


@dataclass(frozen=True)
class _Entry:
    """A registered name: its builder, its description, whether it is a prefix."""

    builder: Builder
    description: str
    is_prefix: bool


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(name: str, description: str, builder: Builder) -> None:
    """Register ``builder`` under ``name``.

    Parameters
    ----------
    name : str
        A full name (``'scattering'``), or a prefix when it ends with ``':'`` or ``'-'``
        (``'timm:'`` then builds ``'timm:resnet18'`` with spec ``'resnet18'``).
    description : str
        One line for :func:`list_backbones`.
    builder : callable
        ``builder(name, spec, options) -> Backbone`` (see :mod:`.base`).
    """
    _REGISTRY[name] = _Entry(builder, description, name.endswith((":", "-")))


def list_backbones(descriptions: bool = True) -> list[str]:
    """List the registered backbone names and name prefixes.

    Parameters
    ----------
    descriptions : bool
        Append each entry's one-line description (``'name  description'``).

    Returns
    -------
    list of str
        Names, and prefixes written as ``'timm:<model>'`` etc., in registration order.
    """
    entries = list(_REGISTRY.items())  # registration order: the default family first
    shown = [f"{k}<{_PREFIX_ARG.get(k, 'name')}>" if e.is_prefix else k for k, e in entries]
    if not descriptions:
        return shown
    width = max(map(len, shown)) + 2
    return [f"{s:<{width}}{e.description}" for s, (_, e) in zip(shown, entries, strict=True)]


_PREFIX_ARG = {
    "timm:": "model",
    "hf:": "id or directory",
    "ssl:": "arch",
    "scattering-": "options",
}


def create_backbone(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    pooling: str | None = None,
    channels: str = "repeat",
    pretrained: bool = True,
    input_size: int | None = None,
    allow_pickle: bool = False,
) -> Backbone:
    """Build a registered backbone, with weights from a local file or cache only.

    Parameters
    ----------
    name : str
        A name from :func:`list_backbones`: ``'scattering'``, ``'timm:<model>'``,
        ``'hf:<model id or directory>'``, ``'ssl:<arch>'``.
    weights : path-like, optional
        Weights file (``.safetensors`` or a torch checkpoint) for ``timm:`` and
        ``ssl:``; loaded strictly (classifier/projector entries are ignored).
    arch : str, optional
        timm architecture of an ``ssl`` checkpoint (``'ssl'`` + ``arch='resnet50'`` is
        the same as ``'ssl:resnet50'``).
    pooling : str, optional
        What gives the vector. timm/hf transformers: ``'cls'`` (default when there is a
        class token), ``'token-mean'``, ``'cls+token-mean'``; timm CNNs: ``'avg'``
        (default), ``'max'``; hf: also ``'pooler'``. Scattering: ``'mean'``.
    channels : {'repeat', 'fold'}
        How a single-channel cutout meets a 3-channel network (see module docstring).
        Weight-free backbones take one channel and ignore it.
    pretrained : bool
        Without ``weights``: load the published weights from the local cache (True) or
        keep a seeded random initialisation (False, e.g. a baseline).
    input_size : int, optional
        Build for this square input side instead of the model's own (ViT position
        embeddings are resampled; the scattering filters are built for it).
    allow_pickle : bool
        Let ``torch.load`` unpickle arbitrary objects in a checkpoint (only for files you
        trust; plain state dicts and safetensors never need it).

    Returns
    -------
    Backbone

    Raises
    ------
    InvalidArgumentError
        Unknown name, option or value (the message lists the valid ones).
    WeightsError
        Weights missing locally, unreadable, or made for another architecture.
    """
    name, options = check_options(
        name,
        weights=weights,
        arch=arch,
        pooling=pooling,
        channels=channels,
        pretrained=pretrained,
        input_size=input_size,
        allow_pickle=allow_pickle,
    )
    key, spec = _resolve_name(name)
    return _REGISTRY[key].builder(name, spec, options)


def _resolve_name(name: str) -> tuple[str, str]:
    """Return the registry key ``name`` falls under and the rest of the name."""
    if name in _REGISTRY and not _REGISTRY[name].is_prefix:
        return name, ""
    for key, entry in _REGISTRY.items():
        if entry.is_prefix and name.startswith(key) and (name != key or key.endswith(":")):
            return key, name[len(key) :].strip()
    if name + ":" in _REGISTRY:  # 'ssl' without ':', arch given separately
        return name + ":", ""
    fixed = [k for k, e in _REGISTRY.items() if not e.is_prefix]
    close = difflib.get_close_matches(name, fixed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InvalidArgumentError(
        f"unknown backbone {name!r}{hint}; known: {', '.join(list_backbones(False))}"
    )


# Registration order is listing order: the default, weight-free family first.
for _name, _help in SCATTERING_NAMES.items():
    register_backbone(_name, _help, build_scattering)
register_backbone(
    "timm:", "any timm model; timm:hf_hub:REPO for Hub models such as Zoobot", build_timm
)
register_backbone(
    "ssl:", "self-supervised checkpoint (solo-learn etc.) in a timm arch (weights=)", build_ssl
)
register_backbone(
    "hf:", "Hugging Face transformers AutoModel from the cache or a local folder", build_hf
)
