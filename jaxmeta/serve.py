"""Serving: adapt a meta-learned model to users' ratings and rank items for them.

:class:`Recommender` holds a trained :class:`~jaxmeta.algorithms.MetaLearner`,
its :class:`~jaxmeta.algorithms.MetaState`, the
:class:`~jaxmeta.data.features.FeatureEncoder` it was trained with and the
catalogue of items that may be recommended. Given a ratings table of one or
many users, it adapts every user on their own ratings (their support set) and
scores candidate items: ``learner.adapt`` once per user, then
``learner.apply_adapted`` on every chunk of candidates. A user's scores are those
the evaluation path (``learner.predict``) gives for the same support rows and
items, up to float32 rounding (padding to other sizes may reorder sums).

Shapes: users are grouped into fixed-shape :class:`~jaxmeta.tasks.TaskBatch`
objects whose task and support axes are padded to powers of two (at least
:data:`MIN_TASKS`, :data:`MIN_SUPPORT`; task slots at most ``batch_size``), and
candidates into chunks padded to a power of two (at least :data:`MIN_QUERY`, at
most ``candidate_chunk``), so the compiled ``adapt`` and ``apply_adapted`` are
reused across calls and users instead of being compiled for every user. Padded
support rows are masked out of adaptation (see :mod:`jaxmeta.tasks`); the scores
of padded candidate rows and padding users are dropped from the output.

New users: a user id absent from the encoder's user table is a new user, the
cold-start case, served with every user feature unknown unless ``user_features``
gives some. Unknown encodes as a missing value always does in
:mod:`jaxmeta.data.features`: the OOV index of a categorical field, no value of
a multi-valued one, the fitting table's mean of a numeric one (0.0 once
standardised: what a training user with that value missing was given), zeros
of a vector. Their rows are added to a copy of the encoder for the call only
(:meth:`~jaxmeta.data.features.FeatureEncoder.with_rows`); the vocabularies are
never refitted and the recommender's encoder never grows.

A user without any rating gets :meth:`Recommender.recommend_unrated`: the
model as meta-learned, unadapted. :meth:`Recommender.influence` explains a
score: its derivative with respect to each of the user's ratings, through the
adaptation.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import numbers
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxmeta._checks import columns, positive_int
from jaxmeta.algorithms import MetaLearner, MetaState
from jaxmeta.data.features import FeatureEncoder, Vocabulary
from jaxmeta.data.interactions import DuplicateInteractionsWarning, ids_as_read
from jaxmeta.data.scale import RatingScale, as_scale, finite32
from jaxmeta.evaluation import ITEM_KEY
from jaxmeta.tasks import RaggedTasks, TaskBatch, pad_tasks

MIN_TASKS = 8
"""Fewest task slots of a batch (fewer when ``batch_size`` is smaller)."""
MIN_SUPPORT = 8
"""Fewest support rows of a batch."""
MIN_QUERY = 8
"""Fewest query (candidate) rows of a batch (fewer when ``candidate_chunk`` is smaller)."""
INFLUENCE_ROWS = 10
"""Items explained per task and compiled call by :meth:`NewUserRanker.rank`: the service's default ``k``, so
that a top-10 is explained by one call of exactly its rows (the cost grows with the rows: one backward pass
through the adaptation each)."""
RATINGS_COLUMNS = ("user", "item", "rating")
LINE = "line"
"""The index name of the tables :meth:`Recommender.read_ratings` and :meth:`Recommender.read_user_features`
return: the index holds each row's line in the file (the header is line 1), for messages to point at."""
_ARTICLE = {"user": "a", "item": "an"}
_RATINGS_HINT = "a CSV file whose header names user,item,rating and one rating per line below it"
_FEATURES_HINT = "a CSV file whose header names user and user fields, one user per line below it"
_UNRATED = "\x00unrated"  # recommend_unrated's user: a new user, its id led by NUL so that it is no real user's

__all__ = ("INFLUENCE_ROWS", "LINE", "MIN_QUERY", "MIN_SUPPORT", "MIN_TASKS", "NewUserRanker", "Ranking", "Recommender")


def _padded(n: int, floor: int, cap: int | None = None) -> int:
    """The power of two at or above ``n`` (at least ``floor``), capped at ``cap``."""
    size = max(floor, 1 << max(n - 1, 0).bit_length())
    return size if cap is None else min(size, cap)


def _shown(values: np.ndarray, limit: int = 5) -> str:
    shown = [v.item() if isinstance(v, np.generic) else v for v in values[:limit]]
    return ", ".join(map(repr, shown)) + (", ..." if len(values) > limit else "")


def _one(value: Any) -> str:
    return _shown(np.array([value], dtype=object))


def _rows(a: np.ndarray, tasks: int, rows: int) -> np.ndarray:
    """``a`` (``[n, m, ...]``) padded with its own first entry to ``[tasks, rows, ...]``: every padded
    input is a valid id, and its score is never read."""
    out = np.broadcast_to(a[:1, :1], (tasks, rows, *a.shape[2:])).copy()
    out[: a.shape[0], : a.shape[1]] = a
    return out


