"""Per-user evaluation metrics: MAE, RMSE, nDCG@k, precision@k, recall@k and AUC.

Every metric takes the padded arrays the engine produces for a batch of users,

* ``scores``: float ``[users, items]``, the model's predictions;
* ``targets``: float ``[users, items]``, ratings (or 0/1 clicks);
* ``mask``: bool ``[users, items]``, ``False`` for a padded item,

and returns one value per user, float ``[users]``. Results are reported *per user,
then averaged over users* with :func:`mean_over_users`; :func:`pooled_mae` and
:func:`pooled_rmse` pool over ratings instead (the RecBole convention).

Masking: a padded item takes part in nothing. It is excluded with ``jnp.where``
(never by multiplying with the mask), so garbage in a padded slot, ``nan`` and
``inf`` included, cannot reach any value. A user is *undefined* for a metric, and
gets ``nan``, when it has no real item, or for recall no relevant item, for AUC
not both classes, for nDCG no positive ideal gain; padding users are therefore
``nan`` and :func:`mean_over_users` leaves them out. A ``nan`` score or target in a
*real* item also makes that user's value ``nan`` (check for non-finite
predictions separately: the mean over users would silently drop such users).

Candidates: ranking is over the user's real (unmasked) items. To rank over another
candidate set, lay the candidates out as the items (unrated ones with target 0)
and pass ``mask & candidates`` as the mask; there is no separate argument.

Ties: ratings are whole stars and models often give equal scores, so every ranking
metric is *tie-aware*: a group of items with equal scores counts as the expectation
over a uniformly random order within the group, never as whatever order the
arrays happen to be in. For a positional weight ``w`` (a discount for DCG, ``1``
inside the top ``k`` for precision and recall), an item whose tie group occupies
positions ``start .. end - 1`` of the ranking gets the weight
``(w[start] + ... + w[end - 1]) / (end - start)``; so a group straddling the
``k`` boundary contributes ``(sum of its gains) * (sum of the discounts of its
positions within the top k) / (group size)``. AUC counts a tied positive/negative
pair as one half. Consequently a model that gives every item the same score scores
*exactly* the expectation of a random ordering (:func:`constant_predictor` equals
:func:`random_predictor`), so ties earn a model nothing.

Users with fewer than ``k`` real items: the ranking is simply shorter. nDCG@k is
unaffected (positions past the last item carry nothing, in DCG and IDCG alike),
precision@k divides by ``min(k, n)`` for a user with ``n`` real items, recall@k by
the number of relevant items.

Compilation: like ``jax.numpy``, each metric checks its arguments in Python and
then runs one ``jax.jit``-compiled function, so a call from host code on numpy
arrays compiles once per shape (and gain) and is a single device computation
after that; ``k`` and the threshold are passed as data, so changing them does not
recompile. Inside a caller's own ``jax.jit`` the metrics are inlined; there ``k``
and ``gain`` must still be Python values, so that they can be checked (mark them
static, e.g. ``jax.jit(ndcg, static_argnames=("k", "gain"))``).

References:
  Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques",
  ACM TOIS 2002 (nDCG).
  McSherry & Najork, "Computing information retrieval performance measures
  efficiently in the presence of tied scores", ECIR 2008 (tie-aware measures).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

GainFn = Callable[[jax.Array], jax.Array]

GAINS: dict[str, GainFn] = {
    "exp": lambda r: jnp.exp2(r) - 1,  # 2^r - 1: rewards high ratings more (the usual nDCG)
    "linear": lambda r: r,
}


# --------------------------------------------------------------------------- checks


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(
            f"k={k!r}: pass a positive Python int (the ranking cut-off; under jax.jit "
            "mark it static, e.g. jax.jit(ndcg, static_argnames=('k', 'gain')))."
        )
    return int(k)


def _get_gain(gain: str) -> GainFn:
    try:
        return GAINS[gain]
    except (KeyError, TypeError):
        raise ValueError(f"unknown gain {gain!r}: pass one of {sorted(GAINS)}.") from None


def _as_float(x) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_inputs(name: str, scores, targets, mask) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Arrays of one shape ``[users, items]``: scores and targets float, mask bool."""
    shapes = {"scores": np.shape(scores), "targets": np.shape(targets), "mask": np.shape(mask)}
    if len(set(shapes.values())) != 1:
        raise ValueError(
            f"{name}: shapes differ ({', '.join(f'{k} {v}' for k, v in shapes.items())}): pass "
            "scores, targets and mask of one shape [users, items]."
        )
    if len(shapes["scores"]) != 2:
        raise ValueError(
            f"{name}: got arrays of shape {shapes['scores']}: pass shape [users, items] "
            "(for a single user, add a leading axis: x[None])."
        )
    return _as_float(scores), _as_float(targets), jnp.asarray(mask).astype(bool)


