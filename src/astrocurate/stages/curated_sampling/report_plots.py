"""Report figures: balance bars, the feature map scatter, cluster-size plots (matplotlib).

Figures are drawn on matplotlib's Agg canvas without pyplot (no global state) and kept
as PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from astrocurate.stages.curated_sampling.report_data import SETS, ClassShares, LevelCounts
from astrocurate.stages.curated_sampling.report_map import FeatureMap

__all__ = [
    "SET_COLOURS",
    "Figure",
    "balance_figure",
    "class_figure",
    "cluster_size_figure",
    "format_value",
    "map_figure",
]

SET_COLOURS = {"pool": "#999999", "random": "#4477aa", "curated": "#ee6677"}


@dataclass
class Figure:
    """A PNG figure of the report."""

    name: str
    title: str
    caption: str
    png: bytes


def _new_figure(width: float, height: float) -> Any:
    """Return a matplotlib figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=100)


def _png(fig: Any) -> bytes:
    """Encode a figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def format_value(value: float | None, digits: int = 3) -> str:
    """Format a number with ``digits`` decimals; ``n/a`` for None, NaN or infinity."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def balance_figure(counts: LevelCounts, entropies: Mapping[str, float]) -> Figure:
    """Share of each cluster of a level in the pool, the random baseline and the curated sample."""
    pool = counts.counts["pool"]
    order = np.lexsort((np.arange(len(pool)), -pool))
    order = order[pool[order] > 0]
    fig = _new_figure(10, 3.8)
    ax = fig.subplots()
    sets = [s for s in SETS if s in counts.counts]
    _plot_shares(ax, {s: counts.counts[s][order] for s in sets}, [str(c) for c in order])
    ax.set_xlabel(
        f"level-{counts.level} cluster, largest in the pool first ({len(order)} non-empty)"
    )
    ax.set_title(
        "normalised entropy: " + ", ".join(f"{s} {format_value(entropies.get(s))}" for s in sets)
    )
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.16, top=0.9)
    return Figure(
        name=f"balance_level_{counts.level}.png",
        title=f"Level {counts.level} clusters: pool vs random vs curated",
        caption=(
            "Share of each cluster in each set (log scale). Balanced sampling flattens the "
            "pool's long tail: big clusters lose share, small ones gain; a uniform random "
            "sample follows the pool. Entropy 1 means evenly spread over the pool's clusters."
        ),
        png=_png(fig),
    )


def class_figure(shares: ClassShares) -> Figure:
    """Truth-class shares of the pool, the random baseline and the curated sample."""
    fig = _new_figure(10, 3.8)
    ax = fig.subplots()
    sets = [s for s in SETS if s in shares.shares]
    _plot_shares(ax, {s: shares.shares[s] for s in sets}, shares.names)
    ax.set_title(
        "class entropy: " + ", ".join(f"{s} {format_value(shares.entropies.get(s))}" for s in sets)
    )
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.16, top=0.9)
    return Figure(
        name="balance_classes.png",
        title="Truth classes: pool vs random vs curated",
        caption="Share of each truth class (from the survey's truth catalogue) in each set.",
        png=_png(fig),
    )


