"""Moved to :mod:`astrocurate.synthetic.survey`; this alias is kept for one release."""

import sys
import warnings

from astrocurate.synthetic import survey as _moved

warnings.warn(
    "astrocurate.survey moved to astrocurate.synthetic.survey", DeprecationWarning, stacklevel=2
)
sys.modules[__name__] = _moved
