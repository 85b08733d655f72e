"""Boundary checks shared by the public entry points.

Every message names the parameter, the bad value and what is expected, in the style of
scikit-learn's parameter validation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def check_sparsity(sparsity: object, *, caller: str = "prune") -> float:
    """Return ``sparsity`` as a float in [0, 1) or raise.

    >>> check_sparsity(0.5)
    0.5
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float):
        raise TypeError(
            f"The 'sparsity' parameter of {caller} must be a float in the range [0.0, 1.0). "
            f"Got {sparsity!r} of type {type(sparsity).__name__} instead."
        )
    if not math.isfinite(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(
            f"The 'sparsity' parameter of {caller} must be a float in the range [0.0, 1.0). "
            f"Got {sparsity!r} instead."
        )
    return float(sparsity)


def check_choice(name: str, value: object, valid: Iterable[str], *, caller: str) -> str:
    """Return ``value`` if it is one of ``valid``, else raise listing the valid choices."""
    valid = tuple(valid)
    if not isinstance(value, str) or value not in valid:
        listed = ", ".join(repr(v) for v in valid)
        raise ValueError(
            f"The '{name}' parameter of {caller} must be one of {listed}. Got {value!r} instead."
        )
    return value


def check_positive_int(name: str, value: object, *, caller: str) -> int:
    """Return ``value`` if it is an int >= 1, else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"The '{name}' parameter of {caller} must be an int >= 1. Got {value!r} instead."
        )
    return value


def check_nonnegative(name: str, value: object, *, caller: str) -> float:
    """Return ``value`` if it is a finite real number >= 0, else raise."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or value < 0):
        raise ValueError(
            f"The '{name}' parameter of {caller} must be a finite float >= 0. Got {value!r} "
            "instead."
        )
    return float(value)
