"""Scattering backbones described without torch: names, options, output layout, card.

A name such as ``scattering-j4-rot-renorm-max`` fixes everything that identifies the
features (:class:`ScatteringSpec`); the order and grouping of the transform's output
channels follow from ``J`` and ``L`` (:func:`scattering_layout`). The module that computes
them is :mod:`.scattering`, built only when features are computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from astrocurate.algorithms.backbones.spec import (
    BackboneCard,
    Options,
    Preprocessing,
    check_pooling,
    reject,
)
from astrocurate.errors import InvalidArgumentError

__all__ = [
    "SCATTERING_NAMES",
    "ScatteringLayout",
    "ScatteringSpec",
    "is_scattering",
    "parse_scattering_name",
    "scattering_card",
    "scattering_layout",
]


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


def is_scattering(name: str) -> bool:
    """Whether ``name`` is a scattering backbone: weight-free, computed in float32 (FFTs)."""
    return name == "scattering" or name.startswith("scattering-")


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


Path_ = tuple[tuple[int, ...], tuple[int, ...]]  # (scales j, orientations theta)


@dataclass(frozen=True)
class ScatteringLayout:
    """How the transform's output channels become the feature vector.

    Attributes
    ----------
    n_paths : int
        Output channels of the transform (orders 0, 1, 2 in kymatio's order).
    groups : list of list of int
        Channels averaged into each energy (one channel each, or a rotation group).
    parents : list of int
        Each energy's parent energy (order 2 -> 1 -> 0); -1 for order 0.
    blocks : int
        Poolings concatenated: the mean, then the maximum, then four quadrant means.
    """

    n_paths: int
    groups: list[list[int]]
    parents: list[int]
    blocks: int

    @property
    def dim(self) -> int:
        """Length of the feature vector."""
        return len(self.groups) * self.blocks


def scattering_layout(spec: ScatteringSpec) -> ScatteringLayout:
    """Return the :class:`ScatteringLayout` of ``spec``."""
    paths = _scattering_paths(_filter_labels(spec.J, spec.L))
    groups = _orientation_groups(paths, spec.L, spec.rotation_invariant)
    parents = _parent_columns([paths[g[0]] for g in groups], spec.L, spec.rotation_invariant)
    blocks = 1 + spec.max_pool + 4 * spec.spatial
    return ScatteringLayout(len(paths), groups, parents, blocks)


def scattering_card(name: str, options: Options) -> BackboneCard:
    """Check the options of scattering backbone ``name``; return what identifies its features.

    Raises
    ------
    InvalidArgumentError
        An unknown option in the name, an option the family does not take, an input size
        that is not a multiple of ``2**J`` of at least ``2**(J+1)``.
    """
    spec = parse_scattering_name(name)
    reject(options, name, "weights", "arch")
    check_pooling(name, options.pooling or "mean", ("mean",))
    size = options.input_size or spec.size
    step = 2**spec.J
    if size % step or size < 2 * step:
        raise InvalidArgumentError(
            f"input_size={size} must be a multiple of 2**J={step} and at least {2 * step} "
            f"for backbone {name!r}"
        )
    return BackboneCard(
        name=name,
        dim=scattering_layout(spec).dim,
        preprocessing=Preprocessing(size, 1, (0.0,), (1.0,)),
        layer=spec.layer,
        weights_sha256=None,
        description=(
            f"2-D scattering J={spec.J} L={spec.L} at {size} px (kymatio's filters, batched "
            f"transform), {spec.layer}"
        ),
    )


def _filter_labels(n_scales: int, n_angles: int) -> list[dict]:
    """``j`` and ``theta`` of kymatio's band-pass filters, in its order (scale, then angle)."""
    return [{"j": j, "theta": theta} for j in range(n_scales) for theta in range(n_angles)]


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


SCATTERING_NAMES = {
    "scattering": "wavelet scattering J=3 L=8 at 64 px, log of spatial mean; no weights",
    "scattering-j4": "scattering with 4 scales (structures up to ~16 px at 64 px)",
    "scattering-j4-renorm": "J=4, order 1/2 divided by their parents: shape over brightness",
    "scattering-j4-rot-renorm-max": "J=4, rotation-invariant, renormalised, mean+max pooled",
    "scattering-spatial": "J=3, global and 2x2 quadrant means (positional information)",
    "scattering-": "any combination of options jN, lN, rot, renorm, max, spatial",
}