def _invalid(scores: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Whether one user has no real item, or a ``nan`` among its real scores or targets."""
    return ~jnp.any(mask) | jnp.any(mask & (jnp.isnan(scores) | jnp.isnan(targets)))


# ------------------------------------------------------------------ tie-aware ranking


def _tie_spans(scores: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Positions ``[start, end)`` that each item's tie group occupies when one user's
    real items are ranked by decreasing score (0 is the top).

    ``start`` counts the real items scored strictly higher, ``end`` those scored at
    least as high. Padded items are sent to ``-inf``: never above a real item, and
    counted among the ``>=`` only for a real ``-inf``, whose group ends at the last
    real item anyway (hence the clip). Values at padded items are meaningless.
    """
    n = scores.shape[0]
    keys = jnp.where(mask, scores, -jnp.inf)
    ascending = jnp.sort(keys)
    start = n - jnp.searchsorted(ascending, keys, side="right")
    end = jnp.minimum(n - jnp.searchsorted(ascending, keys, side="left"), jnp.sum(mask))
    return start, end


def _expected_weight(weights: jax.Array, scores: jax.Array, mask: jax.Array) -> jax.Array:
    """``E[weights[position of item i]]`` over uniformly random orders of tied items.

    Args:
      weights: float ``[items]``, the weight of each ranking position.
      scores: float ``[items]``, one user's scores.
      mask: bool ``[items]``.

    Returns:
      float ``[items]``: the mean weight over the positions of each item's tie
      group; 0 at padded items.
    """
    start, end = _tie_spans(scores, mask)
    cumulative = jnp.concatenate([jnp.zeros(1, weights.dtype), jnp.cumsum(weights)])
    size = jnp.maximum(end - start, 1)
    return jnp.where(mask, (cumulative[end] - cumulative[start]) / size, 0)


def _discounts(n: int, k, dtype) -> jax.Array:
    """``1 / log2(position + 2)`` for the top ``k`` of ``n`` positions, 0 below."""
    position = jnp.arange(n)
    return jnp.where(position < k, 1 / jnp.log2(position.astype(dtype) + 2), 0).astype(dtype)


def _top_k(n: int, k, dtype) -> jax.Array:
    return (jnp.arange(n) < k).astype(dtype)


# --------------------------------------------------------------- per-user functions


def _mae_one(scores, targets, mask):
    count = jnp.sum(mask)
    total = jnp.sum(jnp.where(mask, jnp.abs(scores - targets), 0))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def _rmse_one(scores, targets, mask):
    count = jnp.sum(mask)
    total = jnp.sum(jnp.where(mask, jnp.square(scores - targets), 0))
    return jnp.where(count > 0, jnp.sqrt(total / jnp.maximum(count, 1)), jnp.nan)


def _idcg_one(targets, gains, mask, k):
    # The ideal order is by true relevance; ties among equal ratings have equal
    # gains, so the tie-aware DCG of the targets as scores is the ideal DCG.
    return jnp.sum(gains * _expected_weight(_discounts(targets.shape[0], k, gains.dtype), targets, mask))


def _ndcg_one(scores, targets, mask, *, k, gain_fn):
    gains = jnp.where(mask, gain_fn(targets), 0)
    dcg = jnp.sum(gains * _expected_weight(_discounts(scores.shape[0], k, gains.dtype), scores, mask))
    idcg = _idcg_one(targets, gains, mask, k)
    undefined = _invalid(scores, targets, mask) | ~(idcg > 0)
    return jnp.where(undefined, jnp.nan, dcg / jnp.where(undefined, 1, idcg))


def _relevant(targets, mask, threshold):
    return mask & (targets >= threshold)


def _expected_hits(scores, targets, mask, k, threshold):
    """Expected number of relevant items in the top ``k``, and the user's relevant count."""
    relevant = _relevant(targets, mask, threshold)
    in_top_k = _expected_weight(_top_k(scores.shape[0], k, scores.dtype), scores, mask)
    return jnp.sum(jnp.where(relevant, in_top_k, 0)), jnp.sum(relevant)


def _precision_one(scores, targets, mask, *, k, threshold):
    hits, _ = _expected_hits(scores, targets, mask, k, threshold)
    cutoff = jnp.minimum(k, jnp.sum(mask))
    return jnp.where(_invalid(scores, targets, mask), jnp.nan, hits / jnp.maximum(cutoff, 1))


def _recall_one(scores, targets, mask, *, k, threshold):
    hits, num_relevant = _expected_hits(scores, targets, mask, k, threshold)
    undefined = _invalid(scores, targets, mask) | (num_relevant == 0)
    return jnp.where(undefined, jnp.nan, hits / jnp.maximum(num_relevant, 1))


def _auc_one(scores, clicks, mask, *, threshold):
    # Mann-Whitney with mid-ranks: a positive's ascending mid-rank among the real
    # items is (#scored lower) + (tie group size + 1) / 2, and
    # sum(mid-ranks of positives) - P (P + 1) / 2 counts the pairs a positive wins,
    # a tied pair as one half. Doubled, everything is an exact integer.
    positive = _relevant(clicks, mask, threshold)
    num_real = jnp.sum(mask)
    num_pos = jnp.sum(positive)
    num_neg = num_real - num_pos
    start, end = _tie_spans(scores, mask)
    twice_rank = 2 * (num_real - end) + (end - start) + 1
    twice_wins = jnp.sum(jnp.where(positive, twice_rank, 0)) - num_pos * (num_pos + 1)
    pairs = num_pos * num_neg
    undefined = _invalid(scores, clicks, mask) | (pairs == 0)
    return jnp.where(undefined, jnp.nan, twice_wins / (2 * jnp.maximum(pairs, 1)).astype(scores.dtype))


# ------------------------------------------------------------------------ public API


# Batched cores, compiled once per shape (and gain). The public functions check
# ``k`` in Python, then pass it (and the threshold) as data: a new cut-off does
# not recompile.


@jax.jit
def _mae_batch(scores, targets, mask):
    return jax.vmap(_mae_one)(scores, targets, mask)


@jax.jit
def _rmse_batch(scores, targets, mask):
    return jax.vmap(_rmse_one)(scores, targets, mask)


@jax.jit
def _pooled_mae(scores, targets, mask):
    return _mae_one(scores.ravel(), targets.ravel(), mask.ravel())


@jax.jit
def _pooled_rmse(scores, targets, mask):
    return _rmse_one(scores.ravel(), targets.ravel(), mask.ravel())


@functools.partial(jax.jit, static_argnames=("gain",))
def _ndcg_batch(scores, targets, mask, k, gain):
    return jax.vmap(functools.partial(_ndcg_one, k=k, gain_fn=GAINS[gain]))(scores, targets, mask)


@jax.jit
def _precision_batch(scores, targets, mask, k, threshold):
    return jax.vmap(functools.partial(_precision_one, k=k, threshold=threshold))(scores, targets, mask)


@jax.jit
def _recall_batch(scores, targets, mask, k, threshold):
    return jax.vmap(functools.partial(_recall_one, k=k, threshold=threshold))(scores, targets, mask)


@jax.jit
def _auc_batch(scores, clicks, mask, threshold):
    return jax.vmap(functools.partial(_auc_one, threshold=threshold))(scores, clicks, mask)


def mae(scores: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> jax.Array:
    """Mean absolute error of each user over its real items.

    Args:
      scores: float ``[users, items]``, predicted ratings.
      targets: float ``[users, items]``, true ratings.
      mask: bool ``[users, items]``; ``False`` marks a padded item.

    Returns:
      float ``[users]``; ``nan`` for a user with no real item.

    Example:
      >>> import numpy as np
      >>> values = mae(np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[4.0, 4.0], [3.0, 9.0]]),
      ...              np.array([[True, True], [True, False]]))
      >>> [round(float(v), 4) for v in values]  # (1 + 0) / 2 and 2 / 1
      [0.5, 2.0]
    """
    scores, targets, mask = _check_inputs("mae", scores, targets, mask)
    return _mae_batch(scores, targets, mask)


def rmse(scores: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> jax.Array:
    """Root mean squared error of each user over its real items.

    Per user: the square root of that user's mean squared error; averaging these
    over users (:func:`mean_over_users`) gives the per-user RMSE the meta-learning
    papers report. It differs from the pooled RMSE over all ratings
    (:func:`pooled_rmse`), which weighs users by their number of ratings and
    squares before averaging across users.

    Args:
      scores: float ``[users, items]``, predicted ratings.
      targets: float ``[users, items]``, true ratings.
      mask: bool ``[users, items]``; ``False`` marks a padded item.

    Returns:
      float ``[users]``; ``nan`` for a user with no real item.

    Example:
      >>> import numpy as np
      >>> values = rmse(np.array([[3.0, 5.0], [1.0, 0.0]]), np.array([[4.0, 2.0], [3.0, 9.0]]),
      ...               np.array([[True, True], [True, False]]))
      >>> [round(float(v), 4) for v in values]  # sqrt((1 + 9) / 2) and sqrt(4 / 1)
      [2.2361, 2.0]
    """
    scores, targets, mask = _check_inputs("rmse", scores, targets, mask)
    return _rmse_batch(scores, targets, mask)


def pooled_mae(scores: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> jax.Array:
    """Mean absolute error over all real ratings of all users (not per user).

    Args:
      scores: float ``[users, items]``, predicted ratings.
      targets: float ``[users, items]``, true ratings.
      mask: bool ``[users, items]``; ``False`` marks a padded item.

    Returns:
      float scalar; ``nan`` when there is no real item.

    Example:
      >>> import numpy as np
      >>> value = pooled_mae(np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[4.0, 4.0], [3.0, 9.0]]),
      ...                    np.array([[True, True], [True, False]]))
      >>> round(float(value), 4)  # (1 + 0 + 2) / 3
      1.0
    """
    scores, targets, mask = _check_inputs("pooled_mae", scores, targets, mask)
    return _pooled_mae(scores, targets, mask)


def pooled_rmse(scores: ArrayLike, targets: ArrayLike, mask: ArrayLike) -> jax.Array:
    """Root mean squared error over all real ratings of all users (not per user).

    This is RMSE as RecBole and most non-meta-learning papers compute it: each
    rating counts once, so users with many ratings weigh more. Compare
    :func:`rmse`, which is per user.

    Args:
      scores: float ``[users, items]``, predicted ratings.
      targets: float ``[users, items]``, true ratings.
      mask: bool ``[users, items]``; ``False`` marks a padded item.

    Returns:
      float scalar; ``nan`` when there is no real item.

    Example:
      >>> import numpy as np
      >>> value = pooled_rmse(np.array([[3.0, 5.0], [1.0, 0.0]]), np.array([[4.0, 2.0], [3.0, 9.0]]),
      ...                     np.array([[True, True], [True, False]]))
      >>> round(float(value), 4)  # sqrt((1 + 9 + 4) / 3)
      2.1602
    """
    scores, targets, mask = _check_inputs("pooled_rmse", scores, targets, mask)
    return _pooled_rmse(scores, targets, mask)


def ndcg(scores: ArrayLike, targets: ArrayLike, mask: ArrayLike, k: int, gain: str = "exp") -> jax.Array:
    """Tie-aware normalised discounted cumulative gain at ``k`` of each user.

    ``DCG@k = sum over the top k positions p = 0, 1, ... of gain / log2(p + 2)``,
    with tied scores taking the expected DCG over random orders of each tie group
    (see the module docstring), divided by the ideal DCG@k of the user's items
    ordered by true relevance. A user with fewer than ``k`` items is ranked over
    the items it has.

    Args:
      scores: float ``[users, items]``, the ranking scores.
      targets: float ``[users, items]``, graded relevance (ratings, or 0/1 clicks).
      mask: bool ``[users, items]``; ``False`` marks a padded item.
      k: the cut-off, a positive int.
      gain: ``"exp"`` for ``2^r - 1`` (the usual definition) or ``"linear"`` for
        ``r``. Gains should be non-negative.

    Returns:
      float ``[users]`` in ``[0, 1]``; ``nan`` for a user with no real item or
      with ideal DCG 0 (e.g. no click).

    Raises:
      ValueError: bad ``k``, unknown ``gain``, or arrays of different shapes.

    Example:
      >>> import numpy as np
      >>> ratings = np.array([[3.0, 5.0, 1.0, 4.0]])
      >>> mask = np.ones((1, 4), bool)
      >>> round(float(ndcg(np.array([[0.9, 0.8, 0.3, 0.1]]), ratings, mask, k=3)[0]), 4)
      0.6155
      >>> # (7 + 31 / log2(3) + 1 / 2) / (31 + 15 / log2(3) + 7 / 2) with gains 2^r - 1
      >>> round(float(ndcg(np.zeros((1, 4)), ratings, mask, k=1, gain="linear")[0]), 4)
      0.65
      >>> # one four-way tie: the expected top rating (3 + 5 + 1 + 4) / 4 over the best, 5
    """
    k = _check_k(k)
    _get_gain(gain)
    scores, targets, mask = _check_inputs("ndcg", scores, targets, mask)
    return _ndcg_batch(scores, targets, mask, k=k, gain=gain)


def precision(
    scores: ArrayLike, targets: ArrayLike, mask: ArrayLike, k: int, threshold: float = 4.0
) -> jax.Array:
    """Tie-aware precision at ``k`` of each user: the expected share of relevant
    items (``target >= threshold``) among its top ``min(k, n)`` items.

    A user with ``n < k`` real items is judged on all ``n`` (the denominator is
    ``min(k, n)``, not ``k``), so a perfect ranking scores 1 whenever the user has
    at least ``k`` relevant items or all its items are relevant. Tied items share
    their positions' chances of making the top ``k``.

    Args:
      scores: float ``[users, items]``, the ranking scores.
      targets: float ``[users, items]``, ratings or clicks.
      mask: bool ``[users, items]``; ``False`` marks a padded item.
      k: the cut-off, a positive int.
      threshold: an item is relevant iff its target is ``>= threshold``.

    Returns:
      float ``[users]``; ``nan`` for a user with no real item.

    Raises:
      ValueError: bad ``k`` or arrays of different shapes.

    Example:
      >>> import numpy as np
      >>> scores = np.array([[2.0, 1.0, 1.0, 1.0, 0.0]])  # three items tie for 2nd to 4th
      >>> ratings = np.array([[1.0, 5.0, 3.0, 2.0, 4.0]])
      >>> value = precision(scores, ratings, np.ones((1, 5), bool), k=3)
      >>> round(float(value[0]), 4)  # item 1 gets 2 of the 3 tied places: (2 / 3) / 3
      0.2222
    """
    k = _check_k(k)
    scores, targets, mask = _check_inputs("precision", scores, targets, mask)
    return _precision_batch(scores, targets, mask, k, threshold)


def recall(
    scores: ArrayLike, targets: ArrayLike, mask: ArrayLike, k: int, threshold: float = 4.0
) -> jax.Array:
    """Tie-aware recall at ``k`` of each user: the expected share of its relevant
    items (``target >= threshold``) that rank in its top ``k``.

    Args:
      scores: float ``[users, items]``, the ranking scores.
      targets: float ``[users, items]``, ratings or clicks.
      mask: bool ``[users, items]``; ``False`` marks a padded item.
      k: the cut-off, a positive int.
      threshold: an item is relevant iff its target is ``>= threshold``.

    Returns:
      float ``[users]``; ``nan`` for a user with no relevant item.

    Raises:
      ValueError: bad ``k`` or arrays of different shapes.

    Example:
      >>> import numpy as np
      >>> scores = np.array([[2.0, 1.0, 1.0, 1.0, 0.0]])
      >>> ratings = np.array([[1.0, 5.0, 3.0, 2.0, 4.0]])
      >>> value = recall(scores, ratings, np.ones((1, 5), bool), k=3)
      >>> round(float(value[0]), 4)  # 2 / 3 of item 1, none of item 4, over 2 relevant
      0.3333
    """
    k = _check_k(k)
    scores, targets, mask = _check_inputs("recall", scores, targets, mask)
    return _recall_batch(scores, targets, mask, k, threshold)


def auc(scores: ArrayLike, clicks: ArrayLike, mask: ArrayLike, threshold: float = 0.5) -> jax.Array:
    """Area under the ROC curve of each user: the share of (positive, negative)
    pairs of its real items that the scores order correctly, a tie counting 1/2.

    Args:
      scores: float ``[users, items]``, the ranking scores (logits or probabilities).
      clicks: float ``[users, items]``, 0/1 labels (or ratings, with a threshold).
      mask: bool ``[users, items]``; ``False`` marks a padded item.
      threshold: an item is positive iff its label is ``>= threshold``.

    Returns:
      float ``[users]``; ``nan`` for a user without both a positive and a negative.

    Raises:
      ValueError: arrays of different shapes.

    Example:
      >>> import numpy as np
      >>> scores = np.array([[0.9, 0.5, 0.5, 0.2, 0.5]])
      >>> clicks = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
      >>> round(float(auc(scores, clicks, np.ones((1, 5), bool))[0]), 4)  # (3 + 0.5 + 1 + 0.5) / 6
      0.8333
    """
    scores, clicks, mask = _check_inputs("auc", scores, clicks, mask)
    return _auc_batch(scores, clicks, mask, threshold)


def mean_over_users(values: ArrayLike, user_mask: ArrayLike | None = None) -> jax.Array:
    """Average of per-user metric values over the users where it is defined.

    ``nan`` (undefined: padding users, users without a relevant item, ...) and
    infinite values are left out, as are users with ``user_mask`` false.

    Args:
      values: float ``[users]``, from any metric of this module.
      user_mask: optional bool ``[users]``, e.g. :func:`jaxmeta.tasks.task_mask`.

    Returns:
      float scalar; ``nan`` when no user has a finite value.

    Raises:
      ValueError: ``values`` not 1-D, or ``user_mask`` of another shape.

    Example:
      >>> import numpy as np
      >>> round(float(mean_over_users(np.array([0.5, np.nan, 1.0]))), 4)
      0.75
      >>> round(float(mean_over_users(np.array([0.5, np.nan, 1.0]), np.array([True, True, False]))), 4)
      0.5
    """
    values = _as_float(values)
    if values.ndim != 1:
        raise ValueError(f"mean_over_users: values has shape {values.shape}: pass per-user values of shape [users].")
    if user_mask is None:
        user_mask = np.ones(values.shape, bool)
    if np.shape(user_mask) != values.shape:
        raise ValueError(
            f"mean_over_users: user_mask has shape {np.shape(user_mask)} but values has "
            f"{values.shape}: pass one bool per user."
        )
    return _mean_finite(values, jnp.asarray(user_mask).astype(bool))


@jax.jit
def _mean_finite(values, keep):
    keep = keep & jnp.isfinite(values)
    count = jnp.sum(keep)
    return jnp.where(count > 0, jnp.sum(jnp.where(keep, values, 0)) / jnp.maximum(count, 1), jnp.nan)


# ------------------------------------------------------------------------ the floor

RANKING_METRICS: dict[str, Callable[..., jax.Array]] = {
    "ndcg": ndcg,
    "precision": precision,
    "recall": recall,
    "auc": auc,
}


def _ranking_metric_name(metric) -> str:
    for name, fn in RANKING_METRICS.items():
        if (isinstance(metric, str) and metric == name) or metric is fn:
            return name
    raise ValueError(
        f"unknown ranking metric {metric!r}: pass one of {sorted(RANKING_METRICS)} (or the "
        "function itself); MAE and RMSE have no random floor, use a global-mean baseline."
    )


def constant_predictor(metric: str | Callable[..., jax.Array], targets: ArrayLike, mask: ArrayLike, **kwargs) -> jax.Array:
    """Per-user value of a ranking metric for a model that scores every item the same.

    Because the metrics are tie-aware this is the exact expectation of a random
    ordering, i.e. it equals :func:`random_predictor` (computed independently
    there, in closed form): the floor a useful model must beat.

    Args:
      metric: ``"ndcg"``, ``"precision"``, ``"recall"`` or ``"auc"`` (or the function).
      targets: float ``[users, items]``, ratings or clicks.
      mask: bool ``[users, items]``; ``False`` marks a padded item.
      **kwargs: the metric's own arguments (``k``, ``gain``, ``threshold``).

    Returns:
      float ``[users]``, as the metric returns.

    Example:
      >>> import numpy as np
      >>> ratings, mask = np.array([[5.0, 3.0, 1.0]]), np.ones((1, 3), bool)
      >>> round(float(constant_predictor("precision", ratings, mask, k=1)[0]), 4)  # 1 relevant of 3
      0.3333
    """
    fn = RANKING_METRICS[_ranking_metric_name(metric)]
    return fn(jnp.zeros(np.shape(targets)), targets, mask, **kwargs)


def _random_ndcg_one(targets, mask, *, k, gain_fn):
    # Each real item is equally likely at each of the n positions, so every item's
    # expected discount is (sum of the top-min(k, n) discounts) / n.
    n = targets.shape[0]
    gains = jnp.where(mask, gain_fn(targets), 0)
    num_real = jnp.sum(mask)
    discount_sum = jnp.sum(jnp.where(jnp.arange(n) < num_real, _discounts(n, k, gains.dtype), 0))
    idcg = _idcg_one(targets, gains, mask, k)
    undefined = _invalid(targets, targets, mask) | ~(idcg > 0)
    expected = jnp.sum(gains) * discount_sum / jnp.maximum(num_real, 1)
    return jnp.where(undefined, jnp.nan, expected / jnp.where(undefined, 1, idcg))


def _random_precision_one(targets, mask, *, k, threshold):
    # E[hits in the top min(k, n)] = min(k, n) * R / n; over min(k, n) that is R / n.
    del k
    value = jnp.sum(_relevant(targets, mask, threshold)) / jnp.maximum(jnp.sum(mask), 1)
    return jnp.where(_invalid(targets, targets, mask), jnp.nan, value)


def _random_recall_one(targets, mask, *, k, threshold):
    # Each relevant item is in the top k with probability min(k, n) / n.
    num_real = jnp.sum(mask)
    value = jnp.minimum(k, num_real) / jnp.maximum(num_real, 1)
    undefined = _invalid(targets, targets, mask) | ~jnp.any(_relevant(targets, mask, threshold))
    return jnp.where(undefined, jnp.nan, value.astype(targets.dtype))


def _random_auc_one(targets, mask, *, k, threshold):
    del k  # AUC has no cut-off
    positive = _relevant(targets, mask, threshold)
    both = jnp.any(positive) & jnp.any(mask & ~positive)
    return jnp.where(both & ~_invalid(targets, targets, mask), 0.5, jnp.nan).astype(targets.dtype)


@functools.partial(jax.jit, static_argnames=("gain",))
def _random_ndcg_batch(targets, mask, k, gain):
    return jax.vmap(functools.partial(_random_ndcg_one, k=k, gain_fn=GAINS[gain]))(targets, mask)


@functools.partial(jax.jit, static_argnames=("one",))
def _random_thresholded_batch(targets, mask, k, threshold, one):
    return jax.vmap(functools.partial(one, k=k, threshold=threshold))(targets, mask)


def _random_ndcg(targets, mask, k: int, gain: str = "exp"):
    _get_gain(gain)
    return _random_ndcg_batch(targets, mask, _check_k(k), gain=gain)


def _random_precision(targets, mask, k: int, threshold: float = 4.0):
    return _random_thresholded_batch(targets, mask, _check_k(k), threshold, one=_random_precision_one)


def _random_recall(targets, mask, k: int, threshold: float = 4.0):
    return _random_thresholded_batch(targets, mask, _check_k(k), threshold, one=_random_recall_one)


def _random_auc(targets, mask, threshold: float = 0.5):
    return _random_thresholded_batch(targets, mask, 1, threshold, one=_random_auc_one)


_RANDOM = {"ndcg": _random_ndcg, "precision": _random_precision, "recall": _random_recall, "auc": _random_auc}


def random_predictor(metric: str | Callable[..., jax.Array], targets: ArrayLike, mask: ArrayLike, **kwargs) -> jax.Array:
    """Per-user *expected* value of a ranking metric under a uniformly random
    ordering of each user's items, exactly (closed form, no sampling).

    Per user with ``n`` real items of which ``R`` are relevant: nDCG@k is
    ``mean(gain) * (sum of the top-min(k, n) discounts) / IDCG@k``, precision@k is
    ``R / n``, recall@k is ``min(k, n) / n`` and AUC is 1/2. For these tie-aware
    metrics it equals :func:`constant_predictor`.

    Args:
      metric: ``"ndcg"``, ``"precision"``, ``"recall"`` or ``"auc"`` (or the function).
      targets: float ``[users, items]``, ratings or clicks.
      mask: bool ``[users, items]``; ``False`` marks a padded item.
      **kwargs: the metric's own arguments (``k``, ``gain``, ``threshold``).

    Returns:
      float ``[users]``, undefined users ``nan`` as in the metric.

    Example:
      >>> import numpy as np
      >>> ratings, mask = np.array([[5.0, 3.0, 1.0, 4.0]]), np.ones((1, 4), bool)
      >>> round(float(random_predictor("recall", ratings, mask, k=1)[0]), 4)  # top 1 of 4
      0.25
    """
    name = _ranking_metric_name(metric)
    _, targets, mask = _check_inputs(f"random_predictor({name!r})", targets, targets, mask)
    return _RANDOM[name](targets, mask, **kwargs)