def _item_ids(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D array of distinct, present item ids."""
    if isinstance(values, (str, bytes)) or np.ndim(values) != 1:
        raise ValueError(f"{name} must be a 1-D sequence of item ids, got {values!r:.80}; pass e.g. a list.")
    ids = values.to_numpy() if isinstance(values, (pd.Series, pd.Index)) else np.asarray(values)
    if len(ids) == 0:
        raise ValueError(f"{name} is empty: pass at least one item id.")
    index = pd.Index(ids)
    if index.hasnans:
        raise ValueError(f"{name} has a missing item id: pass item ids only.")
    if not index.is_unique:
        raise ValueError(f"{name} repeats the item id(s) {_shown(index[index.duplicated()].unique())}: pass each once.")
    return ids


def _by_item(values: Any, name: str, items: np.ndarray) -> pd.Series:
    """``values`` (a mapping or Series keyed by item id, or a sequence aligned with ``items``) as a Series
    keyed by item id, each id once."""
    if isinstance(values, pd.Series):
        series = values
    elif isinstance(values, Mapping):
        series = pd.Series(list(values.values()), index=pd.Index(list(values.keys())), dtype=object)
    elif isinstance(values, (str, bytes)) or np.ndim(values) != 1:
        raise ValueError(f"{name} must map item ids to values, got {values!r:.80}; pass a dict or a Series.")
    elif len(values) != len(items):
        raise ValueError(f"{name} has {len(values)} values for {len(items)} items: pass one per item of items, "
                         "or a dict keyed by item id.")
    else:
        series = pd.Series(list(values), index=pd.Index(items), dtype=object)
    if not series.index.is_unique:
        repeated = series.index[series.index.duplicated()].unique()
        raise ValueError(f"{name} repeats the item id(s) {_shown(repeated)}: give each item one value.")
    return series


def _counts(values: Any, items: np.ndarray) -> pd.Series:
    series = _by_item(values, "popularity", items)
    numbers_ = pd.to_numeric(series, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(numbers_.to_numpy())
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"popularity of item {_one(series.index[first])} is {_one(series.iloc[first])}: pass "
                         "finite numbers (e.g. each item's number of training ratings).")
    return numbers_


def _source(frame: pd.DataFrame, name: str = "ratings") -> str:
    """What the table is called in messages: its file when read from one, else ``name``."""
    return str(frame.attrs.get("path", name))


def _at(frame: pd.DataFrame, position: int) -> str:
    """Where row ``position`` is: its line in the file (a :data:`LINE` index), else its index label."""
    label = frame.index[position]
    return f"line {_one(label)}" if frame.index.name == LINE else f"row {_one(label)}"


def _bad_ratings(ratings: pd.DataFrame, bad: np.ndarray, problem: str, fix: str) -> str:
    """The message for the ratings marked ``bad``: where the first is, its user and item, ``problem`` (of the
    first), how many, and ``fix``; one line."""
    first = int(np.flatnonzero(bad)[0])
    more = f" ({int(bad.sum())} such rows)" if bad.sum() > 1 else ""
    return (f"{_source(ratings)}, {_at(ratings, first)} (user {_one(ratings['user'].iloc[first])}, item "
            f"{_one(ratings['item'].iloc[first])}): rating {problem}{more}; {fix}.")


def _lines(text: str) -> list[int]:
    """The numbers (from 1) of the lines that are not blank: pandas skips the blank ones."""
    return [i for i, line in enumerate(re.split(r"\r\n|\r|\n", text), 1) if line.strip()]


def _read_csv(path: str | os.PathLike, what: str, hint: str, **options: Any) -> pd.DataFrame:
    """The CSV file at ``path`` with a :data:`LINE` index and ``attrs["path"]``; one-line errors naming it."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not a {what} file; pass {hint}.")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file; pass {hint}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text (UTF-8) file; pass {hint}.") from None
    except OSError as err:
        raise ValueError(f"{path} cannot be read ({err.strerror or type(err).__name__}); pass a readable "
                         f"{what} file.") from None
    if not text.strip():
        raise ValueError(f"{path} is empty; pass {hint}.")
    if "\x00" in text:
        raise ValueError(f"{path} is not a text file (it holds NUL bytes); pass {hint}.")
    try:
        table = pd.read_csv(io.StringIO(text), **options)
    except ValueError as err:  # pandas' ParserError and EmptyDataError are ValueErrors
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path} is not a readable CSV ({first}); pass {hint}.") from None
    if len(table) == 0:
        raise ValueError(f"{path} has a header but no rows below it; pass {hint}.")
    lines = _lines(text)
    if len(lines) == len(table) + 1:  # else a quoted field spans lines: rows keep their positions
        table.index = pd.Index(lines[1:], name=LINE)
    table.attrs["path"] = str(path)
    return table


