"""Step 3 of the guide: a feature vector per cutout (MLflow run ``feature_extraction``).

Example: ``python scripts/feature_extraction.py --merged-cutouts-id "$MERGED_RUN_ID"``.

In N processes (one run, one matrix): add ``--shard K/N`` to each (``--shard auto`` in a
SLURM job array or under torchrun); the last shard to finish finishes the run, or add
``--finish`` to the same command (``astrocurate features-finish RUN_ID``) once all are
done. ``--slurm-array N`` writes a script that submits the shards and the finishing job.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without install too

from astrocurate.cli import run_script

if __name__ == "__main__":
    run_script("features", "feature_extraction.py")
