"""The streaming protocol: each new user's ratings replayed in time order (``jaxmeta stream``).

A cold-start table scores every new user once, on a random split of all their
ratings. A live recommender sees a user's ratings arrive one by one and must
predict the next ones from those seen so far. :func:`replay` measures that:

* each user's ratings are put in time order (ties, common in MovieLens, where a
  user rates many films in the same second, broken by the item id:
  :func:`timeline`);
* after ``n`` ratings seen, for each ``n`` of ``ns`` (1, 2, 3, 5, 10, 20, 40 by
  default), the method adapts on them and predicts the user's next ``horizon``
  ratings (10), scored by MAE, RMSE and nDCG@k (per user, then the mean over
  users, :func:`jaxmeta.evaluation.per_user_metrics`). A user with fewer than
  ``n + horizon`` ratings drops out at that ``n``: each ``n`` reports its
  number of users, and differences between methods are paired over the same users;
* all users at one ``n`` are adapted in ONE call, padded into one
  :class:`~jaxmeta.tasks.TaskBatch` (:func:`window`; padded rows are masked and
  change nothing), and the time of that call divided by its users is the
  reported cost of one user-update (median of ``repeats`` calls after a first,
  compiling one; the batch already on the device).

Two update modes (:data:`MODES`):

* ``readapt``: adapt from the meta-learned initialisation on all the ratings seen;
* ``incremental``: continue from the user's previous fast weights with only the
  ratings that arrived since the last update (:func:`resume_adapt`: the inner
  loop of the learner, started per user from that user's weights). At the first
  ``n`` both modes are the same update. It applies to learners whose
  adaptation is an optimisation that can be continued (MAML and its relatives,
  Meta-SGD, Reptile, iMAML, fine-tuning). ``ridge`` solves each user's head in
  closed form, so its incremental mode carries the solve's sufficient
  statistics instead and adds the new ratings' (:func:`ridge_method`): exactly
  the readapt solution, at a cost that does not grow with the ratings seen.
  ``conditioned`` and the other set encoders (their encoder reads all of a
  user's ratings at once to modulate the initialisation) are reported in
  ``readapt`` mode only (:data:`NOT_INCREMENTAL`).

Methods (:class:`Method`): each meta-learner run given; ``finetune`` (the run's
global model fine-tuned per user by plain SGD at the run's inner rate and
steps, the engine's baseline); ``bias`` (:mod:`jaxmeta.classic`'s ``mu + b_i +
b_u``, its shrinkages chosen on the run's validation users as
:func:`jaxmeta.classic.choose_bias` does; its fold-in is a running mean, whose
incremental update gives exactly the readapt numbers, so only readapt is
reported); ``no_adaptation`` (the global model as it is).

A drift case (:func:`drift`): users with long histories whose last ``horizon``
ratings come at least ``drift_days`` after the median time of the ratings
before them; each method adapts on (a) that whole history or (b) only its last
``w`` ratings, for each ``w`` of ``windows``, and predicts the last ratings. The
same is reported for the long-history users without such a gap (the control).

:func:`stream_eval` runs all of it on saved runs (``jaxmeta train --out``); the
users are the run's new users (``users="test"``, the scenario it reports), or
every user the run neither trained nor validated on (``"unseen"``: on ML-100K
the test users and the users with more than 100 ratings, whom its split leaves
out). The drift case always draws from the unseen users. The run's data must
carry times: ML-100K, or a ``table`` run whose file has a ``timestamp`` column.
A dataset's tasks keep the raw item ids and the ratings but neither the user
ids nor the times, so each task's user is found in the source's timed ratings
as the one user who gave all of its (item, rating) pairs (an ambiguous or
missing match is an error), and that user's ratings are read from the source,
all of them, and encoded with the run's feature encoder. On ML-100K they are
exactly the task's rows; on a table they include the user's ratings of the
items the split held out as cold.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from jaxmeta import classic, metrics
from jaxmeta._checks import columns, json_ready, positive_int
from jaxmeta.algorithms import CLOSED_FORM, MetaLearner, MetaState, split_fast
from jaxmeta.algorithms._core import zero_padded_rows
from jaxmeta.algorithms.ridge import implicit_sums, null_jacobian, null_row, ridge_sums_and_rows, solve_with_prior
from jaxmeta.evaluation import (
    DEFAULT_KS,
    ITEM_KEY,
    evaluation_batches,
    paired_difference,
    per_user_metrics,
)
from jaxmeta.models import Model, combine
from jaxmeta.tasks import RaggedTasks, TaskBatch, pad_tasks

__all__ = (
    "DEFAULT_HORIZON",
    "DEFAULT_NS",
    "DEFAULT_WINDOWS",
    "MODES",
    "NOT_INCREMENTAL",
    "Method",
    "Timeline",
    "add_arguments",
    "bias_method",
    "drift",
    "drift_users",
    "fixed_method",
    "format_table",
    "learner_method",
    "main",
    "replay",
    "resume_adapt",
    "ridge_method",
    "stream_eval",
    "timeline",
    "window",
    "write_outputs",
)

DEFAULT_NS = (1, 2, 3, 5, 10, 20, 40)
"""Ratings seen before each update."""
DEFAULT_HORIZON = 10
"""Next ratings predicted after each update."""
DEFAULT_WINDOWS = (10, 20)
"""The recent windows of the drift case (its last ratings before the predicted ones)."""
DRIFT_DAYS = 30.0
"""A drift user's predicted ratings start at least this many days after the median time of their history."""
DRIFT_MIN_HISTORY = 40
"""The fewest ratings before the predicted ones of a user in the drift case."""
REPEATS = 5
"""Timed calls per update (after the first, compiling, one); the median is reported."""
MODES = ("readapt", "incremental")
NOT_INCREMENTAL = {
    "conditioned": "conditioned's set encoder reads all of a user's ratings at once to modulate the "
                   "initialisation; there is no optimisation state to continue",
    "multitask": "multitask solves each user's head in closed form around the shared prior; starting from the "
                 "previous head would move the prior, not continue a solve",
    "amortised": "amortised's set encoder reads all of a user's ratings at once to give the adapted weights; "
                 "there is no optimisation state to continue",
}
"""Meta-learners without an incremental mode, and why (``ridge`` has an exact one: :func:`ridge_method`)."""
RIDGE_NOTE = ("incremental: the solve's sufficient statistics (J^T J, J^T r, J's row sum, count) carried per user "
              "and the new ratings' added, then one solve; equal to readapt up to float rounding, at a cost that "
              "does not grow with the ratings seen")
