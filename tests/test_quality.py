"""The backbone-choice metric: kNN balanced accuracy with folds that never split a sky patch."""

from __future__ import annotations

import numpy as np
import pytest

from astrocurate.algorithms.quality import knn_balanced_accuracy, sky_patches


def _grid(n_side: int, window: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel origins of a sliding window over an ``n_side`` x ``n_side`` mosaic."""
    starts = np.arange(0, n_side - window + 1, step)
    x0, y0 = np.meshgrid(starts, starts)
    return x0.ravel(), y0.ravel()


def test_patches_tile_the_sky_in_cells_of_four_largest_windows() -> None:
    scale = 1.5  # arcsec per pixel; the largest window, 128 px, is 192 arcsec
    ra = np.array([150.0, 150.0 + 100 / 3600, 150.0 + 2000 / 3600, 150.0])
    dec = np.array([30.001, 30.001, 30.001, 30.001 + 2000 / 3600])
    n = len(ra)
    patches = sky_patches(
        ra, dec, np.array(["a", "b", "a", "a"]), np.zeros(n), np.zeros(n),
        np.array([64, 128, 128, 64]), np.full(n, scale),
    )  # fmt: skip
    # 100" apart: one patch (768" wide), even across two mosaics; 2000" apart: another
    assert patches[0] == patches[1]
    assert len({patches[0], patches[2], patches[3]}) == 3


def test_without_sky_positions_patches_tile_each_mosaic() -> None:
    x0, y0 = _grid(1024, 64, 32)
    n = len(x0)
    mosaic = np.array(["m1"] * n + ["m2"] * n)
    patches = sky_patches(
        np.full(2 * n, np.nan), np.full(2 * n, np.nan), mosaic, np.tile(x0, 2), np.tile(y0, 2),
        np.full(2 * n, 64), np.full(2 * n, np.nan),
    )  # fmt: skip
    assert len(np.unique(patches)) == 2 * 16  # 1024 px / (4 x 64 px) = 4 per side, per mosaic
    assert not set(patches[:n]) & set(patches[n:])


def test_shuffled_folds_leak_near_copies_and_sky_folds_do_not() -> None:
    """Labels random per patch, features near-copies within it: only a leak scores well."""
    rng = np.random.default_rng(0)
    x0, y0 = _grid(2048, 64, 32)  # 63 x 63 windows, 50 % overlap
    n = len(x0)
    patches = sky_patches(
        np.full(n, np.nan), np.full(n, np.nan), np.zeros(n), x0, y0, np.full(n, 64),
        np.full(n, np.nan),
    )  # fmt: skip
    n_patches = patches.max() + 1
    patch_labels = rng.integers(0, 4, n_patches)
    centres = rng.normal(size=(n_patches, 16))
    features = centres[patches] + 0.01 * rng.normal(size=(n, 16))
    labels = patch_labels[patches]
    leaky = knn_balanced_accuracy(features, labels)
    grouped = knn_balanced_accuracy(features, labels, groups=patches)
    assert leaky is not None and grouped is not None
    assert leaky > 0.95  # every test cutout has its near-copies in the training folds
    assert grouped < 0.45  # chance is 0.25: nothing to recognise across patches


def test_fewer_groups_than_folds_gives_one_fold_per_group_and_one_group_none() -> None:
    features = np.random.default_rng(1).normal(size=(40, 3))
    labels = np.repeat([0, 1], 20)
    assert knn_balanced_accuracy(features, labels, groups=np.arange(40) % 3) is not None
    assert knn_balanced_accuracy(features, labels, groups=np.zeros(40)) is None
    lopsided = np.r_[np.zeros(36), np.arange(1, 5)]  # a training fold of 4 rows < 10 neighbours
    assert knn_balanced_accuracy(features, labels, groups=lopsided) is None
    with pytest.raises(ValueError, match="patch_windows=0"):
        sky_patches(*(np.zeros(1),) * 7, patch_windows=0)
