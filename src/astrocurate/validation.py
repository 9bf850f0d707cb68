"""Checks of user-given values at the boundary of every layer, in one wording.

Each check returns the value in its plain Python type or raises
:class:`~astrocurate.errors.InvalidArgumentError` (a ``ValueError``) with one line
naming the argument, the value and what was expected, e.g.
``n_clusters=0 must be >= 1`` or ``dtype='int8' must be one of 'float32', 'float64'``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from astrocurate.errors import InvalidArgumentError


def is_int(value: Any) -> bool:
    """Return True for an integer (Python or NumPy), False for a bool or anything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer within ``[minimum, maximum]``.

    Parameters
    ----------
    name : str
        The argument, as the user wrote it.
    value : object
        What was given.
    minimum, maximum : int, optional
        Inclusive bounds; ``None`` for none.

    Raises
    ------
    InvalidArgumentError
        ``<name>=<value> must be an integer ...`` for another type,
        ``... must be >= minimum`` or ``... must be <= maximum`` out of range.
    """
    if not is_int(value):
        raise InvalidArgumentError(f"{name}={value!r} must be {_integer_range(minimum, maximum)}")
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"{name}={value!r} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidArgumentError(f"{name}={value!r} must be <= {maximum}")
    return int(value)


def _integer_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an integer >= {minimum}"
    return "an integer" if maximum is None else f"an integer <= {maximum}"


def check_real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = True,
    high_open: bool = True,
) -> float:
    """Return ``value`` as a float if it is a finite number within the bounds.

    Parameters
    ----------
    name : str
        The argument, as the user wrote it.
    value : object
        What was given.
    low, high : float, optional
        Bounds; ``None`` for none.
    low_open, high_open : bool
        Whether each bound is excluded (default) or included.

    Raises
    ------
    InvalidArgumentError
        ``<name>=<value> must be a finite number in (low, high)`` (brackets as the bounds).
    """
    lower = "" if low is None else ("(" if low_open else "[") + f"{low:g}, "
    upper = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    interval = f" in {lower or '(-inf, '}{upper or 'inf)'}" if lower or upper else ""
    message = f"{name}={value!r} must be a finite number{interval}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(message)
    number = float(value)
    outside = not math.isfinite(number)
    outside |= low is not None and (number <= low if low_open else number < low)
    outside |= high is not None and (number >= high if high_open else number > high)
    if outside:
        raise InvalidArgumentError(message)
    return number


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of the strings ``choices``.

    Raises
    ------
    InvalidArgumentError
        ``<name>=<value> must be one of 'a', 'b'``.
    """
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise InvalidArgumentError(
            f"{name}={value!r} must be one of {', '.join(map(repr, options))}"
        )
    return value
