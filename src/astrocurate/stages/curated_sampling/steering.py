"""Catalogue-steered sampling: balance over a source-catalogue column inside the clusters.

The cutting step attaches per-cutout catalogue columns (number of sources, largest flux
and size, S_Code counts) when it is given a source catalogue. ``--steer-by COLUMN`` bins
one of them (``--steer-bins``: N quantile bins or explicit edges; ``s_code`` is the most
complex code inside the cutout: none, S, M or C) and adds the bins as a level below the
level-1 clusters: every level-1 cluster's share of the budget is then split evenly over
the bins present in it (:func:`astrocurate.algorithms.sampling.balanced_sample` on the
extended tree), so rare sizes or morphologies inside a concept are not drowned by the
common ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from astrocurate.algorithms import sampling
from astrocurate.algorithms.catalogue_match import dominant_s_code, steering_labels
from astrocurate.errors import InvalidArgumentError
from astrocurate.io.cutout_store import read_manifest_rows

#: Catalogue columns a sample can be steered by (``s_code`` derived from the S_Code counts).
STEERABLE = ("max_size_arcsec", "max_flux_jy", "n_sources", "s_code")
_S_CODE_COUNTS = ("n_single", "n_multiple", "n_complex")


def parse_bins(text: str) -> int | list[float]:
    """``"4"``: four quantile bins; ``"10,30,60"``: those increasing edges (one-line errors)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        if len(parts) == 1 and parts[0].isdigit():
            count = int(parts[0])
            if count < 2:
                raise ValueError
            return count
        edges = [float(p) for p in parts]
    except ValueError:
        edges = []
    if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
        raise InvalidArgumentError(
            f"--steer-bins: expected a number of bins >= 2 or increasing edges like "
            f"10,30,60, got {text!r}"
        )
    return edges


@dataclass(frozen=True)
class Steering:
    """Bin of every pool cutout in the steering column."""

    column: str
    labels: np.ndarray  # int64 per pool position
    names: list[str]

    def levels(self, labels: list[np.ndarray]) -> list[np.ndarray]:
        """Return the cluster levels with the bins inside each level-1 cluster added below."""
        pairs = labels[0].astype(np.int64) * len(self.names) + self.labels
        _, below = np.unique(pairs, return_inverse=True)
        return [below.reshape(-1).astype(np.int64), *labels]

    def metrics(self, chosen: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
        """Share of every bin in the pool, the sample and the random baseline."""
        metrics: dict[str, float] = {}
        k = len(self.names)
        for kind, positions in (("pool", slice(None)), ("curated", chosen), ("random", baseline)):
            counts = np.bincount(self.labels[positions], minlength=k)
            shares = counts / max(counts.sum(), 1)
            for name, share in zip(self.names, shares, strict=True):
                metrics[f"steer_share_{name}_{kind}"] = float(share)
            metrics[f"steer_entropy_{kind}"] = sampling.normalized_entropy(counts, k)
        return metrics


def steer(merged_dir: Path, rows: np.ndarray, column: str, bins: int | list[float]) -> Steering:
    """Bin the pool's cutouts by a catalogue column of the merged manifest.

    Raises
    ------
    InvalidArgumentError
        For a column that is not steerable, or one the merged cutouts have no value of
        (cut without a catalogue).
    """
    if column not in STEERABLE:
        raise InvalidArgumentError(
            f"--steer-by: expected one of {', '.join(STEERABLE)}, got {column!r}"
        )
    wanted = _S_CODE_COUNTS if column == "s_code" else (column,)
    table = read_manifest_rows(merged_dir, rows, wanted)
    if any(
        name not in table or not np.isfinite(table[name].to_numpy(float)).any() for name in wanted
    ):
        raise InvalidArgumentError(
            f"--steer-by {column}: the merged cutouts in {merged_dir} have no catalogue "
            "values; cut the mosaics with a source catalogue (cutouts --catalogue)"
        )
    if column == "s_code":
        values = dominant_s_code(*(table[name].to_numpy(float) for name in _S_CODE_COUNTS))
        labels, names = steering_labels(values, bins)
    else:
        labels, names = steering_labels(table[column].to_numpy(float), bins)
    return Steering(column, np.asarray(labels, dtype=np.int64), [_metric_name(n) for n in names])


def _metric_name(name: str) -> str:
    """Return a bin's name as MLflow metric names allow: ``[5.3, 6.7)`` -> ``5.3_to_6.7``."""
    text = str(name).strip("[]() ").replace(", ", "_to_")
    text = text.replace("<", "below_").replace(">", "above_").replace(" ", "")
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text)
