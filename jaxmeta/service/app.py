"""The HTTP service of ``jaxmeta serve``: users rate items, and get recommendations adapted to their ratings.

:func:`create_app` builds a FastAPI application around a
:class:`~jaxmeta.serve.Recommender`:

* ``GET /health``: ``{"status": "ok", "items": N, "users": U, "batching": B}``.
* ``POST /users/{user}/ratings`` with ``{"ratings": [{"item": 1, "rating": 4}, ...]}``:
  stores the ratings (committed to SQLite before the reply, see
  :mod:`jaxmeta.service.store`; requests that arrive while a commit runs share
  the next one; a later rating of an item replaces the earlier)
  and replies ``{"user": user, "added": n, "total": t}``: ``n`` ratings written
  by this request, ``t`` items the user has rated.
* ``GET /users/{user}/recommendations?k=10``: the user's ``k`` best unseen items
  after adapting on their stored ratings; a user with no rating (or never seen)
  gets the unadapted model's ranking.
* ``POST /recommend`` with ``{"ratings": [...], "k": 10}``: the same for ratings
  given in the request; stores nothing.
* ``GET /items?q=star&limit=20``: items whose title holds ``q`` (any case), most
  popular first; an empty ``q`` lists the most popular.
* ``GET /``: a web page to search, rate and see recommendations; ``/docs``: the
  OpenAPI documentation.

Each recommended item carries ``score`` (the adapted model's prediction),
``title``, ``genres`` and ``because``: the user's rating with the largest
``|d score / d rating|`` through the adaptation
(:meth:`~jaxmeta.serve.Recommender.influence`) and that signed derivative as
``influence``; null without ratings, or when every derivative is 0 (learners
whose adaptation stops gradients, see there), or when the request says
``explain=false``: the explanation costs a backward pass through the adaptation
per item, about twice the adaptation and ranking, so a caller that does not
show it can skip it.

Users: every user of the service is a new user of the model (every user
feature unknown, as :mod:`jaxmeta.serve` serves new users), whatever the name;
the name is only the key of their ratings. A user's adaptation uses their
``history_limit`` most recently rated items (older ratings still count as seen:
they are never recommended).

Micro-batching: recommendation requests are queued and served by a
:class:`~jaxmeta.service.batcher.MicroBatcher`: those arriving within
``window_ms`` of each other (up to ``max_batch``) are adapted together by
:meth:`~jaxmeta.serve.NewUserRanker.rank` (one compiled call adapts them and
ranks the whole catalogue; the explanations take a backward pass per item
shown), in a worker thread, off the event loop. Their shapes come from a fixed set (task slots and support sizes padded
to powers of two up to ``max_batch`` and ``history_limit``), each compiled once
before the app serves (``warmup``). A user's results are the same, up to
float32 rounding, whether they are adapted alone or with others. Results are
cached per user until their next rating.

Bad input gets a 4xx reply ``{"detail": "..."}`` naming the bad value and what
to pass instead, and writes nothing: malformed JSON (400), a body over
``max_body_bytes`` bytes or with over ``max_ratings_per_request`` ratings (413),
an unknown item, a rating that is not a finite number or is outside the run's
rating scale, a ``k`` that is not a whole number from 1 to :data:`MAX_K`, or a
field that does not belong (422).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib.resources
import json
import logging
import math
import numbers
import os
import time
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from jaxmeta._checks import positive_int
from jaxmeta.data.scale import FLOAT32_MAX
from jaxmeta.serve import NewUserRanker, Recommender
from jaxmeta.service.batcher import MicroBatcher
from jaxmeta.service.store import RatingStore

__all__ = ("HISTORY_LIMIT", "MAX_K", "create_app")

MAX_K = 100
"""The most items one recommendation request may ask for."""
HISTORY_LIMIT = 128
"""Default ``history_limit``: the most recent ratings a user is adapted on."""
CACHE_USERS = 10_000
"""The most users whose recommendations are cached."""
VERSIONS_KEPT = 2 * CACHE_USERS
"""The most users whose last write is remembered (to tell a cached result stale); others share one version."""
WRITES_PER_COMMIT = 256
"""The most rating requests committed by one transaction."""
MAX_USER_CHARS = 200
_LOG = logging.getLogger("jaxmeta.service")
_EXAMPLE = '{"ratings": [{"item": 1, "rating": 4}]}'


class _Bad(Exception):
    """A request the service refuses: its HTTP status and the message for the client."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class Job(NamedTuple):
    """One user's recommendation request, as the batch function reads it."""

    ratings: tuple[tuple[Hashable, float], ...]  # the support set: (item, rating), oldest first
    seen: frozenset  # every item the user has rated (never recommended)
    k: int  # items wanted
    explain: bool = True  # find each item's ``because`` (the costlier part: a backward pass per item)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python one (for JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def _json(value: Any) -> str:
    """``value`` as JSON, cut to 60 characters (for messages)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Catalogue:
    """The items that may be rated and recommended: ids, titles, genres, popularity order."""

    def __init__(self, recommender: Recommender):
        self.ids = [_plain(i) for i in recommender.items]
        self.by_id = {i: i for i in self.ids}
        self.by_text = {str(i): i for i in self.ids}
        titles = recommender.titles
        self.title = {i: None for i in self.ids}
        if titles is not None:
            found = titles.reindex(pd.Index(recommender.items, dtype=object)).to_numpy()
            self.title = {i: (t if isinstance(t, str) else None) for i, t in zip(self.ids, found)}
        self.genres = _genres(recommender, self.ids)
        popularity = np.zeros(len(self.ids))
        if recommender.popularity is not None:
            counts = recommender.popularity.reindex(pd.Index(recommender.items, dtype=object)).fillna(0.0)
            popularity = counts.to_numpy(np.float64)
        try:
            by_id = np.argsort(np.asarray(recommender.items), kind="stable")
        except TypeError:  # ids of mixed types do not sort: keep the catalogue's order
            by_id = np.arange(len(self.ids))
        order = by_id[np.argsort(-popularity[by_id], kind="stable")]  # most popular first, then by id
        self.popular = [self.ids[i] for i in order]
        self.searchable = {i: (self.title[i] or str(i)).casefold() for i in self.ids}
        self.example = ", ".join(_json(i) for i in self.popular[:3])

    def item(self, value: Any, where: str) -> Hashable:
        """The catalogue's id for ``value`` (a JSON number or text), or a 422 naming it."""
        found = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            found = self.by_id.get(value)
            if found is None:
                found = self.by_text.get(value if isinstance(value, str) else str(value))
        if found is None:
            raise _Bad(422, f"{where} is {_json(value)}, which is not an item of this model: pass an item id of "
                            f"the run, such as {self.example} (GET /items?q=... finds them).")
        return found

    def describe(self, item: Hashable) -> dict[str, Any]:
        return {"item": item, "title": self.title[item], "genres": list(self.genres.get(item, ()))}


