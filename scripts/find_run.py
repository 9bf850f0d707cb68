"""Print the ID of the most recent matching run (or its output directory with --get-path).

Example: ``python scripts/find_run.py --run-name cutting_out --window_size 64``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works without install too

from astrocurate.cli import run_script

if __name__ == "__main__":
    run_script("find-run", "find_run.py")
