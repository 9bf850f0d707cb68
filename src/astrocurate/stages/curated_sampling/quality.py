"""What no training set wants, found before sampling: near-duplicates, outliers, noise.

Positions are pool positions (index into the clustering's pool); rows are feature rows
(= merged ``cutout_id``). :func:`find_near_duplicates` marks the semantic near-duplicates
inside each level-1 cluster (:mod:`astrocurate.algorithms.duplicates`);
:func:`find_outliers` scores every pool cutout with an isolation forest
(:mod:`astrocurate.algorithms.outliers`); :func:`find_noise_flags` finds empty sky and
too-noisy regions (:mod:`astrocurate.algorithms.noise_flags`). :func:`select` draws the
balanced sample from the cutouts left eligible, after the outliers forced in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate.algorithms import sampling
from astrocurate.io.cutout_store import read_manifest_rows, write_parquet_atomic
from astrocurate.stages.curated_sampling.outputs import NEAR_DUPLICATES, OUTLIERS, QUALITY_FLAGS
from astrocurate.stages.feature_extraction.outputs import load_features

log = logging.getLogger(__name__)

#: The outliers whose truth classes are counted in the metrics (the most anomalous first).
TOP_COUNTED = 100


@dataclass(frozen=True)
class PoolDuplicates:
    """Near-duplicates among the pool."""

    found: Any  # algorithms.duplicates.NearDuplicates over every feature row
    rows: np.ndarray  # feature row of each pool position
    features: np.ndarray
    groups: np.ndarray
    center: np.ndarray  # the pool's mean feature vector

    @property
    def kept(self) -> np.ndarray:
        """Mask over pool positions: not a near-duplicate of another cutout."""
        return self.found.kept[self.rows]

    def metrics(self, chosen: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
        """Duplicates in the pool, and near-duplicate pairs left in each sample."""
        from astrocurate.algorithms.duplicates import pairs_within

        n = int((~self.kept).sum())
        pairs = {
            f"near_duplicate_pairs_{kind}": pairs_within(
                self.features,
                self.groups,
                self.found.threshold,
                self.rows[positions],
                center=self.center,
            )
            for kind, positions in (("curated", chosen), ("random", baseline))
        }
        return {"near_duplicates_pool": n, "near_duplicate_share_pool": n / len(self.rows), **pairs}

    def table(self, level_one: np.ndarray) -> pd.DataFrame:
        """One row per duplicate: its row, the row it repeats, their similarity, cluster."""
        positions = np.flatnonzero(~self.kept)
        rows = self.rows[positions]
        return pd.DataFrame(
            {
                "cutout_id": rows,
                "duplicate_of": self.found.duplicate_of[rows],
                "similarity": self.found.similarity[rows],
                "cluster_l1": np.asarray(level_one)[positions].astype(np.int64),
            }
        )


@dataclass(frozen=True)
class PoolOutliers:
    """Outlier scores of the pool and its most anomalous share."""

    scores: np.ndarray  # per pool position
    top: np.ndarray  # pool positions of the outliers, most anomalous first

    def metrics(
        self, chosen: np.ndarray, baseline: np.ndarray, truth: np.ndarray | None
    ) -> dict[str, float]:
        """Outliers in the pool and in each sample; with truth, the classes of the top ones."""
        mask = np.zeros(len(self.scores), dtype=bool)
        mask[self.top] = True
        metrics = {
            "outliers_pool": len(self.top),
            "outlier_share_curated": float(mask[chosen].mean()),
            "outlier_share_random": float(mask[baseline].mean()),
        }
        if truth is not None:
            top = truth[self.top[:TOP_COUNTED]]
            for name in np.unique(truth):
                metrics[f"outlier_top{TOP_COUNTED}_class_share_{name}"] = float(
                    np.mean(top == name)
                )
        return metrics

    def table(self, rows: np.ndarray) -> pd.DataFrame:
        """Return the outliers, most anomalous first: ``cutout_id``, ``outlier_score``, ``rank``."""
        return pd.DataFrame(
            {
                "cutout_id": rows[self.top],
                "outlier_score": self.scores[self.top],
                "rank": np.arange(1, len(self.top) + 1),
            }
        )


@dataclass(frozen=True)
class QualityChecks:
    """The checks a sampling run asked for (each None when not asked)."""

    duplicates: PoolDuplicates | None
    outliers: PoolOutliers | None
    noise: Any = None  # algorithms.noise_flags.NoiseFlags over pool positions

    def eligible(self, pool_size: int, exclude_outliers: bool) -> np.ndarray:
        """Pool positions the balanced sample may draw: no duplicate, no excluded outlier."""
        mask = np.ones(pool_size, dtype=bool)
        if self.duplicates is not None:
            mask &= self.duplicates.kept
        if exclude_outliers and self.outliers is not None:
            mask[self.outliers.top] = False
        if self.noise is not None:
            mask &= ~self.noise.flagged
        return np.flatnonzero(mask)

    def forced(self, include_outliers: bool) -> np.ndarray:
        """Pool positions put in the sample first: the outliers, with ``include``."""
        if not include_outliers or self.outliers is None:
            return np.empty(0, dtype=np.int64)
        keep = np.ones(len(self.outliers.scores), dtype=bool)
        if self.duplicates is not None:
            keep &= self.duplicates.kept
        if self.noise is not None:
            keep &= ~self.noise.flagged
        return self.outliers.top[keep[self.outliers.top]]

    def write(
        self,
        out: Path,
        rows: np.ndarray,
        level_one: np.ndarray,
        chosen: np.ndarray,
        baseline: np.ndarray,
        truth: np.ndarray | None,
    ) -> dict[str, float]:
        """Write the lists of duplicates, outliers and flagged cutouts; return their metrics."""
        metrics: dict[str, float] = {}
        if self.duplicates is not None:
            metrics.update(self.duplicates.metrics(chosen, baseline))
            write_parquet_atomic(self.duplicates.table(level_one), out / NEAR_DUPLICATES)
        if self.outliers is not None:
            metrics.update(self.outliers.metrics(chosen, baseline, truth))
            write_parquet_atomic(self.outliers.table(rows), out / OUTLIERS)
        if self.noise is not None:
            for name, flag in (("faint", self.noise.empty), ("noisy", self.noise.noisy)):
                if flag is not None:
                    metrics.update(_flag_metrics(name, flag, chosen, baseline))
            write_parquet_atomic(_flag_table(self.noise, rows), out / QUALITY_FLAGS)
        return metrics


def _flag_metrics(
    name: str, flag: np.ndarray, chosen: np.ndarray, baseline: np.ndarray
) -> dict[str, float]:
    """How many of the pool a flag marks, and its share in the pool and each sample."""
    return {
        f"{name}_pool": int(flag.sum()),
        f"{name}_share_pool": float(flag.mean()),
        f"{name}_share_curated": float(flag[chosen].mean()) if len(chosen) else 0.0,
        f"{name}_share_random": float(flag[baseline].mean()) if len(baseline) else 0.0,
    }


def _flag_table(noise: Any, rows: np.ndarray) -> pd.DataFrame:
    """One row per flagged cutout, lowest peak S/N first."""
    positions = np.flatnonzero(noise.flagged)
    positions = positions[
        np.argsort(np.nan_to_num(noise.snr[positions], nan=-np.inf), kind="stable")
    ]
    no_flag = np.zeros(len(positions), dtype=bool)
    return pd.DataFrame(
        {
            "cutout_id": rows[positions],
            "peak_snr_local": noise.snr[positions],
            "noise_ratio": noise.ratio[positions],
            "empty": no_flag if noise.empty is None else noise.empty[positions],
            "noisy": no_flag if noise.noisy is None else noise.noisy[positions],
        }
    )


def find_near_duplicates(
    features_dir: Path,
    merged_dir: Path,
    rows: np.ndarray,
    level_one: np.ndarray,
    threshold: float,
) -> PoolDuplicates:
    """Find the pool's near-duplicates inside its level-1 clusters, keeping the highest SNR.

    Features are compared centred on the pool's mean (a component every cutout shares,
    as weight-free features have, would otherwise make them all alike).
    """
    from astrocurate.algorithms.duplicates import near_duplicates
    from astrocurate.algorithms.noise_flags import local_peak_snr

    features = load_features(features_dir, random_access=True)
    groups = -1 - np.arange(len(features), dtype=np.int64)  # outside the pool: alone
    groups[rows] = level_one
    priority = np.zeros(len(features))
    table = read_manifest_rows(merged_dir, rows, ["peak_snr", "peak_snr_map"])
    snr = local_peak_snr(table["peak_snr"], table.get("peak_snr_map", np.nan))
    priority[rows] = np.nan_to_num(snr, nan=-np.inf)
    center = _mean_row(features, rows)
    found = near_duplicates(features, groups, threshold, priority, center=center)
    log.info(
        "%d of %d cutouts are near-duplicates (cosine >= %g in their level-1 cluster)",
        found.n_duplicates,
        len(rows),
        threshold,
    )
    return PoolDuplicates(found, rows, features, groups, center)


def _mean_row(features: np.ndarray, rows: np.ndarray, block: int = 65_536) -> np.ndarray:
    """Mean of the pool's feature vectors, read a block of rows at a time."""
    total = np.zeros(features.shape[1], dtype=np.float64)
    for start in range(0, len(rows), block):
        total += np.asarray(features[rows[start : start + block]], dtype=np.float64).sum(axis=0)
    return (total / max(len(rows), 1)).astype(np.float32)


