"""Step 1 of the guide: cut FITS mosaics into cutouts (MLflow run ``cutting_out``).

Example: ``python scripts/cutouts.py --mosaics_path DIR --output_path DIR --window_size 128``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without install too

from astrocurate.cli import run_script

if __name__ == "__main__":
    run_script("cutouts", "cutouts.py")