def _matched(value: Any, by_text: dict[str, Any], textual: bool) -> Any:
    """``value`` as its field's vocabulary writes it: the known value of the same text ("4" read from a file is the
    known 4); else its text where every known value is text (the encoder cuts a ``prefix`` off text only); else
    the number the text spells ("18.0" finds the known 18); else as given (all three unknown: OOV). Missing stays
    missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    value = value.item() if isinstance(value, np.generic) else value
    text = str(value).strip()
    if text in by_text:
        return by_text[text]
    if textual:
        return text
    try:
        return float(text)
    except ValueError:
        return value


def _user_values(table: pd.DataFrame, name: str, kind: str, vocabulary: Vocabulary | None) -> list[Any]:
    """The column ``name`` of ``user_features`` (``table``) as the encoder reads a field of ``kind``."""
    column = table[name]
    if kind == "numeric":
        values = pd.to_numeric(column, errors="coerce")
        given = column.map(lambda v: not pd.isna(v) and str(v).strip() != "").to_numpy(dtype=bool)
        bad = given & ~np.isfinite(values.to_numpy(np.float64, na_value=np.nan))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{_source(table, 'user_features')}, {_at(table, first)} (user {_one(table['user'].iloc[first])}): "
                f"{name} {_one(column.iloc[first])} is not a finite number; pass a number, or nothing for unknown "
                "(the training mean)."
            )
        return values.tolist()
    if vocabulary is None:  # a vector field: as given
        return column.tolist()
    by_text = {str(v): v for v in vocabulary.values}
    textual = all(isinstance(v, str) for v in vocabulary.values)
    if kind == "categorical":
        return [_matched(v, by_text, textual) for v in column]
    out = []  # multi: a tuple of values, or one text of values separated by "|"
    for v in column:
        if isinstance(v, str):
            v = tuple(v.split("|"))
        if isinstance(v, (tuple, list, np.ndarray)):
            out.append(tuple(m for m in (_matched(x, by_text, textual) for x in v) if m not in (None, "")))
        else:
            out.append(None)
    return out


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays means nothing: identity it is
class Recommender:
    """Adapts a meta-learned model to each user's ratings and ranks items for them.

    Attributes:
      learner: the trained algorithm (its ``predict`` adapts and scores).
      state: its trained state.
      encoder: the feature encoder of training; its item table must hold a row
        for every item to score (:meth:`FeatureEncoder.with_tables` adds new
        ones). A user absent from its user table is a new user, served with
        unknown user features unless :meth:`score` is given some (see the
        module docstring). Values unknown to its vocabularies encode as OOV.
      items: every item id that may be recommended (the default candidates),
        distinct.
      batch_size: the most users adapted in one call of ``learner.adapt``.
      candidate_chunk: the most candidate items scored in one call.
      item_key: when given, the raw item ids are added to the inputs under this
        field (int64), as :func:`jaxmeta.evaluation.with_item_ids` adds them,
        for models that read them (e.g. an id-based MF); models ignore it otherwise.
      titles: item id -> title (a dict or a Series); :meth:`recommend` then adds
        a ``title`` column (missing for an item without one). Kept as a Series.
      popularity: item id -> how popular the item is (a dict or a Series, or
        one number per item of ``items``), e.g. its number of training
        ratings: :meth:`recommend` breaks ties of score by it, most popular
        first (an item without a value counts 0). Kept as a float64 Series.
      rating_scale: ``(lowest, highest)`` rating of training: a rating outside
        it is refused (the model was never adapted on such values); None
        accepts any finite rating. Kept as a
        :class:`~jaxmeta.data.scale.RatingScale`.

    Example:
      >>> import jax
      >>> import pandas as pd
      >>> from jaxmeta import algorithms, models
      >>> from jaxmeta.data.features import FeatureEncoder
      >>> users = pd.DataFrame({"user": [1, 2], "gender": ["F", "M"]})
      >>> items = pd.DataFrame({"item": [10, 11, 12, 13], "genres": [("a",), ("b",), ("a", "b"), ()]})
      >>> encoder = FeatureEncoder.fit(users, items, user_categorical=["gender"], item_multi=["genres"])
      >>> learner = algorithms.maml(models.melu(encoder.spec, embed_dim=4, hidden=(8,)), inner_steps=2)
      >>> state = learner.init(jax.random.key(0))
      >>> ratings = pd.DataFrame({"user": [1, 1, 2], "item": [10, 11, 12], "rating": [5.0, 1.0, 4.0]})
      >>> top = Recommender(learner, state, encoder, items["item"]).recommend(ratings, k=2)
      >>> top.shape, list(top.columns)
      ((4, 4), ['user', 'rank', 'item', 'score'])
      >>> top["rank"].tolist(), set(top.loc[top["user"] == 1, "item"])  # items 10 and 11 are seen
      ([1, 2, 1, 2], {12, 13})
      >>> new = pd.DataFrame({"user": ["ann", "ann"], "item": [10, 12], "rating": [4.0, 2.0]})  # a new user
      >>> rec = Recommender(learner, state, encoder, items["item"], titles={10: "Up", 11: "Heat", 12: "Ran"},
      ...                   rating_scale=(1, 5))
      >>> shown = rec.recommend(new, k=2, user_features=pd.DataFrame({"user": ["ann"], "gender": ["F"]}))
      >>> list(shown.columns), sorted(shown["title"].fillna("-"))  # items 11 and 13; 13 has no title
      (['user', 'rank', 'item', 'score', 'title'], ['-', 'Heat'])
    """

    learner: MetaLearner = dataclasses.field(repr=False)
    state: MetaState = dataclasses.field(repr=False)
    encoder: FeatureEncoder = dataclasses.field(repr=False)
    items: Sequence[Any] | np.ndarray
    batch_size: int = dataclasses.field(default=64, kw_only=True)
    candidate_chunk: int = dataclasses.field(default=1024, kw_only=True)
    item_key: str | None = dataclasses.field(default=None, kw_only=True)
    titles: Mapping[Any, str] | pd.Series | None = dataclasses.field(default=None, kw_only=True, repr=False)
    popularity: Mapping[Any, float] | pd.Series | Sequence[float] | np.ndarray | None = dataclasses.field(
        default=None, kw_only=True, repr=False)
    rating_scale: RatingScale | tuple[float, float] | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        if not isinstance(self.encoder, FeatureEncoder):
            raise TypeError(f"encoder must be a FeatureEncoder, got {type(self.encoder).__name__}.")
        object.__setattr__(self, "items", _item_ids(self.items, "items"))
        object.__setattr__(self, "batch_size", positive_int("batch_size", self.batch_size))
        object.__setattr__(self, "candidate_chunk", positive_int("candidate_chunk", self.candidate_chunk))
        if self.item_key is not None:
            names = [f.name for f in self.encoder.spec]
            if self.item_key in names:
                raise ValueError(f"item_key={self.item_key!r} is already an encoder field: pass another name.")
            if not np.issubdtype(np.asarray(self.items).dtype, np.integer):
                raise ValueError(
                    f"item_key={self.item_key!r} adds raw item ids as int64, but the items have dtype "
                    f"{np.asarray(self.items).dtype}: pass integer item ids, or item_key=None."
                )
        if self.titles is not None:
            object.__setattr__(self, "titles", _by_item(self.titles, "titles", self.items))
        if self.popularity is not None:
            object.__setattr__(self, "popularity", _counts(self.popularity, self.items))
        object.__setattr__(self, "rating_scale", as_scale(self.rating_scale))

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, run_dir: str | os.PathLike, *, checkpoint: str | int = "best", batch_size: int = 64,
             data_dir: str | os.PathLike | None = None) -> Recommender:
        """The model of a ``jaxmeta train --out`` run, ready to serve.

        Besides the model and its encoder, the recommender gets the run's rating
        scale (when its dataset records one), each item's number of training
        ratings as :attr:`popularity`, and for MovieLens runs the movie titles
        of the data folder (none when the folder has no movie file).

        Args:
          run_dir: the run folder.
          checkpoint: ``"best"`` (validation MAE), ``"latest"`` or a step.
          batch_size: users per compiled call.
          data_dir: the folder holding the run's data, in place of the one its
            config names (e.g. the run was trained on another machine).

        Raises:
          ValueError: the run was trained on the synthetic data, whose users and
            items have no feature tables to encode new ratings with.
          jaxmeta.checkpoint.CheckpointError: not a run folder, or its
            checkpoint does not fit the data.
        """
        from jaxmeta.job import (  # the job layer builds on the whole library: import it when needed
            ID_MODELS,
            restore_run,
        )

        restored = restore_run(run_dir, which=checkpoint, data_dir=data_dir)
        config, data = restored.config, restored.data
        if data.encoder is None:
            raise ValueError(f"{run_dir}: a run on the {config.data} data has no user and item feature tables to "
                             "encode new ratings; serve a run trained with --data ml-100k, ml-1m or table.")
        item_key = ITEM_KEY if config.model_name() in ID_MODELS else None  # biased MF, hybrid MeLU: raw item ids
        popularity = None if data.warm_ratings is None else data.warm_ratings["item"].value_counts()
        titles = _movie_titles(data.name, config.data_dir if data_dir is None else data_dir)
        return cls(restored.learner, restored.state, data.encoder, data.encoder.ids("item"), batch_size=batch_size,
                   item_key=item_key, titles=titles, popularity=popularity, rating_scale=data.rating_scale)

    @staticmethod
    def read_ratings(path: str | os.PathLike) -> pd.DataFrame:
        """A CSV file of ``user,item,rating`` rows (a header line naming them), for :meth:`recommend`.

        Returns:
          The table, indexed by each row's line in the file (index name
          :data:`LINE`; the header is line 1) and with the file in
          ``attrs["path"]``, so that :meth:`score` names the file and line of a
          bad rating.

        Raises:
          FileNotFoundError: no such file, or a folder.
          ValueError: the file is unreadable, empty, not a CSV, has no rows, or
            its header lacks a column.
        """
        table = _read_csv(path, "ratings", _RATINGS_HINT, dtype={"user": str, "item": str})
        missing = [c for c in RATINGS_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the header must name user, item and rating "
                             f"(it names {_shown(np.array(table.columns, dtype=object), 8)}).")
        for column in ("user", "item"):  # as training's reader reads a table's ids ("0007" stays text)
            present = table[column].notna()
            if present.all():
                table[column] = ids_as_read(table[column], column, str(path)).to_numpy()
        return table

    @staticmethod
    def read_user_features(path: str | os.PathLike) -> pd.DataFrame:
        """A CSV file of user features, for ``user_features=`` of :meth:`score` and :meth:`recommend`.

        The header names ``user`` and any of the model's user fields (e.g. for
        ML-100K ``gender``, ``age``, ``occupation``, ``zip``); an empty cell is
        an unknown value. User ids are read as :meth:`read_ratings` reads them
        (numbers when every id is one), so the two files' ids match; the
        features are read as text, matched to the vocabularies by
        :meth:`score` (a zip code keeps its leading zeros).

        Returns:
          The table, indexed and with ``attrs`` as :meth:`read_ratings`'s.

        Raises:
          FileNotFoundError, ValueError: as :meth:`read_ratings`, or the header
            lacks the ``user`` column.
        """
        table = _read_csv(path, "user features", _FEATURES_HINT, dtype=str, keep_default_na=False, na_values=[""])
        if "user" not in table.columns:
            raise ValueError(f"{path}: no user column; the header must name user and user fields "
                             f"(it names {_shown(np.array(table.columns, dtype=object), 8)}).")
        ids = _read_csv(path, "user features", _FEATURES_HINT, usecols=["user"])["user"]  # inferred as ratings' are
        table["user"] = ids.to_numpy()
        return table

    # ------------------------------------------------------------------ scoring

    def score(
        self,
        ratings: pd.DataFrame,
        items: Sequence[Any] | np.ndarray | None = None,
        *,
        user_features: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Every user's adapted score of every candidate item.

        Args:
          ratings: columns ``user``, ``item``, ``rating``; each user's rows are
            that user's support set (all of them are used, in this order). A
            user absent from the encoder's user table is a new user.
          items: the candidate item ids (distinct); default :attr:`items`.
          user_features: column ``user`` and any of the encoder's user fields
            (:meth:`FeatureEncoder.table_columns`), one row per user: a row
            replaces the encoder's row of that user for this call; a field it
            lacks, or an empty value, is unknown (module docstring). Values are
            matched to the vocabularies by their text ("4" is the known 4); an
            unknown one encodes as OOV. Rows of users not in ``ratings`` are
            not read. :meth:`read_user_features` reads such a table from a file.

        Returns:
          Columns ``user``, ``item``, ``score`` (float64 of the model's float32
          output): one row per user and candidate, users in order of first
          appearance in ``ratings``, candidates in the order given.

        Raises:
          ValueError: a column is missing, ``ratings`` is empty, an id is
            missing, a rating is not a finite number or is outside
            :attr:`rating_scale`, an item has no row in the encoder's item
            table, ``user_features`` names a column that is not a user field or
            has no row of a rating user, or a score is not finite.
        """
        users, candidates, scores, _ = self._score(ratings, items, "items", user_features)
        return pd.DataFrame({
            "user": np.repeat(users, len(candidates)),
            "item": np.tile(candidates, len(users)),
            "score": scores.astype(np.float64).ravel(),
        })

    def recommend(
        self,
        ratings: pd.DataFrame,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[Any] | np.ndarray | None = None,
        user_features: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """The ``k`` best-scored candidate items of every user.

        Items described by the same features get the same score (e.g. ML-100K
        movies are described by their genres only); ties are broken by
        :attr:`popularity` (most popular first; :meth:`load` counts each item's
        training ratings), then by ascending item id.

        Args:
          ratings: as in :meth:`score`.
          k: items per user; a user with fewer eligible candidates gets fewer.
          exclude_seen: never recommend an item the user has rated in ``ratings``.
          candidates: the item ids to choose from (distinct); default :attr:`items`.
          user_features: as in :meth:`score`.

        Returns:
          Columns ``user``, ``rank`` (1..k), ``item``, ``score``, and ``title``
          when :attr:`titles` is given: users in order of first appearance in
          ``ratings``, each user's items by descending score, equal scores by
          descending popularity, then ascending item id.

        Raises:
          ValueError: as :meth:`score`, or ``k`` is not a whole number >= 1.
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k={k!r}: pass the number of items to recommend per user, a whole number >= 1.")
        users, cands, scores, frame = self._score(ratings, candidates, "candidates", user_features)
        seen = np.zeros(scores.shape, dtype=bool)
        if exclude_seen:
            user_rows = pd.Index(users).get_indexer(frame["user"])
            item_cols = pd.Index(cands).get_indexer(frame["item"])
            rated = item_cols >= 0
            seen[user_rows[rated], item_cols[rated]] = True
        return self._ranked(users, cands, scores, seen, k)

    def recommend_unrated(self, k: int = 10, *, candidates: Sequence[Any] | np.ndarray | None = None) -> pd.DataFrame:
        """The ``k`` best-scored candidate items for a user who has rated nothing yet.

        Such a user has no support set: the learner leaves the model as
        meta-learned (an all-masked task is not adapted, see
        :func:`jaxmeta.inner.inner_adapt`), with every user feature unknown,
        as for a new user (module docstring). Every such user gets this one
        ranking; ties are broken as in :meth:`recommend`.

        Args:
          k: items to return.
          candidates: the item ids to choose from (distinct); default :attr:`items`.

        Returns:
          :meth:`recommend`'s columns without ``user``: ``rank``, ``item``,
          ``score`` (and ``title``).

        Raises:
          ValueError: ``k`` is not a whole number >= 1, a candidate has no row
            in the encoder's item table, or a score is not finite.
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k={k!r}: pass the number of items to recommend, a whole number >= 1.")
        cands = self.items if candidates is None else _item_ids(candidates, "candidates")
        users = np.array([_UNRATED], dtype=object)
        encoder = self._encoder_for(users, None)
        x = self._inputs(encoder, np.repeat(users, len(cands)), cands, "items" if candidates is None else "candidates")
        no_rows = {f: a[:0] for f, a in x.items()}
        scores = self._adapted_scores(encoder, users, [no_rows], [np.zeros(0, np.float32)], cands, "candidates")
        return self._ranked(users, cands, scores, np.zeros(scores.shape, dtype=bool), k).drop(columns="user")

    def influence(self, ratings: pd.DataFrame, pairs: pd.DataFrame, *, chunk: int = 16,
                  user_features: pd.DataFrame | None = None) -> pd.DataFrame:
        """Which of a user's ratings moved the adapted score of an item, and by how much: ``d score / d rating``.

        For a user with ratings ``r_1 .. r_n`` (their support set, as in
        :meth:`score`) and an item ``i``, the derivative of ``i``'s adapted
        score with respect to the value of each ``r_j``, through the
        adaptation: ``d apply_adapted(adapt(r), i) / d r_j``, by reverse-mode
        differentiation (``jax.jacrev``) of the learner's own ``adapt`` and
        ``apply_adapted``. It is the change of the score per unit change of
        that one rating, for small changes (a first-order, local measure; the
        item ids rated stay fixed): positive when rating ``r_j``'s item higher
        would raise ``i``'s score, and the rating of largest magnitude is the
        one that moved ``i``'s score most. Learners whose adaptation stops
        gradients have zero derivatives throughout: Reptile's and iMAML's
        first-order inner loops, and the fused Pallas kernel (whose backward
        pass is first-order); :func:`jaxmeta.algorithms.no_adaptation` reads
        no rating.

        Users are batched as in :meth:`score`; each user's items are taken
        ``chunk`` at a time, each call padded to exactly ``chunk`` items, so
        there is one compiled shape per (task slots, support size) pair, and
        the cost is that of ``chunk`` backward passes through the adaptation:
        ask for the few items shown (a top-k), not the catalogue.

        Args:
          ratings: as in :meth:`score`.
          pairs: columns ``user``, ``item``: the (user, item) pairs to explain,
            e.g. :meth:`recommend`'s output; every user must have ratings in
            ``ratings``.
          chunk: items per user and call.
          user_features: as in :meth:`score`.

        Returns:
          Columns ``user``, ``item``, ``rated`` (the item of a rating),
          ``rating`` (its value) and ``influence`` (float64 of the float32
          derivative): for each pair, in ``pairs``' order, one row per rating
          of its user, in ``ratings``' order.

        Raises:
          ValueError: as :meth:`score`; ``pairs`` lacks a column, names a user
            without ratings, or an item without a row in the encoder's item
            table; ``chunk`` is not a whole number >= 1.
        """
        chunk = positive_int("chunk", chunk, "items per user and call")
        columns(pairs, ["user", "item"], "pairs", "Pass one row per (user, item) to explain, e.g. recommend's output.")
        frame, y = self._check_ratings(ratings)
        users, encoder, support_x, support_y = self._supports(frame, y, user_features)
        pair_users = pd.Index(users, dtype=object).get_indexer(pd.Index(pairs["user"].to_numpy(), dtype=object))
        if (pair_users < 0).any():
            raise ValueError(f"pairs names the user(s) {_shown(pd.unique(pairs['user'].to_numpy()[pair_users < 0]))}, "
                             "who have no rating in ratings: pass each user's ratings with the pairs to explain.")
        pair_x = self._inputs(encoder, users[pair_users], pairs["item"].to_numpy(), "pairs")
        explained = np.unique(pair_users)
        rows_of = [np.flatnonzero(pair_users == u) for u in explained]  # each user's pairs, in pairs' order
        derivatives: list[np.ndarray | None] = [None] * len(pairs)
        for members, batch in self._support_batches([support_x[u] for u in explained],
                                                    [support_y[u] for u in explained]):
            slots = batch.num_tasks
            for c in range(0, max(len(rows_of[m]) for m in members), chunk):
                take = [rows_of[m][c : c + chunk] for m in members]
                # [members, chunk]: each user's pairs of this call, padded with their first pair (never read)
                index = np.stack([np.concatenate([t, np.repeat(rows_of[m][:1], chunk - len(t))])
                                  for m, t in zip(members, take)])
                x = {f: _rows(a[index], slots, chunk) for f, a in pair_x.items()}
                jac = np.asarray(_support_influence(self.learner, self.state, batch, x))
                for j, (m, t) in enumerate(zip(members, take)):
                    n = len(support_y[explained[m]])
                    for r, row in enumerate(t):
                        derivatives[row] = jac[j, r, :n]
        codes = pd.factorize(frame["user"])[0]
        rated = [np.flatnonzero(codes == u) for u in range(len(users))]  # each user's ratings, in order
        sizes = np.array([len(rated[u]) for u in pair_users], dtype=np.int64)
        positions = np.concatenate([rated[u] for u in pair_users])
        return pd.DataFrame({
            "user": np.repeat(pairs["user"].to_numpy(), sizes),
            "item": np.repeat(pairs["item"].to_numpy(), sizes),
            "rated": frame["item"].to_numpy()[positions],
            "rating": y[positions].astype(np.float64),
            "influence": np.concatenate(derivatives).astype(np.float64),
        })

    # ------------------------------------------------------------------ internals

    def _ranked(self, users: np.ndarray, cands: np.ndarray, scores: np.ndarray, seen: np.ndarray,
                k: int) -> pd.DataFrame:
        """The table of :meth:`recommend`: each user's ``k`` best candidates that are not ``seen`` (bool, as
        ``scores``), by descending score, then :attr:`popularity`, then ascending id."""
        order = self._tie_order(cands)  # columns in tie-break order: a stable sort by score keeps it among equals
        cands, scores, seen = cands[order], scores[:, order], seen[:, order]
        key = np.where(seen, np.inf, -scores.astype(np.float64))  # seen items sort last
        top = np.argsort(key, axis=1, kind="stable")[:, :k]
        rows = np.arange(len(users))[:, None]
        keep = ~seen[rows, top]
        rank = np.broadcast_to(np.arange(1, top.shape[1] + 1), top.shape)
        out = pd.DataFrame({
            "user": np.repeat(users, keep.sum(axis=1)),
            "rank": rank[keep],
            "item": cands[top][keep],
            "score": scores[rows, top][keep].astype(np.float64),
        })
        if self.titles is not None:
            out["title"] = self.titles.reindex(pd.Index(out["item"].to_numpy(), dtype=object)).to_numpy()
        return out

    def _tie_order(self, candidates: np.ndarray) -> np.ndarray:
        """The candidates' positions by descending popularity, then ascending id."""
        by_id = np.argsort(candidates, kind="stable")
        if self.popularity is None:
            return by_id
        counts = self.popularity.reindex(pd.Index(candidates[by_id], dtype=object)).fillna(0.0).to_numpy(np.float64)
        return by_id[np.argsort(-counts, kind="stable")]

    def _inputs(self, encoder: FeatureEncoder, users: np.ndarray, items: np.ndarray,
                what: str) -> dict[str, np.ndarray]:
        """The encoded inputs of the (user, item) pairs, with the raw item ids under ``item_key``."""
        try:
            x = encoder.encode_ids(users, items)
        except ValueError as err:
            raise ValueError(f"{what}: {err} Then pass the new encoder to the Recommender (with jaxmeta recommend: "
                             "rate items of the run's catalogue, their ids written as in its training data).") from None
        if self.item_key is not None:
            ids = np.asarray(items)
            if not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(
                    f"{what}: item_key={self.item_key!r} adds the raw item ids as int64, but these have dtype "
                    f"{ids.dtype}: pass integer item ids, or item_key=None."
                )
            x[self.item_key] = ids.astype(np.int64)
        return x

    def _check_ratings(self, ratings: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """The ratings table checked, and its ratings as float32."""
        columns(ratings, RATINGS_COLUMNS, "ratings", "Pass one row per rating with columns user, item, rating.")
        if len(ratings) == 0:
            raise ValueError(
                "ratings has no rows: every user to score needs at least one rating to adapt on; pass each "
                "user's ratings."
            )
        source = _source(ratings)
        for column in ("user", "item"):
            missing = ratings[column].isna().to_numpy()
            if missing.any():
                raise ValueError(
                    f"{source} has {int(missing.sum())} row(s) without {_ARTICLE[column]} {column} id, e.g. "
                    f"{_at(ratings, int(np.flatnonzero(missing)[0]))}: every rating needs a user and an item; "
                    "drop those rows."
                )

        values = pd.to_numeric(ratings["rating"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~finite32(values)  # ratings are adapted on in float32: 1e300 is inf there
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            beyond = " in float32" if np.isfinite(values[first]) else ""
            raise ValueError(_bad_ratings(ratings, bad, f"{_one(ratings['rating'].iloc[first])} is not a finite "
                                          f"number{beyond}", "drop or fix those rows"))
        if self.rating_scale is not None:
            low, high = self.rating_scale
            bad = (values < low) | (values > high)
            if bad.any():
                value = float(values[np.flatnonzero(bad)[0]])
                raise ValueError(_bad_ratings(ratings, bad, f"{value!r} is outside the run's rating scale "
                                              f"[{low:.7g}, {high:.7g}]", "pass ratings on that scale"))
        earlier = ratings.duplicated(["user", "item"], keep="last").to_numpy()
        if earlier.any():  # latest wins, as in training's reader and the service
            warnings.warn(f"{source}: {int(earlier.sum())} earlier rating(s) of an item the same user rates again "
                          f"are dropped, the latest of each kept, e.g. {_at(ratings, int(np.flatnonzero(earlier)[0]))}.",
                          DuplicateInteractionsWarning, stacklevel=3)
            ratings, values = ratings[~earlier], values[~earlier]
        return ratings.reset_index(drop=True), values.astype(np.float32)

    def _encoder_for(self, users: np.ndarray, user_features: pd.DataFrame | None) -> FeatureEncoder:
        """The encoder of one call: the rows of ``user_features`` and of the new users (every feature unknown)
        added to a copy of :attr:`encoder`'s user table; :attr:`encoder` itself when there are none."""
        key, *named = self.encoder.table_columns("user")
        fields = [f for f in named if f != key]  # an id column that is also a field encodes the id
        if user_features is not None:
            columns(user_features, ["user"], "user_features", "Pass one row per user with a user column and any of "
                    f"the user fields {fields}.")
            unknown = [c for c in user_features.columns if c != "user" and c not in fields]
            if unknown:
                raise ValueError(f"user_features has the column(s) {unknown}, which are not user fields of this "
                                 f"model; its user fields are {fields}: drop or rename those columns.")
        if not named:  # the model reads no user feature: any user id encodes alike
            return self.encoder
        given = None if user_features is None else self._given_rows(user_features, users, fields)
        known = pd.Index(self.encoder.ids("user"), dtype=object)
        new = users[known.get_indexer(pd.Index(users, dtype=object)) < 0]
        if given is not None:
            new = new[~pd.Index(new, dtype=object).isin(given[key])]
        _check_id_types(new, known)
        if given is None and len(new) == 0:
            return self.encoder
        unknown_rows = pd.DataFrame({key: pd.Series(new, dtype=object), **{f: [None] * len(new) for f in fields}})
        rows = unknown_rows if given is None else pd.concat([given, unknown_rows], ignore_index=True)
        return self.encoder.with_rows(users=rows)

    def _given_rows(self, table: pd.DataFrame, users: np.ndarray, fields: list[str]) -> pd.DataFrame:
        """``user_features``' rows of the rating ``users``, every field filled (None: unknown) and read as the
        encoder's vocabularies write them, keyed by the encoder's user id column."""
        source = _source(table, "user_features")
        ids = table["user"]
        if ids.isna().any():
            raise ValueError(f"{source} has {int(ids.isna().sum())} row(s) without a user id, e.g. "
                             f"{_at(table, int(np.flatnonzero(ids.isna().to_numpy())[0]))}: drop those rows.")
        repeated = ids[ids.duplicated()]
        if len(repeated):
            raise ValueError(f"{source} repeats the user id(s) {_shown(repeated.unique())}: pass one row per user.")
        mine = table[pd.Index(ids, dtype=object).isin(pd.Index(users, dtype=object))]
        if len(mine) == 0:
            raise ValueError(
                f"{source} has no row of a user of the ratings (it has {_shown(ids.unique())}; the ratings have "
                f"{_shown(users)}): pass the features of the rating users, their ids written alike."
            )
        kinds = {f.name: f.kind for f in self.encoder.spec}
        vocabularies = self.encoder.vocabularies
        key = self.encoder.table_columns("user")[0]
        out = pd.DataFrame({key: mine["user"].to_numpy(dtype=object)})
        for name in fields:
            values = (_user_values(mine, name, kinds[name], vocabularies.get(name)) if name in mine.columns
                      else [None] * len(mine))
            out[name] = pd.Series(values, dtype=object)
        return out

    def _supports(self, frame: pd.DataFrame, y: np.ndarray, user_features: pd.DataFrame | None):
        """``(users, encoder, support_x, support_y)`` of ratings checked by :meth:`_check_ratings` (``frame``,
        and ``y`` its ratings): the users in order of first appearance, the encoder of the call, and each
        user's support rows (inputs, and float32 ratings) in the order given."""
        codes, uniques = pd.factorize(frame["user"])
        users = np.asarray(uniques, dtype=object) if uniques.dtype == object else uniques.to_numpy()
        encoder = self._encoder_for(users, user_features)  # built per call: the held encoder never grows
        order = np.argsort(codes, kind="stable")  # grouped by user, each user's rows in the given order
        x = self._inputs(encoder, frame["user"].to_numpy()[order], frame["item"].to_numpy()[order], "ratings")
        y = y[order]
        counts = np.bincount(codes, minlength=len(users))
        ends = np.cumsum(counts)
        support_x = [{f: a[e - n : e] for f, a in x.items()} for n, e in zip(counts, ends)]
        support_y = [y[e - n : e] for n, e in zip(counts, ends)]
        return users, encoder, support_x, support_y

    def _support_batches(self, support_x: list, support_y: list, min_tasks: int = MIN_TASKS):
        """Yields ``(members, batch)``: the positions of some users and their support sets as one fixed-shape
        TaskBatch. Users are grouped by padded support size, at most :attr:`batch_size` per batch, task slots
        padded to a power of two, at least ``min_tasks``. A user without support rows is an all-masked task,
        left unadapted."""
        sizes = np.array([_padded(len(y), MIN_SUPPORT) for y in support_y])
        for size in np.unique(sizes):
            group = np.flatnonzero(sizes == size)
            for s in range(0, len(group), self.batch_size):
                members = group[s : s + self.batch_size]
                slots = _padded(len(members), min(min_tasks, self.batch_size), self.batch_size)
                tasks = RaggedTasks(  # the support sets; the query set is a placeholder (adapt reads none of it)
                    support_x=[support_x[i] for i in members],
                    support_y=[support_y[i] for i in members],
                    query_x=[{f: a[:1] for f, a in support_x[i].items()} for i in members],
                    query_y=[np.zeros(min(1, len(support_y[i])), np.float32) for i in members],
                )
                yield members, pad_tasks(tasks, support_size=int(size), query_size=1, num_tasks=slots)

    def _adapted_scores(self, encoder: FeatureEncoder, users: np.ndarray, support_x: list, support_y: list,
                        candidates: np.ndarray, name: str) -> np.ndarray:
        """float32 ``[users, candidates]``: each user adapted once on their support rows, then every candidate
        scored, in chunks of :attr:`candidate_chunk`."""
        scores = np.empty((len(users), len(candidates)), dtype=np.float32)
        for members, batch in self._support_batches(support_x, support_y):
            slots = batch.num_tasks
            fast = self.learner.adapt(self.state, batch)  # every user of the batch adapted once
            for c in range(0, len(candidates), self.candidate_chunk):
                chunk = candidates[c : c + self.candidate_chunk]
                width = _padded(len(chunk), min(MIN_QUERY, self.candidate_chunk), self.candidate_chunk)
                users_x = np.repeat(users[members], len(chunk))
                qx = self._inputs(encoder, users_x, np.tile(chunk, len(members)), name)
                # [slots, width, ...]: each user's candidates, padded (the padding rows' scores are dropped)
                x = {f: _rows(a.reshape(len(members), len(chunk), *a.shape[1:]), slots, width)
                     for f, a in qx.items()}
                predictions = np.asarray(self.learner.apply_adapted(self.state, fast, x))
                scores[members, c : c + len(chunk)] = predictions[: len(members), : len(chunk)]
        bad = ~np.isfinite(scores).all(axis=1)
        if bad.any():
            raise ValueError(
                f"the model's scores are not finite for {int(bad.sum())} user(s), e.g. {_shown(users[bad])}: "
                "the trained state is broken (training diverged), or their ratings are far off the training scale; "
                "retrain with lower learning rates, or pass ratings on the scale trained on."
            )
        return scores

    def _score(self, ratings: pd.DataFrame, items: Any, name: str, user_features: pd.DataFrame | None):
        """``(users, candidates, scores [users, candidates] float32, ratings)``."""
        frame, y = self._check_ratings(ratings)
        candidates = self.items if items is None else _item_ids(items, name)
        users, encoder, support_x, support_y = self._supports(frame, y, user_features)
        # every candidate must be encodable; checked once here with a user known to be encodable
        self._inputs(encoder, np.repeat(users[:1], len(candidates)), candidates, name if items is not None else "items")
        scores = self._adapted_scores(encoder, users, support_x, support_y, candidates, name)
        return users, candidates, scores, frame


class Ranking(NamedTuple):
    """One user's ranking from :meth:`NewUserRanker.rank`."""

    items: np.ndarray  # [n] the recommended item ids, best first (n <= k: fewer when the user has seen the rest)
    scores: np.ndarray  # float32 [n]: their adapted scores
    influence: np.ndarray | None  # float32 [n, ratings]: d score / d rating of each of the user's ratings; None
    # unless explained


class NewUserRanker:
    """The catalogue ranked for many new users at once, from arrays: the hot path of a service.

    :meth:`Recommender.recommend` takes a ratings table and pays, per call, for
    pandas, for encoding every (user, candidate) pair and for one compiled call
    per candidate chunk. A service asks the same question over and over for new
    users without user features (every user feature unknown), whose encoded
    inputs of an item are therefore the same for every user. This class encodes
    them once, keeps only the distinct input rows (items described by the same
    features, e.g. ML-100K's movies by their genres, share one row), puts the
    candidates in :meth:`Recommender.recommend`'s tie order (descending
    :attr:`~Recommender.popularity`, then ascending id), and serves each batch of
    users by ONE compiled call: ``adapt``, the adapted scores of the distinct
    rows (in chunks of :attr:`~Recommender.candidate_chunk`), seen items masked
    out and ``jax.lax.top_k``, whose equal values keep the lower (tie-order)
    index first. Users are batched as :meth:`Recommender.score` batches them
    (the same padded shapes, except that a call may hold fewer than
    :data:`MIN_TASKS` task slots: ``min_tasks``); :meth:`rank` with ``explain=True`` adds
    :meth:`Recommender.influence`'s derivatives for the items returned.

    A user's ranking equals :meth:`Recommender.recommend`'s for the same ratings
    (as a new user without ``user_features``), up to float32 rounding, and their
    ``influence`` equals :meth:`Recommender.influence`'s.

    Args:
      recommender: the model and its catalogue; its ``batch_size`` bounds the
        users per call.
      k: the most items a ranking holds (the compiled top-k's size; at most the
        catalogue's size).
      min_tasks: the fewest task slots of a call. One, the default, lets a lone
        request pay for one user (MeLU MAML on ML-100K, a user with 128 ratings,
        a 2-core CPU: 1.1 ms to adapt and rank, 8.8 ms with the explanation,
        against 5.3 and 48 ms padded to :data:`MIN_TASKS` = 8 slots), at the
        price of compiling the shapes of 1, 2 and 4 users too.

    Example:
      >>> import jax, pandas as pd
      >>> from jaxmeta import algorithms, models
      >>> from jaxmeta.data.features import FeatureEncoder
      >>> items = pd.DataFrame({"item": [10, 11, 12, 13], "genres": [("a",), ("b",), ("a", "b"), ()]})
      >>> encoder = FeatureEncoder.fit(pd.DataFrame({"user": [1]}), items, item_multi=["genres"])
      >>> learner = algorithms.maml(models.melu(encoder.spec, embed_dim=4, hidden=(8,)), inner_steps=2)
      >>> rec = Recommender(learner, learner.init(jax.random.key(0)), encoder, items["item"])
      >>> ranker = NewUserRanker(rec, k=3)
      >>> ranker.distinct  # four items, four distinct genre sets
      4
      >>> [top] = ranker.rank([([10, 12], [5.0, 1.0])], explain=True)
      >>> sorted(top.items.tolist()), top.influence.shape  # 10 and 12 are seen: two items left
      ([11, 13], (2, 2))
    """

    def __init__(self, recommender: Recommender, *, k: int = 100, min_tasks: int = 1):
        self.recommender = recommender
        self.min_tasks = positive_int("min_tasks", min_tasks, "the fewest task slots of a call")
        self.k = min(positive_int("k", k, "the most items a ranking holds"), len(recommender.items))
        users = np.array([_UNRATED], dtype=object)  # a new user: every user feature unknown
        encoder = recommender._encoder_for(users, None)
        self.items = recommender.items[recommender._tie_order(recommender.items)]
        self.position = {item: n for n, item in enumerate(self.items.tolist())}
        self.inputs = recommender._inputs(encoder, np.repeat(users, len(self.items)), self.items, "items")
        rows = np.concatenate([np.ascontiguousarray(a).reshape(len(self.items), -1).view(np.uint8)
                               for _, a in sorted(self.inputs.items())], axis=1)
        _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        self.distinct = len(first)
        chunks = -(-self.distinct // recommender.candidate_chunk)
        chunk = -(-self.distinct // chunks)  # the fewest chunks of at most candidate_chunk rows, evenly filled
        take = np.concatenate([first, np.repeat(first[:1], chunks * chunk - self.distinct)])
        # [chunks, chunk, ...]: the distinct rows, padded with a copy of the first (its scores are never read)
        self._distinct = jax.device_put({f: a[take].reshape(chunks, chunk, *a.shape[1:])
                                         for f, a in self.inputs.items()})
        self._inverse = jax.device_put(inverse.reshape(-1).astype(np.int32))

    def positions(self, items: Sequence[Any] | np.ndarray) -> np.ndarray:
        """int64: the candidates' positions of ``items`` (ids of :attr:`Recommender.items`)."""
        try:
            return np.fromiter((self.position[i] for i in items), dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"item {err.args[0]!r} is not an item of the recommender: pass ids of its "
                             f"items, e.g. {_shown(self.items)}.") from None

    def rank(self, supports: Sequence[tuple[Sequence[Any], Sequence[float]]], *,
             seen: Sequence[Sequence[Any]] | None = None, k: int | None = None,
             explain: bool = False) -> list[Ranking]:
        """Each user's ``k`` best items, adapted on their ratings.

        Args:
          supports: per user, ``(items, ratings)``: the support set, at least one
            rating (ratings already checked against the rating scale).
          seen: per user, items never to recommend; default the support's items.
          k: items per ranking, at most :attr:`k` (the default).
          explain: also find each returned item's ``influence`` (a backward pass
            through the adaptation per item: keep ``k`` to what is shown).

        Returns:
          One :class:`Ranking` per user, in order.
        """
        rec = self.recommender
        k = self.k if k is None else positive_int("k", k, "items per ranking")
        if k > self.k:
            raise ValueError(f"k={k}: this ranker holds at most {self.k} items per ranking; pass k <= {self.k}, "
                             "or build the NewUserRanker with a larger k.")
        support_x, support_y, masks = [], [], []
        for n, (items, ratings) in enumerate(supports):
            where = self.positions(items)
            if not len(where):
                raise ValueError(f"supports[{n}] has no rating: a user needs at least one to adapt on.")
            if len(np.unique(where)) < len(where):
                raise ValueError(f"supports[{n}] rates an item more than once: pass each item's latest rating "
                                 "once (as Recommender.recommend keeps it).")
            support_x.append({f: a[where] for f, a in self.inputs.items()})
            support_y.append(np.asarray(ratings, dtype=np.float32))
            mask = np.zeros(len(self.items), dtype=bool)
            mask[where if seen is None else self.positions(seen[n])] = True
            masks.append(mask)
        out: list[Ranking | None] = [None] * len(support_y)
        for members, batch in rec._support_batches(support_x, support_y, self.min_tasks):
            mask = np.zeros((batch.num_tasks, len(self.items)), dtype=bool)
            mask[: len(members)] = np.stack([masks[m] for m in members])
            values, index, finite = (np.asarray(a) for a in _new_user_top_k(
                rec.learner, rec.state, batch, self._distinct, self._inverse, mask, self.k))
            if not finite[: len(members)].all():
                raise ValueError("the model's scores are not finite for some of these users: the trained state is "
                                 "broken (training diverged), or their ratings are far off the training scale.")
            values, index = values[:, :k], index[:, :k]
            keep = ~np.take_along_axis(mask, index, axis=1)
            jac = self._influence(batch, index, keep) if explain else None
            for j, m in enumerate(members):
                kept = keep[j]
                out[m] = Ranking(self.items[index[j][kept]], values[j][kept],
                                 None if jac is None else jac[j][kept][:, : len(support_y[m])])
        return out

    def _influence(self, batch: TaskBatch, index: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """float32 ``[tasks, k, support]``: :func:`_support_influence` of each task's ranked items, taken
        :data:`INFLUENCE_ROWS` at a time, as far as any task keeps items."""
        wanted = int(keep.sum(axis=1).max())
        jac = np.zeros((*index.shape, batch.support_y.shape[1]), dtype=np.float32)
        for c in range(0, wanted, INFLUENCE_ROWS):
            rows = index[:, c : c + INFLUENCE_ROWS]
            rows = np.pad(rows, ((0, 0), (0, INFLUENCE_ROWS - rows.shape[1])), mode="edge")
            x = {f: a[rows] for f, a in self.inputs.items()}
            part = np.asarray(_support_influence(self.recommender.learner, self.recommender.state, batch, x))
            jac[:, c : c + INFLUENCE_ROWS] = part[:, : jac.shape[1] - c]
        return jac


@functools.partial(jax.jit, static_argnums=(0, 6))
def _new_user_top_k(learner: MetaLearner, state: MetaState, batch: TaskBatch, distinct: Any, inverse: jax.Array,
                    seen: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(scores, positions, finite)``: each task's ``k`` best unseen candidates (float32 and int32 ``[tasks,
    k]``; seen ones at ``-inf`` when fewer are left) and whether all its scores are finite (bool ``[tasks]``).

    ``distinct`` (leaves ``[chunks, chunk, ...]``) holds the distinct input rows, ``inverse`` (int32
    ``[candidates]``) each candidate's row, ``seen`` (bool ``[tasks, candidates]``) the items to leave out."""
    fast = learner.adapt(state, batch)
    tasks = batch.support_y.shape[0]

    def score(rows: Any) -> jax.Array:  # [tasks, chunk]: every task's adapted scores of one chunk
        x = jax.tree.map(lambda a: jnp.broadcast_to(a, (tasks, *a.shape)), rows)
        return learner.apply_adapted(state, fast, x)

    scores = jax.lax.map(score, distinct)  # [chunks, tasks, chunk]
    scores = jnp.moveaxis(scores, 0, 1).reshape(tasks, -1)[:, inverse]  # [tasks, candidates]
    finite = jnp.isfinite(scores).all(axis=1)
    values, positions = jax.lax.top_k(jnp.where(seen, -jnp.inf, scores), k)
    return values, positions, finite


@functools.partial(jax.jit, static_argnums=0)
def _support_influence(learner: MetaLearner, state: MetaState, batch: TaskBatch, x: Any) -> jax.Array:
    """float32 ``[tasks, rows, support]``: ``d score[t, r] / d batch.support_y[t, j]``, the derivative of the
    adapted score of each user's rows ``x`` (leaves ``[tasks, rows, ...]``) with respect to each support rating;
    zero at padded support rows.

    Users are adapted independently (``adapt`` maps over tasks), so the derivative of the sum over users of
    row ``r``'s score holds every user's own derivatives at once: one backward pass per row, not per user.
    """

    def scores(support_y: jax.Array) -> jax.Array:  # [rows]: summed over users
        fast = learner.adapt(state, batch._replace(support_y=support_y))
        return learner.apply_adapted(state, fast, x).sum(axis=0)

    jac = jax.jacrev(scores)(batch.support_y)  # [rows, tasks, support]
    return jnp.where(batch.support_mask[:, None, :], jnp.moveaxis(jac, 0, 1), 0.0)


def _check_id_types(new: np.ndarray, known: pd.Index) -> None:
    """Refuses a new user id that is a known one written as another type (the text "3" beside the number 3):
    ids read differently, not a new user."""
    if not len(new) or not len(known):
        return
    texts: dict[str, Any] = {}
    for k in known:
        texts.setdefault(str(k), k)
    for u in new:
        if str(u) in texts:
            held = texts[str(u)]
            raise ValueError(
                f"ratings: user {_one(u)} ({type(u).__name__}) is not in the encoder's user table, but "
                f"{_one(held)} ({type(held).__name__}) is: read the ids alike (e.g. both as numbers), or give a "
                "new user an id of its own."
            )


def _movie_titles(source: str, data_dir: str | os.PathLike) -> pd.Series | None:
    """item id -> title of a MovieLens source's movies; None for other sources or without the movie file."""
    from jaxmeta.data import movielens
    from jaxmeta.data.datasets import _folder  # where the dataset itself was read from

    loaders = {"ml-100k": movielens.load_ml100k_items, "ml-1m": movielens.load_ml1m_items}
    if source not in loaders:
        return None
    try:
        movies = loaders[source](_folder(data_dir, source))
    except FileNotFoundError:  # ML-1M trains on MeLU's files: movies.dat may be absent, and titles are optional
        return None
    return pd.Series(movies["title"].to_numpy(dtype=object), index=pd.Index(movies["item"]))
