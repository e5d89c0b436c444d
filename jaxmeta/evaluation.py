"""Scoring query sets: the metrics of a results table and the simple baselines.

:func:`query_metrics` scores a model's query predictions on a padded
:class:`~jaxmeta.tasks.TaskBatch`: MAE, RMSE and tie-aware nDCG@k with the
exponential gain ``2^r - 1``, each computed *per user, then averaged over
users* (:mod:`jaxmeta.metrics`). Padded query rows (mask ``False``) take part in
nothing, and padding users (no real query row, :func:`jaxmeta.tasks.task_mask`)
are left out of every mean.

The simple baselines are functions of the training (warm) ratings only, never
of the scored user's own ratings: the global mean rating, the per-item mean
rating (the global mean for an item without a warm rating), item popularity (a
ranking score: the number of warm ratings), and the constant and random
predictors, which give the floor of the ranking metrics
(:func:`jaxmeta.metrics.constant_predictor`, :func:`jaxmeta.metrics.random_predictor`).

The encoded inputs of a task need not hold the raw item id (MeLU's do not), so
:func:`with_item_ids` adds it to every user's input dict as one more field
(``"item_id"`` by default), built from the task table that
:func:`jaxmeta.data.splits.build_tasks` encoded; models ignore fields they do not
read, and the id travels through padding and batching with the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxmeta import metrics
from jaxmeta._checks import positive_int
from jaxmeta.tasks import (
    RaggedTasks,
    TaskBatch,
    pad_tasks,
    task_mask,
)

ITEM_KEY = "item_id"
DEFAULT_KS = (3, 5)
RATING_BASELINES = ("global_mean", "item_mean")
"""Baselines that predict ratings (scored on every metric)."""
RANKING_BASELINES = ("popularity", "constant", "random")
"""Baselines that only rank (their ``mae`` and ``rmse`` are ``None``)."""

__all__ = (
    "DEFAULT_KS",
    "ITEM_KEY",
    "RANKING_BASELINES",
    "RATING_BASELINES",
    "ItemStats",
    "adaptation_curve",
    "baseline_metrics",
    "evaluation_batches",
    "fit_item_stats",
    "floor_metrics",
    "global_mean_predictions",
    "item_mean_predictions",
    "popularity_scores",
    "paired_difference",
    "per_user_metrics",
    "predict_tasks",
    "query_metrics",
    "with_item_ids",
)


# ----------------------------------------------------------------------------- metrics


def _query_arrays(predictions: Any, batch: TaskBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(batch.query_y, dtype=np.float64)
    mask = np.asarray(batch.query_mask, dtype=bool)
    if scores.shape != targets.shape:
        raise ValueError(
            f"predictions have shape {scores.shape} but the batch's query set is {targets.shape}: pass one "
            "prediction per query row ([tasks, query], e.g. from learner.predict(state, batch))."
        )
    bad = mask & ~np.isfinite(scores)
    if bad.any():
        users = np.flatnonzero(bad.any(axis=1))
        raise ValueError(
            f"{int(bad.sum())} prediction(s) on real query rows are not finite (users {users[:5].tolist()}"
            f"{', ...' if len(users) > 5 else ''}): training diverged; lower the learning rates."
        )
    return np.where(mask, scores, 0.0), targets, mask


def query_metrics(
    predictions: Any, batch: TaskBatch, *, ks: Sequence[int] = DEFAULT_KS, ratings: bool = True,
    linear_ks: Sequence[int] = (),
) -> dict[str, float | None]:
    """MAE, RMSE and nDCG@k of query predictions, per user then averaged over users.

    Args:
      predictions: float ``[tasks, query]``, one score per query row of ``batch``
        (anything on a padded row is ignored).
      batch: the padded batch the predictions are for; only ``query_y`` and
        ``query_mask`` are read.
      ks: the nDCG cut-offs; each gives a key ``"ndcg@k"`` (exponential gain
        ``2^r - 1``, tie-aware).
      linear_ks: cut-offs of nDCG with the linear gain ``r`` (the rating itself,
        MeLU's convention), keys ``"ndcg_lin@k"``.
      ratings: ``False`` for a pure ranking score (popularity): ``"mae"`` and
        ``"rmse"`` are then ``None``.

    Returns:
      ``{"mae", "rmse", "ndcg@k" for k in ks}``, Python floats.

    Raises:
      ValueError: the shapes disagree, or a prediction on a real query row is
        ``nan`` or infinite (the per-user mean would silently drop that user).

    Example:
      >>> import numpy as np
      >>> from jaxmeta.tasks import TaskBatch
      >>> q = np.array([[5.0, 1.0], [3.0, 0.0]])
      >>> mask = np.array([[True, True], [True, False]])
      >>> batch = TaskBatch(None, np.zeros((2, 0)), np.zeros((2, 0), bool), None, q, mask)
      >>> m = query_metrics(np.array([[4.0, 2.0], [3.5, 99.0]]), batch, ks=(1,))
      >>> round(m["mae"], 4), round(m["rmse"], 4), m["ndcg@1"]  # user means (1, 0.5), (1, 0.5)
      (0.75, 0.75, 1.0)
    """
    values = per_user_metrics(predictions, batch, ks=ks, linear_ks=linear_ks)
    out: dict[str, float | None] = {name: float(metrics.mean_over_users(v)) for name, v in values.items()}
    if not ratings:
        out["mae"] = out["rmse"] = None
    return out


def per_user_metrics(
    predictions: Any, batch: TaskBatch, *, ks: Sequence[int] = DEFAULT_KS, linear_ks: Sequence[int] = ()
) -> dict[str, np.ndarray]:
    """The per-user values behind :func:`query_metrics`: ``{"mae", "rmse",
    "ndcg@k", "ndcg_lin@k"}``, each float ``[users]`` over the batch's real users (``nan``
    where a value is undefined, e.g. nDCG of a user whose query ratings are all 0).

    Example:
      >>> import numpy as np
      >>> from jaxmeta.tasks import TaskBatch
      >>> q = np.array([[5.0, 1.0], [3.0, 0.0]])
      >>> mask = np.array([[True, True], [True, False]])
      >>> batch = TaskBatch(None, np.zeros((2, 0)), np.zeros((2, 0), bool), None, q, mask)
      >>> per_user_metrics(np.array([[4.0, 2.0], [3.5, 99.0]]), batch, ks=())["mae"].tolist()
      [1.0, 0.5]
    """
    scores, targets, mask = _query_arrays(predictions, batch)
    users = np.asarray(task_mask(batch))
    out = {"mae": np.asarray(metrics.mae(scores, targets, mask))[users],
           "rmse": np.asarray(metrics.rmse(scores, targets, mask))[users]}
    for k in ks:
        out[f"ndcg@{k}"] = np.asarray(metrics.ndcg(scores, targets, mask, k=k, gain="exp"))[users]
    for k in linear_ks:
        out[f"ndcg_lin@{k}"] = np.asarray(metrics.ndcg(scores, targets, mask, k=k, gain="linear"))[users]
    return out


def paired_difference(a: Any, b: Any) -> tuple[float, float, int]:
    """Mean of ``a - b`` over the users where both are finite, its standard
    error (sample standard deviation over the square root of the count), and
    that count: is method A better than method B on the same users, beyond noise?

    Example:
      >>> mean, se, n = paired_difference([0.5, 0.7, 0.9, np.nan], [0.6, 0.9, 1.0, 0.2])
      >>> round(mean, 4), round(se, 4), n
      (-0.1333, 0.0333, 3)
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_difference: shapes {a.shape} and {b.shape}: pass two per-user arrays of one shape.")
    diff = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if len(diff) < 2:
        return float(np.mean(diff)) if len(diff) else float("nan"), float("nan"), len(diff)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))), len(diff)


