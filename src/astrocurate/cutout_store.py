"""Moved to :mod:`astrocurate.io.cutout_store`; this alias is kept for one release."""

import sys
import warnings

from astrocurate.io import cutout_store as _moved

warnings.warn(
    "astrocurate.cutout_store moved to astrocurate.io.cutout_store",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
