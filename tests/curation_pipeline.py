"""A small real pipeline shared by the sampling and report tests (built once per session).

Synthetic survey → cutouts of 32 and 64 px → merge → a stand-in feature run (scaled cutout
statistics, so no backbone is needed) → a finished 2-level clustering over 85 % of the
rows, so that the pool is smaller than the survey as with ``subset_indices_path``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from astrocurate.io.cutout_store import read_manifest
from astrocurate.stages.clustering.run import ClusteringConfig, prepare_clustering, run_clustering
from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
from astrocurate.stages.merge_cutouts.run import merge_cutouts
from astrocurate.synthetic.survey import make_survey
from astrocurate.tracking import StepRun, tracked_step

CONFIG = {
    "n_clusters": [14, 4],
    "n_iters": [10, 10],
    "n_resampling_steps": [2, 1],
    "sample_size": [4, 2],
    "sampling_strategy": ["r", "r"],
    "checkpoint_period": 600,
    "ngpus_per_node": 0,
    "device": "cpu",
}


def features_from_manifest(manifest: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """Stand-in features: scaled cutout statistics plus a little noise (float32)."""
    stats = manifest[["mean", "std", "max", "noise_mad", "peak_snr"]].to_numpy(dtype=np.float64)
    stats = np.sign(stats) * np.log1p(np.abs(stats) * 1e4)
    size = (manifest["window_size"].to_numpy(dtype=np.float64) / 64.0)[:, None]
    X = np.hstack([stats, size, np.zeros((len(manifest), 2))])  # noqa: N806
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-9)  # noqa: N806
    X += np.random.default_rng(seed).normal(scale=0.05, size=X.shape)  # noqa: N806
    return X.astype(np.float32)


def feature_run(merged_run_id: str, X: np.ndarray) -> StepRun:  # noqa: N803
    """Record a ``feature_extraction`` run of the merge holding ``X`` (what step 3 writes)."""
    with tracked_step(
        "feature_extraction", {"rows": len(X)}, input_run_ids=[merged_run_id], force=True
    ) as run:
        np.save(run.output_dir / "features.npy", X)
        sidecar = {"model": "stats", "n_rows": len(X), "dim": X.shape[1], "dtype": "float32"}
        (run.output_dir / "features.json").write_text(json.dumps(sidecar))
    return run


@dataclass
class Pipeline:
    """The runs of the small pipeline."""

    merged: StepRun
    features: StepRun
    clustering_id: str
    clustering_dir: Path
    manifest: pd.DataFrame
    pool: np.ndarray  # feature rows that were clustered

    def point_labels(self, level: int) -> np.ndarray:
        """Level-``level`` cluster of every feature row (-1 outside the pool)."""
        return np.load(self.clustering_dir / f"level_{level}" / "point_labels.npy")


def build_pipeline(work: Path, seed: int = 11) -> Pipeline:
    """Run the pipeline up to a finished clustering in ``work`` (tracking set by the caller)."""
    survey = make_survey(work / "survey", n_mosaics=2, mosaic_size=256, seed=seed)
    cuts = [
        make_cutouts(survey.output_dir, work / "outputs", CutoutOptions(size), workers=1)
        for size in (32, 64)
    ]
    merged = merge_cutouts([c.run_id for c in cuts])
    manifest = read_manifest(merged.output_dir)
    features = feature_run(merged.run_id, features_from_manifest(manifest))
    rng = np.random.default_rng(3)
    pool = np.sort(rng.choice(len(manifest), int(0.85 * len(manifest)), replace=False))
    subset = work / "subset.npy"
    np.save(subset, pool)
    config = ClusteringConfig.from_mapping({**CONFIG, "subset_indices_path": str(subset)})
    prepared = prepare_clustering(features.run_id, config)
    run_clustering(prepared.directory)
    return Pipeline(merged, features, prepared.run_id, prepared.directory, manifest, pool)
