"""From a score to a rating on the data's own scale: the decoding that minimises MAE.

Every model here predicts a score fitted under squared error, so at best the
conditional *mean* rating. MAE is minimised by the conditional *median*, and on a
discrete scale (MovieLens' 1 to 5 stars) the median is one of the scale's levels.
The best non-decreasing map from a score to a prediction under MAE (the L1
isotonic regression of the ratings on the score) is therefore a staircase onto the
levels: ``L - 1`` cut points, the score at which the prediction steps from one
level to the next.

:func:`fit_cut_points` finds them exactly. For levels ``l_1 < ... < l_L`` and a
prediction ``k`` and rating ``y`` on the scale,
``|k - y| = sum_j (l_{j+1} - l_j) * |[k > l_j] - [y > l_j]|``, so MAE splits into
one threshold problem per gap ("is the rating above ``l_j``?"), each solved by
one pass over the sorted scores. The per-gap optima, sorted, are optimal jointly:
for ``j < k`` the difference of the two gaps' errors is non-decreasing in the cut,
so swapping two crossed cuts never costs either gap anything.

Fit the cut points on validation users (never on the users they score) and
decode only where MAE is the metric: the staircase loses RMSE and is flat within
a step, so rank by the raw score.

Example:
  >>> import numpy as np
  >>> scores = np.array([[1.2, 2.9, 3.4], [3.6, 4.4, 0.0]])
  >>> ratings = np.array([[1.0, 3.0, 3.0], [4.0, 5.0, 0.0]])
  >>> mask = np.array([[True, True, True], [True, True, False]])
  >>> decode = fit_cut_points(scores, ratings, mask)
  >>> decode.levels.tolist()
  [1.0, 3.0, 4.0, 5.0]
  >>> decode(np.array([1.0, 3.4, 3.55, 9.0])).tolist()
  [1.0, 3.0, 4.0, 5.0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from jaxmeta.evaluation import predict_tasks
from jaxmeta.tasks import TaskBatch

MAX_LEVELS = 64  # more distinct ratings than this is not a discrete scale
TIE = 1e-9  # errors within this fraction of the total weight of the least are tied


class CutPoints(NamedTuple):
    """A discrete rating scale and the score cut points between its levels.

    Calling it maps scores (any shape) to levels: a score below ``cuts[0]`` is
    ``levels[0]``; one at or above ``cuts[j - 1]`` and below ``cuts[j]`` is ``levels[j]``.
    """

    levels: np.ndarray  # float64 [L], ascending: the ratings seen
    cuts: np.ndarray  # float64 [L - 1], non-decreasing; -inf where a step is always taken, inf where never

    def __call__(self, scores: Any) -> np.ndarray:
        scores = np.asarray(scores, np.float64)
        decoded = self.levels[np.searchsorted(self.cuts, scores, side="right")]
        return np.where(np.isnan(scores), np.nan, decoded)  # searchsorted would put nan above every cut


def is_discrete(targets: Any, mask: Any) -> bool:
    """Whether the real ratings (``mask`` True) take at most ``MAX_LEVELS`` distinct values: a scale
    :func:`fit_cut_points` can decode onto (MovieLens' stars are; the built-in synthetic ratings are not)."""
    real = np.asarray(targets)[np.asarray(mask, bool)]
    return np.unique(real[np.isfinite(real)]).size <= MAX_LEVELS


def _best_cut(scores: np.ndarray, above: np.ndarray, weights: np.ndarray) -> float:
    """The cut ``t`` minimising the weight of ``above != (scores >= t)``, ``scores`` sorted ascending."""
    # cutting before sorted position i: rows below i predicted "not above", rows from i on "above"
    missed = np.concatenate([[0.0], np.cumsum(weights * above)])  # weight of "above" rows below the cut
    wrong = np.concatenate([np.cumsum((weights * ~above)[::-1])[::-1], [0.0]])  # "not above" rows from it on
    # a cut can only fall between two different scores, or beyond either end
    errors = np.where(np.concatenate([[True], scores[1:] > scores[:-1], [True]]), missed + wrong, np.inf)
    # the first of the least errors, equal up to rounding in the sums of 1/n: exact ties then pick the same
    # side in every gap, so the gaps' cuts come out in order
    i = int(np.argmax(errors <= errors.min() + TIE * max(1.0, float(weights.sum()))))
    if i == 0:
        return -np.inf
    if i == len(scores):
        return np.inf
    low, high = float(scores[i - 1]), float(scores[i])
    cut = low / 2 + high / 2  # never overflows; between adjacent floats it can round down onto `low`, which
    return cut if low < cut else high  # must stay below the cut


def fit_cut_points(scores: Any, targets: Any, mask: Any) -> CutPoints:
    """The MAE-optimal non-decreasing decoding of ``scores`` onto the ratings' levels.

    MAE is weighted as the tables compute it, per user and then averaged over
    users: each of a user's ``n`` real ratings weighs ``1 / n``.

    Args:
      scores: float ``[users, items]``, a model's predictions (validation users').
      targets: float ``[users, items]``, the true ratings; their distinct real
        values are the levels.
      mask: bool ``[users, items]``; ``False`` marks a padded item, ignored.

    Returns:
      The :class:`CutPoints`: call it on any scores to decode them.

    Raises:
      ValueError: shapes that disagree, no real rating, a real score that is
        ``nan`` or infinite, or more than ``MAX_LEVELS`` distinct ratings (not a
        discrete scale: decode only discrete ratings).
    """
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets, np.float64)
    mask = np.asarray(mask, bool)
    if not scores.shape == targets.shape == mask.shape or scores.ndim != 2:
        raise ValueError(f"fit_cut_points: scores {scores.shape}, targets {targets.shape} and mask {mask.shape}: "
                         "pass three arrays of one shape [users, items].")
    if not mask.any():
        raise ValueError("fit_cut_points: the mask has no real rating: pass at least one True.")
    counts = mask.sum(axis=1, keepdims=True)
    weights = np.broadcast_to(1.0 / np.maximum(counts, 1), mask.shape)[mask]
    scores, targets = scores[mask], targets[mask]
    if not np.isfinite(scores).all():
        raise ValueError(f"fit_cut_points: {int((~np.isfinite(scores)).sum())} real scores are nan or infinite: "
                         "pass finite predictions.")
    if not np.isfinite(targets).all():
        raise ValueError("fit_cut_points: a real rating is nan or infinite: pass finite ratings.")
    levels = np.unique(targets)
    if len(levels) > MAX_LEVELS:
        raise ValueError(f"fit_cut_points: the ratings take {len(levels)} distinct values, more than {MAX_LEVELS}: "
                         "cut points decode onto a discrete scale; pass discrete ratings (or keep the raw scores).")
    order = np.argsort(scores, kind="stable")
    scores, targets, weights = scores[order], targets[order], weights[order]
    cuts = np.sort([_best_cut(scores, targets > level, weights) for level in levels[:-1]])
    return CutPoints(levels, np.asarray(cuts, np.float64))


def fit_predictor(predict: Callable[[TaskBatch], Any], batches: Iterable[TaskBatch]) -> CutPoints:
    """:func:`fit_cut_points` of ``predict``'s query predictions on ``batches`` (validation users'), their
    query ratings and mask (:func:`jaxmeta.evaluation.predict_tasks`)."""
    predictions, queries = predict_tasks(predict, batches)
    return fit_cut_points(predictions, queries.query_y, queries.query_mask)
