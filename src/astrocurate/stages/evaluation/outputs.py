"""What an ``evaluation`` run leaves: the file names its readers share.

The light half of the evaluation stage (names only, no imports). An evaluation run
directory holds::

    evaluation.json                 the options, the runs read, the arms, the labels
    labels.parquet                  the labelled cutouts: merged row, position, categories
    arms/<arm>/seed_<s>/
        checkpoint.pt               the training state of the last epoch (while training)
        encoder.pt                  the pretrained encoder ({"architecture", "encoder"})
        embeddings.npy              float32 (m, d) frozen features of the labelled cutouts
        scores.json                 the probes' metrics on this seed's folds
        loss.npy                    float32 training loss per step
        timing.json                 seconds and images/s of the pretraining (not a result)
    scores.parquet                  one row per arm, seed and metric
    metrics.json                    mean and spread over seeds, per arm (also logged)
    report/index.html               curated vs random (vs pool) per category, with spread
"""

from __future__ import annotations

INFO = "evaluation.json"
#: The ``labels`` parameter of a run scored on the survey's truth catalogue.
TRUTH = "truth catalogue"
LABELS = "labels.parquet"
ARMS_DIR = "arms"
CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.pt"
EMBEDDINGS = "embeddings.npy"
SEED_SCORES = "scores.json"
LOSS = "loss.npy"
TIMING = "timing.json"
SCORES = "scores.parquet"
METRICS = "metrics.json"
REPORT_DIR = "report"


def seed_dir_name(seed: int) -> str:
    """Name of one seed's folder under ``arms/<arm>/``."""
    return f"seed_{seed}"
