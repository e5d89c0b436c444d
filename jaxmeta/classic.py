"""The strong classic baselines of cold-start rating prediction, in numpy.

Two models every results table carries beside the meta-learners, both fitted on
the training (warm) ratings only and adapted to a new user in closed form from
that user's support ratings:

* ``bias``: ``r = mu + b_i + b_u``. ``mu`` is the mean training rating, ``b_i``
  each item's shrunken mean offset ``sum(r - mu) / (item_reg + n_i)`` (0 for an
  item without a training rating), and a new user's ``b_u`` the shrunken mean of
  their support residuals, ``sum(y - mu - b_i) / (user_reg + n_support)``
  (Koren, 2010, section 2.1).
* ``mf_foldin``: biased matrix factorisation ``r = mu + b_u + b_i + p_u . q_i``,
  fitted by alternating least squares (ALS) on the training ratings; a new user
  is *folded in*: with the item side fixed, ``[p_u; b_u]`` is the ridge
  regression of the support residuals ``y - mu - b_i`` on the rows ``[q_i, 1]``,
  ``(A^T A + user_reg I)^{-1} A^T (y - mu - b_i)``. An item without a training
  rating has ``q_i = 0`` and ``b_i = 0``: on the support side it still informs
  ``b_u``, on the query side it is predicted ``mu + b_u``, the bias model's
  fall-back for a new item.

Both fold-ins are one batched solve over the users of a
:class:`~jaxmeta.tasks.TaskBatch` (the bias model is the rank-0 case). Items are
read from the raw item ids the tasks carry under
:data:`jaxmeta.evaluation.ITEM_KEY` (see :func:`jaxmeta.evaluation.with_item_ids`).
Padded support rows (mask ``False``) enter nothing, whatever their rating (NaN
included) or id; padding users (no real row) get ``b_u = 0, p_u = 0``;
predictions on padded query rows are finite and meaningless.

Selection (:func:`choose_bias`, :func:`choose_mf`) fits the training side once
per grid point of the item-side settings and scores every ``user_reg`` on the
validation users from one Gram matrix per user (only the solve depends on it):
validation MAE per user over the query rows, then the mean over users
(:func:`jaxmeta.evaluation.query_metrics`), lowest wins, ties to the earlier grid point.

References:
  Koren, "Factor in the neighbors: scalable and accurate collaborative
  filtering", ACM TKDD 4(1), 2010 (baseline predictors).
  Hu, Koren and Volinsky, "Collaborative filtering for implicit feedback
  datasets", ICDM 2008, and Zhou et al., "Large-scale parallel collaborative
  filtering for the Netflix prize", AAIM 2008 (ALS).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from jaxmeta._checks import columns, positive_int
from jaxmeta.evaluation import ITEM_KEY, fit_item_stats, predict_tasks, query_metrics
from jaxmeta.tasks import TaskBatch

BIAS_ITEM_REGS = (0.0, 1.0, 3.0, 10.0, 25.0, 50.0, 100.0)
"""Default grid of the bias model's item shrinkage ``item_reg``."""
BIAS_USER_REGS = (0.0, 1.0, 3.0, 10.0, 25.0, 50.0, 100.0)
"""Default grid of the bias model's user shrinkage ``user_reg``."""
MF_RANKS = (8, 16, 32, 64)
"""Default grid of the factor model's rank."""
MF_REGS = (3.0, 10.0, 20.0, 40.0)
"""Default grid of the factor model's ALS ridge ``reg`` (factors and biases alike). It is not scaled
by the number of ratings: ML-1M's users (about 130 training ratings each) do best near 20-30 and
lose their factors above about 50; ML-100K's sparser table prefers less."""
MF_USER_REGS = (1.0, 3.0, 10.0, 30.0, 100.0)
"""Default grid of the fold-in ridge ``user_reg`` (> 0: the fold-in needs it)."""
MF_ITERATIONS = 15
"""ALS sweeps (a user half-step then an item half-step each) of :func:`fit_mf`."""