def _genres(recommender: Recommender, ids: list) -> dict[Hashable, list[str]]:
    """Each item's genres, decoded from the encoder's item field ``genres`` (MovieLens runs); none without it.

    Genres rarer than the field's ``min_count`` were encoded as unknown and are not listed."""
    encoder = recommender.encoder
    if not any(f.name == "genres" and f.kind == "multi" for f in encoder.spec) \
            or "genres" not in encoder.table_columns("item")[1:]:
        return {}
    users = encoder.ids("user")
    user_fields = encoder.table_columns("user")[1:]
    if user_fields and len(users) == 0:  # no user to encode a pair with; genres are optional
        return {}
    user = users[0] if len(users) else None
    codes = encoder.encode_ids(np.full(len(ids), user, dtype=object), np.asarray(recommender.items))["genres"]
    vocabulary = encoder.vocabularies["genres"]
    return {i: [str(g) for g in vocabulary.decode(row) if g is not None] for i, row in zip(ids, codes)}


class _Ranker:
    """The batch function: a list of :class:`Job` -> each job's list of recommended items (JSON-ready dicts).

    Runs in the batcher's worker thread (and in :meth:`warm_up`)."""

    def __init__(self, recommender: Recommender, catalogue: _Catalogue, history_limit: int):
        self.recommender = recommender
        self.catalogue = catalogue
        self.history_limit = history_limit
        self.fast = NewUserRanker(recommender, k=MAX_K)
        self._unrated: list[dict] | None = None

    def __call__(self, jobs: Sequence[Job]) -> list[list[dict]]:
        out: list[list[dict] | None] = [None] * len(jobs)
        rated = [n for n, job in enumerate(jobs) if job.ratings]
        for n, job in enumerate(jobs):
            if not job.ratings:
                out[n] = self.unrated()[: job.k]
        if rated:
            for n, items in zip(rated, self._adapted([jobs[n] for n in rated])):
                out[n] = items
        return out

    def unrated(self) -> list[dict]:
        """The ranking of a user without ratings: the unadapted model's, computed once."""
        if self._unrated is None:
            top = self.recommender.recommend_unrated(k=MAX_K)
            self._unrated = [self._entry(item, score, None) for item, score in zip(top["item"], top["score"])]
        return self._unrated

    def _adapted(self, jobs: list[Job]) -> list[list[dict]]:
        explain = any(job.explain for job in jobs)  # one backward pass per item serves every task of a batch
        # a k over the catalogue gets every unrated item, as a user without ratings does
        rankings = self.fast.rank([tuple(zip(*job.ratings)) for job in jobs], seen=[job.seen for job in jobs],
                                  k=min(max(job.k for job in jobs), self.fast.k), explain=explain)
        out = []
        for job, ranking in zip(jobs, rankings):
            n = min(job.k, len(ranking.items))
            because = [None] * n
            if job.explain:
                rated = [item for item, _ in job.ratings]
                size = np.abs(ranking.influence[:n])
                size = np.where(np.isfinite(size), size, -1.0)
                best = size.argmax(axis=1)  # the first of equals, in rating order
                because = [None if not size[r, j] > 0 else {
                    "item": rated[j], "title": self.catalogue.title[rated[j]], "rating": float(job.ratings[j][1]),
                    "influence": float(ranking.influence[r, j])} for r, j in enumerate(best)]
            out.append([self._entry(_plain(item), score, why)
                        for item, score, why in zip(ranking.items[:n].tolist(), ranking.scores[:n], because)])
        return out

    def _entry(self, item: Hashable, score: float, because: dict | None) -> dict:
        item = _plain(item)
        return {"item": item, "score": float(score), "title": self.catalogue.title[item],
                "genres": list(self.catalogue.genres.get(item, ())), "because": because}

    def warm_up(self, max_batch: int) -> int:
        """Compiles every shape the batch function can meet; returns how many batches it ran.

        Users per call run over the powers of two up to ``max_batch`` (and it),
        support sizes over those up to the longest support set (``history_limit``,
        or the catalogue's size when smaller): padding maps every batch to the
        shape of one of these (:meth:`~jaxmeta.serve.Recommender.score`)."""
        longest = min(self.history_limit, len(self.catalogue.ids))
        counts = sorted({*(1 << i for i in range(max_batch.bit_length())), max_batch} - {0})
        sizes = sorted({*(1 << i for i in range(longest.bit_length())), longest} - {0})
        items = self.catalogue.popular
        low, high = self.recommender.rating_scale or (1.0, 5.0)
        runs = 0
        self.unrated()
        for size in sizes:
            ratings = tuple((items[j % len(items)], float(low + (high - low) * (j % 5) / 4)) for j in range(size))
            job = Job(ratings, frozenset(item for item, _ in ratings), 1)
            for count in counts:
                self([job] * count)
                runs += 1
        return runs


