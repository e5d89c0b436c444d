"""jaxmeta.service: the HTTP app, the ratings store, the micro-batcher; Recommender.influence and
Recommender.recommend_unrated.

One tiny MeLU recommender serves the whole module: its shapes compile once, and every app built
on it afterwards finds them compiled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import threading

import httpx
import jax
import numpy as np
import optax
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from jaxmeta import algorithms, models
from jaxmeta.data.features import FeatureEncoder
from jaxmeta.serve import Recommender, _new_user_top_k, _support_influence
from jaxmeta.service import MicroBatcher, RatingStore
from jaxmeta.service import cli as service_cli
from jaxmeta.service.app import MAX_K, create_app

ITEMS = np.arange(100, 140)
GENRES = [(("Action", "Comedy", "Drama")[i % 3],) + (("Sci-Fi",) if i % 4 == 0 else ()) for i in range(len(ITEMS))]
TITLES = {int(i): f"Movie {i}" + (" Star Wars" if i % 5 == 0 else "") for i in ITEMS[:-2]}  # 138, 139: no title
POPULARITY = {int(i): float((i * 7) % 11) for i in ITEMS}
USERS = pd.DataFrame({"user": [1, 2, 3], "gender": ["F", "M", "F"], "age": [20.0, 30.0, 40.0]})
ITEM_TABLE = pd.DataFrame({"item": ITEMS, "genres": GENRES, "year": 1980.0 + np.arange(len(ITEMS))})
ENCODER = FeatureEncoder.fit(USERS, ITEM_TABLE, user_categorical=["gender"], user_numeric=["age"],
                             item_multi=["genres"], item_numeric=["year"])
MODEL = models.melu(ENCODER.spec, embed_dim=4, hidden=(8,), output_bias=3.0)
LEARNER = algorithms.maml(MODEL, inner_optimizer=optax.sgd(0.3), inner_steps=2)
STATE = LEARNER.init(jax.random.key(0))
REC = Recommender(LEARNER, STATE, ENCODER, ITEMS, titles=TITLES, popularity=POPULARITY, rating_scale=(1, 5))
OPTIONS = {"max_batch": 8, "history_limit": 16, "max_ratings_per_request": 30, "max_body_bytes": 9000}


def ratings_of(pairs, user="u") -> pd.DataFrame:
    return pd.DataFrame({"user": user, "item": [int(i) for i, _ in pairs], "rating": [float(r) for _, r in pairs]})


def body(pairs) -> dict:
    return {"ratings": [{"item": int(i), "rating": r} for i, r in pairs]}


def rows(db) -> int:
    """Ratings in the database file, read by a connection of its own."""
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(client, db)``: one app for the module's endpoint tests (users differ per test)."""
    db = tmp_path_factory.mktemp("service") / "ratings.sqlite"
    with TestClient(create_app(REC, db, window_ms=1.0, **OPTIONS)) as client:
        yield client, db


# ---------------------------------------------------------------- Recommender additions


def test_influence_is_the_derivative_of_the_adapted_score_by_central_differences():
    ratings = pd.concat([ratings_of([(100, 4.5), (101, 1.5), (102, 4)], "a"),  # inside the scale 1-5, by eps
                         ratings_of([(103, 2), (104, 4.5), (105, 3), (106, 1.5), (107, 4)], "b")], ignore_index=True)
    pairs = pd.DataFrame({"user": ["a", "a", "b", "b", "b"], "item": [110, 111, 112, 100, 139]})
    table = REC.influence(ratings, pairs, chunk=2)  # chunk 2: the pairs of "b" take two calls
    assert list(table.columns) == ["user", "item", "rated", "rating", "influence"]
    assert len(table) == 2 * 3 + 3 * 5  # each pair, once per rating of its user
    eps = 1e-2
    expected = []
    for user, item in pairs.itertuples(index=False):
        for row in np.flatnonzero(ratings["user"] == user):
            up, down = ratings.copy(), ratings.copy()
            up.loc[row, "rating"] += eps
            down.loc[row, "rating"] -= eps
            high, low = REC.score(up, [item]), REC.score(down, [item])
            plus = high.loc[high["user"] == user, "score"].item()
            minus = low.loc[low["user"] == user, "score"].item()
            expected.append((user, item, ratings.loc[row, "item"], (plus - minus) / (2 * eps)))
    expected = pd.DataFrame(expected, columns=["user", "item", "rated", "influence"])
    pd.testing.assert_frame_equal(table[["user", "item", "rated"]], expected[["user", "item", "rated"]],
                                  check_dtype=False)
    assert np.abs(expected["influence"]).max() > 0.05  # the ratings do move the scores
    np.testing.assert_allclose(table["influence"], expected["influence"], atol=2e-4)
    given = ratings.set_index(["user", "item"])["rating"]
    np.testing.assert_array_equal(table["rating"], given.loc[list(zip(table["user"], table["rated"]))])


