"""Per-cutout intensity normalisations for astronomical images (pure tensor functions).

Radio and optical cutouts span many orders of magnitude and carry blanks; a
network pre-trained on natural images expects values of order one. Every
function maps a batch ``(B, H, W)`` float tensor to a normalised batch of the
same shape, computed per cutout, so a cutout's result never depends on the
batch it is in.

NaN rule (all methods): statistics ignore NaN pixels; after normalisation NaN
pixels are set to 0, which is the background level for ``zscore`` and
``fixed`` and the bottom of the range for ``minmax``, ``asinh`` and ``sigma_clip``.
A cutout that is entirely NaN or constant becomes all zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from astrocurate.algorithms.normalization_config import NormalizationConfig

_EPS = 1e-12


def normalize(batch: torch.Tensor, config: NormalizationConfig) -> torch.Tensor:
    """Normalise a batch of cutouts.

    Parameters
    ----------
    batch : Tensor, shape (B, H, W)
        Float cutouts, possibly with NaN.
    config : NormalizationConfig
        Method and parameters.

    Returns
    -------
    Tensor, shape (B, H, W)
        float32, finite.
    """
    config.validate()
    x = batch.to(torch.float32)
    flat = x.reshape(len(x), -1)
    blank = torch.isnan(flat)
    out = METHODS[config.method](flat, config)
    out = torch.where(blank | ~torch.isfinite(out), torch.zeros_like(out), out)
    return out.reshape(x.shape)


def _minmax(flat: torch.Tensor, _config: NormalizationConfig) -> torch.Tensor:
    low = _nan_reduce(flat, torch.amin, torch.inf)
    high = _nan_reduce(flat, torch.amax, -torch.inf)
    return (flat - low) / _safe(high - low)


def _zscore(flat: torch.Tensor, _config: NormalizationConfig) -> torch.Tensor:
    mean, std = _nan_mean_std(flat)
    return (flat - mean) / _safe(std)


def _fixed(flat: torch.Tensor, config: NormalizationConfig) -> torch.Tensor:
    return (flat - config.mean) / config.std


def _asinh(flat: torch.Tensor, config: NormalizationConfig) -> torch.Tensor:
    low, high = nan_quantiles(flat, (config.low_percentile / 100, config.high_percentile / 100))
    scaled = ((flat - low) / _safe(high - low)).clamp(0.0, 1.0)
    a = config.asinh_softening
    return torch.asinh(scaled / a) / torch.asinh(torch.tensor(1.0 / a))


#: Above this share of a row, a quantile is read from a full sort rather than a top-k.
_TOPK_SHARE = 0.125


def nan_quantiles(flat: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Return each row's quantiles ``qs`` over its non-NaN values, each of shape ``(B, 1)``.

    Linear interpolation between the order statistics at ranks ``floor`` and ``ceil`` of
    ``q (n - 1)``, ``n`` the row's non-NaN count: the definition of ``torch.nanquantile``.
    The two order statistics are exact and the interpolation is done in float64 and
    rounded once, so each result is the exact quantile rounded to ``flat``'s dtype
    (``torch.nanquantile`` interpolates in float32 and differs from it by up to a few
    units in the last place). A quantile near either end (the asinh stretch's 1 % and
    99.5 %) is read from a top-k of a few dozen values per row rather than a sort of the
    whole cutout, which on a GPU is what limited the feature pipeline. A row without a
    value gives NaN.
    """
    rows, n = flat.shape
    if n == 0 or rows == 0:
        nan = torch.full((rows, 1), torch.nan, dtype=flat.dtype, device=flat.device)
        return [nan for _ in qs]
    blank = torch.isnan(flat)
    if bool(blank.any()):
        count = n - blank.sum(dim=1, keepdim=True)
    else:  # the usual batch: no counting, no filling
        blank, count = None, torch.full((rows, 1), n, dtype=torch.long, device=flat.device)
    return [_nan_quantile(flat, blank, count, q) for q in qs]


def _nan_quantile(
    flat: torch.Tensor, blank: torch.Tensor | None, count: torch.Tensor, q: float
) -> torch.Tensor:
    """One quantile of :func:`nan_quantiles` from the rows' NaN mask and non-NaN counts."""
    n = flat.shape[1]
    ranks = q * (count - 1).clamp_min(0).double()
    below, above = ranks.floor().long(), ranks.ceil().long()
    from_top = q > 0.5
    if blank is None:  # every row holds n values: k is known without reading the device
        rank = q * (n - 1)
        deepest = n - 1 - math.floor(rank) if from_top else math.ceil(rank)
    else:
        deepest = int(((count - 1 - below) if from_top else above).max())
    k = min(n, max(0, deepest) + 1)  # order statistics needed from the chosen end
    if k > max(1, int(_TOPK_SHARE * n)):
        values = torch.sort(flat, dim=1).values  # NaN sort last
        first, second = below, above
    else:
        fill = -torch.inf if from_top else torch.inf  # NaN never among the k taken
        filled = flat if blank is None else torch.where(blank, fill, flat)
        values = torch.topk(filled, k, dim=1, largest=from_top, sorted=True).values
        first, second = (count - 1 - below, count - 1 - above) if from_top else (below, above)
    top = values.shape[1] - 1
    low = values.gather(1, first.clamp(0, top)).double()
    high = values.gather(1, second.clamp(0, top)).double()
    result = (low + (ranks - below) * (high - low)).to(flat.dtype)
    return torch.where(count > 0, result, torch.full_like(result, torch.nan))


def _sigma_clip(flat: torch.Tensor, config: NormalizationConfig) -> torch.Tensor:
    """Clip at mean ± sigma·std (iterated on the unclipped pixels), then scale to [0, 1]."""
    valid = ~torch.isnan(flat)
    for _ in range(config.sigma_iters):
        masked = torch.where(valid, flat, torch.nan)
        mean, std = _nan_mean_std(masked)
        valid = valid & ((flat - mean).abs() <= config.sigma * std)
    masked = torch.where(valid, flat, torch.nan)
    mean, std = _nan_mean_std(masked)
    low, high = mean - config.sigma * std, mean + config.sigma * std
    return ((flat - low) / _safe(high - low)).clamp(0.0, 1.0)


def _nan_reduce(flat: torch.Tensor, reduce: Callable, fill: float) -> torch.Tensor:
    filled = torch.where(torch.isnan(flat), torch.full_like(flat, fill), flat)
    return reduce(filled, dim=1, keepdim=True)


def _nan_mean_std(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and population std over non-NaN values, accumulated in float64."""
    x = flat.to(torch.float64)
    valid = ~torch.isnan(x)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    zeroed = torch.where(valid, x, torch.zeros_like(x))
    mean = zeroed.sum(dim=1, keepdim=True) / count
    deviation = torch.where(valid, x - mean, torch.zeros_like(x))
    std = torch.sqrt((deviation**2).sum(dim=1, keepdim=True) / count)
    return mean.to(flat.dtype), std.to(flat.dtype)


def _safe(span: torch.Tensor) -> torch.Tensor:
    """Replace zero or non-finite spans by +inf so that constant cutouts map to 0."""
    return torch.where(
        torch.isfinite(span) & (span.abs() > _EPS), span, torch.full_like(span, torch.inf)
    )


METHODS: dict[str, Callable[[torch.Tensor, NormalizationConfig], torch.Tensor]] = {
    "minmax": _minmax,
    "zscore": _zscore,
    "asinh": _asinh,
    "sigma_clip": _sigma_clip,
    "fixed": _fixed,
}