def find_outliers(features_dir: Path, rows: np.ndarray, share: float, seed: int) -> PoolOutliers:
    """Score the pool with an isolation forest; its ``share`` highest scores are outliers."""
    from astrocurate.algorithms.outliers import outlier_scores, top_outliers

    features = load_features(features_dir, random_access=True)
    scores = outlier_scores(features, rows, seed=seed)
    top = top_outliers(scores, share)
    log.info("%d of %d cutouts are outliers (isolation forest, top %g)", len(top), len(rows), share)
    return PoolOutliers(scores, top)


def find_noise_flags(
    merged_dir: Path,
    rows: np.ndarray,
    min_peak_snr: float | None,
    max_noise_ratio: float | None,
) -> Any:
    """Flag the pool's empty (peak S/N below the minimum, or unknown) and too-noisy cutouts.

    Returns :class:`astrocurate.algorithms.noise_flags.NoiseFlags` over pool positions;
    the noise ratio is taken within each mosaic and window size of the pool.
    """
    from astrocurate.algorithms.noise_flags import NOISE_COLUMNS, flag_noise

    table = read_manifest_rows(merged_dir, rows, [*NOISE_COLUMNS, "mosaic_path", "window_size"])
    groups = table["mosaic_path"].astype(str) + "\0" + table["window_size"].astype(str)
    flags = flag_noise(table, groups.to_numpy(), min_peak_snr, max_noise_ratio)
    for name, flag, limit in (
        ("a peak S/N below", flags.empty, min_peak_snr),
        ("a noise ratio above", flags.noisy, max_noise_ratio),
    ):
        if flag is not None:
            log.info("%d of %d cutouts have %s %g", flag.sum(), len(rows), name, limit)
    return flags


def select(
    labels: Sequence[np.ndarray],
    budget: int,
    *,
    eligible: np.ndarray,
    forced: np.ndarray,
    **balanced: Any,
) -> np.ndarray:
    """Return sorted pool positions: ``forced`` first, then a balanced sample of the rest.

    ``balanced`` are :func:`astrocurate.algorithms.sampling.balanced_sample`'s options
    (``strategy``, ``distances`` over the pool, ``level``, ``random_state``).
    """
    forced = forced[:budget]
    rest = np.setdiff1d(eligible, forced, assume_unique=True)
    left = budget - len(forced)
    if left <= 0 or not len(rest):
        return np.sort(forced)
    distances = balanced.pop("distances", None)
    picked = sampling.balanced_sample(
        [level_labels[rest] for level_labels in labels],
        left,
        distances=None if distances is None else distances[rest],
        **balanced,
    )
    return np.sort(np.concatenate([forced, rest[picked]]))