def _plot_shares(ax: Any, counts: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
    """Draw grouped bars (up to 60 labelled categories) or step lines of the shares."""
    x = np.arange(len(names))
    width = 0.8 / max(len(counts), 1)
    for i, (name, values) in enumerate(counts.items()):
        share = np.asarray(values, dtype=np.float64) / max(float(np.sum(values)), 1e-300)
        share = np.where(share > 0, share, np.nan)  # log scale: leave zeros out
        if len(x) <= 60:
            offset = (i - (len(counts) - 1) / 2) * width
            ax.bar(x + offset, share, width=width, color=SET_COLOURS[name], label=name)
        else:
            ax.step(x, share, where="mid", color=SET_COLOURS[name], label=name)
    if len(x) <= 60:
        ax.set_xticks(x, list(names), rotation=90 if len(x) > 20 else 0, fontsize="small")
    ax.set_yscale("log")
    ax.set_ylabel("share of the set")
    ax.legend(loc="upper right", fontsize="small")


def _marker_size(n: int, scale: float, low: float, high: float) -> float:
    """Scatter marker area shrinking with the number of points drawn."""
    return float(np.clip(scale / np.sqrt(max(n, 1)), low, high))


def map_figure(fmap: FeatureMap, top: int) -> Figure:
    """Scatter of the projected pool coloured by top-level cluster, curated points ringed."""
    fig = _new_figure(8, 7)
    ax = fig.subplots()
    ax.scatter(
        fmap.pool_xy[:, 0],
        fmap.pool_xy[:, 1],
        c=fmap.pool_labels % 20,
        cmap="tab20",
        vmin=0,
        vmax=19,
        s=_marker_size(len(fmap.pool_xy), 240.0, 1.5, 20.0),
        alpha=0.7,
        linewidths=0,
        rasterized=True,
    )
    ax.scatter(
        fmap.curated_xy[:, 0],
        fmap.curated_xy[:, 1],
        facecolors="none",
        edgecolors="black",
        s=_marker_size(len(fmap.curated_xy), 400.0, 4.0, 24.0),
        linewidths=0.6,
        label=f"curated ({len(fmap.curated_xy)} drawn)",
    )
    axis = ["1", "2"]
    if fmap.explained is not None:
        axis = [f"1 ({fmap.explained[0]:.0%} of variance)", f"2 ({fmap.explained[1]:.0%})"]
    ax.set_xlabel(f"{fmap.method} {axis[0]}")
    ax.set_ylabel(f"{fmap.method} {axis[1]}")
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(f"{len(fmap.pool_xy)} pool points coloured by level-{top} cluster")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.08, top=0.94)
    return Figure(
        name="feature_map.png",
        title=f"Feature map ({fmap.method})",
        caption=(
            f"{fmap.method} of a uniform subsample of the pool's features, coloured by "
            f"level-{top} cluster (20 colours, repeating); black rings: curated cutouts."
        ),
        png=_png(fig),
    )


def cluster_size_figure(counts: LevelCounts) -> Figure:
    """Distribution of pool points per cluster of one level, and per-cluster sample counts."""
    pool = counts.counts["pool"]
    fig = _new_figure(10, 3.4)
    left, right = fig.subplots(1, 2)
    nonempty = pool[pool > 0]
    bins = np.unique(np.geomspace(1, max(2, int(pool.max()) + 1), 40).astype(int))
    left.hist(nonempty, bins=bins, color=SET_COLOURS["pool"])
    left.set_xscale("log")
    left.set_xlabel("pool points per cluster")
    left.set_ylabel("clusters")
    order = np.lexsort((np.arange(len(pool)), -pool))
    rank = np.arange(1, len(pool) + 1)
    for name in SETS:
        if name in counts.counts:
            values = counts.counts[name][order].astype(float)
            right.plot(
                rank, np.where(values > 0, values, np.nan), color=SET_COLOURS[name], label=name
            )
    right.set_yscale("log")
    right.set_xlabel("cluster rank (by pool size)")
    right.set_ylabel("points")
    right.legend(loc="upper right", fontsize="small")
    fig.suptitle(
        f"level {counts.level}: {len(pool)} clusters, {int((pool == 0).sum())} empty, "
        f"pool sizes {int(nonempty.min()) if len(nonempty) else 0}-{int(pool.max())}"
    )
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.16, top=0.86, wspace=0.25)
    return Figure(
        name=f"cluster_sizes_level_{counts.level}.png",
        title=f"Level {counts.level}: cluster sizes",
        caption="Left: how many clusters hold how many pool points. Right: points per "
        "cluster, clusters ranked by pool size, for each set.",
        png=_png(fig),
    )
