"""Semantic near-duplicates at survey scale: time and memory of ``near_duplicates``.

Builds synthetic features like a survey's (``--rows`` x ``--dim`` float32, in ``--clusters``
level-1 clusters of long-tailed sizes, ``--copies`` of the rows being noisy copies of another
row of their cluster), then times in this one process, side by side:

* ``near_duplicates`` (block matrix products per cluster, greedy marking), and
* the plain way on the first ``--compare-rows`` rows: scikit-learn's ``cosine_similarity``
  per cluster and a Python loop for the marking (skipped with ``--compare-rows 0``),

checking that both mark the same rows, and prints the peak RSS of the process.

Usage::

    python benchmarks/duplicates.py                            # 3M x 384, 60k clusters
    python benchmarks/duplicates.py --rows 300000 --clusters 6000 --device cuda
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=60_000)
    parser.add_argument("--copies", type=float, default=0.1, help="share of noisy copies")
    parser.add_argument("--threshold", type=float, default=0.98)
    parser.add_argument("--compare-rows", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


def _features(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, level-1 clusters (long-tailed sizes) and a priority per row."""
    rng = np.random.default_rng(0)
    sizes = rng.lognormal(0.0, 1.0, args.clusters)
    groups = rng.choice(args.clusters, args.rows, p=sizes / sizes.sum()).astype(np.int64)
    centres = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
    features = centres[groups]
    for start in range(0, args.rows, 100_000):  # float64 noise a chunk at a time
        part = features[start : start + 100_000]
        part += rng.normal(scale=0.6, size=part.shape).astype(np.float32)
    copies = np.flatnonzero(rng.random(args.rows) < args.copies)
    order = np.argsort(groups, kind="stable")  # a copy repeats the previous row of its cluster
    previous = np.empty(args.rows, dtype=np.int64)
    previous[order[1:]] = order[:-1]
    previous[order[0]] = order[0]
    same = groups[previous[copies]] == groups[copies]
    copies = copies[same]
    noise = rng.normal(scale=0.02, size=(len(copies), args.dim)).astype(np.float32)
    features[copies] = features[previous[copies]] + noise
    return features, groups, rng.random(args.rows)


def _plain(features: np.ndarray, groups: np.ndarray, threshold: float, priority) -> np.ndarray:
    """The obvious way: scikit-learn's similarities per cluster, a Python marking loop."""
    from sklearn.metrics.pairwise import cosine_similarity

    duplicate_of = np.full(len(features), -1, dtype=np.int64)
    for label in np.unique(groups):
        members = np.flatnonzero(groups == label)
        members = members[np.lexsort((members, -priority[members]))]
        similar = cosine_similarity(features[members]) >= threshold
        marked = np.zeros(len(members), dtype=bool)
        for i in range(len(members)):
            if marked[i]:
                continue
            later = similar[i] & ~marked
            later[: i + 1] = False
            marked |= later
            duplicate_of[members[later]] = members[i]
    return duplicate_of


def main() -> None:
    """Build the features, time both ways, print the table."""
    args = _arguments()
    import torch

    from astrocurate.algorithms.duplicates import near_duplicates

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    features, groups, priority = _features(args)
    made = time.perf_counter() - started
    sizes = np.bincount(groups)
    print(
        f"near-duplicates, {args.rows:,} x {args.dim} float32 in {args.clusters:,} clusters "
        f"(largest {sizes.max():,}, sum of squared sizes {int((sizes**2).sum()):,}), "
        f"threshold {args.threshold}, device {args.device}, {torch.get_num_threads()} threads; "
        f"features made in {made:.0f} s"
    )
    started = time.perf_counter()
    found = near_duplicates(features, groups, args.threshold, priority, device=args.device)
    seconds = time.perf_counter() - started
    print(
        f"near_duplicates: {seconds:.1f} s, {found.n_duplicates:,} duplicates "
        f"({found.n_duplicates / args.rows:.1%})"
    )
    if args.compare_rows:
        part = slice(0, min(args.compare_rows, args.rows))
        started = time.perf_counter()
        ours = near_duplicates(
            features[part], groups[part], args.threshold, priority[part], device=args.device
        )
        ours_seconds = time.perf_counter() - started
        started = time.perf_counter()
        plain = _plain(features[part], groups[part], args.threshold, priority[part])
        plain_seconds = time.perf_counter() - started
        same = np.array_equal(ours.duplicate_of, plain)
        print(
            f"first {part.stop:,} rows: near_duplicates {ours_seconds:.2f} s, plain (scikit-learn "
            f"per cluster + Python loop) {plain_seconds:.2f} s, ratio "
            f"{plain_seconds / ours_seconds:.1f}x; same marking: {same}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS {peak:.2f} GB (the features alone: {features.nbytes / 1024**3:.2f} GB)")


if __name__ == "__main__":
    main()
