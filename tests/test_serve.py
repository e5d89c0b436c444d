"""jaxmeta.serve: serving scores equal the evaluation path's; ranking, exclusion, errors, compilation."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import optax
import pandas as pd
import pytest

from jaxmeta import algorithms, models
from jaxmeta.data import splits
from jaxmeta.data.features import FeatureEncoder
from jaxmeta.data.interactions import DuplicateInteractionsWarning
from jaxmeta.serve import Recommender
from jaxmeta.tasks import pad_tasks

ITEMS = np.arange(100, 120)  # the catalogue; items 103 and 105 have the same features (a tie)
GENRES = [("a",), ("b",), ("a", "b"), ("c",), (), ("c",)] + [(("a", "b", "c")[i % 3],) for i in range(14)]
YEARS = [1990.0, 1995.0, 2000.0, 1985.0, 1999.0, 1985.0] + [1980.0 + i for i in range(14)]
USERS = pd.DataFrame({"user": np.arange(1, 12), "gender": ["F", "M"] * 5 + ["F"], "age": np.arange(20.0, 31.0)})
USERS.loc[1, ["gender", "age"]] = ["F", 20.0]  # users 1 and 2 alike: only their ratings tell them apart
ITEM_TABLE = pd.DataFrame({"item": ITEMS, "genres": GENRES, "year": YEARS})

LEARNERS = {
    "maml": lambda m: algorithms.maml(m, inner_optimizer=optax.sgd(0.1), inner_steps=2),
    "metasgd": lambda m: algorithms.metasgd(m, inner_optimizer=0.1, inner_steps=2),
    "no_adaptation": lambda m: algorithms.no_adaptation(m),
}


def make_encoder() -> FeatureEncoder:
    return FeatureEncoder.fit(USERS, ITEM_TABLE, user_categorical=["gender"], user_numeric=["age"],
                              item_multi=["genres"], item_numeric=["year"])


ENCODER = make_encoder()
MODEL = models.melu(ENCODER.spec, embed_dim=4, hidden=(8,), output_bias=3.0)


@pytest.fixture(scope="module")
def parts():
    """``{name: (learner, state)}``, built once: each learner compiles its shapes once for the module."""
    out = {}
    for name, make in LEARNERS.items():
        learner = make(MODEL)
        out[name] = (learner, learner.init(jax.random.key(0)))
    return out


def recommender(parts, name="maml", **kwargs) -> Recommender:
    learner, state = parts[name]
    return Recommender(learner, state, ENCODER, ITEMS, **kwargs)


def ratings_of(sizes: dict[int, int], seed: int = 0) -> pd.DataFrame:
    """``{user: number of ratings}`` -> a ratings table of distinct random items per user."""
    rng = np.random.default_rng(seed)
    rows = []
    for user, n in sizes.items():
        for item in rng.choice(ITEMS, size=n, replace=False):
            rows.append((user, int(item), float(rng.integers(1, 6))))
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


def evaluation_scores(learner, state, ratings: pd.DataFrame, candidates) -> np.ndarray:
    """The evaluation path: a task table (support = the user's ratings, query = the
    candidates) through build_tasks, pad_tasks (default sizes) and learner.predict."""
    parts = []
    for user in pd.unique(ratings["user"]):
        support = ratings[ratings["user"] == user].assign(query=False)
        query = pd.DataFrame({"user": user, "item": candidates, "rating": 0.0, "query": True})
        parts += [support, query]
    tasks = splits.build_tasks(pd.concat(parts, ignore_index=True), ENCODER)
    return np.asarray(learner.predict(state, pad_tasks(tasks)))


@pytest.mark.parametrize("name", sorted(LEARNERS))
@pytest.mark.parametrize("batch_size, candidate_chunk", [(64, 1024), (2, 8)])
def test_scores_equal_the_evaluation_path(parts, name, batch_size, candidate_chunk):
    ratings = ratings_of({3: 2, 7: 5, 4: 9, 5: 17, 6: 1})  # several support sizes, in one call
    candidates = ITEMS[::-1]  # 20 candidates: (2, 8) scores them in chunks of 8, 8 and 4
    out = recommender(parts, name, batch_size=batch_size, candidate_chunk=candidate_chunk).score(ratings, candidates)
    assert list(out.columns) == ["user", "item", "score"]
    assert out["user"].tolist() == np.repeat([3, 7, 4, 5, 6], len(candidates)).tolist()
    assert out["item"].tolist() == np.tile(candidates, 5).tolist()
    expected = evaluation_scores(*parts[name], ratings, candidates)
    np.testing.assert_allclose(out["score"].to_numpy().reshape(5, -1), expected, rtol=0, atol=1e-5)


def test_a_users_scores_do_not_depend_on_the_other_users(parts):
    ratings = ratings_of({3: 4, 7: 12, 4: 19})
    together = recommender(parts).score(ratings)
    alone = recommender(parts).score(ratings[ratings["user"] == 7])
    np.testing.assert_allclose(together.loc[together["user"] == 7, "score"], alone["score"], rtol=0, atol=1e-5)


def test_adaptation_changes_scores(parts):
    rated = ITEMS[:6]
    ratings = pd.DataFrame({"user": np.repeat([1, 2], 6), "item": np.tile(rated, 2),
                            "rating": [5.0] * 6 + [1.0] * 6})
    scores = recommender(parts).score(ratings, ITEMS[10:])
    lover = scores.loc[scores["user"] == 1, "score"].to_numpy()
    hater = scores.loc[scores["user"] == 2, "score"].to_numpy()
    assert (lover > hater + 1e-3).all()  # same features: only adaptation tells them apart
    # without adaptation the two are one user
    flat = recommender(parts, "no_adaptation").score(ratings, ITEMS[10:])
    np.testing.assert_array_equal(flat.loc[flat["user"] == 1, "score"], flat.loc[flat["user"] == 2, "score"])


def test_recommend_excludes_seen_items(parts):
    ratings = ratings_of({3: 4, 7: 12})
    rec = recommender(parts)
    top = rec.recommend(ratings, k=len(ITEMS))
    for user, n in ((3, 4), (7, 12)):
        mine = top[top["user"] == user]
        seen = set(ratings.loc[ratings["user"] == user, "item"])
        assert len(mine) == len(ITEMS) - n and not seen & set(mine["item"])
        assert mine["rank"].tolist() == list(range(1, len(ITEMS) - n + 1))
    every = rec.recommend(ratings, k=len(ITEMS), exclude_seen=False)
    assert (every.groupby("user").size() == len(ITEMS)).all()


def test_an_item_rated_twice_counts_once_at_its_latest_rating(parts):
    """Latest wins, as in training's reader and the service: the earlier rating is dropped, with a warning."""
    rec = recommender(parts)
    twice = pd.DataFrame({"user": "new", "item": [104, 110, 104], "rating": [5.0, 4.0, 1.0]})
    with pytest.warns(DuplicateInteractionsWarning, match="1 earlier rating"):
        got = rec.recommend(twice, k=5)
    latest = rec.recommend(twice.iloc[1:], k=5)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), latest.reset_index(drop=True))
    assert not np.allclose(rec.score(twice.iloc[:2], items=ITEMS[:4])["score"],
                           rec.score(twice.iloc[1:], items=ITEMS[:4])["score"])  # the dropped rating mattered


