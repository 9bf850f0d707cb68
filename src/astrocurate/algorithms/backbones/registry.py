"""Feature backbones: a registry of image encoders, each carrying its own preprocessing.

:func:`create_backbone` turns a name into a :class:`Backbone`: a ``torch.nn.Module`` in
eval mode that maps a batch ``(B, in_chans, S, S)`` to features ``(B, D)``, together with
the :class:`Preprocessing` the caller must apply first (resize to ``S``, channels,
per-channel standardisation after the astronomical normalisation) and the SHA-256 of the
weights file it loaded. This module knows no files besides weights, no MLflow and no
command line.

Names (:func:`list_backbones`):

``scattering``, ``scattering-*``
    Wavelet scattering transforms (kymatio), no weights: the offline default family.
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

import contextlib
import copy
import difflib
import functools
import hashlib
import inspect
import json
import numbers
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from astrocurate.errors import AstrocurateError, InvalidArgumentError

__all__ = [
    "CHANNEL_MODES",
    "Backbone",
    "Preprocessing",
    "ScatteringSpec",
    "WeightsError",
    "create_backbone",
    "list_backbones",
    "parse_scattering_name",
]

CHANNEL_MODES: tuple[str, ...] = ("repeat", "fold")
"""Ways of feeding single-channel images to a 3-channel network."""

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

# Top-level names of checkpoint entries that are never part of a feature extractor
# (classifier heads, SSL projectors/predictors, momentum copies). Ignored when the
# model has no such key; every key the model has must still be in the file.
_HEAD_KEYS = frozenset(
    {
        "fc",
        "head",
        "heads",
        "head_dist",
        "classifier",
        "projector",
        "predictor",
        "prototypes",
        "momentum_backbone",
        "momentum_projector",
        "momentum_classifier",
    }
)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


class WeightsError(AstrocurateError, ValueError):
    """Weights are missing, unreadable, or do not fit the requested architecture."""


@dataclass(frozen=True)
class Preprocessing:
    """What the caller must do to a cutout before it reaches :attr:`Backbone.module`.

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