def floor_metrics(batch: TaskBatch, *, ks: Sequence[int] = DEFAULT_KS,
                  linear_ks: Sequence[int] = ()) -> dict[str, dict[str, float | None]]:
    """The ranking floor: nDCG@k of the constant and of the random predictor.

    Both are exact (tie-aware and closed form, no sampling) and equal; ``"mae"``
    and ``"rmse"`` are ``None`` (a constant *rating* is :func:`global_mean_predictions`).

    Returns:
      ``{"constant": {...}, "random": {...}}`` with the keys of :func:`query_metrics`.
    """
    targets = np.asarray(batch.query_y, dtype=np.float64)
    mask = np.asarray(batch.query_mask, dtype=bool)
    users = np.asarray(task_mask(batch))
    out = {}
    for name, fn in (("constant", metrics.constant_predictor), ("random", metrics.random_predictor)):
        row: dict[str, float | None] = {"mae": None, "rmse": None}
        for k in ks:
            row[f"ndcg@{k}"] = float(metrics.mean_over_users(fn("ndcg", targets, mask, k=k, gain="exp"), users))
        for k in linear_ks:
            row[f"ndcg_lin@{k}"] = float(metrics.mean_over_users(fn("ndcg", targets, mask, k=k, gain="linear"),
                                                                 users))
        out[name] = row
    return out


