"""One entry per data source, one dataset type: what every command trains and scores on.

:func:`load` (or the entry of one source: :func:`synthetic`, :func:`movielens`,
:func:`table`) reads a source, splits it by the cold-start protocol
(:mod:`jaxmeta.data.splits`), fits the feature encoder and returns a
:class:`Dataset`: the meta-training users, the named validation sets, the
evaluation scenarios, the training users' ratings (the simple baselines' data)
and the fitted encoder. ``jaxmeta train``, ``jaxmeta reproduce``, serving, the
examples and the tests all start here; no driver module builds data itself.

Sources:

* ``"synthetic"``: the built-in data (:mod:`jaxmeta.data.synthetic`): integer ids,
  no encoder; 10% of its training users validate; scenario ``user_cold``.
* ``"ml-1m"``: MeLU's published split (:func:`jaxmeta.data.splits.melu_scenarios`),
  MeLU's 8 fields (:func:`jaxmeta.data.features.melu_encoder`); meta-training on
  the ``warm`` users less a seeded 10% that validate; the four scenarios.
* ``"ml-100k"``: RecBole-MetaRec's user split (8:1:1,
  :func:`jaxmeta.data.splits.recbole_user_split`) with the fields ML-100K has;
  ``valid`` validates, ``test`` is the scenario ``user_cold``.
* ``"table"``: any ratings table (CSV or Parquet with ``user``, ``item``,
  ``rating`` and an optional ``timestamp``): the four scenarios computed from it
  (:func:`jaxmeta.data.splits.cold_start_scenarios`), the item id its one feature.

Every dataset carries its rating scale (:class:`jaxmeta.data.scale.RatingScale`):
the synthetic ratings' least and greatest; on MovieLens and tables, inferred from
the ratings (:func:`jaxmeta.data.scale.infer_scale`, 1–5 on MovieLens), or given
as ``rating_scale=(low, high)``. A table's rating outside it (a 1e9 among 1–5
stars, a -1 in a non-negative table), or not a finite number, is an error
naming the file and line, before anything trains on it.

Every task's inputs carry the raw item id under :data:`jaxmeta.evaluation.ITEM_KEY`
where the items have integer ids (MF and the per-item baselines read it; other
models ignore it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from jaxmeta._checks import fraction
from jaxmeta.data import interactions, scale, splits, text_features
from jaxmeta.data import movielens as ml
from jaxmeta.data import synthetic as synthetic_data
from jaxmeta.data.features import FeatureEncoder, melu_encoder
from jaxmeta.data.scale import RatingScale
from jaxmeta.evaluation import with_item_ids
from jaxmeta.tasks import RaggedTasks

SOURCES = ("synthetic", "ml-100k", "ml-1m", "table")
MOVIELENS = ("ml-1m", "ml-100k")
TEXT_FIELD = "text"  # the item field of text vectors (movielens(text=...))
DEFAULT_TEXT_CACHE = "~/.cache/jaxmeta/text"
VALID_FRACTION = 0.1
ITEM_SCENARIOS = ("item_cold", "user_item_cold")
"""The scenarios scored with the checkpoints chosen on held-out items, when a dataset has them."""

__all__ = ("ITEM_SCENARIOS", "MOVIELENS", "SOURCES", "Dataset", "frequent_items", "load", "movielens", "synthetic",
           "table")


class Dataset(NamedTuple):
    """A data source split by the cold-start protocol, ready to train and score on."""

    name: str  # the source: one of SOURCES
    split: str  # how it was split (written to results)
    train: RaggedTasks  # the meta-training users
    valid: dict[str, RaggedTasks]  # named validation sets: "users" (held-out training-side users), "new_items"
    scenarios: dict[str, RaggedTasks]  # {scenario: users to evaluate}
    encoder: FeatureEncoder | None  # the fitted feature encoder; None for the synthetic ids
    warm_ratings: pd.DataFrame | None  # user, item, rating of the training users; None for the synthetic data
    mean_rating: float  # the mean training rating (a model's initial output bias)
    vocab_sizes: tuple[int, ...] = ()  # the synthetic data's id counts per field (empty for featured data)
    rating_scale: RatingScale | None = None  # the ratings' inclusive (low, high), inferred or given

    def valid_for(self, scenario: str) -> str:
        """The validation set whose choice of checkpoint scores ``scenario``: ``"new_items"`` for the
        item-cold scenarios when the dataset holds items out, ``"users"`` otherwise."""
        return "new_items" if scenario in ITEM_SCENARIOS and "new_items" in self.valid else "users"


def synthetic(*, seed: int = 0, valid_fraction: float = VALID_FRACTION,
              rating_scale: tuple[float, float] | None = None, **sizes: Any) -> Dataset:
    """The built-in synthetic data: a seeded ``valid_fraction`` of its training users validate.

    ``sizes``: keyword arguments of :func:`jaxmeta.data.synthetic.generate` (user and item counts).
    The rating scale is the least and greatest rating, or ``rating_scale`` when
    given, which must then hold every rating.

    Example:
      >>> data = synthetic(num_train_users=50, num_new_users=5)
      >>> len(data.train), len(data.valid["users"]), list(data.scenarios), data.encoder
      (45, 5, ['user_cold'], None)
      >>> data.rating_scale.low < data.mean_rating < data.rating_scale.high
      True
    """
    fraction("valid_fraction", valid_fraction)
    given = scale.as_scale(rating_scale)
    data = synthetic_data.generate(seed=seed, **sizes)
    every = np.concatenate([*data.train.support_y, *data.train.query_y, *data.new.support_y, *data.new.query_y])
    # no fences: the generator's normal noise has tails, and no row of it is broken
    found = RatingScale(float(every.min()), float(every.max())) if given is None else (
        scale.check_ratings(every, given, what="the synthetic data"))
    order = np.random.default_rng(seed).permutation(len(data.train))
    held = max(1, round(valid_fraction * len(order)))
    return Dataset("synthetic", "synthetic users (seeded 10% validate)", data.train.take(order[held:]),
                   {"users": data.train.take(order[:held])}, {"user_cold": data.new}, None, None,
                   data.mean_rating, tuple(data.vocab_sizes), found)


def _folder(data_dir: str | os.PathLike, dataset: str) -> Path:
    root = Path(data_dir).expanduser()
    return root / dataset if (root / dataset).is_dir() else root


def _fit_encoder(fit: Callable[..., FeatureEncoder], users: pd.DataFrame | None, items: pd.DataFrame,
                 train: pd.DataFrame, vocab: str) -> FeatureEncoder:
    """``fit(users, items, max_values=...)`` on every row (``vocab="all"``) or on the
    training users and the items they rated only (``"train"``), looking all rows up.
    The slots of a multi-valued field are a shape, not a vocabulary: they are sized on
    every item, so that an item no training user rated still fits."""
    everything = fit(users, items)
    if vocab == "all":
        return everything
    widths = {f.name: f.max_values for f in everything.spec if f.kind == "multi"}
    seen_users = None if users is None else users[users["user"].isin(train["user"])]
    seen = fit(seen_users, items[items["item"].isin(train["item"])], max_values=widths)
    return seen.with_tables(users, items)


def _with_text(items: pd.DataFrame, described: pd.DataFrame, model: str | os.PathLike,
               cache: str | os.PathLike | None, tokens: int | None) -> pd.DataFrame:
    """``items`` with the column :data:`TEXT_FIELD`: the vector of each item's text, made from ``described``
    (a table of the same items, with ``title`` and what else :func:`text_features.item_texts` reads)."""
    from jaxmeta.text import (
        load_encoder,  # the optional text extra: imported only when asked for
    )

    vectors = text_features.add_text_vectors(described, load_encoder(model, max_length=tokens), column=TEXT_FIELD,
                                             cache_dir=cache)
    return items.merge(vectors[["item", TEXT_FIELD]], on="item", how="left", validate="one_to_one")


def _tasks(tables: dict[str, pd.DataFrame], encoder: FeatureEncoder, ids: bool) -> dict[str, RaggedTasks]:
    """Every non-empty task table encoded, with the raw item ids when ``ids``."""
    out = {}
    for name, t in tables.items():
        if len(t):
            tasks = splits.build_tasks(t, encoder)
            out[name] = with_item_ids(tasks, t) if ids else tasks
    return out


def _assemble(name: str, split: str, tasks: dict[str, RaggedTasks], train: str, scenarios: dict[str, str],
              encoder: FeatureEncoder, warm: pd.DataFrame, where: str, rating_scale: RatingScale) -> Dataset:
    if train not in tasks or "valid" not in tasks:
        raise ValueError(f"{where}: too few users with {splits.MIN_RATINGS}-{splits.MAX_RATINGS} ratings "
                         "to train and validate on; pass a larger table.")
    valid = {"users": tasks["valid"]}
    if "valid_items" in tasks:
        valid["new_items"] = tasks["valid_items"]
    return Dataset(name, split, tasks[train], valid, {s: tasks[p] for s, p in scenarios.items() if p in tasks},
                   encoder, warm[["user", "item", "rating"]].reset_index(drop=True),
                   float(warm["rating"].mean()), (), rating_scale)


def frequent_items(data: Dataset, min_ratings: int) -> np.ndarray:
    """The items with at least ``min_ratings`` training ratings (``data.warm_ratings``): those that
    get an id row of their own in :func:`jaxmeta.models.hybrid_melu`."""
    counts = data.warm_ratings["item"].value_counts()
    return counts.index[counts >= min_ratings].to_numpy()


def movielens(
    name: str,
    data_dir: str | os.PathLike,
    *,
    seed: int = 0,
    item_field: bool = False,
    vocab: str = "train",
    min_count: int = 5,
    valid_fraction: float = VALID_FRACTION,
    text: str | os.PathLike | None = None,
    text_cache: str | os.PathLike | None = DEFAULT_TEXT_CACHE,
    text_tokens: int | None = text_features.DEFAULT_TOKENS,
    valid_items: float = 0.0,
    rating_scale: tuple[float, float] | None = None,
    keep_heavy: bool = False,
) -> Dataset:
    """Reads and splits ``name`` (``"ml-1m"`` or ``"ml-100k"``) from ``data_dir``.

    ``data_dir`` is the folder holding ``ml-1m/`` and ``ml-100k/`` (or the
    dataset's folder itself). ``seed`` draws the query items, the validation
    users (and, on ML-100K, the user split). ``item_field`` adds the item id as
    one more categorical item field (``"movie"``) on ML-100K, whose only item
    feature is otherwise its genres (ML-1M's MeLU fields are left as published).

    Vocabularies: ``vocab="train"`` (default) builds them from the training
    users and the items they rated, keeping values seen in at least
    ``min_count`` rows of those tables; every other value (a new user's zip
    code, a new movie's director, a rare actor) is the field's
    out-of-vocabulary bucket, which the rare training values teach. ``"all"``
    builds them from every user and item, as MeLU's code does: values seen only
    in cold users or items then keep untrained embeddings.

    Validation users, for model selection, never meta-train: on ML-1M a seeded
    ``valid_fraction`` of MeLU's warm users, on ML-100K RecBole's ``valid`` part.
    ML-1M only: ``valid_items`` > 0 also holds out that fraction of the warm
    items (:func:`jaxmeta.data.splits.hold_out_items`). Their ratings leave the
    training users and the vocabularies, and the warm users who rated them become
    the validation set ``"new_items"`` of the item-cold scenarios; 0 (the
    default) holds out none. ML-100K only: ``keep_heavy`` adds the users with more
    than :data:`~jaxmeta.data.splits.MAX_RATINGS` ratings, whom RecBole's split
    drops (361 users, 74% of the ratings), to the training users: their ratings
    join ``warm_ratings`` (what the classic baselines fit, and what
    :func:`jaxmeta.reproduce.heavy_tasks` deals into tasks) and the
    vocabularies; the validation and test users, and their tasks, are RecBole's
    as without it. Their histories are too long for a task, so ``train`` (the
    tasks) is unchanged.

    ``text``: a sentence encoder (:func:`jaxmeta.text.load_encoder`: a model
    folder, or the name of a packaged one such as ``"all-MiniLM-L6-v2"``) that
    encodes each item's text (:func:`jaxmeta.data.text_features.item_texts`)
    into one more item field, ``"text"``, a vector that MeLU projects with
    learned weights. Each text is cut at ``text_tokens`` tokens (None: at the
    model's own limit); its vectors are cached in ``text_cache`` (None: not cached).

    The rating scale is inferred from the training ratings (1–5), or is
    ``rating_scale=(low, high)`` when given, which must then hold every rating.
    """
    if name not in MOVIELENS:
        raise ValueError(f"name={name!r}: pass one of {MOVIELENS}.")
    if vocab not in ("train", "all"):
        raise ValueError(f"vocab={vocab!r}: pass 'train' (training users and items) or 'all'.")
    fraction("valid_fraction", valid_fraction)
    fraction("valid_items", valid_items, zero=True)
    given = scale.as_scale(rating_scale)
    if valid_items and name != "ml-1m":
        raise ValueError(f"valid_items={valid_items!r}: {name} has no item-cold scenario; pass 0.")
    if keep_heavy and name != "ml-100k":
        raise ValueError(f"keep_heavy=True: {name}'s split already keeps its heavy users among the warm ones; "
                         "pass keep_heavy=False.")
    folder = _folder(data_dir, name)
    # a third child for the items: the first two, and so the splits without held-out items, stay as they were
    split_rng, query_rng, item_rng = np.random.default_rng(seed).spawn(3)
    vector = [TEXT_FIELD] if text is not None else []
    if name == "ml-1m":
        ratings = ml.load_ml1m_ratings(folder, filename="ratings_no_timestamp.dat", duplicates="keep")
        frames = splits.hold_out_users(splits.melu_scenarios(folder / "melu_states", ratings=ratings),
                                       valid_fraction, rng=split_rng)
        if valid_items:
            frames = splits.hold_out_items(frames, valid_items, rng=item_rng)

        def fit(u, i, max_values=None):
            return melu_encoder(u, i, min_count=min_count, item_vector=vector, max_values=max_values)

        items = ml.load_melu_items(folder / "melu_extra")
        if text is not None:
            described = text_features.with_melu_metadata(ml.load_ml1m_items(folder), items)
            items = _with_text(items, described, text, text_cache, text_tokens)
        users, train, scenarios, split = ml.load_ml1m_users(folder), "warm", {s: s for s in splits.SCENARIOS}, "melu"
    else:
        ratings = ml.load_ml100k_ratings(folder)
        items = ml.load_ml100k_items(folder)
        items = items.assign(movie=items["item"]) if item_field else items
        if text is not None:
            items = _with_text(items, items, text, text_cache, text_tokens)
        frames = splits.recbole_user_split(ratings, rng=split_rng)
        if keep_heavy:  # after the split, so that the validation and test users are RecBole's
            counts = ratings.groupby("user")["user"].transform("size")
            frames["train"] = pd.concat([frames["train"], ratings[counts > splits.MAX_RATINGS]], ignore_index=True)

        def fit(u, i, max_values=None):
            return FeatureEncoder.fit(
                u, i, user_categorical=["gender", "occupation", "zip"], user_numeric=["age"], item_multi=["genres"],
                item_categorical=["movie"] if item_field else [], item_vector=vector,
                prefix={"zip": 3},  # a full 5-digit zip is nearly a user id: useless for a new user
                # counts are rows of the user and item tables: an id field has one row per value
                min_count={"gender": min_count, "occupation": min_count, "zip": min_count, "genres": min_count,
                           **({"movie": 1} if item_field else {})},
                max_values=max_values,
            )

        users, train, scenarios = ml.load_ml100k_users(folder), "train", {"user_cold": "test"}
        split = "recbole-metarec user split (8:1:1)" + (", its dropped heavy users training too" if keep_heavy else "")
    if given is None:
        found = scale.infer_scale(frames[train]["rating"])
    else:
        found = scale.check_ratings(np.concatenate([f["rating"].to_numpy() for f in frames.values()]), given,
                                    what=f"{name} in {folder}")
    encoder = _fit_encoder(fit, users, items, frames[train], vocab)
    tasks = _tasks(splits.split_tables(frames, rng=query_rng), encoder, ids=True)
    return _assemble(name, split, tasks, train, scenarios, encoder, frames[train], str(folder), found)


def table(path: str | os.PathLike, *, seed: int = 0, valid_fraction: float = VALID_FRACTION,
          rating_scale: tuple[float, float] | None = None) -> Dataset:
    """Any ratings table: the four cold-start scenarios computed from it, the item id as the one feature.

    Cold users: a seeded random 20%. Cold items: those first rated in the
    latest 20% of first-rating times when the table has a ``timestamp``
    column, else a seeded random 20%. The item vocabulary holds the warm items
    only, so every cold item is the OOV item. Validation: ``valid_fraction`` of the warm users.

    Ratings are checked over the whole file, before it is split: each must be a
    finite number inside ``rating_scale=(low, high)`` when given, else inside the
    :func:`jaxmeta.data.scale.fences` of the file's ratings, whose
    :func:`jaxmeta.data.scale.infer_scale` is then the dataset's scale.

    Raises:
      ValueError: a bad row (named by its line), a file that is empty or holds
        a header only, or too few users to split; the message's first line names the file.
      FileNotFoundError, IsADirectoryError, PermissionError: ``path`` is no
        file, a folder, or unreadable.
      ImportError: ``path`` is a Parquet file and pyarrow is not installed.
    """
    fraction("valid_fraction", valid_fraction)
    given = scale.as_scale(rating_scale)
    timestamp = "timestamp" if "timestamp" in interactions.table_columns(path) else None
    ratings = interactions.read_interactions(path, user="user", item="item", rating="rating", timestamp=timestamp,
                                             rating_range="infer" if given is None else tuple(given))
    if len(ratings) == 0:
        raise ValueError(f"{path}: no ratings, only the column names; pass a table with one row per rating "
                         "(columns user, item, rating, and optionally timestamp).")
    found = scale.infer_scale(ratings["rating"]) if given is None else given
    users_rng, items_rng, valid_rng, query_rng = np.random.default_rng(seed).spawn(4)
    if "timestamp" in ratings:
        cold_items: Any = "first_rating"
    else:
        ids = np.sort(ratings["item"].unique())
        cold_items = set(items_rng.choice(ids, size=round(0.2 * len(ids)), replace=False).tolist())
    frames = splits.cold_start_scenarios(ratings, cold_items=cold_items, cold_users="random", rng=users_rng)
    frames = splits.hold_out_users(frames, valid_fraction, rng=valid_rng)
    items = pd.DataFrame({"item": np.sort(ratings["item"].unique())})
    encoder = FeatureEncoder.fit(None, items[items["item"].isin(frames["warm"]["item"])],
                                 item_categorical=["item"]).with_tables(items=items)
    ids = pd.api.types.is_integer_dtype(ratings["item"])
    tasks = _tasks(splits.split_tables(frames, rng=query_rng), encoder, ids=ids)
    return _assemble("table", f"cold-start scenarios of {Path(path).name}", tasks, "warm",
                     {s: s for s in splits.SCENARIOS}, encoder, frames["warm"], str(path), found)


def load(source: str, *, data_dir: str | os.PathLike = "../shared/data", path: str | os.PathLike | None = None,
         seed: int = 0, rating_scale: tuple[float, float] | None = None, **options: Any) -> Dataset:
    """The :class:`Dataset` of ``source`` (one of :data:`SOURCES`).

    Args:
      source: ``"synthetic"``, ``"ml-100k"``, ``"ml-1m"`` or ``"table"``.
      data_dir: MovieLens: the folder holding ``ml-100k/`` and ``ml-1m/``.
      path: ``"table"``: the ratings file.
      seed: the split's seed (the synthetic data's too).
      rating_scale: the ratings' inclusive ``(low, high)``, two finite numbers
        with low < high; every rating must lie inside it. None: the source's own
        (inferred from the ratings, see :func:`table`).
      options: the keyword arguments of the source's entry (:func:`synthetic`,
        :func:`movielens`, :func:`table`).
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: pass one of {SOURCES}.")
    if (source == "table") != (path is not None and str(path) != ""):
        raise ValueError(f"source={source!r}, path={path!r}: pass a ratings file as path with source='table', "
                         "and a path only then.")
    rating_scale = scale.as_scale(rating_scale)  # checked before any file is read
    if source == "synthetic":
        return synthetic(seed=seed, rating_scale=rating_scale, **options)
    if source == "table":
        return table(path, seed=seed, rating_scale=rating_scale, **options)
    return movielens(source, data_dir, seed=seed, rating_scale=rating_scale, **options)

