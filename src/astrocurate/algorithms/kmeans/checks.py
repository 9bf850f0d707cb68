"""Parameter checks of the k-means estimators, used at their public boundary only."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from astrocurate.errors import InvalidArgumentError

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


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an int, checked to lie in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise InvalidArgumentError(f"{name}={value!r} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidArgumentError(f"{name}={value!r} must be <= {maximum}")
    return int(value)


def check_choice(name: str, value: Any, options: Sequence[str]) -> str:
    """Return ``value``, checked to be one of ``options``."""
    if not isinstance(value, str) or value not in options:
        valid = ", ".join(repr(o) for o in options)
        raise InvalidArgumentError(f"{name}={value!r} is not valid; choose one of {valid}")
    return value


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
