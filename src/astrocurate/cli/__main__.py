"""``python -m astrocurate.cli``: what ``run.sh`` and the job scripts of every version call."""

import sys

from astrocurate.cli import main

if __name__ == "__main__":
    sys.exit(main())
