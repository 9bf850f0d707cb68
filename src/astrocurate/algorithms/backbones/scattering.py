"""Wavelet scattering backbones (kymatio's filters): weight-free, the offline default family."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from astrocurate.algorithms.backbones.base import (
    Backbone,
    Options,
    Preprocessing,
    check_pooling,
    finish,
    reject,
)
from astrocurate.errors import InvalidArgumentError

__all__ = [
    "SCATTERING_NAMES",
    "ScatteringFeatures",
    "ScatteringSpec",
    "build_scattering",
    "parse_scattering_name",
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
    """Spatially pooled log-energies of a 2-D wavelet scattering transform.

    ``forward`` maps ``(B, C, S, S)`` (channels averaged) to ``(B, dim)``: for every
    scattering path (order 0, 1, 2; or every rotation group) ``log(eps + mean_xy S)``,
    optionally renormalised by the parent path and extended by the spatial maximum and
    the quadrant means. Always computed in float32, also under autocast; a cutout's
    features do not depend on the rest of the batch.

    The transform (:class:`~astrocurate.algorithms.backbones.scattering_transform.
    Scattering2D`, kymatio's coefficients computed in batches) is made at the first
    ``forward``, on the input's device, as kymatio's filter bank takes a second to build:
    describing the backbone (its dimension, for a run's parameters) costs nothing, so a
    rerun that reuses a finished feature run does not build it. Any module with the same
    input and output, such as kymatio's own ``Scattering2D``, can be set as
    :attr:`transform` instead (``benchmarks/features.py --kymatio`` compares them).
    """

    def __init__(self, spec: ScatteringSpec, size: int) -> None:
        super().__init__()
        self.spec = spec
        self.size = size
        self.transform: nn.Module | None = None  # (B, S, S) -> (B, paths, h, w), made on first use
        paths = _scattering_paths(_filter_labels(spec.J, spec.L))
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
            coeffs = self._transform(x.device)(x.contiguous())  # (B, paths, h, w)
            pooled = [coeffs.mean(dim=(-2, -1))]
            if self.spec.max_pool:
                pooled.append(coeffs.amax(dim=(-2, -1)))
            if self.spec.spatial:
                h, w = coeffs.shape[-2] // 2, coeffs.shape[-1] // 2
                for rows in (slice(0, h), slice(h, None)):
                    for cols in (slice(0, w), slice(w, None)):
                        pooled.append(coeffs[..., rows, cols].mean(dim=(-2, -1)))
            return torch.cat([self._log_energy(p) for p in pooled], dim=1)

    def _transform(self, device: torch.device) -> nn.Module:
        """Return the transform on ``device`` (a copy of the cached one, made once)."""
        if self.transform is None:
            J, L = self.spec.J, self.spec.L  # noqa: N806
            self.transform = copy.deepcopy(_scattering_transform(J, L, self.size))
        return self.transform.to(device)

    def _log_energy(self, pooled: torch.Tensor) -> torch.Tensor:
        energy = torch.log((pooled @ self.group_matrix).clamp_min(0) + self.spec.eps)
        if self.spec.renormalise:
            energy = energy - energy[:, self.parent] * self.has_parent
        return energy


Path_ = tuple[tuple[int, ...], tuple[int, ...]]  # (scales j, orientations theta)


@functools.lru_cache(maxsize=8)
def _scattering_transform(n_scales: int, n_angles: int, size: int) -> nn.Module:
    """Build the transform once per shape (kymatio's filter bank takes a second); copy it."""
    from astrocurate.algorithms.backbones.scattering_transform import Scattering2D

    return Scattering2D(n_scales, (size, size), n_angles)


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


def build_scattering(name: str, spec_text: str, options: Options) -> Backbone:
    """Build ``scattering[-option...]`` (the name says it all; ``spec_text`` is unused)."""
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
    module = finish(ScatteringFeatures(spec, size))
    return Backbone(
        name=name,
        module=module,
        dim=module.dim,
        preprocessing=Preprocessing(size, 1, (0.0,), (1.0,)),
        layer=spec.layer,
        weights_sha256=None,
        description=(
            f"2-D scattering J={spec.J} L={spec.L} at {size} px (kymatio's filters, batched "
            f"transform), {spec.layer}"
        ),
    )