@dataclasses.dataclass
class _Cached:
    version: int
    k: int
    items: list[dict]
    explain: bool = True


class _Service:
    """Everything the endpoints share: the store, the batcher, the catalogue, the cache of results."""

    def __init__(self, recommender: Recommender, db_path: str | os.PathLike, *, max_batch: int, window_ms: float,
                 batching: bool, max_ratings_per_request: int, max_body_bytes: int, history_limit: int):
        self.recommender = recommender
        self.db_path = db_path
        self.batching = batching
        self.max_ratings = max_ratings_per_request
        self.max_bytes = max_body_bytes
        self.history_limit = history_limit
        self.catalogue = _Catalogue(recommender)
        self.ranker = _Ranker(recommender, self.catalogue, history_limit)
        self.batcher = MicroBatcher(self.ranker, max_batch=max_batch if batching else 1,
                                    window_ms=window_ms if batching else 0.0)
        self.store: RatingStore | None = None
        # writes that arrive while a commit runs are committed together by the next: one fsync for them all
        self.writer = MicroBatcher(lambda writes: self.store.add_many(writes), max_batch=WRITES_PER_COMMIT,
                                   window_ms=0.0)
        # user -> the write count at their last write: a cached result of an older version is stale. Users
        # beyond VERSIONS_KEPT are dropped, oldest write first; every user not held reads the count at the
        # last drop (``forgotten``), so a user's version still only grows, never repeats.
        self.writes = 0
        self.forgotten = 0
        self.versions: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.cache: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        # user -> {item: rating}, in the order of writing: the database's history, kept as it is written
        self.histories: collections.OrderedDict[str, dict[Hashable, float]] = collections.OrderedDict()

    # ---------------------------------------------------------------- input

    async def body(self, request: Request) -> dict:
        """The request's JSON object, read up to :attr:`max_bytes`."""
        limit = f"the limit is {self.max_bytes} bytes and {self.max_ratings} ratings per request"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise _Bad(413, f"the body is {declared} bytes; {limit}: send the ratings in several requests.")
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > self.max_bytes:
                raise _Bad(413, f"the body is over {self.max_bytes} bytes; {limit}: send the ratings in several "
                                "requests.")
        try:
            value = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise _Bad(400, f"the body is not UTF-8 text: send JSON such as {_EXAMPLE}.") from None
        except (ValueError, RecursionError) as err:  # JSONDecodeError; an integer of over 4300 digits; deep nesting
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            raise _Bad(400, f"the body is not valid JSON ({reason}): send JSON such as {_EXAMPLE}.") from None
        if not isinstance(value, dict):
            raise _Bad(422, f"the body is {_json(value)}, not a JSON object: send an object such as {_EXAMPLE}.")
        return value

    def fields(self, body: dict, allowed: Sequence[str]) -> None:
        unknown = [key for key in body if key not in allowed]
        if unknown:
            raise _Bad(422, f"unknown field(s) {unknown}: the body takes {list(allowed)} only, e.g. {_EXAMPLE}.")

    def ratings(self, body: dict, *, required: bool) -> list[tuple[Hashable, float]]:
        """The body's ``ratings`` as ``(item, rating)`` pairs, every one checked."""
        if "ratings" not in body:
            if required:
                raise _Bad(422, f"the body has no 'ratings': send {_EXAMPLE}.")
            return []
        given = body["ratings"]
        if not isinstance(given, list):
            raise _Bad(422, f"ratings is {_json(given)}, not a list: send a list of objects, as in {_EXAMPLE}.")
        if len(given) > self.max_ratings:
            raise _Bad(413, f"the request has {len(given)} ratings; the limit is {self.max_ratings} ratings per "
                            f"request (and {self.max_bytes} bytes): send them in several requests.")
        if required and not given:
            raise _Bad(422, f"ratings is empty: send at least one, as in {_EXAMPLE}.")
        scale = self.recommender.rating_scale
        out = []
        for n, entry in enumerate(given):
            where = f"ratings[{n}]"
            if not isinstance(entry, dict) or set(entry) != {"item", "rating"}:
                raise _Bad(422, f"{where} is {_json(entry)}: pass an object with exactly the keys item and rating, "
                                'e.g. {"item": 1, "rating": 4}.')
            item = self.catalogue.item(entry["item"], f"{where}.item")
            value = entry["rating"]
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise _Bad(422, f"{where}.rating is {_json(value)}, not a number: pass a number"
                                + (f" from {scale.low:.7g} to {scale.high:.7g}." if scale else ", e.g. 4."))
            try:
                value = float(value)
            except OverflowError:  # a whole number beyond any float
                value = math.inf
            if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                raise _Bad(422, f"{where}.rating is {value!r}, not a finite number: pass a number"
                                + (f" from {scale.low:.7g} to {scale.high:.7g}." if scale else ", e.g. 4."))
            if scale is not None and not scale.low <= value <= scale.high:
                raise _Bad(422, f"{where}.rating is {value:.7g}, outside this model's rating scale {scale}: pass a "
                                f"number from {scale.low:.7g} to {scale.high:.7g}.")
            out.append((item, value))
        return out

    def readable(self, item: Hashable, rating: float) -> bool:
        """Whether this model can read a stored rating: its item is in the catalogue, the rating on the scale."""
        scale = self.recommender.rating_scale
        return item in self.catalogue.by_id and math.isfinite(rating) and (
            scale is None or scale.low <= rating <= scale.high)

    def job(self, ratings: Sequence[tuple[Hashable, float]], k: int, explain: bool = True) -> Job:
        """The job of a user with these ratings (oldest first): each item's latest rating, the most recent
        ``history_limit`` of them as the support set. A stored rating the model cannot read (:meth:`readable`;
        a database written under another run) stays out of the support set; its item, when in the catalogue,
        is still not recommended."""
        latest: dict[Hashable, float] = {}
        for item, rating in ratings:
            latest.pop(item, None)  # a re-rated item counts as rated last
            latest[item] = rating
        support = tuple((i, r) for i, r in latest.items() if self.readable(i, r))[-self.history_limit:]
        return Job(support, frozenset(i for i in latest if i in self.catalogue.by_id), k, explain)

    # ---------------------------------------------------------------- state

    def start(self) -> None:
        self.store = RatingStore(self.db_path)
        self.writes = self.forgotten = 0
        self.versions.clear()
        self.cache.clear()
        self.histories.clear()
        self.batcher.start()
        self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()
        await self.batcher.stop()
        if self.store is not None:
            self.store.close()
            self.store = None

    def cached(self, user: str, k: int, explain: bool = True) -> list[dict] | None:
        hit = self.cache.get(user)
        if hit is None or hit.version != self.version(user) or (hit.k < k and len(hit.items) >= hit.k):
            return None
        if explain and not hit.explain:  # cached without explanations: they are wanted now
            return None
        self.cache.move_to_end(user)
        if not explain and hit.explain:  # cached with them: not wanted now
            return [{**item, "because": None} for item in hit.items[:k]]
        return hit.items[:k]

    def remember(self, user: str, version: int, k: int, items: list[dict], explain: bool = True) -> None:
        if version != self.version(user):  # rated meanwhile: this result is stale already
            return
        self.cache[user] = _Cached(version, k, items, explain)
        self.cache.move_to_end(user)
        while len(self.cache) > CACHE_USERS:
            self.cache.popitem(last=False)

    def version(self, user: str) -> int:
        """A number that changes whenever ``user`` rates (:meth:`written`), never back to an earlier value."""
        return self.versions.get(user, self.forgotten)

    async def history(self, user: str) -> list[tuple[Hashable, float]]:
        """The user's ``(item, rating)`` pairs in the order of writing, as :meth:`RatingStore.history` reads
        them: from memory after the first read (every write goes through :meth:`written`), so that a request
        reads the database once per user, not once per request."""
        known = self.histories.get(user)
        if known is not None:
            self.histories.move_to_end(user)
            return list(known.items())
        version = self.version(user)
        rows = await asyncio.to_thread(self.store.history, user)
        unread = [row for row in rows if not self.readable(*row)]
        if unread:
            _LOG.warning("user %r: %d stored rating(s) that this model cannot read are left out of adaptation "
                         "(an item not in its catalogue, or a rating off its scale %s), e.g. %s: was the database "
                         "written under another run?", user, len(unread), self.recommender.rating_scale, unread[:3])
        if version == self.version(user):  # no write meanwhile, whose rating the read may lack
            self.histories[user] = dict(rows)
            while len(self.histories) > CACHE_USERS:
                self.histories.popitem(last=False)
        return rows

    def written(self, user: str, ratings: Sequence[tuple[Hashable, float]]) -> None:
        """After ``ratings`` of ``user`` are committed: drops the user's cached results, and adds the ratings
        to their history in memory as the store wrote them (a re-rated item moves to the end)."""
        self.writes += 1
        self.versions[user] = self.writes
        self.versions.move_to_end(user)
        while len(self.versions) > VERSIONS_KEPT:
            self.versions.popitem(last=False)
            self.forgotten = self.writes
        self.cache.pop(user, None)
        known = self.histories.get(user)
        if known is not None:
            for item, rating in ratings:
                known.pop(item, None)
                known[item] = float(rating)