@dataclass
class Backbone:
    """A feature extractor and everything needed to feed it and to record it.

    Attributes
    ----------
    name : str
        The name it was created from (``'scattering'``, ``'timm:resnet18'``, ...).
    module : torch.nn.Module
        Eval-mode module mapping ``(B, in_chans, S, S)`` float to ``(B, dim)`` features.
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
    module: nn.Module = field(repr=False)
    dim: int
    preprocessing: Preprocessing
    layer: str
    weights_sha256: str | None
    description: str

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


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Options:
    """Validated options shared by every builder."""

    weights: Path | None
    arch: str | None
    pooling: str | None
    channels: str
    pretrained: bool
    input_size: int | None
    allow_pickle: bool


Builder = Callable[[str, str, _Options], Backbone]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    description: str
    is_prefix: bool


_REGISTRY: dict[str, _Entry] = {}


def _register(name: str, description: str) -> Callable[[Builder], Builder]:
    """Register ``builder`` under ``name`` (a prefix when it ends with ``':'`` or ``'-'``)."""

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[name] = _Entry(builder, description, name.endswith((":", "-")))
        return builder

    return decorate


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
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"backbone name must be a non-empty string, got {name!r}")
    name = name.strip()
    if channels not in CHANNEL_MODES:
        raise InvalidArgumentError(
            f"channels={channels!r} is not valid; valid values: {', '.join(CHANNEL_MODES)}"
        )
    if input_size is not None and (
        isinstance(input_size, bool) or not isinstance(input_size, numbers.Integral)
    ):
        raise InvalidArgumentError(f"input_size={input_size!r} must be an integer >= 8")
    if input_size is not None and input_size < 8:
        raise InvalidArgumentError(f"input_size={input_size!r} must be an integer >= 8")
    key, spec = _resolve_name(name)
    path = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {str(path)!r} does not exist or is not a file")
    size = None if input_size is None else int(input_size)
    options = _Options(path, arch, pooling, channels, bool(pretrained), size, allow_pickle)
    return _REGISTRY[key].builder(name, spec, options)


def _resolve_name(name: str) -> tuple[str, str]:
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


def _reject(options: _Options, name: str, *fields: str) -> None:
    """Raise when an option that ``name`` does not use was given."""
    for option in fields:
        value = getattr(options, option)
        if value is not None:
            raise InvalidArgumentError(f"{option}={value!s} does not apply to backbone {name!r}")


def _check_pooling(name: str, pooling: str, valid: Iterable[str]) -> str:
    valid = tuple(valid)
    if pooling not in valid:
        raise InvalidArgumentError(
            f"pooling={pooling!r} is not valid for backbone {name!r}; valid: {', '.join(valid)}"
        )
    return pooling


def _finish(module: nn.Module) -> nn.Module:
    """Put ``module`` in inference state: eval mode, no gradients."""
    module.eval()
    module.requires_grad_(False)
    return module


# ------------------------------------------------------------------------- scattering


@dataclass(frozen=True)
class ScatteringSpec:
    """Parameters of a scattering feature variant (name: ``scattering[-option...]``).

    Attributes
    ----------
    J : int
        Number of dyadic scales; the widest wavelet spans about ``2**J`` px (option ``jN``).
    L : int
        Number of orientations over 180 degrees (option ``lN``).
    size : int
        Default input side in px.
    rotation_invariant : bool
        Average the energies over absolute orientation, keeping relative angles
        (order 1: per scale; order 2: per scale pair and angle difference), so a source
        gives the same vector whatever its position angle (option ``rot``).
    renormalise : bool
        Divide each order-1 energy by the order-0 one and each order-2 energy by its
        order-1 parent (a difference of logs): the vector then describes shape rather
        than brightness, apart from the order-0 term (option ``renorm``).
    max_pool : bool
        Append the spatial maximum of every energy to the spatial mean: compact bright
        structure is not diluted by the background of a large cutout (option ``max``).
    spatial : bool
        Append the means over the four quadrants (positional information; option
        ``spatial``).
    eps : float
        Floor of ``log(eps + energy)``: below the energy of faint emission in an image
        normalised to about [0, 1], so the noise floor stays informative, and well
        above float rounding.
    """

    J: int = 3
    L: int = 8
    size: int = 64
    rotation_invariant: bool = False
    renormalise: bool = False
    max_pool: bool = False
    spatial: bool = False
    eps: float = 1e-4

    @property
    def layer(self) -> str:
        """Describe the vector (for :attr:`Backbone.layer`)."""
        parts = ["scattering-logmean"]
        parts += ["rot"] * self.rotation_invariant + ["renorm"] * self.renormalise
        return "-".join(parts) + "+max" * self.max_pool + "+2x2" * self.spatial


_SCATTERING_FLAGS = {
    "rot": "rotation_invariant",
    "renorm": "renormalise",
    "max": "max_pool",
    "spatial": "spatial",
}


def parse_scattering_name(name: str) -> ScatteringSpec:
    """Return the :class:`ScatteringSpec` a scattering backbone name stands for.

    Names are ``scattering`` followed by any of ``-jN``, ``-lN``, ``-rot``, ``-renorm``,
    ``-max``, ``-spatial`` (see :class:`ScatteringSpec`), e.g. ``scattering-j4-renorm``.

    Raises
    ------
    InvalidArgumentError
        For an unknown or repeated option.
    """
    options: dict[str, Any] = {}
    tokens = name.split("-")[1:] if name != "scattering" else []
    for token in tokens:
        if token in _SCATTERING_FLAGS:
            key, value = _SCATTERING_FLAGS[token], True
        elif token[:1] in ("j", "l") and token[1:].isdigit():
            key, value = token[0].upper(), int(token[1:])
            low, high = (1, 6) if key == "J" else (1, 16)
            if not low <= value <= high:
                raise InvalidArgumentError(
                    f"{name}: {token} must have {key} in [{low}, {high}], got {value}"
                )
        else:
            raise InvalidArgumentError(
                f"unknown scattering option {token!r} in {name!r}; options: jN (scales), "
                f"lN (orientations), {', '.join(_SCATTERING_FLAGS)}"
            )
        if key in options:
            raise InvalidArgumentError(f"{name}: option {token!r} is given twice")
        options[key] = value
    return ScatteringSpec(**options)


class ScatteringFeatures(nn.Module):
    """Spatially pooled log-energies of a 2-D wavelet scattering transform (kymatio).

    ``forward`` maps ``(B, C, S, S)`` (channels averaged) to ``(B, dim)``: for every
    scattering path (order 0, 1, 2; or every rotation group) ``log(eps + mean_xy S)``,
    optionally renormalised by the parent path and extended by the spatial maximum and
    the quadrant means. Always computed in float32, also under autocast; a cutout's
    features do not depend on the rest of the batch.
    """

    def __init__(self, spec: ScatteringSpec, size: int) -> None:
        super().__init__()
        self.spec = spec
        self.size = size
        self.scattering = copy.deepcopy(_scattering_transform(spec.J, spec.L, size))
        paths = _scattering_paths(self.scattering.psi)
        groups = _orientation_groups(paths, spec.L, spec.rotation_invariant)
        matrix = torch.zeros(len(paths), len(groups))
        for column, members in enumerate(groups):
            matrix[members, column] = 1.0 / len(members)
        parents = _parent_columns([paths[g[0]] for g in groups], spec.L, spec.rotation_invariant)
        self.register_buffer("group_matrix", matrix, persistent=False)
        self.register_buffer("parent", torch.tensor([max(p, 0) for p in parents]), persistent=False)
        self.register_buffer("has_parent", torch.tensor([float(p >= 0) for p in parents]), False)
        blocks = 1 + spec.max_pool + 4 * spec.spatial
        self.dim = len(groups) * blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(B, dim)`` float32 features of ``(B, C, S, S)`` images."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            x = x.mean(dim=1) if x.shape[1] > 1 else x[:, 0]
            coeffs = self.scattering(x.contiguous())  # (B, paths, h, w)
            pooled = [coeffs.mean(dim=(-2, -1))]
            if self.spec.max_pool:
                pooled.append(coeffs.amax(dim=(-2, -1)))
            if self.spec.spatial:
                h, w = coeffs.shape[-2] // 2, coeffs.shape[-1] // 2
                for rows in (slice(0, h), slice(h, None)):
                    for cols in (slice(0, w), slice(w, None)):
                        pooled.append(coeffs[..., rows, cols].mean(dim=(-2, -1)))
            return torch.cat([self._log_energy(p) for p in pooled], dim=1)

    def _log_energy(self, pooled: torch.Tensor) -> torch.Tensor:
        energy = torch.log((pooled @ self.group_matrix).clamp_min(0) + self.spec.eps)
        if self.spec.renormalise:
            energy = energy - energy[:, self.parent] * self.has_parent
        return energy


Path_ = tuple[tuple[int, ...], tuple[int, ...]]  # (scales j, orientations theta)


@functools.lru_cache(maxsize=8)
def _scattering_transform(n_scales: int, n_angles: int, size: int) -> nn.Module:
    """Build kymatio's transform once per shape (its filter bank takes seconds); copy it."""
    # kymatio's top-level package imports its 3-D part, which breaks on SciPy >= 1.17
    # (scipy.special.sph_harm removed); the 2-D torch frontend alone works.
    try:
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as error:
        raise InvalidArgumentError(
            f"scattering backbones need the 'kymatio' package (pip install kymatio): {error}"
        ) from error
    return ScatteringTorch2D(J=n_scales, shape=(size, size), L=n_angles)


