"""Step 3 of the guide: a feature vector per cutout (MLflow run ``feature_extraction``).

Example: ``python scripts/feature_extraction.py --merged-cutouts-id "$MERGED_RUN_ID"``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without install too

from astrocurate.cli import run_script

if __name__ == "__main__":
    run_script("features", "feature_extraction.py")
