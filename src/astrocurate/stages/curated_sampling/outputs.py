"""What a ``curated_sampling`` run leaves: the file names its readers share.

The light half of the sampling stage (names only, no imports), so that the report, the
training dataset and the demo read a sampling run without importing the stage.

A sampling run directory holds::

    selected.npy           int64 feature rows of the curated sample, sorted
    baseline_random.npy    int64 rows of the uniform baseline of the same size
    curated.parquet        the manifest rows of the sample
    metrics.json           entropies, class shares (also logged to the run)
    near_duplicates.parquet  with --dedup-threshold: each near-duplicate left out, the
                           cutout it repeats, their cosine similarity, its level-1 cluster
    outliers.parquet       with --outliers: the outliers, most anomalous first (cutout_id,
                           outlier_score, rank)
    quality_flags.parquet  with --min-peak-snr or --max-noise-ratio: each flagged cutout
                           (cutout_id, peak_snr_local, noise_ratio, empty, noisy)
    sampling.json          the options and the runs it read
    export/<format>/       the training-ready export (npy: stacks + manifest.parquet)
    report/                the HTML curation report
"""

from __future__ import annotations

SELECTED = "selected.npy"
BASELINE = "baseline_random.npy"
CURATED = "curated.parquet"
METRICS = "metrics.json"
NEAR_DUPLICATES = "near_duplicates.parquet"
OUTLIERS = "outliers.parquet"
QUALITY_FLAGS = "quality_flags.parquet"
INFO = "sampling.json"
EXPORT_DIR = "export"
REPORT_DIR = "report"