def _scattering_paths(psi: list[dict]) -> list[Path_]:
    """Return ``(j, theta)`` of every output channel of kymatio's 2-D scattering, in order."""
    paths: list[Path_] = [((), ())]
    paths += [((f["j"],), (f["theta"],)) for f in psi]
    for f1 in psi:
        for f2 in psi:
            if f2["j"] > f1["j"]:
                paths.append(((f1["j"], f2["j"]), (f1["theta"], f2["theta"])))
    return paths


def _group_key(path: Path_, n_angles: int, rotation_invariant: bool) -> tuple:
    scales, thetas = path
    if not rotation_invariant:
        return path
    return scales, tuple((t - thetas[0]) % n_angles for t in thetas[1:])


def _orientation_groups(paths: list[Path_], n_angles: int, rotation_invariant: bool) -> list:
    """Group the path indices that differ only by a global rotation (or not at all)."""
    groups: dict[tuple, list[int]] = {}
    for index, path in enumerate(paths):
        groups.setdefault(_group_key(path, n_angles, rotation_invariant), []).append(index)
    return list(groups.values())


def _parent_columns(columns: list[Path_], n_angles: int, rotation_invariant: bool) -> list[int]:
    """Return the column of each column's parent path (order 2 -> 1 -> 0); -1 for order 0."""
    where = {_group_key(p, n_angles, rotation_invariant): c for c, p in enumerate(columns)}
    parents = []
    for scales, thetas in columns:
        parent = ((scales[0],), (thetas[0],)) if len(scales) == 2 else ((), ())
        parents.append(where[_group_key(parent, n_angles, rotation_invariant)] if scales else -1)
    return parents


