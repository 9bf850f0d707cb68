"""Noise-aware quality flags of cutouts: empty sky and too-noisy regions (pure arrays).

A cutout's noise is the mosaic's rms map over it where the survey has one (``rms_map``),
else the cutout's own robust noise (``noise_mad``, 1.4826 MAD); its peak S/N is measured
against the same noise (``peak_snr_map``, else ``peak_snr``). Two flags follow:

* **empty**: the peak stands less than ``k`` noise sigma above the cutout's median, or is
  unknown (a blank or constant cutout): nothing but noise in it;
* **noisy**: the noise is more than ``f`` times the median noise of the cutout's group
  (its mosaic and window size): the edges of a primary-beam corrected mosaic, the
  surroundings of a very bright source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "NOISE_COLUMNS",
    "NoiseFlags",
    "empty_sky",
    "flag_noise",
    "local_noise",
    "local_peak_snr",
    "noise_ratio",
    "too_noisy",
]

#: The manifest columns the flags are computed from (missing ones count as NaN).
NOISE_COLUMNS = ("peak_snr", "peak_snr_map", "noise_mad", "rms_map")


def _prefer(primary: ArrayLike, fallback: ArrayLike) -> np.ndarray:
    """``primary`` where it is finite, else ``fallback`` (float64)."""
    first = np.asarray(primary, dtype=np.float64)
    return np.where(np.isfinite(first), first, np.asarray(fallback, dtype=np.float64))


def local_noise(noise_mad: ArrayLike, rms_map: ArrayLike) -> np.ndarray:
    """Noise of every cutout: the rms map's value where known, else its robust noise."""
    return _prefer(rms_map, noise_mad)


def local_peak_snr(peak_snr: ArrayLike, peak_snr_map: ArrayLike) -> np.ndarray:
    """Peak S/N of every cutout against :func:`local_noise`."""
    return _prefer(peak_snr_map, peak_snr)


def empty_sky(snr: ArrayLike, min_peak_snr: float) -> np.ndarray:
    """Mask of cutouts whose peak S/N is below ``min_peak_snr`` or unknown (NaN)."""
    return ~(np.asarray(snr, dtype=np.float64) >= min_peak_snr)


def noise_ratio(noise: ArrayLike, groups: ArrayLike) -> np.ndarray:
    """Noise of every cutout over the median noise of its group.

    Parameters
    ----------
    noise : array_like of float, shape (n,)
        E.g. :func:`local_noise`.
    groups : array_like, shape (n,)
        Group of every cutout (e.g. mosaic and window size as one key).

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        NaN where the noise or its group's median is unknown or not positive.
    """
    noise = np.asarray(noise, dtype=np.float64)
    _, group = np.unique(np.asarray(groups), return_inverse=True)
    group = group.reshape(-1)
    medians = np.full(group.max(initial=-1) + 1, np.nan)
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0]) if len(order) else []
    for start, stop in zip(starts, [*starts[1:], len(order)], strict=True):
        members = order[start:stop]
        finite = noise[members][np.isfinite(noise[members])]
        if finite.size:
            medians[group[members[0]]] = np.median(finite)
    reference = medians[group]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(reference > 0, noise / reference, np.nan)


def too_noisy(ratio: ArrayLike, max_noise_ratio: float) -> np.ndarray:
    """Mask of cutouts whose :func:`noise_ratio` exceeds ``max_noise_ratio`` (NaN: not)."""
    return np.asarray(ratio, dtype=np.float64) > max_noise_ratio


@dataclass(frozen=True)
class NoiseFlags:
    """Peak S/N and noise ratio of every cutout, and the flags asked for (None: not asked)."""

    snr: np.ndarray
    ratio: np.ndarray
    empty: np.ndarray | None
    noisy: np.ndarray | None

    @property
    def flagged(self) -> np.ndarray:
        """Mask of the cutouts with any flag."""
        mask = np.zeros(len(self.snr), dtype=bool)
        for flag in (self.empty, self.noisy):
            if flag is not None:
                mask |= flag
        return mask


def flag_noise(
    columns: Mapping[str, ArrayLike],
    groups: ArrayLike,
    min_peak_snr: float | None = None,
    max_noise_ratio: float | None = None,
) -> NoiseFlags:
    """Flag empty and too-noisy cutouts from their manifest columns.

    Parameters
    ----------
    columns : mapping of str to array_like
        :data:`NOISE_COLUMNS` of every cutout (e.g. a DataFrame); a missing one is NaN.
    groups : array_like, shape (n,)
        Group of every cutout for :func:`noise_ratio` (its mosaic and window size).
    min_peak_snr, max_noise_ratio : float, optional
        Thresholds of :func:`empty_sky` and :func:`too_noisy`; None leaves that flag out.
    """
    n = len(np.asarray(groups))
    value = {
        name: np.asarray(columns[name], dtype=np.float64) if name in columns else np.full(n, np.nan)
        for name in NOISE_COLUMNS
    }
    snr = local_peak_snr(value["peak_snr"], value["peak_snr_map"])
    ratio = noise_ratio(local_noise(value["noise_mad"], value["rms_map"]), groups)
    return NoiseFlags(
        snr,
        ratio,
        None if min_peak_snr is None else empty_sky(snr, min_peak_snr),
        None if max_noise_ratio is None else too_noisy(ratio, max_noise_ratio),
    )