# ----------------------------------------------------------------------------- baselines


class ItemStats(NamedTuple):
    """What the simple baselines know: per-item counts and means of the warm ratings."""

    items: np.ndarray  # int64 [items]: raw item ids, sorted
    means: np.ndarray  # float64 [items]: mean warm rating of each item
    counts: np.ndarray  # int64 [items]: number of warm ratings of each item
    global_mean: float  # mean of all warm ratings


def fit_item_stats(ratings: pd.DataFrame) -> ItemStats:
    """Per-item statistics of the training ratings.

    Args:
      ratings: the warm ratings, with columns ``item`` and ``rating``.

    Returns:
      :class:`ItemStats`.

    Example:
      >>> import pandas as pd
      >>> s = fit_item_stats(pd.DataFrame({"item": [7, 7, 9], "rating": [4.0, 2.0, 5.0]}))
      >>> s.items.tolist(), s.means.tolist(), s.counts.tolist(), s.global_mean
      ([7, 9], [3.0, 5.0], [2, 1], 3.6666666666666665)
    """
    missing = [c for c in ("item", "rating") if c not in ratings.columns]
    if missing:
        raise ValueError(f"ratings lacks column(s) {missing} (has {list(ratings.columns)}): pass item and rating.")
    if len(ratings) == 0:
        raise ValueError("ratings is empty: the baselines need at least one training rating.")
    rating = ratings["rating"].to_numpy(dtype=np.float64)
    if not np.isfinite(rating).all():
        raise ValueError("ratings has a non-finite rating: drop or fix those rows first.")
    grouped = pd.DataFrame({"item": ratings["item"].to_numpy(dtype=np.int64), "rating": rating}).groupby("item")["rating"]
    stats = grouped.agg(["mean", "size"]).sort_index()
    return ItemStats(
        items=stats.index.to_numpy(dtype=np.int64),
        means=stats["mean"].to_numpy(dtype=np.float64),
        counts=stats["size"].to_numpy(dtype=np.int64),
        global_mean=float(rating.mean()),
    )


