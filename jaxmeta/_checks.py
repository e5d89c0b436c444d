"""Argument checks shared by every module: one place, one message for each kind of mistake.

Each raises ``ValueError`` (``TypeError`` for a table that is not a DataFrame)
naming the bad value and what to pass instead.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ("columns", "fraction", "json_ready", "positive_int", "shown")


def shown(value: Any) -> str:
    """repr of a value, numpy scalars shown as the Python ones (7.0, not np.float32(7.0))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def positive_int(name: str, value: Any, what: str = "") -> int:
    """``value`` as an int when it is a whole number >= 1 (not a bool).

    Example:
      >>> positive_int("steps", 3)
      3
      >>> positive_int("steps", 0, "outer steps")
      Traceback (most recent call last):
      ...
      ValueError: steps=0: pass a whole number >= 1 (outer steps).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r}: pass a whole number >= 1" + (f" ({what})." if what else "."))
    return int(value)


def fraction(name: str, value: Any, *, zero: bool = False) -> float:
    """``value`` as a float when it is a number in (0, 1), or in [0, 1) with ``zero`` (0: none)."""
    low_ok = value >= 0 if zero else value > 0
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (low_ok and value < 1):
        span = "in [0, 1) (0: none)" if zero else "strictly between 0 and 1"
        raise ValueError(f"{name}={value!r}: pass a number {span}.")
    return float(value)


def columns(frame: Any, needed: Sequence[str], what: str, hint: str = "") -> None:
    """Checks that ``frame`` is a DataFrame holding the columns ``needed``."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}.")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} lacks the column(s) {missing}; available columns: {list(frame.columns)}. "
            f"{hint or 'Pass a table with canonical columns, e.g. from jaxmeta.data.movielens.'}".rstrip()
        )


def json_ready(value: Any) -> Any:
    """``value`` with every float that is not finite (NaN, inf), numpy ones included, made ``None``:
    what ``json.dumps(..., allow_nan=False)`` accepts, so the output is valid JSON (``null``).

    Example:
      >>> import json
      >>> json.dumps(json_ready({"mae": float("nan"), "steps": [1, np.float32(0.5)], "rmse": np.inf}))
      '{"mae": null, "steps": [1, 0.5], "rmse": null}'
    """
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
