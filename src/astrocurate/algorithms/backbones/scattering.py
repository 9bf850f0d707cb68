"""Wavelet scattering backbones (kymatio's filters): weight-free, the offline default family."""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from astrocurate.algorithms.backbones.base import Backbone, Options, finish
from astrocurate.algorithms.backbones.scattering_spec import (
    SCATTERING_NAMES,
    ScatteringSpec,
    parse_scattering_name,
    scattering_card,
    scattering_layout,
)

__all__ = [
    "SCATTERING_NAMES",
    "ScatteringFeatures",
    "ScatteringSpec",
    "build_scattering",
    "parse_scattering_name",
]


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
        layout = scattering_layout(spec)
        matrix = torch.zeros(layout.n_paths, len(layout.groups))
        for column, members in enumerate(layout.groups):
            matrix[members, column] = 1.0 / len(members)
        parents = layout.parents
        self.register_buffer("group_matrix", matrix, persistent=False)
        self.register_buffer("parent", torch.tensor([max(p, 0) for p in parents]), persistent=False)
        self.register_buffer("has_parent", torch.tensor([float(p >= 0) for p in parents]), False)
        self.dim = layout.dim

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
        # group means in float64 (exact for groups of 1 and 8 alike-sized terms, in any order),
        # so the features do not depend on the GEMM's blocking, i.e. on the thread count
        means = (pooled.double() @ self.group_matrix.double()).float()
        energy = torch.log(means.clamp_min(0) + self.spec.eps)
        if self.spec.renormalise:
            energy = energy - energy[:, self.parent] * self.has_parent
        return energy


@functools.lru_cache(maxsize=8)
def _scattering_transform(n_scales: int, n_angles: int, size: int) -> nn.Module:
    """Build the transform once per shape (kymatio's filter bank takes a second); copy it."""
    from astrocurate.algorithms.backbones.scattering_transform import Scattering2D

    return Scattering2D(n_scales, (size, size), n_angles)


def build_scattering(name: str, spec_text: str, options: Options) -> Backbone:
    """Build ``scattering[-option...]`` (the name says it all; ``spec_text`` is unused)."""
    card = scattering_card(name, options)
    module = finish(ScatteringFeatures(parse_scattering_name(name), card.preprocessing.input_size))
    return Backbone.from_card(card, module)
