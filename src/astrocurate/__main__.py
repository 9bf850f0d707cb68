"""``python -m astrocurate``: the same command line as ``astrocurate``."""

import sys

from astrocurate.cli import main

if __name__ == "__main__":
    sys.exit(main())
