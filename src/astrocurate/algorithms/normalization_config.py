"""The per-cutout normalisation's method and parameters (no torch: a run is keyed on them).

The functions that apply it are in :mod:`astrocurate.algorithms.normalization`.
"""

from __future__ import annotations

from dataclasses import dataclass

from astrocurate.errors import InvalidArgumentError

__all__ = ["METHOD_NAMES", "NormalizationConfig"]

#: The methods of :func:`astrocurate.algorithms.normalization.normalize`.
METHOD_NAMES = ("minmax", "zscore", "asinh", "sigma_clip", "fixed")


@dataclass(frozen=True)
class NormalizationConfig:
    """A normalisation method and its parameters (all logged with the run).

    Attributes
    ----------
    method : str
        One of :data:`METHOD_NAMES`.
    low_percentile, high_percentile : float
        Clipping percentiles for ``asinh`` (in [0, 100]).
    asinh_softening : float
        Softening ``a`` of ``asinh(x / a) / asinh(1 / a)`` after scaling to [0, 1];
        smaller values stretch faint emission more.
    sigma : float
        Clipping threshold in standard deviations for ``sigma_clip``.
    sigma_iters : int
        Iterations of the clipping loop.
    mean, std : float
        Fixed (e.g. survey-wide) statistics for ``fixed``.
    """

    method: str = "asinh"
    low_percentile: float = 1.0
    high_percentile: float = 99.5
    asinh_softening: float = 0.1
    sigma: float = 3.0
    sigma_iters: int = 5
    mean: float = 0.0
    std: float = 1.0

    def validate(self) -> None:
        """Raise :class:`InvalidArgumentError` for an unknown method or bad parameters."""
        if self.method not in METHOD_NAMES:
            raise InvalidArgumentError(
                f"--normalization: unknown method {self.method!r}; "
                f"valid methods: {', '.join(sorted(METHOD_NAMES))}"
            )
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise InvalidArgumentError(
                f"percentiles must satisfy 0 <= low < high <= 100, got "
                f"{self.low_percentile}, {self.high_percentile}"
            )
        for name in ("asinh_softening", "sigma", "std"):
            if not getattr(self, name) > 0:
                raise InvalidArgumentError(f"{name}={getattr(self, name)} must be > 0")
        if self.sigma_iters < 1:
            raise InvalidArgumentError(f"sigma_iters={self.sigma_iters} must be >= 1")
