"""The cold-start protocol: per-user tasks for warm and new users and items.

Every user is a task: a support set of ratings (what the model adapts on) and a
query set (what it is judged on). Following MeLU, only users with 13 to 100
ratings in a scenario are kept, 10 of their ratings, drawn uniformly at random,
are the query set and the rest the support set.

Scenarios, as MeLU's states: ``warm`` (existing users rating existing items; the
meta-training data), ``user_cold`` (new users, existing items), ``item_cold``
(existing users, new items) and ``user_item_cold`` (new users, new items).

Three layers, each usable alone:

1. *Scenario ratings*, a ``{name: ratings DataFrame}`` mapping:
   :func:`melu_scenarios` (MeLU's published states), :func:`cold_start_scenarios`
   (computed from raw ratings: cold items by release year or first-rating time,
   cold users by first-rating time or at random) and :func:`recbole_user_split`
   (RecBole-MetaRec's user split: ``train``/``valid``/``test``, all new users to
   one another).
2. *Task tables*: :func:`select_queries` keeps the users with 13-100 ratings
   and marks the query rows (column ``query``); :func:`split_tables` does so for
   every scenario of a mapping.
3. *Tasks*: :func:`build_tasks` encodes a task table with a
   :class:`~jaxmeta.data.features.FeatureEncoder` into a
   :class:`~jaxmeta.tasks.RaggedTasks`; :func:`split_tasks` maps it over tables.

:mod:`jaxmeta.data.datasets` chains the three, once per source, into the
:class:`~jaxmeta.data.datasets.Dataset` every command uses. Task ``i`` of a
scenario is user ``pd.unique(table["user"])[i]`` of its task table.

How the query items are chosen: MeLU's generator (``data_generation.py``)
shuffles each user's rating indices with Python's unseeded ``random.shuffle`` and
takes the last 10 as the query set, the rest as support; RecBole-MetaRec's
``MetaDataLoader`` draws ``np.random.choice(n, n, replace=False)`` and likewise
takes the last 10. Both are a uniform random subset of 10; here it is drawn from
the numpy Generator passed in (or seeded from the int passed), so a split is
reproducible, though not the very subsets of those unseeded runs.

Every random choice takes ``rng``: an int seed or a ``numpy.random.Generator``.
Where a function makes several independent choices it spawns one child
generator per choice, as its docstring says.

References:
  H. Lee, J. Im, S. Jang, H. Cho and S. Chung. MeLU: Meta-Learned User Preference
  Estimator for Cold-Start Recommendation. KDD 2019.
  Z. Zhang et al. RecBole-MetaRec (github.com/nuster1128/RecBole-MetaRec): the
  user split ``eval_args: {group_by: task, order: RO, split: {RS: [0.8, 0.1, 0.1]}}``
  with ``user_inter_num_interval: [13, 100]`` and ``meta_args: {query_num: 10}``.
"""

from __future__ import annotations

import numbers
import os
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from jaxmeta.data.features import FeatureEncoder
from jaxmeta.data.interactions import naive_utc
from jaxmeta._checks import columns as _columns
from jaxmeta._checks import fraction as _fraction
from jaxmeta._checks import positive_int
from jaxmeta._checks import shown as _shown
from jaxmeta.data.movielens import load_melu_state
from jaxmeta.tasks import RaggedTasks

SCENARIOS = ("warm", "user_cold", "item_cold", "user_item_cold")
MELU_STATE_OF = {
    "warm": "warm_state",
    "user_cold": "user_cold_state",
    "item_cold": "item_cold_state",
    "user_item_cold": "user_and_item_cold_state",
}
RECBOLE_PARTS = ("train", "valid", "test")
QUERY_SIZE = 10
MIN_RATINGS = 13
MAX_RATINGS = 100

__all__ = (
    "MAX_RATINGS",
    "MELU_STATE_OF",
    "MIN_RATINGS",
    "QUERY_SIZE",
    "RECBOLE_PARTS",
    "SCENARIOS",
    "build_tasks",
    "cold_start_scenarios",
    "hold_out_items",
    "hold_out_users",
    "melu_scenarios",
    "recbole_user_split",
    "select_queries",
    "split_tables",
    "split_tasks",
)

