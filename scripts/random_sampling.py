"""Step 5 of the guide: balanced curated sample (MLflow run ``curated_sampling``).

Example::

    python scripts/random_sampling.py --clustering-id "$CLUSTERING_RUN_ID" --num-samples 10000
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without install too

from astrocurate.cli import run_script

if __name__ == "__main__":
    run_script("sample", "random_sampling.py")