def test_influence_under_ridge_on_hybrid_melu_is_the_hat_matrix_by_central_differences():
    """The explanation of the service's fastest model: for ``ridge`` the score is linear in the ratings
    (the head is a least-squares solve), so d score / d rating is exact by central differences, and a
    rating moves a score by that derivative times its change."""
    hybrid = models.hybrid_melu(ENCODER.spec, ITEMS[:-3], item_fields=ENCODER.table_columns("item")[1:], factors=3,
                                embed_dim=4, hidden=(8,), global_bias=3.0)
    learner = algorithms.ridge(hybrid)
    state = learner.init(jax.random.key(2))
    state = state._replace(params=jax.tree.map(lambda a: a + 0.2 * np.sin(np.arange(a.size).reshape(a.shape) + 1.0),
                                               state.params))
    rec = Recommender(learner, state, ENCODER, ITEMS, item_key="item_id")
    ratings = ratings_of([(100, 4), (101, 2), (102, 5), (139, 3)])  # 139: no id row, scored from features
    pairs = pd.DataFrame({"user": ["u", "u"], "item": [110, 138]})
    table = rec.influence(ratings, pairs)
    eps = 0.5  # the score is linear in the ratings: a large step is exact
    for n, (item, rated) in enumerate(zip(table["item"], table["rated"])):
        row = int(np.flatnonzero(ratings["item"] == rated)[0])
        up, down = ratings.copy(), ratings.copy()
        up.loc[row, "rating"] += eps
        down.loc[row, "rating"] -= eps
        slope = (rec.score(up, [item])["score"].item() - rec.score(down, [item])["score"].item()) / (2 * eps)
        np.testing.assert_allclose(table["influence"].iloc[n], slope, rtol=2e-3, atol=2e-4)
    assert np.abs(table["influence"]).max() > 0.01


def test_influence_of_a_learner_that_reads_no_rating_is_zero():
    learner = algorithms.no_adaptation(MODEL)
    rec = Recommender(learner, learner.init(jax.random.key(0)), ENCODER, ITEMS)
    table = rec.influence(ratings_of([(100, 5), (101, 1)]), pd.DataFrame({"user": ["u"], "item": [120]}))
    np.testing.assert_array_equal(table["influence"], [0.0, 0.0])


def test_influence_refuses_pairs_of_users_without_ratings():
    with pytest.raises(ValueError, match="'v'.*no rating"):
        REC.influence(ratings_of([(100, 5)]), pd.DataFrame({"user": ["v"], "item": [101]}))


def test_recommend_unrated_ranks_by_the_unadapted_model_of_a_user_with_unknown_features():
    top = REC.recommend_unrated(k=5)
    assert list(top.columns) == ["rank", "item", "score", "title"] and top["rank"].tolist() == [1, 2, 3, 4, 5]
    unknown = pd.DataFrame({"user": ["nobody"], "gender": [None], "age": [None]})
    x = ENCODER.with_rows(users=unknown).encode_ids(["nobody"] * len(ITEMS), ITEMS)
    reference = pd.Series(np.asarray(MODEL.apply(STATE.params, x)), index=ITEMS)
    np.testing.assert_allclose(top["score"], reference[top["item"]].to_numpy(), rtol=1e-6)
    assert set(top["item"]) == set(reference.sort_values(ascending=False).index[:5])


# ---------------------------------------------------------------- store


def test_store_keeps_the_latest_rating_in_the_order_of_writing_across_reopening(tmp_path):
    store = RatingStore(tmp_path / "sub" / "r.sqlite")
    assert store.add("ann", [(100, 4.0), (101, 2.0), (100, 5.0)]) == 2  # within one call, latest wins too
    assert store.add("ann", [(102, 1.0), (101, 3.0)]) == 3
    assert store.add("bob", [("x", 2.5)]) == 1
    store.close()
    again = RatingStore(tmp_path / "sub" / "r.sqlite")
    assert again.history("ann") == [(100, 5.0), (102, 1.0), (101, 3.0)]  # 101 re-rated last
    assert again.history("bob") == [("x", 2.5)] and again.history("nobody") == []
    assert (again.count("ann"), again.count_users()) == (3, 2)
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    again.close()