USER_SETS = ("test", "unseen")
STREAM_FILE = "stream.json"
PLOT_FILE = "stream.png"
_DAY = 86400.0


# ----------------------------------------------------------------------------- checks


def _increasing(name: str, values: Any, what: str) -> tuple[int, ...]:
    """``values`` as a tuple of whole numbers >= 1, strictly increasing."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name}={values!r}: pass a non-empty list of {what}, e.g. 1 2 3 5 10 20.")
    out = tuple(positive_int(name, v, what) for v in values)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"{name}={list(out)}: pass strictly increasing {what}, e.g. "
                         f"{sorted(set(out))}.")
    return out


def _modes(modes: Any) -> tuple[str, ...]:
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes={modes!r}: pass one or both of {MODES}.")
    return modes


# ----------------------------------------------------------------------------- users in time order


class Timeline(NamedTuple):
    """Users' ratings in time order, on the host (numpy); element ``u`` of each list is one user."""

    users: np.ndarray  # [users]: raw user ids
    x: list[Any]  # per user: the model inputs, a pytree of [ratings, ...] leaves, in time order
    y: list[np.ndarray]  # per user: float32 [ratings], in time order
    times: list[np.ndarray]  # per user: [ratings] timestamps (numbers or datetime64), non-decreasing

    @property
    def lengths(self) -> np.ndarray:
        """int64 ``[users]``: each user's number of ratings."""
        return np.array([len(y) for y in self.y], dtype=np.int64)


def timeline(ratings: pd.DataFrame, encode: Callable[[pd.DataFrame], Any]) -> Timeline:
    """Each user's ratings in time order, encoded.

    Ratings are sorted by ``timestamp``, ties by ``item`` (stable otherwise):
    the order does not depend on the row order of the file or of a split.

    Args:
      ratings: ``user``, ``item``, ``rating`` and ``timestamp`` (Unix seconds,
        any number, or datetimes).
      encode: ``encode(frame) -> inputs``, a pytree of arrays with one row per
        row of ``frame`` (e.g. the run's feature encoder, plus the raw item ids).

    Returns:
      :class:`Timeline`, users sorted by id.

    Example:
      >>> frame = pd.DataFrame({"user": [1, 1, 1, 2], "item": [9, 7, 8, 7], "rating": [5.0, 4.0, 3.0, 1.0],
      ...                       "timestamp": [30, 10, 10, 5]})
      >>> t = timeline(frame, lambda f: f["item"].to_numpy())
      >>> t.users.tolist(), t.x[0].tolist(), t.y[0].tolist()  # user 1: time 10 (items 7, 8), then 30
      ([1, 2], [7, 8, 9], [4.0, 3.0, 5.0])
    """
    columns(ratings, ("user", "item", "rating", "timestamp"), "ratings",
            "The streaming protocol replays ratings in time order: pass timed ratings (e.g. MovieLens-100K's "
            "u.data, or a table with a timestamp column).")
    if ratings["timestamp"].isna().any():
        raise ValueError("ratings has missing timestamps: every rating needs a time to be replayed in order; "
                         "drop those rows first.")
    frame = ratings.sort_values(["user", "timestamp", "item"], kind="mergesort").reset_index(drop=True)
    x = encode(frame)
    users, starts = np.unique(frame["user"].to_numpy(), return_index=True)
    ends = np.append(starts[1:], len(frame))
    y = frame["rating"].to_numpy(np.float32)
    times = frame["timestamp"].to_numpy()
    spans = list(zip(starts, ends))
    return Timeline(users, [jax.tree.map(lambda leaf, a=a, b=b: np.asarray(leaf)[a:b], x) for a, b in spans],
                    [y[a:b] for a, b in spans],
                    [times[a:b] for a, b in spans])