def _lookup(stats: ItemStats, item_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Row of each id in ``stats`` (clipped) and whether the id was seen."""
    ids = np.asarray(item_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"item ids have dtype {ids.dtype}: pass integer raw item ids.")
    ids = ids.astype(np.int64)
    row = np.searchsorted(stats.items, ids)
    row = np.minimum(row, len(stats.items) - 1)
    return row, stats.items[row] == ids


def global_mean_predictions(stats: ItemStats, item_ids: Any) -> np.ndarray:
    """The mean warm rating for every row: float64, the shape of ``item_ids``."""
    return np.full(np.shape(item_ids), stats.global_mean, dtype=np.float64)


def item_mean_predictions(stats: ItemStats, item_ids: Any) -> np.ndarray:
    """Each item's mean warm rating; the global mean for an item with none.

    Example:
      >>> import pandas as pd
      >>> s = fit_item_stats(pd.DataFrame({"item": [7, 7, 9], "rating": [4.0, 2.0, 5.0]}))
      >>> item_mean_predictions(s, [[9, 7, 8]]).round(4).tolist()  # 8 is unseen
      [[5.0, 3.0, 3.6667]]
    """
    row, seen = _lookup(stats, item_ids)
    return np.where(seen, stats.means[row], stats.global_mean)


def popularity_scores(stats: ItemStats, item_ids: Any) -> np.ndarray:
    """Each item's number of warm ratings (0 for an unseen item): a ranking score."""
    row, seen = _lookup(stats, item_ids)
    return np.where(seen, stats.counts[row], 0).astype(np.float64)


def _item_ids(batch: TaskBatch, item_key: str) -> np.ndarray:
    x = batch.query_x
    if not isinstance(x, Mapping) or item_key not in x:
        got = sorted(map(str, x)) if isinstance(x, Mapping) else type(x).__name__
        raise ValueError(
            f"the batch's query inputs have no {item_key!r} field (got {got}): add the raw item ids "
            "with with_item_ids(tasks, table) before padding."
        )
    return np.asarray(x[item_key])


def baseline_metrics(
    stats: ItemStats, batch: TaskBatch, *, ks: Sequence[int] = DEFAULT_KS, item_key: str = ITEM_KEY,
    linear_ks: Sequence[int] = (),
) -> dict[str, dict[str, float | None]]:
    """Every simple baseline scored on the batch's query sets.

    Args:
      stats: :func:`fit_item_stats` of the training ratings.
      batch: its query inputs must hold the raw item ids under ``item_key``
        (see :func:`with_item_ids`).
      ks: the nDCG cut-offs.
      item_key: the field of the raw item ids.
      linear_ks: the cut-offs of nDCG with the linear gain (see :func:`query_metrics`).

    Returns:
      ``{"global_mean", "item_mean", "popularity", "constant", "random": metrics}``
      with the keys of :func:`query_metrics` (``mae``/``rmse`` ``None`` for the
      ranking-only three).
    """
    items = _item_ids(batch, item_key)
    both = {"ks": ks, "linear_ks": linear_ks}
    return {
        "global_mean": query_metrics(global_mean_predictions(stats, items), batch, **both),
        "item_mean": query_metrics(item_mean_predictions(stats, items), batch, **both),
        "popularity": query_metrics(popularity_scores(stats, items), batch, ratings=False, **both),
        **floor_metrics(batch, **both),
    }


# ----------------------------------------------------------------------------- item ids and batching


def with_item_ids(tasks: RaggedTasks, table: pd.DataFrame, *, key: str = ITEM_KEY) -> RaggedTasks:
    """``tasks`` with each user's raw item ids added to its input dicts under ``key``.

    Args:
      tasks: :func:`jaxmeta.data.splits.build_tasks` of ``table`` (dict inputs).
      table: the task table it was built from: grouped by user in task order,
        each user's support rows then query rows (as
        :func:`jaxmeta.data.splits.select_queries` leaves it).
      key: the name of the new field (int64 ``[rows]``).

    Raises:
      ValueError: the table does not match the tasks row for row, or ``key`` is
        already a field.
    """
    sizes = tasks.support_sizes + tasks.query_sizes
    if len(table) != int(sizes.sum()) or len(pd.unique(table["user"])) != len(tasks):
        raise ValueError(
            f"the table has {len(table)} rows of {len(pd.unique(table['user']))} users but the tasks have "
            f"{int(sizes.sum())} rows of {len(tasks)} users: pass the task table the tasks were built from."
        )
    items = table["item"].to_numpy(dtype=np.int64)
    users = table["user"].to_numpy()
    ends = np.cumsum(sizes)
    starts = ends - sizes
    support_x, query_x = [], []
    for i, (a, b) in enumerate(zip(starts, ends)):
        if users[a] != users[b - 1]:
            raise ValueError(f"task {i} spans two users of the table: pass the table build_tasks encoded.")
        middle = a + int(tasks.support_sizes[i])
        for out, x, ids in ((support_x, tasks.support_x[i], items[a:middle]), (query_x, tasks.query_x[i], items[middle:b])):
            if not isinstance(x, Mapping) or key in x:
                raise ValueError(f"task {i}: inputs must be a dict without a {key!r} field to add the item ids.")
            out.append({**x, key: ids})
    return RaggedTasks(support_x, list(tasks.support_y), query_x, list(tasks.query_y))


def evaluation_batches(sets: Sequence[RaggedTasks], batch_size: int) -> list[list[TaskBatch]]:
    """Every user of every set once, in batches of ONE shape: the evaluation's batching policy.

    Each batch has ``batch_size`` task slots (padding users fill the last one of
    a set), support rows padded to the largest support set of all ``sets`` and
    query rows to the largest query set, so a learner's ``predict`` compiles once
    for validation, every scenario and every checkpoint. Users keep their order.

    Returns:
      One list of batches per set, in the order of ``sets``.

    Example:
      >>> from jaxmeta.data import synthetic
      >>> data = synthetic.generate(num_train_users=10, num_new_users=3)
      >>> train, new = evaluation_batches([data.train, data.new], 4)
      >>> len(train), len(new), {b.support_y.shape for b in train + new}
      (3, 1, {(4, 20)})
    """
    if isinstance(sets, RaggedTasks):
        raise TypeError("evaluation_batches takes a sequence of RaggedTasks: pass [tasks] for one set.")
    if not sets or any(len(tasks) == 0 for tasks in sets):
        raise ValueError("no users to evaluate: pass non-empty RaggedTasks.")
    positive_int("batch_size", batch_size, "users per batch")
    support = max(int(tasks.support_sizes.max()) for tasks in sets)
    query = max(int(tasks.query_sizes.max()) for tasks in sets)
    return [[pad_tasks(tasks.take(np.arange(s, min(s + batch_size, len(tasks)))), support_size=support,
                       query_size=query, num_tasks=batch_size) for s in range(0, len(tasks), batch_size)]
            for tasks in sets]


def adaptation_curve(model: Any, params: Any, batches: Sequence[TaskBatch], *, learning_rate: float, steps: int,
                     is_fast: Callable[[tuple[str, ...]], bool] | None = None) -> np.ndarray:
    """Query MSE (per user, then the mean over real users) after 0, 1, ..., ``steps`` plain-SGD steps
    at ``learning_rate`` on each user's support MSE, from ``params``: one compiled scan for the whole curve.

    Args:
      model: a :class:`jaxmeta.models.Model`.
      params: the initial parameters (a trained state's ``params``).
      batches: fixed-shape batches (e.g. from :func:`evaluation_batches`).
      learning_rate, steps: the SGD rate and the most steps.
      is_fast: the adapted leaves (default the model's).

    Returns:
      float64 ``[steps + 1]``.
    """
    from jaxmeta.models import combine, mask_where, partition

    fast, slow = partition(params, mask_where(params, model.is_fast if is_fast is None else is_fast))

    def mse(f, x, y, mask):
        errors = jnp.where(mask, model.apply(combine(f, slow), x) - y, 0.0)
        return jnp.sum(errors**2) / jnp.maximum(mask.sum(), 1)

    @jax.jit
    def curve(fast, batch):
        def one(task):
            def body(f, _):
                g = jax.grad(mse)(f, task.support_x, task.support_y, task.support_mask)
                f = jax.tree.map(lambda w, d: w - learning_rate * d, f, g)
                return f, mse(f, task.query_x, task.query_y, task.query_mask)

            _, after = jax.lax.scan(body, fast, None, length=steps)
            return jnp.concatenate([mse(fast, task.query_x, task.query_y, task.query_mask)[None], after])

        return jax.vmap(one)(batch)

    total, users = np.zeros(steps + 1), 0
    for batch in batches:
        real = np.asarray(task_mask(batch))
        total += np.asarray(curve(fast, batch), np.float64)[real].sum(axis=0)
        users += int(real.sum())
    return total / max(users, 1)


def predict_tasks(
    predict: Callable[[TaskBatch], Any], batches: Iterable[TaskBatch]
) -> tuple[np.ndarray, TaskBatch]:
    """Query predictions of ``predict`` over many batches, and their query sets as one batch.

    Returns:
      ``(predictions [tasks, query], batch)``: ``batch`` holds the concatenated
      query inputs, targets and masks (its support set is empty), so
      :func:`query_metrics` and :func:`baseline_metrics` score it directly.
      All batches must share one query size.
    """
    preds, queries = [], []
    for batch in batches:
        preds.append(np.asarray(predict(batch)))
        queries.append((batch.query_x, np.asarray(batch.query_y), np.asarray(batch.query_mask)))
    if not preds:
        raise ValueError("no batches to predict: pass at least one TaskBatch.")
    x = jax.tree.map(lambda *a: np.concatenate([np.asarray(v) for v in a]), *[q[0] for q in queries])
    y = np.concatenate([q[1] for q in queries])
    mask = np.concatenate([q[2] for q in queries])
    empty = np.zeros((len(y), 0), np.float32)
    return np.concatenate(preds), TaskBatch(None, empty, empty.astype(bool), x, y, mask)
