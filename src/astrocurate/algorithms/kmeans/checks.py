"""Parameter checks of the k-means estimators, used at their public boundary only.

Integers and choices are checked by :mod:`astrocurate.validation`, in the wording of every
other layer; what is particular to k-means is here.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from astrocurate.errors import InvalidArgumentError
from astrocurate.validation import check_choice, check_int

__all__ = [
    "VALID_INITS",
    "VALID_PRECISIONS",
    "check_block_size",
    "check_choice",
    "check_distributed",
    "check_int",
    "check_random_state",
    "check_tol",
]

VALID_INITS = ("k-means++", "random")
VALID_PRECISIONS = ("highest", "tf32")


def check_tol(tol: Any) -> float | None:
    """Return ``tol`` as a float (None kept), checked finite and >= 0."""
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol):
        raise InvalidArgumentError(f"tol={tol!r} must be None or a finite number >= 0")
    if tol < 0:
        raise InvalidArgumentError(f"tol={tol!r} must be >= 0")
    return float(tol)


def check_random_state(random_state: Any) -> None:
    """Check that ``random_state`` is None, an int >= 0, a SeedSequence or a Generator."""
    if random_state is None or isinstance(
        random_state, np.random.Generator | np.random.SeedSequence
    ):
        return
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise InvalidArgumentError(
            f"random_state={random_state!r} must be None, an integer >= 0, "
            "a numpy SeedSequence or a numpy Generator"
        )
    if random_state < 0:
        raise InvalidArgumentError(f"random_state={random_state!r} must be >= 0")


def check_distributed(value: Any) -> None:
    """Check that ``distributed`` is None, True or False."""
    if value is not None and not isinstance(value, bool):
        raise InvalidArgumentError(f"distributed={value!r} must be None, True or False")


def check_block_size(name: str, value: Any) -> int | None:
    """Return a block size: None, or an int >= 1."""
    return None if value is None else check_int(name, value, 1)