_SCATTERING_HELP = {
    "scattering": "wavelet scattering J=3 L=8 at 64 px, log of spatial mean; no weights",
    "scattering-j4": "scattering with 4 scales (structures up to ~16 px at 64 px)",
    "scattering-j4-renorm": "J=4, order 1/2 divided by their parents: shape over brightness",
    "scattering-j4-rot-renorm-max": "J=4, rotation-invariant, renormalised, mean+max pooled",
    "scattering-spatial": "J=3, global and 2x2 quadrant means (positional information)",
    "scattering-": "any combination of options jN, lN, rot, renorm, max, spatial",
}


def _build_scattering(name: str, spec_text: str, options: _Options) -> Backbone:
    spec = parse_scattering_name(name)
    _reject(options, name, "weights", "arch")
    _check_pooling(name, options.pooling or "mean", ("mean",))
    size = options.input_size or spec.size
    step = 2**spec.J
    if size % step or size < 2 * step:
        raise InvalidArgumentError(
            f"input_size={size} must be a multiple of 2**J={step} and at least {2 * step} "
            f"for backbone {name!r}"
        )
    module = _finish(ScatteringFeatures(spec, size))
    return Backbone(
        name=name,
        module=module,
        dim=module.dim,
        preprocessing=Preprocessing(size, 1, (0.0,), (1.0,)),
        layer=spec.layer,
        weights_sha256=None,
        description=f"kymatio 2-D scattering J={spec.J} L={spec.L} at {size} px, {spec.layer}",
    )


for _name, _help in _SCATTERING_HELP.items():
    _register(_name, _help)(_build_scattering)


# ------------------------------------------------------------------------------ timm


