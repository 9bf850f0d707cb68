"""Tests of astrocurate.algorithms.medians: exact medians and MADs from two sorted runs."""

from __future__ import annotations

import numpy as np
import pytest

from astrocurate.algorithms import medians

pytestmark = pytest.mark.filterwarnings("error")

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("p", [1, 2, 7, 512, 1024, 1025], ids=str)
def test_median_and_mad_equal_those_of_a_sort(p):
    """Rows sorted in two runs give the exact middle values of a sort of the whole row."""
    x = RNG.normal(0, 1, (300, p)).astype(np.float32)
    x[:100] = np.round(x[:100] * 3)  # ties
    x[200:, : p // 3] = np.nan  # some rows partly blank
    x[250] = np.nan
    median, noise = medians.median_and_mad(x)
    for i, row in enumerate(x):
        valid = np.sort(row[~np.isnan(row)])
        if valid.size == 0:
            assert np.isnan(median[i]) and np.isnan(noise[i])
            continue
        c = valid.size
        m = 0.5 * (np.float64(valid[(c - 1) // 2]) + valid[c // 2])
        dev = np.sort(np.abs(valid - np.float32(m)))
        assert median[i] == m
        assert noise[i] == 1.4826 * (0.5 * (np.float64(dev[(c - 1) // 2]) + dev[c // 2]))


def test_median_rows_by_hand():
    values = np.array(
        [[3, 1, 2, np.nan], [4, 1, 3, 2], [np.nan] * 4, [5, np.nan, np.nan, np.nan]], np.float32
    )
    np.testing.assert_array_equal(medians.median_rows(values), [2.0, 2.5, np.nan, 5.0])
