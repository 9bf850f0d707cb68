"""The asinh stretch's percentiles: ``torch.nanquantile`` against our sort and our top-k.

The feature pipeline normalises every cutout by its 1 % and 99.5 % percentiles. On the
H200 ``torch.nanquantile``'s sort of every cutout held the pipeline to 0.42-0.62x of the
model alone (BENCHMARKS.md). :func:`astrocurate.algorithms.normalization.nan_quantiles`
reads the same order statistics either from a top-k of a few dozen values per row or from
one sort shared by both percentiles, chosen by device and row length (on CUDA a sort below
``CUDA_SORT_BELOW`` values, a top-k elsewhere). Printed, per device and cutout side: the
milliseconds per batch of ``torch.nanquantile`` and of each of our two ways (best of
``--repeat``, after a warm-up), the way ``nan_quantiles`` takes there and its speed-up over
``torch.nanquantile``, and the largest difference of the bounds (relative to the cutout's
range) and of the normalised images.

Usage::

    python benchmarks/normalization.py                  # CPU, and CUDA when there is one
    python benchmarks/normalization.py --device cuda --batch 1024 --repeat 20 --sides 64,96,128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from astrocurate.algorithms.normalization import (  # noqa: E402
    _quantiles,
    _read_from_sort,
    nan_quantiles,
    normalize,
)
from astrocurate.algorithms.normalization_config import NormalizationConfig  # noqa: E402

QS = (0.01, 0.995)


def best_seconds(fn, device: torch.device, repeat: int) -> float:
    """Best wall time of ``fn()`` over ``repeat`` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def cutouts(batch: int, side: int, device: torch.device) -> torch.Tensor:
    """Noise with a few bright sources and a blank border in one cutout of ten."""
    generator = torch.Generator().manual_seed(side)
    x = torch.randn(batch, side, side, generator=generator) * 1e-4
    x[:, side // 2, side // 2] += torch.rand(batch, generator=generator) * 1e-2
    x[::10, :, : side // 8] = torch.nan
    return x.reshape(batch, -1).to(device)


def ours(flat: torch.Tensor, method: str) -> list[torch.Tensor]:
    """Both percentiles the way ``nan_quantiles`` would on a batch with NaN, forced to one way."""
    blank = torch.isnan(flat)
    return _quantiles(flat, blank, flat.shape[1] - blank.sum(dim=1, keepdim=True), QS, method)


def compare(device: torch.device, side: int, batch: int, repeat: int) -> str:
    """One line: the three ways timed on the same cutouts, the way taken and the differences."""
    flat = cutouts(batch, side, device)
    qs = torch.tensor(QS, device=device)
    torch_ms = 1e3 * best_seconds(
        lambda: torch.nanquantile(flat, qs, dim=1, keepdim=True), device, repeat
    )
    sort_ms = 1e3 * best_seconds(lambda: ours(flat, "sort"), device, repeat)
    topk_ms = 1e3 * best_seconds(lambda: ours(flat, "topk"), device, repeat)
    n, high = flat.shape[1], QS[-1]  # the 99.5 % needs the most values of the two
    taken = "sort" if _read_from_sort(device.type, n, n - int(high * (n - 1))) else "top-k"
    ref = torch.nanquantile(flat, qs, dim=1, keepdim=True)
    ours_ = torch.stack(nan_quantiles(flat, QS))
    span = (ref[1] - ref[0]).abs().clamp_min(1e-30)
    bounds = float(((ours_ - ref).abs() / span).nan_to_num(0).max())
    images = flat.reshape(batch, side, side)
    new = normalize(images, NormalizationConfig())
    old = _normalize_with_nanquantile(images)
    pixels = float((new - old).abs().max())
    chosen_ms = sort_ms if taken == "sort" else topk_ms
    return (
        f"{device.type:<5} {side:>4} {batch:>6} {torch_ms:>13.2f} {sort_ms:>9.2f} "
        f"{topk_ms:>9.2f} {taken:>6} {torch_ms / chosen_ms:>7.2f}x {bounds:>12.2e} {pixels:>12.2e}"
    )


def _normalize_with_nanquantile(images: torch.Tensor) -> torch.Tensor:
    """The asinh stretch as computed before, with ``torch.nanquantile``'s bounds."""
    config = NormalizationConfig()
    flat = images.reshape(len(images), -1)
    qs = torch.tensor(QS, device=flat.device)
    low, high = torch.nanquantile(flat, qs, dim=1, keepdim=True)
    span = high - low
    span = torch.where(torch.isfinite(span) & (span.abs() > 1e-12), span, torch.inf)
    scaled = ((flat - low) / span).clamp(0.0, 1.0)
    a = config.asinh_softening
    out = torch.asinh(scaled / a) / torch.asinh(torch.tensor(1.0 / a))
    out = torch.where(torch.isnan(flat) | ~torch.isfinite(out), 0.0, out)
    return out.reshape(images.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--batch", type=int, default=1024, help="cutouts per batch")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sides", default="64,128", help="cutout sides, comma-separated")
    args = parser.parse_args()
    sides = [int(side) for side in args.sides.split(",")]
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, percentiles {QS}")
    print(
        f"{'dev':<5} {'side':>4} {'batch':>6} {'nanquantile':>13} {'sort ms':>9} "
        f"{'top-k ms':>9} {'takes':>6} {'speedup':>8} {'bounds diff':>12} {'pixel diff':>12}"
    )
    for device in devices:
        for side in sides:
            print(compare(torch.device(device), side, args.batch, args.repeat), flush=True)


if __name__ == "__main__":
    main()