__all__ = (
    "BIAS_ITEM_REGS",
    "BIAS_USER_REGS",
    "MF_ITERATIONS",
    "MF_RANKS",
    "MF_REGS",
    "MF_USER_REGS",
    "BiasModel",
    "FactorModel",
    "Selected",
    "choose_bias",
    "choose_mf",
    "fit_bias",
    "fit_mf",
    "predict_bias",
    "predict_foldin",
)


class BiasModel(NamedTuple):
    """The item side of ``r = mu + b_i + b_u``, fitted on training ratings."""

    mean: float  # mu: the mean training rating
    items: np.ndarray  # int64 [items]: raw item ids, sorted
    item_bias: np.ndarray  # float64 [items]: b_i
    item_reg: float  # the shrinkage b_i was fitted with


class FactorModel(NamedTuple):
    """Biased matrix factorisation ``r = mu + b_u + b_i + p_u . q_i``, fitted by ALS.

    Prediction for a new user reads the item side only; the training users'
    side is kept for inspection (and the objective in ``loss``).
    """

    mean: float  # mu: the mean training rating (fixed, not fitted)
    items: np.ndarray  # int64 [items]: raw item ids, sorted
    item_bias: np.ndarray  # float64 [items]: b_i
    item_factors: np.ndarray  # float64 [items, rank]: q_i
    users: np.ndarray  # [users]: raw user ids of the training ratings, sorted
    user_bias: np.ndarray  # float64 [users]: b_u
    user_factors: np.ndarray  # float64 [users, rank]: p_u
    rank: int
    reg: float  # the ALS ridge on factors and biases alike
    loss: np.ndarray  # float64 [iterations]: the regularised training objective after each sweep


class Selected(NamedTuple):
    """A baseline chosen on validation: the fitted model, its settings and the whole grid."""

    model: BiasModel | FactorModel  # the model fitted with the chosen item-side settings
    user_reg: float  # the chosen user-side shrinkage
    settings: dict[str, float]  # the chosen grid point, e.g. {"item_reg": 3.0, "user_reg": 10.0}
    valid_mae: float  # its validation MAE
    grid: list[dict[str, float]]  # every grid point with its "valid_mae", in grid order
    predict: Callable[[TaskBatch], np.ndarray]  # batch -> float64 [tasks, query], with the chosen settings


# ----------------------------------------------------------------------------- argument checks


def _penalty(name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a float when it is a finite number >= 0 (> 0 with ``positive``)."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and np.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        need = "a finite number > 0" if positive else "a finite number >= 0 (0: no shrinkage)"
        raise ValueError(f"{name}={value!r}: pass {need}.")
    return float(value)


def _grid(name: str, values: Any, check: Callable[[str, Any], Any]) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name}={values!r}: pass a non-empty sequence of values, e.g. a tuple.")
    return tuple(check(name, v) for v in values)