def test_store_is_safe_from_many_threads(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")

    def write(t):
        for n in range(30):
            store.add(f"user{t}", [(n, 1.0 + n % 5)])
            assert len(store.history(f"user{t}")) == n + 1

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count_users() == 4 and all(store.count(f"user{t}") == 30 for t in range(4))
    store.close()


def test_store_add_many_is_one_transaction_all_or_nothing(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")
    assert store.add_many([("ann", [(1, 2.0)]), ("bob", [(1, 3.0), (2, 4.0)]), ("ann", [(3, 5.0)])]) == [1, 2, 2]
    with pytest.raises(sqlite3.Error):  # the second write cannot be stored: the first is not either
        store.add_many([("cat", [(1, 2.0)]), ("dan", [(object(), 1.0)])])
    assert store.history("cat") == [] and store.count_users() == 2
    assert store.history("ann") == [(1, 2.0), (3, 5.0)] and rows(tmp_path / "r.sqlite") == 4
    store.close()


def test_ratings_posted_together_share_a_commit(tmp_path):
    app = create_app(REC, tmp_path / "w.sqlite", window_ms=1.0, **OPTIONS)
    service = app.state.service
    commits, release = [], threading.Event()

    def add_many(writes):  # the first commit waits until every request is queued behind it
        commits.append(len(writes))
        if len(commits) == 1:
            release.wait(30)
        return RatingStore.add_many(service.store, writes)

    async def post_all():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                         base_url="http://t") as http:
            service.store.add_many = add_many
            first = asyncio.create_task(http.post("/users/u0/ratings", json=body([(100, 4)])))
            while not commits:
                await asyncio.sleep(0.01)
            rest = [asyncio.create_task(http.post(f"/users/u{n}/ratings", json=body([(101, n % 5 + 1)])))
                    for n in range(1, 10)]
            while service.writer._queue.qsize() < 9:
                await asyncio.sleep(0.01)
            release.set()
            return [r.json() for r in await asyncio.gather(first, *rest)]

    replies = asyncio.run(post_all())
    assert commits == [1, 9] and [r["total"] for r in replies] == [1] * 10
    assert rows(tmp_path / "w.sqlite") == 10


def test_store_refuses_a_folder(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        RatingStore(tmp_path)


# ---------------------------------------------------------------- batcher


def test_batcher_serves_jobs_of_one_window_in_one_call_and_isolates_a_failing_job():
    calls = []

    def serve(jobs):
        calls.append(list(jobs))
        if "bad" in jobs:
            raise ValueError("bad job")
        return [job.upper() for job in jobs]

    async def run():
        batcher = MicroBatcher(serve, max_batch=3, window_ms=100)
        batcher.start()
        first = await asyncio.gather(*(batcher.submit(j) for j in ["a", "b", "c", "d"]))
        mixed = await asyncio.gather(*(batcher.submit(j) for j in ["e", "bad"]), return_exceptions=True)
        await batcher.stop()
        return first, mixed, batcher

    first, mixed, batcher = asyncio.run(run())
    assert first == ["A", "B", "C", "D"]
    assert calls[:2] == [["a", "b", "c"], ["d"]]  # max_batch 3: the fourth waits for the next call
    assert calls[2:] == [["e", "bad"], ["e"], ["bad"]]  # the failed batch, then each job alone
    assert mixed[0] == "E" and isinstance(mixed[1], ValueError)
    assert (batcher.largest, batcher.jobs) == (3, 5)


def test_batcher_without_window_serves_jobs_alone():
    calls = []

    async def run():
        batcher = MicroBatcher(lambda jobs: calls.append(len(jobs)) or list(jobs), max_batch=1, window_ms=0)
        batcher.start()
        out = await asyncio.gather(*(batcher.submit(j) for j in range(5)))
        await batcher.stop()
        return out

    assert asyncio.run(run()) == [0, 1, 2, 3, 4] and calls == [1] * 5


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"window_ms": -1}, {"window_ms": "5"}])
def test_batcher_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MicroBatcher(list, **kwargs)


# ---------------------------------------------------------------- endpoints