def test_read_ratings_reads_ids_as_training_does(parts, tmp_path):
    path = tmp_path / "me.csv"
    path.write_text("user,item,rating\nme,0007,4\nme,12.0,3\n")
    assert Recommender.read_ratings(path)["item"].tolist() == ["0007", "12.0"]  # "0007" is no 7: text, as trained
    path.write_text("user,item,rating\n1,105.0,4\n1,7,3\n")
    ratings = Recommender.read_ratings(path)
    assert ratings["item"].tolist() == [105, 7] and ratings["user"].tolist() == [1, 1]


def test_recommend_is_top_k_by_descending_score_ties_by_item_id(parts):
    ratings = ratings_of({3: 4, 7: 12, 4: 1})
    rec = recommender(parts)
    scores = rec.score(ratings)
    top = rec.recommend(ratings, k=5, exclude_seen=False)
    assert list(top.columns) == ["user", "rank", "item", "score"]
    assert top["user"].tolist() == np.repeat([3, 7, 4], 5).tolist()
    for user in (3, 7, 4):
        mine = top[top["user"] == user]
        expected = scores[scores["user"] == user].sort_values(["score", "item"], ascending=[False, True]).head(5)
        assert mine["item"].tolist() == expected["item"].tolist()
        assert (np.diff(mine["score"].to_numpy()) <= 0).all()
        assert mine["rank"].tolist() == [1, 2, 3, 4, 5]
    # items 103 and 105 have the same features, hence the same score: the smaller id comes first
    tie = rec.recommend(ratings, k=2, exclude_seen=False, candidates=[105, 103])
    mine = tie[tie["user"] == 3]
    assert mine["score"].iloc[0] == mine["score"].iloc[1]
    assert mine["item"].tolist() == [103, 105]