class TimmFeatures(nn.Module):
    """A timm model without classifier, with the pooling that gives the vector."""

    def __init__(self, model: nn.Module, pooling: str, native: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.native = native  # the model's own pooled output is the requested vector
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(B, D)`` features of ``(B, C, S, S)`` images."""
        if self.native:
            return self.model(x).flatten(1)
        return _pool_tokens(self.model.forward_features(x), self.pooling, self.num_prefix_tokens)


def _pool_tokens(tokens: torch.Tensor, pooling: str, num_prefix: int) -> torch.Tensor:
    """Pool a ``(B, N, D)`` token sequence whose first ``num_prefix`` are cls/registers."""
    if pooling == "cls":
        return tokens[:, 0]
    mean = tokens[:, num_prefix:].mean(dim=1)
    if pooling in ("token-mean", "avg"):
        return mean
    if pooling == "cls+token-mean":
        return torch.cat([tokens[:, 0], mean], dim=1)
    raise ValueError(f"unknown token pooling {pooling!r}")


@_register("timm:", "any timm model; timm:hf_hub:REPO for Hub models such as Zoobot")
def _build_timm(name: str, spec: str, options: _Options) -> Backbone:
    _reject(options, name, "arch")
    if not spec:
        raise InvalidArgumentError(
            "timm: needs a model name, e.g. 'timm:resnet18' or "
            "'timm:vit_small_patch14_reg4_dinov2.lvd142m'"
        )
    return _timm_backbone(name, spec, options)


@_register("ssl:", "self-supervised checkpoint (solo-learn etc.) in a timm arch (weights=)")
def _build_ssl(name: str, spec: str, options: _Options) -> Backbone:
    arch = spec or options.arch
    if not arch:
        raise InvalidArgumentError(
            "ssl backbones need an architecture: 'ssl:resnet18' or arch='resnet18'"
        )
    if spec and options.arch and options.arch != spec:
        raise InvalidArgumentError(f"arch={options.arch!r} contradicts the name {name!r}")
    if options.weights is None:
        raise InvalidArgumentError(
            f"backbone {name!r} needs weights=CHECKPOINT (the self-supervised checkpoint)"
        )
    return _timm_backbone(f"ssl:{arch}", arch, options, kind="self-supervised checkpoint")


def _timm_backbone(name: str, model_name: str, options: _Options, kind: str = "timm") -> Backbone:
    timm = _import("timm", "timm models")
    source, model_id = _parse_timm_name(model_name)
    weights = options.weights
    if source == "hf-hub":
        folder = _hf_snapshot(model_id, "config.json")
        if folder is None:
            raise WeightsError(
                _missing_hub_message(
                    name, model_id, "config.json", "pass --weights FILE with timm:<architecture>"
                )
            )
        create_name = f"local-dir:{folder}"
    elif source == "local-dir":
        folder = Path(model_id).expanduser()
        if not (folder / "config.json").is_file():
            raise WeightsError(f"{name}: no timm config.json in {str(folder)!r}")
        create_name = f"local-dir:{folder}"
    else:
        folder = None
        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.7)
            hint = f"; close: {', '.join(close)}" if close else ""
            raise InvalidArgumentError(
                f"{name}: {model_name!r} is not a timm model{hint} (timm.list_models() lists them)"
            )
        create_name = model_name

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if options.input_size and _timm_fixed_size(timm, create_name, folder):
        kwargs["img_size"] = options.input_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a random-init baseline is the same every time
        try:
            model = timm.create_model(create_name, **kwargs)
        except (RuntimeError, ValueError, TypeError) as error:
            raise InvalidArgumentError(f"{name}: timm cannot build it: {error}") from error

    pooling, native = _timm_pooling(name, model, options.pooling)  # before reading weights
    if weights is None and options.pretrained:
        weights = _timm_local_weights(name, model, source, model_id, folder)
    sha = None
    if weights is not None:
        state = _read_state_dict(weights, options.allow_pickle)
        _load_strict(model, state, weights, f"{kind} {model_name}")
        sha = _sha256(weights)
    if options.channels == "fold":
        _fold_first_conv(model, name)
    module = _finish(TimmFeatures(model, pooling, native))
    config = timm.data.resolve_data_config({}, model=model)
    size = options.input_size or int(config["input_size"][-1])
    dim = _timm_dim(model, pooling, native)
    origin = f"weights {weights.name}" if weights is not None else "random init (seed 0)"
    return Backbone(
        name=name,
        module=module,
        dim=dim,
        preprocessing=_rgb_preprocessing(size, config["mean"], config["std"], options.channels),
        layer=pooling,
        weights_sha256=sha,
        description=(
            f"{kind} {model_name}, {pooling} pooling, {origin}, channels={options.channels}"
        ),
    )


def _parse_timm_name(model_name: str) -> tuple[str | None, str]:
    head, sep, rest = model_name.partition(":")
    if sep and head.lower() in ("hf_hub", "hf-hub"):
        return "hf-hub", rest
    if sep and head.lower() == "local-dir":
        return "local-dir", rest
    return None, model_name


def _timm_fixed_size(timm: Any, create_name: str, folder: Path | None) -> bool:
    """Whether the model is built for one input size (ViTs: position embeddings)."""
    if folder is not None:
        config = json.loads((folder / "config.json").read_text())
        cfg = config.get("pretrained_cfg", config)
        return bool(cfg.get("fixed_input_size", False))
    cfg = timm.models.get_pretrained_cfg(create_name)
    return bool(getattr(cfg, "fixed_input_size", False))


def _timm_pooling(name: str, model: nn.Module, pooling: str | None) -> tuple[str, bool]:
    """Resolve the pooling; return it and whether the model's own output gives it."""
    tokens = hasattr(model, "num_prefix_tokens") and hasattr(model, "forward_features")
    if tokens:
        global_pool = str(getattr(model, "global_pool", "") or "none")
        own = {"token": "cls", "avg": "token-mean"}.get(global_pool, global_pool)
        has_cls = getattr(model, "cls_token", None) is not None
        valid = dict.fromkeys(
            [own, "cls", "token-mean", "cls+token-mean"] if has_cls else [own, "token-mean"]
        )
        chosen = _check_pooling(name, pooling or own, valid)
        return chosen, chosen == own
    chosen = _check_pooling(name, pooling or "avg", ("avg", "max"))
    if chosen != "avg":
        model.reset_classifier(0, global_pool=chosen)
    return chosen, True


def _timm_dim(model: nn.Module, pooling: str, native: bool) -> int:
    if native:
        return int(getattr(model, "head_hidden_size", None) or model.num_features)
    width = int(getattr(model, "embed_dim", None) or model.num_features)
    return 2 * width if pooling == "cls+token-mean" else width


def _timm_local_weights(
    name: str, model: nn.Module, source: str | None, model_id: str, folder: Path | None
) -> Path:
    """Find the published weights of a timm model in the local caches, or raise."""
    if folder is not None:
        found = _weights_in_folder(folder)
        if found:
            return found[0]
        where = f"the Hub cache folder {folder}" if source == "hf-hub" else str(folder)
        raise WeightsError(f"{name}: no weights file ({', '.join(_WEIGHT_FILES)}) in {where}")
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    repo = cfg.get("hf_hub_id")
    if repo:
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(_WEIGHT_FILES)
        for filename in names:
            snapshot = _hf_snapshot(repo, filename)
            if snapshot is not None:
                return snapshot / filename
    url = cfg.get("url")
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if cached.is_file():
            return cached
    if not repo and not url:
        raise WeightsError(
            f"{name}: timm publishes no pretrained weights for {model_id!r}; "
            "pass weights=FILE, or pretrained=False for a random initialisation"
        )
    return _raise_missing(name, repo, url)


def _raise_missing(name: str, repo: str | None, url: str | None) -> Path:
    if repo:
        raise WeightsError(_missing_hub_message(name, repo, "weights", "pass --weights FILE"))
    raise WeightsError(
        f"{name}: pretrained weights are not in the local torch hub cache "
        f"({Path(torch.hub.get_dir()) / 'checkpoints'}) and astrocurate never downloads; "
        f"fetch {url} on a machine with internet into that folder (TORCH_HOME sets it), "
        "or pass --weights FILE"
    )


def _rgb_preprocessing(
    size: int, mean: Iterable[float], std: Iterable[float], channels: str
) -> Preprocessing:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if channels == "fold":
        return Preprocessing(size, 1, (sum(mean) / len(mean),), (sum(std) / len(std),))
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return Preprocessing(size, 3, mean, std)


# ------------------------------------------------------------------- hf transformers


class HFFeatures(nn.Module):
    """A transformers ``AutoModel`` with the pooling that gives the vector."""

    def __init__(self, model: nn.Module, pooling: str, num_prefix: int) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.num_prefix = num_prefix
        params = inspect.signature(model.forward).parameters
        self._kwargs = (
            {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(B, D)`` features of ``(B, C, S, S)`` images."""
        out = self.model(pixel_values=x, **self._kwargs)
        if self.pooling == "pooler":
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if hidden.ndim == 4:  # CNN feature map (B, C, H, W)
            return hidden.mean(dim=(-2, -1))
        return _pool_tokens(hidden, self.pooling, self.num_prefix)


@_register("hf:", "Hugging Face transformers AutoModel from the cache or a local folder")
def _build_hf(name: str, spec: str, options: _Options) -> Backbone:
    _reject(options, name, "weights", "arch")
    if not spec:
        raise InvalidArgumentError("hf: needs a model id or directory, e.g. 'hf:./my_dinov2'")
    if not options.pretrained:
        raise InvalidArgumentError(f"{name}: hf backbones always load their folder's weights")
    transformers = _import("transformers", "hf: backbones")
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        if spec.startswith((".", "/", "~", "\\")) or spec.count("/") > 1:
            raise WeightsError(f"{name}: model directory {spec!r} does not exist")
        snapshot = _hf_snapshot(spec, "config.json")
        if snapshot is None:
            raise WeightsError(
                _missing_hub_message(name, spec, "model", "give a local folder: hf:/path/to/model")
            )
        folder = snapshot
    files = _weights_in_folder(folder, sharded=True)
    if not files:
        raise WeightsError(f"{name}: no weights (*.safetensors or *.bin) in {folder}")
    try:
        model, info = transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as error:
        raise WeightsError(f"{name}: transformers cannot load {folder}: {error}") from error
    missing = list(info.get("missing_keys") or []) + [
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []
    ]
    if missing:
        raise WeightsError(
            f"{name}: the weights in {folder} do not fit its config: {len(missing)} "
            f"entries missing or of another shape ({_preview(missing)})"
        )
    pre = _hf_preprocessing(folder, model.config)
    num_prefix = _hf_prefix_tokens(model)
    if options.channels == "fold":
        _fold_first_conv(model, name)
    pooling = _check_pooling(
        name,
        options.pooling or ("cls" if num_prefix else "avg"),
        ("cls", "token-mean", "cls+token-mean", "pooler") if num_prefix else ("avg", "pooler"),
    )
    module = _finish(HFFeatures(model, pooling, num_prefix))
    size = options.input_size or pre[0]
    with torch.inference_mode():
        probe = torch.zeros(1, 1 if options.channels == "fold" else 3, size, size)
        dim = int(module(probe).shape[1])
    return Backbone(
        name=name,
        module=module,
        dim=dim,
        preprocessing=_rgb_preprocessing(size, pre[1], pre[2], options.channels),
        layer=pooling,
        weights_sha256=_sha256(*files),
        description=(
            f"transformers {type(model).__name__} from {folder}, {pooling} pooling, "
            f"channels={options.channels}"
        ),
    )


def _hf_preprocessing(folder: Path, config: Any) -> tuple[int, tuple, tuple]:
    """Input side, mean and std from ``preprocessor_config.json`` (ImageNet, 224 if absent)."""
    path = folder / "preprocessor_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    size = None
    if cfg.get("do_center_crop", "crop_size" in cfg) and cfg.get("crop_size"):
        size = _side(cfg["crop_size"])
    if size is None and cfg.get("size"):
        size = _side(cfg["size"])
    if size is None:
        size = _side(getattr(config, "image_size", None)) or 224
    if cfg.get("do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean = tuple(cfg.get("image_mean") or IMAGENET_MEAN)
        std = tuple(cfg.get("image_std") or IMAGENET_STD)
    return int(size), mean, std


def _side(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if value.get(key):
                return int(value[key])
    return None


def _hf_prefix_tokens(model: nn.Module) -> int:
    """Count the class/distillation/register tokens in front of the patch tokens."""
    embeddings = getattr(model, "embeddings", None)
    count = 0
    for attr in ("cls_token", "distillation_token", "register_tokens"):
        token = getattr(embeddings, attr, None)
        if isinstance(token, torch.Tensor):
            count += token.shape[1]
    return count


# ------------------------------------------------------------------- weights, caches


def _import(module: str, purpose: str) -> Any:
    try:
        return __import__(module)
    except ImportError as error:
        raise InvalidArgumentError(
            f"{purpose} need the {module!r} package: pip install {module}"
        ) from error


def _hf_cache_dir() -> Path:
    """Return the Hugging Face hub cache, read from the environment at call time."""
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path(env.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub"


def _hf_snapshot(repo: str, filename: str) -> Path | None:
    """Snapshot folder of ``repo[@revision]`` holding ``filename`` in the local cache.

    Never touches the network.
    """
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    try:
        found = try_to_load_from_cache(
            repo_id, filename, cache_dir=_hf_cache_dir(), revision=revision or None
        )
    except ValueError:  # malformed repo id
        return None
    if isinstance(found, str) and Path(found).is_file():
        return Path(found).parent
    return None


def _missing_hub_message(name: str, repo: str, what: str, alternative: str) -> str:
    return (
        f"{name}: {what} of {repo!r} not in the local Hugging Face cache ({_hf_cache_dir()}); "
        f"astrocurate never downloads. On a machine with internet run `hf download {repo}` "
        f"(older clients: `huggingface-cli download {repo}`), copy the cache folder here and "
        f"point HF_HUB_CACHE or HF_HOME at it; or {alternative}"
    )


def _weights_in_folder(folder: Path, sharded: bool = False) -> list[Path]:
    """Weights file(s) of a model folder, safetensors preferred."""
    for filename in _WEIGHT_FILES:
        if (folder / filename).is_file():
            return [folder / filename]
    if sharded:
        for pattern in ("*.safetensors", "*.bin"):
            found = sorted(folder.glob(pattern))
            if found:
                return found
    return []


def _sha256(*paths: Path) -> str:
    """SHA-256 of the concatenated bytes of ``paths`` (one file: its usual hash)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _read_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a safetensors file or torch checkpoint and return its tensor dict."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if allow_pickle:
            checkpoint = _load_trusted_checkpoint(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "weights_only" in str(error):
            raise WeightsError(
                f"cannot read weights file {str(path)!r}: it holds Python objects besides "
                "tensors, which astrocurate does not unpickle (unpickling can run any code); "
                "re-save only its state dict (torch.save(model.state_dict(), ...)) or as "
                "safetensors"
            ) from error
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"cannot read weights file {str(path)!r}: {first}") from error
    return _unwrap_checkpoint(checkpoint, path)


def _load_trusted_checkpoint(path: Path) -> Any:
    """Unpickle a whole checkpoint: only for ``create_backbone(..., allow_pickle=True)``.

    The one place that calls ``torch.load`` with ``weights_only=False`` (the API's
    explicit opt-in for a file the caller trusts; the command line never sets it).
    """
    return torch.load(path, map_location="cpu", weights_only=False)


def _unwrap_checkpoint(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensor dict in a checkpoint container (``state_dict``, ``model``, ...)."""
    for _ in range(3):
        if isinstance(checkpoint, Mapping) and not _is_tensor_dict(checkpoint):
            for key in ("state_dict", "model", "model_state_dict", "module", "teacher"):
                if isinstance(checkpoint.get(key), Mapping):
                    checkpoint = checkpoint[key]
                    break
            else:
                break
    if isinstance(checkpoint, nn.Module):
        checkpoint = checkpoint.state_dict()
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(
            f"weights file {str(path)!r} holds a {type(checkpoint).__name__}, not a state dict"
        )
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(
            f"weights file {str(path)!r} holds no tensors (top-level keys: "
            f"{_preview(list(checkpoint))})"
        )
    return tensors


def _is_tensor_dict(mapping: Mapping) -> bool:
    values = list(mapping.values())
    return bool(values) and sum(isinstance(v, torch.Tensor) for v in values) * 2 > len(values)


def _strip_prefix(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Remove the key prefix (``backbone.``, ``module.``, ...) that best matches the model.

    Entries outside the chosen prefix (projectors, momentum copies) are dropped.
    """
    counts: Counter[str] = Counter()
    for key in state:
        parts = key.split(".")
        for cut in range(1, len(parts)):
            prefix = ".".join(parts[:cut]) + "."
            if key[len(prefix) :] in model_keys:
                counts[prefix] += 1
    direct = sum(key in model_keys for key in state)
    if not counts:
        return state
    prefix = min(counts, key=lambda p: (-counts[p], len(p), p))
    if counts[prefix] <= direct:
        return state
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Load ``state`` into ``model`` requiring every model entry; one-line error if not."""
    expected = model.state_dict()
    state = _strip_prefix(state, set(expected))
    converter = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if converter is not None:  # timm's own converter (foreign formats, position embeddings)
        with contextlib.suppress(Exception):  # the strict check below reports problems
            state = dict(converter(dict(state), model))
    heads = set(_HEAD_KEYS)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    heads.update([classifier] if isinstance(classifier, str) else list(classifier or ()))
    unexpected = [k for k in state if k not in expected and not any(_under(k, h) for h in heads)]
    state = {k: v for k, v in state.items() if k in expected}
    missing = [k for k in expected if k not in state]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({_preview(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_preview(unexpected)})")
        if shapes:
            problems.append(f"{len(shapes)} of another shape (file vs model: {_preview(shapes)})")
        raise WeightsError(
            f"weights file {str(path)!r} does not fit {what}: {'; '.join(problems)}. "
            "Is it for another architecture?"
        )
    model.load_state_dict(state, strict=True)


def _under(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


def _preview(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (", ..." if len(items) > n else "")


# ---------------------------------------------------------------------- channel fold


def _fold_first_conv(model: nn.Module, name: str) -> None:
    """Make ``model`` take one channel: sum its first convolution over input channels.

    The folded model on ``x`` equals the original on ``x`` repeated over the channels;
    this is checked numerically on the layer and is an error where it does not hold.
    """
    conv_name = _first_conv_name(model)
    if conv_name is None:
        raise InvalidArgumentError(
            f"channels='fold': {name} has no 3-channel first convolution; use channels='repeat'"
        )
    conv = model.get_submodule(conv_name)
    if conv.groups != 1:
        raise InvalidArgumentError(
            f"channels='fold': {name}'s first convolution {conv_name} is grouped; "
            "use channels='repeat'"
        )
    k = conv.kernel_size
    probe = torch.randn(2, 1, max(4 * k[0], 16), max(4 * k[1], 16), generator=_gen())
    with torch.no_grad():
        reference = conv(probe.expand(-1, conv.in_channels, -1, -1))
        conv.weight = nn.Parameter(conv.weight.sum(dim=1, keepdim=True), requires_grad=False)
        conv.in_channels = 1
        folded = conv(probe)
    if not torch.allclose(folded, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item()):
        raise InvalidArgumentError(
            f"channels='fold' is not exact for {name}'s first layer "
            f"({type(conv).__name__}); use channels='repeat'"
        )
    parts = conv_name.split(".")
    for depth in range(len(parts)):  # the conv's ancestors: transformers' input checks
        owner = model.get_submodule(".".join(parts[:depth]))
        if getattr(owner, "num_channels", None) == 3:
            owner.num_channels = 1
    config = getattr(model, "config", None)
    if getattr(config, "num_channels", None) == 3:
        config.num_channels = 1


def _first_conv_name(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0] if len(first) == 1 else None
    if isinstance(first, str):
        try:
            module = model.get_submodule(first)
        except AttributeError:
            module = None
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return first
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return module_name
    return None


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
