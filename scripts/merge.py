"""Step 2 of the guide: merge cutout runs into one manifest (MLflow run ``merge_cutouts``).

Example: ``python scripts/merge.py --cutouts-id "$CUTOUTS_RUN_ID_64" "$CUTOUTS_RUN_ID_128"``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without install too

from astrocurate.cli import run_script

if __name__ == "__main__":
    run_script("merge", "merge.py")