def test_health_page_and_docs(served):
    client, _ = served
    health = client.get("/health").json()
    assert health == {"status": "ok", "items": len(ITEMS), "users": health["users"], "batching": True}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('id="search"', 'id="results"', 'id="recommendations"', '"star"', "dataset.rating",
                   "dataset.ratings", '"rec"', "/recommendations?k=10", "localStorage", 'get("user")'):
        assert needle in page.text, needle
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/health", "/users/{user}/ratings", "/users/{user}/recommendations", "/recommend", "/items"} <= set(
        spec["paths"])
    schema = spec["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["ratings"]["maxItems"] == OPTIONS["max_ratings_per_request"]


def test_items_search_by_title_any_case_most_popular_first(served):
    client, _ = served
    found = client.get("/items", params={"q": "sTaR wArS", "limit": 3}).json()["items"]
    starred = sorted((i for i in TITLES if "Star" in TITLES[i]), key=lambda i: (-POPULARITY[i], i))
    assert [e["item"] for e in found] == starred[:3]
    assert found[0] == {"item": starred[0], "title": TITLES[starred[0]], "genres": list(GENRES[starred[0] - 100])}
    first = client.get("/items", params={"limit": 4}).json()["items"]
    assert [e["item"] for e in first] == sorted(POPULARITY, key=lambda i: (-POPULARITY[i], i))[:4]
    assert client.get("/items", params={"q": "139"}).json()["items"][0]["title"] is None  # found by its id
    assert client.get("/items", params={"q": "no such film"}).json() == {"items": []}


def test_rating_is_stored_and_recommendations_adapt_to_it(served):
    client, db = served
    before = rows(db)
    reply = client.post("/users/ann/ratings", json=body([(100, 5), (101, 1), (100, 4)]))
    assert reply.status_code == 200 and reply.json() == {"user": "ann", "added": 3, "total": 2}
    assert rows(db) == before + 2
    got = client.get("/users/ann/recommendations", params={"k": 5}).json()
    assert got["user"] == "ann" and got["k"] == 5 and len(got["items"]) == 5
    library = REC.recommend(ratings_of([(101, 1), (100, 4)]), k=5)  # the stored history, latest rating of 100
    assert [e["item"] for e in got["items"]] == library["item"].tolist()
    np.testing.assert_allclose([e["score"] for e in got["items"]], library["score"], rtol=1e-6)
    influence = REC.influence(ratings_of([(101, 1), (100, 4)]), library[["user", "item"]])
    for entry in got["items"]:
        assert entry["title"] == TITLES.get(entry["item"]) and entry["genres"] == list(GENRES[entry["item"] - 100])
        mine = influence[influence["item"] == entry["item"]]
        best = mine.loc[mine["influence"].abs().idxmax()]
        assert entry["because"]["item"] == best["rated"] and entry["because"]["title"] == TITLES[best["rated"]]
        assert entry["because"]["rating"] == {100: 4.0, 101: 1.0}[best["rated"]]
        np.testing.assert_allclose(entry["because"]["influence"], best["influence"], rtol=1e-5)
    stateless = client.post("/recommend", json=body([(100, 5), (101, 1), (100, 4)]) | {"k": 5}).json()
    assert stateless == {"k": 5, "items": got["items"]}
    assert rows(db) == before + 2  # /recommend wrote nothing


def test_a_users_history_is_read_from_the_database_once_and_kept_as_written(tmp_path, monkeypatch):
    db = tmp_path / "h.sqlite"
    store = RatingStore(db)
    store.add("old", [(100, 2.0), (101, 3.0)])  # written before this app started
    store.close()
    with TestClient(create_app(REC, db, window_ms=1.0, **OPTIONS)) as client:
        service = client.app.state.service
        reads = []
        real = RatingStore.history
        monkeypatch.setattr(RatingStore, "history", lambda self, user: reads.append(user) or real(self, user))
        for n, pairs in enumerate([[(102, 5)], [(100, 1), (103, 4)], [(101, 2)], [(104, 3)]]):
            client.post("/users/old/ratings", json=body(pairs))
            client.post("/users/new/ratings", json=body(pairs))
            for user in ("old", "new"):
                got = client.get(f"/users/{user}/recommendations", params={"k": 3, "explain": "false"}).json()
                assert not {e["item"] for e in got["items"]} & {100, 101, 102, 103, 104}
                assert list(service.histories[user].items()) == real(service.store, user)  # as the database has it
        assert sorted(reads) == ["new", "old"]  # one read per user, at their first request
        assert real(service.store, "old") == [(102, 5.0), (100, 1.0), (103, 4.0), (101, 2.0), (104, 3.0)]


def test_a_new_rating_invalidates_the_cached_recommendations(served):
    client, _ = served
    client.post("/users/cid/ratings", json=body([(105, 2)]))
    top = client.get("/users/cid/recommendations", params={"k": 3}).json()["items"]
    again = client.get("/users/cid/recommendations", params={"k": 2}).json()["items"]
    assert again == top[:2]  # served from the cache
    client.post("/users/cid/ratings", json=body([(top[0]["item"], 5)]))
    after = client.get("/users/cid/recommendations", params={"k": 3}).json()["items"]
    assert top[0]["item"] not in [e["item"] for e in after]
    library = REC.recommend(ratings_of([(105, 2), (top[0]["item"], 5)]), k=3)
    assert [e["item"] for e in after] == library["item"].tolist()


def test_explain_false_gives_the_same_items_without_because_and_is_not_served_to_explain(served):
    client, _ = served
    client.post("/users/explainer/ratings", json=body([(102, 5), (107, 1)]))
    plain = client.get("/users/explainer/recommendations", params={"k": 4, "explain": "false"}).json()["items"]
    assert all(e["because"] is None for e in plain)
    explained = client.get("/users/explainer/recommendations", params={"k": 4}).json()["items"]  # not the cached plain
    assert any(e["because"] is not None for e in explained)
    assert [{**e, "because": None} for e in explained] == plain
    stateless = client.post("/recommend", json=body([(102, 5), (107, 1)]) | {"k": 4, "explain": False}).json()
    assert stateless["items"] == plain
    reply = client.post("/recommend", json=body([(102, 5)]) | {"explain": "yes"})
    assert reply.status_code == 422 and "explain='yes'" in reply.json()["detail"]


def test_an_unknown_user_gets_the_unadapted_ranking_and_nothing_is_written(served):
    client, db = served
    before = (rows(db), client.get("/health").json()["users"])
    got = client.get("/users/nobody-yet/recommendations", params={"k": 4}).json()
    unrated = REC.recommend_unrated(k=4)
    assert [e["item"] for e in got["items"]] == unrated["item"].tolist()
    assert all(e["because"] is None for e in got["items"])
    assert client.post("/recommend", json={"ratings": [], "k": 4}).json()["items"] == got["items"]
    assert (rows(db), client.get("/health").json()["users"]) == before


def test_only_the_most_recent_ratings_are_adapted_on_but_every_rated_item_is_excluded(served):
    client, _ = served
    order = np.random.default_rng(0).permutation(ITEMS)[:20]
    history = [(int(i), float(1 + n % 5)) for n, i in enumerate(order)]
    client.post("/users/dee/ratings", json=body(history))
    got = client.get("/users/dee/recommendations", params={"k": 10}).json()["items"]
    assert not {e["item"] for e in got} & set(order.tolist())
    recent = REC.score(ratings_of(history[-OPTIONS["history_limit"]:]), [e["item"] for e in got])
    np.testing.assert_allclose([e["score"] for e in got], recent["score"], rtol=1e-6)
    everything = REC.score(ratings_of(history), [e["item"] for e in got])
    assert not np.allclose(everything["score"], recent["score"], rtol=1e-6)  # the cut does change the scores


def test_a_user_who_rated_every_item_gets_no_recommendation(served):
    client, _ = served
    for part in (ITEMS[:20], ITEMS[20:]):
        client.post("/users/all/ratings", json=body([(i, 3) for i in part]))
    assert client.get("/users/all/recommendations", params={"k": 5}).json() == {"user": "all", "k": 5, "items": []}


def test_a_k_over_the_catalogue_gets_every_unrated_item(served):
    """k may be up to MAX_K whatever the catalogue's size: a user with ratings, like one without, then gets
    every item not rated, and so does a stateless request; a batch holding such a job serves the others too."""
    client, _ = served
    assert MAX_K > len(ITEMS)
    client.post("/users/kim/ratings", json=body([(100, 4), (101, 2)]))
    got = client.get("/users/kim/recommendations", params={"k": MAX_K})
    assert got.status_code == 200 and len(got.json()["items"]) == len(ITEMS) - 2
    library = REC.recommend(ratings_of([(100, 4), (101, 2)]), k=len(ITEMS) - 2)
    assert [e["item"] for e in got.json()["items"]] == library["item"].tolist()
    stateless = client.post("/recommend", json=body([(100, 4)]) | {"k": MAX_K})
    assert stateless.status_code == 200 and len(stateless.json()["items"]) == len(ITEMS) - 1
    assert len(client.get("/users/nobody/recommendations", params={"k": MAX_K}).json()["items"]) == len(ITEMS)


def test_stored_ratings_the_model_cannot_read_are_left_out_with_a_warning(tmp_path, caplog):
    """A database written under another run: an item outside the catalogue, a rating off the scale. The user
    is adapted on the rest (scores as the library gives them, on the scale's order of size), the off-scale
    item is still not recommended, and the log says what was left out."""
    db = tmp_path / "other.sqlite"
    store = RatingStore(db)
    store.add("stale", [(999, 3.0), (100, 9.0), (101, 3.0)])
    store.close()
    with TestClient(create_app(REC, db, window_ms=1.0, **OPTIONS)) as client, caplog.at_level("WARNING"):
        got = client.get("/users/stale/recommendations", params={"k": 5})
    assert got.status_code == 200
    items = got.json()["items"]
    library = REC.recommend(ratings_of([(101, 3.0)]), k=6)
    library = library[library["item"] != 100].head(5)
    assert [e["item"] for e in items] == library["item"].tolist()
    np.testing.assert_allclose([e["score"] for e in items], library["score"], rtol=1e-5)
    assert all(e["because"] is None or e["because"]["item"] == 101 for e in items)
    assert "user 'stale': 2 stored rating(s) that this model cannot read" in caplog.text and "(999, 3.0)" in caplog.text


def test_explain_false_strips_explanations_from_a_cached_explained_result(served):
    client, _ = served
    client.post("/users/ivy/ratings", json=body([(102, 5), (107, 1)]))
    explained = client.get("/users/ivy/recommendations", params={"k": 3}).json()["items"]
    assert any(e["because"] is not None for e in explained)
    plain = client.get("/users/ivy/recommendations", params={"k": 3, "explain": "false"}).json()["items"]
    assert plain == [{**e, "because": None} for e in explained]
    assert client.get("/users/ivy/recommendations", params={"k": 3}).json()["items"] == explained  # cache intact


def test_versions_are_bounded_and_a_users_version_never_repeats(tmp_path, monkeypatch):
    """The versions that tell a cached result stale are kept for the most recent writers only; a user dropped
    reads a newer shared version, so a result cached before their last write is never served."""
    monkeypatch.setattr("jaxmeta.service.app.VERSIONS_KEPT", 2)
    with TestClient(create_app(REC, tmp_path / "v.sqlite", window_ms=1.0, **OPTIONS)) as client:
        service = client.app.state.service
        seen: dict[str, list[int]] = {}
        for n, user in enumerate(["a", "b", "c", "a", "d", "e", "b", "a"]):
            before = service.version(user)
            client.post(f"/users/{user}/ratings", json=body([(100 + n, 1 + n % 5)]))
            assert len(service.versions) <= 2
            for u in "abcde":
                seen.setdefault(u, []).append(service.version(u))
            assert service.version(user) != before
        assert all(np.all(np.diff(v) >= 0) for v in seen.values())  # never back to an earlier value
        top = client.get("/users/c/recommendations", params={"k": 3}).json()["items"]  # c's version: the shared one
        client.post("/users/c/ratings", json=body([(top[0]["item"], 1)]))
        for user in "xyz":  # c is dropped again
            client.post(f"/users/{user}/ratings", json=body([(120, 3)]))
        assert "c" not in service.versions
        after = client.get("/users/c/recommendations", params={"k": 3}).json()["items"]
        assert top[0]["item"] not in [e["item"] for e in after]


def test_a_failed_commit_leaves_the_store_writable(tmp_path):
    """A COMMIT that fails (a full disk, say) is rolled back: the write is not stored, and the next one is."""
    store = RatingStore(tmp_path / "c.sqlite")
    real = store._db

    class FailingOnce:
        failed = False

        def execute(self, sql, *args):
            if sql == "COMMIT" and not self.failed:
                self.failed = True
                raise sqlite3.OperationalError("disk I/O error (injected)")
            return real.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(real, name)

    store._db = FailingOnce()
    with pytest.raises(sqlite3.OperationalError, match="injected"):
        store.add("u", [(1, 3.0)])
    assert store.add("u", [(2, 4.0)]) == 1 and store.history("u") == [(2, 4.0)]
    store._db = real
    store.close()


def test_item_ids_may_be_given_as_text_or_whole_floats(served):
    client, _ = served
    reply = client.post("/users/eve/ratings", json={"ratings": [{"item": "100", "rating": 4},
                                                               {"item": 101.0, "rating": 2.5}]})
    assert reply.json()["total"] == 2
    store = RatingStore(served[1])
    assert store.history("eve") == [(100, 4.0), (101, 2.5)]
    store.close()


BAD_RATINGS = [
    (b"{", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "UTF-8"),
    (b"[]", 422, "not a JSON object"),
    (b"{}", 422, "no 'ratings'"),
    (b'{"ratings": {"item": 100, "rating": 4}}', 422, "not a list"),
    (b'{"ratings": []}', 422, "empty"),
    (b'{"ratings": [4]}', 422, "ratings[0] is 4"),
    (b'{"ratings": [{"item": 100}]}', 422, "exactly the keys item and rating"),
    (b'{"ratings": [{"item": 100, "rating": 4, "time": 1}]}', 422, "exactly the keys"),
    (b'{"ratings": [{"item": 100, "rating": 4}, {"item": 99, "rating": 3}]}', 422, "ratings[1].item is 99"),
    (b'{"ratings": [{"item": true, "rating": 3}]}', 422, "item is true"),
    (b'{"ratings": [{"item": 100.5, "rating": 3}]}', 422, "item is 100.5"),
    (b'{"ratings": [{"item": null, "rating": 3}]}', 422, "item is null"),
    (b'{"ratings": [{"item": 100, "rating": 7}]}', 422, "rating is 7, outside this model's rating scale 1"),
    (b'{"ratings": [{"item": 100, "rating": 0.5}]}', 422, "from 1 to 5"),
    (b'{"ratings": [{"item": 100, "rating": "4"}]}', 422, 'rating is "4", not a number'),
    (b'{"ratings": [{"item": 100, "rating": null}]}', 422, "not a number"),
    (b'{"ratings": [{"item": 100, "rating": true}]}', 422, "not a number"),
    (b'{"ratings": [{"item": 100, "rating": NaN}]}', 422, "nan, not a finite number"),
    (b'{"ratings": [{"item": 100, "rating": -Infinity}]}', 422, "not a finite number"),
    (b'{"ratings": [{"item": 100, "rating": 1e39}]}', 422, "not a finite number"),
    (b'{"ratings": [{"item": 100, "rating": 1' + b"0" * 400 + b"}]}", 422, "inf, not a finite number"),  # no float
    (b'{"ratings": [{"item": 100, "rating": 1' + b"0" * 4400 + b"}]}", 400, "not valid JSON"),  # over int's digits
    (b"[" * 2000 + b"]" * 2000, 400, "nested too deeply"),
    (b'{"ratings": [{"item": 100, "rating": 4}], "k": 3}', 422, "unknown field(s) ['k']"),
    (json.dumps(body([(100 + n % 40, 3) for n in range(31)])).encode(), 413, "30 ratings per request"),
    (json.dumps(body([(100, 3)])).encode() + b" " * 9000, 413, "9000 bytes"),
]


@pytest.mark.parametrize(("content", "status", "message"), BAD_RATINGS)
def test_bad_ratings_are_refused_with_a_clear_message_and_nothing_is_written(served, content, status, message):
    client, db = served
    before = rows(db)
    reply = client.post("/users/fay/ratings", content=content, headers={"content-type": "application/json"})
    assert reply.status_code == status and message in reply.json()["detail"], reply.json()
    assert rows(db) == before
    assert client.get("/users/fay/recommendations", params={"k": 1}).json()["items"][0]["because"] is None


def test_an_oversized_body_without_a_declared_length_is_refused(served):
    client, db = served
    before = rows(db)

    def chunks():  # streamed: no content-length header, the limit is found while reading
        yield b'{"ratings": ['
        for _ in range(400):
            yield b'{"item": 100, "rating": 3},'
        yield b'{"item": 100, "rating": 3}]}'

    reply = client.post("/users/gus/ratings", content=chunks())
    assert reply.status_code == 413 and "over 9000 bytes" in reply.json()["detail"]
    assert rows(db) == before


@pytest.mark.parametrize("k", ["0", "-3", "abc", "2.5", str(MAX_K + 1)])
def test_a_bad_k_is_refused(served, k):
    client, _ = served
    reply = client.get("/users/hal/recommendations", params={"k": k})
    assert reply.status_code == 422 and "k is " in reply.json()["detail"]
    assert f"from 1 to {MAX_K}" in reply.json()["detail"]


@pytest.mark.parametrize("k", [0, "10", 2.5, True, None])
def test_a_bad_k_in_the_body_is_refused(served, k):
    client, _ = served
    reply = client.post("/recommend", json={"ratings": [], "k": k})
    assert reply.status_code == 422 and f"from 1 to {MAX_K}" in reply.json()["detail"]


@pytest.mark.parametrize(("path", "message"), [("/items?limit=0", "limit is"), ("/items?limit=x", "limit is"),
                                               ("/users/%20/recommendations", "printable"),
                                               ("/users/" + "x" * 201 + "/recommendations", "printable")])
def test_bad_parameters_are_refused(served, path, message):
    client, _ = served
    reply = client.get(path)
    assert reply.status_code == 422 and message in reply.json()["detail"]


# ---------------------------------------------------------------- persistence, batching, compilation


def test_ratings_survive_a_restart_on_the_same_database(tmp_path):
    db = tmp_path / "ratings.sqlite"
    with TestClient(create_app(REC, db, **OPTIONS)) as client:
        client.post("/users/ivy/ratings", json=body([(110, 5), (111, 2)]))
    with TestClient(create_app(REC, db, warmup=False, **OPTIONS)) as client:
        assert client.get("/health").json()["users"] == 1
        got = client.get("/users/ivy/recommendations", params={"k": 3}).json()["items"]
    assert [e["item"] for e in got] == REC.recommend(ratings_of([(110, 5), (111, 2)]), k=3)["item"].tolist()
    assert {e["because"]["item"] for e in got} <= {110, 111}


REQUESTS = [[], [(100, 5)], [(101, 1), (102, 4), (103, 2)], [(104, 3)] + [(110 + n, 1 + n % 5) for n in range(8)],
            [(120 + n, 5 - n % 5) for n in range(12)], [(100 + 2 * n, 1 + n % 5) for n in range(16)]]


async def _concurrently(app, requests) -> tuple[list[dict], int]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            replies = await asyncio.gather(*(client.post("/recommend", json=body(r) | {"k": 6}) for r in requests))
        return [reply.json() for reply in replies], app.state.service.batcher.largest


def test_micro_batched_results_equal_one_user_at_a_time(tmp_path):
    batched, largest = asyncio.run(_concurrently(create_app(REC, tmp_path / "a.sqlite", window_ms=500, **OPTIONS),
                                                 REQUESTS))
    alone, single = asyncio.run(_concurrently(create_app(REC, tmp_path / "b.sqlite", batching=False, **OPTIONS),
                                              REQUESTS))
    assert largest > 1 and single == 1  # batched together; the baseline one by one
    for got, want in zip(batched, alone):
        assert [e["item"] for e in got["items"]] == [e["item"] for e in want["items"]]
        np.testing.assert_allclose([e["score"] for e in got["items"]], [e["score"] for e in want["items"]],
                                   rtol=1e-6)
        assert [e["because"] and e["because"]["item"] for e in got["items"]] == \
               [e["because"] and e["because"]["item"] for e in want["items"]]
        np.testing.assert_allclose([e["because"]["influence"] for e in got["items"] if e["because"]],
                                   [e["because"]["influence"] for e in want["items"] if e["because"]], rtol=1e-4)


def test_nothing_compiles_after_the_warm_up(tmp_path):
    app = create_app(REC, tmp_path / "c.sqlite", window_ms=20, **OPTIONS)
    caches = lambda: (_new_user_top_k._cache_size(), _support_influence._cache_size())  # noqa: E731
    compiled = caches()
    many = REQUESTS + [[(100 + n, 3) for n in range(20)]] * 3  # 20 ratings: cut to the history limit
    asyncio.run(_concurrently(app, many))
    asyncio.run(_concurrently(app, many[1:2]))
    assert caches() == compiled and compiled[0] > 0 and compiled[1] > 0


# ---------------------------------------------------------------- command line


def test_cli_loads_the_run_builds_the_app_and_serves_it(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    service_cli.add_arguments(parser)
    args = parser.parse_args(["--run", str(tmp_path), "--no-batching", "--port", "8123", "--max-batch", "4"])
    seen = {}
    monkeypatch.setattr(Recommender, "load", classmethod(lambda cls, run, **kw: seen.update(run=run, **kw) or REC))

    def run(app, **kwargs):
        seen.update(kwargs)
        with TestClient(app) as client:
            seen["health"] = client.get("/health").json()

    monkeypatch.setattr("uvicorn.run", run)
    assert service_cli.main(args) == 0
    assert seen["run"] == str(tmp_path) and seen["checkpoint"] == "best" and seen["data_dir"] is None
    assert (seen["host"], seen["port"], seen["log_level"]) == ("127.0.0.1", 8123, "info")
    assert seen["health"]["batching"] is False
    assert (tmp_path / "service.sqlite").is_file()


def test_cli_without_fastapi_says_how_to_install_it(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    service_cli.add_arguments(parser)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'jaxmeta\[serve\]'"):
        service_cli.main(parser.parse_args(["--run", str(tmp_path)]))