def _check_user(user: str) -> str:
    if not user.strip() or len(user) > MAX_USER_CHARS or not user.isprintable():
        raise _Bad(422, f"user {_json(user)}: pass a name of 1 to {MAX_USER_CHARS} printable characters, "
                        "not only spaces.")
    return user


def _check_k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise _Bad(422, f"k is {_json(value)}: pass how many items to recommend, a whole number from 1 to {MAX_K}.")
    return value


_HINTS = {"k": f"a whole number from 1 to {MAX_K}", "limit": "a whole number from 1 to 1000",
          "q": "a text of at most 200 characters"}


def _validation_message(error: RequestValidationError) -> str:
    """FastAPI's errors on query and path parameters as one line naming the value and what to pass."""
    parts = []
    for e in error.errors():
        name = str(e.get("loc", ("?",))[-1])
        parts.append(f"{name} is {_json(e.get('input'))} ({e.get('msg', 'invalid')}): pass "
                     f"{_HINTS.get(name, 'a valid value')}")
    return "; ".join(parts) + "."


def _ratings_schema(max_ratings: int, scale: Any, with_k: bool) -> dict:
    rating = {"type": "number", "description": "the rating, a finite number on the run's scale"}
    if scale is not None:
        rating |= {"minimum": scale.low, "maximum": scale.high}
    properties: dict[str, Any] = {"ratings": {
        "type": "array", "maxItems": max_ratings,
        "description": "ratings in order; a later rating of the same item replaces an earlier one",
        "items": {"type": "object", "required": ["item", "rating"], "additionalProperties": False,
                  "properties": {"item": {"anyOf": [{"type": "integer"}, {"type": "string"}],
                                          "description": "an item id of the run (GET /items)"},
                                 "rating": rating}}}}
    if with_k:
        properties["k"] = {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10}
    schema = {"type": "object", "properties": properties, "additionalProperties": False,
              "required": [] if with_k else ["ratings"]}
    example = {"ratings": [{"item": 1, "rating": 4}, {"item": 50, "rating": 5}]} | ({"k": 10} if with_k else {})
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema,
                                                                                "example": example}}}}


