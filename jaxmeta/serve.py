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
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxmeta.algorithms import MetaLearner, MetaState
from jaxmeta._checks import columns, positive_int
from jaxmeta.data.features import FeatureEncoder
from jaxmeta.evaluation import ITEM_KEY
from jaxmeta.tasks import RaggedTasks, pad_tasks

MIN_TASKS = 8
"""Fewest task slots of a batch (fewer when ``batch_size`` is smaller)."""
MIN_SUPPORT = 8
"""Fewest support rows of a batch."""
MIN_QUERY = 8
"""Fewest query (candidate) rows of a batch (fewer when ``candidate_chunk`` is smaller)."""
RATINGS_COLUMNS = ("user", "item", "rating")
_ARTICLE = {"user": "a", "item": "an"}

__all__ = ("MIN_QUERY", "MIN_SUPPORT", "MIN_TASKS", "Recommender")


def _padded(n: int, floor: int, cap: int | None = None) -> int:
    """The power of two at or above ``n`` (at least ``floor``), capped at ``cap``."""
    size = max(floor, 1 << max(n - 1, 0).bit_length())
    return size if cap is None else min(size, cap)


def _shown(values: np.ndarray, limit: int = 5) -> str:
    shown = [v.item() if isinstance(v, np.generic) else v for v in values[:limit]]
    return ", ".join(map(repr, shown)) + (", ..." if len(values) > limit else "")


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


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays means nothing: identity it is
class Recommender:
    """Adapts a meta-learned model to each user's ratings and ranks items for them.

    Attributes:
      learner: the trained algorithm (its ``predict`` adapts and scores).
      state: its trained state.
      encoder: the feature encoder of training; its user and item tables must
        hold a row for every user and item to score (:meth:`FeatureEncoder.with_tables`
        adds new ones). Values unknown to its vocabularies encode as OOV.
      items: every item id that may be recommended (the default candidates),
        distinct.
      batch_size: the most users adapted in one call of ``learner.adapt``.
      candidate_chunk: the most candidate items scored in one call.
      item_key: when given, the raw item ids are added to the inputs under this
        field (int64), as :func:`jaxmeta.evaluation.with_item_ids` adds them,
        for models that read them (e.g. an id-based MF); models ignore it otherwise.

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
    """

    learner: MetaLearner = dataclasses.field(repr=False)
    state: MetaState = dataclasses.field(repr=False)
    encoder: FeatureEncoder = dataclasses.field(repr=False)
    items: Sequence[Any] | np.ndarray
    batch_size: int = dataclasses.field(default=64, kw_only=True)
    candidate_chunk: int = dataclasses.field(default=1024, kw_only=True)
    item_key: str | None = dataclasses.field(default=None, kw_only=True)

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

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, run_dir: str | os.PathLike, *, checkpoint: str = "best", batch_size: int = 64) -> Recommender:
        """The model of a ``jaxmeta train --out`` run, ready to serve.

        Args:
          run_dir: the run folder.
          checkpoint: ``"best"`` (validation MAE), ``"latest"`` or a step.
          batch_size: users per compiled call.

        Raises:
          ValueError: the run was trained on the synthetic data, whose users and
            items have no feature tables to encode new ratings with.
          jaxmeta.checkpoint.CheckpointError: not a run folder, or its
            checkpoint does not fit the data.
        """
        from jaxmeta.job import restore_run  # the job layer builds on the whole library: import it when needed

        config, data, _, learner, state, _ = restore_run(run_dir, which=checkpoint)
        if data.encoder is None:
            raise ValueError(f"{run_dir}: a run on the {config.data} data has no user and item feature tables to "
                             "encode new ratings; serve a run trained with --data ml-100k, ml-1m or table.")
        item_key = ITEM_KEY if config.model_name() == "mf" else None  # biased MF reads the raw item ids
        return cls(learner, state, data.encoder, data.encoder.ids("item"), batch_size=batch_size, item_key=item_key)

    @staticmethod
    def read_ratings(path: str | os.PathLike) -> pd.DataFrame:
        """A CSV file of ``user,item,rating`` rows (a header line naming them), for :meth:`recommend`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ratings file; pass a CSV with columns user,item,rating.")
        table = pd.read_csv(path)
        missing = [c for c in RATINGS_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the header must name user, item and rating "
                             f"(it names {list(table.columns)}).")
        return table

    # ------------------------------------------------------------------ scoring

    def score(self, ratings: pd.DataFrame, items: Sequence[Any] | np.ndarray | None = None) -> pd.DataFrame:
        """Every user's adapted score of every candidate item.

        Args:
          ratings: columns ``user``, ``item``, ``rating``; each user's rows are
            that user's support set (all of them are used, in this order).
          items: the candidate item ids (distinct); default :attr:`items`.

        Returns:
          Columns ``user``, ``item``, ``score`` (float64 of the model's float32
          output): one row per user and candidate, users in order of first
          appearance in ``ratings``, candidates in the order given.

        Raises:
          ValueError: a column is missing, ``ratings`` is empty, an id is
            missing, a rating is not a finite number, a user or item has no row
            in the encoder's tables, or a score is not finite.
        """
        users, candidates, scores, _ = self._score(ratings, items, "items")
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
    ) -> pd.DataFrame:
        """The ``k`` best-scored candidate items of every user.

        Args:
          ratings: as in :meth:`score`.
          k: items per user; a user with fewer eligible candidates gets fewer.
          exclude_seen: never recommend an item the user has rated in ``ratings``.
          candidates: the item ids to choose from (distinct); default :attr:`items`.

        Returns:
          Columns ``user``, ``rank`` (1..k), ``item``, ``score``: users in order of
          first appearance in ``ratings``, each user's items by descending score,
          equal scores by ascending item id.

        Raises:
          ValueError: as :meth:`score`, or ``k`` is not a whole number >= 1.
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k={k!r}: pass the number of items to recommend per user, a whole number >= 1.")
        users, cands, scores, frame = self._score(ratings, candidates, "candidates")
        by_id = np.argsort(cands, kind="stable")  # columns in item-id order: a stable sort then breaks ties by id
        cands, scores = cands[by_id], scores[:, by_id]
        seen = np.zeros(scores.shape, dtype=bool)
        if exclude_seen:
            user_rows = pd.Index(users).get_indexer(frame["user"])
            item_cols = pd.Index(cands).get_indexer(frame["item"])
            rated = item_cols >= 0
            seen[user_rows[rated], item_cols[rated]] = True
        key = np.where(seen, np.inf, -scores.astype(np.float64))  # seen items sort last
        top = np.argsort(key, axis=1, kind="stable")[:, :k]
        rows = np.arange(len(users))[:, None]
        keep = ~seen[rows, top]
        rank = np.broadcast_to(np.arange(1, top.shape[1] + 1), top.shape)
        return pd.DataFrame({
            "user": np.repeat(users, keep.sum(axis=1)),
            "rank": rank[keep],
            "item": cands[top][keep],
            "score": scores[rows, top][keep].astype(np.float64),
        })

    # ------------------------------------------------------------------ internals

    def _inputs(self, users: np.ndarray, items: np.ndarray, what: str) -> dict[str, np.ndarray]:
        """The encoded inputs of the (user, item) pairs, with the raw item ids under ``item_key``."""
        try:
            x = self.encoder.encode_ids(users, items)
        except ValueError as err:
            raise ValueError(f"{what}: {err} Then pass the new encoder to the Recommender.") from None
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
        for column in ("user", "item"):
            if ratings[column].isna().any():
                raise ValueError(
                    f"ratings has {int(ratings[column].isna().sum())} row(s) without {_ARTICLE[column]} {column} "
                    "id: every rating needs a user and an item; drop those rows."
                )
        values = pd.to_numeric(ratings["rating"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"ratings has {int(bad.sum())} rating(s) that are not finite numbers, e.g. "
                f"{ratings['rating'].iloc[first]!r} (user {ratings['user'].iloc[first]!r}, item "
                f"{ratings['item'].iloc[first]!r}): drop or fix those rows."
            )
        return ratings.reset_index(drop=True), values.astype(np.float32)

    def _score(self, ratings: pd.DataFrame, items: Any, name: str):
        """``(users, candidates, scores [users, candidates] float32, ratings)``."""
        frame, y = self._check_ratings(ratings)
        candidates = self.items if items is None else _item_ids(items, name)
        codes, uniques = pd.factorize(frame["user"])
        users = np.asarray(uniques, dtype=object) if uniques.dtype == object else uniques.to_numpy()
        order = np.argsort(codes, kind="stable")  # grouped by user, each user's rows in the given order
        x = self._inputs(frame["user"].to_numpy()[order], frame["item"].to_numpy()[order], "ratings")
        y = y[order]
        counts = np.bincount(codes, minlength=len(users))
        ends = np.cumsum(counts)
        support_x = [{f: a[e - n : e] for f, a in x.items()} for n, e in zip(counts, ends)]
        support_y = [y[e - n : e] for n, e in zip(counts, ends)]
        # every candidate must be encodable; checked once here with a user known to be encodable
        self._inputs(np.repeat(users[:1], len(candidates)), candidates, name if items is not None else "items")

        scores = np.empty((len(users), len(candidates)), dtype=np.float32)
        sizes = np.array([_padded(int(n), MIN_SUPPORT) for n in counts])
        for size in np.unique(sizes):
            group = np.flatnonzero(sizes == size)
            for s in range(0, len(group), self.batch_size):
                members = group[s : s + self.batch_size]
                slots = _padded(len(members), min(MIN_TASKS, self.batch_size), self.batch_size)
                tasks = RaggedTasks(  # the support sets; the query set is a placeholder (adapt reads none of it)
                    support_x=[support_x[i] for i in members],
                    support_y=[support_y[i] for i in members],
                    query_x=[{f: a[:1] for f, a in support_x[i].items()} for i in members],
                    query_y=[np.zeros(1, np.float32)] * len(members),
                )
                batch = pad_tasks(tasks, support_size=int(size), query_size=1, num_tasks=slots)
                fast = self.learner.adapt(self.state, batch)  # every user of the batch adapted once
                for c in range(0, len(candidates), self.candidate_chunk):
                    chunk = candidates[c : c + self.candidate_chunk]
                    width = _padded(len(chunk), min(MIN_QUERY, self.candidate_chunk), self.candidate_chunk)
                    users_x = np.repeat(users[members], len(chunk))
                    qx = self._inputs(users_x, np.tile(chunk, len(members)), name)
                    # [slots, width, ...]: each user's candidates, padded (the padding rows' scores are dropped)
                    x = {f: _rows(a.reshape(len(members), len(chunk), *a.shape[1:]), slots, width)
                         for f, a in qx.items()}
                    predictions = np.asarray(self.learner.apply_adapted(self.state, fast, x))
                    scores[members, c : c + len(chunk)] = predictions[: len(members), : len(chunk)]
        bad = ~np.isfinite(scores).all(axis=1)
        if bad.any():
            raise ValueError(
                f"the model's scores are not finite for {int(bad.sum())} user(s), e.g. {_shown(users[bad])}: "
                "the trained state is broken (training diverged); retrain with lower learning rates."
            )
        return users, candidates, scores, frame