Rng = int | np.random.Generator


def _generator(rng: Rng | None, what: str) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise TypeError(
        f"{what}: rng={rng!r}; pass an int seed >= 0 or a numpy Generator (np.random.default_rng(seed)), "
        "so that the split can be reproduced."
    )


def check_sizes(query_size: int, min_ratings: int, max_ratings: int) -> None:
    """Checks a task table's sizes: whole numbers with room for a support rating."""
    for name, value in (("query_size", query_size), ("min_ratings", min_ratings), ("max_ratings", max_ratings)):
        positive_int(name, value)
    if min_ratings <= query_size:
        raise ValueError(
            f"min_ratings={min_ratings} with query_size={query_size} would leave users without a support rating: "
            f"pass min_ratings >= {query_size + 1}."
        )
    if max_ratings < min_ratings:
        raise ValueError(f"max_ratings={max_ratings} < min_ratings={min_ratings}: pass max_ratings >= min_ratings.")


# ----------------------------------------------------------------------------- task tables


def _held_rows(frame: pd.DataFrame, column: str, fraction: float, rng: np.random.Generator) -> pd.Series:
    """The rows of a random ``fraction`` (at least one) of the distinct values of ``column``."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction!r}: pass a fraction strictly between 0 and 1.")
    values = np.unique(frame[column].to_numpy())
    return frame[column].isin(rng.choice(values, size=max(1, round(fraction * len(values))), replace=False))


def hold_out_users(
    scenarios: Mapping[str, pd.DataFrame], fraction: float, *, rng: Rng
) -> dict[str, pd.DataFrame]:
    """Moves a random ``fraction`` of the ``"warm"`` users (at least one) to a new ``"valid"`` scenario.

    The validation users' ratings leave ``warm``, so they never train; the
    other scenarios are kept as they are. Returns ``{"warm", "valid", *others}``.

    Example:
      >>> warm = pd.DataFrame({"user": [1, 1, 2, 3], "item": [5, 6, 5, 7], "rating": [4.0, 3.0, 5.0, 1.0]})
      >>> out = hold_out_users({"warm": warm}, 0.3, rng=np.random.default_rng(0))
      >>> list(out), len(out["warm"]) + len(out["valid"]), out["valid"]["user"].nunique()
      (['warm', 'valid'], 4, 1)
    """
    if "valid" in scenarios:
        raise ValueError("scenarios already hold 'valid'; hold users out once.")
    chosen = _held_rows(scenarios["warm"], "user", fraction, _generator(rng, "hold_out_users"))
    warm = scenarios["warm"]
    return {"warm": warm[~chosen], "valid": warm[chosen], **{s: f for s, f in scenarios.items() if s != "warm"}}


def hold_out_items(
    scenarios: Mapping[str, pd.DataFrame], fraction: float, *, rng: Rng
) -> dict[str, pd.DataFrame]:
    """Moves the rows of a random ``fraction`` of the ``"warm"`` items (at least one) to ``"valid_items"``.

    The validation set of new items, for choosing the checkpoint scored on the
    item-cold scenarios: the held-out items' ratings leave ``warm``, so no model
    trains on them and vocabularies fitted on ``warm`` do not know them, as a
    new item is unknown. The other scenarios are kept as they are. Returns
    ``{"warm", *others, "valid_items"}``.

    Example:
      >>> warm = pd.DataFrame({"user": [1, 1, 2, 3], "item": [5, 6, 5, 7], "rating": [4.0, 3.0, 5.0, 1.0]})
      >>> out = hold_out_items({"warm": warm}, 0.3, rng=np.random.default_rng(0))
      >>> list(out), len(out["warm"]) + len(out["valid_items"]), out["valid_items"]["item"].nunique()
      (['warm', 'valid_items'], 4, 1)
    """
    if "valid_items" in scenarios:
        raise ValueError("scenarios already hold 'valid_items'; hold items out once.")
    chosen = _held_rows(scenarios["warm"], "item", fraction, _generator(rng, "hold_out_items"))
    warm = scenarios["warm"]
    return {"warm": warm[~chosen], **{s: f for s, f in scenarios.items() if s != "warm"}, "valid_items": warm[chosen]}


def select_queries(
    ratings: pd.DataFrame,
    *,
    rng: Rng,
    query_size: int = QUERY_SIZE,
    min_ratings: int = MIN_RATINGS,
    max_ratings: int = MAX_RATINGS,
) -> pd.DataFrame:
    """Keeps the users with ``min_ratings``..``max_ratings`` ratings and picks their query rows.

    A user's query rows are a uniform random subset of ``query_size`` of their
    rows (as MeLU's generator and RecBole-MetaRec draw them), the rest is support.
    Repeated (user, item) rows count as separate ratings, as in MeLU's states.

    Args:
      ratings: ``user``, ``item``, ``rating`` and any other columns (kept).
      rng: an int seed or a numpy Generator (one uniform draw per kept row).
      query_size: query rows per user (MeLU: 10).
      min_ratings, max_ratings: the inclusive range of a kept user's number of
        rows (MeLU: 13 and 100).

    Returns:
      The kept rows with a bool column ``query`` and a fresh index, grouped by
      user (users in order of first appearance in ``ratings``), each user's
      support rows first then query rows, each part in the order of ``ratings``.

    Example:
      >>> import pandas as pd
      >>> ratings = pd.DataFrame({"user": [1] * 13 + [2] * 5, "item": range(18), "rating": 4.0})
      >>> table = select_queries(ratings, rng=0)
      >>> table["user"].unique().tolist(), int(table["query"].sum()), len(table)
      ([1], 10, 13)
    """
    _columns(ratings, ("user", "item", "rating"), "ratings")
    if "query" in ratings.columns:
        raise ValueError("ratings already has a 'query' column: pass the ratings, not a task table.")
    check_sizes(query_size, min_ratings, max_ratings)
    generator = _generator(rng, "select_queries")
    for column in ("user", "item"):
        if ratings[column].isna().any():
            raise ValueError(f"ratings has a missing {column} id; drop or fill those rows first.")
    frame = ratings.reset_index(drop=True)
    users, _ = pd.factorize(frame["user"])
    counts = np.bincount(users) if len(users) else np.zeros(0, np.int64)
    keep = (counts[users] >= min_ratings) & (counts[users] <= max_ratings)
    frame = frame[keep].reset_index(drop=True)
    users, _ = pd.factorize(frame["user"])
    n = len(frame)
    key = generator.random(n)
    order = np.lexsort((key, users))  # by user, then by the random key
    counts = np.bincount(users) if n else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, np.int64)  # 0-based rank of each row's key within its user
    rank[order] = np.arange(n) - starts[users[order]]
    query = rank >= counts[users] - query_size  # the query_size largest keys
    frame["query"] = query
    return frame.iloc[np.lexsort((np.arange(n), query, users))].reset_index(drop=True)


def split_tables(
    scenarios: Mapping[str, pd.DataFrame],
    *,
    rng: Rng,
    query_size: int = QUERY_SIZE,
    min_ratings: int = MIN_RATINGS,
    max_ratings: int = MAX_RATINGS,
) -> dict[str, pd.DataFrame]:
    """:func:`select_queries` on every scenario.

    One integer ``s`` is drawn from ``rng`` (``rng`` an int seed: from
    ``np.random.default_rng(seed)``); the scenario called ``name`` then draws from
    ``np.random.default_rng([s, zlib.crc32(name.encode())])``. So scenarios are
    drawn independently, and a scenario's query rows do not depend on which
    other scenarios are in the mapping (the cold states alone get the same
    queries as with the warm one).

    Returns:
      ``{name: task table}``, in the mapping's order.
    """
    if not isinstance(scenarios, Mapping) or not scenarios:
        raise ValueError("scenarios must be a non-empty mapping {name: ratings DataFrame}.")
    root = int(_generator(rng, "split_tables").integers(2**63))
    return {
        name: select_queries(frame, rng=np.random.default_rng([root, zlib.crc32(str(name).encode())]),
                             query_size=query_size, min_ratings=min_ratings, max_ratings=max_ratings)
        for name, frame in scenarios.items()
    }


def build_tasks(table: pd.DataFrame, encoder: FeatureEncoder, *, dtype: np.dtype = np.float32) -> RaggedTasks:
    """Encodes a task table into per-user support and query sets.

    Args:
      table: from :func:`select_queries` (grouped by user, support rows first).
      encoder: encodes the (user, item) pairs; it must hold a row for every user
        and item of the table.
      dtype: dtype of the targets (the ratings).

    Returns:
      One task per user, in order of first appearance in ``table``: ``*_x`` the
      encoder's dict (views into one encoded array per field), ``*_y`` the ratings.
      An empty table (no user kept) gives no tasks.

    Raises:
      ValueError: ``table`` has no ``query`` column or is not grouped as
        :func:`select_queries` leaves it, or a user has no support or query row.
    """
    _columns(table, ("user", "item", "rating", "query"), "table", "Pass a task table made by select_queries.")
    if len(table) == 0:  # no user with an allowed number of ratings: a scenario without tasks
        return RaggedTasks([], [], [], [])
    users, uniques = pd.factorize(table["user"])
    query = table["query"].to_numpy(dtype=bool)
    # grouped means: users never decrease, and within a user query never goes back to support
    step = np.diff(users)
    back = (step < 0) | (step > 1) | ((step == 0) & (np.diff(query.astype(np.int8)) < 0))
    if back.any():
        at = int(np.flatnonzero(back)[0]) + 1
        raise ValueError(
            f"the task table is not grouped by user with support rows first (row {at}, user "
            f"{_shown(table['user'].iloc[at])}): pass the table as select_queries returns it."
        )
    counts = np.bincount(users)
    queries = np.bincount(users, weights=query).astype(np.int64)
    for what, bad in (("support", queries == counts), ("query", queries == 0)):
        if bad.any():
            user = uniques[int(np.flatnonzero(bad)[0])]
            raise ValueError(f"user {_shown(user)} has no {what} row; every task needs both.")
    x = encoder.encode(table)
    y = table["rating"].to_numpy(dtype=dtype)
    if not np.all(np.isfinite(y)):
        at = int(np.flatnonzero(~np.isfinite(y))[0])
        user, item, rating = table["user"].iloc[at], table["item"].iloc[at], float(table["rating"].iloc[at])
        raise ValueError(f"the rating of user {_shown(user)}, item {_shown(item)} (row {at}) is {rating!r}, not a "
                         "finite number: drop or fill it first.")
    ends = np.cumsum(counts)
    starts, middles = ends - counts, ends - queries
    part = lambda a, b: {name: leaf[a:b] for name, leaf in x.items()}  # noqa: E731
    return RaggedTasks(
        support_x=[part(a, m) for a, m in zip(starts, middles)],
        support_y=[y[a:m] for a, m in zip(starts, middles)],
        query_x=[part(m, b) for m, b in zip(middles, ends)],
        query_y=[y[m:b] for m, b in zip(middles, ends)],
    )


def split_tasks(tables: Mapping[str, pd.DataFrame], encoder: FeatureEncoder) -> dict[str, RaggedTasks]:
    """:func:`build_tasks` on every task table: ``{name: RaggedTasks}``."""
    return {name: build_tasks(table, encoder) for name, table in tables.items()}


# ----------------------------------------------------------------------------- scenarios


def melu_scenarios(
    directory: str | os.PathLike,
    *,
    ratings: pd.DataFrame | None = None,
    scenarios: Sequence[str] = SCENARIOS,
) -> dict[str, pd.DataFrame]:
    """MeLU's published states as scenario ratings.

    Args:
      directory: the folder of MeLU's ``{state}.json`` and ``{state}_y.json``.
      ratings: every rating of MeLU's split (``ratings_no_timestamp.dat`` read
        with ``duplicates="keep"``), to rebuild ``warm_state.json`` where it is
        absent (see :func:`jaxmeta.data.movielens.reconstruct_melu_warm_state`).
      scenarios: which of :data:`SCENARIOS` to read, e.g. only the cold ones.

    Returns:
      ``{scenario: user, item, rating}`` in :data:`SCENARIOS` order, rows as
      published (:data:`MELU_STATE_OF` names the state of each scenario).
    """
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or isinstance(scenarios, str) or not scenarios:
        raise ValueError(f"scenarios={scenarios!r}: pass a non-empty list drawn from {SCENARIOS}.")
    return {s: load_melu_state(directory, MELU_STATE_OF[s], ratings=ratings) for s in SCENARIOS if s in scenarios}


def _first_times(ratings: pd.DataFrame, key: str) -> pd.Series:
    times = ratings["timestamp"]
    if not (pd.api.types.is_numeric_dtype(times) or pd.api.types.is_datetime64_any_dtype(times)):
        raise ValueError(f"column 'timestamp' has dtype {times.dtype}: pass Unix times or datetimes.")
    if times.isna().any():
        raise ValueError("column 'timestamp' has missing values: every rating needs a time for a time-based split.")
    return ratings.groupby(key, sort=True)["timestamp"].min()


def _given_ids(ids: Iterable, frame: pd.DataFrame, column: str, name: str) -> set:
    """``ids`` as a set, refused when none of them occurs in ``frame[column]`` (ids of another type, say)."""
    given = set(ids)
    if given and not frame[column].isin(given).any():
        example = _shown(next(iter(given)))
        raise ValueError(f"{name}: none of the {len(given)} id(s) given (e.g. {example}) occurs in the ratings' "
                         f"{column!r} column (dtype {frame[column].dtype}): pass ids of that column, of its type.")
    return given


def _late(first: pd.Series, quantile: float) -> set:
    """Ids whose first rating is after the ``quantile`` of all first-rating times."""
    values = naive_utc(first).to_numpy()
    if np.issubdtype(values.dtype, np.datetime64):
        values = values.astype("datetime64[ns]").astype(np.int64)
    as_numbers = values
    threshold = np.quantile(as_numbers.astype(np.float64), quantile)
    return set(first.index[as_numbers > threshold])


def _item_years(ratings: pd.DataFrame, items: pd.DataFrame | None, year_column: str) -> pd.Series:
    if items is None:
        raise ValueError("cold_items='year' needs the item table: pass items= with an 'item' and a year column.")
    _columns(items, ("item", year_column), "items", "Pass year_column= naming the release-year column.")
    years = items.set_index("item")[year_column]
    if pd.api.types.is_datetime64_any_dtype(years):
        years = years.dt.year
    rated = pd.Index(pd.unique(ratings["item"]))
    unknown = rated.difference(years.index)
    if len(unknown):
        raise ValueError(
            f"{len(unknown)} rated item(s) have no row in items, e.g. {unknown[:5].tolist()}: pass an item table "
            "covering every rated item."
        )
    years = pd.to_numeric(years.loc[rated], errors="coerce")
    if years.isna().any():
        missing = years.index[years.isna()].tolist()
        raise ValueError(
            f"{len(missing)} rated item(s) have no {year_column!r}, e.g. {missing[:5]}: drop their ratings, or "
            "split items by time with cold_items='first_rating'."
        )
    return years


def cold_start_scenarios(
    ratings: pd.DataFrame,
    *,
    items: pd.DataFrame | None = None,
    cold_items: str | Collection = "year",
    year_threshold: int | None = None,
    item_quantile: float | None = None,
    year_column: str = "year",
    cold_users: str | Collection = "random",
    cold_user_fraction: float | None = None,
    user_quantile: float | None = None,
    rng: Rng | None = None,
) -> dict[str, pd.DataFrame]:
    """Splits raw ratings into the 2 x 2 scenarios of (warm/cold user) x (warm/cold item).

    Users and items are divided once, over every rating; then ``warm`` holds
    the warm users' ratings of warm items, ``user_cold`` the cold users' ratings
    of warm items, ``item_cold`` the warm users' ratings of cold items and
    ``user_item_cold`` the cold users' ratings of cold items. So the scenarios
    partition the ratings, and cold users (items) never appear among warm ones.

    Args:
      ratings: ``user``, ``item``, ``rating``, and ``timestamp`` for the
        time-based options.
      items: the item table, for ``cold_items="year"``: ``item`` and
        ``year_column`` (a year, or datetimes whose year is taken).
      cold_items: ``"year"``: items released in ``year_threshold`` or later are
        cold (default 1998: MeLU's new items were released 1998-2000);
        ``"first_rating"``: items whose first rating comes after the
        ``item_quantile`` of all items' first-rating times are cold (default
        0.8, about the latest 20%); or a collection of the cold item ids.
      year_threshold, item_quantile: see ``cold_items``; passing the one that
        does not apply is an error.
      year_column: the release-year column of ``items``.
      cold_users: ``"random"``: ``round(cold_user_fraction * users)`` users
        drawn without replacement from ``rng`` (default fraction 0.2, MeLU's
        80/20); ``"first_rating"``: users whose first rating comes after the
        ``user_quantile`` of all users' first-rating times (default 0.8); or a
        collection of the cold user ids.
      cold_user_fraction, user_quantile: see ``cold_users``.
      rng: an int seed or numpy Generator, needed by ``cold_users="random"``
        only (it permutes the sorted user ids).

    Returns:
      ``{scenario: ratings}`` in :data:`SCENARIOS` order; each keeps the columns
      and the order of ``ratings`` (fresh index). Users are not filtered here:
      :func:`split_tables` keeps those with 13-100 ratings in each scenario.

    Example:
      >>> import pandas as pd
      >>> ratings = pd.DataFrame({"user": [1, 1, 2, 2], "item": [10, 20, 10, 20], "rating": 3.0})
      >>> items = pd.DataFrame({"item": [10, 20], "year": [1995, 1999]})
      >>> parts = cold_start_scenarios(ratings, items=items, cold_users=[2])
      >>> {name: list(zip(p["user"], p["item"])) for name, p in parts.items()}
      {'warm': [(1, 10)], 'user_cold': [(2, 10)], 'item_cold': [(1, 20)], 'user_item_cold': [(2, 20)]}
    """
    _columns(ratings, ("user", "item", "rating"), "ratings")
    frame = ratings.reset_index(drop=True)
    needs_time = [what for what, how in (("cold_items", cold_items), ("cold_users", cold_users)) if
                  isinstance(how, str) and how == "first_rating"]
    if needs_time and "timestamp" not in frame.columns:
        raise ValueError(
            f"{' and '.join(f'{w}=first_rating' for w in needs_time)} needs a 'timestamp' column in ratings "
            f"(available: {list(frame.columns)}); pass timed ratings, or cold_items='year' / cold_users='random'."
        )

    def not_for(name, value, mode):
        if value is not None:
            raise ValueError(f"{name}={value!r} does not apply with {mode}; leave it out.")

    # items
    if isinstance(cold_items, str):
        if cold_items == "year":
            not_for("item_quantile", item_quantile, "cold_items='year'")
            threshold = 1998 if year_threshold is None else year_threshold
            if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
                raise ValueError(f"year_threshold={year_threshold!r}: pass a year such as 1998.")
            years = _item_years(frame, items, year_column)
            cold_item_ids = set(years.index[years >= threshold])
        elif cold_items == "first_rating":
            not_for("year_threshold", year_threshold, "cold_items='first_rating'")
            q = _fraction("item_quantile", 0.8 if item_quantile is None else item_quantile)
            cold_item_ids = _late(_first_times(frame, "item"), q)
        else:
            raise ValueError(f"cold_items={cold_items!r}: pass 'year', 'first_rating' or a collection of item ids.")
    else:
        for name, value in (("year_threshold", year_threshold), ("item_quantile", item_quantile)):
            not_for(name, value, "cold_items given as ids")
        cold_item_ids = _given_ids(cold_items, frame, "item", "cold_items")

    # users
    if isinstance(cold_users, str):
        if cold_users == "random":
            not_for("user_quantile", user_quantile, "cold_users='random'")
            if rng is None:
                raise ValueError(
                    "cold_users='random' draws the cold users at random: pass rng=<int seed or Generator>."
                )
            fraction = _fraction("cold_user_fraction", 0.2 if cold_user_fraction is None else cold_user_fraction)
            every = np.sort(pd.unique(frame["user"]))
            drawn = _generator(rng, "cold_start_scenarios").permutation(every)
            cold_user_ids = set(drawn[: int(round(fraction * len(every)))].tolist())
        elif cold_users == "first_rating":
            not_for("cold_user_fraction", cold_user_fraction, "cold_users='first_rating'")
            q = _fraction("user_quantile", 0.8 if user_quantile is None else user_quantile)
            cold_user_ids = _late(_first_times(frame, "user"), q)
        else:
            raise ValueError(f"cold_users={cold_users!r}: pass 'random', 'first_rating' or a collection of user ids.")
        if cold_users != "random" and rng is not None:
            raise ValueError(f"rng is used by cold_users='random' only; leave it out with cold_users={cold_users!r}.")
    else:
        for name, value in (("cold_user_fraction", cold_user_fraction), ("user_quantile", user_quantile), ("rng", rng)):
            not_for(name, value, "cold_users given as ids")
        cold_user_ids = _given_ids(cold_users, frame, "user", "cold_users")

    user_is_cold = frame["user"].isin(cold_user_ids).to_numpy()
    item_is_cold = frame["item"].isin(cold_item_ids).to_numpy()
    masks = {
        "warm": ~user_is_cold & ~item_is_cold,
        "user_cold": user_is_cold & ~item_is_cold,
        "item_cold": ~user_is_cold & item_is_cold,
        "user_item_cold": user_is_cold & item_is_cold,
    }
    return {name: frame[mask].reset_index(drop=True) for name, mask in masks.items()}


def recbole_user_split(
    ratings: pd.DataFrame,
    *,
    rng: Rng,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    min_ratings: int = MIN_RATINGS,
    max_ratings: int = MAX_RATINGS,
) -> dict[str, pd.DataFrame]:
    """RecBole-MetaRec's user split: disjoint groups of users, 8:1:1 by default.

    As RecBole does: users with ``min_ratings``..``max_ratings`` ratings are kept
    first (``user_inter_num_interval: [13, 100]``), then shuffled, then cut into
    consecutive groups; every group but the first gets ``int(ratio * users)``
    users and the first the rest (RecBole's ``_calcu_split_ids``). RecBole
    shuffles with its global seed; here the shuffle is a permutation of the
    sorted user ids drawn from ``rng``.

    Args:
      ratings: ``user``, ``item``, ``rating`` (e.g. MovieLens-100K's ``u.data``).
      rng: an int seed or numpy Generator.
      ratios: the share of users of ``train``, ``valid``, ``test``
        (normalised to sum to 1).
      min_ratings, max_ratings: the inclusive range of a kept user's ratings.

    Returns:
      ``{"train", "valid", "test": ratings}``, each the rows of its users in
      the order of ``ratings``.
    """
    _columns(ratings, ("user", "item", "rating"), "ratings")
    ratios = tuple(ratios)
    if len(ratios) != len(RECBOLE_PARTS) or any(
        isinstance(r, bool) or not isinstance(r, numbers.Real) or r <= 0 for r in ratios
    ):
        raise ValueError(f"ratios={ratios!r}: pass {len(RECBOLE_PARTS)} positive shares for {RECBOLE_PARTS}.")
    if min_ratings > max_ratings:
        raise ValueError(f"max_ratings={max_ratings} < min_ratings={min_ratings}: pass max_ratings >= min_ratings.")
    frame = ratings.reset_index(drop=True)
    counts = frame.groupby("user")["user"].transform("size")
    frame = frame[counts.between(min_ratings, max_ratings)].reset_index(drop=True)
    users = _generator(rng, "recbole_user_split").permutation(np.sort(pd.unique(frame["user"])))
    total = sum(ratios)
    sizes = [int(r / total * len(users)) for r in ratios]
    sizes[0] = len(users) - sum(sizes[1:])
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return {
        name: frame[frame["user"].isin(users[a:b])].reset_index(drop=True)
        for name, a, b in zip(RECBOLE_PARTS, bounds[:-1], bounds[1:])
    }