def create_app(
    recommender: Recommender,
    db_path: str | os.PathLike,
    *,
    max_batch: int = 32,
    window_ms: float = 5.0,
    batching: bool = True,
    warmup: bool = True,
    max_ratings_per_request: int = 1000,
    max_body_bytes: int = 1_000_000,
    history_limit: int = HISTORY_LIMIT,
) -> FastAPI:
    """The FastAPI application of the service (module docstring), ready to serve.

    Args:
      recommender: the model and its catalogue (e.g. :meth:`Recommender.load`).
      db_path: the SQLite file of users' ratings; created when absent, and
        read back on a restart.
      max_batch: the most users adapted in one call.
      window_ms: how long a request waits for others to be adapted with, in
        milliseconds.
      batching: False adapts every request alone (``max_batch=1``, no window):
        the baseline that batching is measured against.
      warmup: compile every shape of the batch function now, before returning
        (so before a server opens its port); False compiles on first use.
      max_ratings_per_request: the most ratings one request may carry (413
        beyond).
      max_body_bytes: the largest request body, in bytes (413 beyond).
      history_limit: the most recent ratings of a user to adapt on; support
        sets are padded to powers of two up to it.

    Returns:
      The application; run its lifespan (uvicorn does; ``with
      fastapi.testclient.TestClient(app)`` does in tests) to open the store and
      start the batcher. ``app.state.service`` holds them.

    Raises:
      ValueError: an argument is out of range, or ``db_path`` is not a usable
        database file.
    """
    if not isinstance(recommender, Recommender):
        raise TypeError(f"recommender must be a jaxmeta.serve.Recommender, got {type(recommender).__name__}.")
    max_batch = positive_int("max_batch", max_batch, "users adapted per call")
    max_ratings_per_request = positive_int("max_ratings_per_request", max_ratings_per_request)
    max_body_bytes = positive_int("max_body_bytes", max_body_bytes)
    history_limit = positive_int("history_limit", history_limit, "ratings per user to adapt on")
    RatingStore(db_path).close()  # a bad path fails here, not at the first request
    recommender = dataclasses.replace(recommender, batch_size=max_batch if batching else 1)
    service = _Service(recommender, db_path, max_batch=max_batch, window_ms=window_ms, batching=batching,
                       max_ratings_per_request=max_ratings_per_request, max_body_bytes=max_body_bytes,
                       history_limit=history_limit)
    if warmup:
        start = time.perf_counter()
        runs = service.ranker.warm_up(service.batcher.max_batch)
        _LOG.info("compiled the service's shapes in %.1f s (%d warm-up batches)", time.perf_counter() - start, runs)
    page = importlib.resources.files("jaxmeta.service").joinpath("static", "index.html").read_text("utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="jaxmeta", summary="Recommendations adapted to each user's ratings by a meta-learned model.",
                  lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(_Bad)
    async def refused(request: Request, error: _Bad) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(error)}, status_code=422)

    async def recommendations(job: Job) -> list[dict]:
        return await service.batcher.submit(job)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Whether the service runs: its number of items and of users with ratings, and whether it batches."""
        users = await asyncio.to_thread(service.store.count_users)
        return JSONResponse({"status": "ok", "items": len(service.catalogue.ids), "users": users,
                             "batching": service.batching})

    @app.post("/users/{user}/ratings", openapi_extra=_ratings_schema(max_ratings_per_request,
                                                                      recommender.rating_scale, False))
    async def rate(user: str, request: Request) -> JSONResponse:
        """Stores a user's ratings, committed before the reply; a later rating of an item replaces the earlier.

        Replies with ``added`` (ratings written by this request) and ``total``
        (items the user has rated)."""
        user = _check_user(user)
        body = await service.body(request)
        service.fields(body, ["ratings"])
        ratings = service.ratings(body, required=True)
        total = await service.writer.submit((user, ratings))
        service.written(user, ratings)
        return JSONResponse({"user": user, "added": len(ratings), "total": total})

    @app.get("/users/{user}/recommendations")
    async def user_recommendations(user: str, k: int = Query(10, description=f"items to return, 1 to {MAX_K}"),
                                   explain: bool = Query(True, description="find each item's because (false: "
                                                         "null, and a cheaper adaptation)")) -> JSONResponse:
        """The user's ``k`` best unseen items, adapted on their stored ratings (a user without ratings gets the
        unadapted model's ranking), each with ``because``: the rating that moved its score most (null with
        ``explain=false``)."""
        user = _check_user(user)
        k = _check_k(k)
        items = service.cached(user, k, explain)
        if items is None:
            version = service.version(user)
            history = await service.history(user)
            items = await recommendations(service.job(history, k, explain))
            service.remember(user, version, k, items, explain)
        return JSONResponse({"user": user, "k": k, "items": items})

    @app.post("/recommend", openapi_extra=_ratings_schema(max_ratings_per_request, recommender.rating_scale, True))
    async def recommend(request: Request) -> JSONResponse:
        """The ``k`` best unseen items for the ratings given (in order; latest wins); stores nothing."""
        body = await service.body(request)
        service.fields(body, ["ratings", "k", "explain"])
        ratings = service.ratings(body, required=False)
        k = _check_k(body.get("k", 10))
        explain = body.get("explain", True)
        if not isinstance(explain, bool):
            raise _Bad(422, f"explain={explain!r}: pass true (find each item's because) or false.")
        return JSONResponse({"k": k, "items": await recommendations(service.job(ratings, k, explain))})

    @app.get("/items")
    async def items(q: str = Query("", max_length=200, description="text to find in titles, any case"),
                    limit: int = Query(20, ge=1, le=1000, description="the most items to return")) -> JSONResponse:
        """Items whose title holds ``q`` (any case; an item without a title is found by its id), most popular
        first; an empty ``q`` lists the most popular items."""
        text = q.strip().casefold()
        found = []
        for item in service.catalogue.popular:
            if text in service.catalogue.searchable[item]:
                found.append(service.catalogue.describe(item))
                if len(found) == limit:
                    break
        return JSONResponse({"items": found})

    return app
