"""Balanced hierarchical sampling against a plain random sample, at survey scale.

Builds a synthetic 3-level tree like configuration A (3M points in 60k level-0 clusters
with long-tailed sizes, nested in 4k and then 300 clusters; points in random order, as
k-means assignments are) and times, in this one process and side by side:

* ``random_sample`` (the uniform baseline),
* ``balanced_sample`` with strategies 'r' and 'c' (float32 and float64 distances),
* the budget split alone (all levels, no point selection),

for each budget. Timings include input validation (the nesting check reads every label).

Usage::

    python benchmarks/sampling.py                        # 3M points, budgets 10k and 300k
    python benchmarks/sampling.py --points 300000 --clusters 6000 400 30 --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from astrocurate import sampling  # noqa: E402


def nested_parents(n_children: int, n_parents: int, rng: np.random.Generator) -> np.ndarray:
    """Random parent of each child such that every parent has at least one child."""
    parents = np.concatenate([np.arange(n_parents), rng.integers(0, n_parents, n_children)])
    return rng.permutation(parents[:n_children])


def synthetic_tree(
    n_points: int, clusters: list[int], seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Labels per level (level 0 first) and distances for ``n_points`` shuffled points."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(mean=0.0, sigma=1.5, size=clusters[0])  # long-tailed sizes
    sizes = 1 + rng.multinomial(n_points - clusters[0], weights / weights.sum())
    leaves = rng.permutation(np.repeat(np.arange(clusters[0]), sizes))
    levels = [leaves]
    for n_children, n_parents in itertools.pairwise(clusters):
        levels.append(nested_parents(n_children, n_parents, rng)[levels[-1]])
    distances = rng.random(n_points).astype(np.float32)
    return levels, distances


def timed(function, repeats: int) -> tuple[float, float]:
    """Best and median wall time in seconds over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=3_000_000)
    parser.add_argument("--clusters", type=int, nargs="+", default=[60_000, 4_000, 300])
    parser.add_argument("--budgets", type=int, nargs="+", default=[10_000, 300_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    levels, distances = synthetic_tree(args.points, args.clusters, args.seed)
    build_s = time.perf_counter() - start
    sizes = np.bincount(levels[0])
    print(
        f"tree: {args.points:,} points, clusters per level {args.clusters} "
        f"(level-0 sizes {sizes.min()}..{sizes.max()}, median {int(np.median(sizes))}), "
        f"built in {build_s:.1f} s"
    )
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()}")
    print(f"{'budget':>8} {'method':<22} {'best s':>8} {'median s':>9} {'picked':>8}")
    checked, _ = sampling._check_labels(levels, None)
    distances64 = distances.astype(np.float64)
    split_rng = np.random.default_rng(args.seed)
    for budget in args.budgets:
        variants = {
            "random_sample": lambda b=budget: sampling.random_sample(args.points, b, 0),
            "balanced 'r'": lambda b=budget: sampling.balanced_sample(levels, b, random_state=0),
            "balanced 'c'": lambda b=budget: sampling.balanced_sample(
                levels, b, strategy="c", distances=distances, random_state=0
            ),
            "balanced 'c' float64": lambda b=budget: sampling.balanced_sample(
                levels, b, strategy="c", distances=distances64, random_state=0
            ),
            "budget split only": lambda b=budget: sampling._allocate_leaves(checked, b, split_rng),
        }
        for name, function in variants.items():
            best, median = timed(function, args.repeats)
            result = function()
            picked = result.size if name != "budget split only" else int(result.sum())
            print(f"{budget:>8,} {name:<22} {best:>8.3f} {median:>9.3f} {picked:>8,}")
        balanced = sampling.balanced_sample(levels, budget, random_state=0)
        uniform = sampling.random_sample(args.points, budget, 0)
        for index, labels in enumerate(levels):
            k = int(labels.max()) + 1
            print(
                f"{'':>8}   level {index} normalised entropy: balanced "
                f"{sampling.normalized_entropy(np.bincount(labels[balanced], minlength=k)):.3f}"
                f", random "
                f"{sampling.normalized_entropy(np.bincount(labels[uniform], minlength=k)):.3f}"
            )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
