"""Step 6: pretrain on the curated and on the random sample, compare (MLflow run ``evaluation``).

Example::

    python scripts/evaluate.py --sampling-id "$SAMPLING_RUN_ID"
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without install too

from astrocurate.cli import run_script

if __name__ == "__main__":
    run_script("evaluate", "evaluate.py")