def _ratings(ratings: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The user, item and rating columns of a training table, checked."""
    columns(ratings, ("user", "item", "rating"), "ratings", "Pass the training ratings, e.g. Dataset.warm_ratings.")
    if len(ratings) == 0:
        raise ValueError("ratings is empty: the classic baselines need at least one training rating.")
    if not pd.api.types.is_integer_dtype(ratings["item"]):
        raise TypeError(f"ratings['item'] has dtype {ratings['item'].dtype}: pass integer raw item ids.")
    rating = ratings["rating"].to_numpy(dtype=np.float64)
    if not np.isfinite(rating).all():
        raise ValueError("ratings has a non-finite rating: drop or fix those rows first.")
    return ratings["user"].to_numpy(), ratings["item"].to_numpy(dtype=np.int64), rating


def _batches(valid_batches: Any) -> list[TaskBatch]:
    if isinstance(valid_batches, TaskBatch):
        raise TypeError("valid_batches takes a sequence of TaskBatch: pass [batch] for one batch.")
    batches = list(valid_batches)
    if not batches or not all(isinstance(b, TaskBatch) for b in batches):
        raise ValueError("valid_batches: pass a non-empty sequence of TaskBatch (e.g. from evaluation_batches).")
    return batches


def _ids(x: Any, key: str, part: str) -> np.ndarray:
    if not isinstance(x, Mapping) or key not in x:
        got = sorted(map(str, x)) if isinstance(x, Mapping) else type(x).__name__
        raise ValueError(
            f"the batch's {part} inputs have no {key!r} field (got {got}): add the raw item ids "
            "with jaxmeta.evaluation.with_item_ids(tasks, table) before padding."
        )
    ids = np.asarray(x[key])
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{part} item ids have dtype {ids.dtype}: pass integer raw item ids.")
    return ids.astype(np.int64)


# ----------------------------------------------------------------------------- fold-in (shared by both models)


def _rows(items: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each id in the sorted ``items`` (clipped, so any id is safe) and whether it is there."""
    row = np.minimum(np.searchsorted(items, ids), len(items) - 1)
    return row, items[row] == ids


class _Folded(NamedTuple):
    """One batch's fold-in, up to the choice of ``user_reg``: only the final solve depends on it."""

    gram: np.ndarray  # float64 [tasks, rank + 1, rank + 1]: A^T A over real support rows
    moment: np.ndarray  # float64 [tasks, rank + 1]: A^T (y - mu - b_i)
    empty: np.ndarray  # bool [tasks]: no real support row (padding users)
    base: np.ndarray  # float64 [tasks, query]: mu + b_i of each query row
    design: np.ndarray  # float64 [tasks, query, rank + 1]: [q_i, 1] of each query row


def _fold(mean: float, items: np.ndarray, item_bias: np.ndarray, item_factors: np.ndarray, batch: TaskBatch,
          key: str) -> _Folded:
    """The per-user normal equations of the fold-in; rows of A are ``[q_i, 1]`` (zeros on padded rows)."""
    mask = np.asarray(batch.support_mask, dtype=bool)
    support, query = _ids(batch.support_x, key, "support"), _ids(batch.query_x, key, "query")

    def item_side(ids):  # unknown items: q_i = 0, b_i = 0
        row, known = _rows(items, ids)
        bias = np.where(known, item_bias[row], 0.0)
        design = np.concatenate([np.where(known[..., None], item_factors[row], 0.0),
                                 np.ones(ids.shape + (1,))], axis=-1)
        return bias, design

    bias, design = item_side(support)
    design = np.where(mask[..., None], design, 0.0)
    # np.where, not a product with the mask: a padded row's rating may be NaN
    residual = np.where(mask, np.asarray(batch.support_y, dtype=np.float64) - mean - bias, 0.0)
    gram = np.einsum("tsk,tsl->tkl", design, design)
    moment = np.einsum("tsk,ts->tk", design, residual)
    query_bias, query_design = item_side(query)
    return _Folded(gram, moment, ~mask.any(axis=-1), mean + query_bias, query_design)


def _solve(folded: _Folded, user_reg: float) -> np.ndarray:
    """Query predictions ``mu + b_i + [q_i, 1] . [p_u; b_u]`` for one ``user_reg``."""
    size = folded.gram.shape[-1]
    gram = folded.gram + user_reg * np.eye(size)
    # a user without support rows has moment 0, so any invertible matrix gives [p_u; b_u] = 0 (even at user_reg 0)
    gram = np.where(folded.empty[:, None, None], np.eye(size), gram)
    user = np.linalg.solve(gram, folded.moment[..., None])[..., 0]
    return folded.base + np.einsum("tqk,tk->tq", folded.design, user)


def _bias_fold(model: BiasModel, batch: TaskBatch, key: str) -> _Folded:
    return _fold(model.mean, model.items, model.item_bias, np.zeros((len(model.items), 0)), batch, key)


def _mf_fold(model: FactorModel, batch: TaskBatch, key: str) -> _Folded:
    return _fold(model.mean, model.items, model.item_bias, model.item_factors, batch, key)


# ----------------------------------------------------------------------------- bias


def fit_bias(ratings: pd.DataFrame, *, item_reg: float) -> BiasModel:
    """The item side of the bias model: ``mu`` and the shrunken item offsets ``b_i``.

    Args:
      ratings: the training ratings, columns ``user``, ``item`` (integer raw
        ids) and ``rating``.
      item_reg: ``lambda_i >= 0`` in ``b_i = sum_i(r - mu) / (lambda_i + n_i)``;
        0 gives the item's mean offset.

    Returns:
      :class:`BiasModel`.

    Example:
      >>> ratings = pd.DataFrame({"user": [1, 2, 2], "item": [7, 7, 9], "rating": [4.0, 2.0, 6.0]})
      >>> m = fit_bias(ratings, item_reg=1.0)  # mu = 4; item 7: (0 - 2) / 3, item 9: 2 / 2
      >>> m.mean, m.items.tolist(), m.item_bias.round(4).tolist()
      (4.0, [7, 9], [-0.6667, 1.0])
    """
    _ratings(ratings)
    return _bias_from_stats(fit_item_stats(ratings), _penalty("item_reg", item_reg))


def _bias_from_stats(stats: Any, item_reg: float) -> BiasModel:
    # sum_i (r - mu) = n_i (mean_i - mu): one pass over the ratings serves every item_reg
    offset = stats.counts * (stats.means - stats.global_mean)
    return BiasModel(stats.global_mean, stats.items, offset / (item_reg + stats.counts), item_reg)


def predict_bias(model: BiasModel, batch: TaskBatch, *, user_reg: float, key: str = ITEM_KEY) -> np.ndarray:
    """``mu + b_i + b_u`` for every query row, ``b_u`` from each user's support ratings.

    ``b_u = sum(y - mu - b_i) / (user_reg + n_support)`` over the user's real
    support rows (an item unknown to training has ``b_i = 0``); padded support
    rows are ignored whatever they hold, and a user without support rows gets
    ``b_u = 0``.

    Args:
      model: :func:`fit_bias` of the training ratings.
      batch: padded tasks whose ``support_x`` and ``query_x`` hold the raw item
        ids under ``key``.
      user_reg: ``lambda_u >= 0``.
      key: the field of the raw item ids.

    Returns:
      float64 ``[tasks, query]``; finite everywhere.

    Example:
      >>> m = BiasModel(4.0, np.array([7, 9]), np.array([-1.0, 1.0]), 0.0)
      >>> x = {"item_id": np.array([[7, 9, 0]])}
      >>> batch = TaskBatch(x, np.array([[5.0, 6.0, np.nan]]), np.array([[True, True, False]]),
      ...                   x, np.zeros((1, 3)), np.ones((1, 3), bool))
      >>> predict_bias(m, batch, user_reg=2.0).tolist()  # b_u = (2 + 1) / (2 + 2); item 0 is new
      [[3.75, 5.75, 4.75]]
    """
    return _solve(_bias_fold(model, batch, key), _penalty("user_reg", user_reg))


# ----------------------------------------------------------------------------- matrix factorisation


def _groups(index: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows sorted by ``index`` (stably) and the start of each of the ``count`` groups (``count + 1``)."""
    order = np.argsort(index, kind="stable")
    return order, np.concatenate([[0], np.cumsum(np.bincount(index, minlength=count))])


_PRODUCT_SIZE = 1 << 18
"""The most ``rows * columns^2`` of one Gram product. OpenBLAS computes a product under about 2^18
multiply-adds on one thread; a larger one wakes its thread pool, which for products this small costs
far more than it saves (a rank-64 ALS half-step on ML-1M measured 10-20x slower on 2 cores)."""


def _half_step(fixed: np.ndarray, fixed_index: np.ndarray, starts: np.ndarray, target: np.ndarray,
               reg: float) -> tuple[np.ndarray, float]:
    """One ALS half-step: each group's ridge solution ``w`` of ``target`` on the rows ``[fixed, 1]``.

    Args:
      fixed: float64 ``[ids, rank]``: the fixed side's factors.
      fixed_index: int ``[ratings]``: the fixed side's row of each rating, the
        ratings grouped by the side being solved.
      starts: int ``[groups + 1]``: where each group starts in the ratings (:func:`_groups`).
      target: float64 ``[ratings]``: what ``[fixed, 1] . w`` should fit, grouped alike.
      reg: the ridge on ``w``.

    Returns:
      ``(w [groups, rank + 1], the residual sum of squares at w)``.
    """
    table = np.concatenate([fixed, np.ones((len(fixed), 1))], axis=1)
    size = table.shape[1]
    step = max(1, _PRODUCT_SIZE // size**2)
    count = len(starts) - 1
    gram, moment = np.zeros((count, size, size)), np.zeros((count, size))
    for g in range(count):  # per group, in products small enough for one thread; the solve is batched
        end = starts[g + 1]
        for a in range(starts[g], end, step):
            # gathered per block, not for all ratings at once: small copies stay in cache
            block = table[fixed_index[a:min(a + step, end)]]
            gram[g] += block.T @ block
            moment[g] += block.T @ target[a:min(a + step, end)]
    w = np.linalg.solve(gram + reg * np.eye(size), moment[..., None])[..., 0]
    # |t - A w|^2 = t^T t - 2 w^T A^T t + w^T A^T A w
    rss = np.add.reduceat(target**2, starts[:-1]) - 2 * np.einsum("gk,gk->g", w, moment)
    return w, float((rss + np.einsum("gk,gkl,gl->g", w, gram, w)).sum())


def fit_mf(ratings: pd.DataFrame, *, rank: int, reg: float, iterations: int = MF_ITERATIONS,
           seed: int = 0) -> FactorModel:
    """Biased matrix factorisation of the training ratings by alternating least squares.

    Minimises ``sum (r - mu - b_u - b_i - p_u . q_i)^2 + reg (|p|^2 + |q|^2 +
    |b_u|^2 + |b_i|^2)`` with ``mu`` fixed at the mean rating: one ridge
    penalty for factors and biases alike (no separate bias penalty, so that
    the fold-in's ``user_reg`` plays the same role as ``reg``). Each sweep
    solves every user's ``[p_u; b_u]`` with the items fixed, then every item's
    ``[q_i; b_i]`` with the users fixed; both are exact minimisations, so the
    objective (``loss``) never rises. Item factors start at ``N(0, 0.1^2)``,
    biases at 0.

    Args:
      ratings: the training ratings, columns ``user``, ``item`` (integer raw
        ids) and ``rating``; repeated (user, item) rows count as separate ratings.
      rank: the factor dimension k >= 1.
      reg: the ridge ``> 0``. Without it a user's or item's least squares need
        not have one solution (too few ratings, or repeated or collinear rows).
      iterations: ALS sweeps.
      seed: seeds the initial item factors.

    Returns:
      :class:`FactorModel`.

    Example:
      >>> ratings = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [7, 9, 7, 9, 7],
      ...                         "rating": [5.0, 1.0, 4.0, 2.0, 5.0]})
      >>> m = fit_mf(ratings, rank=2, reg=0.1, iterations=5)
      >>> m.item_factors.shape, m.user_factors.shape, bool(np.all(np.diff(m.loss) <= 1e-9))
      ((2, 2), (3, 2), True)
    """
    user, item, rating = _ratings(ratings)
    rank = positive_int("rank", rank, "the factor dimension")
    reg = _penalty("reg", reg, positive=True)
    iterations = positive_int("iterations", iterations, "ALS sweeps")
    users, user_index = np.unique(user, return_inverse=True)
    items, item_index = np.unique(item, return_inverse=True)
    mean = float(rating.mean())
    centred = rating - mean
    by_user, user_starts = _groups(user_index, len(users))
    by_item, item_starts = _groups(item_index, len(items))
    item_of, user_of = item_index[by_user], user_index[by_item]  # the other side of each grouped rating
    rng = np.random.default_rng(seed)
    item_side = np.concatenate([0.1 * rng.standard_normal((len(items), rank)), np.zeros((len(items), 1))], axis=1)
    loss = []
    for _ in range(iterations):
        user_side, _ = _half_step(item_side[:, :rank], item_of, user_starts,
                                  (centred - item_side[item_index, rank])[by_user], reg)
        item_side, rss = _half_step(user_side[:, :rank], user_of, item_starts,
                                    (centred - user_side[user_index, rank])[by_item], reg)
        loss.append(rss + reg * float((user_side**2).sum() + (item_side**2).sum()))
    return FactorModel(mean, items, item_side[:, rank].copy(), item_side[:, :rank].copy(), users,
                       user_side[:, rank].copy(), user_side[:, :rank].copy(), rank, reg, np.array(loss))


def predict_foldin(model: FactorModel, batch: TaskBatch, *, user_reg: float, key: str = ITEM_KEY) -> np.ndarray:
    """Folds each user in from their support ratings and predicts their query rows.

    With the item side fixed, ``[p_u; b_u] = (A^T A + user_reg I)^{-1} A^T (y -
    mu - b_i)`` over the user's real support rows, rows of ``A`` being ``[q_i,
    1]`` (``q_i = 0, b_i = 0`` for an item unknown to training: it still informs
    ``b_u``). A query row is predicted ``mu + b_i + b_u + p_u . q_i``, i.e.
    ``mu + b_u`` for an unknown item. One batched solve for all users; padded
    support rows are ignored whatever they hold, and a user without support
    rows gets ``p_u = 0, b_u = 0``.

    Args:
      model: :func:`fit_mf` of the training ratings.
      batch: padded tasks whose ``support_x`` and ``query_x`` hold the raw item
        ids under ``key``.
      user_reg: the fold-in ridge, > 0 (a user with fewer than ``rank + 1``
        support rows has no unique solution without it).
      key: the field of the raw item ids.

    Returns:
      float64 ``[tasks, query]``; finite everywhere.

    Example:
      >>> m = FactorModel(3.0, np.array([7, 9]), np.zeros(2), np.array([[1.0], [-1.0]]),
      ...                 np.array([0]), np.zeros(1), np.zeros((1, 1)), 1, 1.0, np.zeros(1))
      >>> x = {"item_id": np.array([[7, 9]])}
      >>> batch = TaskBatch(x, np.array([[5.0, 1.0]]), np.ones((1, 2), bool), x, np.zeros((1, 2)),
      ...                   np.ones((1, 2), bool))
      >>> predict_foldin(m, batch, user_reg=1.0).round(4).tolist()  # p_u = 4 / 3, b_u = 0
      [[4.3333, 1.6667]]
    """
    return _solve(_mf_fold(model, batch, key), _penalty("user_reg", user_reg, positive=True))


# ----------------------------------------------------------------------------- selection on validation


def _valid_maes(folded: Sequence[_Folded], batches: Sequence[TaskBatch], user_regs: Sequence[float]) -> list[float]:
    """Validation MAE (per user, then the mean over users) of each ``user_reg``, from one fold per batch."""
    out = []
    for user_reg in user_regs:
        # predict_tasks calls predict once per batch, in order: the folds line up with the batches
        fold = iter(folded)
        predictions, queries = predict_tasks(lambda _, r=user_reg, f=fold: _solve(next(f), r), batches)
        out.append(query_metrics(predictions, queries, ks=())["mae"])
    return out


def _select(grid: list[dict[str, float]], models: list[Any], predict: Callable[..., np.ndarray],
            name: str) -> Selected:
    """The grid point of least validation MAE (the first of ties); ``models`` holds one model per
    item-side setting, each followed in ``grid`` by the same number of ``user_reg`` points."""
    best = int(np.argmin([point["valid_mae"] for point in grid]))
    chosen = grid[best]
    if not np.isfinite(chosen["valid_mae"]):
        raise ValueError(f"{name}: no grid point has a finite validation MAE: pass validation users with "
                         "query ratings.")
    model, user_reg = models[best // (len(grid) // len(models))], chosen["user_reg"]
    settings = {k: v for k, v in chosen.items() if k != "valid_mae"}
    return Selected(model, user_reg, settings, chosen["valid_mae"], grid,
                    lambda batch: predict(model, batch, user_reg=user_reg))


def choose_bias(ratings: pd.DataFrame, valid_batches: Sequence[TaskBatch], *,
                item_regs: Sequence[float] = BIAS_ITEM_REGS, user_regs: Sequence[float] = BIAS_USER_REGS,
                key: str = ITEM_KEY) -> Selected:
    """The bias model whose ``(item_reg, user_reg)`` has the lowest validation MAE.

    One pass over the training ratings serves every ``item_reg``; each
    ``user_reg`` reuses the validation users' residual sums.

    Args:
      ratings: the training ratings (see :func:`fit_bias`).
      valid_batches: the validation users, padded (e.g. one list of
        :func:`jaxmeta.evaluation.evaluation_batches`), with raw item ids under ``key``.
      item_regs, user_regs: the grids, each of numbers >= 0.
      key: the field of the raw item ids.

    Returns:
      :class:`Selected`: ``settings`` ``{"item_reg", "user_reg"}``; ``grid`` one
      point per pair, ``item_reg`` outer, ``user_reg`` inner.

    Example:
      >>> from jaxmeta.evaluation import evaluation_batches, with_item_ids
      >>> from jaxmeta.tasks import RaggedTasks
      >>> ratings = pd.DataFrame({"user": [1, 1, 2, 2], "item": [7, 9, 7, 9], "rating": [5.0, 3.0, 4.0, 2.0]})
      >>> tasks = RaggedTasks([{"item_id": np.array([7])}], [np.array([5.0])],
      ...                     [{"item_id": np.array([9])}], [np.array([2.75])])
      >>> chosen = choose_bias(ratings, evaluation_batches([tasks], 1)[0], item_regs=(0.0,), user_regs=(0.0, 1.0))
      >>> # mu = 3.5, b_i = (1, -1); b_u = 0.5 / (user_reg + 1): predictions 3.0 and 2.75
      >>> chosen.settings, chosen.valid_mae
      ({'item_reg': 0.0, 'user_reg': 1.0}, 0.0)
    """
    _ratings(ratings)
    batches = _batches(valid_batches)
    item_regs = _grid("item_regs", item_regs, _penalty)
    user_regs = _grid("user_regs", user_regs, _penalty)
    stats = fit_item_stats(ratings)
    grid, models = [], []
    for item_reg in item_regs:
        model = _bias_from_stats(stats, item_reg)
        models.append(model)
        maes = _valid_maes([_bias_fold(model, b, key) for b in batches], batches, user_regs)
        grid += [{"item_reg": item_reg, "user_reg": r, "valid_mae": mae} for r, mae in zip(user_regs, maes)]
    return _select(grid, models, lambda m, b, user_reg: predict_bias(m, b, user_reg=user_reg, key=key),
                   "choose_bias")


def choose_mf(ratings: pd.DataFrame, valid_batches: Sequence[TaskBatch], *, ranks: Sequence[int] = MF_RANKS,
              regs: Sequence[float] = MF_REGS, user_regs: Sequence[float] = MF_USER_REGS,
              iterations: int = MF_ITERATIONS, seed: int = 0, key: str = ITEM_KEY) -> Selected:
    """The folded-in factor model whose ``(rank, reg, user_reg)`` has the lowest validation MAE.

    One ALS fit per ``(rank, reg)``; each ``user_reg`` reuses the validation
    users' fold-in Gram matrices, so it costs one batched solve.

    Args:
      ratings: the training ratings (see :func:`fit_mf`).
      valid_batches: the validation users, padded, with raw item ids under ``key``.
      ranks: ranks >= 1; regs: ALS ridges > 0; user_regs: fold-in ridges > 0.
      iterations, seed: as in :func:`fit_mf`, for every fit.
      key: the field of the raw item ids.

    Returns:
      :class:`Selected`: ``settings`` ``{"rank", "reg", "user_reg"}``; ``grid``
      one point per triple, ``rank`` outermost, ``user_reg`` innermost.
    """
    _ratings(ratings)
    batches = _batches(valid_batches)
    ranks = _grid("ranks", ranks, lambda name, v: positive_int(name, v, "factor dimensions"))
    regs = _grid("regs", regs, lambda name, v: _penalty(name, v, positive=True))
    user_regs = _grid("user_regs", user_regs, lambda name, v: _penalty(name, v, positive=True))
    iterations = positive_int("iterations", iterations, "ALS sweeps")
    grid, models = [], []
    for rank in ranks:
        for reg in regs:
            model = fit_mf(ratings, rank=rank, reg=reg, iterations=iterations, seed=seed)
            models.append(model)
            maes = _valid_maes([_mf_fold(model, b, key) for b in batches], batches, user_regs)
            grid += [{"rank": rank, "reg": reg, "user_reg": r, "valid_mae": mae} for r, mae in zip(user_regs, maes)]
    return _select(grid, models, lambda m, b, user_reg: predict_foldin(m, b, user_reg=user_reg, key=key),
                   "choose_mf")
