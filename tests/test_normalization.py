"""Normalisations on hand-checked arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from astrocurate.algorithms.normalization import METHODS, NormalizationConfig, normalize
from astrocurate.errors import InvalidArgumentError


def _batch(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 1, -1)


def _run(batch: torch.Tensor, **kwargs) -> np.ndarray:
    return normalize(batch, NormalizationConfig(**kwargs)).reshape(len(batch), -1).numpy()


def test_minmax_by_hand() -> None:
    out = _run(_batch([2.0, 4.0, 6.0, math.nan]), method="minmax")
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0, 0.0]])


def test_zscore_by_hand() -> None:
    out = _run(_batch([1.0, 3.0, math.nan]), method="zscore")  # mean 2, population std 1
    np.testing.assert_allclose(out, [[-1.0, 1.0, 0.0]])


def test_fixed_uses_given_statistics() -> None:
    out = _run(_batch([0.5, 1.5]), method="fixed", mean=0.5, std=0.25)
    np.testing.assert_allclose(out, [[0.0, 4.0]])


def test_asinh_clips_and_stretches() -> None:
    values = [float(v) for v in range(101)]  # percentiles 10 and 90 are 10 and 90
    out = _run(
        _batch(values), method="asinh", low_percentile=10, high_percentile=90, asinh_softening=0.5
    )
    expected = np.clip((np.array(values) - 10) / 80, 0, 1)
    expected = np.arcsinh(expected / 0.5) / np.arcsinh(2.0)
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)


def test_sigma_clip_rejects_outlier() -> None:
    row = [0.0, 1.0] * 50 + [1000.0]  # mean 0.5, std 0.5 once the outlier is clipped
    out = _run(_batch(row), method="sigma_clip", sigma=3.0)
    low, high = 0.5 - 1.5, 0.5 + 1.5
    np.testing.assert_allclose(out[0, :2], [(0 - low) / (high - low), (1 - low) / (high - low)])
    assert out[0, -1] == pytest.approx(1.0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_constant_and_blank_cutouts_are_finite(method: str) -> None:
    out = _run(_batch([3.0, 3.0, 3.0], [math.nan] * 3), method=method)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[1], 0.0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_result_independent_of_batch(method: str) -> None:
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.normal(size=(5, 8, 8)).astype(np.float32))
    whole = normalize(batch, NormalizationConfig(method=method))
    single = torch.cat(
        [normalize(batch[i : i + 1], NormalizationConfig(method=method)) for i in range(5)]
    )
    torch.testing.assert_close(whole, single)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"method": "log"}, "unknown method 'log'"),
        ({"low_percentile": 50, "high_percentile": 10}, "low < high"),
        ({"method": "fixed", "std": 0.0}, "std=0.0 must be > 0"),
        ({"sigma_iters": 0}, "sigma_iters=0"),
    ],
    ids=["unknown", "percentiles", "std", "iters"],
)
def test_invalid_configs(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError, match=fragment):
        normalize(_batch([1.0, 2.0]), NormalizationConfig(**kwargs))


def test_the_torch_free_method_names_are_the_methods() -> None:
    from astrocurate.algorithms.normalization_config import METHOD_NAMES

    assert tuple(METHODS) == METHOD_NAMES


def _random_rows(generator: torch.Generator, trial: int) -> torch.Tensor:
    """Rows of any length and scale, some with NaN, one all NaN, some with ties."""
    rows = int(torch.randint(1, 9, (1,), generator=generator))
    n = int(torch.randint(1, 300, (1,), generator=generator))
    scale = 10 ** float(torch.randint(-3, 4, (1,), generator=generator))
    x = torch.randn(rows, n, generator=generator) * scale
    if trial % 3 == 0:
        x[torch.rand(rows, n, generator=generator) < 0.3] = torch.nan
    if trial % 7 == 0:
        x[0] = torch.nan
    if trial % 5 == 0:
        x = x.round()
    return x


def test_quantiles_are_the_exact_ones_rounded_once() -> None:
    """Top-k and sort paths alike give float64 nanquantile rounded to float32, bit for bit."""
    from astrocurate.algorithms.normalization import nan_quantiles

    generator = torch.Generator().manual_seed(0)
    qs = (0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.995, 1.0)
    for trial in range(200):
        x = _random_rows(generator, trial)
        for q, got in zip(qs, nan_quantiles(x, qs), strict=True):
            exact = torch.nanquantile(x.double(), q, dim=1, keepdim=True).float()
            assert got.shape == (len(x), 1) and got.dtype == torch.float32
            assert torch.equal(torch.isnan(got), torch.isnan(exact)), (trial, q)
            assert torch.equal(got.nan_to_num(0), exact.nan_to_num(0)), (trial, q)
            near = torch.nanquantile(x, torch.tensor([q]), dim=1, keepdim=True)[0]
            scale = x.abs().nan_to_num(0).amax(dim=1, keepdim=True).clamp_min(1e-30)
            assert ((got - near).abs() / scale).nan_to_num(0).max() < 4e-6  # float32 rounding


def test_quantiles_of_empty_input_are_nan() -> None:
    from astrocurate.algorithms.normalization import nan_quantiles

    low, high = nan_quantiles(torch.empty(3, 0), (0.01, 0.995))
    assert low.shape == (3, 1) and torch.isnan(low).all() and torch.isnan(high).all()
    assert [q.shape for q in nan_quantiles(torch.empty(0, 16), (0.5,))] == [(0, 1)]


def test_sort_and_top_k_give_the_same_quantiles_bit_for_bit() -> None:
    """Either way of reading the order statistics, with or without a NaN mask, same bits."""
    from astrocurate.algorithms.normalization import _quantiles, nan_quantiles

    generator = torch.Generator().manual_seed(1)
    qs = (0.0, 0.01, 0.1, 0.5, 0.9, 0.995, 1.0)
    for trial in range(200):
        x = _random_rows(generator, trial)
        blank = torch.isnan(x)  # kept even without NaN, as on CUDA
        count = x.shape[1] - blank.sum(dim=1, keepdim=True)
        default = nan_quantiles(x, qs)
        for method in ("sort", "topk"):
            forced = _quantiles(x, blank, count, qs, method)
            for q, a, b in zip(qs, default, forced, strict=True):
                assert torch.equal(a.view(torch.int32), b.view(torch.int32)), (trial, q, method)


def test_cuda_sorts_short_rows_once_and_the_cpu_takes_a_top_k(monkeypatch) -> None:
    from astrocurate.algorithms import normalization
    from astrocurate.algorithms.normalization import CUDA_SORT_BELOW, _read_from_sort

    assert 64 * 64 < CUDA_SORT_BELOW <= 128 * 128  # the sides measured on the H100
    assert _read_from_sort("cuda", 64 * 64, 42) and not _read_from_sort("cpu", 64 * 64, 42)
    assert not _read_from_sort("cuda", 128 * 128, 165)
    assert _read_from_sort("cpu", 64 * 64, 2049)  # a median: a sort on any device

    sorts, sort = [], torch.sort

    def counted_sort(*args, **kwargs):
        sorts.append(args)
        return sort(*args, **kwargs)

    monkeypatch.setattr(normalization.torch, "sort", counted_sort)
    x = torch.randn(3, 50)
    normalization._quantiles(x, None, torch.full((3, 1), 50), (0.01, 0.5, 0.995), "sort")
    assert len(sorts) == 1  # one sort serves every quantile


def test_quantiles_from_a_nan_mask_never_read_the_device():
    """The CUDA path (mask kept, depth of the top-k from the row length) reads nothing on
    the host, so the feature loop's queue never drains for a percentile."""
    from astrocurate.algorithms.normalization import _quantiles
    from host_reads import HostReads

    x = _random_rows(torch.Generator().manual_seed(3), 0)  # NaN, an all-NaN row, ties
    blank = torch.isnan(x)
    count = x.shape[1] - blank.sum(dim=1, keepdim=True)
    for method in ("sort", "topk"):
        reads = HostReads()
        with reads:
            _quantiles(x, blank, count, (0.01, 0.995), method)
        assert reads.count == 0, method
