"""Semantic near-duplicates: cutouts whose features are almost the same, within each cluster.

Neighbouring sliding windows overlap and look alike; so do repeated imaging artefacts. Two
cutouts are near-duplicates when the cosine similarity of their feature vectors (less an
optional ``center``, such as the pool's mean) is at least ``threshold`` and they share a
group (a level-1 cluster: the comparison stays inside clusters, so its cost is the sum of
the squared cluster sizes, not the square of the pool).

Inside a group the cutouts are taken by decreasing ``priority`` (e.g. peak SNR; ties by
index). The first is kept; every later cutout within the threshold of it is marked as its
duplicate; the next cutout not yet marked is kept, and so on. So no two kept cutouts of a
group are near-duplicates, and every marked cutout names the kept one it repeats.

Similarities are float32 products; those within :data:`BORDER` of the threshold are decided
again in float64, so the marking does not depend on the BLAS thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from astrocurate.validation import check_real

#: Rows of one block of the similarity matrix (block x group size floats at a time).
BLOCK_ROWS = 2048
#: Similarities this close to the threshold are decided again in float64, pair by pair: a
#: float32 product's rounding depends on how BLAS splits it (its thread count), and the
#: marking must not.
BORDER = 1e-5


@dataclass(frozen=True)
class NearDuplicates:
    """Which cutouts repeat which.

    Attributes
    ----------
    duplicate_of : ndarray of int64, shape (n,)
        Index of the kept cutout each one repeats; -1 for kept cutouts.
    similarity : ndarray of float32, shape (n,)
        Cosine similarity to that cutout; NaN for kept cutouts.
    threshold : float
    """

    duplicate_of: np.ndarray
    similarity: np.ndarray
    threshold: float

    @property
    def kept(self) -> np.ndarray:
        """Boolean mask of the cutouts kept (not a duplicate of another)."""
        return self.duplicate_of < 0

    @property
    def n_duplicates(self) -> int:
        """Number of cutouts marked as duplicates."""
        return int((self.duplicate_of >= 0).sum())


def _unit_rows(
    features: ArrayLike, device: str | torch.device, center: np.ndarray | None = None
) -> np.ndarray | torch.Tensor:
    """Rows (less ``center``) scaled to unit length: NumPy on the CPU, a tensor elsewhere."""
    rows = np.asarray(features, dtype=np.float32)
    if center is not None:
        rows = rows - center
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return rows if torch.device(device).type == "cpu" else torch.as_tensor(rows, device=device)


def _similarities(unit: np.ndarray | torch.Tensor, start: int) -> np.ndarray:
    """Cosine similarities of rows ``start .. start + BLOCK_ROWS`` with every row, (b, m)."""
    block = unit[start : start + BLOCK_ROWS] @ unit.T
    return block if isinstance(block, np.ndarray) else block.float().cpu().numpy()


def _at_least(
    block: np.ndarray, unit: np.ndarray | torch.Tensor, start: int, threshold: float
) -> np.ndarray:
    """Mask of ``block >= threshold``, pairs within :data:`BORDER` of it decided in float64."""
    hits = block >= threshold
    rows, cols = np.nonzero(np.abs(block - threshold) <= BORDER)
    if len(rows):
        left = _float64_rows(unit, start + rows)
        hits[rows, cols] = np.einsum("ij,ij->i", left, _float64_rows(unit, cols)) >= threshold
    return hits


def _float64_rows(unit: np.ndarray | torch.Tensor, index: np.ndarray) -> np.ndarray:
    if isinstance(unit, np.ndarray):
        return unit[index].astype(np.float64)
    return unit[torch.as_tensor(index, device=unit.device)].double().cpu().numpy()


def _groups(groups: ArrayLike, n: int) -> list[np.ndarray]:
    """Members of every group, in index order (groups with one member are left out)."""
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups has shape {labels.shape}, expected ({n},)")
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return [part for part in np.split(order, bounds) if len(part) > 1]


def near_duplicates(
    features: ArrayLike,
    groups: ArrayLike,
    threshold: float,
    priority: ArrayLike | None = None,
    *,
    center: ArrayLike | None = None,
    device: str | torch.device = "cpu",
) -> NearDuplicates:
    """Mark near-duplicate cutouts inside each group, keeping the highest priority one.

    Parameters
    ----------
    features : array_like, shape (n, d)
        Feature vectors (any scale: they are compared by cosine similarity).
    groups : array_like of int, shape (n,)
        Group of each cutout (e.g. its level-1 cluster).
    threshold : float
        Cosine similarity in (0, 1] at and above which two cutouts are near-duplicates.
    priority : array_like of float, shape (n,), optional
        Higher is kept first (e.g. peak SNR); default the index order.
    center : array_like, shape (d,), optional
        Subtracted from every vector before the cosine (e.g. the pool's mean: a component
        all cutouts share, as weight-free features have, would otherwise make them all
        alike).
    device : str or torch.device
        Where the similarities are computed.

    Returns
    -------
    NearDuplicates
    """
    threshold = check_real("--dedup-threshold", threshold, 0.0, 1.0, high_open=False)
    n = len(features)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    rank = np.zeros(n) if priority is None else -np.asarray(priority, dtype=np.float64)
    shift = None if center is None else np.asarray(center, dtype=np.float32)
    for members in _groups(groups, n):
        members = members[np.lexsort((members, rank[members]))]  # priority, then index
        unit = _unit_rows(np.asarray(features)[members], device, shift)
        _mark_group(unit, members, threshold, duplicate_of, similarity)
    return NearDuplicates(duplicate_of, similarity, threshold)


def _mark_group(
    unit: np.ndarray | torch.Tensor,
    members: np.ndarray,
    threshold: float,
    duplicate_of: np.ndarray,
    similarity: np.ndarray,
) -> None:
    """Greedy marking inside one group whose members are in priority order."""
    m = len(members)
    marked = np.zeros(m, dtype=bool)
    for start in range(0, m, BLOCK_ROWS):
        block = _similarities(unit, start)
        decided = _at_least(block, unit, start, threshold)
        for offset, row in enumerate(block):
            i = start + offset
            if marked[i]:
                continue
            hits = np.flatnonzero(decided[offset, i + 1 :]) + i + 1
            hits = hits[~marked[hits]]
            if len(hits):
                marked[hits] = True
                duplicate_of[members[hits]] = members[i]
                similarity[members[hits]] = row[hits]


def pairs_within(
    features: ArrayLike,
    groups: ArrayLike,
    threshold: float,
    subset: ArrayLike,
    *,
    center: ArrayLike | None = None,
    device: str | torch.device = "cpu",
) -> int:
    """Count pairs of ``subset`` in one group whose cosine similarity is >= ``threshold``.

    Parameters
    ----------
    features, groups, center
        As for :func:`near_duplicates`.
    threshold : float
    subset : array_like of int
        Indices of the cutouts to look at (e.g. a sample).
    """
    subset = np.asarray(subset, dtype=np.int64)
    sub_groups = np.asarray(groups)[subset]
    total = 0
    for members in _groups(sub_groups, len(subset)):
        shift = None if center is None else np.asarray(center, dtype=np.float32)
        unit = _unit_rows(np.asarray(features)[subset[members]], device, shift)
        for start in range(0, len(members), BLOCK_ROWS):
            block = _similarities(unit, start)
            rows, cols = np.nonzero(_at_least(block, unit, start, threshold))
            total += int((cols > rows + start).sum())
    return total