def test_k_larger_than_the_candidates_gives_them_all(parts):
    top = recommender(parts).recommend(ratings_of({3: 2}), k=50, candidates=ITEMS[:5])
    assert len(top) <= 5 and set(top["item"]) <= set(ITEMS[:5])


def test_items_only_in_the_table_encode_as_oov(parts):
    # vocabularies fitted without the last item's genre, table with it: an OOV value, still servable
    table = pd.concat([ITEM_TABLE, pd.DataFrame({"item": [500], "genres": [("zzz",)], "year": [2001.0]})])
    learner, state = parts["maml"]
    rec = Recommender(learner, state, ENCODER.with_tables(items=table), table["item"])
    out = rec.score(ratings_of({3: 3}), items=[500, 101])
    assert np.isfinite(out["score"]).all()


def test_no_recompilation_for_other_users_of_similar_support_sizes(parts):
    learner = parts["maml"][0]
    if not hasattr(learner.adapt, "_cache_size"):
        pytest.skip("this jax's jitted functions have no _cache_size()")
    rec = recommender(parts, batch_size=8)
    rec.score(ratings_of({u: 9 + u for u in range(1, 6)}, seed=1))  # 5 users of 10..14 ratings: 8 slots, 16 rows
    compiled = learner.adapt._cache_size(), learner.apply_adapted._cache_size()
    rec.score(ratings_of({u: 16 - u for u in range(1, 8)}, seed=2))  # 7 other users of 9..15 ratings
    rec.recommend(ratings_of({u: 12 for u in range(2, 10)}, seed=3), k=3)  # 8 users of 12
    assert (learner.adapt._cache_size(), learner.apply_adapted._cache_size()) == compiled


