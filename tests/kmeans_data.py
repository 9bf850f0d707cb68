"""Inputs shared by the k-means tests: a Gaussian mixture and a grid with repeated points."""

from __future__ import annotations

import numpy as np


def mixture(n: int, d: int, components: int, seed: int) -> np.ndarray:
    """``n`` float32 rows of ``components`` unit Gaussians around means of spread 3."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(components, d))
    return (means[rng.integers(components, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def ties() -> np.ndarray:
    """Integer points on a grid, many of them repeated: exact ties between centres (36 distinct)."""
    grid = np.array([[i, j] for i in range(6) for j in range(6)], np.float32)
    return np.concatenate([grid, grid[::3], grid[::5], np.zeros((7, 2), np.float32)])
