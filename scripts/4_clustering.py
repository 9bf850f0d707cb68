"""Step 4a of the guide: prepare a clustering experiment (MLflow run ``clustering``).

Example: ``python scripts/4_clustering.py --features-id "$FEATURE_RUN_ID"
--config_file configs/clusters/A_3M_3lvl_60k_4k_300.yaml``; then step 4b runs the
experiment directory's ``run.sh``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without install too

from astrocurate.cli import run_script

if __name__ == "__main__":
    run_script("clustering-prepare", "4_clustering.py")