def window(line: Timeline, rows: Sequence[int] | np.ndarray, start: Any, stop: Any, horizon: int) -> RaggedTasks:
    """The users ``rows`` of ``line``: support their ratings ``[start, stop)``, query ``[stop, stop + horizon)``.

    ``start`` and ``stop`` are one position for every user or one per user of
    ``rows``. Positions count ratings in time order from 0.

    Example:
      >>> t = Timeline(np.array([1]), [np.arange(6)], [np.arange(6.0)], [np.arange(6)])
      >>> w = window(t, [0], 1, 3, 2)
      >>> w.support_y[0].tolist(), w.query_y[0].tolist()
      ([1.0, 2.0], [3.0, 4.0])
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.broadcast_to(np.asarray(start, dtype=np.int64), rows.shape)
    stops = np.broadcast_to(np.asarray(stop, dtype=np.int64), rows.shape)
    parts = {"support_x": [], "support_y": [], "query_x": [], "query_y": []}
    for u, a, b in zip(rows, starts, stops):
        if not 0 <= a <= b or b + horizon > len(line.y[u]):
            raise ValueError(f"user {line.users[u]!r} has {len(line.y[u])} ratings: it has no support [{a}, {b}) "
                             f"and {horizon} next ratings; keep users with at least {b + horizon} ratings.")
        parts["support_x"].append(jax.tree.map(lambda leaf, a=a, b=b: leaf[a:b], line.x[u]))
        parts["support_y"].append(line.y[u][a:b])
        parts["query_x"].append(jax.tree.map(lambda leaf, b=b: leaf[b:b + horizon], line.x[u]))
        parts["query_y"].append(line.y[u][b:b + horizon])
    return RaggedTasks(**parts)


def _pad(tasks: RaggedTasks) -> TaskBatch:
    """One batch of all ``tasks``; at least one support row (all masked when nobody has one)."""
    return pad_tasks(tasks, support_size=max(1, int(tasks.support_sizes.max())))


# ----------------------------------------------------------------------------- methods


class Method(NamedTuple):
    """One way of predicting users' next ratings from those seen, as pure functions of padded batches.

    Attributes:
      name: as reported.
      adapt: ``adapt(batch) -> state``: every user of ``batch`` updated from
        scratch (the meta-learned initialisation) on the support rows; ``None``
        for a method that does not adapt.
      resume: ``resume(state, batch) -> state``: each user's state continued
        on the new support rows; ``None`` when the method has no incremental mode.
      predict: ``predict(state, batch) -> float [tasks, query]``: the query rows' predictions.
      note: what else a reader needs to know (why there is no incremental mode, or what it is).
    """

    name: str
    adapt: Callable[[TaskBatch], Any] | None
    resume: Callable[[Any, TaskBatch], Any] | None
    predict: Callable[[Any, TaskBatch], Any]
    note: str = ""


def resume_adapt(learner: MetaLearner) -> Callable[[MetaState, Any, TaskBatch], Any]:
    """``resume(state, fast, batch) -> fast``: the learner's adaptation, started per user from ``fast``.

    User ``u``'s inner loop runs on ``batch``'s support rows of user ``u``,
    from ``fast`` of user ``u`` (leaves ``[tasks, ...]``, ``None`` at slow
    leaves, as ``learner.adapt`` returns them) with the state's slow weights and
    meta-learned values (Meta-SGD's rates): ``learner.adapt`` of a one-user
    state, ``vmap``-ed over the users in one compiled call. A user without
    support rows keeps ``fast`` (the engine's inner loop leaves such a user
    unadapted). Meaningful for learners whose adaptation is an optimisation
    from the fast weights (not :data:`NOT_INCREMENTAL`).

    Example:
      >>> import optax
      >>> from jaxmeta import algorithms
      >>> from jaxmeta.data import synthetic
      >>> from jaxmeta.models import embedding_mlp
      >>> data = synthetic.generate(num_train_users=4, num_new_users=2, seed=0)
      >>> learner = algorithms.maml(embedding_mlp(data.vocab_sizes), inner_steps=1)
      >>> state = learner.init(jax.random.key(0))
      >>> batch = pad_tasks(data.new)
      >>> fast = learner.adapt(state, batch)
      >>> again = resume_adapt(learner)(state, fast, batch)  # one more step on the same ratings
      >>> [a.shape == b.shape for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(again))][:2]
      [True, True]
    """

    @jax.jit
    def resume(state: MetaState, fast: Any, batch: TaskBatch) -> Any:
        slow = split_fast(state.params, learner.is_fast)[1]

        def one(user_fast, task):
            own = state._replace(params=combine(user_fast, slow))
            adapted = learner.adapt(own, jax.tree.map(lambda a: a[None], task))
            return jax.tree.map(lambda a: a[0], adapted)

        return jax.vmap(one)(fast, batch)

    return resume


def learner_method(name: str, learner: MetaLearner, state: MetaState, *, incremental: bool = True,
                   note: str = "") -> Method:
    """A meta-learner (or the fine-tuning baseline) as a :class:`Method`: state = per-user fast weights.

    ``incremental=False`` (a :data:`NOT_INCREMENTAL` learner) leaves ``resume`` out; ``note`` says why.
    """
    resume = resume_adapt(learner) if incremental else None
    return Method(
        name,
        adapt=lambda batch: learner.adapt(state, batch),
        resume=None if resume is None else (lambda fast, batch: resume(state, fast, batch)),
        predict=lambda fast, batch: learner.apply_adapted(state, fast, batch.query_x),
        note=note,
    )


def ridge_method(name: str, learner: MetaLearner, state: MetaState, model: Model) -> Method:
    """A ``ridge`` meta-learner as a :class:`Method` whose incremental mode is exact.

    ``ridge`` solves each user's head in closed form around the meta-learned prior
    (:func:`jaxmeta.algorithms.ridge.solve_with_prior`); the solve depends on the user's
    ratings only through sums over them, ``J^T J``, ``J^T (y - f(w0))``, and, for the
    prior of ``implicit=True``, ``J``'s rows and their count
    (:func:`~jaxmeta.algorithms.ridge.ridge_sums_and_rows`; exact sums for a head the model is
    affine in, as hybrid MeLU's user vector and bias and MF's). The state of a user is
    ``(J^T J, J^T r, sum of J's rows, count, head)`` (with the model's own implicit rows,
    :attr:`jaxmeta.models.Model.implicit`, their sum in place of J's): ``adapt`` computes it from all the
    ratings seen (readapt), ``resume`` adds the new ratings' sums to the carried ones and solves again
    (incremental), each in one compiled call over the users, the solve included in what
    is timed. Both take the Jacobian at the prior ``w0``, so the two modes agree up to
    float rounding for any head (for a head the model is affine in, readapt is also the
    exact ridge solution), and an incremental update costs the same at any number of
    ratings seen.

    Args:
      name: as reported.
      learner: a ``ridge`` meta-learner.
      state: its meta-trained state.
      model: the model it was built on (with ``implicit=True``, its own implicit rows, when it has
        them, are what the prior reads).
    """
    w0, unravel = ravel_pytree(split_fast(state.params, learner.is_fast)[0])
    own = model.implicit is not None and isinstance(state.hyper, Mapping) and "implicit" in state.hyper

    def one_user(tree: Any) -> Any:
        return jax.tree.map(lambda a: a[None], tree)

    def sums(batch: TaskBatch) -> tuple[jax.Array, ...]:
        def one(x, y, mask):
            x = zero_padded_rows(x, mask)

            def apply(w):
                return learner.apply_adapted(state, one_user(unravel(w)), one_user(x))[0]

            gram, rhs, _, jac_sum = ridge_sums_and_rows(apply, w0, y, mask)
            if own:
                jac_sum, _ = implicit_sums(model.implicit, state.params, x, mask, w0.size)
            return gram, rhs, jac_sum, jnp.sum(mask, dtype=w0.dtype)

        return jax.vmap(one)(batch.support_x, batch.support_y, batch.support_mask)

    def solved(batch: TaskBatch, *stats: jax.Array) -> tuple[jax.Array, ...]:
        null = null_row(jax.tree.map(lambda a: a[0], batch.support_x))
        if own:
            reference = model.implicit(state.params, null)[0]
        else:
            reference = null_jacobian(lambda w: learner.apply_adapted(state, one_user(unravel(w)), one_user(null))[0],
                                      w0)
        return *stats, jax.vmap(lambda *s: solve_with_prior(w0, state.hyper, *s, reference)[0])(*stats)

    adapt = jax.jit(lambda batch: solved(batch, *sums(batch)))
    resume = jax.jit(lambda carried, batch: solved(batch, *jax.tree.map(jnp.add, carried[:-1], sums(batch))))
    return Method(name, adapt=adapt, resume=resume,
                  predict=lambda user, batch: learner.apply_adapted(state, jax.vmap(unravel)(user[-1]), batch.query_x),
                  note=RIDGE_NOTE)


def bias_method(selected: classic.Selected, *, key: str = ITEM_KEY) -> Method:
    """:mod:`jaxmeta.classic`'s bias model as a :class:`Method`.

    Its fold-in (``b_u``) and prediction are one numpy call
    (:func:`jaxmeta.classic.predict_bias`), so ``adapt`` returns the
    predictions and is what is timed; ``b_u`` is a shrunken mean of the
    support residuals, whose incremental update (running sums) gives exactly
    the readapt numbers: no separate incremental mode.
    """
    model, user_reg = selected.model, selected.user_reg
    return Method("bias", adapt=lambda batch: classic.predict_bias(model, batch, user_reg=user_reg, key=key),
                  resume=None, predict=lambda predictions, batch: predictions,
                  note="incremental (running sums of the residuals) equals readapt exactly")


def fixed_method(name: str, predict: Callable[[TaskBatch], Any], note: str = "") -> Method:
    """A method that does not adapt (``predict(batch)``: the global model as it is)."""
    return Method(name, adapt=None, resume=None, predict=lambda _, batch: predict(batch), note=note)


def _timed(fn: Callable, *args, repeats: int) -> tuple[Any, float, float]:
    """``(fn(*args), seconds of the first call, median seconds of `repeats` more)``."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        seconds.append(time.perf_counter() - start)
    return out, first, float(np.median(seconds))


def _score(predictions: Any, batch: TaskBatch, ks: Sequence[int],
           users: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per-user metrics of the predictions and their means over users.

    With ``users``, the arrays are first padded to that many users (padding
    users have no real query row and are left out of everything), so that the
    metrics compile once for every batch of a replay rather than once per size.
    """
    predictions, targets, mask = np.asarray(predictions), np.asarray(batch.query_y), np.asarray(batch.query_mask)
    extra = [(0, max(0, users - len(mask))), (0, 0)]
    scored = TaskBatch(None, None, None, None, np.pad(targets, extra), np.pad(mask, extra))
    per_user = per_user_metrics(np.pad(predictions, extra), scored, ks=ks)
    return {k: float(metrics.mean_over_users(v)) for k, v in per_user.items()}, per_user


def _take(state: Any, rows: np.ndarray) -> Any:
    """The users ``rows`` of a per-user state (leaves ``[tasks, ...]``)."""
    return jax.tree.map(lambda a: a[rows], state)


def _paired(rows: list[dict[str, Any]], values: dict[tuple, dict[str, np.ndarray]], *, of: Callable,
            against: Callable, field: str, metric_names: Sequence[str]) -> None:
    """Adds to each row ``r`` for which ``against(r)`` names a scored row the paired differences
    ``{metric: [mean, standard error, users]}`` of ``r`` minus that row, under ``field``."""
    for row in rows:
        other = against(row)
        if other is None or other not in values or of(row) == other:
            continue
        mine, theirs = values[of(row)], values[other]
        row[field] = {m: list(paired_difference(mine[m], theirs[m])) for m in metric_names}


def replay(methods: Sequence[Method], line: Timeline, *, ns: Sequence[int] = DEFAULT_NS,
           horizon: int = DEFAULT_HORIZON, modes: Sequence[str] = MODES, ks: Sequence[int] = DEFAULT_KS,
           repeats: int = REPEATS, progress: bool = False) -> dict[str, Any]:
    """Each method after ``n`` ratings seen, predicting the next ``horizon``, for each ``n`` of ``ns``.

    All users with at least ``n + horizon`` ratings are updated in one call per
    ``n``, method and mode. ``readapt``: ``method.adapt`` on ratings
    ``[0, n)``. ``incremental``: at the first ``n`` the same update; then
    ``method.resume`` of each user's previous state on ratings ``[n_prev, n)``
    only (a user kept at ``n`` was kept at ``n_prev``). Both predict ratings
    ``[n, n + horizon)``.

    Args:
      methods: the methods; one without ``adapt`` is reported once per ``n``
        (mode ``"none"``), one without ``resume`` in ``readapt`` mode only.
      line: the users in time order (:func:`timeline`).
      ns: strictly increasing numbers of ratings seen.
      horizon: the next ratings predicted (>= 1).
      modes: ``"readapt"``, ``"incremental"`` or both.
      ks: the nDCG cut-offs.
      repeats: timed calls per update after the first one (>= 1).
      progress: show a progress bar.

    Returns:
      ``{"users": {n: users kept}, "rows": [...]}``: ``"users"`` for every
      ``n`` asked for (0 where no user has ``n + horizon`` ratings: such an
      ``n`` has no rows); one row per (n, method, mode) with ``"n"``,
      ``"users"``, ``"method"``, ``"mode"``, the means over users ``"mae"``,
      ``"rmse"``, ``"ndcg@k"``; for an update, the seconds of
      its first (compiling) call ``"first_call_s"``, ``"ms_per_call"``, the
      median time of the one call that updates all the users, and
      ``"ms_per_user"``, that divided by the users (the incremental row at
      the first ``n`` repeats the readapt update: ``"same_as": "readapt"``);
      ``"vs_bias"`` (every method but bias, when
      bias is among ``methods``) and, for incremental rows, ``"vs_readapt"``:
      paired differences ``{metric: [mean, standard error, users]}``.
    """
    ns = _increasing("ns", ns, "numbers of ratings seen")
    horizon = positive_int("horizon", horizon, "the next ratings predicted")
    repeats = positive_int("repeats", repeats, "timed calls per update")
    modes = _modes(modes)
    lengths = line.lengths
    kept = {n: np.flatnonzero(lengths >= n + horizon) for n in ns}
    if not len(kept[ns[0]]):
        raise ValueError(f"no user has {ns[0] + horizon} ratings (ns[0]={ns[0]} seen + horizon={horizon}; the most "
                         f"is {int(lengths.max(initial=0))}): pass a smaller horizon or first n.")
    counts = {n: len(kept[n]) for n in ns}  # every n asked for, 0 where nobody is left
    ns = tuple(n for n in ns if counts[n])
    everyone = counts[ns[0]]
    rows: list[dict[str, Any]] = []
    values: dict[tuple, dict[str, np.ndarray]] = {}
    bar = tqdm(total=len(methods) * len(ns), desc="stream", unit="update", disable=not progress, leave=False)
    for method in methods:
        previous = None  # (users kept, incremental state) at the previous n
        for i, n in enumerate(ns):
            users = kept[n]
            batch = jax.device_put(_pad(window(line, users, 0, n, horizon)))
            base = {"n": n, "users": len(users), "method": method.name}
            if method.adapt is None:
                scores, values[(n, method.name, "none")] = _score(method.predict(None, batch), batch, ks, everyone)
                rows.append({**base, "mode": "none", **scores})
                bar.update()
                continue
            readapt = "readapt" in modes or method.resume is None
            if readapt or i == 0:
                state, first, median = _timed(method.adapt, batch, repeats=repeats)
                timing = {"first_call_s": first, "ms_per_call": 1e3 * median,
                          "ms_per_user": 1e3 * median / len(users)}
            if readapt:
                scores, values[(n, method.name, "readapt")] = _score(method.predict(state, batch), batch, ks,
                                                                     everyone)
                rows.append({**base, "mode": "readapt", **scores, **timing})
            if "incremental" in modes and method.resume is not None:
                extra: dict[str, Any] = {**timing, "same_as": "readapt"}
                if i > 0:
                    at = np.searchsorted(previous[0], users)  # kept users are a subset of the previous ones
                    new = jax.device_put(_pad(window(line, users, ns[i - 1], n, horizon)))
                    state, first, median = _timed(method.resume, _take(previous[1], at), new, repeats=repeats)
                    extra = {"first_call_s": first, "ms_per_call": 1e3 * median,
                             "ms_per_user": 1e3 * median / len(users)}
                scores, values[(n, method.name, "incremental")] = _score(method.predict(state, batch), batch, ks,
                                                                         everyone)
                rows.append({**base, "mode": "incremental", **scores, **extra})
                previous = (users, state)
            bar.update()
    bar.close()
    names = ["mae", "rmse", *(f"ndcg@{k}" for k in ks)]

    def key(row: dict[str, Any]) -> tuple:
        return row["n"], row["method"], row["mode"]

    if any(m.name == "bias" for m in methods):
        _paired(rows, values, of=key, against=lambda r: (r["n"], "bias", "readapt"), field="vs_bias",
                metric_names=names)
    _paired([r for r in rows if r["mode"] == "incremental" and "same_as" not in r], values, of=key,
            against=lambda r: (r["n"], r["method"], "readapt"), field="vs_readapt", metric_names=names)
    return {"users": counts, "rows": rows}


def _seconds(times: np.ndarray) -> np.ndarray:
    """Timestamps as float seconds (datetimes converted; numbers taken as Unix seconds)."""
    times = np.asarray(times)
    if np.issubdtype(times.dtype, np.datetime64):
        return times.astype("datetime64[ns]").astype(np.int64) / 1e9
    return times.astype(np.float64)


def drift_users(line: Timeline, *, horizon: int = DEFAULT_HORIZON, min_history: int = DRIFT_MIN_HISTORY,
                days: float = DRIFT_DAYS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(drifted, control, gap_days)``: the users with at least ``min_history`` ratings before their
    last ``horizon`` whose last ratings start at least ``days`` after the median time of that
    history (drifted) or sooner (control), and each user's gap in days (``nan`` for the others)."""
    gap = np.full(len(line.y), np.nan)
    for u, t in enumerate(line.times):
        if len(t) >= min_history + horizon:
            seconds = _seconds(t)
            gap[u] = (seconds[-horizon] - np.median(seconds[:-horizon])) / _DAY
    long = np.isfinite(gap)
    return np.flatnonzero(long & (gap >= days)), np.flatnonzero(long & ~(gap >= days)), gap


def drift(methods: Sequence[Method], line: Timeline, *, horizon: int = DEFAULT_HORIZON,
          windows: Sequence[int] = DEFAULT_WINDOWS, min_history: int = DRIFT_MIN_HISTORY,
          days: float = DRIFT_DAYS, ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Whole history against a recent window, for users whose last ratings come from a later period.

    Users: :func:`drift_users`. Each method adapts (from its initialisation, in
    one call for all the users of a group) on the whole history before the
    last ``horizon`` ratings, or on only the last ``w`` ratings of it for each
    ``w`` of ``windows``, and predicts the last ``horizon`` ratings.

    Returns:
      ``{"users": {"drift", "control"}, "gap_days": {group: [median, min, max]},
      "rows": [...]}``: one row per (group, method, history) with ``"history"``
      ``"all"`` or ``"last w"``, the means over users (``"mae"``, ...), and for
      a window ``"vs_all"``: the paired differences ``{metric: [mean, standard
      error, users]}`` from the whole history.
    """
    horizon = positive_int("horizon", horizon, "the last ratings predicted")
    windows = _increasing("windows", windows, "recent windows (ratings)")
    min_history = positive_int("min_history", min_history, "ratings before the predicted ones")
    if windows[-1] >= min_history:
        raise ValueError(f"windows={list(windows)} with min_history={min_history}: a window must be shorter than "
                         "every history; pass smaller windows or a larger min_history.")
    drifted, control, gap = drift_users(line, horizon=horizon, min_history=min_history, days=days)
    names = ["mae", "rmse", *(f"ndcg@{k}" for k in ks)]
    out: dict[str, Any] = {"users": {"drift": len(drifted), "control": len(control)}, "gap_days": {}, "rows": []}
    groups = {g: u for g, u in (("drift", drifted), ("control", control)) if len(u)}
    # every batch padded to one shape (padding users and rows are masked): one compilation per method
    shape = {"num_tasks": max((len(u) for u in groups.values()), default=1), "query_size": horizon,
             "support_size": max((int(line.lengths[u].max()) - horizon for u in groups.values()), default=1)}
    for group, users in groups.items():
        out["gap_days"][group] = [float(np.median(gap[users])), float(gap[users].min()), float(gap[users].max())]
        ends = line.lengths[users] - horizon
        batches = {history: jax.device_put(pad_tasks(window(line, users, 0 if history == "all" else
                                                            np.maximum(ends - history, 0), ends, horizon), **shape))
                   for history in ("all", *windows)}
        for method in methods:
            per_user = {}
            for history, batch in batches.items():
                state = None if method.adapt is None else method.adapt(batch)
                scores, per_user[history] = _score(method.predict(state, batch), batch, ks)
                row = {"group": group, "users": len(users), "method": method.name,
                       "history": "all" if history == "all" else f"last {history}", **scores}
                if history != "all":
                    row["vs_all"] = {m: list(paired_difference(per_user[history][m], per_user["all"][m]))
                                     for m in names}
                out["rows"].append(row)
                if method.adapt is None:
                    break  # the same predictions whatever the history
    return out


# ----------------------------------------------------------------------------- saved runs


def _timed_ratings(config, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every rating of the run's source with its time: ``user, item, rating, timestamp``.

    ``data_dir``: where the data are now, read as :func:`jaxmeta.job.restore_run`
    reads it (the MovieLens folder's parent; a table's folder, same file name).
    """
    from jaxmeta.data import interactions
    from jaxmeta.data import movielens as ml

    moved = None if data_dir is None else Path(data_dir).expanduser()
    if config.data == "ml-100k":
        root = Path(config.data_dir).expanduser() if moved is None else moved
        return ml.load_ml100k_ratings(root / "ml-100k" if (root / "ml-100k").is_dir() else root)
    if config.data == "table":
        path = Path(config.path) if moved is None else moved / Path(config.path).name
        if "timestamp" not in interactions.table_columns(path):
            raise ValueError(f"{path}: the run's table has no 'timestamp' column, and the streaming protocol "
                             "replays each user's ratings in time order; pass a run trained on a table with a "
                             "timestamp column, or on --data ml-100k.")
        scale = "infer" if config.rating_scale is None else tuple(config.rating_scale)
        return interactions.read_interactions(path, user="user", item="item", rating="rating",
                                              timestamp="timestamp", rating_range=scale)
    why = {"synthetic": "the synthetic data have no times",
           "ml-1m": "ML-1M runs use MeLU's split, whose ratings (ratings_no_timestamp.dat) have no times"}
    raise ValueError(f"the run's data are {config.data!r}: {why.get(config.data, 'they have no times')}; pass a run "
                     "trained with --data ml-100k, or --data table on a file with a timestamp column.")


def _find_users(tasks: RaggedTasks, ratings: pd.DataFrame, what: str) -> np.ndarray:
    """The raw id of each task's user: the one user of ``ratings`` who gave every (item, rating) of the task.

    A dataset's tasks keep the raw item ids (:data:`jaxmeta.evaluation.ITEM_KEY`)
    and ratings but not the user ids; a task's pairs name its user unless
    another user gave all of them too, which is an error.
    """
    owners = ratings.groupby([ratings["item"].to_numpy(), ratings["rating"].to_numpy(np.float32)])["user"].agg(set)
    found = []
    for i in range(len(tasks)):
        pairs = [(int(item), np.float32(r)) for part in ("support", "query")
                 for item, r in zip(getattr(tasks, f"{part}_x")[i][ITEM_KEY], getattr(tasks, f"{part}_y")[i])]
        candidates = sorted((owners.get(p, set()) for p in set(pairs)), key=len)
        who = set(candidates[0]).intersection(*candidates[1:]) if candidates else set()
        if len(who) != 1:
            problem = "no user" if not who else f"{len(who)} users ({sorted(who)[:3]})"
            raise ValueError(f"{what} user {i}: {problem} of the source's ratings gave all of its {len(pairs)} "
                             "ratings: the data read now differ from the run's; pass the run's data (--data-dir).")
        found.append(who.pop())
    return np.array(found)


def _encoding(data) -> Callable[[pd.DataFrame], dict[str, np.ndarray]]:
    """The run's inputs of a ratings frame: its encoder's fields and the raw item ids."""
    def encode(frame: pd.DataFrame) -> dict[str, np.ndarray]:
        return {**data.encoder.encode(frame), ITEM_KEY: frame["item"].to_numpy(np.int64)}

    return encode


def _machine() -> dict[str, Any]:
    device = jax.devices()[0]
    return {"platform": device.platform, "device": device.device_kind, "devices": jax.device_count(),
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "jax": jax.__version__}


def stream_eval(runs: Sequence[str | os.PathLike], *, ns: Sequence[int] = DEFAULT_NS,
                horizon: int = DEFAULT_HORIZON, modes: Sequence[str] = MODES,
                windows: Sequence[int] = DEFAULT_WINDOWS, drift_days: float = DRIFT_DAYS,
                drift_min_history: int = DRIFT_MIN_HISTORY, users: str = "test", ks: Sequence[int] = DEFAULT_KS,
                which: str | int = "best", data_dir: str | os.PathLike | None = None, repeats: int = REPEATS,
                progress: bool = False) -> dict[str, Any]:
    """The streaming protocol and the drift case on saved runs (see the module docstring).

    Args:
      runs: ``jaxmeta train --out`` folders, one per meta-learner, all on the
        same data (same source, split and seed); the first one's global model
        gives ``finetune`` and ``no_adaptation``.
      ns, horizon, modes, ks, repeats: as in :func:`replay`.
      windows, drift_days, drift_min_history: as in :func:`drift`.
      users: ``"test"`` (the run's new users, its scenario) or ``"unseen"``
        (every user the run neither trained nor validated on).
      which: the checkpoint of each run: ``"best"`` (validation MAE), ``"latest"`` or a step.
      data_dir: where the runs' data are now, when they moved.
      progress: show progress bars.

    Returns:
      A JSON-ready dict: ``"settings"``, ``"machine"``, ``"methods"`` (each
      with its run, checkpoint step and modes or settings), ``"stream"``
      (:func:`replay`), ``"drift"`` (:func:`drift`) and ``"seconds"``.

    Raises:
      ValueError: a bad setting (naming it), a run whose data have no times,
        or runs on different data.
    """
    from jaxmeta.job import baseline_learners, read_config, restore_run

    start = time.perf_counter()
    if isinstance(runs, (str, os.PathLike)) or not runs:
        raise ValueError(f"runs={runs!r}: pass a list of one or more run folders (--run DIR, repeatable).")
    ns = _increasing("ns", ns, "numbers of ratings seen")
    horizon = positive_int("horizon", horizon, "the next ratings predicted")
    modes = _modes(modes)
    if users not in USER_SETS:
        raise ValueError(f"users={users!r}: pass one of {USER_SETS}.")
    ratings = _timed_ratings(read_config(runs[0]), data_dir)  # before the runs: fail fast on untimed data
    first = restore_run(runs[0], which=which, data_dir=data_dir)
    config, data = first.config, first.data
    if data.encoder is None or ITEM_KEY not in data.train.support_x[0]:
        raise ValueError(f"the run's data ({config.data}) have no integer item ids; the streaming protocol finds "
                         "its users and fits the bias baseline by them: pass a run on integer item ids.")
    scenario = config.scenario if config.scenario in data.scenarios else next(iter(data.scenarios))
    test_ids = _find_users(data.scenarios[scenario], ratings, scenario)
    valid_ids = np.concatenate([_find_users(v, ratings, f"validation set {k!r}") for k, v in data.valid.items()])
    trained = set(data.warm_ratings["user"].tolist()) | set(valid_ids.tolist())
    overlap = trained & set(test_ids.tolist())
    if users == "test" and overlap:
        raise ValueError(f"the run's scenario {scenario!r} holds {len(overlap)} of the "
                         "users it trained or validated on: the streaming protocol replays new users; pass a run "
                         "made with a new-user scenario (--scenario user_cold), or users='unseen'.")
    unseen = np.array(sorted(set(ratings["user"].tolist()) - trained))
    encode = _encoding(data)
    chosen = test_ids if users == "test" else unseen
    line = timeline(ratings[ratings["user"].isin(chosen)], encode)
    pool = timeline(ratings[ratings["user"].isin(unseen)], encode)

    methods, described = [], {}
    restored = [first] + [restore_run(r, which=which, data=data, data_dir=data_dir) for r in runs[1:]]
    for run, meta in zip(runs, restored):
        base = meta.config.algo if meta.config.algo not in described else f"{meta.config.algo} ({Path(run).name})"
        name, n = base, 0
        while name in described:  # runs of one algorithm in folders of one name
            n += 1
            name = f"{base} #{n}"
        why = NOT_INCREMENTAL.get(meta.config.algo, "")
        method = (ridge_method(name, meta.learner, meta.state, meta.model) if meta.config.algo == "ridge" else
                  learner_method(name, meta.learner, meta.state, incremental=not why, note=why))
        methods.append(method)
        inner = {} if meta.config.algo in CLOSED_FORM else {"inner_lr": meta.config.inner_lr,
                                                             "inner_steps": meta.config.inner_steps}
        if meta.config.implicit_prior:
            inner["implicit_prior"] = True
        if meta.config.implicit_vectors:
            inner["implicit_vectors"] = True
        described[name] = {"run": str(Path(run).absolute()), "algo": meta.config.algo, "step": meta.step, **inner,
                           "modes": list(modes) if method.resume else ["readapt"],
                           **({"note": method.note} if method.note else {})}
    base = restore_run(runs[0], which=which, name="baseline", data=data, data_dir=data_dir)
    glob, _ = baseline_learners(config, first.model)
    methods.append(learner_method("finetune", base.learner, base.state))
    described["finetune"] = {"run": str(Path(runs[0]).absolute()), "step": base.step, "inner_lr": config.inner_lr,
                             "inner_steps": config.inner_steps, "modes": list(modes),
                             "note": "the run's global model, fine-tuned per user by plain SGD"}
    valid = evaluation_batches([data.valid["users"]], 256)[0]
    chosen_bias = classic.choose_bias(data.warm_ratings, valid)
    methods.append(bias_method(chosen_bias))
    described["bias"] = {"settings": chosen_bias.settings, "valid_mae": chosen_bias.valid_mae, "modes": ["readapt"],
                         "note": methods[-1].note}
    methods.append(fixed_method("no_adaptation", lambda batch: glob.predict(base.state, batch)))
    described["no_adaptation"] = {"run": str(Path(runs[0]).absolute()), "step": base.step, "modes": ["none"],
                                  "note": "the run's global model, not adapted"}

    stream = replay(methods, line, ns=ns, horizon=horizon, modes=modes, ks=ks, repeats=repeats, progress=progress)
    drifted = drift(methods, pool, horizon=horizon, windows=windows, min_history=drift_min_history,
                    days=drift_days, ks=ks)
    settings = {"runs": [str(Path(r).absolute()) for r in runs], "data": config.data, "split": data.split,
                "scenario": scenario, "users": users, "users_total": len(line.users), "ns": list(ns),
                "horizon": horizon, "modes": list(modes), "ks": list(ks), "windows": list(windows),
                "drift_days": drift_days, "drift_min_history": drift_min_history, "drift_pool": len(pool.users),
                "repeats": repeats, "which": which, "order": "timestamp, ties by item id",
                "timing": "ms_per_user: median over repeats of the one call that updates every user at that n "
                          "(batch already on the device; meta-learners: the adaptation call, ridge: its sums and "
                          "solve; bias: fold-in and prediction, numpy), divided by the users"}
    return json_ready({"settings": settings, "machine": _machine(), "methods": described, "stream": stream,
                       "drift": drifted, "seconds": time.perf_counter() - start})


def write_outputs(results: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """Writes ``stream.json`` and (with matplotlib) ``stream.png`` of :func:`stream_eval`'s results into ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STREAM_FILE
    path.write_text(json.dumps(json_ready(results), indent=2, allow_nan=False) + "\n")
    written = [path]
    from jaxmeta.plots import stream_curves

    figure = stream_curves(results["stream"])
    figure.savefig(folder / PLOT_FILE, dpi=120)
    return written + [folder / PLOT_FILE]


# ----------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``jaxmeta stream``."""
    parser.add_argument("--run", action="append", required=True, metavar="DIR",
                        help="a jaxmeta train --out folder (repeat it: one run per meta-learner, same data)")
    parser.add_argument("--out", required=True, help="folder for stream.json and stream.png")
    parser.add_argument("--ns", type=int, nargs="+", default=list(DEFAULT_NS),
                        help=f"ratings seen before each update, increasing (default: {' '.join(map(str, DEFAULT_NS))})")
    parser.add_argument("--horizon", type=int, default=DEFAULT_HORIZON,
                        help=f"next ratings predicted after each update (default: {DEFAULT_HORIZON})")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="readapt (from the meta-learned initialisation on all ratings seen) and/or incremental "
                             "(from the user's last fast weights on the new ratings) (default: both)")
    parser.add_argument("--users", default="test", choices=USER_SETS,
                        help="the run's new users (test), or every user it neither trained nor validated on (unseen)")
    parser.add_argument("--windows", type=int, nargs="+", default=list(DEFAULT_WINDOWS),
                        help="drift case: the recent windows (ratings) against the whole history (default: 10 20)")
    parser.add_argument("--drift-days", type=float, default=DRIFT_DAYS,
                        help=f"drift case: days from the history's median time to the last ratings (default: "
                             f"{DRIFT_DAYS:g})")
    parser.add_argument("--drift-min-history", type=int, default=DRIFT_MIN_HISTORY,
                        help=f"drift case: fewest ratings before the last ones (default: {DRIFT_MIN_HISTORY})")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"timed calls per update (default: {REPEATS})")
    parser.add_argument("--checkpoint", default="best", help="'best' (validation MAE), 'latest' or a step")
    parser.add_argument("--data-dir", help="where the runs' data are now, when they moved")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    """``jaxmeta stream``: writes ``stream.json`` and ``stream.png`` into ``--out`` and prints the table."""
    results = stream_eval(args.run, ns=args.ns, horizon=args.horizon, modes=args.modes, windows=args.windows,
                          drift_days=args.drift_days, drift_min_history=args.drift_min_history, users=args.users,
                          which=args.checkpoint, data_dir=args.data_dir, repeats=args.repeats,
                          progress=not args.quiet)
    written = write_outputs(results, args.out)
    print(format_table(results))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def format_table(results: dict[str, Any], metric: str = "mae") -> str:
    """A Markdown table of ``metric`` against ratings seen: one row per method and mode, one column per n;
    then the users of each n and the median ms per user-update."""
    stream = results["stream"]
    ns = [int(n) for n in stream["users"]]
    lines = [f"| {metric} after n seen | " + " | ".join(f"n={n}" for n in ns) + " |",
             "|---|" + "---:|" * len(ns), "| users | " + " | ".join(str(stream["users"][n]) for n in stream["users"])
             + " |"]
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for row in stream["rows"]:
        cells.setdefault((row["method"], row["mode"]), {})[int(row["n"])] = row
    for (method, mode), by_n in cells.items():
        shown = [f"{by_n[n][metric]:.4f}" if by_n.get(n, {}).get(metric) is not None else "–" for n in ns]
        lines.append(f"| {method} ({mode}) | " + " | ".join(shown) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    _parser = argparse.ArgumentParser(prog="python -m jaxmeta.stream", description=__doc__.split("\n\n")[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
