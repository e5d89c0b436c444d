"""The scale of a dataset's ratings: inferred from the ratings themselves, or given.

A rating far outside the bulk of the others (a 1e9 among 1–5 stars, a -1 in a
table of 1–5 stars) is a broken row, not a rating: trained on, it turns the loss
and the metrics into NaN. :func:`fences` says which values the bulk admits,
:func:`infer_scale` the scale of the values inside the fences, and
:func:`check_ratings` checks a column of ratings against a scale, inferred or
given. :func:`as_scale` checks a scale the user gives.

Every rating must also be a finite number in float32, the type ratings are
trained in: ``inf``, ``nan`` and ``1e300`` (which is ``inf`` in float32) are
never ratings. The readers of files (:func:`jaxmeta.data.interactions.read_interactions`)
apply the same rules and name the file and line of the first bad row.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)

__all__ = ("FLOAT32_MAX", "RatingScale", "as_scale", "check_ratings", "fences", "finite32", "infer_scale")


class RatingScale(NamedTuple):
    """The inclusive range of a dataset's ratings, e.g. ``RatingScale(1.0, 5.0)`` for 1–5 stars.

    Example:
      >>> str(RatingScale(1.0, 5.0)), str(RatingScale(-10.0, 10.0))
      ('1–5', '-10 to 10')
    """

    low: float  # the lowest rating
    high: float  # the highest rating

    def __str__(self) -> str:
        # an en dash after a minus sign reads as a second minus: "-10–10"
        between = " to " if self.low < 0 else "–"
        return f"{self.low:.7g}{between}{self.high:.7g}"


def finite32(values: Any) -> np.ndarray:
    """Whether each value is finite once cast to float32 (so not inf, nan, nor beyond ±3.4e38).

    Example:
      >>> finite32([4.0, float("inf"), 1e300, -1e30]).tolist()
      [True, False, False, True]
    """
    values = np.asarray(values, dtype=np.float64)
    return np.isfinite(values) & (np.abs(values) <= FLOAT32_MAX)


def fences(values: Any) -> RatingScale:
    """The range of ratings that the bulk of ``values`` admits; values outside it are outliers.

    The rule, on the finite values (non-finite ones are ignored here):

    * ``q_lo``, ``q_hi``: the 1st and the 99th percentiles, taken as observed values
      inward (the ``ceil(0.01 (n - 1))``-th and ``floor(0.99 (n - 1))``-th of the
      sorted values, from 0), so that up to 101 values they are the second smallest
      and second largest: one stray value in a small table is never its own fence.
      With two values neither can be told an outlier, and both are the bulk.
    * ``span = q_hi - q_lo``, or ``max(|q_hi|, 1)`` when that is 0 (0/1 clicks
      with under 1% zeros, a table of equal ratings).
    * ``low = q_lo - span`` when ``q_lo < 0``, else ``max(0, q_lo - span)``: a
      non-negative bulk admits no negative rating. ``high = q_hi + span``.

    Args:
      values: the ratings, any shape; float64 is used, so that values beyond
        float32's range are seen as they are.

    Returns:
      The accepted range, inclusive.

    Raises:
      ValueError: no value is finite.

    Example:
      >>> fences([1, 2, 3, 4, 5, 1e9])  # MovieLens stars, and one broken row
      RatingScale(low=0.0, high=8.0)
      >>> fences([-9.5, -3.0, 0.5, 7.25, 10.0])  # a Jester-like -10..10 scale
      RatingScale(low=-13.25, high=17.5)
      >>> fences([1] * 200 + [0])  # clicks with few zeros
      RatingScale(low=0.0, high=2.0)
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    ordered = np.sort(values[np.isfinite(values)])
    n = len(ordered)
    if n == 0:
        raise ValueError("no finite rating to infer a scale from: pass a table with numeric ratings.")
    lo, hi = -(-(n - 1) // 100), 99 * (n - 1) // 100  # integer ceil and floor: no rounding at n = 101
    if lo > hi:  # two values
        lo, hi = 0, n - 1
    q_lo, q_hi = float(ordered[lo]), float(ordered[hi])
    span = q_hi - q_lo or max(abs(q_hi), 1.0)
    low = q_lo - span if q_lo < 0 else max(0.0, q_lo - span)
    return RatingScale(low, q_hi + span)


def infer_scale(values: Any) -> RatingScale:
    """The scale of ``values``: the least and greatest of those inside their :func:`fences`.

    Args:
      values: the ratings, e.g. the training ratings of a dataset.

    Returns:
      ``RatingScale(min, max)`` of the finite values inside the fences.

    Raises:
      ValueError: no value is finite.

    Example:
      >>> infer_scale([3, 1, 5, 4, 1e9, 2])
      RatingScale(low=1.0, high=5.0)
      >>> str(infer_scale([1000, 5000, 3000, -1]))
      '1000–5000'
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = fences(values)
    inside = values[np.isfinite(values) & (values >= low) & (values <= high)]
    return RatingScale(float(inside.min()), float(inside.max()))


def as_scale(value: Any, name: str = "rating_scale") -> RatingScale | None:
    """A scale given by the user as a :class:`RatingScale` (None stays None).

    Args:
      value: ``(low, high)``: two finite numbers with ``low < high``; or None.
      name: the argument's name, for the error.

    Raises:
      ValueError: ``value`` is not such a pair.

    Example:
      >>> as_scale((1, 5))
      RatingScale(low=1.0, high=5.0)
      >>> as_scale((5, 1))
      Traceback (most recent call last):
      ...
      ValueError: rating_scale=(5, 1): pass (low, high), two finite numbers with low < high, \
e.g. (1, 5) for 1–5 stars.
    """
    if value is None:
        return None
    pair = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else ()
    numeric = len(pair) == 2 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in pair)
    if not (numeric and np.isfinite(pair).all() and abs(max(pair, key=abs)) <= FLOAT32_MAX and pair[0] < pair[1]):
        raise ValueError(f"{name}={value!r}: pass (low, high), two finite numbers with low < high, "
                         "e.g. (1, 5) for 1–5 stars.")
    return RatingScale(float(pair[0]), float(pair[1]))


def _example(values: np.ndarray, bad: np.ndarray) -> str:
    return repr(float(values[np.flatnonzero(bad)[0]]))


def check_ratings(values: Any, scale: RatingScale | tuple[float, float] | None = None, *,
                  what: str = "ratings") -> RatingScale:
    """Checks that every rating is a finite float32 number inside ``scale`` (None: inside its :func:`fences`).

    For ratings that no longer know their file lines (a table already read); the
    readers of files name the line instead.

    Args:
      values: the ratings, in any numeric dtype (float64 keeps values beyond float32 visible).
      scale: the given scale, or None to infer it.
      what: how to name the ratings in the error, e.g. a file.

    Returns:
      ``scale`` when given, else :func:`infer_scale` of ``values``.

    Raises:
      ValueError: a value is not finite (in float32) or is outside the scale;
        says how many, gives an example and what to do.

    Example:
      >>> check_ratings([1, 3, 5])
      RatingScale(low=1.0, high=5.0)
      >>> check_ratings([1, 3, 5, -1, 4])
      Traceback (most recent call last):
      ...
      ValueError: ratings has 1 rating(s) outside the scale of the other ratings (1–5), e.g. -1.0: fix those rows, \
or pass rating_scale=(LOW, HIGH) if the scale is wider.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    given = as_scale(scale)
    bad = ~finite32(values)
    if bad.any():
        beyond = " in float32" if np.isfinite(values[np.flatnonzero(bad)[0]]) else ""
        raise ValueError(f"{what} has {int(bad.sum())} rating(s) that are not finite numbers{beyond}, "
                         f"e.g. {_example(values, bad)}: drop or fix those rows first.")
    low, high = given if given is not None else fences(values)
    outside = (values < low) | (values > high)
    if outside.any():
        if given is not None:
            problem, hint = f"outside rating_scale {given}", "pass a rating_scale that holds them"
        else:
            problem = f"outside the scale of the other ratings ({infer_scale(values)})"
            hint = "pass rating_scale=(LOW, HIGH) if the scale is wider"
        raise ValueError(f"{what} has {int(outside.sum())} rating(s) {problem}, e.g. {_example(values, outside)}: "
                         f"fix those rows, or {hint}.")
    return given if given is not None else infer_scale(values)