def test_each_user_is_adapted_once_whatever_the_number_of_candidate_chunks(parts):
    learner, state = parts["maml"]
    calls = {"adapt": 0, "apply": 0}

    def adapt(s, batch):
        calls["adapt"] += 1
        return learner.adapt(s, batch)

    def apply_adapted(s, fast, x):
        calls["apply"] += 1
        return learner.apply_adapted(s, fast, x)

    counted = learner._replace(adapt=adapt, apply_adapted=apply_adapted)
    ratings = ratings_of({u: 12 for u in range(1, 4)}, seed=4)
    chunked = Recommender(counted, state, ENCODER, ITEMS, candidate_chunk=8).score(ratings)
    assert calls == {"adapt": 1, "apply": -(-len(ITEMS) // 8)}  # one adaptation, one call per chunk of 8 items
    whole = Recommender(learner, state, ENCODER, ITEMS).score(ratings)
    np.testing.assert_allclose(chunked["score"], whole["score"], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- errors


def test_rejects_missing_columns(parts):
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['rating'\].*columns user, item, rating"):
        recommender(parts).score(pd.DataFrame({"user": [1], "item": [100], "stars": [4.0]}))


def test_rejects_no_ratings(parts):
    empty = pd.DataFrame({"user": [], "item": [], "rating": []})
    with pytest.raises(ValueError, match="no rows: every user to score needs at least one rating"):
        recommender(parts).recommend(empty)


def test_rejects_missing_ids(parts):
    ratings = pd.DataFrame({"user": [1.0, np.nan], "item": [100, 101], "rating": [4.0, 3.0]})
    with pytest.raises(ValueError, match="1 row.* without a user id"):
        recommender(parts).score(ratings)


@pytest.mark.parametrize("bad, shown", [(np.nan, "nan"), (np.inf, "inf"), ("four", "'four'"),
                                        (1e300, "1e\\+300 is not a finite number in float32")])
def test_rejects_non_finite_ratings(parts, bad, shown):
    ratings = pd.DataFrame({"user": [1, 1], "item": [100, 101], "rating": [4.0, bad]}, dtype=object)
    with pytest.raises(ValueError, match=rf"^ratings, row 1 \(user 1, item 101\): rating {shown}.*; drop or fix "):
        recommender(parts).score(ratings)


def test_rejects_unknown_items(parts):
    ratings = ratings_of({3: 2})
    with pytest.raises(ValueError, match=r"^items: 1 item id\(s\) have no row in the encoder's item table, e\.g\. 999: "
                                         r"pass their features with encoder\.with_tables\(items=\.\.\.\)"):
        recommender(parts).score(ratings, items=[100, 999])
    with pytest.raises(ValueError, match=r"^candidates: 2 item id\(s\) have no row.* 998, 999"):
        recommender(parts).recommend(ratings, candidates=[998, 100, 999])
    with pytest.raises(ValueError, match=r"^items: 1 item id\(s\) have no row.* 777"):  # the catalogue itself
        Recommender(*parts["maml"], ENCODER, [100, 777]).score(ratings)
    with pytest.raises(ValueError, match=r"^ratings: 1 item id\(s\) have no row.* 666.*\(with jaxmeta recommend: "
                                         r"rate items of the run's catalogue"):  # a rated item
        recommender(parts).score(pd.DataFrame({"user": [3], "item": [666], "rating": [4.0]}))


def test_rejects_repeated_or_empty_candidates(parts):
    with pytest.raises(ValueError, match=r"candidates repeats the item id\(s\) 100: pass each once"):
        recommender(parts).recommend(ratings_of({3: 2}), candidates=[100, 101, 100])
    with pytest.raises(ValueError, match="items is empty"):
        Recommender(*parts["maml"], ENCODER, [])


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_rejects_bad_k(parts, k):
    with pytest.raises(ValueError, match=rf"k={k!r}: pass the number of items to recommend per user"):
        recommender(parts).recommend(ratings_of({3: 2}), k=k)


@pytest.mark.parametrize("option", ["batch_size", "candidate_chunk"])
def test_rejects_bad_sizes(parts, option):
    with pytest.raises(ValueError, match=rf"{option}=0: pass a whole number >= 1"):
        recommender(parts, **{option: 0})


def test_item_key_adds_the_raw_ids(parts):
    # a model that reads only the raw item id: the score is the id itself (no fast weights to adapt)
    ids = models.Model(init=lambda key: {}, apply=lambda params, x: x["item_id"].astype(np.float32),
                       is_fast=lambda path: False, is_head=lambda path: False)
    learner = algorithms.no_adaptation(ids)
    rec = Recommender(learner, learner.init(jax.random.key(0)), ENCODER, ITEMS, item_key="item_id")
    top = rec.recommend(ratings_of({3: 2}), k=3, exclude_seen=False)
    assert top["item"].tolist() == [119, 118, 117] and top["score"].tolist() == [119.0, 118.0, 117.0]
    with pytest.raises(ValueError, match="item_key='genres' is already an encoder field"):
        Recommender(learner, learner.init(jax.random.key(0)), ENCODER, ITEMS, item_key="genres")


def test_hybrid_melu_under_ridge_serves_as_evaluation_scores_it():
    """The driver's ``--model hybrid --algo ridge`` (issue 17's model) through the service's path: raw item
    ids join the features (``item_key``), known items score from their id rows, the one unknown item from
    its features, and the scores equal the evaluation path's (tasks with the ids added)."""
    from jaxmeta.evaluation import ITEM_KEY, with_item_ids

    model = models.hybrid_melu(ENCODER.spec, ITEMS[:-1], item_fields=ENCODER.table_columns("item")[1:],
                               factors=3, embed_dim=4, hidden=(8,), global_bias=3.0)
    learner = algorithms.ridge(model)
    state = learner.init(jax.random.key(0))
    state = state._replace(params=jax.tree.map(lambda a: a + 0.1 * np.cos(np.arange(a.size).reshape(a.shape) + 1.0),
                                               state.params))  # item rows and generator away from their zero start
    rec = Recommender(learner, state, ENCODER, ITEMS, item_key=ITEM_KEY, batch_size=4, candidate_chunk=8)
    ratings = ratings_of({3: 2, 7: 5, 4: 9})
    out = rec.score(ratings, ITEMS)
    parts = []
    for user in pd.unique(ratings["user"]):
        parts += [ratings[ratings["user"] == user].assign(query=False),
                  pd.DataFrame({"user": user, "item": ITEMS, "rating": 0.0, "query": True})]
    table = pd.concat(parts, ignore_index=True)
    expected = learner.predict(state, pad_tasks(with_item_ids(splits.build_tasks(table, ENCODER), table)))
    np.testing.assert_allclose(out["score"].to_numpy().reshape(3, -1), expected, rtol=0, atol=1e-5)
    # the id rows are read: items 103 and 105 have the same features and different rows, so different scores
    scores = out.set_index(["user", "item"])["score"]
    assert all(abs(scores[(u, 103)] - scores[(u, 105)]) > 1e-4 for u in (3, 7, 4))

# ----------------------------------------------------------------------------- new users and their features


def with_users(parts, rows: pd.DataFrame, name="maml") -> Recommender:
    """The reference: a recommender whose encoder's user table holds ``rows`` in place of those users' rows."""
    learner, state = parts[name]
    table = pd.concat([USERS[~USERS["user"].isin(rows["user"])], rows], ignore_index=True)
    return Recommender(learner, state, ENCODER.with_tables(users=table), ITEMS)


def scores_of(out: pd.DataFrame, user) -> np.ndarray:
    return out.loc[out["user"] == user, "score"].to_numpy()


@pytest.mark.parametrize("new", ["newcomer", 42])
def test_a_new_user_is_served_with_unknown_user_features(parts, new):
    ratings = pd.DataFrame({"user": [3, 3, new, new, new], "item": [100, 101, 102, 103, 110],
                            "rating": [4.0, 5.0, 1.0, 2.0, 5.0]})
    rec = recommender(parts)
    out = rec.score(ratings)
    unknown = pd.DataFrame({"user": [new], "gender": [None], "age": [np.nan]})  # an all-unknown row, by hand
    expected = with_users(parts, unknown).score(ratings)
    np.testing.assert_array_equal(out["score"], expected["score"])
    # unknown features are not some user's features: gender OOV, age the mean (0.0 standardised)
    x = ENCODER.with_rows(users=unknown).encode_ids([new], [100])
    assert x["gender"].tolist() == [0] and x["age"].tolist() == [0.0]
    assert set(rec.recommend(ratings, k=2)["user"]) == {3, new}
    assert len(rec.encoder.ids("user")) == len(USERS)  # the call's rows were never added to the held encoder


def test_user_features_change_a_users_scores_as_a_row_of_the_table_would(parts):
    ratings = pd.DataFrame({"user": [3, 3, 42, 42], "item": [100, 101, 102, 110], "rating": [4.0, 5.0, 1.0, 5.0]})
    rec = recommender(parts, "no_adaptation")  # no adaptation: the features alone tell the users apart
    plain = rec.score(ratings)
    given = pd.DataFrame({"user": [42, 3, 999], "gender": ["M", "M", "F"], "age": [60.0, 40.0, 20.0]})
    featured = rec.score(ratings, user_features=given)  # user 999 rates nothing here: its row is not read
    for user in (3, 42):  # user 3's trained row (F, 22) is replaced, the new user 42 gets one
        assert np.abs(scores_of(featured, user) - scores_of(plain, user)).max() > 1e-4
    np.testing.assert_array_equal(featured["score"], with_users(parts, given.iloc[:2], "no_adaptation")
                                  .score(ratings)["score"])
    # a field left out, or an empty value, is unknown; values are matched by their text (as read from a file)
    partly = rec.score(ratings, user_features=pd.DataFrame({"user": [42], "gender": ["M"]}))
    expected = with_users(parts, pd.DataFrame({"user": [42], "gender": ["M"], "age": [np.nan]}), "no_adaptation")
    np.testing.assert_array_equal(partly["score"], expected.score(ratings)["score"])
    as_text = rec.score(ratings, user_features=pd.DataFrame({"user": [42, 3], "gender": [" M", "M"],
                                                             "age": ["60", "40"]}))
    np.testing.assert_array_equal(as_text["score"], featured["score"])


def test_user_features_from_a_file(parts, tmp_path):
    (tmp_path / "me.csv").write_text("user,item,rating\nme,100,5\n\nme,111,1\n")
    (tmp_path / "users.csv").write_text("user,gender,age\nsomeone,F,\nme,M,045\n")
    rec = recommender(parts, "no_adaptation")
    features = rec.read_user_features(tmp_path / "users.csv")
    assert features.loc[3, "age"] == "045" and pd.isna(features.loc[2, "age"])  # text, by file line; empty: unknown
    out = rec.score(rec.read_ratings(tmp_path / "me.csv"), user_features=features)
    expected = with_users(parts, pd.DataFrame({"user": ["me"], "gender": ["M"], "age": [45.0]}), "no_adaptation")
    np.testing.assert_array_equal(out["score"], expected.score(pd.read_csv(tmp_path / "me.csv"))["score"])
    (tmp_path / "ids.csv").write_text("user,gender\n7,F\n")
    assert features["user"].tolist() == ["someone", "me"]
    assert rec.read_user_features(tmp_path / "ids.csv")["user"].tolist() == [7]  # numbers, as read_ratings reads them


def test_user_features_errors(parts):
    ratings = pd.DataFrame({"user": [42, 42], "item": [100, 101], "rating": [4.0, 5.0]})
    rec = recommender(parts)
    with pytest.raises(ValueError, match=r"^user_features has the column\(s\) \['zip', 'job'\], which are not user "
                                         r"fields of this model; its user fields are \['gender', 'age'\]"):
        rec.score(ratings, user_features=pd.DataFrame({"user": [42], "zip": ["1"], "job": ["x"]}))
    for bad in ("old", "inf"):
        with pytest.raises(ValueError, match=rf"^user_features, row 1 \(user 42\): age '{bad}' is not a finite number; "
                                             r"pass a number, or nothing for unknown"):
            rec.score(ratings, user_features=pd.DataFrame({"user": [7, 42], "age": ["30", bad]}))
    with pytest.raises(ValueError, match=r"user_features repeats the user id\(s\) 42: pass one row per user"):
        rec.score(ratings, user_features=pd.DataFrame({"user": [42, 42], "gender": ["F", "M"]}))
    with pytest.raises(ValueError, match=r"user_features has no row of a user of the ratings \(it has '42'; the "
                                         r"ratings have 42\)"):
        rec.score(ratings, user_features=pd.DataFrame({"user": ["42"], "gender": ["F"]}))
    with pytest.raises(ValueError, match=r"user_features lacks the column\(s\) \['user'\]"):
        rec.recommend(ratings, user_features=pd.DataFrame({"id": [42], "gender": ["F"]}))


def test_a_known_user_id_written_as_text_is_not_a_new_user(parts):
    ratings = pd.DataFrame({"user": ["3", "new"], "item": [100, 101], "rating": [4.0, 5.0]})
    with pytest.raises(ValueError, match=r"^ratings: user '3' \(str\) is not in the encoder's user table, but 3 "
                                         r"\(int\) is: read the ids alike"):
        recommender(parts).score(ratings)


def test_a_model_without_user_fields_serves_any_user_and_refuses_user_features(parts):
    encoder = FeatureEncoder.fit(None, ITEM_TABLE, item_multi=["genres"], item_numeric=["year"])
    learner = algorithms.no_adaptation(models.melu(encoder.spec, embed_dim=4, hidden=(8,)))
    rec = Recommender(learner, learner.init(jax.random.key(0)), encoder, ITEMS)
    ratings = pd.DataFrame({"user": ["a", 5], "item": [100, 101], "rating": [4.0, 5.0]}, dtype=object)
    out = rec.score(ratings)
    np.testing.assert_array_equal(scores_of(out, "a"), scores_of(out, 5))  # nothing tells them apart
    with pytest.raises(ValueError, match=r"the column\(s\) \['gender'\], which are not user fields .* are \[\]"):
        rec.score(ratings, user_features=pd.DataFrame({"user": ["a"], "gender": ["F"]}))


# ----------------------------------------------------------------------------- titles, ties, the rating scale


def test_recommend_adds_the_titles_when_known(parts):
    learner, state = parts["maml"]
    titles = {int(i): f"Movie {i}" for i in ITEMS[:-1]}  # the last item has no title
    rec = Recommender(learner, state, ENCODER, ITEMS, titles=titles)
    top = rec.recommend(ratings_of({3: 2, 7: 3}), k=len(ITEMS))
    assert list(top.columns) == ["user", "rank", "item", "score", "title"]
    named = top[top["item"] != ITEMS[-1]]
    assert named["title"].tolist() == [f"Movie {i}" for i in named["item"]]
    assert top.loc[top["item"] == ITEMS[-1], "title"].isna().all()
    with pytest.raises(ValueError, match=r"titles repeats the item id\(s\) 100"):
        Recommender(learner, state, ENCODER, ITEMS, titles=pd.Series(["a", "b"], index=[100, 100]))


def test_ties_break_by_popularity_then_item_id(parts):
    learner, state = parts["maml"]
    ratings = ratings_of({3: 4, 7: 12})
    popular_105 = {105: 10, 103: 2}  # items 103 and 105 have the same features, hence the same score
    for popularity, order in ((popular_105, [105, 103]), ({103: 3, 105: 3}, [103, 105]), (None, [103, 105]),
                              (np.where(ITEMS == 105, 1.0, 0.0), [105, 103])):  # an array: one count per item
        rec = Recommender(learner, state, ENCODER, ITEMS, popularity=popularity)
        top = rec.recommend(ratings, k=2, exclude_seen=False, candidates=[103, 105])
        assert top["score"].iloc[0] == top["score"].iloc[1] and top["item"].tolist() == order * 2
    # the whole ranking: score first, popularity only among equal scores, then the id
    counts = {int(i): int(c) for i, c in zip(ITEMS, np.random.default_rng(5).integers(0, 4, len(ITEMS)))}
    counts |= popular_105
    rec = Recommender(learner, state, ENCODER, ITEMS, popularity=counts)
    scores = rec.score(ratings).assign(popularity=lambda t: t["item"].map(counts))
    top = rec.recommend(ratings, k=len(ITEMS), exclude_seen=False)
    for user in (3, 7):
        expected = scores[scores["user"] == user].sort_values(["score", "popularity", "item"],
                                                               ascending=[False, False, True])
        assert top.loc[top["user"] == user, "item"].tolist() == expected["item"].tolist()
    with pytest.raises(ValueError, match=r"popularity of item 101 is nan: pass finite numbers"):
        Recommender(learner, state, ENCODER, ITEMS, popularity={100: 1, 101: float("nan")})
    with pytest.raises(ValueError, match=r"popularity has 2 values for 20 items"):
        Recommender(learner, state, ENCODER, ITEMS, popularity=[1, 2])


@pytest.mark.parametrize("bad", [1e6, -2.0, 0.0, 5.5])
def test_ratings_outside_the_rating_scale_name_their_row(parts, bad):
    learner, state = parts["maml"]
    rec = Recommender(learner, state, ENCODER, ITEMS, rating_scale=(1, 5))
    ratings = pd.DataFrame({"user": ["new"] * 4, "item": [100, 101, 110, 102], "rating": [1.0, 5.0, bad, 3.5]},
                           index=[0, 1, 3, 4])
    with pytest.raises(ValueError, match=rf"^ratings, row 3 \(user 'new', item 110\): rating {bad!r} is outside the "
                                         r"run's rating scale \[1, 5\]; pass ratings on that scale\.$"):
        rec.score(ratings)
    assert len(rec.score(ratings.drop(index=3), items=ITEMS[:3])) == 3  # 1 and 5 are on the scale
    assert len(recommender(parts).score(ratings, items=ITEMS[:3])) == 3  # no scale: any finite rating
    with pytest.raises(ValueError, match=r"rating_scale=\(5, 1\): pass \(low, high\)"):
        Recommender(learner, state, ENCODER, ITEMS, rating_scale=(5, 1))


def test_a_bad_rating_read_from_a_file_names_the_file_and_line(parts, tmp_path):
    learner, state = parts["maml"]
    rec = Recommender(learner, state, ENCODER, ITEMS, rating_scale=(1, 5))
    path = tmp_path / "me.csv"
    path.write_text("user,item,rating\nnew,100,4\n\nnew,101,1000000\nnew,102,0\n")
    ratings = rec.read_ratings(path)
    assert ratings.index.tolist() == [2, 4, 5] and ratings.attrs["path"] == str(path)
    with pytest.raises(ValueError, match=rf"^{path}, line 4 \(user 'new', item 101\): rating 1000000.0 is outside "
                                         r"the run's rating scale \[1, 5\] \(2 such rows\); pass ratings on that "):
        rec.score(ratings)
    with pytest.raises(ValueError, match=rf"^{path}, line 5 \(user 'new', item 102\)"):  # filtered: lines kept
        rec.recommend(ratings[ratings["item"] != 101])
    path.write_text("user,item,rating\nnew,100,4\n,101,3\n")
    with pytest.raises(ValueError, match=rf"^{path} has 1 row\(s\) without a user id, e\.g\. line 3: "):
        rec.score(rec.read_ratings(path))


def writes(content):
    """A maker of a file holding ``content`` (text or bytes)."""
    def make(path):
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        return path
    return make


@pytest.mark.parametrize("make, error, message", [
    (lambda p: p, FileNotFoundError, "no such ratings file"),
    (lambda p: p.mkdir() or p, FileNotFoundError, "is a folder, not a ratings file"),
    (writes(""), ValueError, "is empty"),
    (writes("\n  \n"), ValueError, "is empty"),
    (writes("user,item,rating\n"), ValueError, "has a header but no rows"),
    (writes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"), ValueError, "is not a text"),
    (writes(b"user,item\x00,rating\n1,2,3\n"), ValueError, "is not a text file"),
    (writes('user,item,rating\n1,"100\n'), ValueError, "is not a readable CSV"),
    (writes("{\n  \"ratings\": [1,\n 2]}\n"), ValueError, "missing column"),
    (writes("user;item;rating\n1;100;4\n"), ValueError, r"missing column.*'user;item;rating'"),
])
def test_read_ratings_errors_are_one_line_naming_the_file(tmp_path, make, error, message):
    path = make(tmp_path / "ratings.csv")
    with pytest.raises(error, match=message) as caught:
        Recommender.read_ratings(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.__context__ is None or caught.value.__suppress_context__  # no chained traceback


def test_an_unreadable_ratings_file_is_one_line(tmp_path, monkeypatch):
    path = writes("user,item,rating\n1,100,4\n")(tmp_path / "ratings.csv")

    def refuse(self, *args, **kwargs):  # what chmod 0 does, even where the tests run as root
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(ValueError, match=rf"^{path} cannot be read \(Permission denied\); pass a readable ratings "
                                         r"file\.$"):
        Recommender.read_ratings(path)


def test_load_fills_titles_popularity_and_scale(parts, monkeypatch):
    """Recommender.load on a stub run (no training): what it reads off the run and the data folder."""
    import types

    from jaxmeta import job

    data_dir = Path(os.environ.get("JAXMETA_DATA", Path(__file__).parents[1] / "../shared/data"))
    learner, state = parts["maml"]
    warm = pd.DataFrame({"user": [1, 1, 2], "item": [105, 103, 105], "rating": [4.0, 3.0, 5.0]})
    asked = {}

    def restore_run(run_dir, *, which, data_dir):
        asked.update(run_dir=run_dir, which=which, data_dir=data_dir)
        config = types.SimpleNamespace(data="ml-100k", data_dir="/nowhere", model_name=lambda: "melu")
        data = types.SimpleNamespace(name="ml-100k", encoder=ENCODER, warm_ratings=warm, rating_scale=(1.0, 5.0))
        return job.Restored(config, data, None, learner, state, 7)

    monkeypatch.setattr(job, "restore_run", restore_run)
    rec = Recommender.load("run", checkpoint="latest", data_dir=data_dir)
    assert asked == {"run_dir": "run", "which": "latest", "data_dir": data_dir}
    assert rec.rating_scale == (1.0, 5.0) and rec.popularity.to_dict() == {105: 2.0, 103: 1.0}
    top = rec.recommend(ratings_of({3: 2}), k=2, exclude_seen=False, candidates=[103, 105])
    assert top["item"].tolist() == [105, 103]  # tied: the more rated first
    if not (data_dir / "ml-100k" / "u.item").is_file():
        pytest.skip(f"no MovieLens-100K in {data_dir} (set JAXMETA_DATA): titles not checked")
    assert rec.titles[1] == "Toy Story (1995)" and "title" in top.columns
